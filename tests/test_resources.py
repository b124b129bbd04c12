"""Resources, mutex, serial groups, agent and tenant limits (dagrun/resources.py): real
workers, a real bash claim/complete loop, real SIGKILLs. Overlaps are measured twice: by the
agents themselves (a probe folder per running agent) and from the events (a unit's
`released` line always comes before the next holder's `running` line)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DAGRUN, crash_step, events, kill_group, run, spawn, task_dir, wait_for, write_plan

from dagrun.plan import Task
from dagrun.scheduler import Scheduler

PROBE_SH = """#!/bin/sh
# one folder per running agent; how many run right now goes to counts
d=$(mktemp -d "$PROBE/in.XXXXXX")
n=$(ls -d "$PROBE"/in.* | wc -l)
echo "$n" >> "$PROBE/counts"
sleep "${HOLD:-0.05}"
rmdir "$d"
echo ok
"""


@pytest.fixture
def probe(plans: Path) -> tuple[Path, Path]:
    """The probe agent (plans/probe.sh) and its folder."""
    d = plans / "probe"
    d.mkdir(exist_ok=True)
    sh = plans / "probe.sh"
    sh.write_text(PROBE_SH)
    sh.chmod(0o755)
    return sh, d


@pytest.fixture
def procs():
    """Processes the test starts in their own session: killed (the group) when it ends, however it ends."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        kill_group(p)
        try:
            p.communicate(timeout=30)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def submit(home: Path, plans: Path, tasks: list[dict], goal: str, **top) -> Path:
    """plans/<goal>.json from `tasks`, submitted to home."""
    p = write_plan(plans, tasks, name=f"{goal}.json", goal=goal, **top)
    run("submit", p, home=home)
    return p


def finish(ws: list[subprocess.Popen], timeout: float = 60) -> None:
    """Wait for each of `ws` to end; each must exit 0."""
    for w in ws:
        _, err = w.communicate(timeout=timeout)
        assert w.returncode == 0, err


def counts(d: Path) -> list[int]:
    f = d / "counts"
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def overlap_from_events(evs: list[dict], name: str) -> int:
    """Most attempts holding resource `name` at once, by the order of the event lines."""
    inside = most = 0
    for e in evs:
        if e.get("status") == "running" and name in (e.get("resources") or {}):
            inside += 1
            most = max(most, inside)
        elif e.get("type") == "agent.task.resources" and name in (e.get("released") or []):
            inside -= 1
    return most


