"""The engine thread's per-task work (issue 20, ninth round; issue 15's per-edge cost): what
its loop no longer does per task -- counted in calls, not timed -- and, for each look that
went, the case that look covered still behaving."""
from __future__ import annotations

import os
import re
import threading
import time

import pytest

from conftest import run, task_dir, write_plan

from dagrun import fsio
from dagrun.errors import FsError
from dagrun.store import Home


# ---------------------------------------------------------------------------------- counts
def _fanout_calls(tmp_path, monkeypatch, n: int = 24) -> dict[str, int]:
    """Run a fan-out (a -> n tasks) in this process with fake agents all started in one turn
    and ending together; count the loop thread's looks at the files each change touched."""
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome

    h = Home(str(tmp_path / "home"))
    tasks = [{"id": "a", "prompt": "x"}] + [{"id": f"m{i:02d}", "prompt": "x", "deps": ["a"]} for i in range(n)]
    p = write_plan(tmp_path / "p", tasks, goal="fo", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    loop = threading.get_ident()
    counts = {"limits": 0, "plan_stat": 0, "a_output": 0, "getpid": 0, "listdir_claims": 0, "attempts": 0,
              "folder_ino": 0}
    real_open, real_stat, real_lstat = os.open, os.stat, os.lstat
    real_listdir, real_getpid, real_beneath = os.listdir, os.getpid, fsio.open_beneath

    def mine() -> bool:
        return threading.get_ident() == loop

    def c_open(path, *a, **k):
        if mine() and str(path).endswith("/resources/limits.json"):
            counts["limits"] += 1
        return real_open(path, *a, **k)

    def c_stat(path, *a, **k):
        if mine() and isinstance(path, str):
            counts["plan_stat"] += path.endswith("/goals/fo/plan.json")
            counts["folder_ino"] += bool(re.search(r"/tasks/m\d\d(/claim)?$", path))
            counts["attempts"] += path.endswith("/attempts")
        return real_stat(path, *a, **k)

    def c_lstat(path, *a, **k):
        if mine() and isinstance(path, str):
            counts["attempts"] += path.endswith("/attempts")
        return real_lstat(path, *a, **k)

    def c_listdir(path=".", *a, **k):
        if mine() and isinstance(path, str) and ("/claim" in path or "/.spare/" in path):
            counts["listdir_claims"] += 1
        return real_listdir(path, *a, **k)

    real_scandir = os.scandir

    def c_scandir(path=".", *a, **k):    # (the commit's listing of its claim: claim.holds_listed)
        if mine() and isinstance(path, str) and ("/claim" in path or "/.spare/" in path):
            counts["listdir_claims"] += 1
        return real_scandir(path, *a, **k)

    def c_getpid():
        if mine():
            counts["getpid"] += 1
        return real_getpid()

    def c_beneath(root, rel, *a, **k):
        if mine() and rel.endswith("tasks/a/output"):
            counts["a_output"] += 1
        return real_beneath(root, rel, *a, **k)

    for mod, name, fn in ((os, "open", c_open), (os, "stat", c_stat), (os, "lstat", c_lstat),
                          (os, "listdir", c_listdir), (os, "scandir", c_scandir), (os, "getpid", c_getpid), (fsio, "open_beneath", c_beneath)):
        monkeypatch.setattr(mod, name, fn)
    ends: list[float] = []

    def together(launch):                # every m ends at one instant (a turn's starts are
        if launch.env["DAGRUN_TASK"] == "a":      # spread over time on a loaded machine)
            return Outcome(after=0.05)
        if not ends:
            ends.append(time.monotonic() + 0.3)
        return Outcome(after=max(0.0, ends[0] - time.monotonic()))
    eng = Engine(h, goal="fo", jobs=n, runner=FakeRunner(together))
    assert eng.run() == 0
    monkeypatch.undo()
    assert all((task_dir(h.root, "fo", f"m{i:02d}") / "done").exists() for i in range(n))
    return counts


def test_the_loop_thread_does_per_turn_what_it_did_per_task(tmp_path, monkeypatch):
    """A fan-out's n tasks claimed in one turn and ending together (fake agents, this process):
    limits.json is read once per turn, not at every claim; the shared upstream output is read
    the safe way once, then one stat says it is the same inode; plan.json's stamp is taken
    once per turn for the commits; attempts/ is not looked at by the commit of a first
    attempt (its claim's listing said there was none: Claim.kept; was one lstat per commit,
    n, on 9a12c26, and lstat + stat before); a
    released (empty) claim is one rmdir(2), never listed (the spare pool, removed 2026-12-06,
    listed each one it recycled: n listings); and getpid(2) is not asked at all. Before
    (9fe0146): limits 25, a_output 24, attempts 48, listdir 48, getpid > 150 for n = 24. The
    task folder's inode (run_id) is one stat a task (the pool's nests came with it: n // 2)."""
    n = 24
    c = _fanout_calls(tmp_path, monkeypatch, n)
    assert c["limits"] <= 3, c
    assert c["a_output"] <= 2, c
    assert c["attempts"] == 0, c                # a first attempt's commit: its claim listed no attempts/ (Claim.kept)
    # a released claim is not listed; each commit lists its claim once, for the capture files
    # the agent left (commit13: instead of five looks for claim/stdout, stderr, raw, usage.jsonl
    # and check.json)
    assert c["listdir_claims"] == n + 1, c
    assert c["getpid"] <= n + 8, c              # the fake runner asks once per start
    assert c["plan_stat"] < n, c                # commits ending in the same turns share one look
    assert c["folder_ino"] <= n + 2, c          # the task folder's inode, for run_id


# ---------------------------------------------------------------------------------- limits.json
def test_a_capacity_set_during_a_turn_counts_from_the_next_turn_and_apply_reads_it_at_once(tmp_path):
    """resources.hold_turn (the engine's loop): limits() remembers limits.json until
    end_turn(); apply() (the dispatch, after its stamp) reads it fresh and the claims of the
    turn then use that; a thread that holds no turn reads it every time."""
    from dagrun import resources as res
    from dagrun.lifecycle import build_scheduler

    h = Home(str(tmp_path / "home"))
    h.ensure()
    p = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "resources": {"gpu": 1}}],
                   goal="lim", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    plan = h.load_plan("lim")
    res.hold_turn()
    try:
        assert res.limits(h) == {"home": {}, "tenants": {}}
        res.set_capacity(h, "gpu", 2)                           # set during the turn
        assert res.limits(h) == {"home": {}, "tenants": {}}
        res.end_turn()                                          # the next turn sees it
        assert res.limits(h) == {"home": {"gpu": 2}, "tenants": {}}
        res.set_capacity(h, "gpu", 1)
        sched = build_scheduler(h, plan)[0]
        need = res.apply(h, plan, sched)                        # the dispatch reads it now ...
        assert [p.cap for p in need["a"]] == [1]
        assert res.limits(h)["home"] == {"gpu": 1}              # ... and the turn's claims with it
        res.limits(h)["home"]["gpu"] = 99                       # a caller's copy, not the memo
        assert res.limits(h)["home"] == {"gpu": 1}
    finally:
        res.release_turn()
    res.set_capacity(h, "gpu", 3)
    assert res.limits(h)["home"] == {"gpu": 3}                  # no memo outside a turn


