"""Plan validation: one table row per error class; each is one precise line, exit 2, nothing written."""
from __future__ import annotations

import json
import os

import pytest

from conftest import REPO, run, write_plan
from dagrun import plan as planmod
from dagrun.errors import PlanError

OK_TASK = {"id": "a", "prompt": "p"}
AGENT = {"agent": "true"}

# (name, plan document or raw text, extra files, substring expected in the error)
CASES = [
    ("malformed json", '{"tasks": [', {}, "dag.json:1:"),
    ("trailing comma", '{"tasks": [{"id": "a", "prompt": "p",}]}', {}, "malformed JSON"),
    ("empty file", "", {}, "the file is empty"),
    ("bom", "\ufeff{}", {}, "byte-order mark"),
    ("not an object", "[1, 2]", {}, "expected an object, got an array"),
    ("no tasks", {"defaults": AGENT}, {}, 'missing "tasks"'),
    ("tasks not array", {"tasks": {}}, {}, "tasks: expected an array of tasks"),
    ("no tasks in array", {"tasks": []}, {}, "at least one task"),
    ("unknown top field", {"tasks": [OK_TASK], "defaults": AGENT, "paralel": 3}, {}, 'unknown field "paralel"'),
    ("unknown task field", {"tasks": [{**OK_TASK, "dep": ["x"]}], "defaults": AGENT}, {}, 'tasks[0].dep: unknown field "dep"'),
    ("unknown defaults field", {"tasks": [OK_TASK], "defaults": {**AGENT, "tiemout": 3}}, {}, 'defaults.tiemout: unknown field'),
    ("bad task id slash", {"tasks": [{"id": "a/b", "prompt": "p"}], "defaults": AGENT}, {}, 'tasks[0].id: invalid id "a/b"'),
    ("bad task id dotdot", {"tasks": [{"id": "..", "prompt": "p"}], "defaults": AGENT}, {}, 'invalid id ".."'),
    ("bad task id unicode", {"tasks": [{"id": "tаsk", "prompt": "p"}], "defaults": AGENT}, {}, "invalid id"),
    ("bad task id newline", {"tasks": [{"id": "a\nb", "prompt": "p"}], "defaults": AGENT}, {}, "invalid id"),
    ("bad goal id", {"goal": "my goal", "tasks": [OK_TASK], "defaults": AGENT}, {}, 'goal: invalid id "my goal"'),
    ("duplicate ids", {"tasks": [OK_TASK, {"id": "a", "prompt": "q"}], "defaults": AGENT}, {},
     'tasks[1].id: duplicate task id "a" (first at tasks[0])'),
    ("unknown dependency", {"tasks": [OK_TASK, {"id": "b", "prompt": "q", "deps": ["zz"]}], "defaults": AGENT}, {},
     'tasks[1].deps[0]: unknown dependency "zz" (asked for by task "b")'),
    ("dep listed twice", {"tasks": [OK_TASK, {"id": "b", "prompt": "q", "deps": ["a", "a"]}], "defaults": AGENT}, {},
     '"a" is listed twice'),
    ("cycle of 1", {"tasks": [{"id": "a", "prompt": "p", "deps": ["a"]}], "defaults": AGENT}, {},
     "dependency cycle: a -> a"),
    ("cycle of 3", {"tasks": [{"id": "a", "prompt": "p", "deps": ["c"]}, {"id": "b", "prompt": "p", "deps": ["a"]},
                              {"id": "c", "prompt": "p", "deps": ["b"]}], "defaults": AGENT}, {},
     "dependency cycle: a -> c -> b -> a"),
    ("both prompt and prompt_file", {"tasks": [{**OK_TASK, "prompt_file": "x.md"}], "defaults": AGENT}, {},
     'exactly one of "prompt" or "prompt_file" (it has both)'),
    ("neither prompt", {"tasks": [{"id": "a"}], "defaults": AGENT}, {}, 'exactly one of "prompt" or "prompt_file"'),
    ("missing prompt_file", {"tasks": [{"id": "a", "prompt_file": "nope.md"}], "defaults": AGENT}, {},
     'tasks[0].prompt_file: cannot read "nope.md"'),
    ("prompt_file outside", {"tasks": [{"id": "a", "prompt_file": "../outside.md"}], "defaults": AGENT}, {},
     "resolves outside the plan's folder"),
    ("prompt_file absolute", {"tasks": [{"id": "a", "prompt_file": "/etc/hostname"}], "defaults": AGENT}, {},
     "must be relative to the plan's folder"),
    ("no agent", {"tasks": [OK_TASK]}, {}, 'task "a" has no agent'),
    ("negative timeout", {"tasks": [{**OK_TASK, "timeout": -5}], "defaults": AGENT}, {}, "tasks[0].timeout: must be greater than 0"),
    ("huge timeout", {"tasks": [{**OK_TASK, "timeout": 1e12}], "defaults": AGENT}, {}, "tasks[0].timeout: must be at most"),
    ("timeout string", {"tasks": [{**OK_TASK, "timeout": "10"}], "defaults": AGENT}, {}, "expected a number, got a string"),
    ("retries bool", {"tasks": [{**OK_TASK, "retries": True}], "defaults": AGENT}, {}, "expected an integer, got a boolean"),
    ("retries fraction", {"tasks": [{**OK_TASK, "retries": 1.5}], "defaults": AGENT}, {}, "expected an integer"),
    ("deps not list", {"tasks": [{**OK_TASK, "deps": "b"}], "defaults": AGENT}, {}, "expected an array of task ids"),
    ("dep not string", {"tasks": [{**OK_TASK, "deps": [1]}], "defaults": AGENT}, {}, "tasks[0].deps[0]: expected a task id"),
    ("bad enum", {"tasks": [OK_TASK], "defaults": AGENT, "on_failure": "explode"}, {}, 'on_failure: must be one of "continue", "stop"'),
    ("dup key", '{"tasks": [{"id": "a", "id": "b", "prompt": "p"}], "defaults": {"agent": "true"}}', {}, 'duplicate key "id"'),
    ("nan", '{"tasks": [{"id": "a", "prompt": "p", "timeout": NaN}], "defaults": {"agent": "true"}}', {}, "NaN"),
    ("empty agent", {"tasks": [{**OK_TASK, "agent": "  "}]}, {}, "tasks[0].agent: must not be empty"),
    ("soft and hard", {"tasks": [OK_TASK, {"id": "b", "prompt": "q", "deps": ["a"], "soft_deps": ["a"]}],
                       "defaults": AGENT}, {}, '"a" is in both deps and soft_deps'),
]


def _write(plans, doc, files):
    for name, text in files.items():
        (plans / name).write_text(text)
    p = plans / "dag.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=1, ensure_ascii=False))
    return p


@pytest.mark.parametrize("name,doc,files,expect", CASES, ids=[c[0] for c in CASES])
def test_invalid_plans_are_one_precise_line(plans, home, name, doc, files, expect):
    p = _write(plans, doc, files)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert expect in str(ei.value)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("cmd", ["validate", "submit", "run"])
def test_cli_rejects_invalid_plan_with_exit_2_and_writes_nothing(plans, home, cmd):
    p = _write(plans, {"tasks": [OK_TASK, {"id": "b", "prompt": "q", "deps": ["zz"]}], "defaults": AGENT}, {})
    r = run(cmd, p, home=home, check=2)
    assert r.stderr.startswith("dagrun: ") and r.stderr.count("\n") == 1
    assert 'unknown dependency "zz"' in r.stderr
    assert "Traceback" not in r.stderr
    assert not home.exists()


LONE_SURROGATES = [
    ("description", '{"defaults": {"agent": "true"}, "tasks": [{"id": "a", "prompt": "p", "description": "x\\ud800"}]}',
     "tasks[0].description: contains an unpaired UTF-16 surrogate escape"),
    ("env key", '{"defaults": {"agent": "true"}, "tasks": [{"id": "a", "prompt": "p", "env": {"K\\udc00": "v"}}]}',
     'tasks[0].env: the key "K\\udc00" contains an unpaired UTF-16 surrogate escape'),
    ("defaults", '{"defaults": {"agent": "true", "description": "\\udbff"}, "tasks": [{"id": "a", "prompt": "p"}]}',
     "defaults.description: contains an unpaired UTF-16 surrogate escape")]


@pytest.mark.parametrize("where,text,expect", LONE_SURROGATES)
def test_a_lone_surrogate_is_refused_by_the_validator_naming_where(plans, where, text, expect):
    """The validator itself (what mutation testing sees: the test below runs the binary):
    the one line names the JSON path, and for a key the key."""
    p = plans / "dag.json"
    p.write_text(text)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value) == f"{p}:1: {expect}"


@pytest.mark.parametrize("where,text,expect", LONE_SURROGATES)
def test_a_lone_surrogate_anywhere_is_refused_before_anything_is_written(plans, home, where, text, expect):
    """Such a string can never be written as UTF-8: submit used to accept it and then die
    with an internal error writing plan.json. Now every command refuses it, one line, exit 2."""
    p = plans / "dag.json"
    p.write_text(text)
    for cmd in ("validate", "submit"):
        r = run(cmd, p, home=home, check=2)
        assert r.stderr == f"dagrun: {p}:1: {expect}\n"
    assert not (home / "goals" / "dag").exists()
    run("submit", _write(plans, {"tasks": [OK_TASK], "defaults": AGENT}, {}), home=home)
    frag = plans / "frag.json"
    frag.write_text(text.replace('"id": "a"', '"id": "z"'))
    r = run("add", "dag", frag, home=home, check=2)
    assert "contains an unpaired UTF-16 surrogate escape" in r.stderr and r.stderr.count("\n") == 1


