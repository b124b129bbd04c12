"""The status snapshot (statuscache.py, issue 20): `dagrun status GOAL --json` of a quiet goal
prints goals/<g>/status.cache's bytes instead of recomputing them, and is never wrong because
of it -- whatever changed a task's state with or without an event (a transition, a crash
between a file step and its event, a hand edit, a plan edit, a fan-out, gc, a SIGKILL while
the snapshot is written). The oracle of every test: the same command with the snapshot
removed, which computes from the files as before."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from conftest import run, task_dir, write_plan
from dagrun import statuscache
from dagrun.store import Home

TASKS = [{"id": "a", "prompt": "A"}, {"id": "b", "deps": ["a"], "prompt": "B"},
         {"id": "c", "deps": ["b"], "prompt": "C"}]


def _submit(home: Path, plans: Path, tasks=TASKS, agent: str = "echo out", **top) -> Path:
    p = write_plan(plans, tasks, goal="g", defaults={"agent": agent}, **top)
    run("submit", p, home=home)
    return p


def cache(home: Path, g: str = "g") -> Path:
    return home / "goals" / g / statuscache.NAME


def status(home: Path, g: str = "g", **kw) -> str:
    return run("status", g, "--json", home=home, **kw).stdout


def hit(home: Path, g: str = "g") -> bool:
    """Would the next status use the snapshot?"""
    return statuscache.load(Home(str(home)), g) is not None


def checked(home: Path, g: str = "g") -> dict:
    """status --json, which must equal what the files say (computed without the snapshot)."""
    got = status(home, g)
    if cache(home, g).exists():
        os.rename(cache(home, g), str(cache(home, g)) + ".aside")
    want = status(home, g)
    if '"running"' in got:                           # a running row's duration is the clock's
        assert _still(json.loads(got)) == _still(json.loads(want))
    else:
        assert got == want
    return json.loads(got)


def _still(d: dict) -> dict:
    for r in d["tasks"]:
        if r["state"] == "running":
            r.pop("duration")
    return d


def states(d: dict) -> dict:
    return {r["task"]: r["state"] for r in d["tasks"]}


def snapshotted(home: Path, g: str = "g") -> None:
    status(home, g)                  # writes it (a quiet goal)
    assert hit(home, g)


def events_size(home: Path, g: str = "g") -> int:
    return (home / "goals" / g / "events.jsonl").stat().st_size


def test_a_quiet_goals_status_is_the_snapshots_bytes_on_both_paths(home, plans):
    _submit(home, plans)
    first = status(home)                 # computed, and the snapshot written
    assert cache(home).exists() and hit(home)
    assert status(home) == first         # from the snapshot
    assert run("status", "g", "--json", home=home, env={"DAGRUN_NO_FAST_PATH": "1"}).stdout == first
    assert states(json.loads(first)) == {"a": "ready", "b": "waiting", "c": "waiting"}
    table = run("status", "g", home=home).stdout        # the table and the goal list read it too
    assert "waiting" in table
    goals = json.loads(run("status", "--json", home=home).stdout)["goals"]
    assert goals == [{"goal": "g", "state": "ready", "tasks": 3, "counts": {"waiting": 2, "ready": 1},
                      "source": str(plans / "dag.json")}]


def test_transitions_make_it_stale_and_a_running_goal_is_not_snapshotted(home, plans):
    _submit(home, plans)
    snapshotted(home)
    assert run("claim", "g", "--pid", str(os.getpid()), home=home).stdout == "a\n"
    assert not hit(home)                             # the running event
    assert states(checked(home))["a"] == "running"
    assert not hit(home)                             # a duration grows, a holder may die: not kept
    run("complete", "g", "a", "--pid", str(os.getpid()), home=home)
    d = checked(home)
    assert states(d) == {"a": "done", "b": "ready", "c": "waiting"}
    assert hit(home)


def test_hand_edits_without_events(home, plans):
    """mkdir claim / rm -rf claim / touch done / rm done by hand: no event, the folder changes."""
    _submit(home, plans)
    snapshotted(home)
    size = events_size(home)
    a = task_dir(home, "g", "a")
    a.mkdir(parents=True)
    (a / "claim").mkdir()                            # a claim being born (no owner.json yet)
    assert states(checked(home))["a"] == "running"
    shutil.rmtree(a / "claim")                       # rm -rf claim by hand
    assert states(checked(home))["a"] == "ready"
    assert hit(home)
    (a / "done").write_text("{}")                    # `touch done`: the shell contract's fact
    (a / "output").write_text("x\n")
    assert states(checked(home)) == {"a": "done", "b": "ready", "c": "waiting"}
    assert hit(home)
    (a / "done").unlink()
    assert states(checked(home))["a"] == "ready"
    assert events_size(home) == size                 # none of this was an event


def test_a_change_to_a_folder_that_was_quiet_for_long(home, plans):
    """The common case: the folder's mtime moves, its listing was never kept."""
    _submit(home, plans)
    a = task_dir(home, "g", "a")
    a.mkdir(parents=True)
    (a / "stderr.log").write_text("")
    os.utime(a, (1, 1))
    snapshotted(home)
    assert list(json.loads(cache(home).read_bytes().split(b"\n", 1)[0])["lists"]) == []
    (a / "done").write_text("{}")
    assert states(checked(home))["a"] == "done"


