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
# mutant: topo_order(..., [[by_id[d] for d in t.deps] ...]) in plan.py -- soft_deps left out of the cycle check
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


# --------------------------------------------------------------- scheduler.py: what mutmut found untested
from dagrun.scheduler import Scheduler  # noqa: E402


class _T:
    def __init__(self, id, deps=(), soft_deps=(), priority=0):
        self.id, self.deps, self.soft_deps, self.priority = id, tuple(deps), tuple(soft_deps), priority


DIAMOND = [_T("a"), _T("b", ["a"]), _T("c", ["a"]), _T("d", ["b", "c"])]


def test_heights_are_the_longest_path_to_the_end():
    """`validate` prints the depth from Scheduler.height; ready ties go to the longest path."""
    s = Scheduler(DIAMOND + [_T("e", soft_deps=["d"]), _T("x")])
    assert s.height == [4, 3, 3, 2, 1, 1]
    assert Scheduler([_T("x")]).height == [1]


def test_a_cycle_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"^dependency cycle: a -> b -> a$") as e:
        Scheduler([_T("a", ["b"]), _T("b", soft_deps=["a"])])
    assert e.value.cycle == ["a", "b", "a"]


@pytest.mark.parametrize("initial", ["pending", "waiting", "ready", "blocked"])
def test_states_a_task_may_be_loaded_in(initial):
    s = Scheduler(DIAMOND, {"b": initial})
    assert s.state_of("a") == "ready" and s.state_of("b") == "waiting"


def test_an_unknown_initial_state_names_the_task():
    with pytest.raises(ValueError, match=r"^task 'b': unknown initial state 'bogus'$"):
        Scheduler(DIAMOND, {"b": "bogus"})


def test_blocked_by_is_none_for_a_task_that_is_not_blocked_and_names_the_root_after_finish():
    s = Scheduler(DIAMOND)
    assert s.blocked_by("a") is None and s.blocked_by("d") is None
    s.finish("a", "done")
    s.finish("b", "failed")
    assert s.state_of("d") == "blocked" and s.blocked_by("d") == "b" and s.blocked_by("c") is None
    assert s.failed_roots() == ["b"]
    s.finish("c", "cancelled")
    assert s.failed_roots() == ["b", "c"]


def test_is_finished_counts_ready_and_running_tasks():
    s = Scheduler([_T("a"), _T("b")])
    assert not s.is_finished()
    assert s.take() == "a"                       # a running, b ready
    assert not s.is_finished()
    s.finish("a", "done")
    assert s.take() == "b" and not s.is_finished()
    s.retrying("b")
    assert not s.is_finished() and list(s.not_started()) == ["b"]
    s.finish("b", "failed")
    assert s.is_finished() and list(s.not_started()) == []


def test_start_marks_running_and_peek_skips_the_stale_heap_entry():
    s = Scheduler([_T("a", priority=2), _T("b", priority=1), _T("c"), _T("z", ["c"])])
    assert s.peek() == "a"
    s.start("a")                                 # another worker took it
    assert s.state_of("a") == "running" and s.peek() == "b" and s.ready_ids() == ["b", "c"]
    s.start("z")                                 # waiting -> running (someone else's claim)
    assert s.state_of("z") == "running"
    s.finish("c", "done")
    s.start("c")                                 # a done task stays done
    assert s.state_of("c") == "done"
    assert list(s.not_started()) == ["b"]


def test_requeue():
    s = Scheduler([_T("a"), _T("s"), _T("b", ["a"], ["s"])], {"a": "done", "b": "running"})
    assert s.requeue("b") == [] and s.state_of("b") == "waiting"     # its soft dep s is not over yet
    assert s.requeue("a") == [] and s.state_of("a") == "done"        # terminal: untouched
    assert s.requeue("s") == [] and s.state_of("s") == "ready"       # already ready: nothing to do
    s.finish("s", "done")
    assert s.state_of("b") == "ready"
    s.start("b")
    assert s.requeue("b") == [("b", "ready", None)] and s.peek() == "b"