def test_an_engine_applies_a_capacity_set_while_it_runs(tmp_path):
    """limits.json made while a run is under way: the claims after it take units in the pool
    (a mutex-like capacity of 1 serialises the rest), as when it was read at every claim."""
    from dagrun import resources as res
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome

    h = Home(str(tmp_path / "home"))
    tasks = [{"id": "a", "prompt": "x"}] + [{"id": f"m{i}", "prompt": "x", "deps": ["a"], "resources": {"tok": 1}}
                                           for i in range(6)]
    p = write_plan(tmp_path / "p", tasks, goal="cap", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    peak, running = 0, set()

    def outcome(launch):
        nonlocal peak
        t = launch.env["DAGRUN_TASK"]
        if t == "a":
            res.set_capacity(h, "tok", 1)        # while a runs: before any m is claimed
            return Outcome(after=0.05)
        running.add(t)
        peak = max(peak, len(running))
        return Outcome(after=0.05)

    class Runner(FakeRunner):
        def poll(self, handle):
            a = self._runs.get(self.key(handle))
            ex = super().poll(handle)
            if ex is not None and a is not None:
                running.discard(a.launch.env["DAGRUN_TASK"])
            return ex

    eng = Engine(h, goal="cap", jobs=6, runner=Runner(outcome))
    assert eng.run() == 0
    assert peak == 1


# ---------------------------------------------------------------------------------- release
def test_a_released_claim_with_something_in_it_is_removed_and_a_symlinked_one_loses_only_the_link(tmp_path):
    """claim.release: an empty claim goes in one rmdir; one with a file in it (left by an
    agent's orphan) is renamed away and deleted; a symlinked claim loses the link, never its
    target. Nothing is kept for reuse: no `.spare` folder appears in the home."""
    from dagrun import claim as claims

    h = Home(str(tmp_path / "home"))
    h.ensure()
    cdir = h.claim_dir("g", "t")
    os.makedirs(cdir)
    with open(os.path.join(cdir, "late.txt"), "w") as f:
        f.write("x")
    claims.release(h, "g", "t")
    assert not os.path.exists(cdir) and os.listdir(h.task_dir("g", "t")) == []
    os.makedirs(cdir)
    claims.release(h, "g", "t")
    assert not os.path.exists(cdir)
    target = tmp_path / "outside"
    target.mkdir()
    (target / "keep").write_text("k")
    os.symlink(target, cdir)
    claims.release(h, "g", "t")
    assert not os.path.lexists(cdir) and (target / "keep").read_text() == "k"
    assert os.listdir(h.task_dir("g", "t")) == [] and not os.path.lexists(os.path.join(h.root, ".spare"))


# ---------------------------------------------------------------------------------- outputs
def test_a_remembered_output_is_served_only_while_it_is_the_same_inode_unchanged(tmp_path):
    """Home.read_output: the second read is a stat; an output archived (plan edit, forced
    retry), replaced, written to in place, or reached through a symbolic link to a file outside
    the home is read the safe way again: None, the new bytes, or the refusal."""
    h = Home(str(tmp_path / "home"))
    out = task_dir(h.root, "g", "a") / "output"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"one")
    assert h.read_output(str(out), 100) == (b"one", 3)
    assert h.read_output(str(out), 100) == (b"one", 3)
    tmp = out.parent / ".o.tmp"
    tmp.write_bytes(b"two!")
    os.rename(tmp, out)                                          # replaced (a re-run's commit)
    assert h.read_output(str(out), 100) == (b"two!", 4)
    with open(out, "r+b") as f:                                  # written over in place
        f.write(b"TWO!")
    st = out.stat()
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    assert h.read_output(str(out), 100) == (b"TWO!", 4)
    assert h.read_output(str(out), 3) == (b"TWO", 4)             # another limit: its own read
    archive = tmp_path / "home" / "goals" / "g" / "archive"
    archive.mkdir()
    os.rename(out.parent, archive / "a")                         # archived: gone, not remembered
    assert h.read_output(str(out), 100) is None
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "output").write_bytes(b"TWO!")
    os.symlink(secret, out.parent)                               # a symlinked task folder
    with pytest.raises(FsError, match="symbolic link"):
        h.read_output(str(out), 100)


