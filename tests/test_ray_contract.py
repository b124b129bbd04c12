"""Issue 15's remote guarantees for the Ray runner beyond tests/test_ray.py, on a real Ray head
(RAY_ADDRESS): a task's resources reach Ray (its CPUs and memory show in the head's usage while
it runs) and status names the runner and the Ray task id. Marked `ray`: skipped without a head, failing under
CI=true."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import agents_of, kill_group, need_ray, run, spawn, task_dir, wait_for, write_plan

ray = pytest.mark.ray


def _ray_usage() -> str:
    """The head's `ray status` (Total Usage: CPU, memory)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    r = subprocess.run([exe, "status", "--address", os.environ.get("RAY_ADDRESS", "auto")], capture_output=True,
                       text=True, timeout=60)
    return r.stdout


@ray
def test_resources_reach_ray(tmp_path):
    """cpus -> num_cpus, mem -> memory: while the attempt runs, the head counts them in use
    (no other test asks Ray for memory, so the memory line is exactly ours)."""
    need_ray()
    p = write_plan(tmp_path / "plans", [{"id": "big", "prompt": "p", "agent": "sleep 120",
                                         "resources": {"cpus": 2, "mem": "123M"}}], goal="g", runner="ray")
    home = tmp_path / "home"
    d = spawn("run", "-q", p, home=home)
    try:
        wait_for(lambda: (task_dir(home, "g", "big") / "claim" / "owner.json").exists(), timeout=60,
                 what="the attempt started")

        def counted():
            out = _ray_usage()
            cpu = re.search(r"([\d.]+)/[\d.]+ CPU", out)
            return out if "123.00MiB/" in out and cpu and float(cpu.group(1)) >= 2.0 else None
        out = wait_for(counted, timeout=90, interval=0.5, what="ray status counting 2 CPUs and 123 MiB in use")
        assert re.search(r"123\.00MiB/[\d.]+\w+ memory", out), out
        # status names the runner and the Ray task id of the running attempt
        tid = json.loads((task_dir(home, "g", "big") / "claim" / "owner.json").read_text())["handle"]["task_id"]
        row = json.loads(run("status", "g", "--json", home=home).stdout)["tasks"][0]
        assert row["state"] == "running" and row["runner"] == "ray" and row["task_id"] == tid, row
        assert f"ray task {tid[:16]}" in run("status", "g", home=home, env={"COLUMNS": "200"}).stdout
        run("cancel", "g", "big", home=home, timeout=60)
        assert d.wait(60) == 1
        # Ray stops a cancelled task's agent on its node asynchronously (a force-cancel kills
        # the worker, whose guard then kills the agent's group); under CI's load that took
        # longer than the stray-agent check's 15 s once: wait for it here, and fail if it stays
        wait_for(lambda: not agents_of(home), timeout=60, interval=0.2, what="the cancelled agent gone on its Ray node")
    finally:
        kill_group(d)
    assert (task_dir(home, "g", "big") / "cancelled").exists()


ITEMS = r"""
import json, os, select, sys
from dagrun import rayrun
from dagrun.executor import Launch
root = sys.argv[1]
prompt = os.path.join(root, "prompt.md")
open(prompt, "w").write("the prompt")
r = rayrun.RayRunner()
h = r.start(Launch(agent="sleep 0.5; cat; printf ' ok'; printf err >&2", cwd=root,
                   env={"PATH": os.environ["PATH"]}, stdin_path=prompt, stdout_path=os.path.join(root, "stdout"),
                   stderr_path=os.path.join(root, "stderr"), run_id="r1", runner="ray", spec={"ray": {}}))
t = r._tasks[r.key(h)]
r._ray.wait([t.ref], timeout=60)     # the Ray task ended before the driver looked at all: its
ex = None                            # node (in the KV, while it ran) and its result both wait
polls = 0
while ex is None:
    w = r.wakeup()
    ready, _, _ = select.select(list(w.fds), [], [], w.timeout)
    r.service(set(ready))
    ex = r.poll(h)
    polls += 1
assert ex.code == 0 and ex.node, ex
print(json.dumps({"out": open(os.path.join(root, "stdout")).read(), "err": open(os.path.join(root, "stderr")).read(),
                  "node": ex.node, "polls": polls}))
"""