def test_a_change_in_the_same_mtime_tick_is_caught_by_the_listing(home, plans):
    """A folder's mtime has the file system's granularity: a change that leaves it equal (here:
    put back by hand) is still seen, because a recent stamp keeps the folder's listing too."""
    _submit(home, plans)
    a = task_dir(home, "g", "a")
    a.mkdir(parents=True)
    (a / "stderr.log").write_text("")
    soon = time.time_ns() + 60 * 10**9      # "changed just before the snapshot", however slow
    os.utime(a, ns=(soon, soon))            # this machine is at starting `dagrun status`
    snapshotted(home)
    st = a.stat()
    (a / "done").write_text("{}")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))     # as if in the same tick
    assert a.stat().st_mtime_ns == st.st_mtime_ns
    assert states(checked(home))["a"] == "done"


def test_a_crash_between_the_claim_and_its_event(home, plans, tmp_path):
    """`dagrun claim` SIGKILLed right before it appends `running` (the crash harness): the claim
    is there without an event; status shows it."""
    _submit(home, plans)
    snapshotted(home)
    size = events_size(home)
    k = _step_of(home, tmp_path, ["claim", "g", "--pid", str(os.getpid())], "append")
    r = run("claim", "g", "--pid", str(os.getpid()), home=home, check=False, env={"DAGRUN_CRASH_AT": str(k)})
    assert r.returncode == -9
    assert events_size(home) == size and (task_dir(home, "g", "a") / "claim").is_dir()
    assert states(checked(home))["a"] == "running"


def test_a_crash_between_the_done_marker_and_its_event(home, plans, tmp_path):
    _submit(home, plans)
    run("claim", "g", "--pid", str(os.getpid()), home=home)
    snapshotted_before = status(home)                # a running goal: computed, nothing kept
    assert states(json.loads(snapshotted_before))["a"] == "running" and not hit(home)
    argv = ["complete", "g", "a", "--pid", str(os.getpid())]
    k = _step_of(home, tmp_path, argv, "rename", "/tasks/a/done")
    size = events_size(home)
    r = run(*argv, home=home, check=False, env={"DAGRUN_CRASH_AT": f"{k}:after"})
    assert r.returncode == -9 and events_size(home) == size
    assert (task_dir(home, "g", "a") / "done").exists()
    d = checked(home)
    assert states(d) == {"a": "done", "b": "ready", "c": "waiting"}
    assert hit(home)                 # done with a leftover claim: nothing live, kept
    (task_dir(home, "g", "a") / "claim").rename(tmp_path / "swept")      # the sweep a worker does
    assert not hit(home) and checked(home)["counts"] == {"done": 1, "ready": 1, "waiting": 1}


def test_plan_edits_fan_out_and_the_workers_snapshot_at_the_end(home, plans, tmp_path):
    (tmp_path / "items.txt").write_text('["x", "y", "z"]\n')
    tasks = [{"id": "list", "prompt": "L", "agent": f"cat {tmp_path / 'items.txt'}"},
             {"id": "each", "for_each": {"from": "list"}, "prompt": "{{item}}", "agent": "cat"},
             {"id": "join", "deps": ["each"], "prompt": "J", "agent": "cat"}]
    _submit(home, plans, tasks)
    snapshotted(home)
    run("add", "g", "-", home=home, input=json.dumps({"tasks": [{"id": "extra", "prompt": "E", "agent": "true"}]}))
    assert not hit(home)                              # plan.json replaced
    assert "extra" in states(checked(home))
    run("run", "g", home=home)                        # the fan-out (a plan edit), then the end
    assert hit(home)                                  # the worker derived it when the goal ended
    d = checked(home)
    assert d["state"] == "done" and {"each.0", "each.1", "each.2"} <= set(states(d))


