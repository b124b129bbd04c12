"""Behaviours that mutation testing found unprotected: each test here fails on a named mutant
(checked by applying the mutation by hand, and by mutmut; see README.md "Mutation testing").
They call the library in-process where they can, so that mutmut -- which swaps functions in
the test process -- sees them too, plus one CLI check of the same behaviour end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import run, write_plan  # noqa: E402
from dagrun import claim as claims  # noqa: E402
from dagrun import plan as planmod  # noqa: E402
from dagrun.errors import PlanError, Refused  # noqa: E402
from dagrun.lifecycle import check_holder  # noqa: E402


# --------------------------------------------------------------- plan.py: soft deps in the cycle check
# mutant: find_cycle({t.id: list(t.deps) for t in tasks}) -- soft_deps left out of the cycle
# check. It then accepts a -> b ~> a, and the engine dies with exit 70 on that plan.
@pytest.mark.parametrize("tasks,cycle", [
    ([{"id": "a", "prompt": "p", "soft_deps": ["b"]}, {"id": "b", "prompt": "p", "deps": ["a"]}],
     "dependency cycle: a -> b -> a"),
    ([{"id": "a", "prompt": "p", "soft_deps": ["a"]}], "dependency cycle: a -> a"),
    ([{"id": "a", "prompt": "p", "soft_deps": ["c"]}, {"id": "b", "prompt": "p", "soft_deps": ["a"]},
      {"id": "c", "prompt": "p", "soft_deps": ["b"]}], "dependency cycle: a -> c -> b -> a"),
])
def test_a_cycle_through_soft_deps_is_a_plan_error(tmp_path, tasks, cycle):
    p = write_plan(tmp_path, tasks, goal="g", defaults={"agent": "true"})
    with pytest.raises(PlanError) as e:
        planmod.load(str(p))
    assert cycle in str(e.value)


def test_a_soft_dep_cycle_is_refused_by_validate_and_run(tmp_path):
    p = write_plan(tmp_path / "plans", [{"id": "a", "prompt": "p", "soft_deps": ["b"]},
                                       {"id": "b", "prompt": "p", "deps": ["a"]}], goal="g",
                   defaults={"agent": "true"})
    for cmd in ("validate", "run", "submit"):
        r = run(cmd, p, home=tmp_path / "home", check=2)
        assert r.stderr.count("\n") == 1 and "dependency cycle: a -> b -> a" in r.stderr, (cmd, r.stderr)
    assert not (tmp_path / "home").exists()


# --------------------------------------------------------------- lifecycle.check_holder: pid start time
# mutant: `if pid == owner.get("pid"):` -- the start-time comparison dropped, so any process
# that got the holder's pid number after the holder died (pid reuse) passes as the holder.
def _owner(pid: int, start: str | None) -> dict:
    return {"worker": "w1", "pid": pid, "pid_start": start, "host": claims.HOST}


def _check(owner, caller, worker=None, force=False):
    return check_holder(owner, worker=worker, caller=caller, force=force, what="complete", g="g", t="a")


def test_holder_check_compares_the_pid_start_time():
    me = os.getpid()
    start = claims.proc_start(me)
    assert start
    assert _check(_owner(me, start), [(me, start)]) is False               # the holder itself
    with pytest.raises(Refused, match="held by worker w1"):
        _check(_owner(me, "1"), [(me, start)])                             # same pid, another process
    with pytest.raises(Refused):
        _check(_owner(me, start), [(me, "1")])
    assert _check(_owner(me, "1"), [(me, start)], force=True) is True      # only --force lets it by
    assert _check(_owner(me, None), [(me, start)]) is False                # a record without a start time
    assert _check(_owner(me, "1"), [(me + 1, "x"), (me, "1")]) is False    # an ancestor of the caller


def test_holder_check_other_host_and_worker():
    me = os.getpid()
    start = claims.proc_start(me)
    other = dict(_owner(me, start), host=claims.HOST + "-elsewhere")
    with pytest.raises(Refused):
        _check(other, [(me, start)])                                       # same pid on another host
    assert _check(other, [], worker="w1") is False                         # --worker names the holder
    with pytest.raises(Refused, match="not claimed"):
        _check(None, [(me, start)])


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """End to end: a claim made for process P (--pid P); the record's start time is then not
    P's (as when P died and its pid number was given to a new process): `complete --pid P`
    is refused, exit 4, and the task stays claimed."""
    p = write_plan(tmp_path / "plans", [{"id": "a", "prompt": "p"}], goal="g", defaults={"agent": "true"})
    home = tmp_path / "home"
    run("submit", p, home=home)
    keeper = subprocess.Popen(["sleep", "60"])
    try:
        run("claim", "--pid", str(keeper.pid), "g", home=home)
        owner_path = home / "goals" / "g" / "tasks" / "a" / "claim" / "owner.json"
        rec = json.loads(owner_path.read_text())
        assert rec["pid"] == keeper.pid and rec["pid_start"] == claims.proc_start(keeper.pid)
        out = tmp_path / "out.txt"
        out.write_text("x\n")
        rec["pid_start"] = str(int(rec["pid_start"]) - 1)                  # an earlier process with that pid
        owner_path.write_text(json.dumps(rec))
        r = run("complete", "--pid", str(keeper.pid), "g", "a", "--output", out, home=home, check=4)
        assert "held by worker" in r.stderr and r.stderr.count("\n") == 1
        assert not (home / "goals" / "g" / "tasks" / "a" / "done").exists()
    finally:
        keeper.kill()
        keeper.wait()


# --------------------------------------------------------------- errors.one_line: one line, always
@pytest.mark.parametrize("doc,shown", [
    ({"defaults": {"a\nb": 1}, "tasks": [{"id": "a", "prompt": "p", "agent": "true"}]},
     'defaults.a\\nb: unknown field "a\\nb" in defaults'),
    ({"tasks": [{"id": "a", "prompt": "p", "agent": "true", "k\x1b[2J\u2028": 1}]},
     'tasks[0].k\\x1b[2J\\u2028: unknown field'),
])
def test_an_error_line_escapes_control_characters(tmp_path, doc, shown):
    (tmp_path / "dag.json").write_text(json.dumps(doc, ensure_ascii=False))
    for cmd in ("validate", "submit", "run"):
        r = run(cmd, tmp_path / "dag.json", home=tmp_path / "home", check=2)
        assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), (cmd, r.stderr)
        assert shown in r.stderr, (cmd, r.stderr)
        assert "\x1b" not in r.stderr and "\u2028" not in r.stderr
    assert not (tmp_path / "home").exists()


def test_an_os_error_on_a_name_with_a_newline_is_one_line(tmp_path):
    bad = tmp_path / "no\nsuch"
    r = run("validate", bad, check=2)
    assert r.stderr.count("\n") == 1 and "no\\nsuch" in r.stderr, r.stderr
