"""The shortcuts taken for speed (issue 20) say the same as the long way: status's view of the
files (a first-attempt `done` marker read instead of listing the folder, the scheduler built
from the same snapshot, usage from the markers)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import run, write_plan

from dagrun import fsio
from dagrun.lifecycle import build_scheduler
from dagrun.store import Home


def _facts(home: Home, g: str, **kw) -> dict:
    plan = home.load_plan(g)
    return {t: (f.state, f.attempt, f.marker) for t, f in home.snapshot(g, plan, detail=True, **kw).items()}


def test_status_view_reads_the_same_facts_as_a_full_listing(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "agent.sh").write_text(
        'cat >/dev/null; echo \'{"tokens_in": 7, "cost_usd": 0.1}\' >> "$DAGRUN_USAGE_FILE"\n'
        'case "$DAGRUN_TASK" in b) [ "$DAGRUN_ATTEMPT" = 2 ] || exit 3;; c) exit 4;; esac; echo ok\n')
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"},
                                       {"id": "c", "prompt": "z", "retries": 0},
                                       {"id": "d", "prompt": "w", "deps": ["c"]}], goal="v",
                      defaults={"agent": f"sh {tmp_path}/agent.sh", "retries": 1, "retry_backoff": 0})
    run("run", plan, home=home, check=False)
    h = Home(str(home))
    full, view = _facts(h, "v"), _facts(h, "v", view=True)
    assert view == full
    assert full["a"][:2] == ("done", 1) and full["b"][:2] == ("done", 2) and full["c"][0] == "failed"
    # a claim left over after the marker (a crash after the commit point): still done, in both
    (home / "goals" / "v" / "tasks" / "a" / "claim").mkdir()
    assert _facts(h, "v", view=True)["a"] == _facts(h, "v")["a"]
    st = json.loads(run("status", "v", "--json", home=home).stdout)
    rows = {r["task"]: r for r in st["tasks"]}
    assert [rows[t]["state"] for t in "abcd"] == ["done", "done", "failed", "blocked"]
    assert rows["b"]["attempt"] == 2 and rows["b"]["usage"]["tokens_in"] == 14    # both attempts
    assert rows["a"]["usage"]["tokens_in"] == 7
    assert st["usage"]["tokens_in"] == 7 + 14 + 7 and st["counts"] == build_scheduler(h, h.load_plan("v"))[0].counts()
    over = json.loads(run("status", "--json", home=home).stdout)["goals"][0]
    assert over["counts"] == st["counts"] and over["state"] == st["state"]


def test_a_done_marker_of_a_later_attempt_is_read_the_long_way(tmp_path):
    """view=True trusts the marker alone only for attempt 1: a later attempt's marker lists
    the folder (attempts/ is there), so the attempt number and records stay right."""
    h = Home(str(tmp_path / "home"))
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="w", defaults={"agent": "true"})
    run("submit", plan, home=h.root)
    tdir = Path(h.task_dir("w", "a"))
    (tdir / "attempts").mkdir(parents=True)
    (tdir / "attempts" / "3.json").write_text(json.dumps({"attempt": 3, "outcome": "lost", "final": False}))
    (tdir / "done").write_text(json.dumps({"attempt": 4, "worker": "x"}))
    view, full = h.task_facts("w", "a", view=True, detail=True), h.task_facts("w", "a", detail=True)
    assert view == full and view.attempt == 4 and view.extra.get("attempts")


def test_reads_without_a_file_object_return_the_whole_file_or_its_first_bytes(tmp_path):
    """fsio.read_fd (read_bytes, read_task_file_sized): plain read(2) calls to the end of the
    file, across the chunk size, and a limit that stops early; the size is the file's."""
    h = Home(str(tmp_path / "home"))
    d = tmp_path / "home" / "goals" / "g" / "tasks" / "t"
    d.mkdir(parents=True)
    big = bytes(range(256)) * 1200 + b"tail"               # > the first 64 KiB read
    for name, data in (("empty", b""), ("small", b"hello\n"), ("big", big)):
        (d / name).write_bytes(data)
        p = str(d / name)
        assert fsio.read_bytes(p) == data
        assert h.read_task_file_sized(p) == (data, len(data))
        assert h.read_task_file_sized(p, 5) == (data[:5], len(data))
        assert h.read_task_file_sized(p, 100_000) == (data[:100_000], len(data))
    assert fsio.read_bytes(str(d / "missing")) is None and h.read_task_file_sized(str(d / "missing")) is None