def test_the_workers_snapshot_at_the_end_is_current(home, plans):
    """The engine derives the snapshot when the goal ends, after the turn's held event lines
    (goal.finished) are written: stamped before them, it was stale at once and the first
    status (`dagrun run`'s closing line) derived everything again."""
    _submit(home, plans)
    assert not cache(home).exists()
    run("worker", "--until-idle", home=home)          # prints no status: only the engine's snapshot
    assert cache(home).exists() and hit(home)
    assert states(checked(home)) == {"a": "done", "b": "done", "c": "done"}


def test_retry_and_gc(home, plans):
    p = _submit(home, plans, [{"id": "a", "prompt": "A"}], agent="false")
    run("run", p, home=home, check=False)
    assert hit(home) and states(checked(home)) == {"a": "failed"}
    run("retry", "g", "a", home=home)
    assert states(checked(home)) == {"a": "ready"}
    run("run", p, home=home, check=False)
    assert states(checked(home)) == {"a": "failed"}
    os.utime(home / "goals/g/summary.json", (1, 1))
    run("gc", "--keep", "0", "--older-than", "1s", home=home)
    r = run("status", "g", "--json", home=home, check=False)
    assert r.returncode != 0 and "no goal" in r.stderr


def test_a_resource_capacity_set_later_makes_it_stale(home, plans):
    _submit(home, plans)
    snapshotted(home)
    run("resources", "set", "echo", "1", home=home)
    assert not hit(home)
    checked(home)


def test_sigkill_while_the_snapshot_is_written(home, plans, tmp_path):
    """Every gap around the snapshot's file steps: status answers right afterwards, and a
    snapshot is either the whole previous one or absent, never a part."""
    _submit(home, plans)
    want = status(home)
    trace = tmp_path / "steps"
    cache(home).unlink()
    run("status", "g", "--json", home=home, env={"DAGRUN_STEP_TRACE": str(trace)})
    steps = [int(line.split()[0]) for line in trace.read_text().splitlines() if statuscache.NAME in line]
    assert len(steps) == 2                           # create the temp, publish it
    for k in steps:
        for when in ("", ":after"):
            cache(home).unlink(missing_ok=True)
            r = run("status", "g", "--json", home=home, check=False, env={"DAGRUN_CRASH_AT": f"{k}{when}"})
            assert r.returncode == -9
            assert status(home) == want
            assert hit(home)
            leftovers = [n for n in os.listdir(home / "goals/g") if n.endswith(".tmp")]
            assert all(n.startswith(f".{statuscache.NAME}.") for n in leftovers)
    assert checked(home) == json.loads(want)


def _step_of(home: Path, tmp_path: Path, argv: list, *words: str) -> int:
    """The number of the first file-system step of `dagrun argv` whose label has all the
    words, found by a traced run on a copy of the home."""
    copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(home, copy, symlinks=True)
    trace = tmp_path / "trace"
    trace.unlink(missing_ok=True)
    run(*argv, home=copy, env={"DAGRUN_STEP_TRACE": str(trace)})
    for line in trace.read_text().splitlines():
        n, label = line.split(" ", 1)
        if all(w in label for w in words):
            return int(n)
    raise AssertionError(f"no step with {words}: {trace.read_text()}")


def test_the_snapshot_a_process_just_derived_answers_its_own_next_status_until_the_goal_changes(home, plans, monkeypatch):
    """`dagrun run`'s closing line takes the snapshot its engine derived at the goal's end
    (status.goal_detail(fresh=)) without reading it back and checking every task folder --
    only while the goal's own files are the ones it was derived from: a transition since
    (an event appended) sends it back to the files."""
    from dagrun import status as st

    _submit(home, plans)
    run("run", "g", home=home)
    h = Home(str(home))
    want = json.loads(status(home))
    fresh = st.refresh_snapshot(h, "g")
    assert fresh is not None and cache(home).exists()
    real_load = statuscache.load
    loads = []
    monkeypatch.setattr(statuscache, "load", lambda *a: (loads.append(a), real_load(*a))[1])
    assert st.goal_detail(h, "g", fresh=fresh) == want
    assert loads == []                                # nothing read back
    run("retry", "--force", "g", "c", home=home)      # a transition: events.jsonl grew
    assert not fresh.unchanged()
    d = st.goal_detail(h, "g", fresh=fresh)
    assert states(d)["c"] != "done" and len(loads) == 1      # from the files, not the stale snapshot
    assert st.goal_detail(h, "g") == d


