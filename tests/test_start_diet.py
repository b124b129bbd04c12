"""The loop thread's start path per task (issue 20, 2026-12-06, round "start13"): from a task
becoming ready to its agent running and its owner.json published -- the system calls and
Python it no longer spends, counted (not timed), and the cases each dropped step covered
still behaving."""
from __future__ import annotations

import os
import threading

from conftest import fanout_engine, run, task_dir, write_plan

from dagrun import claim as claims
from dagrun.store import CLAIM, Home


def test_the_engines_owner_json_appears_only_whole_by_rename(tmp_path, monkeypatch):
    """owner.json is published by rename, never created under its own name and written there:
    a peer or a script that waits for claim/owner.json and reads it must never find it empty
    (the thirteenth session wrote it in place, O_EXCL then write, to save the rename;
    tests/test_runners.py's crash-resume test, which waits for the name and json.loads it,
    caught an empty file under Ray). Every task's owner.json comes by one rename from a
    temporary name; it is still kept open (claim.Held) and proves the claim at the commit."""
    from dagrun import claim as claims

    n = 5
    h, eng = fanout_engine(tmp_path, n, 0.05)
    loop = threading.get_ident()
    renamed: list[str] = []
    created: list[str] = []
    real_rename, real_open = os.rename, os.open

    def c_rename(src, dst, *a, **k):
        if threading.get_ident() == loop and str(dst).endswith("/claim/owner.json"):
            renamed.append(str(src))
        return real_rename(src, dst, *a, **k)

    def c_open(path, flags, *a, **k):
        if str(path).endswith("/claim/owner.json") and flags & os.O_CREAT:
            created.append(str(path))
        return real_open(path, flags, *a, **k)

    helds: list = []
    real_update = claims.update_owner

    def update(*a, **k):
        r = real_update(*a, **k)
        if r is not None:
            helds.append(r)
        return r

    monkeypatch.setattr(os, "rename", c_rename)
    monkeypatch.setattr(os, "open", c_open)
    monkeypatch.setattr(claims, "update_owner", update)
    assert eng.run() == 0
    monkeypatch.undo()
    assert all((task_dir(h.root, "fo", t) / "done").exists() for t in ["a"] + [f"m{i:02d}" for i in range(n)])
    assert created == [], created
    assert len(renamed) == n + 1 and all(os.path.basename(src).startswith(".owner.json.") for src in renamed), renamed
    assert len(helds) == n + 1 and all(x.fd == -1 for x in helds)


def test_an_owner_json_there_already_is_replaced_whole_never_written_in_place(tmp_path):
    """A file at owner.json already (not the engine's fresh claim): it is replaced by a rename
    (publish_held), its old inode -- which another name may share -- is not rewritten, and
    the Held is the new file; a symbolic link there is replaced, not followed."""
    from dagrun import claim as claims
    from dagrun.store import loads

    h = Home(str(tmp_path / "home"))
    os.makedirs(h.claim_dir("g", "t"))
    path = h.owner_path("g", "t")
    with open(path, "w") as f:
        f.write('{"nonce": "old"}')
    other = str(tmp_path / "other")
    os.link(path, other)
    mine = claims.new_owner("w", 1, kind="engine")
    held = claims.update_owner(h, "g", "t", mine, hold=True)
    assert held is not None and os.lstat(path).st_ino == held.ino != os.lstat(other).st_ino
    assert open(other).read() == '{"nonce": "old"}'
    assert loads(open(path, "rb").read())["nonce"] == mine["nonce"]
    held.close()
    target = tmp_path / "target"
    target.write_text("keep")
    os.unlink(path)
    os.symlink(target, path)
    held = claims.update_owner(h, "g", "t", mine, hold=True)
    assert not os.path.islink(path) and target.read_text() == "keep"
    held.close()