def test_the_home_hooks_folder_is_looked_for_once_per_turn_and_only_in_a_holding_thread(tmp_path):
    """hooks.hold_turn (the engine's loop): hooks_for/any_hook remember whether
    $DAGRUN_HOME/hooks exists until end_turn(); a folder made during the turn counts from
    the next turn, and then they give what a thread that does not hold a turn gets."""
    import os
    import stat as st_

    from dagrun import hooks as hk

    h = Home(str(tmp_path / "home"))
    h.ensure()
    plan_file = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="hk", defaults={"agent": "true"})
    run("submit", plan_file, home=h.root)
    plan = h.load_plan("hk")
    hook = tmp_path / "home" / "hooks" / "on_done.d" / "10-note"

    def install():
        hook.parent.mkdir(parents=True)
        hook.write_text("#!/bin/sh\ntrue\n")
        hook.chmod(hook.stat().st_mode | st_.S_IXUSR)

    assert hk.hooks_for(h, plan, "on_done", "a") == [] and not hk.any_hook(h, plan, "on_done")
    hk.hold_turn()
    try:
        assert hk.hooks_for(h, plan, "on_done", "a") == []
        install()                                              # made during the turn
        assert hk.hooks_for(h, plan, "on_done", "a") == [] and not hk.any_hook(h, plan, "on_done")
        hk.end_turn()                                          # the next turn sees it
        held = hk.hooks_for(h, plan, "on_done", "a")
        assert held and held[0]["argv"] == [str(hook)] and hk.any_hook(h, plan, "on_done")
    finally:
        hk.release_turn()
    assert hk.hooks_for(h, plan, "on_done", "a") == held       # the long way says the same
    os.remove(hook)
    assert hk.hooks_for(h, plan, "on_done", "a") == []         # no memo outside a turn


def test_limits_without_a_limits_file_and_with_one(tmp_path):
    """resources.limits: the quick answer when limits.json does not exist is what parsing an
    empty one gives; once a capacity is set it is read (the path is each home's own)."""
    from dagrun import resources as res

    h = Home(str(tmp_path / "home"))
    h.ensure()
    assert res.limits(h) == {"home": {}, "tenants": {}}
    assert res.limits_path(h) == str(tmp_path / "home" / "resources" / "limits.json")
    res.set_capacity(h, "gpu", 2)
    res.set_capacity(h, "gpu", 1, tenant="acme")
    assert res.limits(h) == {"home": {"gpu": 2}, "tenants": {"acme": {"gpu": 1}}}
    other = Home(str(tmp_path / "other"))
    assert res.limits_path(other) == str(tmp_path / "other" / "resources" / "limits.json")
    assert res.limits(other) == {"home": {}, "tenants": {}}


def test_a_folders_listing_is_its_names_and_inodes_without_a_stat_per_entry(tmp_path, monkeypatch):
    """statuscache.listing (the racy check: a goal's end lists every task folder) is each
    entry's name and inode, sorted, as the listing itself gives them: the same inodes as a
    stat of each entry, and no stat is made (was one per entry: ~3 per task folder)."""
    import os

    from dagrun import statuscache

    d = tmp_path / "t"
    d.mkdir()
    (d / "done").write_text("{}")
    (d / "output").write_bytes(b"x" * 10)
    (d / "claim").mkdir()
    os.symlink("nowhere", d / "link")

    def slow(p):
        return [[n, os.stat(os.path.join(p, n), follow_symlinks=False).st_ino] for n in sorted(os.listdir(p))]

    want = slow(str(d))
    calls = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a) or real_stat(*a, **k))
    assert statuscache.listing(str(d)) == want and len(want) == 4
    assert statuscache.listing(str(d) + "/") == want
    assert statuscache.listing(str(tmp_path / "missing")) is None
    assert statuscache.listing(str(d / "done")) is None
    assert calls == []


def test_a_racy_listing_sees_an_entry_replaced_by_rename_in_the_same_tick(home, plans):
    """What the listing is for: a folder changed in its mtime tick after the stamp. A marker
    renamed over another (a new inode under the same name) leaves the names as they were."""
    import os
    import shutil

    p = write_plan(plans, [{"id": "a", "prompt": "x"}], goal="g", defaults={"agent": "true"})
    run("run", p, "-q", home=home)
    a = home / "goals" / "g" / "tasks" / "a"
    st = a.stat()
    want = run("status", "g", "--json", home=home).stdout
    assert statuscache_hit(home)
    shutil.copy(a / "done", a / ".done.new")
    body = json.loads((a / "done").read_text())
    body["worker"] = "by-hand"
    (a / ".done.new").write_text(json.dumps(body))
    os.rename(a / ".done.new", a / "done")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))      # as if in the same tick
    got = run("status", "g", "--json", home=home).stdout
    assert got != want and json.loads(got)["tasks"][0]["worker"] == "by-hand"


def statuscache_hit(home) -> bool:
    from dagrun import statuscache
    return statuscache.load(Home(str(home)), "g") is not None


