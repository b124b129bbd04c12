"""The loop thread's Python per task (issue 20, 2026-12-06): what a turn no longer looks at
twice -- counted in calls, not timed -- and the case each dropped look covered still
behaving."""
from __future__ import annotations

import os
import threading
import time

from conftest import fanout_engine, run, safe_walks, task_dir, write_plan

from dagrun.store import Home


def test_a_turn_that_commits_stats_plan_json_once_for_the_commits_and_its_read_back(tmp_path, monkeypatch):
    """The commits of a turn compare plan.json's stamp once, under the goal's shared edit lock
    (held to the end of the turn: no writer of plan.json can come in between); the read-back
    of the turn's own event lines (_feed) takes that look instead of a stat of its own. Before:
    one more stat of plan.json in every turn that committed something."""
    from dagrun import engine as eng_mod

    n = 12
    h, eng = fanout_engine(tmp_path, n, 0.3)
    loop = threading.get_ident()
    turn = {"in": False, "plan": 0, "commits": 0}
    per_turn: list[tuple[int, int]] = []          # (commits, plan.json stats) of each turn
    real_stat = os.stat

    def c_stat(path, *a, **k):
        if turn["in"] and threading.get_ident() == loop and isinstance(path, str) \
                and path.endswith("/goals/fo/plan.json"):
            turn["plan"] += 1
        return real_stat(path, *a, **k)

    real_once, real_commit = eng_mod.Engine._loop_once, eng_mod.Engine._commit_locked

    def once(self):
        turn.update({"in": True, "plan": 0, "commits": 0})
        try:
            return real_once(self)
        finally:
            turn["in"] = False
            per_turn.append((turn["commits"], turn["plan"]))

    def commit(self, run, ex):
        turn["commits"] += 1
        return real_commit(self, run, ex)

    monkeypatch.setattr(os, "stat", c_stat)
    monkeypatch.setattr(eng_mod.Engine, "_loop_once", once)
    monkeypatch.setattr(eng_mod.Engine, "_commit_locked", commit)
    assert eng.run() == 0
    monkeypatch.undo()
    assert all((task_dir(h.root, "fo", f"m{i:02d}") / "done").exists() for i in range(n))
    assert sum(c for c, _ in per_turn) == n + 1, per_turn
    # inside a turn that committed (a's, at least; not the last: the goal's end reads its
    # files): the one look for its commits, under the lock -- not a second one for the
    # read-back of its own lines (_absorb_own looks again after the turn, the lock gone)
    committing = [looks for commits, looks in per_turn[:-1] if commits]
    assert committing and all(looks == 1 for looks in committing), per_turn


def test_the_turns_look_at_plan_json_is_forgotten_with_its_lock(tmp_path):
    """The look is good only while the turn holds the goal's edit lock: once the turn ends, a
    plan replaced in between is seen by the next read of the goal's lines (the memo must not
    serve the old stamp)."""
    h, eng = fanout_engine(tmp_path, 2, 0.3)
    eng._discover()
    gs = eng.goals["fo"]
    eng._lock_turn("fo")
    eng._stamp_seen.add("fo")              # what _commit_locked records after its look
    assert eng._stamp_held("fo")
    eng._unlock_turn()
    assert not eng._stamp_held("fo")
    old = gs.stamp
    tasks = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "changed"}]
    p = write_plan(tmp_path / "p2", tasks, goal="fo", defaults={"agent": "true"})
    time.sleep(0.01)
    run("submit", p, "--replace", home=h.root)
    eng._feed(eng.goals["fo"])
    assert eng.goals["fo"].stamp != old
    assert eng.goals["fo"].plan.has("b") and not eng.goals["fo"].plan.has("m00")


def test_task_paths_are_the_homes_own_paths(tmp_path):
    h = Home(str(tmp_path / "home"))
    assert h.task_paths("g", "t") == (h.task_dir("g", "t"), h.claim_dir("g", "t"), h.prompt_path("g", "t"),
                                      h.output_path("g", "t"))
    d = os.path.join(h.root, "goals", "g", "tasks", "t")        # the concatenations are os.path.join's
    assert (h.marker_path("g", "t", "done"), h.heartbeat_path("g", "t"), h.stderr_path("g", "t")) == \
        (os.path.join(d, "done"), os.path.join(d, "claim", "heartbeat"), os.path.join(d, "stderr.log"))


