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


# --------------------------------------------------------------- plan.py: the normalised record
# plan.json is written by one process and read by every other (to_dict / from_dict); the engine
# runs in a subprocess, so without these in-process checks mutmut saw no test of them at all.
FULL_DOC = {
    "goal": "full", "description": "all fields", "max_parallel": 3, "on_failure": "stop", "lease": 30,
    "defaults": {"agent": "echo d", "retries": 2},
    "tasks": [
        {"id": "a", "prompt": "pa", "timeout": 5, "retry_backoff": 0.5, "retry_context": "error",
         "stall_timeout": 7, "kill_grace": 1, "workdir": "sub", "context_limit": 100, "max_output": 1000,
         "priority": 9, "description": "first"},
        {"id": "b", "prompt": "pb", "deps": ["a"], "agent": "echo b", "retries": 0},
        {"id": "c", "prompt": "pc", "soft_deps": ["a"]},
        {"id": "d", "prompt": "pd", "deps": ["b"], "soft_deps": ["c"]},
    ],
}


def _full_plan(tmp_path) -> planmod.Plan:
    (tmp_path / "sub").mkdir(exist_ok=True)
    p = tmp_path / "dag.json"
    p.write_text(json.dumps(FULL_DOC))
    return planmod.load(str(p))


def test_the_normalised_plan_record_is_exactly_this(tmp_path):
    pl = _full_plan(tmp_path)
    d = pl.to_dict()
    assert {k: v for k, v in d.items() if k != "tasks"} == {
        "version": 1, "goal": "full", "source": str(tmp_path / "dag.json"), "plan_dir": str(tmp_path),
        "max_parallel": 3, "on_failure": "stop", "lease": 30.0, "description": "all fields"}
    a, b, c, dd = d["tasks"]
    assert a == {"id": "a", "deps": [], "soft_deps": [], "prompt": "pa", "prompt_file": None, "agent": "echo d",
                 "timeout": 5, "retries": 2, "retry_backoff": 0.5, "retry_context": "error", "stall_timeout": 7,
                 "kill_grace": 1, "workdir": str(tmp_path / "sub"), "context_limit": 100, "max_output": 1000,
                 "priority": 9, "description": "first"}
    assert b["deps"] == ["a"] and b["agent"] == "echo b" and b["retries"] == 0 and b["soft_deps"] == []
    assert c["soft_deps"] == ["a"] and c["deps"] == []
    assert dd["deps"] == ["b"] and dd["soft_deps"] == ["c"]
    assert (b["retry_backoff"], b["kill_grace"], b["context_limit"], b["priority"], b["retry_context"]) == \
        (1.0, 5.0, planmod.DEFAULT_CONTEXT_LIMIT, 0, "none")
    assert (b["timeout"], b["stall_timeout"], b["max_output"], b["description"]) == (None, None, None, None)
    assert json.loads(pl.canonical()) == d
    raw = pl.canonical()
    assert raw.endswith(b"}\n") and raw == planmod.Plan.from_dict(json.loads(raw)).canonical()
    assert list(json.loads(raw)) == sorted(d)                      # sorted keys: byte-identical records


def test_the_record_round_trips_and_keeps_its_defaults(tmp_path):
    pl = _full_plan(tmp_path)
    again = planmod.Plan.from_dict(json.loads(pl.canonical()))
    assert again == pl and again.tasks == pl.tasks
    for t, u in zip(again.tasks, pl.tasks):
        assert type(t.deps) is tuple and type(t.soft_deps) is tuple and t.to_dict() == u.to_dict()
    assert (again.max_parallel, again.on_failure, again.lease, again.description) == (3, "stop", 30.0, "all fields")
    bare = dict(pl.to_dict())
    for k in ("max_parallel", "on_failure", "lease", "description"):
        del bare[k]
    old = planmod.Plan.from_dict(bare)                             # a record written before those fields
    assert (old.max_parallel, old.on_failure, old.lease, old.description) == (None, "continue", 60.0, None)
    assert old.goal == "full" and old.source == pl.source and old.plan_dir == pl.plan_dir


def test_plan_graph_helpers(tmp_path):
    pl = _full_plan(tmp_path)
    assert pl.ids() == ["a", "b", "c", "d"]
    assert pl.has("a") and not pl.has("x") and pl.task("c").soft_deps == ("a",)
    assert pl.dependents() == {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert pl.descendants(["a"]) == ["b", "c", "d"]
    assert pl.descendants(["c"]) == ["d"] and pl.descendants(["d"]) == []
    assert pl.descendants(["b", "c"]) == ["d"]


def test_digests(tmp_path):
    pl = _full_plan(tmp_path)
    dg = pl.digest()
    assert len(dg) == 16 and int(dg, 16) >= 0 and dg == planmod.Plan.from_dict(json.loads(pl.canonical())).digest()
    assert dg == __import__("hashlib").sha256(pl.canonical()).hexdigest()[:16]
    doc = json.loads(json.dumps(FULL_DOC))
    doc["tasks"][1]["prompt"] = "other"
    (tmp_path / "dag.json").write_text(json.dumps(doc))
    assert planmod.load(str(tmp_path / "dag.json")).digest() != dg
    a = pl.task("a")
    import dataclasses
    same = [dataclasses.replace(a, timeout=99), dataclasses.replace(a, retries=7), dataclasses.replace(a, priority=-1),
            dataclasses.replace(a, kill_grace=3), dataclasses.replace(a, description="x")]
    assert all(t.definition_digest() == a.definition_digest() for t in same)
    changed = [dataclasses.replace(a, prompt="x"), dataclasses.replace(a, agent="x"), dataclasses.replace(a, deps=("q",)),
               dataclasses.replace(a, soft_deps=("q",)), dataclasses.replace(a, workdir="/x"),
               dataclasses.replace(a, context_limit=1), dataclasses.replace(a, retry_context="none")]
    assert len({t.definition_digest() for t in changed} | {a.definition_digest()}) == len(changed) + 1
    assert len(a.definition_digest()) == 16


@pytest.mark.parametrize("s", ["a", "A0", "0", "a.b-c_d", "x" * 128])
def test_check_id_accepts(s):
    assert planmod.valid_id(s) and planmod.check_id("goal", s) == s


@pytest.mark.parametrize("s", ["", ".a", "-a", "_a", "a/b", "..", "a b", "x" * 129, "a\n", "é"])
def test_check_id_refuses_in_one_line(s):
    assert not planmod.valid_id(s)
    with pytest.raises(PlanError) as e:
        planmod.check_id("task", s)
    assert str(e.value) == f"invalid task id {s!r}: use 1-128 of A-Z a-z 0-9 . _ - , starting with a letter or digit"
    assert not planmod.valid_id(5) and not planmod.valid_id(None)
