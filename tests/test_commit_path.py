"""The loop thread's commit path (issue 20, 2026-12-06, commit13): what an agent's end costs
the loop from its exit to its `done` -- counted in calls, not timed -- and the cases each
dropped look covered still behaving."""
from __future__ import annotations

import json
import os
import threading
import time

import psutil

from conftest import run, safe_walks, task_dir, write_plan

from dagrun.store import Home


def _mark_commits(monkeypatch, seen: dict) -> None:
    """seen["in"] is True while an Engine commits a run (_commit_locked), False otherwise."""
    from dagrun import engine as eng_mod

    real_commit = eng_mod.Engine._commit_locked

    def commit(self, run, ex):
        seen["in"] = True
        try:
            return real_commit(self, run, ex)
        finally:
            seen["in"] = False

    monkeypatch.setattr(eng_mod.Engine, "_commit_locked", commit)


def _fanout(tmp_path, n: int, agent: str = "true", **top):
    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    tasks = [{"id": "a", "prompt": "x"}] + [{"id": f"m{i:02d}", "prompt": "x", "deps": ["a"]} for i in range(n)]
    p = write_plan(tmp_path / "p", tasks, goal="fo", defaults={"agent": agent}, **top)
    run("submit", p, home=h.root)
    return h, Engine(h, goal="fo", jobs=4)


def _nothing_behind_no_group_kill(tmp: str) -> None:
    import pathlib

    from dagrun import executor

    n = 6
    h, eng = _fanout(pathlib.Path(tmp), n)
    loop = threading.get_ident()
    seen = {"killpg": 0, "children": 0, "reaping": False}
    real_killpg, real_children, real_reap = os.killpg, executor._children_bytes, eng._reap

    def reap(due=None):
        seen["reaping"] = True
        try:
            return real_reap(due)
        finally:
            seen["reaping"] = False

    def c_killpg(pgid, sig):
        if threading.get_ident() == loop:
            seen["killpg"] += 1
        return real_killpg(pgid, sig)

    def c_children(tid):
        if threading.get_ident() == loop and seen["reaping"]:
            seen["children"] += 1
        return real_children(tid)

    os.killpg, executor._children_bytes, eng._reap = c_killpg, c_children, reap
    try:
        assert eng.run() == 0
    finally:
        os.killpg, executor._children_bytes = real_killpg, real_children
    assert all((task_dir(h.root, "fo", f"m{i:02d}") / "done").exists() for i in range(n))
    assert seen["killpg"] == 0, seen
    # at most one look per agent's end; agents that ended in one turn share one (reap_together)
    assert 1 <= seen["children"] <= n + 1, seen


def test_an_agent_that_leaves_nothing_behind_costs_no_group_kill(tmp_path):
    """The engine is a child subreaper: when an agent's leader is reaped, every process of
    its group still alive descends from it and the top-most live one of each line is a child
    of ours (the main thread's). An empty children list proves the group empty: no
    kill(-pgid) (ESRCH every time before) and no second read of the list for the sweep.
    Run in a forked child (in_child): a test process that has run other tests may have
    children of its own main thread -- a daemon another test left, an orphan re-parented to
    it since an earlier engine made it a subreaper -- and any child in the list rightly
    makes the engine kill the ended groups (this flaked under xdist)."""
    from conftest import in_child
    in_child(_nothing_behind_no_group_kill, tmp_path)


def test_an_unreadable_children_list_proves_nothing_and_the_group_is_killed(tmp_path, monkeypatch):
    """Only a list read and found empty proves the group empty: when it cannot be read
    (/proc not mounted, a failing read) every ended group is killed, as before."""
    from dagrun import executor

    n = 3
    h, eng = _fanout(tmp_path, n)
    loop = threading.get_ident()
    kills = []
    real_killpg = os.killpg

    def c_killpg(pgid, sig):
        if threading.get_ident() == loop:
            kills.append(pgid)
        return real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", c_killpg)
    monkeypatch.setattr(executor, "_children_bytes", lambda tid: None)
    assert eng.run() == 0
    monkeypatch.undo()
    assert len(kills) == n + 1, kills


