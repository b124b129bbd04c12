"""The Ray runner on a real Ray head (RAY_ADDRESS; .ci/run starts one): the same plans give the
same outputs as the local runner; a Ray worker that dies under a running attempt ends it
`failed` with Ray's reason, and the task's retries apply. Marked `ray`: skipped without the
package or a head, failing under CI=true. The runner check (exit 2) needs no head."""
from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import EXAMPLES, events, kill_group, need_ray, outputs, processes_with_env, run, spawn, task_dir, wait_for, \
    write_plan

ray = pytest.mark.ray


def test_a_ray_plan_without_a_reachable_head_is_refused_at_submit(tmp_path):
    p = write_plan(tmp_path / "plans", [{"id": "a", "prompt": "p"}], goal="g", runner="ray",
                   defaults={"agent": "true", "ray": {"address": "127.0.0.1:1"}})
    r = run("submit", p, home=tmp_path / "home", check=2)
    assert "runner ray: " in r.stderr and ("cannot reach the Ray head at 127.0.0.1:1" in r.stderr
                                           or "ray package is not installed" in r.stderr)
    assert not (tmp_path / "home" / "goals" / "g").exists()


@ray
def test_example_goal_and_a_fifty_task_dag_give_the_local_outputs(tmp_path):
    need_ray()
    ex = EXAMPLES / "add-auth" / "dag.json"
    run("run", "-q", ex, home=tmp_path / "local")
    r = run("run", "-q", "--runner", "ray", ex, home=tmp_path / "ray", timeout=180)
    assert "goal add-auth done" in r.stdout
    assert outputs(tmp_path / "ray", "add-auth") == outputs(tmp_path / "local", "add-auth")

    tasks = [{"id": f"t{layer}-{i}", "prompt": f"task {layer}/{i}",
              "deps": [] if layer == 0 else [f"t{layer - 1}-{i}", f"t{layer - 1}-{(i + 3) % 10}"]}
             for layer in range(5) for i in range(10)]
    p = write_plan(tmp_path / "plans", tasks, goal="fifty",
                   defaults={"agent": "printf '%s ' \"$DAGRUN_TASK\"; cksum | cut -d' ' -f1"})
    run("run", "-q", "-j", "8", p, home=tmp_path / "local")
    r = run("run", "-q", "-j", "8", "--runner", "ray", p, home=tmp_path / "ray", timeout=300)
    assert "goal fifty done: 50 done" in r.stdout
    assert outputs(tmp_path / "ray", "fifty") == outputs(tmp_path / "local", "fifty")
    running = [e for e in events(tmp_path / "ray", "fifty") if e.get("status") == "running"]
    assert len(running) == 50 and all(e["runner"] == "ray" and len(e["task_id"]) > 10 for e in running)


def _run_retried_once(tmp_path, agent: str):
    """A driver (`dagrun run -q`) of goal g: one Ray task "a" running `agent`, one retry at once."""
    p = write_plan(tmp_path / "plans", [{"id": "a", "prompt": "p", "agent": agent, "retries": 1,
                                         "retry_backoff": 0}], goal="g", runner="ray")
    home = tmp_path / "home"
    return home, spawn("run", "-q", p, home=home)


@ray
def test_a_ray_worker_that_dies_fails_the_attempt_with_rays_reason_then_retries(tmp_path):
    need_ray()
    agent = "if [ \"$DAGRUN_ATTEMPT\" = 1 ]; then sleep 60; fi; printf ok"
    home, d = _run_retried_once(tmp_path, agent)
    try:
        def parent(q):
            return int(open(f"/proc/{q}/stat").read().rsplit(")", 1)[1].split()[1])

        def agent_pid():       # the agent's shell: the one whose parent is not an agent process
            pids = set(processes_with_env("DAGRUN_HOME", str(home))) & set(processes_with_env("DAGRUN_ATTEMPT", "1"))
            shells = [q for q in pids if parent(q) not in pids]
            return shells[0] if shells else None
        wait_for(agent_pid, timeout=60, what="the agent running on the Ray worker")
        worker = parent(agent_pid())
        os.kill(worker, signal.SIGKILL)                      # the node's worker dies under the attempt
        assert d.wait(90) == 0
    finally:
        kill_group(d)
    rec = json.loads((task_dir(home, "g", "a") / "attempts" / "1.json").read_text())
    assert rec["outcome"] == "failed" and rec["reason"].startswith("ray: ") and rec["counted"]
    assert (task_dir(home, "g", "a") / "output").read_text() == "ok"
    assert json.loads((task_dir(home, "g", "a") / "done").read_text())["attempt"] == 2