def test_a_task_whose_input_was_archived_after_it_was_remembered_is_not_claimed(home, plans):
    """The Stale check of render_prompt still fires when the same Home read the input before
    (the engine's Home remembers outputs): the archived output is gone, not served."""
    import shutil as sh

    from dagrun.lifecycle import Stale, claim_task
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]},
                           {"id": "c", "prompt": "p", "deps": ["a"]}], goal="st", defaults={"agent": "echo A"})
    run("run", p, home=home)
    h = Home(str(home))
    plan = h.load_plan("st")
    sh.rmtree(task_dir(home, "st", "b"))
    sh.rmtree(task_dir(home, "st", "c"))
    c = claim_task(h, plan, "b", worker="w", kind="engine", state_of=lambda t: "done")
    assert c is not None and "A" in (task_dir(home, "st", "b") / "prompt.md").read_text()
    (home / "goals" / "st" / "archive").mkdir()
    os.rename(task_dir(home, "st", "a"), home / "goals" / "st" / "archive" / "a")
    with pytest.raises(Stale):
        claim_task(h, plan, "c", worker="w", kind="engine", state_of=lambda t: "done")
    assert not (task_dir(home, "st", "c") / "claim").exists()


# ---------------------------------------------------------------------------------- small ones
def test_has_attempts_answers_as_isdir_of_attempts_dir(tmp_path):
    h = Home(str(tmp_path / "home"))
    tdir = task_dir(h.root, "g", "t")
    assert not h.has_attempts("g", "t")                          # no task folder at all
    tdir.mkdir(parents=True)
    assert not h.has_attempts("g", "t")
    (tdir / "attempts").write_text("")
    assert not h.has_attempts("g", "t")                          # a file is not the folder
    os.remove(tdir / "attempts")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tdir / "attempts")
    with pytest.raises(FsError, match="symbolic link"):
        h.has_attempts("g", "t")
    os.remove(tdir / "attempts")
    (tdir / "attempts").mkdir()
    assert h.has_attempts("g", "t")