def test_the_engine_takes_the_plan_its_caller_loaded_only_while_plan_json_is_that_file(tmp_path):
    """`dagrun run` loads the plan (runners, -j) and hands it to its Engine with the stamp it
    took before the load: the engine's start-up uses it instead of parsing plan.json again,
    but only if plan.json's stamp is still that one -- a replaced plan is read from the file."""
    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="pl", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    stamp, plan = h.plan_stamp("pl"), h.load_plan("pl")
    eng = Engine(h, goal="pl", plans={"pl": (stamp, plan)})
    eng._discover()
    assert eng.goals["pl"].plan is plan and eng.goals["pl"].stamp == stamp
    eng = Engine(h, goal="pl", plans={"pl": ((0, 0, 0), plan)})       # not plan.json's stamp
    eng._discover()
    assert eng.goals["pl"].plan is not plan and eng.goals["pl"].plan.ids() == plan.ids()
    eng = Engine(h, goal="pl")                                        # nothing handed over
    eng._discover()
    assert eng.goals["pl"].plan is not plan and eng.goals["pl"].stamp == stamp


def test_hooks_for_answers_the_same_with_and_without_its_shortcut(tmp_path):
    """hooks_for returns [] at once when neither the plan nor any task has a hook of that name
    and the home has no hooks folder; with a plan-level, a task-level or a home hook it lists
    them as before."""
    import stat as st_

    from dagrun import hooks as hk

    h = Home(str(tmp_path / "home"))
    h.ensure()
    p = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "hooks": {"on_failed": [["echo", "task"]]}},
                                    {"id": "b", "prompt": "y"}],
                   goal="hs", defaults={"agent": "true"}, hooks={"on_done": [["echo", "plan"]]})
    run("submit", p, home=h.root)
    plan = h.load_plan("hs")
    assert plan.hook_events == {"on_done", "on_failed"}
    assert [x["from"] for x in hk.hooks_for(h, plan, "on_done", "b")] == ["plan"]
    assert [x["from"] for x in hk.hooks_for(h, plan, "on_failed", "a")] == ["task"]
    assert hk.hooks_for(h, plan, "on_failed", "b") == [] and hk.hooks_for(h, plan, "on_retrying", "a") == []
    home_hook = tmp_path / "home" / "hooks" / "on_retrying.d" / "x"
    home_hook.parent.mkdir(parents=True)
    home_hook.write_text("#!/bin/sh\n")
    home_hook.chmod(home_hook.stat().st_mode | st_.S_IXUSR)
    assert [x["from"] for x in hk.hooks_for(h, plan, "on_retrying", "a")] == ["home"]
    assert [x["from"] for x in hk.hooks_for(h, plan, "on_done", "b")] == ["plan"]


def _turns_of_a_chain(tmp_path, n: int) -> int:
    """The engine's loop turns for a chain of n fake tasks of 20 ms each, in this process."""
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome

    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", [{"id": f"t{i}", "prompt": "x", "deps": [f"t{i - 1}"] if i else []}
                                    for i in range(n)], goal="ch", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    eng = Engine(h, goal="ch", jobs=1, runner=FakeRunner(lambda launch: Outcome(after=0.02)))
    turns = 0
    once = eng._loop_once

    def counted():
        nonlocal turns
        turns += 1
        once()
    eng._loop_once = counted
    assert eng.run() == 0
    return turns


def test_the_engines_own_writes_do_not_wake_it_for_an_empty_turn(tmp_path):
    """Each task's own writes (its events lines, owner.json, the marker) change the goal's
    folder; the inotify event of that woke the loop at once for a turn with nothing to do,
    one per task, on the same CPUs as the next agent's start (bench/ray_edge.py: "turns while
    it runs" 1 -> 0, Ray's submission-to-node 1.69 -> 1.22 ms). _absorb_own reads them before
    the loop sleeps: a chain takes about one turn per task (its end), not two."""
    n = 15
    assert _turns_of_a_chain(tmp_path, n) <= n + 5


def test_another_processs_lines_read_before_a_sleep_are_not_lost(tmp_path):
    """What _absorb_own takes from inotify and cannot prove to be the engine's own -- a line
    another process appended, a replaced plan -- is carried into the next turn, which comes at
    once (a zero timeout) and feeds that goal; the engine's own lines are not."""
    from dagrun import events as ev
    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="w", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    eng = Engine(h, goal="w")
    from dagrun.watcher import Watcher
    eng.watcher = Watcher(h.goals_dir)
    eng._discover()
    gs = eng.goals["w"]
    ev.hold()
    try:
        ev.emit(h, "w", "test.mine", worker=eng.worker)          # our own line, read back by our reader
        ev.flush()
        gs.reader.read()
        eng._absorb_own()
        assert eng._carry == (set(), False)
        with open(h.events_path("w"), "ab") as f:                # another process's line
            f.write(b'{"type": "test.theirs", "goal": "w", "worker": "other"}\n')
        eng._absorb_own()
        assert eng._carry == ({"w"}, False)
        seen = []
        eng.on_event = seen.append
        eng._ready = set()
        eng._loop_once()
        assert [e["type"] for e in seen] == ["test.theirs"] and eng._carry == (set(), False)
    finally:
        ev.release()
        eng.watcher.close()
        eng.runner.close()