def test_a_group_member_left_running_is_still_killed_when_its_leader_exits(tmp_path):
    """The case the group kill is for: the agent's shell leaves a background child in its
    group (its streams closed, so nothing waits for it). Re-parented to the engine, it is in
    the children list: the group is killed as before."""
    pidfile = tmp_path / "bg.pid"
    agent = f"sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}; echo ok"
    h, eng = _fanout(tmp_path, 1, agent=agent)
    assert eng.run() == 0
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.02)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert (task_dir(h.root, "fo", "m00") / "output").read_text() == "ok\n"


def _count_commit_looks(tmp_path, monkeypatch, agent: str, n: int = 4, **top):
    """Run a fan-out in this process and count, on the loop thread inside its commits, the
    looks at the claim's capture files and the hooks' prepares."""
    from dagrun import engine as eng_mod
    from dagrun import hooks

    h, eng = _fanout(tmp_path, n, agent=agent, **top)
    loop = threading.get_ident()
    names = ("/claim/stdout", "/claim/stderr", "/claim/raw", "/claim/usage.jsonl", "/claim/check.json")
    seen = {"probes": 0, "prepares": 0, "in": False}
    real = {f: getattr(os, f) for f in ("stat", "lstat", "open")}

    def wrap(f):
        def look(path, *a, **k):
            if seen["in"] and threading.get_ident() == loop and isinstance(path, str) and path.endswith(names):
                seen["probes"] += 1
            return real[f](path, *a, **k)
        return look

    def prep(fn):
        def counted(*a, **k):
            if seen["in"]:
                seen["prepares"] += 1
            return fn(*a, **k)
        return counted

    real_ended = eng_mod.Engine._check_ended

    def ended(self, gs):                # the goal's end (its summary, goal.finished): not counted
        was, seen["in"] = seen["in"], False
        try:
            return real_ended(self, gs)
        finally:
            seen["in"] = was

    for f in real:
        monkeypatch.setattr(os, f, wrap(f))
    for f in ("prepare", "prepare_pending", "prepare_skipped", "prepare_blocked"):
        monkeypatch.setattr(hooks, f, prep(getattr(hooks, f)))
    _mark_commits(monkeypatch, seen)
    monkeypatch.setattr(eng_mod.Engine, "_check_ended", ended)
    assert eng.run() == 0
    monkeypatch.undo()
    return h, seen


def test_a_commit_lists_the_claim_once_instead_of_looking_for_each_capture_file(tmp_path, monkeypatch):
    """An agent that printed nothing and wrote no usage, check or raw file: one listing of
    its claim says so -- not five failed looks (claim/stdout, stderr, raw, usage.jsonl,
    check.json) per commit."""
    n = 4
    h, seen = _count_commit_looks(tmp_path, monkeypatch, "true", n)
    assert all((task_dir(h.root, "fo", f"m{i:02d}") / "done").exists() for i in range(n))
    assert (task_dir(h.root, "fo", "m00") / "output").read_bytes() == b""
    assert seen["probes"] == 0, seen


def test_what_the_listing_names_is_committed_as_before(tmp_path, monkeypatch):
    """Every capture file an agent leaves is still found through the listing: stdout becomes
    output, stderr stderr.log, the raw file raw, usage lines the marker's usage."""
    agent = ('echo out; echo err >&2; printf raw > "$DAGRUN_RAW_FILE"; '
             'echo \'{"tokens_in": 3, "tokens_out": 4}\' > "$DAGRUN_USAGE_FILE"')
    h, seen = _count_commit_looks(tmp_path, monkeypatch, agent, 2)
    d = task_dir(h.root, "fo", "m01")
    assert (d / "output").read_text() == "out\n"
    assert (d / "stderr.log").read_text() == "err\n"
    assert (d / "raw").read_text() == "raw"
    done = json.loads((d / "done").read_text())
    assert done["usage"]["tokens_in"] == 3 and done["usage"]["tokens_out"] == 4
    assert not (d / "claim").exists()


def test_a_commit_without_any_hook_prepares_none(tmp_path, monkeypatch):
    """No hook in the plan, its tasks or $DAGRUN_HOME/hooks: a commit prepares nothing (it
    asked three times, for its pending record, its on_skipped check and its event)."""
    _, seen = _count_commit_looks(tmp_path, monkeypatch, "true", 3)
    assert seen["prepares"] == 0, seen