# --------------------------------------------------------------- plan.py: lines, cycles, prompt files, schema
def test_line_of_key_points_at_the_second_occurrence():
    f = planmod._line_of_key
    assert f('{\n "a": 1,\n "b": 2,\n "a": 3}', "a") == 4            # the duplicate
    assert f('{\n\n "b" : 2}', "b") == 3                               # one occurrence: that line
    assert f('{"x": 1}', "b") == 1                                     # none: line 1
    assert f('\n{"a": 1, "a": 2}', "a") == 2


def test_duplicate_key_error_names_the_line_of_the_duplicate(tmp_path):
    p = tmp_path / "dag.json"
    p.write_text('{\n "goal": "g",\n "tasks": [],\n "goal": "h"\n}')
    with pytest.raises(PlanError, match=r':4: duplicate key "goal" in one object$'):
        planmod.load(str(p))


@pytest.mark.parametrize("n,whole", [(12, True), (13, False)])
def test_a_cycle_of_up_to_12_tasks_is_printed_whole(tmp_path, n, whole):
    tasks = [{"id": f"t{i}", "prompt": "p", "deps": [f"t{(i + 1) % n}"]} for i in range(n)]
    p = write_plan(tmp_path, tasks, goal="g", defaults={"agent": "true"})
    with pytest.raises(PlanError) as e:
        planmod.load(str(p))
    msg = str(e.value)
    assert ("more of" not in msg) == whole, msg
    assert msg.count(" -> ") == (n if whole else 8), msg


def test_a_prompt_file_of_exactly_the_limit_is_read_whole(tmp_path):
    (tmp_path / "big.md").write_bytes(b"x" * planmod.MAX_PROMPT_BYTES)
    p = write_plan(tmp_path, [{"id": "a", "prompt_file": "big.md"}], goal="g", defaults={"agent": "true"})
    assert len(planmod.load(str(p)).task("a").prompt) == planmod.MAX_PROMPT_BYTES
    (tmp_path / "big.md").write_bytes(b"x" * (planmod.MAX_PROMPT_BYTES + 1))
    with pytest.raises(PlanError, match=f"is {planmod.MAX_PROMPT_BYTES + 1} bytes; the limit is {planmod.MAX_PROMPT_BYTES}$"):
        planmod.load(str(p))


def test_the_schema_lets_nullable_knobs_be_null():
    import jsonschema
    schema = planmod.json_schema()
    doc = {"tasks": [{"id": "a", "prompt": "p", "agent": "x", "timeout": None, "stall_timeout": None,
                      "max_output": None, "check": None}], "defaults": {"timeout": None, "check": ["true"]}}
    jsonschema.validate(doc, schema)
    nullable = [k for k, f in planmod.KNOBS.items() if f.nullable]
    assert set(nullable) == {"timeout", "stall_timeout", "max_output", "check"}   # check: null = no check
    knobs = schema["$defs"]["knobs"]["properties"]
    assert all(knobs[k]["type"][-1] == "null" for k in nullable)
    # (json_schema's `anyOf` branch for a nullable field without a "type" is unreachable with
    # today's field table: mutmut's mutants of it are explained in tests/reliability/README.md)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tasks": [{"id": "a", "prompt": "p", "agent": "x", "retries": None}]}, schema)


# --------------------------------------------------------------- plan._value_lines, find_cycle, load
def _expected_lines(v, path, line, out) -> int:
    """Oracle for json.dumps(doc, indent=...): the line each value starts on. Returns the line
    the value ends on."""
    out.setdefault(path, line)
    items = list(v.items()) if isinstance(v, dict) else list(enumerate(v)) if isinstance(v, list) else []
    if not items:
        return line
    end = line
    for k, child in items:
        end = _expected_lines(child, path + (k,), end + 1, out)
    return end + 1