def test_work_another_process_makes_ready_while_the_engine_reads_its_own_lines_starts_at_once(tmp_path, monkeypatch):
    """A turn ends by reading back its own event lines (the touched goals); lines another
    process appended right after ours come with them (events.Reader.read) -- and their
    inotify event may be spent already. What they make ready must start at once: this turn's
    dispatch has run, so the next turn comes without a sleep. It used to wait for the rescan
    (10 s): seen with `dagrun run` and `dagrun worker --until-idle` on one goal, 1 run in 8.
    Here the other process is a person approving a gate (commands.decide, in another thread:
    its appends are not held) at the exact moment the engine flushes the turn that committed
    y; c waits for the gate and must start within a second, not after the 30 s rescan."""
    import threading

    from dagrun import events as ev
    from dagrun.commands import decide
    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", [
        {"id": "gate", "prompt": "x", "approval": {"prompt": "go?"}},
        {"id": "y", "prompt": "x", "agent": "true"},
        {"id": "c", "prompt": "x", "deps": ["gate"], "agent": "true"},
    ], goal="w")
    run("submit", p, home=h.root)
    real_flush = ev.flush
    fired = []

    def flush():
        held = getattr(ev._held, "lines", None) or {}
        mine = b"".join(b"".join(x) for x in held.values())
        real_flush()
        caller = __import__("sys")._getframe(1).f_code.co_name
        if not fired and caller == "read" and b'"task":"y","status":"done"' in mine:
            fired.append(time.monotonic())
            th = threading.Thread(target=decide, args=(h, "w", "gate"), kwargs={"approve": True, "text": "ok"})
            th.start()
            th.join()
    monkeypatch.setattr(ev, "flush", flush)
    eng = Engine(h, goal="w", jobs=2, rescan_every=30.0)
    t0 = time.monotonic()
    assert eng.run() == 0
    assert fired, "the approval was never made at the flush of y's done line"
    assert time.monotonic() - fired[0] < 5.0, "c waited for the rescan"
    assert time.monotonic() - t0 < 10.0
    assert (Path(h.task_dir("w", "c")) / "done").exists()


def test_the_view_snapshot_opens_markers_relative_to_tasks_and_says_what_task_facts_says(tmp_path, monkeypatch):
    """Home.snapshot(view=True) (a goal's end, `status`) opens each first-attempt `done`
    relative to one fd of tasks/ -- no absolute path per task -- and gives, task by task, what
    task_facts(view=True) gives: markers of later attempts, other markers, a claim, a
    symbolic link for a marker, a folder never made."""
    import os

    h = Home(str(tmp_path / "home"))
    ids = [f"t{i}" for i in range(8)]
    plan = write_plan(tmp_path / "p", [{"id": t, "prompt": t} for t in ids], goal="w", defaults={"agent": "true"})
    run("submit", plan, home=h.root)
    tasks = Path(h.tasks_dir("w"))
    for t in ids[:6]:
        (tasks / t).mkdir()
    (tasks / "t0" / "done").write_text(json.dumps({"attempt": 1, "worker": "a"}))
    (tasks / "t1" / "done").write_text(json.dumps({"attempt": 2, "worker": "b"}))
    (tasks / "t1" / "attempts").mkdir()
    (tasks / "t1" / "attempts" / "1.json").write_text(json.dumps({"attempt": 1, "outcome": "failed"}))
    (tasks / "t2" / "failed").write_text(json.dumps({"attempt": 1, "reason": "x"}))
    (tasks / "t3" / "claim").mkdir()
    (tasks / "t3" / "claim" / "owner.json").write_text(json.dumps({"attempt": 1, "worker": "c"}))
    (tasks / "t4" / "real").write_text(json.dumps({"attempt": 1}))
    os.symlink("real", tasks / "t4" / "done")
    (tasks / "t5" / "done").write_text("not json")
    p = h.load_plan("w")
    want = {t: h.task_facts("w", t, detail=True, view=True) for t in ids}
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    got = h.snapshot("w", p, detail=True, view=True)
    assert got == want
    assert got["t0"].marker == {"attempt": 1, "worker": "a"} and got["t1"].attempt == 2
    assert got["t3"].state == "running" and got["t6"].state == "pending"
    # t0 is read relative to tasks/; the odd ones (t1, t2, t4, t5) go the long way
    assert f"{tasks}/t0/done" not in opened and "t0/done" in opened
