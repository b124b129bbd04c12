"""Issue 18: `when` conditions, the `skipped` state and trigger rules (docs/conditions.md)."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import events, run, task_dir, write_plan
from dagrun import conditions as C
from dagrun.scheduler import BLOCKED, SKIPPED, Scheduler, verdict


# ------------------------------------------------------------------------------ the evaluator (pure)
def _facts(outputs: dict, outcomes: dict | None = None) -> C.Facts:
    outcomes = outcomes or {}
    return C.Facts(lambda t: outcomes.get(t, "done"),
                   lambda t: outputs[t].encode() if isinstance(outputs.get(t), str) else None)


@pytest.mark.parametrize("expr, outputs, outcomes, want", [
    ({"output_of": "r", "contains": "NEEDS_FIX"}, {"r": "verdict: NEEDS_FIX\n"}, {}, True),
    ({"output_of": "r", "contains": "NEEDS_FIX"}, {"r": "LGTM\n"}, {}, False),
    ({"output_of": "r", "equals": "yes"}, {"r": "  yes\n"}, {}, True),
    ({"output_of": "r", "empty": True}, {"r": " \n"}, {}, True),
    ({"output_of": "r", "empty": True}, {}, {"r": "failed"}, True),          # no output reads as empty
    ({"json_of": "t", "path": "severity", "in": ["high", "critical"]}, {"t": '{"severity": "high"}'}, {}, True),
    ({"json_of": "t", "path": "severity", "in": ["high", "critical"]}, {"t": '{"severity": "low"}'}, {}, False),
    ({"json_of": "t", "path": "severity", "in": ["high"]}, {"t": "not json"}, {}, False),
    ({"json_of": "t", "path": "files.1.name", "equals": "b.py"}, {"t": '{"files": [{"name": "a.py"}, {"name": "b.py"}]}'},
     {}, True),
    ({"json_of": "t", "path": "n", "gt": 3}, {"t": '{"n": 5}'}, {}, True),
    ({"json_of": "t", "path": "n", "lt": 3}, {"t": '{"n": 5}'}, {}, False),
    ({"json_of": "t", "path": "n", "equals": 1}, {"t": '{"n": true}'}, {}, False),   # true is not 1
    ({"json_of": "t", "path": "x", "exists": False}, {"t": "{}"}, {}, True),
    ({"json_of": "t", "path": "", "contains": "b"}, {"t": '["a", "b"]'}, {}, True),
    ({"outcome_of": "a", "is": "failed"}, {}, {"a": "failed"}, True),
    ({"outcome_of": "a", "in": ["done", "skipped"]}, {}, {"a": "blocked"}, False),
    ({"not": {"output_of": "r", "contains": "x"}}, {"r": "y"}, {}, True),
    ({"all": [{"output_of": "r", "contains": "y"}, {"output_of": "r", "contains": "z"}]}, {"r": "y"}, {}, False),
    ({"any": [{"output_of": "r", "contains": "q"}, {"output_of": "r", "contains": "y"}]}, {"r": "y"}, {}, True),
])
def test_evaluate(expr, outputs, outcomes, want):
    C.check(expr, ["r", "t", "a"])
    ok, why = C.evaluate(expr, _facts(outputs, outcomes))
    assert ok is want and why


@pytest.mark.parametrize("expr, msg", [
    ({"eval": "1"}, 'unknown operator "eval"'),
    ({"output_of": "zz", "contains": "x"}, '"zz" is not a dependency of this task'),
    ({"output_of": "r", "contains": "x", "equals": "y"}, "needs exactly one of"),
    ({"output_of": "r", "matches": "x"}, 'unexpected "matches"'),
    ({"outcome_of": "r", "is": "exploded"}, 'unknown outcome "exploded"'),
    ({"json_of": "r", "path": 3, "equals": 1}, "expected a dotted path string"),
    ({"all": []}, '"all" needs a non-empty array'),
    ("output contains x", "expected a condition object"),
])
def test_check_refuses(expr, msg):
    with pytest.raises(C.ConditionError, match=msg.replace("(", r"\(")):
        C.check(expr, ["r"])


# ------------------------------------------------------------------------------ trigger rules (pure)
class T:
    def __init__(self, id, deps=(), trigger="all_success", soft=()):
        self.id, self.deps, self.soft_deps, self.priority, self.trigger, self.approval = id, deps, soft, 0, trigger, None


RULES = ("all_success", "all_done", "one_success", "one_failed", "none_failed")


def _diamond(second: str):
    """a -> (b done, c `second`) -> one join per rule, each with a dependent of its own."""
    tasks = [T("a"), T("b", ["a"]), T("c", ["a"])]
    for r in RULES:
        tasks += [T(f"j_{r}", ["b", "c"], r), T(f"after_{r}", [f"j_{r}"])]
    s = Scheduler(tasks)
    for t, o in (("a", "done"), ("b", "done"), ("c", second)):
        assert s.take() == t if t != "c" else True
        s.start(t)
        s.finish(t, o)
    return s


@pytest.mark.parametrize("second, want", [
    ("failed", {"all_success": "blocked", "all_done": "ready", "one_success": "ready", "one_failed": "ready",
                "none_failed": "blocked"}),
    ("skipped", {"all_success": "skipped", "all_done": "ready", "one_success": "ready", "one_failed": "skipped",
                 "none_failed": "ready"}),
    ("done", {"all_success": "ready", "all_done": "ready", "one_success": "ready", "one_failed": "skipped",
              "none_failed": "ready"}),
])
def test_each_rule_on_a_diamond_in_the_scheduler(second, want):
    s = _diamond(second)
    for r, st in want.items():
        assert s.state_of(f"j_{r}") == st, r
        if st in ("blocked", "skipped"):           # propagates to all_success dependents, like Airflow
            assert s.state_of(f"after_{r}") == st
            # (the same origin; j itself when its own rule skipped it: one_failed, none failed)
            assert s.blocked_by(f"after_{r}") == (s.blocked_by(f"j_{r}") or f"j_{r}")
    # a rebuild from the same facts derives the same states
    facts = {t: st for t, st in s.states().items() if st in ("done", "failed", "skipped")}
    assert Scheduler(_diamond_tasks(), facts).states() == s.states()


def _diamond_tasks():
    tasks = [T("a"), T("b", ["a"]), T("c", ["a"])]
    for r in RULES:
        tasks += [T(f"j_{r}", ["b", "c"], r), T(f"after_{r}", [f"j_{r}"])]
    return tasks


def test_one_success_waits_for_every_dependency_to_end():
    s = Scheduler([T("x"), T("y"), T("j", ["x", "y"], "one_success")])
    s.start("x")
    s.start("y")
    s.finish("x", "done")
    assert s.state_of("j") == "waiting"           # judged when all have ended: y may still add output
    s.finish("y", "failed")
    assert s.state_of("j") == "ready"
    assert not s.is_finished()


def test_one_success_with_no_dependency_done_is_skipped_unless_one_failed():
    """one_success whose dependencies all ended without a success: skipped when none of them
    failed (every one skipped), blocked when one did."""
    for second, want in (("skipped", "skipped"), ("failed", "blocked")):
        s = Scheduler([T("x"), T("y"), T("j", ["x", "y"], "one_success")])
        s.start("x")
        s.start("y")
        s.finish("x", "skipped")
        s.finish("y", second)
        assert s.state_of("j") == want, second
    assert verdict("one_success", 0, 0, 0, 2) == SKIPPED and verdict("one_success", 0, 0, 1, 1) == BLOCKED


def test_an_unknown_trigger_rule_is_named_in_the_error():
    with pytest.raises(ValueError, match="^unknown trigger rule 'some_success'$"):
        verdict("some_success", 0, 1, 0, 0)


def test_a_skip_by_ones_own_rule_names_no_task():
    s = Scheduler([T("x"), T("k", ["x"], "one_failed"), T("m", ["k"])])
    s.start("x")
    assert s.finish("x", "done") == [("x", "done", None), ("k", "skipped", None), ("m", "skipped", "k")]
    assert s.blocked_by("k") is None and s.blocked_by("m") == "k"
    assert Scheduler([T("x"), T("k", ["x"], "one_failed"), T("m", ["k"])], {"x": "done"}).blocked_by("k") is None


def test_a_rule_that_cannot_be_met_never_hangs():
    s = Scheduler([T("x"), T("j", ["x"], "one_success"), T("k", ["x"], "one_failed")])
    s.start("x")
    ch = s.finish("x", "cancelled")
    assert s.state_of("j") == "blocked" and s.blocked_by("j") == "x"
    assert s.state_of("k") == "ready"
    s.start("k")
    s.finish("k", "done")
    assert s.is_finished() and ("j", "blocked", "x") in ch


# ------------------------------------------------------------------------------ end to end
def _status(home, g):
    return {r["task"]: r for r in json.loads(run("status", g, "--json", home=home).stdout)["tasks"]}


def test_condition_false_skips_and_propagates_true_runs(tmp_path):
    home = tmp_path / "home"
    p = write_plan(tmp_path / "p", [
        {"id": "review", "prompt": "x", "agent": "echo 'LGTM, no NEEDS_FIX here' | tr -d ,"},
        {"id": "triage", "prompt": "x", "agent": """echo '{"severity": "low", "n": 2}'"""},
        {"id": "fix", "deps": ["review"], "prompt": "x", "agent": "echo fixed",
         "when": {"output_of": "review", "contains": "NEEDS_FIX"}},
        {"id": "no-fix", "deps": ["review"], "prompt": "x", "agent": "echo clean",
         "when": {"not": {"output_of": "review", "contains": "NEEDS_FIX"}}},
        {"id": "page", "deps": ["triage"], "prompt": "x", "agent": "echo paged",
         "when": {"json_of": "triage", "path": "severity", "in": ["high", "critical"]}},
        {"id": "after-page", "deps": ["page"], "prompt": "x", "agent": "echo after"},
        {"id": "notes", "soft_deps": ["page"], "prompt": "x", "agent": "echo notes"},
        {"id": "report", "deps": ["after-page", "fix"], "trigger": "none_failed", "prompt": "x", "agent": "echo rep"},
    ], goal="c")
    r = run("run", p, home=home)          # exit 0: done and skipped tasks only
    st = _status(home, "c")
    assert st["fix"]["state"] == "done" and (task_dir(home, "c", "fix") / "output").read_text() == "fixed\n"
    assert st["no-fix"]["state"] == "skipped" and "contains" in st["no-fix"]["reason"]
    assert st["page"]["state"] == "skipped" and '"low"' in st["page"]["reason"]
    assert st["after-page"]["state"] == "skipped" and st["after-page"]["skipped_by"] == "page"
    assert st["notes"]["state"] == "done" and st["report"]["state"] == "done"
    # the shell contract: a marker beside where `done` would be; no prompt, no output, no attempt
    pdir = task_dir(home, "c", "page")
    assert sorted(x.name for x in pdir.iterdir()) == ["skipped"]
    marker = json.loads((pdir / "skipped").read_text())
    assert marker["reason"].startswith("condition false:") and marker["when"]["json_of"] == "triage"
    assert not (task_dir(home, "c", "after-page")).exists() or \
        not (task_dir(home, "c", "after-page") / "skipped").exists()      # derived, like blocked
    summary = json.loads((home / "goals/c/summary.json").read_text())
    assert summary["outcome"] == "done" and summary["counts"] == {"done": 5, "skipped": 3}
    ev = [e for e in events(home, "c") if e.get("task") in ("page", "after-page") and e.get("status") == "skipped"]
    assert [e["task"] for e in ev] == ["page", "after-page"] and ev[1]["derived"] is True
    assert "skipped" in r.stdout + r.stderr
    # resume: a skipped task never runs
    run("run", "c", home=home)
    assert sorted(x.name for x in pdir.iterdir()) == ["skipped"]


def test_each_trigger_rule_on_a_diamond_with_one_failing_branch(tmp_path):
    home = tmp_path / "home"
    tasks = [{"id": "a", "prompt": "x", "agent": "echo a"},
             {"id": "ok", "deps": ["a"], "prompt": "x", "agent": "echo ok"},
             {"id": "bad", "deps": ["a"], "prompt": "x", "agent": "echo oops >&2; exit 3"}]
    for r in RULES:
        tasks.append({"id": f"j-{r}", "deps": ["ok", "bad"], "trigger": r, "prompt": "x", "agent": f"echo {r}"})
        tasks.append({"id": f"after-{r}", "deps": [f"j-{r}"], "prompt": "x", "agent": "echo after"})
    p = write_plan(tmp_path / "p", tasks, goal="d")
    run("run", p, home=home, check=1)
    st = _status(home, "d")
    want = {"all_success": "blocked", "all_done": "done", "one_success": "done", "one_failed": "done",
            "none_failed": "blocked"}
    for r, s in want.items():
        assert st[f"j-{r}"]["state"] == s, r
        assert st[f"after-{r}"]["state"] == s, r
        if s == "blocked":
            assert st[f"j-{r}"]["blocked_by"] == "bad"
    # all_done / one_failed runs see the failed branch as such in their prompt
    prompt = (task_dir(home, "d", "j-one_failed") / "prompt.md").read_text()
    assert "ok" in prompt and "bad" in prompt


def test_one_failed_is_skipped_when_nothing_failed_and_the_goal_is_done(tmp_path):
    home = tmp_path / "home"
    p = write_plan(tmp_path / "p", [
        {"id": "a", "prompt": "x", "agent": "echo a"},
        {"id": "on-failure", "deps": ["a"], "trigger": "one_failed", "prompt": "x", "agent": "echo alert"},
        {"id": "cleanup", "deps": ["a", "on-failure"], "trigger": "all_done", "prompt": "x", "agent": "echo c"},
        {"id": "after", "deps": ["on-failure"], "prompt": "x", "agent": "echo never"},
    ], goal="f")
    run("run", p, home=home)
    st = _status(home, "f")
    assert st["on-failure"]["state"] == "skipped" and st["cleanup"]["state"] == "done"
    assert not (task_dir(home, "f", "on-failure") / "skipped").exists()      # by its rule: no marker
    assert json.loads(run("status", "f", "--json", home=home).stdout)["state"] == "done"
    # nothing was skipped before it: no skipped_by (not itself), the reason is its rule; what
    # comes after it names it -- in status, the events and summary.json alike
    why = "trigger one_failed: no dependency failed"
    assert "skipped_by" not in st["on-failure"] and st["on-failure"]["reason"] == why
    assert st["after"]["skipped_by"] == "on-failure" and st["after"]["reason"] == "on-failure was skipped"
    ev = {e["task"]: e for e in events(home, "f") if e.get("status") == "skipped"}
    assert "skipped_by" not in ev["on-failure"] and ev["on-failure"]["reason"] == why and ev["on-failure"]["derived"]
    assert ev["after"]["skipped_by"] == "on-failure"
    summary = json.loads((home / "goals/f/summary.json").read_text())
    assert summary["skipped"] == [{"task": "on-failure"}, {"task": "after", "skipped_by": "on-failure"}]


def test_bash_protocol_claim_skips_a_false_condition(tmp_path):
    home = tmp_path / "home"
    p = write_plan(tmp_path / "p", [
        {"id": "a", "prompt": "x", "agent": "true"},
        {"id": "maybe", "deps": ["a"], "prompt": "x", "agent": "true", "when": {"output_of": "a", "contains": "GO"}},
        {"id": "z", "deps": ["a"], "prompt": "x", "agent": "true"},
    ], goal="b")
    run("submit", p, home=home)
    assert run("claim", "b", "--worker", "w", home=home).stdout.strip() == "a"
    run("complete", "b", "a", "--worker", "w", "--output", "-", home=home, input="no\n")
    assert run("claim", "b", "--worker", "w", home=home).stdout.strip() == "z"     # maybe was skipped
    assert (task_dir(home, "b", "maybe") / "skipped").exists()
    run("complete", "b", "z", "--worker", "w", home=home)
    run("claim", "b", "--worker", "w", home=home, check=1)                         # the goal ended


@pytest.mark.parametrize("task, msg", [
    ({"when": {"output_of": "a", "has": "x"}}, 'tasks[1].when.has: unexpected "has" beside "output_of"'),
    ({"when": {"eval": "__import__('os')"}}, 'tasks[1].when.eval: unknown operator "eval"'),
    ({"when": {"output_of": "b", "contains": "x"}}, '"b" is not a dependency of this task'),
    ({"when": {"all": [{"outcome_of": "a", "is": "great"}]}}, "when.all[0].is: unknown outcome"),
    ({"trigger": "some_success"}, "tasks[1].trigger: must be one of"),
    ({"deps": [], "trigger": "one_success"}, 'trigger "one_success" needs at least one task in deps'),
    ({"approval": {"timeout": "2h"}}, 'approval needs "prompt"'),
    ({"approval": {"prompt": "ok?", "timeout": "soon"}}, "tasks[1].approval.timeout: expected seconds or a duration"),
])
def test_bad_expressions_exit_2_with_one_line(tmp_path, task, msg):
    home = tmp_path / "home"
    t = {"id": "x", "deps": ["a"], "prompt": "x", "agent": "true", **task}
    p = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"}, t,
                                    {"id": "b", "prompt": "x", "agent": "true"}], goal="bad")
    r = run("submit", p, home=home, check=2)
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (home / "goals" / "bad").exists()
    frag = tmp_path / "frag.json"               # `dagrun add` validates the same way
    run("submit", write_plan(tmp_path / "q", [{"id": "a", "prompt": "x", "agent": "true"},
                                              {"id": "b", "prompt": "x", "agent": "true"}], goal="ok"), home=home)
    frag.write_text(json.dumps({"tasks": [t]}))
    r = run("add", "ok", frag, home=home, check=2)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_condition_and_trigger_are_in_the_schema_and_the_plan(tmp_path):
    from dagrun import plan as planmod
    schema = planmod.json_schema()
    task = schema["$defs"]["task"]["properties"]
    assert task["trigger"]["enum"] == list(RULES) and "condition" in schema["$defs"]
    assert task["approval"]["required"] == ["prompt"]
    jsonschema = pytest.importorskip("jsonschema")
    good = {"tasks": [{"id": "a", "prompt": "x", "agent": "true"},
                      {"id": "b", "deps": ["a"], "prompt": "x", "agent": "true", "trigger": "all_done",
                       "when": {"any": [{"json_of": "a", "path": "n", "gt": 1}, {"outcome_of": "a", "is": "done"}]},
                       "approval": {"prompt": "ok?", "timeout": "2h"}}]}
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tasks": [{"id": "b", "prompt": "x", "when": {"eval": "1"}}]}, schema)
    # the plan keeps them (plan.json round trip), and `dagrun plan` copes
    home = tmp_path / "home"
    p = write_plan(tmp_path / "p", good["tasks"], goal="s")
    run("submit", p, home=home)
    stored = json.loads((home / "goals/s/plan.json").read_text())
    b = stored["tasks"][1]
    assert b["trigger"] == "all_done" and b["when"]["any"][1]["outcome_of"] == "a"
    assert b["approval"] == {"prompt": "ok?", "timeout": 7200.0}
    assert "trigger" not in stored["tasks"][0] and "when" not in stored["tasks"][0]
    shutil.rmtree(home)


def test_graph_draws_gates_and_skipped_apart_and_replace_rejudges_a_changed_condition(tmp_path):
    home = tmp_path / "home"
    tasks = [{"id": "a", "prompt": "x", "agent": "echo no"},
             {"id": "maybe", "deps": ["a"], "prompt": "x", "agent": "echo ran",
              "when": {"output_of": "a", "contains": "yes"}},
             {"id": "gate", "deps": ["a"], "prompt": "x", "trigger": "all_done", "approval": {"prompt": "ok?"}}]
    p = write_plan(tmp_path / "p", tasks, goal="gr")
    run("submit", p, home=home)
    run("worker", "--until-idle", home=home)
    mm = run("graph", "gr", home=home).stdout
    assert 't2{{"gate<br/>all_done<br/>awaiting_approval"}}' in mm
    assert "classDef skipped" in mm and "stroke-dasharray" in mm and 't1["maybe<br/>when ...<br/>skipped"]' in mm
    dot = run("graph", "gr", "--format", "dot", home=home).stdout
    assert "shape=hexagon" in dot and 'style="rounded,filled,dashed"' in dot
    # a changed condition is a changed definition: the skipped task is judged again
    tasks[1]["when"] = {"output_of": "a", "contains": "no"}
    write_plan(tmp_path / "p", tasks, goal="gr")
    run("submit", "--replace", p, home=home)
    run("approve", "gr", "gate", home=home)
    run("run", "gr", home=home)
    assert (task_dir(home, "gr", "maybe") / "output").read_text() == "ran\n"


@pytest.mark.slow
def test_crash_at_every_step_of_a_skip_never_runs_the_skipped_task(tmp_path):
    """SIGKILL `dagrun run` before (and right after) each file-system step around the skip --
    claim, marker, claim removed, events -- then resume: the task whose condition is false is
    skipped exactly once and its agent never starts."""
    ran = tmp_path / "RAN"
    tasks = [{"id": "a", "prompt": "x", "agent": "echo no"},
             {"id": "maybe", "deps": ["a"], "prompt": "x", "agent": f"touch {ran}; echo ran",
              "when": {"output_of": "a", "contains": "yes"}},
             {"id": "after", "deps": ["maybe"], "prompt": "x", "agent": f"touch {ran}"},
             {"id": "soft", "soft_deps": ["maybe"], "prompt": "x", "agent": "echo soft"}]
    p = write_plan(tmp_path / "p", tasks, goal="cr")
    env = {"DAGRUN_CLAIM_GRACE": "0.2"}
    trace = tmp_path / "trace"
    run("run", p, home=tmp_path / "clean", env={"DAGRUN_STEP_TRACE": str(trace)})
    steps = [int(line.split()[0]) for line in trace.read_text().splitlines() if "/tasks/maybe" in line]
    assert len(steps) >= 4, trace.read_text()         # its folder, claim, marker (tmp + publish), rmdir
    points = [f"{k}{w}" for k in range(steps[0] - 1, steps[-1] + 4) for w in ("", ":after")]
    for at in points:
        home = tmp_path / f"h{at.replace(':', '-')}"
        r = run("run", p, home=home, check=False, env={**env, "DAGRUN_CRASH_AT": at})
        assert r.returncode == -9, (at, r.returncode, r.stderr)     # killed at that step
        run("run", p, home=home, env=env)       # resumes (submits first if the crash came before)
        assert not ran.exists(), at
        assert (task_dir(home, "cr", "maybe") / "skipped").exists(), at
        assert not (task_dir(home, "cr", "maybe") / "claim").exists(), at
        st = _status(home, "cr")
        assert st["after"]["state"] == "skipped" and st["soft"]["state"] == "done", at
        skips = [e for e in events(home, "cr") if e.get("task") == "maybe" and e.get("status") == "skipped"]
        assert len(skips) <= 1, at        # judged and committed once (its event may die with the crash)
        shutil.rmtree(home)