def bash_loop(home: Path, goal: str, env: dict) -> subprocess.Popen:
    """A script worker: dagrun claim / run the agent / dagrun complete, until the goal ends."""
    script = f"""
while :; do
    out=$({DAGRUN} claim --pid $$ --env {goal}); rc=$?
    case $rc in
        0) eval "$out"
           sh -c "$DAGRUN_AGENT" < "$DAGRUN_PROMPT_FILE" > "$DAGRUN_STDOUT_FILE" || exit 9
           {DAGRUN} complete --pid $$ {goal} "$DAGRUN_TASK" || exit 8 ;;
        3) sleep 0.05 ;;
        1) exit 0 ;;
        *) exit $rc ;;
    esac
done
"""
    e = dict(os.environ)
    e.update(env, DAGRUN_HOME=str(home))
    return subprocess.Popen(["bash", "-c", script], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def units_held(home: Path) -> dict[str, int]:
    rows = json.loads(run("resources", "--json", home=home).stdout)["resources"]
    return {f"{r['scope']}:{r['name']}": r["held"] for r in rows}


def leftovers(home: Path) -> list[str]:
    base = home / "resources" / "pools"
    return [str(p) for p in base.rglob("*") if p.name.startswith((".new.", ".gone."))] if base.exists() else []


# ------------------------------------------------------------------------------ end to end
def test_mutex_never_exceeded_by_four_workers_and_a_bash_script(home, plans, probe, procs):
    sh, d = probe
    submit(home, plans, [{"id": f"t{i:02d}", "prompt": "p"} for i in range(50)], "mx",
           defaults={"agent": str(sh), "mutex": "repo"})
    env = {"PROBE": str(d), "HOLD": "0.02"}
    workers = [spawn("run", "mx", "-j", "4", home=home, env=env) for _ in range(4)]
    procs.extend(workers)
    script = bash_loop(home, "mx", env)
    procs.append(script)
    for w in workers:
        w.communicate(timeout=120)
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err
    evs = events(home, "mx")
    assert sum(1 for e in evs if e.get("status") == "done") == 50
    assert len(counts(d)) == 50 and max(counts(d)) == 1, counts(d)        # the agents never met
    assert overlap_from_events(evs, "repo") == 1                           # nor did the units
    by = {e.get("worker") for e in evs if e.get("status") == "running"}
    assert len(by) >= 2, by                                                # they really contended
    assert units_held(home)["home:repo"] == 0 and leftovers(home) == []


def test_units_come_back_after_the_holder_is_sigkilled(home, plans, probe, procs):
    sh, d = probe
    run("resources", "set", "gpu", "1", home=home)
    # an engine holding the unit is SIGKILLed: the next goal's worker proves it dead and takes it
    submit(home, plans, [{"id": "hog", "prompt": "p", "resources": {"gpu": 1},
                          "agent": '[ "$DAGRUN_ATTEMPT" = 1 ] && sleep 30; echo ok'}], "slow")
    submit(home, plans, [{"id": "next", "prompt": "p", "resources": {"gpu": 1}, "agent": str(sh)}], "fast")
    eng = spawn("run", "slow", home=home)
    procs.append(eng)
    wait_for(lambda: units_held(home)["home:gpu"] == 1, what="the unit taken")
    st = json.loads(run("status", "fast", "--json", home=home).stdout)
    assert st["tasks"][0]["waiting_for"] == "waiting for resource gpu (held by slow/hog)"
    os.kill(eng.pid, signal.SIGKILL)
    eng.wait(timeout=10)
    t0 = time.monotonic()
    run("run", "fast", home=home, env={"PROBE": str(d)}, timeout=30)
    assert time.monotonic() - t0 < 10
    assert (task_dir(home, "fast", "next") / "done").exists()
    kill_group(eng)                  # (the orphaned agent of `hog` sleeps on in the group)
    # the dead engine's goal runs again: its claim is broken, the orphan reaped, attempt 2 runs
    run("run", "slow", home=home, timeout=60)
    assert units_held(home)["home:gpu"] == 0 and leftovers(home) == []

    # a script's claim: its holder (--pid) is SIGKILLed while it holds the unit
    run("resources", "set", "gpu", "1", home=home)
    submit(home, plans, [{"id": f"s{i}", "prompt": "p", "resources": {"gpu": 1}} for i in range(2)], "scr",
           defaults={"agent": "true"})
    holder = subprocess.Popen(["sleep", "60"], start_new_session=True)
    procs.append(holder)
    info = json.loads(run("claim", "--json", "--pid", str(holder.pid), "scr", home=home).stdout)
    assert info["resources"] == {"gpu": 1}
    assert run("claim", "--pid", str(holder.pid), "scr", home=home, check=3)   # nothing it can start
    holder.kill()
    holder.wait()
    assert units_held(home)["home:gpu"] == 0            # judged stale and broken on the look
    info2 = json.loads(run("claim", "--json", "--pid", str(os.getpid()), "scr", home=home).stdout)
    assert info2["resources"] == {"gpu": 1}


def test_serial_group_runs_one_at_a_time_in_plan_order(home, plans, probe):
    sh, d = probe
    tasks = [{"id": "z-first", "prompt": "p", "serial": "deploy"},
             {"id": "a-second", "prompt": "p", "serial": "deploy", "agent": "exit 3"},   # fails: the next still runs
             {"id": "m-third", "prompt": "p", "serial": "deploy", "priority": 9},
             {"id": "free", "prompt": "p"}]
    submit(home, plans, tasks, "ser", defaults={"agent": str(sh)})
    run("run", "ser", "-j", "4", home=home, env={"PROBE": str(d), "HOLD": "0.2"}, check=1)
    evs = events(home, "ser")
    order = [e["task"] for e in evs if e.get("status") == "running" and e["task"] != "free"]
    assert order == ["z-first", "a-second", "m-third"]
    seq = [(e["task"], e["status"]) for e in evs if e.get("status") in ("running", "done", "failed")
           and e["task"] != "free"]
    assert seq == [("z-first", "running"), ("z-first", "done"), ("a-second", "running"), ("a-second", "failed"),
                   ("m-third", "running"), ("m-third", "done")]
    assert max(counts(d)) == 2          # `free` ran beside the group


def test_agent_limit_caps_one_agent_and_not_the_others(home, plans, probe):
    sh, d = probe
    tasks = [{"id": f"p{i}", "prompt": "p"} for i in range(6)] + [{"id": "other", "prompt": "p", "agent": "echo x"}]
    submit(home, plans, tasks, "al", agent_limits={"probe.sh": 2}, defaults={"agent": str(sh)})
    run("run", "al", "-j", "6", home=home, env={"PROBE": str(d), "HOLD": "0.3"})
    assert max(counts(d)) == 2 and len(counts(d)) == 6
    assert overlap_from_events(events(home, "al"), "agent.probe.sh (goal al)") == 2


def test_validation_errors_exit_2_with_one_line(home, plans):
    bad = [
        ({"resources": {"gpu": 1}}, [{"id": "a", "prompt": "p", "resources": {"gpu": 2}}],
         'tasks[0].resources.gpu: task "a" asks for 2 units of "gpu" but the plan\'s capacity of "gpu" is 1'),
        ({}, [{"id": "a", "prompt": "p", "resources": {"g pu": 1}}], 'invalid resource name "g pu"'),
        ({}, [{"id": "a", "prompt": "p", "resources": {"gpu": -1}}], "must be at least 0"),
        ({}, [{"id": "a", "prompt": "p", "mutex": "a/b"}], "invalid id"),
        ({"agent_limits": {"claude": 0}}, [{"id": "a", "prompt": "p"}], "agent_limits.claude: must be at least 1"),
        ({}, [{"id": "a", "prompt": "p", "serial": "s", "deps": ["b"]}, {"id": "b", "prompt": "p", "serial": "s"}],
         'serial group "s" runs in plan order, but that order contradicts the dependencies'),
        ({"tenant": "not ok"}, [{"id": "a", "prompt": "p"}], "tenant: invalid id"),
    ]
    for i, (top, tasks, msg) in enumerate(bad):
        p = write_plan(plans, tasks, name=f"bad{i}.json", defaults={"agent": "true"}, **top)
        for cmd in ("validate", "submit") if i < 2 else ("validate",):
            r = run(cmd, p, home=home, check=2)
            assert r.stderr.count("\n") == 1 and msg in r.stderr and "Traceback" not in r.stderr, (cmd, r.stderr)
    # a home capacity: refused at submit and validate, nothing created
    run("resources", "set", "gpu", "1", home=home)
    p = write_plan(plans, [{"id": "a", "prompt": "p", "resources": {"gpu": 2}}], name="big.json", goal="big",
                   defaults={"agent": "true"})
    for cmd in ("validate", "submit"):
        r = run(cmd, p, home=home, check=2)
        assert r.stderr.strip().endswith("task 'a' asks for 2 units of gpu but its capacity is 1 in "
                                         f"{home} (see: dagrun resources)"), r.stderr
    assert not (home / "goals" / "big").exists()
    r = run("resources", "set", "bad name", "1", home=home, check=2)
    assert r.stderr.count("\n") == 1


def test_home_capacity_is_honoured_by_two_goals_and_tenant_limits(home, plans, probe, procs):
    sh, d = probe
    run("resources", "set", "gpu", "1", home=home)
    for g in ("g1", "g2"):
        submit(home, plans, [{"id": f"t{i}", "prompt": "p", "resources": {"gpu": 1}} for i in range(3)], g,
               defaults={"agent": str(sh)})
    env = {"PROBE": str(d), "HOLD": "0.1"}
    ws = [spawn("run", g, "-j", "3", home=home, env=env) for g in ("g1", "g2")]
    procs.extend(ws)
    finish(ws)
    assert len(counts(d)) == 6 and max(counts(d)) == 1

    # tenant limit: acme's two goals together hold one unit of "lic"; another tenant is free
    run("resources", "unset", "gpu", home=home)
    run("resources", "set", "--tenant", "acme", "lic", "1", home=home)
    d2 = plans / "probe2"
    d2.mkdir()
    for g, tenant in (("a1", "acme"), ("a2", "acme"), ("b1", "bolt")):
        submit(home, plans, [{"id": f"t{i}", "prompt": "p", "resources": {"lic": 1}} for i in range(2)], g,
               tenant=tenant, defaults={"agent": str(sh)})
    (d / "counts").unlink()
    ws = [spawn("run", g, "-j", "2", home=home, env={"PROBE": str(d2 if g == "b1" else d), "HOLD": "0.2"})
          for g in ("a1", "a2", "b1")]
    procs.extend(ws)
    finish(ws)
    assert len(counts(d)) == 4 and max(counts(d)) == 1        # acme: one at a time
    assert max(counts(d2)) == 2                                # bolt: not limited
    rows = json.loads(run("resources", "--json", home=home).stdout)["resources"]
    assert {"name": "lic", "scope": "tenant", "tenant": "acme", "capacity": 1, "held": 0, "holders": []} in rows


def test_separate_homes_per_tenant_are_private(tmp_path):
    """The permission model: one home per tenant, made 0700 by dagrun; nothing in it is group-
    or world-writable, so another user's CLI can neither read nor change it."""
    for name in ("acme", "bolt"):
        h = tmp_path / name
        run("resources", "set", "gpu", "1", home=h)
        assert (h.stat().st_mode & 0o777) == 0o700
        for p in h.rglob("*"):
            assert not p.stat().st_mode & 0o022, p


# ------------------------------------------------------------------------------ the pure rule
def T(tid, prio=0, deps=()):
    return Task(id=tid, deps=tuple(deps), soft_deps=(), prompt="", prompt_file=None, agent="a", timeout=None,
                retries=0, retry_backoff=0, retry_context="none", stall_timeout=None, kill_grace=1, workdir=".",
                context_limit=1, max_output=None, priority=prio)


def test_scheduler_rule_backfills_without_starving_and_rebalances():
    s = Scheduler([T("big", 9), T("small", 5), T("other", 1)])
    s.set_resources({"big": {"home/gpu": 2}, "small": {"home/gpu": 1}, "other": {"home/cpu": 1}},
                    {"home/gpu": 1, "home/cpu": 1})
    # big waits for 2 gpus; small may not take the one free gpu from it; other uses another pool
    assert s.take() == "other" and s.take() is None
    assert s.resource_held() == {"big": ["home/gpu"], "small": ["home/gpu"]}
    s.set_resources(None, {"home/gpu": 2, "home/cpu": 0})     # freed capacity: the best-ranked task
    assert s.take() == "big" and s.take() is None
    s.finish("big", "done")
    s.set_resources(None, {"home/gpu": 2, "home/cpu": 0})
    assert s.take() == "small"


def test_scheduler_serial_rule():
    s = Scheduler([T("a"), T("b", 5), T("c", 9)], serial={"a": "g", "b": "g"})
    assert s.take() == "c" and s.take() == "a" and s.take() is None
    assert s.serial_wait("b") == "a"
    s.finish("a", "failed")
    assert s.take() == "b"


def test_dry_run_follows_the_resources(home, plans):
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p", "mutex": "repo"} for i in range(3)] +
                   [{"id": "free", "prompt": "p"}], goal="dr", defaults={"agent": "true"})
    r = run("run", "--dry-run", "-j", "4", p, home=home)
    waves = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(waves) >= 3, r.stdout         # the mutex: one of t0..t2 per wave
    s = Scheduler([T("a"), T("b")])
    s.set_resources({"a": {"home/m": 1}, "b": {"home/m": 1}}, {"home/m": 1})
    assert s.take() == "a" and s.take() is None
    s.finish("a", "done")
    assert s.take() == "b"


