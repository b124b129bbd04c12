"""The engine's periodic rescan (reconcile.Reconciler._rescan): light -- the goal's unread
event lines, then the folders of the tasks no marker ended in the scheduler -- with a full
rebuild from the files (_resync) on any difference and at most every FULL_FACTOR x its
cost. Each change below is made to the files behind an engine's back (no event line, no
wake-up: what the safety net is for); after one light rescan the engine's scheduler must
hold what a scheduler built from the files holds (the full rescan's answer)."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from conftest import write_plan
from dagrun import control, edit, proc
from dagrun import states as S
from dagrun.engine import Engine
from dagrun.lifecycle import ranked_scheduler
from dagrun.scheduler import Scheduler
from dagrun.store import Home

TASKS = [{"id": "a", "prompt": "p", "agent": "true"},
         {"id": "b", "prompt": "p", "agent": "true", "deps": ["a"]},
         {"id": "c", "prompt": "p", "agent": "true", "deps": ["a"]},
         {"id": "d", "prompt": "p", "agent": "true", "deps": ["b", "c"]},
         {"id": "e", "prompt": "p", "agent": "true"},
         {"id": "f", "prompt": "p", "agent": "true", "deps": ["e"]}]


def _marker(home: Home, t: str, kind: str = "done") -> None:
    os.makedirs(home.task_dir("g", t), exist_ok=True)
    with open(home.marker_path("g", t, kind), "w") as f:
        json.dump({"attempt": 1, "worker": "script"}, f)


def _claim(home: Home, t: str, pid: int) -> None:
    """Another worker's claim (claim/ + owner.json), as tests/test_stale_claims.py fakes one."""
    cdir = home.claim_dir("g", t)
    os.makedirs(cdir)
    body = {"worker": "ghost", "host": socket.gethostname(), "boot_id": proc.BOOT_ID, "pid": pid,
            "pid_start": proc.proc_start(pid) or "1", "attempt": 1, "since": "2026-01-01T00:00:00.000000Z",
            "kind": "engine", "nonce": "feedface0001", "handle": None}
    with open(os.path.join(cdir, "owner.json"), "w") as f:
        json.dump(body, f)


@pytest.fixture
def engine(tmp_path):
    p = write_plan(tmp_path / "plans", TASKS, goal="g")
    home = Home(str(tmp_path / "home"))
    edit.submit(home, str(p))
    _marker(home, "a")                       # a ended before the engine started: b and c ready
    eng = Engine(home, goal="g", worker="w-test")
    eng._discover()                          # the start-up (full) rescan
    gs = eng.goals["g"]
    assert gs.sched.state_of("a") == "done" and gs.sched.state_of("b") == "ready"
    gs.next_full = time.monotonic() + 3600   # the periodic rescans below are light ones
    yield home, eng, gs


def _full(home: Home) -> dict:
    return ranked_scheduler(home, home.load_plan("g"))[0].states()


def test_a_light_rescan_of_unchanged_files_keeps_the_scheduler(engine):
    home, eng, gs = engine
    sched, fulls = gs.sched, gs.fulls
    eng._rescan(gs)
    assert gs.sched is sched and gs.fulls == fulls       # nothing rebuilt
    assert gs.sched.states() == _full(home)
    assert gs.next_rescan > time.monotonic()


def _written_by_a_script(home):
    _marker(home, "e")                       # `touch tasks/e/done`-like, no event line


def _failed_by_a_script(home):
    _marker(home, "b", "failed")


def _claimed_by_a_live_worker(home):
    _claim(home, "b", os.getpid())


def _claimed_by_a_dead_worker(home):
    p = os.fork()
    if p == 0:
        os._exit(0)
    os.waitpid(p, 0)
    _claim(home, "c", p)


def _a_retry_in_its_backoff(home):
    adir = os.path.join(home.task_dir("g", "e"), "attempts")
    os.makedirs(adir)
    with open(os.path.join(adir, "1.json"), "w") as f:
        json.dump({"attempt": 1, "worker": "ghost", "failures": 1, "retry_at": time.time() + 600}, f)


