"""Long-lived homes: `dagrun gc --older-than/--keep/--archive/--dry-run` removes finished goals
only (never a running or unfinished one), crash-safely; the worker's --gc-older-than; ended
goals read from summary.json and kept dormant by the worker (woken by a retry)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import kill_group, run, spawn, wait_for, write_plan

DAY = 86400


def _goal(plans: Path, home: Path, g: str, agent: str = "cat", n: int = 2, run_it: bool = True) -> Path:
    p = write_plan(plans, [{"id": f"t{i}", "prompt": f"p{i}", "deps": [f"t{i - 1}"] if i else []} for i in range(n)],
                   name=f"{g}.json", goal=g, defaults={"agent": agent, "retries": 0})
    if run_it:
        run("run", p, home=home, check=False)
    else:
        run("submit", p, home=home)
    return p


def _age(home: Path, g: str, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(home / "goals" / g / "summary.json", (t, t))


def _goals(home: Path) -> list[str]:
    return [r["goal"] for r in json.loads(run("status", "--json", home=home).stdout)["goals"]]


def test_gc_never_touches_a_running_or_unfinished_goal(home, plans):
    _goal(plans, home, "done1")
    _goal(plans, home, "failed1", agent="false")
    _goal(plans, home, "waiting", run_it=False)                 # submitted, never run
    _goal(plans, home, "held", run_it=False)
    claimed = run("claim", "held", "--json", "--pid", str(os.getpid()), home=home)     # a script holds t0
    assert json.loads(claimed.stdout)["task"] == "t0"
    for g in ("done1", "failed1"):
        _age(home, g, 40)
    out = run("gc", "--keep", "0", "--older-than", "1s", home=home).stdout
    assert "removed goal done1" in out and "removed goal failed1" in out
    assert _goals(home) == ["held", "waiting"]
    assert not (home / "goals" / "done1").exists()
    assert os.listdir(home / ".trash") == []
    run("complete", "held", "t0", "--pid", str(os.getpid()), home=home, input="out")   # still whole


def test_gc_keep_older_than_dry_run_and_archive(home, plans):
    for i, days in enumerate((50, 40, 20, 5)):
        _goal(plans, home, f"g{i}")
        _age(home, f"g{i}", days)
    before = sorted(os.listdir(home / "goals"))
    dry = run("gc", "--dry-run", "--keep", "1", "--json", home=home)
    assert [r["goal"] for r in json.loads(dry.stdout)["goals"]] == ["g0", "g1", "g2"]
    assert {r["action"] for r in json.loads(dry.stdout)["goals"]} == {"would remove"}
    assert sorted(os.listdir(home / "goals")) == before                 # --dry-run changed nothing
    # both: beyond the newest 1 AND older than 30 days
    out = run("gc", "--keep", "1", "--older-than", "30d", "--json", home=home)
    assert [r["goal"] for r in json.loads(out.stdout)["goals"]] == ["g0", "g1"]
    assert _goals(home) == ["g2", "g3"]
    arch = run("gc", "--older-than", "10d", "--archive", "--json", home=home)
    (r,) = json.loads(arch.stdout)["goals"]
    assert r["goal"] == "g2" and r["action"] == "archived"
    kept = Path(r["path"])
    assert kept.parent == home / "archive" and (kept / "tasks" / "t1" / "done").exists()
    assert (kept / "tasks" / "t1" / "output").read_text().startswith("p1")
    assert _goals(home) == ["g3"]
    # bad input: one line, exit 2
    bad = run("gc", "--older-than", "30 days", home=home, check=2)
    assert "--older-than" in bad.stderr and "Traceback" not in bad.stderr
    assert "--archive goes with" in run("gc", "--archive", home=home, check=2).stderr


def test_a_retried_goal_is_no_longer_finished(home, plans):
    """retry removes summary.json; gc and the status table then see a live goal."""
    _goal(plans, home, "f", agent="false")
    _age(home, "f", 40)
    assert json.loads(run("status", "--json", home=home).stdout)["goals"][0]["state"] == "failed"
    run("retry", "f", home=home)
    assert run("gc", "--keep", "0", "--json", home=home).stdout.count('"goal"') == 0
    assert json.loads(run("status", "--json", home=home).stdout)["goals"][0]["state"] == "ready"


def test_a_task_event_after_the_summary_voids_it(home, plans):
    """A retry whose summary.json removal a crash cut off leaves a `reset` line after the
    summary: the goal is not read as ended from it (status computes it, gc leaves it)."""
    from dagrun.store import Home
    from dagrun.summary import ended
    _goal(plans, home, "f", agent="false")
    assert ended(Home(str(home)), "f") is not None
    summary = (home / "goals" / "f" / "summary.json").read_bytes()
    run("retry", "f", home=home)
    (home / "goals" / "f" / "summary.json").write_bytes(summary)     # as if its removal never happened
    assert ended(Home(str(home)), "f") is None
    assert json.loads(run("status", "--json", home=home).stdout)["goals"][0]["state"] == "ready"
    assert json.loads(run("gc", "--keep", "0", "--json", home=home).stdout)["goals"] == []


def _crash_home(tmp_path: Path, plans: Path) -> Path:
    base = tmp_path / "base"
    for g in ("a", "b"):
        _goal(plans, base, g, n=3)
        _age(base, g, 40)
    return base


def _check_clean_after(home: Path) -> None:
    """After a crash: every goal status lists is whole (all its tasks done, outputs there);
    gc again finishes the job and leaves nothing behind."""
    for g in _goals(home):
        st = json.loads(run("status", g, "--json", home=home).stdout)
        assert st["state"] == "done" and [t["state"] for t in st["tasks"]] == ["done"] * 3, g
        assert run("output", g, "t2", home=home).stdout.startswith("p2")
    run("gc", "--keep", "0", home=home)
    assert _goals(home) == [] and os.listdir(home / "goals") == []
    assert os.listdir(home / ".trash") == []


def _steps_of_gc(tmp_path: Path, base: Path) -> list[str]:
    h = tmp_path / "traced"
    shutil.copytree(base, h)
    trace = tmp_path / "trace.txt"
    run("gc", "--keep", "0", home=h, env={"DAGRUN_STEP_TRACE": str(trace)})
    return trace.read_text().splitlines()


def test_gc_killed_while_deleting_leaves_no_half_goal(tmp_path, plans):
    """SIGKILL between the task folders of a goal being deleted (a partial tree in .trash/):
    no command sees it as a goal, and the next gc removes it."""
    base = _crash_home(tmp_path, plans)
    steps = _steps_of_gc(tmp_path, base)
    k = next(i for i, s in enumerate(steps, 1) if "rmtree" in s and "/tasks/t1" in s)
    h = tmp_path / "h"
    shutil.copytree(base, h)
    p = run("gc", "--keep", "0", home=h, env={"DAGRUN_CRASH_AT": str(k)}, check=False)
    assert p.returncode == -signal.SIGKILL
    (left,) = os.listdir(h / ".trash")
    assert not (h / ".trash" / left / "tasks" / "t0").exists() and (h / ".trash" / left / "tasks" / "t1").exists()
    _check_clean_after(h)


@pytest.mark.slow
def test_gc_killed_at_every_step(tmp_path, plans):
    base = _crash_home(tmp_path, plans)
    steps = _steps_of_gc(tmp_path, base)
    assert len(steps) >= 8
    for k in range(1, len(steps) + 1):
        for when in ("", ":after"):
            h = tmp_path / f"h{k}{when.strip(':')}"
            shutil.copytree(base, h)
            p = run("gc", "--keep", "0", home=h, env={"DAGRUN_CRASH_AT": f"{k}{when}"}, check=False)
            assert p.returncode == -signal.SIGKILL, (k, steps[k - 1])
            _check_clean_after(h)
            shutil.rmtree(h)


def test_worker_gc_older_than(home, plans):
    _goal(plans, home, "old")
    _goal(plans, home, "recent")
    _age(home, "old", 31)
    _goal(plans, home, "new", run_it=False)
    p = run("worker", "--until-idle", "--gc-older-than", "30d", "-v", home=home)
    assert "gc: removed goal old" in p.stderr
    assert _goals(home) == ["new", "recent"]
    assert json.loads(run("status", "new", "--json", home=home).stdout)["state"] == "done"
    assert "--gc-older-than" in run("worker", "--gc-older-than", "soon", home=home, check=2).stderr


def test_worker_wakes_a_dormant_goal_on_retry(home, plans, tmp_path):
    """A goal that ended before the worker started is not loaded (dormant); `dagrun retry`
    appends to its events.jsonl and the worker runs it again."""
    flag = tmp_path / "ok"
    agent = f"sh -c 'test -e {flag} && cat'"
    _goal(plans, home, "f", agent=agent, n=1)
    _goal(plans, home, "d")
    assert json.loads(run("status", "f", "--json", home=home).stdout)["state"] == "failed"
    w = spawn("worker", "-j", "2", "--rescan", "0.3", home=home)
    try:
        time.sleep(0.5)
        flag.touch()
        run("retry", "f", home=home)
        wait_for(lambda: json.loads(run("status", "f", "--json", home=home).stdout)["state"] == "done",
                 what="the retried goal to be run by the worker")
        # and it goes dormant again once ended; a second reopening still wakes it
        time.sleep(1.0)
        run("retry", "--force", "f", "t0", home=home)
        wait_for(lambda: json.loads(run("status", "f", "--json", home=home).stdout)["state"] == "done"
                 and len([1 for line in (home / "goals" / "f" / "events.jsonl").read_text().splitlines()
                          if '"agent.goal.finished"' in line]) >= 3,
                 what="the goal run again after a forced retry")
    finally:
        kill_group(w, signal.SIGTERM)
        assert w.wait(30) == 143