@ray
def test_an_attempt_whose_node_and_result_both_wait_is_committed_whole(tmp_path):
    """A long attempt puts its node into Ray's KV, then returns its result; a driver that looks
    only after both (the Ray task ended) reads the result, with the node, whole."""
    need_ray()
    r = subprocess.run([sys.executable, "-c", ITEMS, str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "DAGRUN_RUN_ID": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["out"] == "the prompt ok" and res["err"] == "err" and res["node"], res


FORCED = r"""
import os, select, sys, time
from dagrun import rayrun
from dagrun.executor import Launch
root, home = sys.argv[1], sys.argv[2]
prompt = os.path.join(root, "prompt.md")
open(prompt, "w").write("p")
r = rayrun.RayRunner()
# `sleep` is the shell's child, not the Ray worker's: Ray kills only the worker's own children
h = r.start(Launch(agent="sleep 60; echo never", cwd=root, env={"PATH": os.environ["PATH"], "DAGRUN_HOME": home},
                   stdin_path=prompt, stdout_path=os.path.join(root, "stdout"),
                   stderr_path=os.path.join(root, "stderr"), run_id="forced-" + str(os.getpid()), runner="ray",
                   spec={"ray": {}}))
t0 = time.monotonic()
while r.node(h) is None:                  # the agent runs (its node streamed back)
    w = r.wakeup()
    r.service(set(select.select(list(w.fds), [], [], 0.1)[0]))
    r.poll(h)
    assert time.monotonic() - t0 < 60, "the attempt never ran"
print("running", flush=True)
sys.stdin.readline()                      # the test saw the agent
r.kill(h)                                 # ray.cancel(force=True): the worker exits
ex = None
while ex is None:
    w = r.wakeup()
    r.service(set(select.select(list(w.fds), [], [], 0.1)[0]))
    ex = r.poll(h)
print(ex.describe(), flush=True)
"""


@ray
def test_a_force_cancelled_attempt_leaves_no_process_of_its_agent(tmp_path):
    """kill() is ray.cancel(force=True): the Ray worker exits, and as it exits Ray SIGKILLs the
    worker's own children (kill_child_processes_on_worker_exit) -- the agent's shell, and a
    guard that was the worker's child too. The agent's other processes (here the `sleep` the
    shell started) were left running with nobody to sweep them: CI's cancelled Ray agents that
    outlived their tests (the engine force-cancels an attempt its terminate did not stop within
    kill_grace). The guard is no child of the worker: it sees the worker go and sweeps the rest."""
    need_ray()
    home = tmp_path / "home"
    home.mkdir()
    d = subprocess.Popen([sys.executable, "-c", FORCED, str(tmp_path), str(home.resolve())], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "DAGRUN_RUN_ID": ""}, start_new_session=True)
    try:
        assert d.stdout.readline().strip() == "running", d.stderr.read()[-3000:]
        wait_for(lambda: len(agents_of(home)) == 2, timeout=10, what="the agent's shell and its sleep")
        d.stdin.write("\n")
        d.stdin.flush()
        assert "cancelled" in d.stdout.readline()
        assert d.wait(30) == 0
        wait_for(lambda: not agents_of(home), timeout=10, interval=0.1,
                 what="no process of the force-cancelled agent left")
    finally:
        kill_group(d)


WORKER = r"""
import os, signal, sys, time
from dagrun import rayrun
cwd, rid = sys.argv[1], sys.argv[2]


def guard_pid():                 # the process holding this worker's guard pipe (on its fd 0, or
    pipe = os.readlink(f"/proc/self/fd/{sys.modules['_dagrun_ray_guard_v3'].w}")   # 3/4 just forked)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for d in os.listdir("/proc"):
            try:
                if d.isdigit() and int(d) != os.getpid() and any(
                        os.readlink(f"/proc/{d}/fd/{fd}") == pipe for fd in os.listdir(f"/proc/{d}/fd")):
                    return int(d)
            except OSError:
                pass
        time.sleep(0.01)


env = {**os.environ, "DAGRUN_RUN_ID": rid + "-1"}
assert rayrun.run_agent("true", cwd, env, b"", None, 1.0)["code"] == 0
g1 = guard_pid()
os.kill(g1, signal.SIGKILL)      # the guard dies: the next attempt must start another one
while os.path.exists(f"/proc/{g1}") and open(f"/proc/{g1}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
    time.sleep(0.01)
print(g1, flush=True)
env["DAGRUN_RUN_ID"] = rid + "-2"
rayrun.run_agent("setsid sleep 60 & sleep 60", cwd, env, b"", None, 1.0)
"""


def test_a_worker_that_dies_mid_attempt_leaves_no_process_of_its_agent_even_after_its_guard_died(tmp_path):
    """The guard of a Ray worker, without Ray (run_agent is a plain function; a plain Python
    process plays the worker): the worker's first guard is killed between two attempts, the
    next attempt starts another one, and when the worker is SIGKILLed mid-attempt that guard
    kills the agent's group and the process that left it (`setsid`), found by its run id in the
    state file the worker wrote (the guard is never woken before). Fails if the dead guard is
    not replaced or does not read the state: the agent runs its whole 60 s."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DAGRUN_RUN_ID"}
    env["DAGRUN_HOME"] = str(home.resolve())
    w = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), f"guard-{os.getpid()}-{tmp_path.name}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert w.stdout.readline().strip().isdigit(), w.stderr.read()[-3000:]
        wait_for(lambda: len(agents_of(home)) == 3, timeout=10, what="the agent's shell and its two sleeps")
        os.kill(w.pid, 9)
        w.wait(10)
        wait_for(lambda: not agents_of(home), timeout=10, interval=0.1, what="the guard to sweep the dead worker's agent")
    finally:
        kill_group(w)


SLOW_GUARD = r"""
import os, sys
from dagrun import rayrun
cwd, rid, slow = sys.argv[1], sys.argv[2], sys.argv[3]
sys.executable = slow            # the guard's interpreter: a wrapper that starts it only when told
rayrun.run_agent("setsid sleep 60 & sleep 60", cwd, {**os.environ, "DAGRUN_RUN_ID": rid}, b"", None, 1.0)
"""


def test_a_workers_first_attempt_does_not_wait_for_its_guards_python_and_is_guarded_meanwhile(tmp_path):
    """A Ray worker's first attempt starts its guard; the worker waits only for the guard's
    launcher (a shell that forks it), not for the guard's Python to start (16-70 ms an attempt
    at load 6, in every fresh worker's first task): the guard waits for the worker's end as a
    shell and becomes its Python only then. Here the guard's interpreter is held back until
    the test says so: the agent must start all the same, and a worker SIGKILLed in that time
    must still have its agent swept once the interpreter runs (the guard holds the pipe from
    its fork on). Fails on 9a12c26, whose worker waited for a Python launcher to start and
    fork: the agent never starts while the interpreter is held."""
    home = tmp_path / "home"
    home.mkdir()
    go = tmp_path / "go"
    slow = tmp_path / "python"
    slow.write_text(f"#!/bin/sh\nwhile [ ! -e '{go}' ]; do sleep 0.05; done\nexec '{sys.executable}' \"$@\"\n")
    slow.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DAGRUN_RUN_ID"}
    env["DAGRUN_HOME"] = str(home.resolve())
    w = subprocess.Popen([sys.executable, "-c", SLOW_GUARD, str(tmp_path), f"slow-{os.getpid()}-{tmp_path.name}",
                          str(slow)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        wait_for(lambda: len(agents_of(home)) == 3 or w.poll() is not None, timeout=20,
                 what="the agent's shell and its two sleeps, with the guard's Python not started")
        assert w.poll() is None, w.stderr.read()[-3000:]
        assert not go.exists()
        os.kill(w.pid, 9)
        w.wait(10)
        go.touch()                 # the guard's Python starts now: the worker is gone already
        wait_for(lambda: not agents_of(home), timeout=20, interval=0.1, what="the guard to sweep the dead worker's agent")
    finally:
        go.touch()
        kill_group(w)


KV = r"""
import json, os, select, sys, time
from dagrun import rayrun
from dagrun.executor import Launch
from ray.experimental import internal_kv as kv
root = sys.argv[1]
prompt = os.path.join(root, "prompt.md")
open(prompt, "w").write("p")
r = rayrun.RayRunner()


def launch(agent, rid):
    return Launch(agent=agent, cwd=root, env={"PATH": os.environ["PATH"]}, stdin_path=prompt,
                  stdout_path=os.path.join(root, rid + ".out"), stderr_path=os.path.join(root, rid + ".err"),
                  run_id=rid, runner="ray", spec={"ray": {}})


def key(rid):
    return kv._internal_kv_get(b"node/" + rid.encode(), namespace=rayrun.KV_NS)


def turn(h):
    w = r.wakeup()
    ready = set(select.select(list(w.fds), [], [], w.timeout)[0])
    due = r.exits(ready)
    r.service(ready)
    ex = r.poll(h) if r.key(h) in due else None
    if ex is None and r.key(h) in due:
        r.node(h)                  # as the engine does for a running attempt without a node
    return ex


out = {}
for name, agent, stop in (("ends", "sleep 4; printf ok", False), ("killed", "sleep 60", True)):
    rid = f"kv-{name}-{os.getpid()}"
    h = r.start(launch(agent, rid))
    t0 = time.monotonic()
    while r.node(h) is None:      # learnt from the KV while it runs, by the loop's own timeout
        assert turn(h) is None and time.monotonic() - t0 < 60, "no node while it ran"
    out[name + " node"] = r.node(h)
    out[name + " key while running"] = (key(rid) or b"").decode()
    if stop:
        r.kill(h)
    ex = None
    while ex is None:
        ex = turn(h)
    out[name + " exit"] = ex.describe()
    out[name + " exit node"] = ex.node
    time.sleep(0.2)
    out[name + " key after"] = key(rid)
print(json.dumps(out))
"""


@ray
def test_a_long_attempts_node_is_learnt_from_rays_kv_and_its_key_goes_with_it(tmp_path):
    """An attempt running past PLACE_AFTER puts its node into Ray's internal KV; the driver's
    loop (woken by wakeup()'s timeout, polling what exits() names, then node()) learns it while
    the attempt runs; the key is gone once the attempt ended (deleted by the remote function),
    and once a force-cancelled attempt ended (its worker died: deleted by the driver)."""
    need_ray()
    import socket
    r = subprocess.run([sys.executable, "-c", KV, str(tmp_path)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "DAGRUN_RUN_ID": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    node = socket.gethostname()
    for name in ("ends", "killed"):
        assert res[f"{name} node"] == res[f"{name} key while running"] == res[f"{name} exit node"] == node, res
        assert res[f"{name} key after"] is None, res
    # a force cancel ends either way, both the SIGKILL dagrun asked for: Ray kills the task
    # (its ref raises) or the remote function sees its agent killed first and returns that
    assert res["ends exit"] == "exit code 0", res
    assert res["killed exit"] in ("ray task cancelled (SIGKILL)", "killed by SIGKILL"), res


def test_the_loop_never_waits_for_rays_kv_to_learn_where_an_attempt_runs(tmp_path, monkeypatch):
    """node() of an attempt due for a look at Ray's KV returns at once, whatever the GCS takes:
    the read runs in a thread of its own; when it found the node, the runner's wakeup() fd
    rings, exits() names the attempt, and node() says where it runs. (No Ray needed: a stand-in
    for Ray's internal KV that answers after 0.6 s.)"""
    import select
    import threading
    import time
    import types

    from dagrun import rayrun
    from dagrun.executor import Launch

    calls: list[list[bytes]] = []

    class Gcs:
        def internal_kv_multi_get(self, keys, ns, timeout=None):
            calls.append(list(keys))
            time.sleep(0.6)
            return {k: b"node7" for k in keys}

    kv = types.ModuleType("ray.experimental.internal_kv")
    kv.internal_kv_get_gcs_client = lambda: Gcs()
    exp = types.ModuleType("ray.experimental")
    exp.internal_kv = kv
    fake_ray = types.ModuleType("ray")
    fake_ray.experimental = exp
    for name, mod in (("ray", fake_ray), ("ray.experimental", exp), ("ray.experimental.internal_kv", kv)):
        monkeypatch.setitem(sys.modules, name, mod)
    r = rayrun.RayRunner()
    try:
        launch = Launch(agent="true", cwd=str(tmp_path), env={}, stdin_path="", stdout_path="", stderr_path="",
                        run_id="rid-1", runner="ray", spec={})
        h = {"runner": "ray", "task_id": "t1", "run_id": "rid-1"}
        now = time.monotonic()
        r._tasks["t1"] = rayrun._Task(threading.Event(), h, launch, now - 0.01, now - 1.0)   # due for a look
        r._next_look = now - 0.01
        t0 = time.monotonic()
        assert r.node(h) is None
        assert time.monotonic() - t0 < 0.3, "node() waited for the KV"
        assert r.node(h) is None and len(calls) == 1          # one read at a time
        w = r.wakeup()
        assert select.select(list(w.fds), [], [], 5.0)[0], "the read's end did not ring"
        ready = set(w.fds)
        assert r.exits(ready) == {"t1"}
        r.service(ready)
        assert r.node(h) == "node7"
        assert calls == [[b"node/rid-1"]]
        assert r.exits(set()) == set()                         # named once
    finally:
        r.close()


FAST = r"""
import os, select, sys
import ray
from dagrun import rayrun
from dagrun.executor import Launch
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)


@ray.remote(max_retries=0)
def probe(a):
    ctx = ray.get_runtime_context()
    return a, ctx.get_task_name(), ctx.get_assigned_resources()


opts = {k: v for k, v in probe._default_options.items() if k != "max_calls"}
opts.update(num_cpus=1, memory=64 * 1024 * 1024)
first = ray.get(probe._remote(args=((1, "x"),), kwargs=None, **opts, name="by-ray"))     # (exports it)
fast = rayrun._fast_submit(ray, probe, opts)
assert fast is not None, "no fast submission on this Ray"
second = ray.get(fast("by-dagrun", (1, "x")))
assert first == ((1, "x"), "by-ray", {"CPU": 1.0, "memory": 67108864.0}), first
assert second == ((1, "x"), "by-dagrun", first[2]), second

root = sys.argv[1]
prompt = os.path.join(root, "prompt.md")
open(prompt, "w").write("hello")
r = rayrun.RayRunner()
hs = []
for i in range(3):
    hs.append(r.start(Launch(agent="cat; echo $DAGRUN_RUN_ID >&2; exit 4", cwd=root, env={"PATH": os.environ["PATH"]},
                             stdin_path=prompt, stdout_path=os.path.join(root, f"out{i}"),
                             stderr_path=os.path.join(root, f"err{i}"), run_id=f"fast{i}-{os.getpid()}", runner="ray",
                             spec={"ray": {}, "resources": {"cpus": 1, "mem": "64M"}, "name": f"t{i}"})))
exits = {}
while len(exits) < 3:
    w = r.wakeup()
    r.service(set(select.select(list(w.fds), [], [], 0.1)[0]))
    for i, h in enumerate(hs):
        if i not in exits:
            ex = r.poll(h)
            if ex is not None:
                exits[i] = ex
for i in range(3):
    assert exits[i].code == 4, exits[i]
    assert open(os.path.join(root, f"out{i}")).read() == "hello"
    assert open(os.path.join(root, f"err{i}")).read() == f"fast{i}-{os.getpid()}\n"
assert [f.__name__ for f in r._fast.values()] == ["go"], r._fast
r.close()
print("ok", flush=True)
"""


@ray
def test_the_fast_submission_gives_ray_the_task_its_own_entry_would(tmp_path):
    """rayrun._fast_submit goes to the core worker's submit_task with the options worked out
    once: the task Ray runs must be the one RemoteFunction._remote would have submitted -- the
    same argument, its own name, the same resources (CPU and memory) -- and the runner must
    take that path from its second attempt on, with each attempt's stdin, stdout, stderr and
    exit code intact. Fails if the name, the resources or the argument differ, or if the
    runner falls back to Ray's entry."""
    need_ray()
    p = subprocess.run([sys.executable, "-c", FAST, str(tmp_path)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "DAGRUN_RUN_ID": ""})
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