# ---------------------------------------------------------------------------------- outputs
def test_an_empty_output_remembered_at_its_commit_is_read_again_once_it_changes(tmp_path):
    """Home.file_size (the commit's output_bytes) remembers an empty output for read_output at
    any limit -- the dependent's prompt costs one stat -- and never serves it once the path is
    another inode, written to, or a symbolic link (to an empty file or not): then the safe way."""
    import pytest

    from dagrun.errors import FsError

    h = Home(str(tmp_path / "home"))
    out = task_dir(h.root, "g", "a") / "output"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"")
    with safe_walks() as walks:
        assert h.file_size(str(out)) == 0
        assert h.read_output(str(out), 100) == (b"", 0) and h.read_output(str(out), 7) == (b"", 0)
        assert walks == []                                      # no safe walk: one stat each
        with open(out, "r+b") as f:                             # written in place
            f.write(b"late")
        st = out.stat()
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
        assert h.read_output(str(out), 100) == (b"late", 4) and len(walks) == 1
        tmp = out.parent / ".o.tmp"
        tmp.write_bytes(b"")
        os.rename(tmp, out)                                     # another inode, empty too
        assert h.read_output(str(out), 100) == (b"", 0) and len(walks) == 2
        assert h.file_size(str(tmp_path / "nothing")) == 0
        os.unlink(out)
        elsewhere = tmp_path / "empty"
        elsewhere.write_bytes(b"")
        os.symlink(elsewhere, out)                              # a symlink to an empty file
        h.file_size(str(out))                                   # lstat: the link itself, not remembered
        with pytest.raises(FsError, match="symbolic link"):
            h.read_output(str(out), 100)


def test_a_chains_prompts_read_their_empty_inputs_without_the_safe_walk(tmp_path):
    """No-op agents print nothing: each task's commit remembers its empty output, and the next
    task's prompt reads it with one stat (before: the safe walk, six calls, on a chain's
    critical path)."""
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome

    h = Home(str(tmp_path / "home"))
    ids = [f"c{i}" for i in range(6)]
    tasks = [{"id": t, "prompt": "x", "deps": [ids[i - 1]] if i else []} for i, t in enumerate(ids)]
    run("submit", write_plan(tmp_path / "p", tasks, goal="ch", defaults={"agent": "true"}), home=h.root)
    eng = Engine(h, goal="ch", jobs=2, runner=FakeRunner(lambda launch: Outcome()))
    with safe_walks("/output") as walks:
        assert eng.run() == 0
    assert all((task_dir(h.root, "ch", t) / "done").exists() for t in ids)
    assert walks == [], walks
    prompt = (task_dir(h.root, "ch", "c3") / "prompt.md").read_text()
    assert "## Output of c2" in prompt