def _slow_summary(h: Home, g: str) -> dict:
    """summary.json as the files say it now, each task read the long way (no facts)."""
    from dagrun.lifecycle import build_scheduler
    from dagrun.summary import build_summary

    plan = h.load_plan(g)
    return build_summary(h, plan, build_scheduler(h, plan)[0])


def test_the_goals_end_reads_the_task_folders_once_and_says_what_the_long_way_says(home, plans, tmp_path):
    """The engine's end of a goal (status.read_for_end, summary.goal_run(facts=),
    status.snapshot_after_end): summary.json built from the facts read for the status
    snapshot is the summary read from the files task by task, the snapshot it publishes is
    current and byte for byte what status computes from the files -- first-attempt
    successes, a success after a retry (attempts/), a failure and the task it blocks,
    usage reported by the agent."""
    agent = tmp_path / "agent.sh"
    agent.write_text(
        'cat >/dev/null; echo \'{"tokens_in": 5, "cost_usd": 0.25}\' >> "$DAGRUN_USAGE_FILE"\n'
        'case "$DAGRUN_TASK" in r) [ "$DAGRUN_ATTEMPT" = 2 ] || exit 3;; f) exit 4;; esac; echo ok\n')
    tasks = [{"id": "a", "prompt": "A"}, {"id": "b", "deps": ["a"], "prompt": "B"},
             {"id": "r", "prompt": "R", "retries": 1, "retry_backoff": 0},
             {"id": "f", "prompt": "F", "retries": 0}, {"id": "x", "deps": ["f"], "prompt": "X"}]
    _submit(home, plans, tasks, agent=f"sh {agent}")
    run("run", "g", home=home, check=False)
    h = Home(str(home))
    got = json.loads((home / "goals" / "g" / "summary.json").read_text())
    want = _slow_summary(h, "g")
    for k in ("finished", "events_size", "finisher"):
        got.pop(k, None)
        want.pop(k, None)
    assert got == want and got["attempts"] == 5 and got["counts"] == {"done": 3, "failed": 1, "blocked": 1}
    assert got["usage_by_task"]["r"]["tokens_in"] == 10          # both attempts of r
    assert hit(home)                                             # the engine's snapshot is current
    from dagrun import status as st
    assert statuscache.load(h, "g")[1] == st._computed(h, "g")[1]


def _ended_goal_without_its_end(home: Path, plans: Path) -> Home:
    """A goal whose tasks all ended, with summary.json and the snapshot taken away (what the
    engine finds at the moment the goal ends)."""
    _submit(home, plans)
    run("run", "g", home=home)
    (home / "goals" / "g" / "summary.json").unlink()
    cache(home).unlink()
    return Home(str(home))


def test_the_goals_end_snapshot_takes_events_jsonl_again_only_when_the_new_bytes_are_its_own(home, plans):
    """snapshot_after_end stamps events.jsonl again when every byte appended since the stamps
    is this thread's (its own summary and goal.finished lines): a line another process
    appended in between -- before or after ours -- leaves the old stamp, and no snapshot is
    written; the ordinary path (refresh_snapshot) then derives it."""
    from dagrun import events as ev
    from dagrun import fsio
    from dagrun import status as st

    h = _ended_goal_without_its_end(home, plans)
    plan, path = h.load_plan("g"), h.events_path("g")

    def end(foreign_before: bool, foreign_after: bool):
        ev.hold()
        try:
            pre = st.read_for_end(h, "g", plan, h.plan_stamp("g"))
            assert pre is not None and pre.facts["a"].marker["attempt"] == 1
            if foreign_before:
                fsio.append_line(path, b'{"type": "agent.note", "goal": "g"}\n')
            ev.emit(h, "g", "agent.note", worker="me")          # "ours": held, then flushed
            ev.flush()
            if foreign_after:
                fsio.append_line(path, b'{"type": "agent.note", "goal": "g"}\n')
            return st.snapshot_after_end(h, "g", pre)
        finally:
            ev.release()

    assert end(True, False) is None and not cache(home).exists()
    assert end(False, True) is None and not cache(home).exists()
    fresh = end(False, False)
    assert fresh is not None and fresh.unchanged() and hit(home)
    assert json.loads(fresh.body) == checked(home)
    # a plan that is not plan.json's any more: no shared read, the ordinary path
    assert st.read_for_end(h, "g", plan, (0, 0, 0)) is None