def test_error_line_points_at_the_line(plans):
    text = '{\n "defaults": {"agent": "true"},\n "tasks": [\n  {"id": "a", "prompt": "p"},\n  {"id": "b",\n   "prompt": "q",\n   "timeout": -1}\n ]\n}\n'
    p = plans / "dag.json"
    p.write_text(text)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert f"{p}:7: tasks[1].timeout" in str(ei.value)


def test_cycle_of_1000_is_reported_without_recursion(plans):
    n = 1000
    tasks = [{"id": f"t{i}", "prompt": "p", "deps": [f"t{(i + 1) % n}"]} for i in range(n)]
    p = write_plan(plans, tasks, defaults=AGENT)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    msg = str(ei.value)
    assert "dependency cycle: t0 -> t1 -> t2" in msg and msg.endswith("-> t0")


@pytest.mark.parametrize("n,shown", [
    (12, " -> ".join(f"t{i}" for i in range(12)) + " -> t0"),
    (13, "t0 -> t1 -> t2 -> t3 -> ... 6 more of 13 tasks ... -> t10 -> t11 -> t12 -> t0"),
    (20, "t0 -> t1 -> t2 -> t3 -> ... 13 more of 20 tasks ... -> t17 -> t18 -> t19 -> t0")])
def test_a_long_cycle_is_shortened_and_says_how_many_tasks_it_left_out(plans, n, shown):
    """Up to 12 tasks the whole cycle; past that its first 4 and last 3 tasks and the count
    of the ones between -- one line, the count exact."""
    tasks = [{"id": f"t{i}", "prompt": "p", "deps": [f"t{(i + 1) % n}"]} for i in range(n)]
    with pytest.raises(PlanError) as ei:
        planmod.load(str(write_plan(plans, tasks, defaults=AGENT)))
    assert str(ei.value).endswith(": tasks[0]: dependency cycle: " + shown), str(ei.value)


def test_a_prompt_file_over_the_limit_is_refused_by_name_and_size(plans):
    big = plans / "big.md"
    with open(big, "wb") as f:
        f.truncate(planmod.MAX_PROMPT_BYTES + 1)          # sparse: nothing written
    with pytest.raises(PlanError) as ei:
        planmod.load(str(write_plan(plans, [{"id": "a", "prompt_file": "big.md"}], defaults=AGENT)))
    assert str(ei.value).endswith(f': tasks[0].prompt_file: "big.md" is {planmod.MAX_PROMPT_BYTES + 1} bytes; '
                                  f"the limit is {planmod.MAX_PROMPT_BYTES}"), str(ei.value)


def test_a_prompt_file_that_grows_past_the_limit_after_it_was_measured_is_refused(plans, monkeypatch):
    """The size is checked by stat, then the file is read: what grew in between is caught by the
    read itself (MAX_PROMPT_BYTES + 1 bytes read), not taken as a prompt cut at the limit. The
    growth is simulated: open hands the validator more bytes than the stat saw."""
    import io
    (plans / "x.md").write_text("hi")
    p = write_plan(plans, [{"id": "a", "prompt_file": "x.md"}], defaults=AGENT)

    def grown(path, *a, **k):
        if str(path).endswith("x.md"):
            return io.BytesIO(b"x" * (planmod.MAX_PROMPT_BYTES + 5))
        return open(path, *a, **k)
    monkeypatch.setattr(planmod, "open", grown, raising=False)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).endswith(f': tasks[0].prompt_file: "x.md" grew past the limit of {planmod.MAX_PROMPT_BYTES} '
                                  "bytes while it was read"), str(ei.value)


def test_a_prompt_file_that_cannot_be_opened_is_named_in_one_line(plans, monkeypatch):
    """open() failing after the stat (EACCES for a user without read permission; the suite
    may run as root, whom no mode stops, so open is made to fail as it would)."""
    (plans / "x.md").write_text("hi")
    p = write_plan(plans, [{"id": "a", "prompt_file": "x.md"}], defaults=AGENT)

    def denied(path, *a, **k):
        if str(path).endswith("x.md"):
            raise PermissionError(13, "Permission denied")
        return open(path, *a, **k)
    monkeypatch.setattr(planmod, "open", denied, raising=False)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).endswith(': tasks[0].prompt_file: cannot read "x.md": Permission denied'), str(ei.value)


def test_a_fragment_is_validated_like_a_plan_cycles_through_soft_dependencies_included(plans):
    """parse_fragment (`dagrun add`): new tasks may depend on the goal's tasks; a cycle among
    them, also one closed by a soft dependency, an unknown dependency and an id that exists
    already are refused, one line each."""
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "p"}], defaults=AGENT)))

    def add(tasks):
        raw = json.dumps({"defaults": AGENT, "tasks": tasks}).encode()
        return planmod.parse_fragment(raw, shown="frag.json", plan=pl)
    got = add([{"id": "x", "prompt": "p", "deps": ["a"]}, {"id": "y", "prompt": "p", "soft_deps": ["x"]}])
    assert [t.id for t in got.tasks] == ["a", "x", "y"] and got.task("y").soft_deps == ("x",)
    for tasks, expect in [
        ([{"id": "x", "prompt": "p", "deps": ["y"]}, {"id": "y", "prompt": "p", "soft_deps": ["x"]}],
         "frag.json:1: tasks[0]: dependency cycle: x -> y -> x"),
        ([{"id": "x", "prompt": "p", "deps": ["zz"]}],
         'frag.json:1: tasks[0].deps[0]: unknown dependency "zz" (asked for by task "x")'),
        ([{"id": "a", "prompt": "p"}], 'frag.json:1: tasks[0].id: task id "a" already exists in goal "dag"')]:
        with pytest.raises(PlanError) as ei:
            add(tasks)
        assert str(ei.value) == expect


def test_valid_plan_normalises_defaults_and_prompt_file(plans):
    (plans / "prompts").mkdir()
    (plans / "prompts" / "x.md").write_text("from a file\n")
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt_file": "prompts/x.md", "deps": ["a"],
                                                       "agent": "cat", "retries": 2}],
                   defaults={"agent": "true", "timeout": 30})
    pl = planmod.load(str(p))
    assert pl.goal == "dag"
    a, b = pl.tasks
    assert a.agent == "true" and a.timeout == 30.0 and a.retries == 0
    assert b.agent == "cat" and b.prompt == "from a file\n" and b.retries == 2 and b.deps == ("a",)
    assert b.workdir == str(plans)
    assert planmod.Plan.from_dict(json.loads(pl.canonical())) == pl


def test_validate_prints_summary(plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q", "deps": ["a"]}], defaults=AGENT)
    r = run("validate", p)
    assert r.stdout.strip() == "ok: goal dag: 2 tasks, 1 dependencies, longest path 2 tasks"
    r = run("validate", "--json", p)
    assert json.loads(r.stdout)["tasks"] == 2


def test_shipped_schema_is_generated_from_the_field_table():
    with open(planmod.SCHEMA_PATH) as f:
        assert f.read() == planmod.schema_text(), "run: python -c 'from dagrun import plan; open(plan.SCHEMA_PATH,\"w\").write(plan.schema_text())'"
    r = run("schema")
    assert json.loads(r.stdout)["title"].startswith("dagrun plan")


def test_schema_agrees_with_validator_on_examples_and_cases(plans):
    jsonschema = pytest.importorskip("jsonschema")
    schema = planmod.json_schema()
    for ex in ["examples/add-auth/dag.json", "examples/minimal/dag.json", "examples/code-edit/dag.json"]:
        doc = json.loads((REPO / ex).read_text())
        jsonschema.validate(doc, schema)
        planmod.load(str(REPO / ex))
    # type and field errors are caught by both
    for name, doc, files, _ in CASES:
        if isinstance(doc, dict) and name in ("unknown top field", "unknown task field", "timeout string",
                                              "retries bool", "negative timeout", "bad enum", "deps not list",
                                              "bad task id slash", "both prompt and prompt_file", "no tasks in array"):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(doc, schema)


def test_plan_file_that_does_not_exist(home, plans):
    r = run("validate", plans / "nope.json", check=2)
    assert "cannot read plan" in r.stderr and "No such file" in r.stderr


def test_huge_dependency_list_is_fine(plans):
    n = 10_000
    tasks = [{"id": f"t{i}", "prompt": "p"} for i in range(n)] + \
            [{"id": "sink", "prompt": "p", "deps": [f"t{i}" for i in range(n)]}]
    p = write_plan(plans, tasks, defaults=AGENT)
    pl = planmod.load(str(p))
    assert len(pl.task("sink").deps) == n


def test_plan_too_large_is_refused_before_reading(plans, monkeypatch):
    monkeypatch.setattr(planmod, "MAX_PLAN_BYTES", 100)
    p = write_plan(plans, [{"id": "a", "prompt": "x" * 200}], defaults=AGENT)
    with pytest.raises(PlanError, match="the limit is 100 bytes"):
        planmod.load(str(p))


def test_symlinked_prompt_file_pointing_outside_is_refused(plans, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    os.symlink(secret, plans / "link.md")
    p = write_plan(plans, [{"id": "a", "prompt_file": "link.md"}], defaults=AGENT)
    with pytest.raises(PlanError, match="resolves outside"):
        planmod.load(str(p))


def test_the_plans_own_runner_is_every_tasks_runner_unless_the_task_names_one(plans):
    """`"runner"` at the top of a plan is the default of every task (what the validator does
    in-process: the cluster tests that also show it run the binary, which mutation testing
    cannot see); a task's own `runner` wins; a bad name is refused naming the field."""
    p = write_plan(plans, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "runner": "local"}],
                   defaults=AGENT, runner="slurm")
    pl = planmod.load(str(p))
    assert {t.id: t.runner for t in pl.tasks} == {"a": "slurm", "b": "local"}
    p = write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT)
    assert [t.runner for t in planmod.load(str(p)).tasks] == ["local"]
    p = write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT, runner="k8s")
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if '"runner"' in t)
    assert str(ei.value) == f'{p}:{line}: runner: must be one of "local", "slurm", "ray", got "k8s"'


