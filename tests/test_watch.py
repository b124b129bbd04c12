"""`dagrun watch`: a live view on a terminal (pseudo-TTY via pexpect) that redraws on events,
plain lines elsewhere; it exits when the goal ends, 0 if it ended done."""
from __future__ import annotations

import os
import subprocess
import time

import pexpect
import pytest

from conftest import DAGRUN, EXAMPLES, run, spawn, write_plan


def _pty(*args, home):
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="110", LINES="40")
    env.pop("DAGRUN_HOME", None)
    return pexpect.spawn(DAGRUN, [f"--home={home}", *map(str, args)], env=env, dimensions=(40, 110),
                         timeout=40)


def _drain(w, quiet: float) -> None:
    """Read what the terminal has until it stays quiet for `quiet` seconds."""
    while True:
        try:
            w.read_nonblocking(65536, timeout=quiet)
        except pexpect.TIMEOUT:
            return


def test_watch_on_a_tty_shows_progress_and_exits_when_the_goal_ends(home):
    run("submit", EXAMPLES / "add-auth" / "dag.json", home=home)
    w = _pty("watch", "add-auth", home=home)
    try:
        w.expect("add-auth")
        w.expect("0/6 done")
        w.expect("design-schema implement test review")      # the waiting ones
        _drain(w, 0.5)
        # nothing runs, nothing happens: the view is not redrawn on a timer
        with pytest.raises(pexpect.TIMEOUT):
            w.read_nonblocking(1, timeout=1.5)
        agent_env = dict(os.environ, FAKE_AGENT_SLEEP="0.6")
        agent_env.pop("DAGRUN_HOME", None)
        eng = subprocess.Popen([DAGRUN, f"--home={home}", "run", "add-auth", "-q"], env=agent_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        w.expect("running")                      # the table of running tasks (with elapsed time, worker)
        w.expect("research-a")
        w.expect(r"\d+/6 done")
        w.expect("6/6 done")
        w.expect("goal add-auth done: 6 done")
        w.expect(pexpect.EOF)
        assert eng.wait(60) == 0
    finally:
        w.close(force=True)
    assert w.exitstatus == 0


def test_watch_of_an_ended_goal_draws_once_and_exits_1_if_it_failed(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "exit 2"}, {"id": "b", "prompt": "p", "deps": ["a"]}],
                   goal="bad", defaults={"agent": "true"})
    run("run", p, home=home, check=1)
    w = _pty("watch", "bad", home=home)
    w.expect("bad")
    w.expect("failed")
    w.expect(pexpect.EOF)
    w.close()
    assert w.exitstatus == 1
    r = run("watch", "bad", home=home, check=1)      # not a TTY: plain
    assert r.stdout == "goal bad failed: 1 failed, 1 blocked\n"


def test_watch_off_a_tty_prints_one_line_per_event(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]}], goal="plain",
                   defaults={"agent": "sleep 0.2"})
    run("submit", p, home=home)
    w = spawn("watch", "plain", home=home)
    time.sleep(0.5)
    run("run", "plain", home=home)
    out, err = w.communicate(timeout=30)
    assert w.returncode == 0, err
    lines = out.decode().splitlines()
    assert "\x1b" not in out.decode()
    assert lines[0] == "watching goal plain: 0/2 ended"
    assert [ln.split()[2:4] for ln in lines[1:-1]] == [
        ["plain/a", "running"], ["plain/a", "done"], ["plain/b", "ready"], ["plain/b", "running"],
        ["plain/b", "done"], ["plain", "goal.finished"]]
    assert lines[-1] == "goal plain done: 2 done"


def test_watch_without_a_goal(home, plans):
    done = write_plan(plans, [{"id": "a", "prompt": "p"}], name="d.json", goal="old", defaults={"agent": "true"})
    run("run", done, home=home)
    # every goal ended: the overview, once
    r = run("watch", home=home)
    assert r.stdout == "goal old done: 1 done\n"
    # exactly one unfinished goal: that one is watched
    one = write_plan(plans, [{"id": "x", "prompt": "p"}], name="one.json", goal="one", defaults={"agent": "sleep 0.3"})
    run("submit", one, home=home)
    w = spawn("watch", home=home)
    time.sleep(0.5)
    run("run", "one", home=home)
    out, _ = w.communicate(timeout=30)
    assert w.returncode == 0
    assert out.decode().splitlines()[0] == "watching goal one: 0/1 ended"
    # several unfinished goals: all of them, until every one has ended
    for g in ("p1", "p2"):
        run("submit", write_plan(plans, [{"id": "t", "prompt": "p"}], name=f"{g}.json", goal=g,
                                 defaults={"agent": "sleep 0.2"}), home=home)
    w = spawn("watch", home=home)
    time.sleep(0.5)
    run("worker", "--until-idle", home=home)
    out, _ = w.communicate(timeout=30)
    assert w.returncode == 0
    text = out.decode()
    assert "watching goal p1: 0/1 ended" in text and "watching goal p2: 0/1 ended" in text
    assert "p1 goal.finished" in text and "p2 goal.finished" in text


def test_watch_overview_on_a_tty(home, plans):
    for g in ("q1", "q2"):
        run("submit", write_plan(plans, [{"id": "t", "prompt": "p"}, {"id": "u", "prompt": "p", "deps": ["t"]}],
                                 name=f"{g}.json", goal=g, defaults={"agent": "sleep 0.3"}), home=home)
    w = _pty("watch", home=home)
    try:
        w.expect("q1")
        w.expect("q2")
        wk = spawn("worker", "--until-idle", home=home)
        w.expect(r"2/2")
        w.expect(pexpect.EOF)
        assert wk.wait(30) == 0
    finally:
        w.close(force=True)
    assert w.exitstatus == 0