def test_a_commit_with_a_hook_still_prepares_and_runs_it(tmp_path, monkeypatch):
    log = tmp_path / "hook.log"
    hook = {"on_done": [["sh", "-c", f"cat >/dev/null; echo ran >> {log}"]]}
    h, seen = _count_commit_looks(tmp_path, monkeypatch, "true", 2, hooks=hook)
    from dagrun import hooks
    assert hooks.wait(10)
    assert seen["prepares"] > 0
    assert log.read_text().count("ran") == 3          # a and both m's


def _ended_together(tmp: str, agents: list[str]):
    """Agents started by one ProcessRunner (in a forked child: in_child), all of them ended
    before the loop looks: then reap_together() and a poll of each, as Engine._reap does.
    Returns (the exits, children-list reads, group kills)."""
    import select

    from dagrun import executor
    from dagrun.executor import Launch, ProcessRunner

    r = ProcessRunner()
    hs = []
    for i, agent in enumerate(agents):
        d = os.path.join(tmp, f"a{i}")
        os.makedirs(d)
        with open(os.path.join(d, "prompt.md"), "w") as f:
            f.write("p\n")
        hs.append(r.submit(Launch(agent=agent, cwd=d, env=dict(os.environ), stdin_path=os.path.join(d, "prompt.md"),
                                  stdout_path=os.path.join(d, "stdout"), stderr_path=os.path.join(d, "stderr"),
                                  run_id=f"test:{os.getpid()}:{i}")))
    got = 0
    end = time.monotonic() + 20
    while got < len(hs) and time.monotonic() < end:
        got += len(r.spawned())
        p = select.poll()
        for fd in r.wakeup().fds:
            p.register(fd, select.POLLIN)
        p.poll(50)
    assert got == len(hs)
    for h in hs:                    # each leader has exited (a zombie, not reaped yet)
        while os.waitid(os.P_PID, h["pid"], os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            assert time.monotonic() < end
            time.sleep(0.01)
    seen = {"children": 0, "killpg": 0}
    real_children, real_killpg = executor._children_bytes, executor._killpg

    def children(tid):
        seen["children"] += 1
        return real_children(tid)

    def killpg(pgid, sig):
        seen["killpg"] += 1
        return real_killpg(pgid, sig)

    executor._children_bytes, executor._killpg = children, killpg
    try:
        r.reap_together(hs)
        exits = [r.poll(h) for h in hs]
    finally:
        executor._children_bytes, executor._killpg = real_children, real_killpg
    r.close()
    return exits, seen["children"], seen["killpg"]


def _four_ends_one_children_read(tmp: str) -> None:
    exits, reads, kills = _ended_together(tmp, ["true"] * 4)
    assert all(ex is not None and ex.ok for ex in exits), exits
    assert reads == 1, reads            # was one per exit
    assert kills == 0, kills


def test_agents_that_ended_in_one_turn_cost_one_children_read_for_all(tmp_path):
    """Four agents ended before the loop's turn: their leaders are reaped first, then one
    read of the children list proves all four groups empty (it was read once per exit)."""
    from conftest import in_child
    in_child(_four_ends_one_children_read, tmp_path)


def _one_of_four_leaves_a_child(tmp: str) -> None:
    pidfile = os.path.join(tmp, "bg.pid")
    agent = f"sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}"
    exits, reads, kills = _ended_together(tmp, ["true", agent, "true", "true"])
    assert all(ex is not None for ex in exits), exits
    assert reads >= 1
    assert kills >= 1                   # the list was not empty: the groups are killed as before
    pid = int(open(pidfile).read())
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.02)
    raise AssertionError("the background child of one agent outlived its group")


def test_a_child_left_by_one_of_the_agents_ended_together_is_still_killed(tmp_path):
    from conftest import in_child
    in_child(_one_of_four_leaves_a_child, tmp_path)


