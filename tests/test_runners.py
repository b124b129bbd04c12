"""The engine's contracts, run over every runner they apply to: start, exit, timeout, cancel,
crash-resume, stale claim. Same plans, same checks on the files and events; only the runner
differs (ProcessRunner runs `sh -c`, FakeRunner decides outcomes in the driver). Each engine
runs in a forked child (a driver that can be SIGKILLed, and whose subreaper setting stays
out of the test process)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from conftest import goal_events, need_ray, need_slurm, wait_for, write_plan
from dagrun import control, edit, executor
from dagrun.engine import Engine
from dagrun.simrun import DryRunner, FakeRunner, Outcome
from dagrun.store import Home

RUNNERS = ["process", "fake", pytest.param("slurm", marks=pytest.mark.slurm),
           pytest.param("ray", marks=pytest.mark.ray)]
# crash-resume: a Slurm job outlives its driver and is reattached, not lost (tests/test_slurm.py);
# a Ray task dies with its driver (ownership): lost, then run again, as a local process
CRASH_RUNNERS = ["process", "fake", pytest.param("ray", marks=pytest.mark.ray)]

# behaviour -> (shell agent for ProcessRunner, Outcome for FakeRunner)
BEHAVIOURS = {
    "ok": ("printf 'out of %s' \"$DAGRUN_TASK\"", None),
    "fail3": ("echo bad >&2; exit 3", Outcome(code=3, stderr=b"bad\n")),
    "hang": ("sleep 60", Outcome(hang=True)),
    "slow": ("sleep 0.3; printf 'out of %s' \"$DAGRUN_TASK\"", None),
    # the first attempt hangs, later ones succeed (the fake decides per driver instead)
    "hang1": ("if [ \"$DAGRUN_ATTEMPT\" = 1 ]; then sleep 60; fi; printf 'out of %s' \"$DAGRUN_TASK\"",
              Outcome(hang=True)),
}


def _outcome(behaviour: str, task: str) -> Outcome:
    o = BEHAVIOURS[behaviour][1]
    if o is not None:
        return o
    return Outcome(stdout=f"out of {task}".encode(), after=0.3 if behaviour == "slow" else 0.0)


def make_runner(name: str, spec: dict[str, str]):
    if name == "slurm":
        need_slurm()
    if name == "ray":
        need_ray()
    if name == "fake":
        return FakeRunner({t: _outcome(b, t) for t, b in spec.items()})
    return executor.get(name)


def plan_of(tmp_path, goal: str, spec: dict[str, str], deps: dict[str, list[str]] | None = None, **task_kw):
    tasks = [{"id": t, "prompt": f"do {t}", "agent": BEHAVIOURS[b][0], "deps": (deps or {}).get(t, []), **task_kw}
             for t, b in spec.items()]
    p = write_plan(tmp_path / f"plan-{goal}", tasks, goal=goal)
    home = Home(str(tmp_path / "home"))
    edit.submit(home, str(p))
    return home


def _drive(home_root: str, goal: str, runner: str, spec: dict, kw: dict) -> None:
    code = 99
    try:
        code = Engine(Home(home_root), goal=goal, runner=make_runner(runner, spec), worker=f"w-{os.getpid()}",
                      **kw).run()
    finally:
        os._exit(int(code))


def engine(home: Home, goal: str, runner: str, spec: dict, **kw) -> mp.Process:
    if runner == "slurm":
        need_slurm()
    if runner == "ray":
        need_ray()
    p = mp.get_context("fork").Process(target=_drive, args=(home.root, goal, runner, spec, kw))
    p.start()
    return p


def finish(p: mp.Process, timeout: float = 30.0) -> int:
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join(5)
        raise AssertionError("the engine did not end")
    return p.exitcode


def statuses(home: Home, goal: str, task: str, polling: bool = False) -> list[str]:
    return [e["status"] for e in goal_events(home, goal=goal, polling=polling) if e.get("task") == task and "status" in e]


def record(home: Home, goal: str, task: str, n: int) -> dict:
    with open(home.attempt_path(goal, task, n, "json")) as f:
        return json.load(f)


@pytest.mark.parametrize("runner", RUNNERS)
def test_start_and_exit_commit_outputs_in_order(tmp_path, runner):
    spec = {"a": "ok", "b": "ok", "c": "fail3"}
    home = plan_of(tmp_path, "g", spec, deps={"b": ["a"], "c": ["b"]})
    assert finish(engine(home, "g", runner, spec)) == 1          # c failed: the goal failed
    assert open(home.output_path("g", "a")).read() == "out of a"
    assert "out of a" in open(home.prompt_path("g", "b")).read()   # upstream output injected
    assert os.path.exists(home.marker_path("g", "b", "done"))
    failed = json.load(open(home.marker_path("g", "c", "failed")))
    assert failed["exit_code"] == 3 and failed["outcome"] == "failed"
    assert open(home.stderr_path("g", "c")).read() == "bad\n"
    assert statuses(home, "g", "a") == ["ready", "running", "done"]
    assert statuses(home, "g", "c")[-2:] == ["running", "failed"]
    assert not os.path.exists(home.claim_dir("g", "a"))
    assert [e["outcome"] for e in goal_events(home) if e["type"] == "agent.goal.finished"] == ["failed"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_timeout_stops_the_attempt(tmp_path, runner):
    spec = {"a": "hang"}
    home = plan_of(tmp_path, "g", spec, timeout=0.5, kill_grace=1)
    t0 = time.monotonic()
    assert finish(engine(home, "g", runner, spec)) == 1
    assert time.monotonic() - t0 < 15
    rec = record(home, "g", "a", 1)
    assert rec["outcome"] == "timeout" and rec["signal"] == signal.SIGTERM and rec["counted"]
    assert "timed out after 0.5s" in rec["reason"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_cancel_stops_a_running_attempt_and_blocks_nothing_it_should_not(tmp_path, runner):
    spec = {"a": "hang", "b": "ok", "c": "ok"}
    home = plan_of(tmp_path, "g", spec, deps={"b": ["a"]})
    p = engine(home, "g", runner, spec)
    try:
        # (60 s: at a load of ~22 the Ray engine's first two tasks took over 20 s to start and end)
        wait_for(lambda: "running" in statuses(home, "g", "a", polling=True) and os.path.exists(home.marker_path("g", "c", "done")),
                 timeout=60, what="a running, c done")
        res = control.cancel(home, "g", "a", by="tester", wait=10)
        assert res.cancelled == ["a"] and res.still_running == []
        assert finish(p) == 1
    finally:
        if p.is_alive():
            p.kill()
    assert os.path.exists(home.marker_path("g", "a", "cancelled"))
    assert record(home, "g", "a", 1)["outcome"] == "cancelled"
    assert not os.path.exists(home.prompt_path("g", "b"))         # never started
    assert any(e["type"] == "agent.task.blocked" and e["task"] == "b" and e["blocked_by"] == "a"
               for e in goal_events(home))
    assert os.path.exists(home.marker_path("g", "c", "done"))


@pytest.mark.parametrize("runner", CRASH_RUNNERS)
def test_crash_resume_records_the_attempt_lost_and_runs_it_again(tmp_path, runner):
    spec = {"a": "hang1"}
    home = plan_of(tmp_path, "g", spec)
    p = engine(home, "g", runner, spec)
    wait_for(lambda: os.path.exists(home.owner_path("g", "a")), what="owner.json")
    owner = json.load(open(home.owner_path("g", "a")))
    assert owner["handle"]["runner"] == runner and owner["pid"] == p.pid
    os.kill(p.pid, signal.SIGKILL)                 # the driver dies; its agent may live on
    p.join(5)
    spec2 = {"a": "ok"}
    # the next driver judges the claim (holder dead), reaps through the runner in the handle,
    # records attempt 1 lost (uncounted) and runs attempt 2
    assert finish(engine(home, "g", runner, spec2)) == 0
    lost = record(home, "g", "a", 1)
    assert lost["outcome"] == "lost" and lost["counted"] is False and "is gone" in lost["reason"]
    done = json.load(open(home.marker_path("g", "a", "done")))
    assert done["attempt"] == 2
    if runner == "process":     # the orphaned `sleep 60` was reaped by its run id
        assert executor.alive({"a": {"runner": "process", "run_id": owner["run_id"]}}) == set()


@pytest.mark.parametrize("runner", RUNNERS)
def test_stale_claim_of_a_dead_holder_is_broken(tmp_path, runner):
    spec = {"a": "ok"}
    home = plan_of(tmp_path, "g", spec)
    dead = mp.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    os.makedirs(home.claim_dir("g", "a"))
    with open(home.owner_path("g", "a"), "w") as f:
        json.dump({"worker": "ghost", "host": os.uname().nodename, "pid": dead.pid, "pid_start": "1",
                   "attempt": 1, "since": "2026-01-01T00:00:00Z", "kind": "engine", "nonce": "n0",
                   "handle": {"runner": runner, "id": 7, "pid": dead.pid}}, f)
    assert finish(engine(home, "g", runner, spec)) == 0
    assert record(home, "g", "a", 1)["outcome"] == "lost"
    assert json.load(open(home.marker_path("g", "a", "done")))["attempt"] == 2


def test_a_handle_of_an_unknown_runner_is_not_reaped():
    assert executor.for_handle({"runner": "nosuch"}) is None
    assert executor.reap_orphan({"runner": "nosuch"}, 0.1) is False
    assert executor.for_handle(None).name == "process"
    assert executor.get("fake").name == "fake" and executor.get("dry").name == "dry"


def test_a_launch_with_argv_is_exec_d_without_a_shell(tmp_path):
    """A cluster runner's own client (Slurm steps' srun) is exec'd straight by the
    ProcessRunner: its arguments reach it as given, no `sh -c` parses them; stdin, the capture
    pipes, the run id and the exit status work as for an agent."""
    from dagrun.executor import Launch, ProcessRunner
    (tmp_path / "prompt").write_text("the prompt")
    r = ProcessRunner()
    try:
        h = r.start(Launch(agent="(display only)", argv=("/bin/sh", "-c", 'cat; printf " %s %s" "$0" "$DAGRUN_RUN_ID"; exit 3',
                                                          "a;b $HOME"),
                           cwd=str(tmp_path), env={"PATH": os.environ["PATH"]}, stdin_path=str(tmp_path / "prompt"),
                           stdout_path=str(tmp_path / "out"), stderr_path=str(tmp_path / "err"), run_id="r-argv"))
        ex = wait_for(lambda: r.poll(h), timeout=10, what="the process ended")
    finally:
        r.close()
    assert ex.code == 3
    assert (tmp_path / "out").read_text() == "the prompt a;b $HOME r-argv"     # $0 as given, unexpanded


def test_dry_runner_starts_nothing_and_reports_success():
    r = DryRunner()
    from dagrun.executor import Launch
    h = r.start(Launch(agent="exit 1", cwd="/nonexistent", env={}, stdin_path="/x", stdout_path="/y",
                       stderr_path="/z", run_id="r"))
    assert h["runner"] == "dry" and r.wakeup().timeout == 0.0
    assert r.poll(h).ok and r.wakeup().timeout is None
    assert [x.agent for x in r.started] == ["exit 1"]


# ---------------------------------------------------------------------------- dagrun run --dry-run
def _tree(root) -> dict:
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[p] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


def test_dry_run_prints_the_start_order_and_creates_no_home(tmp_path):
    from conftest import run
    tasks = [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"}, {"id": "c", "prompt": "p"},
             {"id": "d", "prompt": "p", "deps": ["a", "b"]}, {"id": "e", "prompt": "p", "deps": ["d"], "agent": "echo e"}]
    p = write_plan(tmp_path / "plans", tasks, goal="demo", max_parallel=2, defaults={"agent": "true"})
    r = run("run", "--dry-run", p, home=tmp_path / "home")
    lines = [x.split("\t") for x in r.stdout.splitlines()]
    # max_parallel 2: a and b first; d (on the longer path) before c; e last
    assert lines == [["1", "demo/a", "true"], ["1", "demo/b", "true"], ["2", "demo/d", "true"],
                     ["2", "demo/c", "true"], ["3", "demo/e", "echo e"]]
    assert "nothing was started" in r.stderr
    assert not (tmp_path / "home").exists()


def test_dry_run_of_a_goal_under_way_reads_the_files_and_writes_nothing(tmp_path):
    from conftest import run
    tasks = [{"id": "ok", "prompt": "p"}, {"id": "bad", "prompt": "p", "agent": "exit 3"},
             {"id": "below_bad", "prompt": "p", "deps": ["bad"]}, {"id": "below_ok", "prompt": "p", "deps": ["ok"]}]
    p = write_plan(tmp_path / "plans", tasks, goal="g", defaults={"agent": "true"})
    home = tmp_path / "home"
    run("run", p, home=home, check=1)
    for m in ("done",):
        os.remove(home / "goals" / "g" / "tasks" / "below_ok" / m)      # below_ok runs again
    before = _tree(home)
    r = run("run", "--dry-run", "g", home=home)
    assert [x.split("\t")[1] for x in r.stdout.splitlines()] == ["g/below_ok"]   # bad blocks below_bad
    assert _tree(home) == before
    tasks[0]["prompt"] = "changed"
    p2 = write_plan(tmp_path / "plans2", tasks, goal="g", defaults={"agent": "true"})
    r = run("run", "--dry-run", p2, home=home, check=4)
    assert "different plan" in r.stderr and r.stdout == ""
    assert _tree(home) == before
