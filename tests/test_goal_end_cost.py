"""The end of a 100 000-task goal (issue 20; docs/performance.md "2026-12-06 (13)"): the
cheaper paths it takes -- a marker in one read(2) where a short read is the end, tasks/
listed once for the stamps and the facts, timestamps in now_iso's form parsed without
datetime, the summary's spans/window/critical path/slowest, the collector paused -- and
that each says what the old path said."""
from __future__ import annotations

import gc
import json
import os
import random
from pathlib import Path

from conftest import run, write_plan

from dagrun import fsio, status, statuscache, store
from dagrun import summary as sm
from dagrun.store import Home, now_iso, parse_iso, parse_ts

TREE = [{"id": "a", "prompt": "A"}, {"id": "b", "deps": ["a"], "prompt": "B", "agent": "exit 3"},
        {"id": "c", "deps": ["b"], "prompt": "C"}, {"id": "d", "deps": ["a"], "prompt": "D"},
        {"id": "e", "soft_deps": ["b", "d"], "prompt": "E"}]


def _ended(tmp_path) -> Home:
    p = write_plan(tmp_path / "p", TREE, goal="g", defaults={"agent": "echo out"})
    run("run", p, home=tmp_path / "home", check=1)
    return Home(str(tmp_path / "home"))


# -------------------------------------------------------------------------- parse_ts
def test_parse_ts_of_now_iso_form_is_datetimes_float_without_datetime_per_value(monkeypatch):
    random.seed(7)
    values = [random.uniform(0, 4e9) for _ in range(20000)] + [0.0, 1.5, 1e9 + 0.999999, 1767225599.9999995]
    want = {now_iso(x): parse_iso(now_iso(x)) for x in values}      # datetime.fromisoformat(...).timestamp()
    store._SECONDS.clear()
    assert all(parse_ts(s) == w for s, w in want.items())
    calls = []
    monkeypatch.setattr(store, "parse_iso", lambda s: calls.append(s) or parse_iso(s))
    store._SECONDS.clear()
    same_second = [f"2026-12-06T22:51:02.{i:06d}Z" for i in range(0, 1000000, 997)]
    got = [parse_ts(s) for s in same_second]
    assert len(calls) == 1                          # one whole second parsed once, not 1 004 times
    assert got == [parse_iso(s) for s in same_second]


def test_parse_ts_of_other_forms_and_junk_is_what_it_was():
    for v in ["2026-12-06T22:51:02.123Z", "2026-12-06 22:51:02.123456Z", "2026-12-06T22:51:02+02:00",
              "2026-13-06T22:51:02.123456Z", "2026-12-06T22:51:02.12345\u0663Z", "Z026-12-06T22:51:02.123456Z",
              "2026-12-06T22:51:02.123456", "20261206T225102.123.123456Z", "2026-W49-7T22:51:02.123456Z",
              5, 2.5, True, "", None, "soon"]:
        try:
            want = parse_iso(str(v)) if isinstance(v, str) and v else None
        except ValueError:
            want = None
        if isinstance(v, (int, float)) and v:
            want = float(v)
        assert parse_ts(v) == want, v


# -------------------------------------------------------------------------- short read
def test_read_fd_stops_at_a_short_read_only_where_asked(tmp_path, monkeypatch):
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b'{"attempt": 1}\n')
    big.write_bytes(os.urandom(200_000))          # more than one read's 64 KiB
    reads = []
    real = os.read
    monkeypatch.setattr(fsio.os, "read", lambda fd, n: reads.append(n) or real(fd, n))
    for path, short, n in [(small, True, 1), (small, False, 2), (big, True, 3), (big, False, 4)]:
        reads.clear()
        fd = os.open(path, os.O_RDONLY)
        try:
            assert fsio.read_fd(fd, short_eof=short) == path.read_bytes()
        finally:
            os.close(fd)
        assert len(reads) == n, (path, short)      # 64K + 128K (short) + the 0-byte one unless short


def test_short_read_is_eof_on_local_file_systems_only(tmp_path, monkeypatch):
    monkeypatch.setattr(fsio, "_short_eof", {})
    for kind, want in [("ext4", True), ("tmpfs", True), ("xfs", True), ("nfs4", False), ("fuse.sshfs", False),
                       (None, False)]:
        monkeypatch.setattr(fsio, "fs_type", lambda p, k=kind: k)
        fsio._short_eof.clear()
        assert fsio.short_read_is_eof(str(tmp_path)) is want, kind