def test_a_commit_proves_its_claim_and_remembers_its_empty_output_without_a_look(tmp_path, monkeypatch):
    """The commit's one listing of its claim (claim.holds_listed) carries owner.json's inode
    number: the inode we keep open proves the claim ours without holds()'s lstat of
    claim/owner.json; and the empty output it creates (O_EXCL) is remembered for the
    dependents' prompts without file_size's lstat (Home.made_empty). Before: one lstat of
    each per commit. The sink's prompt still reads the outputs as b"" (one lstat each)."""

    n = 4
    h, eng = _fanout(tmp_path, n)
    loop = threading.get_ident()
    seen = {"owner": 0, "output": 0, "in": False}
    real_lstat = os.lstat

    def c_lstat(path, *a, **k):
        if seen["in"] and threading.get_ident() == loop and isinstance(path, str):
            seen["owner"] += path.endswith("/claim/owner.json")
            seen["output"] += path.endswith("/output")
        return real_lstat(path, *a, **k)

    monkeypatch.setattr(os, "lstat", c_lstat)
    _mark_commits(monkeypatch, seen)
    assert eng.run() == 0
    monkeypatch.undo()
    for i in range(n):
        d = task_dir(h.root, "fo", f"m{i:02d}")
        assert (d / "done").exists() and (d / "output").read_bytes() == b""
        assert json.loads((d / "done").read_text())["output_bytes"] == 0
        assert not (d / "claim").exists()
    assert seen == {"owner": 0, "output": 0, "in": False}, seen


def test_a_claim_not_proven_by_the_listing_is_read_as_before(tmp_path):
    """holds_listed: owner.json's entry showing another inode than the one we hold (replaced
    by rename) is judged by reading it -- ours only with our nonce; no owner.json: not ours."""
    from dagrun import claim as claims
    from dagrun import fsio

    h = Home(str(tmp_path / "home"))
    g, t = "g", "t"
    assert claims.acquire(h, g, t)
    owner = claims.new_owner("w", 1, kind="engine")
    held = claims.update_owner(h, g, t, owner, hold=True)
    cdir = h.claim_dir(g, t)
    open(os.path.join(cdir, "stdout"), "w").close()
    ok, names = claims.holds_listed(h, g, t, owner["nonce"], held, cdir)
    assert ok and names == {"owner.json", "stdout"}
    fsio.write_atomic(h.owner_path(g, t), json.dumps(owner).encode())      # another inode, our nonce
    assert claims.holds_listed(h, g, t, owner["nonce"], held, cdir)[0]
    assert held.fd == -1                   # it names owner.json no more: let go (as holds())
    other = dict(owner, nonce="0" * 12)
    fsio.write_atomic(h.owner_path(g, t), json.dumps(other).encode())      # somebody else's
    assert not claims.holds_listed(h, g, t, owner["nonce"], None, cdir)[0]
    os.unlink(h.owner_path(g, t))
    assert claims.holds_listed(h, g, t, owner["nonce"], None, cdir) == (False, {"stdout"})


def test_an_output_made_empty_is_served_only_while_an_empty_regular_file_is_there(tmp_path):
    """Home.made_empty remembers an output without a look: read_output then serves b"" after
    one lstat showing an empty regular file under that name; written to, replaced by a
    symbolic link (even to an empty file) or gone, it is read the safe way."""
    import pytest

    from dagrun import fsio
    from dagrun.errors import FsError

    h = Home(str(tmp_path / "home"))
    out = task_dir(h.root, "g", "a") / "output"
    out.parent.mkdir(parents=True)
    fsio.write_fresh(str(out), b"")
    with safe_walks() as walks:
        h.made_empty(str(out))
        assert h.read_output(str(out), 100) == (b"", 0) and h.read_output(str(out), 7) == (b"", 0)
        assert walks == []
        with open(out, "ab") as f:
            f.write(b"late")
        assert h.read_output(str(out), 100) == (b"late", 4) and len(walks) == 1
        h.made_empty(str(out))
        os.unlink(out)
        elsewhere = tmp_path / "empty"
        elsewhere.write_bytes(b"")
        os.symlink(elsewhere, out)
        with pytest.raises(FsError, match="symbolic link"):
            h.read_output(str(out), 100)
        h.made_empty(str(out))
        os.unlink(out)
        assert h.read_output(str(out), 100) is None      # gone (archived): the caller's Stale
