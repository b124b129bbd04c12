"""A done task's claim folder is removed off the engine's loop thread (dagrun/reaper.py,
issue 20, 2026-12-06 (2)): the loop makes no rmdir of a claim it committed, and the order
with whatever looks at the claim of a done task holds -- the goal's edit lock is released
only after the rmdirs of the turn's commits, the goal's end and a rebuild from the files
come after every pending one, and the run leaves no claim folder."""
from __future__ import annotations

import fcntl
import glob
import os
import threading

from conftest import run, task_dir, write_plan

from dagrun import claim as claims
from dagrun.store import Home


def _fanout(tmp_path, n: int, after: float = 0.05):
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome

    h = Home(str(tmp_path / "home"))
    tasks = [{"id": "a", "prompt": "x"}] + [{"id": f"m{i:02d}", "prompt": "x", "deps": ["a"]} for i in range(n)]
    p = write_plan(tmp_path / "p", tasks, goal="fo", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    return h, Engine(h, goal="fo", jobs=n, runner=FakeRunner(lambda launch: Outcome(after=after)))


def _claims_left(h: Home) -> list[str]:
    return glob.glob(os.path.join(h.root, "goals", "fo", "tasks", "*", "claim")) + \
        glob.glob(os.path.join(h.root, "goals", "fo", "tasks", "*", ".claim.*"))


def test_the_loop_thread_makes_no_rmdir_of_a_claim_it_committed_and_none_is_left(tmp_path, monkeypatch):
    """Before: commit_done's claim.release removed each claim folder on the loop thread (one
    rmdir a task: ~200 us of wall time on the home disk, a synchronous discard)."""
    n = 12
    h, eng = _fanout(tmp_path, n)
    loop = threading.get_ident()
    on_loop, elsewhere = [], []
    real_rmdir = os.rmdir

    def c_rmdir(path, *a, **k):
        if str(path).endswith("/claim"):
            (on_loop if threading.get_ident() == loop else elsewhere).append(str(path))
        return real_rmdir(path, *a, **k)

    monkeypatch.setattr(os, "rmdir", c_rmdir)
    assert eng.run() == 0
    monkeypatch.undo()
    assert all((task_dir(h.root, "fo", t) / "done").exists() for t in ["a"] + [f"m{i:02d}" for i in range(n)])
    assert on_loop == [], on_loop
    assert len(elsewhere) == n + 1, elsewhere
    assert _claims_left(h) == []


def test_the_goals_edit_lock_is_held_until_the_turns_claim_folders_are_gone(tmp_path, monkeypatch):
    """The turn's shared edit lock goes to the reaper with the turn's releases: while one is
    pending, an archive (exclusive lock: plan edit, forced retry) cannot come in -- it would
    move the task folder under the pending rmdir, or see a done task with a claim."""
    h, eng = _fanout(tmp_path, 1)
    gate, entered = threading.Event(), threading.Event()
    seen: list[bool] = []
    real_take = claims.take_away

    def slow_take(home, g, t):
        entered.set()
        gate.wait(10)
        return real_take(home, g, t)

    def probe():
        entered.wait(10)
        lock = os.path.join(h.root, "goals", "fo", ".edit.lock")
        for _ in range(3):                   # the loop's turns go on meanwhile
            fd = os.open(lock, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(True)
            except BlockingIOError:
                seen.append(False)
            finally:
                os.close(fd)
            threading.Event().wait(0.05)
        gate.set()

    monkeypatch.setattr(claims, "take_away", slow_take)
    th = threading.Thread(target=probe)
    th.start()
    assert eng.run() == 0
    th.join()
    assert seen == [False, False, False], seen     # never free while a's rmdir was pending
    assert _claims_left(h) == []


def test_the_goal_ends_and_the_goal_is_rebuilt_only_after_the_pending_releases(tmp_path, monkeypatch):
    """summary.json, the status snapshot and a rebuild from the files (_resync, which would
    sweep a claim beside a marker as a dead holder's) never see our own claim folders."""
    from dagrun import engine as eng_mod
    from dagrun import reconcile as rec_mod
    from dagrun import transitions as tr

    h, eng = _fanout(tmp_path, 6)
    real_take, real_end = claims.take_away, tr.end_goal_if_finished
    at_end = []

    def slow_take(home, g, t):
        threading.Event().wait(0.02)         # a slow disk: the loop gets ahead of the reaper
        return real_take(home, g, t)

    def end(home, *a, **k):
        at_end.append(_claims_left(h))
        return real_end(home, *a, **k)

    monkeypatch.setattr(claims, "take_away", slow_take)
    monkeypatch.setattr(eng_mod.tr, "end_goal_if_finished", end)
    assert eng.run() == 0
    assert at_end == [[]], at_end
    assert _claims_left(h) == []
    # a rebuild while releases are pending: it drains first (no leftover seen, none swept)
    eng2_h, eng2 = _fanout(tmp_path / "two", 2)
    swept = []
    real_sweep = rec_mod.Reconciler._sweep_leftover_claim

    def sweep(self, gs, t, owner):
        swept.append(t)
        return real_sweep(self, gs, t, owner)

    monkeypatch.setattr(rec_mod.Reconciler, "_sweep_leftover_claim", sweep)
    real_finish = eng_mod.Engine._finish

    def finish(self, gs, c, **kw):
        done = real_finish(self, gs, c, **kw)
        if c.task == "a":
            self._resync(gs)                 # as a plan change seen in the same turn would
        return done

    monkeypatch.setattr(eng_mod.Engine, "_finish", finish)
    assert eng2.run() == 0
    assert swept == [], swept
    assert not glob.glob(os.path.join(eng2_h.root, "goals", "fo", "tasks", "*", "claim"))


def test_with_the_switch_off_the_loop_removes_the_claim_as_before(tmp_path, monkeypatch):
    """DAGRUN_DEFER_RELEASE=0 (A/B runs): the release is the loop's own, as on 9a12c26."""
    from dagrun import reaper

    monkeypatch.setattr(reaper, "DEFER", False)
    h, eng = _fanout(tmp_path, 3)
    loop = threading.get_ident()
    on_loop = []
    real_rmdir = os.rmdir

    def c_rmdir(path, *a, **k):
        if str(path).endswith("/claim") and threading.get_ident() == loop:
            on_loop.append(path)
        return real_rmdir(path, *a, **k)

    monkeypatch.setattr(os, "rmdir", c_rmdir)
    assert eng.run() == 0
    monkeypatch.undo()
    assert len(on_loop) == 4 and _claims_left(h) == []


def test_an_error_of_the_reaper_thread_is_raised_on_the_loop(tmp_path, monkeypatch):
    """A failing disk under the reaper is not lost: the next call from the loop raises it."""
    from dagrun.reaper import Reaper

    h = Home(str(tmp_path / "home"))
    r = Reaper(h, defer=True)

    def broken(home, g, t):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(claims, "take_away", broken)
    r.release("g", "t")
    try:
        r.drain()
    except OSError as e:
        assert e.errno == 5
    else:
        raise AssertionError("the thread's error was dropped")
    r.close()


def test_a_claim_renamed_away_beside_a_marker_is_swept_by_the_next_engine(tmp_path):
    """More done tasks can now be left with their claim/ by a crash; the next engine breaks
    such a claim by renaming it to .claim.broken.* and then deletes it. A crash between the
    two left the dot-folder for ever (the task is done: nobody claims it again to sweep it):
    the crash harness's I3, found by test_crash_during_recovery (k=63:after)."""
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome

    h, eng = _fanout(tmp_path, 2)
    assert eng.run() == 0
    left = task_dir(h.root, "fo", "m00") / ".claim.broken.0badc0de"
    left.mkdir()
    (left / "stdout").write_bytes(b"x")
    again = Engine(h, goal="fo", jobs=2, runner=FakeRunner(lambda launch: Outcome()))
    assert again.run() == 0
    assert not left.exists()