@ray
def test_the_node_of_each_attempt_shows_in_status_events_and_markers(tmp_path):
    """The Ray task says where it runs as soon as it starts (its first streamed item): the
    node goes into owner.json (status), a `placed` event, and at the end the done marker,
    the attempt record and the done / retrying event."""
    import socket
    need_ray()
    node = socket.gethostname()        # the one-node Ray head of the tests runs on this host
    go = tmp_path / "go"        # a runs until the test has seen it running on its node
    p = write_plan(tmp_path / "plans", [
        {"id": "a", "prompt": "p", "agent": f"until [ -e {go} ]; do sleep 0.05; done; printf ok"},
        {"id": "b", "prompt": "p", "agent": "[ \"$DAGRUN_ATTEMPT\" = 2 ] || exit 4; printf ok", "retries": 1,
         "retry_backoff": 0}], goal="g", runner="ray")
    home = tmp_path / "home"
    d = spawn("run", "-q", "-j", "2", p, home=home)
    try:
        seen: dict = {}

        def placed_running():
            r = run("status", "g", "--json", home=home, check=False)    # (before the submit: exit 2)
            rows = json.loads(r.stdout)["tasks"] if r.returncode == 0 else []
            seen.update({r["task"]: r["node"] for r in rows if r["state"] == "running" and r.get("node")})
            return "a" in seen
        wait_for(placed_running, timeout=60, interval=0.2, what="task a running on a known node")
        assert seen["a"] == node
        table = run("status", "g", home=home).stdout      # the table: WORKER@NODE (a still runs)
        assert f"@{node}" in table, table
        go.touch()
        assert d.wait(90) == 0
    finally:
        go.touch()                  # (a failed test's agent ends too)
        kill_group(d)
    for t in ("a", "b"):
        assert json.loads((task_dir(home, "g", t) / "done").read_text())["node"] == node
    assert json.loads((task_dir(home, "g", "b") / "attempts" / "1.json").read_text())["node"] == node
    assert json.loads((task_dir(home, "g", "b") / "attempts" / "2.json").read_text())["node"] == node
    evs = events(home, "g")
    placed = [e for e in evs if e["type"] == "agent.task.placed"]
    # a: placed while it ran; b's attempts end at once and may end before the driver asked
    # where they run (their end events say it all the same)
    assert ("a", 1) in [(e["task"], e["attempt"]) for e in placed] and len(placed) <= 3
    assert all(e["node"] == node and e["runner"] == "ray" for e in placed)
    ends = [e for e in evs if e.get("status") in ("done", "retrying")]
    assert len(ends) == 3 and all(e["node"] == node for e in ends)


@ray
def test_an_agent_that_kills_its_ray_worker_at_once_does_not_outlive_it(tmp_path):
    """The Ray worker dies in the very instant its agent starts (here the agent kills it
    itself, before the remote function has done anything after starting it): the agent's
    process group still goes, the attempt fails with Ray's reason and the retry runs. (A guard
    told of the agent only after it started missed it: the agent ran on, orphaned.)"""
    from conftest import agents_of
    need_ray()
    agent = "if [ \"$DAGRUN_ATTEMPT\" = 1 ]; then kill -KILL $PPID; sleep 60; fi; printf ok"
    home, d = _run_retried_once(tmp_path, agent)
    try:
        assert d.wait(90) == 0
        wait_for(lambda: not agents_of(home), timeout=10, interval=0.1, what="the orphaned agent killed")
    finally:
        kill_group(d)
    rec = json.loads((task_dir(home, "g", "a") / "attempts" / "1.json").read_text())
    assert rec["outcome"] == "failed" and rec["reason"].startswith("ray: ") and rec["counted"]
    assert (task_dir(home, "g", "a") / "output").read_text() == "ok"


@ray
def test_a_ray_agent_leads_its_own_process_group_inside_its_workers_session(tmp_path):
    """The agent's shell leads its own process group (what a cancel and the worker's guard kill),
    but is no session leader: setsid(2) makes a new scheduler autogroup per attempt (0.2-1.5 ms
    an attempt here: bench/ray_guard.py, bench/ray_edge.py) and a Ray worker has no terminal a
    session would shield it from."""
    need_ray()
    p = write_plan(tmp_path / "plans", [{"id": "a", "prompt": "p"}], goal="g", runner="ray",
                   defaults={"agent": "set -- $(cut -d')' -f2 /proc/$$/stat); echo \"$$ $3 $4 $(cut -d')' -f2 "
                                      "/proc/$PPID/stat | cut -d' ' -f5)\""})
    r = run("run", "-q", p, home=tmp_path / "home", timeout=120)
    assert "goal g done" in r.stdout
    pid, pgid, sid, worker_sid = (task_dir(tmp_path / "home", "g", "a") / "output").read_text().split()
    assert pgid == pid                      # its own group: killpg reaches all of it
    assert sid != pid and sid == worker_sid    # the Ray worker's session, not a new one


@ray
def test_a_local_ray_cluster_started_by_the_driver_lives_through_the_goal(tmp_path, monkeypatch):
    """`"ray": {"address": "local"}` starts a Ray of its own in the driver: it is started in the
    engine's thread, not the background connect (Ray's processes get a parent-death signal
    that fires when the thread that started them ends: the GCS died at once and the driver
    gave up after 60 s), and the local runner's sweep of agents' orphans, which kills the
    driver's unknown children when no attempt runs, leaves its processes alone (a local task
    between two Ray tasks killed them)."""
    import importlib.util
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the ray package is missing (CI installs .[ray])")
        pytest.skip("pip install -e '.[ray]'")
    local_ray = {"runner": "ray", "ray": {"address": "local"}}
    p = write_plan(tmp_path / "plans", [
        {"id": "a", "prompt": "p", "agent": "echo ray-a", **local_ray},
        {"id": "b", "prompt": "p", "agent": "echo local-b", "deps": ["a"], "runner": "local"},
        {"id": "c", "prompt": "p", "agent": "echo ray-c", "deps": ["b"], **local_ray}], goal="lr")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # HOME of its own: a new local Ray turns on token authentication and writes its token to
    # ~/.ray/auth_token, which every later driver on this machine would then present to
    # other clusters (CI's head, started without one, refuses them)
    r = run("run", "-q", p, home=tmp_path / "home", timeout=180, check=False, env={"HOME": str(tmp_path)})
    assert r.stdout == "goal lr done: 3 done\n", r.stderr
    assert outputs(tmp_path / "home", "lr") == {"a": "ray-a\n", "b": "local-b\n", "c": "ray-c\n"}