def test_a_half_written_owner_json_is_a_claim_being_born(tmp_path, monkeypatch):
    """What a peer sees while owner.json is being written: no owner.json (the bytes go to a
    temporary name first) -- a claim being born, live while its creator holds the birth lock
    (the task folder flock'ed shared). And an owner.json cut short (a writer outside dagrun,
    a full disk) does not parse: judged the same, live for the half-born grace only -- never
    as a holder that is gone or another host's claim."""
    from dagrun import claim as claims
    from dagrun import fsio

    h = Home(str(tmp_path / "home"))
    assert claims.acquire(h, "g", "t", hold=True)
    real = fsio._write_whole
    seen: list = []

    def cut(fd, data, *a, **k):       # the peer looks while the bytes are being written
        seen.append((claims.read_owner(h, "g", "t"),
                     claims.judge(h, "g", "t", claims.read_owner(h, "g", "t"), lease=60, grace=0)))
        os.write(fd, data[:7])
        seen.append((claims.read_owner(h, "g", "t"),
                     claims.judge(h, "g", "t", claims.read_owner(h, "g", "t"), lease=60, grace=0)))
        return real(fd, data[7:], *a, **k)

    monkeypatch.setattr(fsio, "_write_whole", cut)
    held = claims.update_owner(h, "g", "t", claims.new_owner("w", 1, kind="engine"), hold=True)
    monkeypatch.undo()
    assert seen == [(None, None), (None, None)]       # no owner yet; live: its birth lock is held
    held.close()
    # its creator died there (no birth lock any more): the half-born grace, then stale
    with open(h.owner_path("g", "t"), "wb") as f:
        f.write(b'{"work')
    assert claims.judge(h, "g", "t", claims.read_owner(h, "g", "t"), lease=60, grace=30) is None
    assert "half-created claim" in claims.judge(h, "g", "t", claims.read_owner(h, "g", "t"), lease=60, grace=0)