def _crash_walk_units(tmp_path, points=None) -> int:
    """SIGKILL `dagrun run` before its k-th file-system step on a goal whose tasks share a
    mutex and a home capacity (k in `points`, else every k), then resume: the goal finishes,
    every unit came back, nothing is left in the pools."""
    plans = tmp_path / "plans"
    tasks = [{"id": "a", "prompt": "p", "mutex": "m", "resources": {"gpu": 1}},
             {"id": "b", "prompt": "p", "mutex": "m", "agent": "exit 1", "retries": 1, "retry_backoff": 0},
             {"id": "c", "prompt": "p", "resources": {"gpu": 1}, "deps": ["a"]}]
    p = write_plan(plans, tasks, goal="cu", defaults={"agent": "echo ok"})
    template = tmp_path / "template"
    run("resources", "set", "gpu", "1", home=template)
    run("submit", p, home=template)
    if points == "units":          # the steps that take or give back units, from one traced run
        trace = tmp_path / "trace"
        shutil.copytree(template, tmp_path / "traced")
        run("run", "cu", home=tmp_path / "traced", check=1, env={"DAGRUN_STEP_TRACE": str(trace)})
        steps = [ln.split(" ", 2) for ln in trace.read_text().splitlines()]
        labels = [ln.split(" ", 1)[1] for ln in trace.read_text().splitlines()]
        renames = [int(n) for n, what, path in steps if what == "renameat2"]
        gone = [int(n) for n, what, path in steps if what == "rename" and "/.gone." in path]
        # before/after a unit is placed, mid-release -- each named by its label (crash_step):
        # the k-th step of another run is another one
        points = [crash_step(labels, renames[0], tmp_path / "traced"),
                  crash_step(labels, renames[0], tmp_path / "traced", after=True),
                  crash_step(labels, gone[0], tmp_path / "traced", after=True)]
    k, crashed = 1, 0
    while True:
        crash = {"DAGRUN_CRASH_AT": str(k)}
        if points is not None:
            if crashed == len(points):
                break
            k, crash = crashed, points[crashed]
        home = tmp_path / f"k{k}"
        shutil.copytree(template, home)
        r = run("run", "cu", home=home, check=False, env=crash)
        if r.returncode != -signal.SIGKILL:
            assert r.returncode == 1 and points is None, (k, r.stderr)   # b fails for good
            break
        crashed += 1
        r = run("run", "cu", home=home, check=False, env={"DAGRUN_CLAIM_GRACE": "0"})
        assert r.returncode == 1, (k, r.stderr)
        assert (task_dir(home, "cu", "c") / "done").exists(), k
        held = units_held(home)
        assert held.get("home:m", 0) == 0 and held.get("home:gpu", 0) == 0 and leftovers(home) == [], (k, held)
        shutil.rmtree(home)
        k += 1
    return crashed


def test_crash_while_taking_and_giving_back_units(tmp_path):
    assert _crash_walk_units(tmp_path, "units") == 3


@pytest.mark.slow
def test_crash_at_every_step_of_taking_and_giving_back_units(tmp_path):
    assert _crash_walk_units(tmp_path) >= 100


def test_a_usage_error_of_a_sub_command_names_its_whole_path(tmp_path):
    r = run("resources", "set", "gpu", "-1", home=tmp_path / "home", check=2)
    assert "(see: dagrun resources set --help)" in r.stderr and r.stderr.count("\n") == 1, r.stderr