def _random_doc(rng, depth=0):
    chars = ['a', 'b', '"', '\\', '[', ']', '{', '}', ',', ':', ' ', '\n', '\t', 'é', '\u2028', 'x']
    def text():
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, 6)))
    r = rng.random()
    if depth > 3 or r < 0.4:
        return rng.choice([text(), rng.randint(-5, 10 ** 6), 1.5e-3, True, False, None])
    if r < 0.7:
        return [_random_doc(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text() + str(i): _random_doc(rng, depth + 1) for i in range(rng.randint(0, 4))}


def test_value_lines_agrees_with_an_oracle_on_random_documents():
    import random
    rng = random.Random(21)
    for _ in range(400):
        doc = _random_doc(rng)
        want: dict = {}
        _expected_lines(doc, (), 1, want)
        for indent, eol in ((1, "\n"), ("\t", "\r\n"), (2, "\n")):
            text = json.dumps(doc, indent=indent, ensure_ascii=False).replace("\n", eol)
            assert planmod._value_lines(text) == want, text
        flat = json.dumps(doc, ensure_ascii=False)
        assert planmod._value_lines(flat) == dict.fromkeys(want, 1), flat


def test_value_lines_of_a_plan_point_error_lines_at_the_value(tmp_path):
    p = tmp_path / "dag.json"
    p.write_text('{"tasks": [\n {"id": "a", "prompt": "q\\\\\\"x[{", "agent": "t"},\n\n {"id": "b", "prompt": "p",\r\n'
                 '  "agent": "t", "retries": -1}]}')
    with pytest.raises(PlanError, match=r"dag.json:5: tasks\[1\]\.retries: "):
        planmod.load(str(p))


@pytest.mark.parametrize("graph,cycle", [
    ({"a": ["b"], "b": ["c"], "c": []}, None),
    ({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}, None),                 # a diamond is no cycle
    ({"a": [], "b": ["a"], "c": ["b", "a"], "d": ["c", "x"]}, None),            # x: not a task (checked before)
    ({"a": ["a"]}, ["a", "a"]),
    ({"x": [], "a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
    ({"a": ["b"], "b": ["c"], "c": ["d"], "d": ["b"]}, ["b", "c", "d", "b"]),
    ({"a": ["d", "b"], "b": ["c"], "c": [], "d": ["c"], "e": ["a", "e"]}, ["e", "e"]),
    ({"a": ["b"], "b": [], "c": ["a", "d"], "d": ["c"]}, ["c", "d", "c"]),
])
def test_find_cycle(graph, cycle):
    assert _find_cycle(graph) == cycle


def _find_cycle(graph: dict) -> list | None:
    """The one traversal that finds cycles (scheduler.topo_order, used by plan validation and
    the scheduler), over a {task: [deps]} graph; deps that are not tasks are left out, as
    validation reports them before it looks for cycles."""
    from dagrun.scheduler import CycleError, topo_order
    ids = list(graph)
    at = {t: i for i, t in enumerate(ids)}
    preds = [[at[d] for d in graph[t] if d in at] for t in ids]
    succs = [[] for _ in ids]
    for i, ps in enumerate(preds):
        for p in ps:
            succs[p].append(i)
    try:
        topo_order(ids, preds, succs)
    except CycleError as e:
        return e.cycle
    return None


def test_find_cycle_of_a_long_chain_is_iterative():
    n = 50_000
    g = {f"t{i}": [f"t{i + 1}"] for i in range(n)}
    g[f"t{n}"] = ["t0"]
    c = _find_cycle(g)
    assert c[0] == c[-1] and len(c) == n + 2


def test_load_refuses_a_missing_plan_and_one_over_the_limit_in_one_line(tmp_path):
    with pytest.raises(PlanError, match=r"^cannot read plan .*/nope\.json: No such file or directory$"):
        planmod.load(str(tmp_path / "nope.json"))
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(planmod.MAX_PLAN_BYTES + 1)
    with pytest.raises(PlanError, match=f"plan is {planmod.MAX_PLAN_BYTES + 1} bytes; the limit is"):
        planmod.load(str(big))
    with open(big, "r+b") as f:                  # exactly the limit: read, then judged as JSON
        f.truncate(planmod.MAX_PLAN_BYTES)
    with pytest.raises(PlanError) as e:
        planmod.load(str(big))
    assert "the limit is" not in str(e.value)


# --------------------------------------------------------------- plan.py: messages and values the corpus misses in-process
def _err(raw, shown="dag.json") -> str:
    with pytest.raises(PlanError) as e:
        planmod.parse(raw if isinstance(raw, bytes) else json.dumps(raw).encode(), shown=shown,
                      source="/p/dag.json", default_goal="dag")
    return str(e.value)


def _ok(doc) -> planmod.Plan:
    return planmod.parse(json.dumps(doc).encode(), shown="dag.json", source="/p/dag.json", default_goal="dag")


T = {"id": "a", "prompt": "p", "agent": "x"}


def test_show_quotes_ascii_and_cuts_at_40():
    assert planmod._show("é") == '"\\u00e9"'
    assert planmod._show("x" * 38) == '"' + "x" * 38 + '"'                 # 40 characters: whole
    assert planmod._show("x" * 39) == '"' + "x" * 36 + "..."               # 41: cut to 37 + ...


def test_messages_for_the_top_level_unknown_fields_and_schema():
    assert _err([1]) == "dag.json:1: expected an object, got an array"
    m = _err({"tasks": [T], "zz": 1, "yy": 2})
    assert 'unknown fields "zz", "yy" in the plan (known: runner, goal, description, defaults, max_parallel, on_failure, lease, workspace, hooks, max_tasks, budget, resources, agent_limits, tenant, weight, aging, tasks)' in m, m
    assert 'unknown field "zz" in the plan' in _err({"tasks": [T], "zz": 1})
    assert _ok({"$schema": "s", "tasks": [T]}).goal == "dag"
    assert "$schema: expected a string" in _err({"$schema": 5, "tasks": [T]})


def test_values_the_validator_normalises():
    p = _ok({"tasks": [dict(T, retries=2.0, deps=[])]})
    assert p.on_failure == "continue" and p.task("a").retries == 2 and type(p.task("a").retries) is int
    assert _ok({"tasks": [dict(T, retries=100)]}).task("a").retries == 100
    assert "tasks[0].retries: " in _err({"tasks": [dict(T, retries=101)]})
    assert "tasks[0].timeout: must be a finite number" in _err(b'{"tasks": [{"id": "a", "prompt": "p", "agent": "x", "timeout": 1e400}]}')
    assert "tasks[0].soft_deps[0]: " in _err({"tasks": [dict(T, soft_deps=["../x"])]})
    assert "dag.json:1: defaults.retries: " in _err({"defaults": {"retries": -1}, "tasks": [T]})


def test_prompt_file_is_recorded(tmp_path):
    (tmp_path / "p.md").write_text("hello")
    pl = planmod.load(str(write_plan(tmp_path, [{"id": "a", "prompt_file": "p.md"}], goal="g", defaults={"agent": "x"})))
    assert pl.task("a").prompt_file == "p.md" and pl.task("a").prompt == "hello"


def test_goal_from_an_invalid_file_name():
    with pytest.raises(PlanError, match=r'goal id from the file name "a b" is not a valid id; set "goal" in the plan$'):
        planmod.parse(json.dumps({"tasks": [T]}).encode(), shown="a b.json", source="/p/a b.json", default_goal="a b")


def test_an_inline_prompt_over_the_limit():
    big = "x" * (planmod.MAX_PROMPT_BYTES + 1)
    assert f"tasks[0].prompt: prompt is longer than {planmod.MAX_PROMPT_BYTES} bytes" in _err({"tasks": [dict(T, prompt=big)]})
    assert len(_ok({"tasks": [dict(T, prompt=big[:-1])]}).task("a").prompt) == planmod.MAX_PROMPT_BYTES


def test_too_many_tasks_and_too_deep():
    m = _err(b'{"tasks": [' + b",".join([b"{}"] * (planmod.MAX_TASKS + 1)) + b"]}")
    assert m.endswith(f"tasks: {planmod.MAX_TASKS + 1} tasks; the limit is {planmod.MAX_TASKS}"), m
    assert _err(b'{"tasks": ' + b"[" * 100_000 + b"]" * 100_000 + b"}") == "dag.json: malformed JSON: nested too deeply"


def test_byte_level_errors_name_their_line():
    assert "the file is UTF-16 text" in _err(b"\xfe\xff\x00{")
    assert "the file is UTF-16 text" in _err(b"\xff\xfe{\x00")
    assert _err(b'{\n"tasks":\n [\xff]}').startswith("dag.json:3: malformed JSON: invalid UTF-8")
    m = _err(b'\n{"tasks": [],\n\n "lease": ' + b"9" * 5000 + b"\n}\n")
    assert m == "dag.json:4: malformed JSON: a number with 5000 digits", m
    assert _err(b'{"tasks": [],\n "lease": NaN}') == "dag.json:2: malformed JSON: NaN is not valid JSON"