def _an_approval_gate(home):
    os.makedirs(home.task_dir("g", "c"), exist_ok=True)
    with open(os.path.join(home.task_dir("g", "c"), S.AWAITING_FILE), "w") as f:
        json.dump({"since": "2026-01-01T00:00:00Z"}, f)


def _the_plan_replaced(home):
    tasks = TASKS + [{"id": "g2", "prompt": "p", "agent": "true", "deps": ["d"]}]
    p = write_plan(Path(home.root).parent / "plans2", tasks, goal="g")
    edit.submit(home, str(p), replace=True)


def _an_ended_task_retried(home):
    control.retry(home, "g", "a", force=True)     # its reset line is read (_feed): a rebuild


@pytest.mark.parametrize("change", [_written_by_a_script, _failed_by_a_script, _claimed_by_a_live_worker,
                                    _claimed_by_a_dead_worker, _a_retry_in_its_backoff, _an_approval_gate,
                                    _the_plan_replaced, _an_ended_task_retried])
def test_a_light_rescan_finds_what_the_full_one_finds(engine, change):
    home, eng, gs = engine
    before = gs.sched.states()
    change(home)
    want = _full(home)
    assert want != before                     # the change is one a scheduler must see
    eng._rescan(gs)
    assert gs.sched.states() == want
    if change in (_claimed_by_a_live_worker, _claimed_by_a_dead_worker):
        assert gs.foreign == {"b" if change is _claimed_by_a_live_worker else "c"}   # watched (_check_foreign)


def test_a_marker_removed_by_hand_from_an_ended_task_waits_for_the_full_rescan(engine):
    """What only the full rescan looks at: the folders of tasks a marker ended. A light one
    leaves a alone; the full one, once due, finds it pending again (as every rescan did
    before the light one existed)."""
    home, eng, gs = engine
    os.unlink(home.marker_path("g", "a", "done"))
    eng._rescan(gs)
    assert gs.sched.state_of("a") == "done"
    gs.next_full = time.monotonic() - 1
    eng._rescan(gs)
    assert gs.sched.state_of("a") == "ready" and gs.sched.states() == _full(home)
    assert gs.next_full > time.monotonic()


def test_a_claim_left_beside_a_marker_is_swept_by_the_full_rescan(engine):
    home, eng, gs = engine
    p = os.fork()
    if p == 0:
        os._exit(0)
    os.waitpid(p, 0)
    _claim(home, "a", p)                     # a's holder committed and died before its rmdir
    eng._rescan(gs)
    assert os.path.isdir(home.claim_dir("g", "a"))     # light: a ended, its folder is not read
    gs.next_full = time.monotonic() - 1
    eng._rescan(gs)
    assert not os.path.exists(home.claim_dir("g", "a"))


def test_again_with_durations_is_the_scheduler_built_afresh():
    class T:
        def __init__(self, id, deps=(), priority=0):
            self.id, self.deps, self.soft_deps, self.priority = id, list(deps), [], priority

    tasks = [T("a"), T("b", ["a"]), T("c", ["a"]), T("d", ["b", "c"]), T("e")]
    clock = time.monotonic
    old = Scheduler(tasks, {"a": "done"}, durations={"b": 5.0}, aging=1.0, clock=clock)
    dur = {"c": 9.0, "e": 30.0}
    new = old.again({"a": "done", "b": "running"}, durations=dur, clock=clock)
    fresh = Scheduler(tasks, {"a": "done", "b": "running"}, durations=dur, aging=1.0, clock=clock)
    assert new.rank == fresh.rank != old.rank
    assert new.states() == fresh.states() and new.aging == fresh.aging == 1.0
    assert [new.take(), new.take()] == [fresh.take(), fresh.take()] == ["e", "c"]
    with pytest.raises(ValueError):
        old.again({}, durations=dur, clock=time.time)