def test_a_goals_facts_read_each_marker_with_one_read_where_a_short_read_is_the_end(tmp_path, monkeypatch):
    h = _ended(tmp_path)
    plan = h.load_plan("g")
    want = h.snapshot("g", plan, detail=True, view=False)
    reads = []
    real = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real(fd, n))
    monkeypatch.setattr(fsio, "short_read_is_eof", lambda folder: True)
    got = h.snapshot("g", plan, detail=True, view=True)
    one = len(reads)
    reads.clear()
    monkeypatch.setattr(fsio, "short_read_is_eof", lambda folder: False)   # NFS, FUSE: read to the 0
    assert h.snapshot("g", plan, detail=True, view=True) == got
    firsts = [t for t, f in got.items() if f.state == "done" and f.attempt == 1]
    assert len(firsts) == 3 and len(reads) - one == len(firsts)     # a, d, e: one read(2) less each
    for t in firsts:
        assert got[t].marker == want[t].marker


# -------------------------------------------------------------------------- one listing
def test_the_ends_read_lists_tasks_once_and_says_what_a_listing_of_its_own_says(tmp_path, monkeypatch):
    h = _ended(tmp_path)
    plan = h.load_plan("g")
    want = h.snapshot("g", plan, detail=True, view=True)
    monkeypatch.setattr(Home, "task_folders", lambda self, g: (_ for _ in ()).throw(AssertionError("listed again")))
    pre = status.read_for_end(h, "g", plan, tuple(statuscache._stat(h.plan_path("g"))))
    assert pre is not None and pre.facts == want
    assert pre.stamps.names() == set(os.listdir(h.tasks_dir("g")))
    # a folder made after the stamps' listing reads as absent (the stamps then say stale)
    late = h.snapshot("g", plan, detail=True, view=True, present=pre.stamps.names() - {"d"})
    assert late["d"].state == "pending" and late["a"] == want["a"]


# -------------------------------------------------------------------------- the summary
def _old_critical_path(run):
    spans = run.spans()
    best = {}
    for t in run.order:
        if t not in spans:
            continue
        s, e = spans[t]
        prev, acc = None, 0.0
        task = run.plan.task(t)
        for d in [*task.deps, *task.soft_deps]:
            if d in best and best[d][0] > acc:
                prev, acc = d, best[d][0]
        best[t] = (acc + (e - s), prev)
    if not best:
        return [], 0.0
    pos = {t: i for i, t in enumerate(run.plan.ids())}
    end = max(best, key=lambda t: (best[t][0], -pos[t]))
    path, cur = [], end
    while cur is not None:
        path.append(cur)
        cur = best[cur][1]
    return path[::-1], round(best[end][0], 3)


def _old_slowest(run, n=sm.SLOWEST):
    by = run.by_task()
    rows = [{"task": t, "duration": round(e - s, 3), "attempts": len(by.get(t, []))} for t, (s, e) in run.spans().items()]
    rows.sort(key=lambda r: -r["duration"])
    return rows[:n]


def test_spans_window_critical_path_and_slowest_say_what_the_straight_loops_said():
    """Random graphs with ties (durations on a 10 ms grid), retries, untimed and running
    attempts: the same path, length, window and slowest rows (ties in the same order)."""
    from dagrun.plan import parse
    from dagrun.scheduler import Scheduler
    rnd = random.Random(3)
    for trial in range(60):
        n = rnd.randint(1, 40)
        tasks = []
        for i in range(n):
            earlier = [f"t{j}" for j in range(i)]
            deps = rnd.sample(earlier, min(len(earlier), rnd.randint(0, 3)))
            soft = [d for d in rnd.sample(earlier, min(len(earlier), rnd.randint(0, 2))) if d not in deps]
            tasks.append({"id": f"t{i}", "prompt": "p", "agent": "true", "deps": deps, "soft_deps": soft})
        plan = parse(json.dumps({"goal": "g", "tasks": tasks}).encode(), shown="dag.json", source="/tmp/dag.json",
                     default_goal="g")
        attempts = []
        for t in plan.ids():
            for k in range(rnd.choice([0, 1, 1, 1, 2, 3])):
                start = None if rnd.random() < 0.05 else 1000 + rnd.randint(0, 50) / 100
                end = None if rnd.random() < 0.05 else (start or 1000) + rnd.randint(0, 30) / 100
                attempts.append(sm.Attempt(t, k + 1, "done", "w", start, end))
        rnd.shuffle(attempts)
        run_ = sm.GoalRun(plan, Scheduler(plan.tasks).topo_ids(), attempts, 1001.0)
        old = sm.GoalRun(plan, run_.order, attempts, 1001.0)
        sp = old.spans()
        want_w = (min(s for s, _ in sp.values()), max(e for _, e in sp.values())) if sp else None
        assert run_.window() == want_w and run_.window() == want_w
        assert run_.critical_path() == _old_critical_path(old)
        assert run_.slowest() == _old_slowest(old)
        assert run_.makespan() == (round(want_w[1] - want_w[0], 3) if want_w else 0.0)