def test_every_top_level_option_reaches_the_plan_and_each_has_its_default(plans):
    """What the validator hands on from the top of the plan, in-process (the scheduling,
    budget and lease tests that show each option's effect run the binary)."""
    p = write_plan(plans, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}], defaults=AGENT,
                   goal="g1", description="d", max_parallel=3, on_failure="stop", lease=12.5,
                   budget={"usd": 2.5}, resources={"gpu": 2}, agent_limits={"claude": 1}, tenant="t1",
                   max_tasks=40, weight=2.5, aging=7)
    pl = planmod.load(str(p))
    got = {k: getattr(pl, k) for k in ("goal", "description", "max_parallel", "on_failure", "lease", "budget",
                                       "capacities", "agent_limits", "tenant", "max_tasks", "weight", "aging")}
    assert got == {"goal": "g1", "description": "d", "max_parallel": 3, "on_failure": "stop", "lease": 12.5,
                   "budget": {"usd": 2.5}, "capacities": {"gpu": 2}, "agent_limits": {"claude": 1},
                   "tenant": "t1", "max_tasks": 40, "weight": 2.5, "aging": 7.0}
    assert [t.id for t in pl.tasks] == ["a", "b"]
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT)))
    got = {k: getattr(pl, k) for k in ("goal", "description", "max_parallel", "on_failure", "lease", "budget",
                                       "capacities", "agent_limits", "tenant", "max_tasks", "weight", "aging")}
    assert got == {"goal": "dag", "description": None, "max_parallel": None, "on_failure": "continue",
                   "lease": planmod.DEFAULT_LEASE, "budget": None, "capacities": None, "agent_limits": None,
                   "tenant": None, "max_tasks": None, "weight": 1.0, "aging": planmod.DEFAULT_AGING}
    assert isinstance(pl.lease, float) and isinstance(pl.weight, float) and isinstance(pl.aging, float)


def test_a_bad_plan_hook_is_named_by_its_path_under_hooks(plans):
    """The plan-level hooks are checked under the path `hooks` (in-process; the hook tests run
    the binary)."""
    for hooks, said in (({"bogus": "x"}, 'hooks.bogus: unknown hook event "bogus" (known: '),
                        ({"on_done": 5}, "hooks.on_done: expected an array of hooks, got a number")):
        p = write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT, hooks=hooks)
        with pytest.raises(PlanError) as ei:
            planmod.load(str(p))
        line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if f'"{next(iter(hooks))}"' in t)
        assert str(ei.value).startswith(f"{p}:{line}: {said}")


@pytest.mark.parametrize("top,task_res,said", [
    ({"resources": {"gpu": 1}}, {"gpu": 2},
     'tasks[1].resources.gpu: task "b" asks for 2 units of "gpu" but the plan\'s capacity of "gpu" is 1: it could never start'),
    ({"agent_limits": {"true": 1}}, {"agent.true": 2},
     'tasks[1].resources.agent.true: task "b" asks for 2 units of "agent.true" but the plan\'s agent limit of true is 1: '
     'it could never start'),
    ({"max_tasks": 1}, None, "max_tasks: 1 is less than the plan's 2 tasks"),
])
def test_a_plan_whose_own_limits_a_task_can_never_fit_is_refused_naming_the_task(plans, top, task_res, said):
    """The plan's capacities and agent limits are checked against every task's needs, and
    max_tasks against the plan's size, in-process (the resource tests run the binary)."""
    b = {"id": "b", "prompt": "y", **({"resources": task_res} if task_res else {})}
    p = write_plan(plans, [{"id": "a", "prompt": "x"}, b], defaults=AGENT, **top)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).split(": ", 1)[1] == said and str(ei.value).startswith(f"{p}:")


def test_a_serial_group_against_the_dependencies_is_refused_naming_the_first_task_of_it(plans):
    """In-process, with a task before the group (the serial tests run the binary)."""
    p = write_plan(plans, [{"id": "z", "prompt": "x"}, {"id": "a", "prompt": "x", "serial": "s", "deps": ["b"]},
                           {"id": "b", "prompt": "x", "serial": "s"}], defaults=AGENT)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).split(": ", 1)[1] == ('tasks[1].serial: serial group "s" runs in plan order, but that order '
                                               'contradicts the dependencies: dependency cycle: a -> b -> a')


def test_a_plan_may_hold_exactly_its_max_tasks(plans):
    p = write_plan(plans, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}], defaults=AGENT, max_tasks=2)
    assert planmod.load(str(p)).max_tasks == 2


# ---- issue 21 (seventh session): the pure functions behind agent limits, resources and digests,
# in-process (their callers' tests run the binary; mutant_sweep.py found them unchecked here)

@pytest.mark.parametrize("agent,key", [
    ("@claude --model x", "claude"), ("/usr/bin/claude -p", "claude"), ("  codex  exec  ", "codex"),
    ("@", None), ("/usr/bin/", None), ("", None), ("   ", None), (None, None), ("a b/c", "a"),
    ("@bad!name", None)])
def test_agent_key_is_the_preset_or_the_program_name_or_none(agent, key):
    """The name an agent limit counts a task under (plan.agent_key)."""
    assert planmod.agent_key(agent) == key


def _task(plans, **fields):
    p = write_plan(plans, [{"id": "a", "prompt": "x", **fields}], defaults=AGENT)
    return planmod.load(str(p)).task("a")


def test_a_task_needs_its_whole_positive_units_but_mem_its_mutex_and_one_unit_of_its_agent(plans):
    """Task.needs: what the scheduler counts against the capacities (the resource tests run the
    binary). A float, zero or negative unit and `mem` are never counted; a mutex is at least 1
    (a resource of the same name keeps its units); the agent's unit is one."""
    t = _task(plans, agent="/usr/bin/claude -p", mutex="m")
    assert t.replace(resources={"gpu": 2, "one": 1, "mem": 4096, "zero": 0, "neg": -1, "half": 1.5}).needs() == \
        {"gpu": 2, "one": 1, "m": 1, "agent.claude": 1}
    assert t.replace(resources={"m": 3}).needs() == {"m": 3, "agent.claude": 1}
    assert t.replace(resources={"agent.claude": 2}, mutex=None).needs() == {"agent.claude": 2}
    assert t.replace(agent="@", mutex=None).needs() == {}


def test_a_task_s_digest_is_computed_once_per_task_object(plans, monkeypatch):
    """definition_digest is remembered per Task (an engine asks three times per attempt)."""
    calls = []
    real = planmod.Task._digest
    monkeypatch.setattr(planmod.Task, "_digest", lambda self: calls.append(self.id) or real(self))
    planmod._DIGESTS.clear()
    t = _task(plans)
    first = t.definition_digest()
    assert [t.definition_digest(), t.definition_digest()] == [first, first] and calls == ["a"]
    u = t.replace(id="b")
    assert u.definition_digest() == first and calls == ["a", "b"]


def _digest_of(t, *extra):
    import hashlib
    import orjson
    d = [t.prompt, t.agent, list(t.declared_deps), list(t.soft_deps), t.workdir, t.context_limit,
         t.retry_context, *extra]
    return hashlib.sha256(orjson.dumps(d)).hexdigest()[:16]


def test_the_definition_digest_holds_exactly_what_decides_the_result(plans):
    """A done task is kept when a plan is replaced iff its definition_digest is unchanged, so
    the digest of a plan written before a field existed must not change: each optional part
    is appended only when used, in this form."""
    t = _task(plans)
    assert t.workspace is True and t.definition_digest() == _digest_of(t)
    assert t.replace(workspace=False).definition_digest() == _digest_of(t, "no-workspace")
    assert t.replace(workspace=True).definition_digest() == _digest_of(t)
    w = t.replace(workspace=True)
    assert w.replace(for_each={"from": "d", "as": "x", "max": 3}).definition_digest() == \
        _digest_of(w, ["for_each", "d", "x"])
    assert w.replace(check=("true", "-x")).definition_digest() == _digest_of(w, ["true", "-x"])
    for when, trigger, approval in (("a.done", "all_success", None), (None, "one_success", None),
                                    (None, "all_success", {"prompt": "ok?"})):
        assert w.replace(when=when, trigger=trigger, approval=approval).definition_digest() == \
            _digest_of(w, [when, trigger, approval])


def test_a_task_s_check_and_check_timeout_reach_the_task(plans):
    """The acceptance check knobs, from the task and from the defaults (the check tests run the binary)."""
    t = _task(plans, check=["true", "-x"], check_timeout=7)
    assert (t.check, t.check_timeout) == (("true", "-x"), 7.0)
    p = write_plan(plans, [{"id": "a", "prompt": "x"}], defaults={**AGENT, "check": ["false"], "check_timeout": 3})
    t = planmod.load(str(p)).task("a")
    assert (t.check, t.check_timeout) == (("false",), 3.0)
    assert (_task(plans).check, _task(plans).check_timeout) == (None, 600.0)