def test_claim_nonces_are_drawn_in_batches_unique_and_anew_after_a_fork(tmp_path, monkeypatch):
    """new_owner's nonce: 12 hex digits cut from a pool of random bytes drawn 64 nonces at a
    time (one getrandom(2) per 64 claims; before: one per claim), all different; a forked
    child draws its own pool instead of handing out its parent's next nonces."""
    from dagrun import claim as claims

    draws: list[int] = []
    real = os.urandom

    def counted(n):
        draws.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counted)
    nonces = [claims.new_owner("w", 1, kind="engine")["nonce"] for _ in range(200)]
    monkeypatch.undo()
    assert len(draws) <= 5, draws
    assert len(set(nonces)) == 200 and all(len(x) == 12 and int(x, 16) >= 0 for x in nonces)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, ",".join(claims.new_owner("w", 1, kind="engine")["nonce"] for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 1000).decode().split(",")
    os.close(r)
    os.waitpid(pid, 0)
    mine = [claims.new_owner("w", 1, kind="engine")["nonce"] for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(mine) and not set(child) & set(nonces)


def test_a_claim_still_sweeps_claims_left_renamed_away_beside_it(tmp_path):
    """claim_task lists the task folder under its claim; the sweep of `.claim.*` folders that
    a breaker or releaser left half-way is skipped only when the listing holds nothing but
    claim/ (a fresh folder) -- with anything beside it, the leftovers still go."""
    from dagrun import lifecycle

    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="sw", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    left = task_dir(h.root, "sw", "a") / ".claim.broken.1234"
    (left / "sub").mkdir(parents=True)
    plan = h.load_plan("sw")
    c = lifecycle.claim_task(h, plan, "a", worker="w", kind="engine")
    assert c is not None and not left.exists()
    assert (task_dir(h.root, "sw", "a") / "prompt.md").read_text().startswith("x")


class _T:
    def __init__(self, id, deps=(), priority=0):
        self.id, self.deps, self.soft_deps, self.priority = id, tuple(deps), (), priority


def test_one_goals_fair_share_asks_its_scheduler_once_per_start_with_the_same_rules(monkeypatch):
    """FairShare.take with one goal: its scheduler's take() alone (before: may_start(), which
    looks at the best ready task, then take(), which looks again, then the pick's min over
    one goal). The same starts come out as with two goals' full pick: max_parallel, a
    failure under on_failure=stop and the budget still say wait, and the goal's pass
    advances as a start's must."""
    from dagrun.scheduler import FairShare, Scheduler

    tasks = [_T("a"), _T("b"), _T("c", ["a"])]
    asked: list[str] = []
    real = Scheduler.may_start

    def counted(self):
        asked.append("may_start")
        return real(self)

    monkeypatch.setattr(Scheduler, "may_start", counted)
    share = FairShare()
    s = Scheduler(tasks, max_parallel=2)
    assert share.take({"g": (s, 0, 1.0)}) == ("g", "a")
    assert share.take({"g": (s, 1, 1.0)}) == ("g", "b")
    assert share.take({"g": (s, 2, 1.0)}) is None             # max_parallel
    assert asked == [] and share.passes == {"g": 2.0} and share.vtime == 1.0
    s.finish("a", "done")
    assert share.take({"g": (s, 1, 1.0)}) == ("g", "c")
    stop = Scheduler([_T("x"), _T("y")], stop_on_failure=True)
    assert share.take({"s": (stop, 0, 1.0)}) == ("s", "x")
    stop.finish("x", "failed")
    assert share.take({"s": (stop, 0, 1.0)}) is None           # on_failure=stop
    broke = Scheduler([_T("p")], budget={"usd": 1.0}, estimates={"p": 2.0})
    assert share.take({"b": (broke, 0, 1.0)}) is None          # past the budget
    assert broke.state_of("p") == "ready" and asked == []
    # two goals: the pick still asks each may_start()
    s2 = Scheduler([_T("q")])
    assert share.take({"g": (s, 0, 1.0), "h": (s2, 0, 1.0)}) == ("h", "q") and len(asked) == 2


def test_claim_nonces_handed_out_by_threads_at_once_are_all_different():
    """Threads claiming at once (the engine's loop and a protocol command's thread in one
    process) each get their own nonces: list.pop() hands each one out once."""
    import sys

    from dagrun import claim as claims

    got: list[list[str]] = [[] for _ in range(4)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ths = [threading.Thread(target=lambda out=out: out.extend(claims._nonce(os.getpid()) for _ in range(3000)))
               for out in got]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
    finally:
        sys.setswitchinterval(old)
    every = [x for out in got for x in out]
    assert len(every) == 12000 and len(set(every)) == 12000


def test_a_start_stats_its_claim_folder_once_its_number_comes_from_the_claims_listing(tmp_path, monkeypatch):
    """claim_task's listing of the task folder gives the claim folder's inode number (d_ino):
    the engine no longer stats claim/ before handing the agent to the spawner -- only once
    after the spawn, to see it is still the claim it made (was two stats per start)."""
    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    n = 4
    tasks = [{"id": "a", "prompt": "x"}] + [{"id": f"m{i}", "prompt": "x", "deps": ["a"]} for i in range(n)]
    run("submit", write_plan(tmp_path / "p", tasks, goal="fo", defaults={"agent": "true"}), home=h.root)
    loop = threading.get_ident()
    stats = []
    real = os.stat

    def c_stat(path, *a, **k):
        if threading.get_ident() == loop and isinstance(path, str) and path.endswith("/" + CLAIM):
            stats.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(os, "stat", c_stat)
    assert Engine(h, goal="fo", jobs=4).run() == 0
    monkeypatch.undo()
    assert all((task_dir(h.root, "fo", f"m{i}") / "done").exists() for i in range(n))
    assert len(stats) == n + 1, stats


def test_a_claim_whose_listed_number_is_not_stats_is_still_known_as_ours(tmp_path, monkeypatch):
    """Engine._claim_still with the claim's number from the listing (d_ino): on a file system
    whose stat shows another number (overlayfs without xino may), the listing is asked again
    -- the claim is ours; a claim folder made anew (archived and re-claimed) is not."""
    import types

    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    assert claims.acquire(h, "g", "t")
    cdir = h.claim_dir("g", "t")
    listed = claims.listing(h.task_dir("g", "t"), CLAIM)[1]
    run_ = types.SimpleNamespace(cdir=cdir, claim_ino=listed)
    assert Engine._claim_still(None, run_)
    real = os.stat

    def other_number(path, *a, **k):
        st = real(path, *a, **k)
        if isinstance(path, str) and path == cdir:
            return os.stat_result((st.st_mode, st.st_ino + 1) + tuple(st)[2:10])
        return st

    monkeypatch.setattr(os, "stat", other_number)
    assert Engine._claim_still(None, run_)
    monkeypatch.undo()
    os.rename(cdir, cdir + ".gone")
    os.mkdir(cdir)
    os.rmdir(cdir + ".gone")
    if claims.listing(h.task_dir("g", "t"), CLAIM)[1] != listed:      # (a new inode, normally)
        assert not Engine._claim_still(None, run_)
    os.rmdir(cdir)
    assert not Engine._claim_still(None, run_)