def _head(home: Path, g: str = "g") -> dict:
    return json.loads(cache(home, g).read_bytes().split(b"\n", 1)[0])


def _set_mtime(p: Path, ns: int) -> None:
    os.utime(p, ns=(ns, ns))


def test_a_local_file_system_with_sub_second_times_lists_only_folders_of_the_fine_window(home, plans):
    """statuscache's fine window: the task folders' file system is a local one that keeps
    sub-second times (the tests' tmp folder), so the snapshot lists only the folders changed
    in the last 2 x FINE_RACY_NS before its stamps (was: the last 8 s -- every folder, right
    after a run) and is published with its file's mtime at the stamps' time."""
    from dagrun import status as st

    tasks = [{"id": t, "prompt": t} for t in "abcd"]
    _submit(home, plans, tasks)
    run("run", "g", home=home)
    tdir = home / "goals" / "g" / "tasks"
    now = time.time_ns()
    for i, t in enumerate("abc"):          # 1 s, 0.5 s and 0.2 s ago: quiet for the fine window
        _set_mtime(tdir / t, now - (1_000_000_123, 500_000_123, 200_000_123)[i])
    _set_mtime(tdir / "d", now + 60 * 10**9)    # "changed just now", however slow this machine is
    h = Home(str(home))
    before = time.time_ns()
    fresh = st.refresh_snapshot(h, "g")
    assert fresh is not None
    head = _head(home)
    assert head["racy_ns"] == statuscache.FINE_RACY_NS
    assert list(head["lists"]) == ["d"]
    assert before <= cache(home).stat().st_mtime_ns <= before + 10**9   # the stamps' time, set
    assert hit(home) and checked(home)["tasks"][3]["state"] == "done"


def test_whole_second_times_or_a_network_file_system_keep_the_two_second_window(home, plans, monkeypatch):
    """A file system that keeps whole seconds (every folder time's sub-second part 0), or one
    whose times another machine's clock may stamp (nfs), keeps RACY_NS: every folder
    changed in the last 8 s is listed, the snapshot file keeps its own mtime, no racy_ns."""
    from dagrun import status as st

    tasks = [{"id": t, "prompt": t} for t in "abc"]
    _submit(home, plans, tasks)
    run("run", "g", home=home)
    tdir = home / "goals" / "g" / "tasks"
    whole = (time.time_ns() // 10**9 - 3) * 10**9
    for t in "abc":
        _set_mtime(tdir / t, whole)
    h = Home(str(home))
    assert st.refresh_snapshot(h, "g") is not None
    head = _head(home)
    assert "racy_ns" not in head and sorted(head["lists"]) == ["a", "b", "c"]
    cache(home).unlink()
    for i, t in enumerate("abc"):
        _set_mtime(tdir / t, whole + 1_234_567 * (i + 1))
    monkeypatch.setattr(statuscache, "_fs_kind", {str(tdir): "nfs"})
    assert st.refresh_snapshot(h, "g") is not None
    head = _head(home)
    assert "racy_ns" not in head and sorted(head["lists"]) == ["a", "b", "c"]
    assert cache(home).stat().st_mtime_ns > whole + 2 * 10**9


def test_a_change_in_the_same_clock_tick_after_a_fine_snapshot_is_caught(home, plans):
    """The fine window's promise: a folder changed a few ms before the stamps (in the clock's
    tick) and changed again after them, its mtime put back as if in the same tick, is seen --
    its listing was kept and the reader compares it."""
    from dagrun import status as st

    _submit(home, plans)
    run("run", "g", home=home)
    a = home / "goals" / "g" / "tasks" / "a"
    h = Home(str(home))
    tick = time.time_ns() - 5_000_000          # 5 ms before the stamps
    _set_mtime(a, tick)
    assert st.refresh_snapshot(h, "g") is not None
    assert _head(home).get("racy_ns") == statuscache.FINE_RACY_NS and "a" in _head(home)["lists"]
    assert hit(home)
    os.rename(a / "done", a / "failed")        # another process's change, in the same tick
    _set_mtime(a, tick)
    assert not hit(home)
    assert states(checked(home))["a"] == "failed"