# (task fields, top-level fields, the end of the one-line error): the validator's words for a
# bad value, path and all, in-process (test_invalid_plans_are_one_precise_line checks a
# substring; these were checked only through the binary or not at all)
BAD_VALUES = [
    ({"cache": "yes"}, {}, "tasks[0].cache: expected true or false, got a string"),
    ({"estimate": 5}, {}, 'tasks[0].estimate: expected an object like {"seconds": 120, "usd": 0.5}, got a number'),
    ({"estimate": {"minutes": 1}}, {}, 'tasks[0].estimate.minutes: unknown field "minutes" in estimate (known: seconds, usd)'),
    ({"estimate": {"usd": -1}}, {}, "tasks[0].estimate.usd: expected a non-negative number, got -1"),
    ({"estimate": {"usd": True}}, {}, "tasks[0].estimate.usd: expected a non-negative number, got true"),
    ({"estimate": {"seconds": "9"}}, {}, 'tasks[0].estimate.seconds: expected a non-negative number, got "9"'),
    ({}, {"budget": 5}, 'budget: expected an object like {"usd": 10, "tokens": 2000000}, got a number'),
    ({}, {"budget": {"usd": 0}}, "budget.usd: expected a positive number, got 0"),
    ({}, {"budget": {"usd": True}}, "budget.usd: expected a positive number, got true"),
    ({}, {"budget": {"usd": "1"}}, 'budget.usd: expected a positive number, got "1"'),
    ({}, {"budget": {"tokens": 1.5}}, "budget.tokens: expected a whole number of tokens, got 1.5"),
    ({}, {"budget": {}}, 'budget: an empty budget limits nothing: give "usd" and/or "tokens"'),
    ({"check": "true"}, {}, "tasks[0].check: expected an array of strings (a program and its arguments; no shell), got a string"),
    ({"check": []}, {}, "tasks[0].check: must name a program: an empty array runs nothing"),
    ({"check": ["true", 5]}, {}, "tasks[0].check[1]: expected a string, got a number"),
    ({"check": ["true", "a\u0000b"]}, {}, "tasks[0].check[1]: contains a NUL character"),
    ({"check": [" ", "x"]}, {}, "tasks[0].check[0]: the program name must not be empty"),
    ({}, {"budget": {"eur": 1}}, 'budget.eur: unknown field "eur" in budget (known: usd, tokens)'),
    ({"resources": 5}, {}, 'tasks[0].resources: expected an object of resource name -> units, like {"gpu": 1}, got a number'),
    ({"resources": {"bad name": 1}}, {}, 'tasks[0].resources.bad name: invalid resource name "bad name": use 1-128 of '
     "A-Z a-z 0-9 . _ - , starting with a letter or digit"),
    ({"resources": {"gpu": -1}}, {}, "tasks[0].resources.gpu: must be at least 0, got -1"),
    ({"resources": {"gpu": 1.5}}, {}, "tasks[0].resources.gpu: expected an integer, got 1.5"),
    ({"resources": {"mem": "lots"}}, {}, 'tasks[0].resources.mem: expected megabytes or a size like "512M" or "2G", got "lots"'),
    ({"resources": {"mem": True}}, {}, 'tasks[0].resources.mem: expected megabytes or a size like "512M" or "2G", got true'),
    ({}, {"resources": 5}, 'resources: expected an object of name -> count, like {"gpu": 2}, got a number'),
    ({}, {"resources": {"bad name": 1}}, 'resources.bad name: invalid name "bad name": use 1-128 of A-Z a-z 0-9 . _ - , '
     "starting with a letter or digit"),
    ({}, {"agent_limits": {"@claude": 1, "claude": 2}}, 'agent_limits.claude: "claude" is given twice'),
    ({}, {"agent_limits": {"@": 1}}, 'agent_limits.@: invalid name "@": use 1-128 of A-Z a-z 0-9 . _ - , starting with a letter or digit'),
    ({}, {"resources": {"gpu": -1}}, "resources.gpu: must be at least 1, got -1"),
    ({"files": 5}, {}, "tasks[0].files: expected an array of globs, got a number"),
    ({"files": ["a", 5]}, {}, "tasks[0].files[1]: expected a glob (string), got a number"),
    ({"approval": {"timeout": "1h"}}, {}, 'tasks[0].approval: approval needs "prompt": the question shown to the person who decides'),
    ({"approval": {"prompt": "ok?", "timeout": "soon"}}, {},
     'tasks[0].approval.timeout: expected seconds or a duration like "90s", "30m", "2h", "1d", got "soon"'),
    ({"timeout": "soon"}, {}, "tasks[0].timeout: expected a number, got a string"),
    ({"trigger": "sometimes"}, {}, 'tasks[0].trigger: must be one of "all_success", "all_done", "one_success", "one_failed", '
     '"none_failed", got "sometimes"'),
    ({"retries": 1.5}, {}, "tasks[0].retries: expected an integer, got 1.5"),
    ({"retries": -1}, {}, "tasks[0].retries: must be at least 0, got -1"),
    ({"retries": "2"}, {}, "tasks[0].retries: expected an integer, got a string"),
    ({"timeout": 0}, {}, "tasks[0].timeout: must be greater than 0, got 0"),
    ({"context_limit": 10 ** 12}, {}, "tasks[0].context_limit: must be at most 1.67772e+07, got 1000000000000"),
    ({"priority": True}, {}, "tasks[0].priority: expected an integer, got a boolean"),
    ({"slurm": {"partition": 5}}, {}, "tasks[0].slurm.partition: expected a string, got a number"),
    ({"slurm": 5}, {}, "tasks[0].slurm: expected an object, got a number"),
    ({"slurm": {"bogus": 1}}, {}, 'tasks[0].slurm.bogus: unknown field "bogus" in slurm options (known: partition, account, '
     'sbatch_args, mode)'),
    ({"slurm": {"sbatch_args": 5}}, {}, "tasks[0].slurm.sbatch_args: expected an array of strings, got a number"),
    ({"slurm": {"sbatch_args": ["--x", 5]}}, {}, "tasks[0].slurm.sbatch_args[1]: expected a string, got a number"),
    ({"ray": {"runtime_env": 5}}, {}, "tasks[0].ray.runtime_env: expected an object, got a number"),
    ({"approval": 5}, {}, "tasks[0].approval: expected an object, got a number"),
    ({"approval": {"prompt": "p", "bogus": 1}}, {}, 'tasks[0].approval.bogus: unknown field "bogus" in approval (known: prompt, timeout)'),
    ({"approval": {"prompt": 5}}, {}, "tasks[0].approval.prompt: expected a string, got a number"),
    ({"resources": {"licenses": -1}}, {}, "tasks[0].resources.licenses: must be at least 0, got -1"),
    ({"resources": {"licenses": 100001}}, {}, "tasks[0].resources.licenses: must be at most 100000, got 100001"),
    ({}, {"resources": {"gpu": 100001}}, "resources.gpu: must be at most 100000, got 100001"),
]


@pytest.mark.parametrize("task,top,said", BAD_VALUES, ids=[s.split(":")[0] + "-" + str(i) for i, (_, _, s) in enumerate(BAD_VALUES)])
def test_a_bad_value_is_named_by_its_path_in_the_validator_s_words(plans, task, top, said):
    p = write_plan(plans, [{"id": "a", "prompt": "x", **task}], defaults=AGENT, **top)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).startswith(f"{p}:") and str(ei.value).endswith(f": {said}"), str(ei.value)
    assert "\n" not in str(ei.value)


def test_an_estimate_of_zero_is_fine_and_budget_tokens_stay_whole(plans):
    t = _task(plans, estimate={"usd": 0, "seconds": 0})
    assert (t.estimate_usd, t.estimate_seconds) == (0, 0)
    p = write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT, budget={"usd": 2, "tokens": 2000000.0})
    b = planmod.load(str(p)).budget
    assert b == {"usd": 2.0, "tokens": 2000000} and type(b["tokens"]) is int and type(b["usd"]) is float


def test_good_values_reach_the_task_and_the_plan_as_read(plans):
    """What the validator hands on for an approval, an agent limit, a task's resources and files."""
    t = _task(plans, approval={"prompt": "ok?", "timeout": "2h"}, resources={"gpu": 2.0, "mem": "2G"}, files=["a/*"],
              retries=2.0)
    assert (t.approval, t.resources, t.files, t.trigger, t.retries) == \
        ({"prompt": "ok?", "timeout": 7200.0}, {"gpu": 2, "mem": "2G"}, ("a/*",), "all_success", 2)
    assert type(t.retries) is int and type(t.resources["gpu"]) is int
    assert _task(plans, approval={"prompt": "ok?"}).approval == {"prompt": "ok?", "timeout": None}
    t = _task(plans, resources={"licenses": 0, "seats": 100000}, slurm={"sbatch_args": ["--qos=short"]},
              ray={"runtime_env": {"env_vars": {"A": "b"}}})
    assert (t.resources, t.slurm, t.ray) == ({"licenses": 0, "seats": 100000}, {"sbatch_args": ["--qos=short"]},
                                             {"runtime_env": {"env_vars": {"A": "b"}}})
    p = write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT, agent_limits={"@claude": 1, "codex": 2},
                   resources={"gpu": 3})
    pl = planmod.load(str(p))
    assert (pl.agent_limits, pl.capacities) == ({"claude": 1, "codex": 2}, {"gpu": 3})


def _hook(*hs):
    return {"hooks": {"on_done": list(hs)}}