# -------------------------------------------------------------------------- the collector
def test_the_collector_is_paused_for_the_whole_end(tmp_path, monkeypatch):
    from dagrun import transitions as tr
    from dagrun.engine import Engine
    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", TREE, goal="g", defaults={"agent": "echo out"})
    run("submit", p, home=h.root)
    seen = []
    real_read, real_end, real_snap = status.read_for_end, tr.end_goal_if_finished, status.snapshot_after_end
    monkeypatch.setattr(status, "read_for_end", lambda *a, **k: seen.append(gc.isenabled()) or real_read(*a, **k))
    monkeypatch.setattr(tr, "end_goal_if_finished", lambda *a, **k: seen.append(gc.isenabled()) or real_end(*a, **k))
    monkeypatch.setattr(status, "snapshot_after_end", lambda *a, **k: seen.append(gc.isenabled()) or real_snap(*a, **k))
    assert gc.isenabled()
    assert Engine(h, goal="g", jobs=4).run() != 0
    assert seen == [False, False, False] and gc.isenabled()


# -------------------------------------------------------------------------- O_NOATIME
def _written_since_read(path) -> None:
    """A file whose atime is older than its mtime: under relatime its next read updates it."""
    path.write_bytes(b'{"attempt": 1}')
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))


def test_reads_leave_the_access_time_alone(tmp_path):
    """fsio.read_bytes and the end's marker reads (Home._view_snapshot) open with O_NOATIME:
    under relatime the first read of a freshly written file dirties its inode (its atime),
    which a goal's end did for every `done` marker. A plain read here does update it -- the
    check that this file system would have."""
    probe = tmp_path / "probe"
    _written_since_read(probe)
    probe.read_bytes()
    assert os.stat(probe).st_atime_ns != 1_000_000_000, "this file system never updates atimes"
    f = tmp_path / "f"
    _written_since_read(f)
    assert fsio.read_bytes(str(f)) == b'{"attempt": 1}'
    assert fsio.read_bytes(str(f), follow=False) == b'{"attempt": 1}'
    assert os.stat(f).st_atime_ns == 1_000_000_000
    home = _ended(tmp_path)
    plan = home.load_plan("g")
    done = [t for t in plan.ids() if os.path.exists(os.path.join(home.task_dir("g", t), "done"))]
    assert done
    for t in done:
        _written_since_read(Path(home.task_dir("g", t), "done"))
    facts = home.snapshot("g", plan, view=True)
    assert all(os.stat(os.path.join(home.task_dir("g", t), "done")).st_atime_ns == 1_000_000_000 for t in done)
    assert all(facts[t].state == "done" for t in done)


def test_a_file_of_another_user_is_read_without_o_noatime(tmp_path):
    """O_NOATIME is for the file's owner: another user's file answers EPERM, and is then opened
    without it (fsio.open_noatime; the end's marker reads likewise). As root the reader is a
    child that became `nobody`; as anyone else, /etc/passwd is root's."""
    import subprocess
    import sys
    code = ("import os, sys\n"
            "from dagrun import fsio\n"          # (imported first: nobody may not read the interpreter's home)
            "want = open('/etc/passwd', 'rb').read()\n"
            "if os.getuid() == 0:\n"
            "    os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            "    os.close(os.open('/etc/passwd', os.O_RDONLY | fsio.NOATIME))\n"
            "    sys.stdout.write('no EPERM here')\n"
            "except PermissionError:\n"
            "    b = fsio.read_bytes('/etc/passwd')\n"
            "    sys.stdout.write('ok' if b == want else 'bad')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fsio.__file__))))
    assert r.stdout == "ok", r.stderr


def test_the_ends_marker_reads_fall_back_without_o_noatime_on_eperm(tmp_path, monkeypatch):
    """Home._view_snapshot's own open (dir_fd, no path walk): a marker that refuses O_NOATIME
    (EPERM: another user's) is opened without it, and so is every marker after it."""
    import errno
    home = _ended(tmp_path)
    plan = home.load_plan("g")
    want = home.snapshot("g", plan, view=True, detail=True)
    real, seen = os.open, []

    def no_noatime(path, flags, *a, **kw):
        if flags & fsio.NOATIME and "done" in str(path):
            seen.append(path)
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return real(path, flags, *a, **kw)
    monkeypatch.setattr(os, "open", no_noatime)
    got = home.snapshot("g", plan, view=True, detail=True)
    monkeypatch.undo()
    assert len(seen) == 1
    assert {t: (f.state, f.attempt, f.marker) for t, f in got.items()} == \
        {t: (f.state, f.attempt, f.marker) for t, f in want.items()}
