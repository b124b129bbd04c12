"""The loop thread's commit path (issue 20, 2026-12-06, commit13): what an agent's end costs
the loop from its exit to its `done` -- counted in calls, not timed -- and the cases each
dropped look covered still behaving."""
from __future__ import annotations

import os
import threading
import time

import psutil

from conftest import run, task_dir, write_plan

from dagrun.store import Home


def _fanout(tmp_path, n: int, agent: str = "true", **top):
    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    tasks = [{"id": "a", "prompt": "x"}] + [{"id": f"m{i:02d}", "prompt": "x", "deps": ["a"]} for i in range(n)]
    p = write_plan(tmp_path / "p", tasks, goal="fo", defaults={"agent": agent}, **top)
    run("submit", p, home=h.root)
    return h, Engine(h, goal="fo", jobs=4)


def test_an_agent_that_leaves_nothing_behind_costs_no_group_kill(tmp_path, monkeypatch):
    """The engine is a child subreaper: when an agent's leader is reaped, every process of
    its group still alive descends from it and the top-most live one of each line is a child
    of ours (the main thread's). An empty children list proves the group empty: no
    kill(-pgid) (ESRCH every time before) and no second read of the list for the sweep."""
    from dagrun import executor

    n = 6
    h, eng = _fanout(tmp_path, n)
    loop = threading.get_ident()
    seen = {"killpg": 0, "children": 0, "reaping": False}
    real_killpg, real_children, real_reap = os.killpg, executor._children, eng._reap

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

    def c_children(tid=None):
        if threading.get_ident() == loop and seen["reaping"]:
            seen["children"] += 1
        return real_children(tid)

    monkeypatch.setattr(os, "killpg", c_killpg)
    monkeypatch.setattr(executor, "_children", c_children)
    monkeypatch.setattr(eng, "_reap", reap)
    assert eng.run() == 0
    monkeypatch.undo()
    assert all((task_dir(h.root, "fo", f"m{i:02d}") / "done").exists() for i in range(n))
    assert seen["killpg"] == 0, seen
    assert seen["children"] == n + 1, seen          # one look per agent's end (the sweep's)


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