_AUTHOR = 'workspace.author: expected {"name": "...", "email": "..."} (non-empty strings without <, > or newlines)'
_ARGV = "hooks.on_done[0].argv: expected a non-empty array of non-empty strings (the command and its arguments; no shell)"
_HEADERS = "hooks.on_done[0].headers: expected an object of header names to string values"
_TPL = [{"id": "b", "prompt": "y"}]
# (tasks, top-level fields, the end of the one-line error): hooks, templates, the workspace
BAD_DOCS = [
    ([], _hook(5), "hooks.on_done[0]: expected an argv array or an object, got a number"),
    ([], _hook({}), 'hooks.on_done[0]: a hook needs "argv" (a command) or "url" (a webhook)'),
    ([], _hook({"argv": ["x"], "bogus": 1}), 'hooks.on_done[0].bogus: unknown field "bogus" in a hook (known: argv, timeout)'),
    ([], _hook({"url": "https://h", "bogus": 1}),
     'hooks.on_done[0].bogus: unknown field "bogus" in a hook (known: headers, headers_env, retries, secret_env, timeout, url)'),
    ([], _hook({"argv": ["x"], "timeout": 0}), "hooks.on_done[0].timeout: must be a number of seconds in (0, 3600], got 0"),
    ([], _hook({"argv": ["x"], "timeout": 3601}), "hooks.on_done[0].timeout: must be a number of seconds in (0, 3600], got 3601"),
    ([], _hook({"argv": ["x"], "timeout": True}), "hooks.on_done[0].timeout: must be a number of seconds in (0, 3600], got true"),
    ([], _hook({"argv": ["x"], "timeout": "5"}), 'hooks.on_done[0].timeout: must be a number of seconds in (0, 3600], got "5"'),
    ([], _hook({"argv": []}), _ARGV), ([], _hook({"argv": "x"}), _ARGV), ([], _hook({"argv": ["x", ""]}), _ARGV),
    ([], _hook({"argv": ["x", 5]}), _ARGV), ([], _hook({"argv": ["x\u0000"]}), _ARGV),
    ([], _hook({"url": "ftp://h"}), 'hooks.on_done[0].url: expected an http:// or https:// URL, got "ftp://h"'),
    ([], _hook({"url": 5}), "hooks.on_done[0].url: expected an http:// or https:// URL, got 5"),
    ([], _hook({"url": "https://h x"}), 'hooks.on_done[0].url: expected an http:// or https:// URL, got "https://h x"'),
    ([], _hook({"url": "https://h", "headers": {"a b": "v"}}), _HEADERS),
    ([], _hook({"url": "https://h", "headers": {"A": "v\n"}}), _HEADERS),
    ([], _hook({"url": "https://h", "headers": {"A": "v\r"}}), _HEADERS),
    ([], _hook({"url": "https://h", "headers": {"A": 5}}), _HEADERS),
    ([], _hook({"url": "https://h", "headers": 5}), _HEADERS),
    ([], _hook({"url": "https://h", "headers_env": {"A": "not env"}}),
     "hooks.on_done[0].headers_env: values must be environment variable names (the secret itself never goes in the plan)"),
    ([], _hook({"url": "https://h", "headers_env": {"A b": "ENV"}}),
     "hooks.on_done[0].headers_env: expected an object of header names to string values"),
    ([], _hook({"url": "https://h", "secret_env": "no env"}),
     'hooks.on_done[0].secret_env: expected an environment variable name, got "no env"'),
    ([], _hook({"url": "https://h", "secret_env": 5}), "hooks.on_done[0].secret_env: expected an environment variable name, got 5"),
    ([], _hook({"url": "https://h", "retries": 21}), "hooks.on_done[0].retries: must be an integer 0-20, got 21"),
    ([], _hook({"url": "https://h", "retries": -1}), "hooks.on_done[0].retries: must be an integer 0-20, got -1"),
    ([], _hook({"url": "https://h", "retries": True}), "hooks.on_done[0].retries: must be an integer 0-20, got true"),
    ([], _hook({"url": "https://h", "retries": 1.0}), "hooks.on_done[0].retries: must be an integer 0-20, got 1.0"),
    ([], {"hooks": 5}, "hooks: expected an object of hook lists (on_done, on_failed, on_retrying, on_cancelled, on_blocked, "
     "on_skipped, on_approval_needed, on_goal_finished), got a number"),
    ([], {"hooks": {"on_done": 5}}, "hooks.on_done: expected an array of hooks, got a number"),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"as": "x"}}], {},
     'tasks[1].for_each: for_each needs "from": the task whose output lists the items'),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": "a"}}], {},
     "tasks[1].for_each.from: a template cannot fan out over its own output"),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": "b", "as": "1x"}}], {},
     'tasks[1].for_each.as: expected a name of letters, digits and _ (like "item"), got "1x"'),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": "b", "as": 5}}], {},
     'tasks[1].for_each.as: expected a name of letters, digits and _ (like "item"), got 5'),
    (_TPL + [{"id": "a" * 126, "prompt": "x", "deps": ["b"], "for_each": {"from": "b", "max": 100}}], {},
     f"tasks[1].for_each.max: the instance ids {'a' * 126}.<k> would be longer than 128 characters: shorten the template's id"),
    ([], {"workspace": {}}, "workspace: workspace needs \"repo\" (the git repository, relative to the plan's folder)"),
    ([], {"workspace": {"repo": "r", "base": "-x"}}, 'workspace.base: "-x" is not a branch or commit name'),
    ([], {"workspace": {"repo": "r", "base": "a b"}}, 'workspace.base: "a b" is not a branch or commit name'),
    ([], {"workspace": {"repo": "r", "author": {"name": "n"}}}, _AUTHOR),
    ([], {"workspace": {"repo": "r", "author": {"name": "n", "email": "<e>"}}}, _AUTHOR),
    ([], {"workspace": {"repo": "r", "author": {"name": "n", "email": "e>"}}}, _AUTHOR),
    ([], {"workspace": {"repo": "r", "author": {"name": "n\nm", "email": "e"}}}, _AUTHOR),
    ([], {"workspace": {"repo": "r", "author": {"name": " ", "email": "e"}}}, _AUTHOR),
    ([], {"workspace": {"repo": "r", "author": {"name": 5, "email": "e"}}}, _AUTHOR),
    ([], {"workspace": {"repo": "r", "author": "x"}}, _AUTHOR),
    ([], {"workspace": {"repo": "r", "integrate": "yes"}}, "workspace.integrate: expected true or false, got a string"),
    ([{"id": "a", "prompt": "x", "approval": {"prompt": "p", "timeout": "0m"}}], {},
     'tasks[0].approval.timeout: expected seconds or a duration like "90s", "30m", "2h", "1d", got "0m"'),
    ([{"id": "a", "prompt": "x", "approval": {"prompt": "p", "timeout": True}}], {},
     'tasks[0].approval.timeout: expected seconds or a duration like "90s", "30m", "2h", "1d", got true'),
    ([{"id": "a", "prompt": "x", "approval": {"prompt": "p", "timeout": "1y"}}], {},
     'tasks[0].approval.timeout: expected seconds or a duration like "90s", "30m", "2h", "1d", got "1y"'),
    ([{"id": "a", "prompt": "x", "approval": {"prompt": "p", "timeout": 30 * 86400 + 1}}], {},
     'tasks[0].approval.timeout: expected seconds or a duration like "90s", "30m", "2h", "1d", got 2592001'),
    (_TPL + [{"id": "a", "prompt": "x", "soft_deps": ["b"], "for_each": {"from": "b"}}], {},
     'tasks[1].for_each.from: "b" must be a dependency (deps), not a soft one'),
    ([{"id": "a", "prompt": "x", "workspace": "yes"}], {}, "tasks[0].workspace: expected true or false, got a string"),
    ([{"id": "a", "prompt": "x", "files": ["/abs"]}], {}, 'tasks[0].files[0]: glob "/abs" must be relative to the repository root'),
    ([{"id": "a", "prompt": "x", "files": ["../up"]}], {}, 'tasks[0].files[0]: glob "../up" must not contain . or .. segments'),
    ([{"id": "a", "prompt": "x", "files": [""]}], {}, 'tasks[0].files[0]: glob "" must not be empty'),
    ([{"id": "a", "prompt": "x", "trigger": "one_success"}], {}, 'tasks[0].trigger: trigger "one_success" needs at least one task in deps'),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "when": {"bogus": 1}}], {},
     'tasks[1].when.bogus: unknown operator "bogus" (known: output_of, json_of, outcome_of, all, any, not)'),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": "b"}}, {"id": "a.1", "prompt": "z"}], {},
     'tasks[2].id: task id "a.1" is reserved for the instances of the template "a" (for_each)'),
    ([], {"workspace": "r"}, "workspace: expected an object, got a string"),
    ([], {"workspace": {"repo": "r", "bogus": 1}}, 'workspace.bogus: unknown field "bogus" in workspace (known: repo, base, '
     'author, integrate)'),
    ([], {"workspace": {"repo": 5}}, "workspace.repo: expected a string, got a number"),
    ([], {"workspace": {"repo": "r", "base": 5}}, "workspace.base: expected a string, got a number"),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": 5}], {}, "tasks[1].for_each: expected an object, got a number"),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": "b", "bogus": 1}}], {},
     'tasks[1].for_each.bogus: unknown field "bogus" in for_each (known: from, as, max)'),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": 5}}], {},
     "tasks[1].for_each.from: expected a string, got a number"),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": "b", "max": 0}}], {},
     "tasks[1].for_each.max: must be at least 1, got 0"),
    (_TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": "b", "max": 10001}}], {},
     "tasks[1].for_each.max: must be at most 10000, got 10001"),
]