def test_rewrite_leaves_exactly_the_new_bytes_longer_or_shorter(tmp_path):
    f = tmp_path / ".x.tmp"
    f.write_bytes(b"0123456789")
    fsio.rewrite(str(f), b"abc")
    assert f.read_bytes() == b"abc"
    fsio.rewrite(str(f), b"abcdefghijklmnop")
    assert f.read_bytes() == b"abcdefghijklmnop"
    fsio.rewrite(str(f), b"")
    assert f.read_bytes() == b""


def test_the_remembered_pid_is_the_childs_own_after_fork():
    from dagrun.proc import my_pid
    assert my_pid() == os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: report, then leave at once
        os.write(w, str(my_pid() == os.getpid() and my_pid() != os.getppid()).encode())
        os._exit(0)
    os.close(w)
    got = os.read(r, 16)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"True"



# ---------------------------------------------------------------------------------- no spare pool
def test_a_run_makes_no_spare_folder_and_sweeps_the_dead_pools_older_versions_left(tmp_path):
    """The spare-inode pool is gone (2026-12-06): a run creates no `$DAGRUN_HOME/.spare`, and
    its start removes the pools (`.spare/<pid>-<k>/`, empty files and nests) that killed
    engines of older versions left -- a live pid's pool stays (an older engine may be using
    it on a shared home), and `.spare` itself goes once it is empty."""
    import subprocess
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome

    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "x", "deps": ["a"]}],
                   goal="ns", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    assert Engine(h, goal="ns", jobs=2, runner=FakeRunner(lambda launch: Outcome(after=0.01))).run() == 0
    assert (task_dir(h.root, "ns", "b") / "done").exists()
    assert not os.path.lexists(os.path.join(h.root, ".spare"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    spare = tmp_path / "home" / ".spare"
    for pid in (dead.pid, os.getppid()):
        (spare / f"{pid}-0" / "n1" / "claim").mkdir(parents=True)
        (spare / f"{pid}-1").mkdir()
        (spare / f"{pid}-1" / "f2").write_bytes(b"")
    p2 = write_plan(tmp_path / "p2", [{"id": "c", "prompt": "x"}], goal="ns2", defaults={"agent": "true"})
    run("submit", p2, home=h.root)
    assert Engine(h, goal="ns2", jobs=1, runner=FakeRunner(lambda launch: Outcome(after=0.01))).run() == 0
    assert sorted(os.listdir(spare)) == [f"{os.getppid()}-0", f"{os.getppid()}-1"]
    for d in os.listdir(spare):
        fsio.rmtree(str(spare / d))
    (spare / f"{dead.pid}-0").mkdir()
    assert Engine(h, goal="ns2", jobs=1, runner=FakeRunner(lambda launch: Outcome())).run() == 0
    assert not os.path.lexists(spare)


# ------------------------------------------------------------------- where a goal's inodes land
def test_a_goals_tasks_folder_is_a_top_of_hierarchy_so_its_task_folders_get_block_groups_of_their_own(tmp_path):
    """ext4 without a journal skips, one by one, every inode freed in the last minutes when it
    allocates a new one in a block group (find_inode_bit -> recently_deleted) -- and a run
    frees two a task (claim/ and its owner.json). A goal's tasks/ carries `chattr +T`
    (fsio.mark_top_dir at the goal's creation), so Orlov gives each task folder a block group
    of its own choosing instead of the one where the run's released claims pile up:
    layered-1000 1.4 s instead of 2.3-3.2 s on this VM's /tmp (docs/performance.md). Where
    the file system has no such flag (tmpfs, xfs, ...) the hint is skipped and nothing else
    changes."""
    import fcntl
    import struct
    probe = tmp_path / "probe"
    probe.mkdir()
    if not fsio.mark_top_dir(str(probe)):
        pytest.skip("the test folder's file system has no +T flag (not ext2/3/4)")
    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="tt", defaults={"agent": "true"})
    run("submit", p, home=h.root)

    def flags(path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            buf = bytearray(8)
            fcntl.ioctl(fd, fsio.FS_IOC_GETFLAGS, buf)
        finally:
            os.close(fd)
        return struct.unpack_from("i", buf)[0]

    assert flags(os.path.join(h.root, "goals", "tt", "tasks")) & fsio.FS_TOPDIR_FL
    # only the tasks folder: the goal's own folder and the home stay as they were
    assert not flags(os.path.join(h.root, "goals", "tt")) & fsio.FS_TOPDIR_FL