# ---------------------------------------------------------------------------------- twelfth session
def test_a_commit_proves_its_claim_by_the_owner_json_it_keeps_open(tmp_path, monkeypatch):
    """The engine keeps the owner.json it published open until the commit (claim.Held): the
    commit's "is the claim still ours" is one lstat of claim/owner.json showing that inode --
    owner.json is not read back (before: lstat of claim/, open, two reads, close, a parse) --
    and the done marker (that inode, renamed) is rewritten through the fd, not opened again;
    every descriptor is closed once its attempt has ended."""
    from dagrun import claim as claims
    from dagrun import fsio

    n = 6
    h, eng = fanout_engine(tmp_path, n, 0.1)
    loop = threading.get_ident()
    reads: list[str] = []
    real = fsio.read_bytes

    def counted(path, *a, **k):
        if threading.get_ident() == loop and str(path).endswith("/claim/owner.json"):
            reads.append(str(path))
        return real(path, *a, **k)

    helds: list = []
    real_update = claims.update_owner

    def update(*a, **k):
        r = real_update(*a, **k)
        if r is not None:
            helds.append(r)
        return r

    opened: list[str] = []
    real_open = os.open

    def c_open(path, *a, **k):
        if threading.get_ident() == loop and "/.done." in str(path):
            opened.append(str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(fsio, "read_bytes", counted)
    monkeypatch.setattr(claims, "update_owner", update)
    monkeypatch.setattr(os, "open", c_open)
    assert eng.run() == 0
    monkeypatch.undo()
    assert all((task_dir(h.root, "fo", t) / "done").exists() for t in ["a"] + [f"m{i:02d}" for i in range(n)])
    assert reads == [] and opened == [], (reads, opened)
    assert len(helds) == n + 1 and all(x.fd == -1 for x in helds)      # all closed again


def test_a_held_owner_json_proves_only_while_it_is_that_very_file(tmp_path):
    """holds() with a Held: the published file itself says yes without a read; another file
    renamed over it (a breaker and a new claimer), or none, is read and judged by its nonce as
    before -- the same nonce in a new file still holds, another nonce does not."""
    from dagrun import claim as claims
    from dagrun.store import dumps

    h = Home(str(tmp_path / "home"))
    os.makedirs(h.claim_dir("g", "t"))
    mine = claims.new_owner("w", 1, kind="engine")
    held = claims.update_owner(h, "g", "t", mine, hold=True)
    assert held is not None and held.fd >= 0
    path = h.owner_path("g", "t")
    real = claims.read_owner
    try:
        claims.read_owner = lambda *a: (_ for _ in ()).throw(AssertionError("read"))
        assert claims.holds(h, "g", "t", mine["nonce"], held)           # one lstat, no read
    finally:
        claims.read_owner = real
    other = dict(mine, nonce="0" * 12)
    tmp = path + ".x"
    with open(tmp, "wb") as f:
        f.write(dumps(other))
    os.rename(tmp, path)                                                # another claim's file
    assert not claims.holds(h, "g", "t", mine["nonce"], held)
    assert held.fd == -1        # let go: it names owner.json no more (no commit writes through it)
    with open(tmp, "wb") as f:
        f.write(dumps(mine))
    os.rename(tmp, path)                                                # ours again, a new inode
    assert claims.holds(h, "g", "t", mine["nonce"], held)
    os.unlink(path)
    assert not claims.holds(h, "g", "t", mine["nonce"], held)
    assert not claims.holds(h, "g", "t", mine["nonce"], held)


def test_a_first_prompt_and_an_empty_output_are_made_without_a_temporary_name(tmp_path, monkeypatch):
    """fsio.write_fresh: a first attempt's prompt.md and an empty output are created under their
    own names (O_EXCL), no rename(2) each; a task folder that has a prompt.md already -- left by
    an attempt cut short, or linked under attempts/ -- gets a whole new one by rename, never
    written in place."""
    h, eng = fanout_engine(tmp_path, 3, 0.0)
    stale = task_dir(h.root, "fo", "m01")
    stale.mkdir(parents=True)
    (stale / "prompt.md").write_text("half a prom")              # a crash cut its write short
    os.link(stale / "prompt.md", stale / "kept")                  # as if linked under attempts/
    renamed: list[str] = []
    real = os.rename

    def counted(src, dst, *a, **k):
        renamed.append(os.path.basename(str(dst)))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", counted)
    assert eng.run() == 0
    monkeypatch.undo()
    assert renamed.count("prompt.md") == 1 and "output" not in renamed, renamed
    for t in ("a", "m00", "m01", "m02"):
        d = task_dir(h.root, "fo", t)
        assert (d / "done").exists() and (d / "output").read_bytes() == b""
        assert (d / "prompt.md").read_text().startswith("x") and not list(d.glob(".*.tmp"))
    assert (stale / "kept").read_text() == "half a prom"          # the old inode was not rewritten


def test_past_the_descriptor_budget_owner_json_is_closed_and_read_back_as_before(tmp_path, monkeypatch):
    """claim.HOLD_FD_MAX (half the open-files limit): a run so wide that holding every
    owner.json open would spend the descriptors its pidfds and pipes need closes it at once
    and proves its claims the old way (read, nonce); every task still commits."""
    from dagrun import claim as claims
    from dagrun import fsio

    n = 4
    h, eng = fanout_engine(tmp_path, n, 0.05)
    reads: list[str] = []
    real = fsio.read_bytes

    def counted(path, *a, **k):
        if str(path).endswith("/claim/owner.json"):
            reads.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(claims, "HOLD_FD_MAX", 0)
    monkeypatch.setattr(fsio, "read_bytes", counted)
    assert eng.run() == 0
    monkeypatch.undo()
    assert all((task_dir(h.root, "fo", t) / "done").exists() for t in ["a"] + [f"m{i:02d}" for i in range(n)])
    assert len(reads) >= n + 1, reads


def test_more_empty_outputs_than_512_are_all_remembered_and_bytes_bound_the_memory(tmp_path, monkeypatch):
    """Home.read_output's memory holds entries, not only bytes: 2 000 empty outputs (a
    layered-1000 plan has 1 000) are all served without the safe walk -- with 512 entries at
    most it forgot them all at once and read ~0.3 outputs a task the safe way again. What
    bounds its memory is the bytes it holds (store.OUTPUT_BYTES_KEPT): past them it forgets."""
    from dagrun import fsio, store

    h = Home(str(tmp_path / "home"))
    paths = []
    for i in range(2000):
        out = task_dir(h.root, "g", f"t{i}") / "output"
        out.parent.mkdir(parents=True)
        fsio.write_fresh(str(out), b"")
        assert h.file_size(str(out)) == 0       # (the commit's look: remembered)
        paths.append(str(out))
    walks = []
    real = fsio.open_beneath

    def counted(root, rel, *a, **k):
        walks.append(rel)
        return real(root, rel, *a, **k)

    monkeypatch.setattr(fsio, "open_beneath", counted)
    assert all(h.read_output(p, 100) == (b"", 0) for p in paths)
    assert walks == []
    monkeypatch.setattr(store, "OUTPUT_BYTES_KEPT", 10)       # bytes: 4 + 4 fit, the third forgets
    for i, data in enumerate((b"abcd", b"efgh", b"ijkl")):
        out = task_dir(h.root, "g", f"w{i}") / "output"
        out.parent.mkdir(parents=True)
        out.write_bytes(data)
        assert h.read_output(str(out), 100) == (data, 4)
    assert len(walks) == 3 and h._output_bytes == 4 and len(h._outputs) == 1