@pytest.mark.parametrize("tasks,top,said", BAD_DOCS, ids=[s.split(":")[0] + "-" + str(i) for i, (_, _, s) in enumerate(BAD_DOCS)])
def test_a_bad_hook_template_or_workspace_is_named_by_its_path_in_the_validator_s_words(plans, tasks, top, said):
    p = write_plan(plans, tasks or [{"id": "a", "prompt": "x"}], defaults=AGENT, **top)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).startswith(f"{p}:") and str(ei.value).endswith(f": {said}"), str(ei.value)
    assert "\n" not in str(ei.value)


def test_hooks_a_template_and_the_workspace_reach_the_plan_normalised(plans):
    web = {"url": "https://h/x", "headers": {"X-A": "b"}, "headers_env": {"Authorization": "TOKEN"}, "secret_env": "SEC",
           "timeout": 5, "retries": 20}
    p = write_plan(plans, _TPL + [{"id": "a", "prompt": "x", "deps": ["b"], "for_each": {"from": "b", "max": 7}}],
                   defaults=AGENT, hooks={"on_done": [["notify", "x"], web], "on_failed": []},
                   workspace={"repo": "r", "base": "main", "author": {"name": "Xavier", "email": "e@x"}, "integrate": False})
    pl = planmod.load(str(p))
    assert pl.hooks == {"on_done": [{"timeout": 30.0, "argv": ["notify", "x"]},
                                    {"timeout": 5.0, "url": "https://h/x", "headers": {"X-A": "b"},
                                     "headers_env": {"Authorization": "TOKEN"}, "secret_env": "SEC", "retries": 20}]}
    assert pl.task("a").for_each == {"from": "b", "as": "item", "max": 7}
    assert pl.workspace == {"repo": str(plans / "r"), "base": "main", "author": {"name": "Xavier", "email": "e@x"},
                            "integrate": False}
    p = write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT, hooks={"on_done": [{"url": "http://h"}]},
                   workspace={"repo": "../r"})
    pl = planmod.load(str(p))
    assert pl.hooks == {"on_done": [{"timeout": 30.0, "url": "http://h", "headers": {}, "headers_env": {},
                                     "secret_env": None, "retries": 3}]}
    assert pl.workspace == {"repo": str(plans.parent / "r"), "base": "HEAD"}


@pytest.mark.parametrize("v,secs", [(90, 90.0), (1.5, 1.5), (1, 1.0), (0.5, 0.5), ("90", 90.0), ("90s", 90.0), (" 30m ", 1800.0), ("2h", 7200.0),
                                    ("1d", 86400.0), ("0.5h", 1800.0), ("30d", 2592000.0), ("31d", None), (0, None),
                                    ("0s", None), (-1, None), (True, None), ("1y", None), ("h", None), (None, None),
                                    (float("inf"), None)])
def test_parse_duration(v, secs):
    assert planmod.parse_duration(v) == secs


def test_a_template_added_later_may_not_name_its_instances_like_an_existing_task(plans):
    pl = planmod.load(str(write_plan(plans, [{"id": "b", "prompt": "p"}, {"id": "a.1", "prompt": "p"}], defaults=AGENT)))
    raw = json.dumps({"defaults": AGENT, "tasks": [{"id": "a", "prompt": "p", "deps": ["b"], "for_each": {"from": "b"}}]})
    with pytest.raises(PlanError) as ei:
        planmod.parse_fragment(raw.encode(), shown="frag.json", plan=pl)
    assert str(ei.value) == 'frag.json:1: tasks[0].id: template "a" would name its instances like the existing task "a.1"'


def test_a_task_is_a_value_equal_hashable_picklable_and_shown_by_its_fields(plans):
    """Task is a tuple subclass with its own ==, !=, hash, pickling and repr (in-process: the
    workers that pickle tasks and the sets of tasks run in the binary's tests)."""
    import pickle
    t = _task(plans, resources={"gpu": 1})
    same, other = t.replace(), t.replace(prompt="y")
    assert (t != same, t != other, t == same, t.__ne__(5)) == (False, True, True, NotImplemented)
    assert hash(t) == hash(same) and hash(t) != hash(other) and len({t, same, other}) == 2
    back = pickle.loads(pickle.dumps(t))
    assert type(back) is planmod.Task and back == t and back.fields() == t.fields()
    assert repr(t) == "Task(" + ", ".join(f"{k}={v!r}" for k, v in t.fields().items()) + ")"
    assert t.to_dict()["resources"] == {"gpu": 1}


def test_an_unknown_preset_is_named_where_it_is_given_and_a_task_without_agent_is_refused(plans):
    """check_agent's path: the task's own agent or the defaults' (in-process)."""
    for tasks, defaults, where in (([{"id": "a", "prompt": "x", "agent": "@nope"}], {}, "tasks[0].agent"),
                                   ([{"id": "a", "prompt": "x"}], {"agent": "@nope"}, "defaults.agent"),
                                   ([{"id": "a", "prompt": "x", "agent": "@nope"}], {"agent": "true"}, "tasks[0].agent")):
        p = write_plan(plans, tasks, defaults=defaults)
        with pytest.raises(PlanError) as ei:
            planmod.load(str(p))
        assert str(ei.value).startswith(f"{p}:") and f": {where}: unknown agent preset @nope (known: " in str(ei.value)
    p = write_plan(plans, [{"id": "a", "prompt": "x"}])
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).endswith(': tasks[0]: task "a" has no agent: set "agent" on it or in "defaults"')
    p = write_plan(plans, [{"id": "a", "prompt": "x", "approval": {"prompt": "ok?"}}])
    assert planmod.load(str(p)).task("a").agent == ""          # a gate needs no agent: a person decides it


def test_a_task_s_own_hooks_reach_it_normalised_and_on_goal_finished_is_the_plan_s_alone(plans):
    """A task's own `hooks` (in-process; the hook tests run the binary): every event but
    on_goal_finished, normalised like the plan's, a bad one named under tasks[i].hooks."""
    own = {"on_done": [["a"]], "on_failed": [{"argv": ["f"], "timeout": 2}], "on_approval_needed": [["ask"]],
           "on_skipped": []}
    t = _task(plans, hooks=own)
    assert t.hooks == {"on_done": [{"timeout": 30.0, "argv": ["a"]}], "on_failed": [{"timeout": 2.0, "argv": ["f"]}],
                       "on_approval_needed": [{"timeout": 30.0, "argv": ["ask"]}]}
    assert _task(plans).hooks is None
    events = "on_done, on_failed, on_retrying, on_cancelled, on_blocked, on_skipped, on_approval_needed"
    for hooks, said in (({"on_goal_finished": [["x"]]},
                         f'tasks[0].hooks.on_goal_finished: unknown hook event "on_goal_finished" (known: {events})'),
                        ({"on_done": [5]}, "tasks[0].hooks.on_done[0]: expected an argv array or an object, got a number"),
                        (5, f"tasks[0].hooks: expected an object of hook lists ({events}), got a number")):
        p = write_plan(plans, [{"id": "a", "prompt": "x", "hooks": hooks}], defaults=AGENT)
        with pytest.raises(PlanError) as ei:
            planmod.load(str(p))
        assert str(ei.value).startswith(f"{p}:") and str(ei.value).endswith(f": {said}"), str(ei.value)


def test_a_bad_serial_group_and_a_lone_one_failed_trigger_are_named_by_their_path(plans):
    for task, said in (({"serial": "a b"}, 'tasks[0].serial: invalid id "a b": use 1-128 of A-Z a-z 0-9 . _ - , starting with a letter or digit'),
                       ({"serial": 5}, "tasks[0].serial: expected a string, got a number"),
                       ({"trigger": "one_failed"}, 'tasks[0].trigger: trigger "one_failed" needs at least one task in deps')):
        p = write_plan(plans, [{"id": "a", "prompt": "x", **task}], defaults=AGENT)
        with pytest.raises(PlanError) as ei:
            planmod.load(str(p))
        assert str(ei.value).startswith(f"{p}:") and str(ei.value).endswith(f": {said}"), str(ei.value)
    assert _task(plans, serial="g").serial == "g"
    p = write_plan(plans, [{"id": "b", "prompt": "x"}, {"id": "a", "prompt": "x", "deps": ["b"], "trigger": "one_failed"}],
                   defaults=AGENT)
    assert planmod.load(str(p)).task("a").trigger == "one_failed"


def test_a_task_runs_in_a_worktree_unless_it_says_workspace_false_or_is_an_approval_gate(plans):
    gate = {"approval": {"prompt": "ok?"}}
    assert [_task(plans, **f).workspace for f in ({}, {"workspace": True}, {"workspace": False}, gate,
                                                   {**gate, "workspace": True}, {**gate, "workspace": False})] == \
        [True, True, False, False, False, False]


def test_the_defaults_knob_fields_are_worked_out_once_per_plan(plans, monkeypatch):
    """Tasks that set no knob of their own share the fields the defaults give, worked out once
    per plan (a 100 000-task plan); a task with its own knob gets its own."""
    calls = []
    real = planmod._knob_fields
    monkeypatch.setattr(planmod, "_knob_fields", lambda knobs: calls.append(dict(knobs)) or real(knobs))
    tasks = [{"id": f"t{i}", "prompt": "x", "workspace": True} for i in range(4)]
    pl = planmod.load(str(write_plan(plans, tasks + [{"id": "own", "prompt": "x", "timeout": 7}],
                                     defaults={**AGENT, "timeout": 5})))
    assert calls == [{**AGENT, "timeout": 5}, {**AGENT, "timeout": 7}]
    assert [t.timeout for t in pl.tasks] == [5.0] * 4 + [7.0]


# ---- issue 21 (eighth session): what the sweep of plan.py's remaining mutants found unchecked

def test_a_plan_may_hold_exactly_the_task_limit(plans, monkeypatch):
    """MAX_TASKS is the most a plan may hold (lowered here: 100 000 tasks is the scale bench)."""
    monkeypatch.setattr(planmod, "MAX_TASKS", 3)
    assert len(planmod.load(str(write_plan(plans, [{"id": f"t{i}", "prompt": "x"} for i in range(3)],
                                           defaults=AGENT))).tasks) == 3
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "x"} for i in range(4)], defaults=AGENT)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).endswith(": tasks: 4 tasks; the limit is 3"), str(ei.value)


def test_a_hook_s_timeout_may_be_any_number_of_seconds_above_0_up_to_3600_and_a_webhook_may_have_no_retry(plans):
    for timeout in (0.5, 1, 3600):
        pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT,
                                         hooks={"on_done": [{"argv": ["x"], "timeout": timeout}]})))
        assert pl.hooks == {"on_done": [{"timeout": float(timeout), "argv": ["x"]}]}
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT,
                                     hooks={"on_done": [{"url": "https://h", "retries": 0}]})))
    assert pl.hooks["on_done"][0]["retries"] == 0


def test_an_error_inside_a_value_not_written_points_at_the_line_of_the_nearest_value_written(plans):
    """A hook given as an argv array is read as {"argv": [...]}: its error path ends in "argv",
    which is not in the file; the line is that of the array (the nearest enclosing value)."""
    p = plans / "dag.json"
    p.write_text('{"defaults": {"agent": "true"},\n "tasks": [{"id": "a", "prompt": "x"}],\n "hooks": {"on_done":\n'
                 '  [\n   ["ok"],\n   []]}}')
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value) == f"{p}:6: hooks.on_done[1].argv: expected a non-empty array of non-empty strings " \
                            "(the command and its arguments; no shell)"
    assert (ei.value.line, ei.value.json_path) == (6, "hooks.on_done[1].argv")
    p.write_text('\n{"defaults": {"agent": "true"}}')          # an error of the whole document: no path
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert (str(ei.value), ei.value.line, ei.value.json_path) == (f'{p}:2: missing "tasks" (an array of tasks)', 2, None)


def test_an_agent_preset_is_checked_once_per_plan(plans, monkeypatch):
    calls, asked = [], []
    real, real_is = planmod.presets.check, planmod.presets.is_preset
    monkeypatch.setattr(planmod.presets, "check", lambda agent, table: calls.append(agent) or real(agent, table))
    monkeypatch.setattr(planmod.presets, "is_preset", lambda agent: asked.append(agent) or real_is(agent))
    tasks = [{"id": f"t{i}", "prompt": "x", "agent": a} for i, a in enumerate(["@claude", "mine -x"] * 3)]
    pl = planmod.load(str(write_plan(plans, tasks)))
    assert calls == ["@claude"] and asked.count("mine -x") == 1        # (presets.check asks about "@claude" too)
    assert [t.agent for t in pl.tasks] == ["@claude", "mine -x"] * 3


def test_the_presets_of_the_home_the_plan_is_loaded_for_are_known(plans, tmp_path, monkeypatch):
    home = tmp_path / "h"
    home.mkdir()
    (home / "presets.json").write_text(json.dumps({"mine": {"command": ["true"]}}))
    monkeypatch.setenv("DAGRUN_HOME", str(tmp_path / "other"))
    p = write_plan(plans, [{"id": "a", "prompt": "x", "agent": "@mine"}])
    assert planmod.load(str(p), home=str(home)).task("a").agent == "@mine"
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert ": tasks[0].agent: unknown agent preset @mine (known: " in str(ei.value)


def test_plan_json_holds_the_goal_s_limits_tenant_weight_and_aging_only_when_set(plans):
    top = {"resources": {"gpu": 2}, "agent_limits": {"claude": 1}, "tenant": "team", "weight": 2.5, "aging": 30,
           "max_tasks": 9, "budget": {"usd": 5}}
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT, **top)))
    d = pl.to_dict()
    assert {k: d[k] for k in top} == {"resources": {"gpu": 2}, "agent_limits": {"claude": 1}, "tenant": "team",
                                      "weight": 2.5, "aging": 30.0, "max_tasks": 9, "budget": {"usd": 5.0}}
    back = planmod.Plan.from_json(pl.canonical())
    assert (back.capacities, back.agent_limits, back.tenant, back.weight, back.aging, back.max_tasks, back.budget) == \
        ({"gpu": 2}, {"claude": 1}, "team", 2.5, 30.0, 9, {"usd": 5.0})
    plain = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "x"}], defaults=AGENT))).to_dict()
    assert not set(top) & set(plain)


def test_a_fragment_without_tasks_or_over_the_goal_s_max_tasks_is_refused_in_one_line(plans):
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"}],
                                     defaults=AGENT, max_tasks=3)))

    def add(doc, plan=pl):
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        with pytest.raises(PlanError) as ei:
            planmod.parse_fragment(raw, shown="frag.json", plan=plan)
        return str(ei.value)
    need = 'a fragment needs "tasks": a non-empty array of tasks'
    assert add(b'{"tasks": [\xff]}') == "frag.json: malformed JSON: invalid UTF-8 at byte 11"
    assert add({"defaults": AGENT}) == f"frag.json:1: {need}"
    assert add(b'{\n"tasks": []}') == f"frag.json:2: tasks: {need}"
    two = [{"id": "x", "prompt": "p"}, {"id": "y", "prompt": "p"}]
    assert add({"defaults": AGENT, "tasks": two}) == "frag.json:1: tasks: the goal would have 4 tasks; its max_tasks is 3"
    big = planmod.load(str(write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(planmod.DEFAULT_MAX_TASKS - 1)],
                                      defaults=AGENT)))
    assert add({"defaults": AGENT, "tasks": two}, big) == \
        'frag.json:1: tasks: the goal would have 1001 tasks; its max_tasks is 1000 (the default; set "max_tasks" in the plan)'


def test_a_plan_path_that_is_no_regular_file_or_cannot_be_read_is_named_in_one_line(plans, monkeypatch):
    with pytest.raises(PlanError) as ei:
        planmod.load(str(plans))
    assert str(ei.value) == f"cannot read plan {plans}: not a regular file"
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], defaults=AGENT)

    def failing(path, *a, **k):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(planmod, "open", failing, raising=False)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value) == f"cannot read plan {p}: Input/output error"


def test_a_template_s_instance_ids_may_be_exactly_128_characters(plans):
    tid = "a" * 125                                     # its last instance: a...a.99, 128 characters
    pl = planmod.load(str(write_plan(plans, _TPL + [{"id": tid, "prompt": "x", "deps": ["b"],
                                                     "for_each": {"from": "b", "max": 100}}], defaults=AGENT)))
    assert pl.task(tid).for_each == {"from": "b", "as": "item", "max": 100}


def test_a_resource_that_is_also_the_task_s_mutex_is_named_under_resources(plans):
    p = write_plan(plans, [{"id": "a", "prompt": "x", "mutex": "m", "resources": {"m": 3}}], defaults=AGENT,
                   resources={"m": 2})
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value).split(": ", 1)[1] == \
        'tasks[0].resources.m: task "a" asks for 3 units of "m" but the plan\'s capacity of "m" is 2: it could never start'


def test_each_serial_group_orders_only_its_own_tasks(plans):
    """b (group t) may depend on c, which comes after it in plan order: c is in group s."""
    tasks = [{"id": "a", "prompt": "x", "serial": "s"}, {"id": "b", "prompt": "x", "serial": "t", "deps": ["c"]},
             {"id": "c", "prompt": "x", "serial": "s"}, {"id": "d", "prompt": "x", "serial": "t"}]
    assert [t.serial for t in planmod.load(str(write_plan(plans, tasks, defaults=AGENT))).tasks] == ["s", "t", "s", "t"]


def test_a_fragment_whose_serial_group_contradicts_its_dependencies_names_the_task_by_its_index_in_the_fragment(plans):
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"}], defaults=AGENT)))
    raw = json.dumps({"defaults": AGENT, "tasks": [{"id": "x", "prompt": "p", "serial": "s", "deps": ["y"]},
                                                   {"id": "y", "prompt": "p", "serial": "s"}]}).encode()
    with pytest.raises(PlanError) as ei:
        planmod.parse_fragment(raw, shown="frag.json", plan=pl)
    assert str(ei.value) == ('frag.json:1: tasks[0].serial: serial group "s" runs in plan order, but that order '
                             'contradicts the dependencies: dependency cycle: x -> y -> x')


def test_every_knob_reaches_the_task_typed_and_an_unset_one_is_its_default(plans):
    """_knob_fields, field by field (a task's own knobs; the plan's defaults reach it the same way)."""
    t = _task(plans, timeout=90, stall_timeout=30, cache=True, budget_share=0.7, estimate={"seconds": 12, "usd": 0.5},
              mutex="m")
    got = (t.timeout, t.stall_timeout, t.cache, t.budget_share, t.estimate_seconds, t.estimate_usd, t.mutex)
    assert got == (90.0, 30.0, True, 0.7, 12, 0.5, "m") and [type(v) for v in got[:4]] == [float, float, bool, float]
    t = _task(plans, estimate={"usd": 0.25})
    assert (t.timeout, t.stall_timeout, t.cache, t.budget_share, t.estimate_seconds, t.estimate_usd, t.mutex) == \
        (None, None, False, 0.4, None, 0.25, None)
    t = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "x"}],
                                    defaults={**AGENT, "timeout": 5, "estimate": {"seconds": 3}}))).task("a")
    assert (t.timeout, t.estimate_seconds, t.estimate_usd) == (5.0, 3, None)


def test_a_plan_with_other_tasks_keeps_every_other_field_and_its_capacities_name_the_agents(plans):
    """Plan.with_tasks (a plan edit: add, fan-out) and Plan.goal_capacities, in-process."""
    import dataclasses
    top = {"max_parallel": 3, "on_failure": "stop", "lease": 20, "description": "d", "workspace": {"repo": "r"},
           "hooks": {"on_done": [["x"]]}, "budget": {"usd": 5}, "max_tasks": 9, "resources": {"gpu": 2},
           "agent_limits": {"claude": 1}, "tenant": "team", "weight": 2.0, "aging": 30}
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}], defaults=AGENT,
                                     **top)))
    other = pl.with_tasks(pl.tasks[:1])
    assert [t.id for t in other.tasks] == ["a"] and other.task("a") is pl.tasks[0] and not other.has("b")
    for f in dataclasses.fields(planmod.Plan):
        if f.name not in ("tasks", "_index"):
            assert getattr(other, f.name) == getattr(pl, f.name) and getattr(pl, f.name) not in (None, 1.0), f.name
    assert pl.goal_capacities() == {"gpu": 2, "agent.claude": 1}


def test_a_plan_read_from_a_dict_leaves_the_dict_as_it_was_unless_told_to_consume_it(plans):
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "x", "check": ["true"], "soft_deps": ["c"]},
                                             {"id": "b", "prompt": "y", "deps": ["a"], "files": ["src/*"],
                                              "resources": {"gpu": 1}}, {"id": "c", "prompt": "z"}], defaults=AGENT)))
    d = pl.to_dict()
    assert planmod.Plan.from_dict(d) == pl and d == pl.to_dict()
    assert planmod.Plan.from_dict(d, consume=True) == pl
    back = planmod.Plan.from_json(pl.canonical())      # equal strings shared: one agent / workdir string for all
    assert back == pl and back.tasks[0].agent is back.tasks[2].agent and back.tasks[0].workdir is back.tasks[2].workdir
    assert back.tasks[0].kill_grace is back.tasks[2].kill_grace          # and equal numbers (floats are objects too)


def test_a_fragment_s_shape_defaults_text_and_limits_are_checked_like_a_plan_s(plans):
    (plans / "p.md").write_text("from a file")
    pl = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"}], defaults=AGENT,
                                     max_tasks=3, resources={"gpu": 1})))

    def add(doc):
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        try:
            return planmod.parse_fragment(raw, shown="frag.json", plan=pl)
        except PlanError as e:
            return str(e)
    one = [{"id": "x", "prompt": "p"}]
    assert add(b"[1]") == "frag.json:1: expected an object, got an array"
    assert add({"tasks": one, "bogus": 1}) == 'frag.json:1: bogus: unknown field "bogus" in a fragment (known: defaults, tasks)'
    assert add({"tasks": one, "defaults": 5}) == "frag.json:1: defaults: expected an object, got a number"
    assert add({"tasks": one, "defaults": {"bogus": 1}}).startswith('frag.json:1: defaults.bogus: unknown field "bogus" in defaults (known: ')
    assert add({"tasks": one, "defaults": {"retries": -1}}).startswith("frag.json:1: defaults.retries: ")
    assert add({"tasks": [{"id": "x", "prompt": "p", "retries": -1}]}).startswith("frag.json:1: tasks[0].retries: ")
    assert add(b'{"tasks": [').startswith("frag.json:1:12: malformed JSON: ")
    assert add(b'{"tasks": [{"id": "\\ud800", "prompt": "p"}]}') == \
        "frag.json:1: tasks[0].id: contains an unpaired UTF-16 surrogate escape"
    assert add({"defaults": AGENT, "tasks": [{"id": "x", "prompt": "p", "resources": {"gpu": 2}}]}) == \
        'frag.json:1: tasks[0].resources.gpu: task "x" asks for 2 units of "gpu" but the plan\'s capacity of "gpu" is 1: it could never start'
    got = add({"defaults": AGENT, "tasks": [{"id": "x", "prompt_file": "p.md"}]})      # exactly max_tasks: fine
    assert [t.id for t in got.tasks] == ["a", "b", "x"] and got.task("x").prompt == "from a file"


def test_a_plan_of_exactly_the_size_limit_is_read_to_its_last_byte(plans, monkeypatch):
    """The size is checked by stat, then MAX_PLAN_BYTES + 1 bytes are read: a plan of exactly
    the limit is read whole -- its last byte (here the closing brace) too -- and one byte over
    is refused by its size. The limit is lowered to the plan's size (64 MiB of text otherwise)."""
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], defaults=AGENT)
    size = p.stat().st_size
    assert p.read_bytes().endswith(b"}")
    monkeypatch.setattr(planmod, "MAX_PLAN_BYTES", size)
    assert [t.id for t in planmod.load(str(p)).tasks] == ["a"]
    monkeypatch.setattr(planmod, "MAX_PLAN_BYTES", size - 1)
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value) == f"{p}: plan is {size} bytes; the limit is {size - 1} bytes"


def test_a_duplicate_key_with_non_ascii_characters_is_found_on_its_line(plans):
    """The duplicate's line is found by searching the key's text: a key written with its
    non-ASCII characters as they are (the usual way) was searched only \\u-escaped, found
    nowhere, and the error said line 1. Both spellings are searched now."""
    p = plans / "dag.json"
    for written in ("été", "\\u00e9t\\u00e9"):
        p.write_text('{"defaults": {"agent": "true"},\n "tasks": [{"id": "a", "prompt": "p"}],\n'
                     f' "resources": {{"{written}": 1,\n  "{written}": 2}}}}', encoding="utf-8")
        with pytest.raises(PlanError) as ei:
            planmod.load(str(p))
        assert str(ei.value) == f'{p}:4: duplicate key "\\u00e9t\\u00e9" in one object'


def test_a_plan_that_is_only_nan_or_infinity_is_refused_without_a_line(plans):
    """NaN and Infinity are no JSON: inside the document the error names the line of the value;
    as the whole document there is nothing before it to count lines from, and the file alone is named."""
    p = plans / "dag.json"
    for text, word, where in (("NaN", "NaN", ""), ("\n-Infinity", "-Infinity", ""), ('{"tasks":\n [NaN]}', "NaN", ":2")):
        p.write_text(text)
        with pytest.raises(PlanError) as ei:
            planmod.load(str(p))
        assert str(ei.value) == f"{p}{where}: malformed JSON: {word} is not valid JSON"


def test_a_duplicate_key_spelt_with_escapes_of_ascii_characters_is_reported_at_line_1(plans):
    """The duplicate's line is found by searching the key as json.dumps writes it (raw or
    \\u-escaped non-ASCII); a key spelt otherwise ("\\u0061" for "a") is not found, and the
    error falls back to line 1 -- still one line, naming the key."""
    p = plans / "dag.json"
    p.write_text('\n{"tasks": [],\n "\\u0061": 1,\n "\\u0061": 2}')
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value) == f'{p}:1: duplicate key "a" in one object'


def test_an_error_in_a_value_written_at_the_very_start_of_a_line_names_that_line(plans):
    """The line of an error is that of the value's first character, also when nothing (no
    indentation) stands before it on its line: the character after a newline is read, not skipped."""
    assert planmod._value_lines('[\n1,\n2]') == {(): 1, (0,): 2, (1,): 3}
    p = plans / "dag.json"
    p.write_text('{"defaults": {"agent": "true"}, "tasks": [{"id": "a", "prompt": "p", "timeout":\n0}]}')
    with pytest.raises(PlanError) as ei:
        planmod.load(str(p))
    assert str(ei.value) == f"{p}:2: tasks[0].timeout: must be greater than 0, got 0"


def test_the_task_field_table_is_built_once_on_first_use_and_agrees_with_the_task(plans, monkeypatch):
    """Task is a tuple, not a dataclass; its dataclass field table (for dataclasses.fields(),
    replace(), asdict() and orjson) is built on first use and then kept as a plain class
    attribute. It must say what a Task does: each field's default is the value a Task built
    without it has, a field is compared iff two Tasks differing in it are unequal, and hashed
    iff their hashes differ."""
    import dataclasses
    monkeypatch.setattr(planmod.Task, "__dataclass_fields__", planmod._TaskFields())      # as at start-up
    table = planmod.Task.__dataclass_fields__
    assert planmod.Task.__dict__["__dataclass_fields__"] is table and planmod.Task.__dataclass_fields__ is table
    assert list(table) == list(planmod._TASK_KEYS) == [f.name for f in dataclasses.fields(planmod.Task)]
    t = planmod.load(str(write_plan(plans, [{"id": "a", "prompt": "p"}], defaults=AGENT))).tasks[0]
    bare = planmod.Task(**{k: getattr(t, k) for k, f in table.items()
                           if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING})
    required = {"id", "deps", "soft_deps", "prompt", "prompt_file", "agent", "workdir"}
    assert required <= {k for k in table if k not in planmod._TASK_DEFAULTS}
    for k, f in table.items():
        if k in planmod._TASK_DEFAULTS:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert default == getattr(bare, k), k
        other = t.replace(**{k: ("another value",)})
        hashed = f.compare if f.hash is None else f.hash          # (None: as compare, dataclasses' rule)
        assert (f.compare, hashed) == (other != t, hash(other) != hash(t)), k
    assert dataclasses.replace(t, prompt="z") == t.replace(prompt="z")
