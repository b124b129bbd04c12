"""Fan-out (issue 18): a `for_each` template becomes one task per item of an upstream output."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import DAGRUN, agents_of, events, run, spawn, wait_for, write_plan

PY = sys.executable


def _lister(items) -> str:
    """An agent printing `items` (any text) as its output."""
    return f"{PY} -c 'import sys; sys.stdout.write(open(sys.argv[1]).read())' " + "{}"


def _plan(tmp_path, output: str, *, template: dict | None = None, more: list | None = None, **top):
    (tmp_path / "items.txt").write_text(output)
    tpl = {"id": "migrate", "for_each": {"from": "plan-files", "max": 200},
           "prompt": "Migrate {{item.path}} (item {{item_index}})", "agent": "head -1"}
    tpl.update(template or {})
    tasks = [{"id": "plan-files", "prompt": "list the files", "agent": f"cat {tmp_path / 'items.txt'}"}, tpl,
             {"id": "join", "deps": ["migrate"], "prompt": "Summarise", "agent": "cat"}] + (more or [])
    return write_plan(tmp_path / "p", tasks, goal="g", **top)


def test_twenty_items_fan_out_to_twenty_tasks_and_the_join_sees_twenty_outputs(tmp_path):
    home = tmp_path / "home"
    items = [{"path": f"src/m{i}.py"} for i in range(20)]
    plan = _plan(tmp_path, json.dumps(items))
    run("run", plan, "-j", "4", home=home)
    tasks = home / "goals/g/tasks"
    for k in range(20):
        assert (tasks / f"migrate.{k}/done").exists()
        assert (tasks / f"migrate.{k}/output").read_text() == f"Migrate src/m{k}.py (item {k})\n"
    prompt = (tasks / "join/prompt.md").read_text()
    assert [f"## Output of migrate.{k}" in prompt for k in range(20)] == [True] * 20
    for k in range(20):
        assert f"Migrate src/m{k}.py (item {k})" in prompt
    # the template's own output: every instance's output, in item order (for `cat`, jq, a next fan-out)
    assert json.loads((tasks / "migrate/output").read_text()) == [f"Migrate src/m{k}.py (item {k})\n" for k in range(20)]
    marker = json.loads((tasks / "migrate/done").read_text())
    assert marker["instances"] == 20
    st = json.loads(run("status", "g", "--json", home=home).stdout)
    assert st["counts"] == {"done": 23}
    edits = [e for e in events(home, "g") if e["type"] == "agent.plan.replaced"]
    assert len(edits) == 1 and edits[0]["edit"] == "fanout" and edits[0]["template"] == "migrate"
    assert edits[0]["added"] == [f"migrate.{k}" for k in range(20)] and edits[0]["source"] == "plan-files"
    pj = json.loads((home / "goals/g/plan.json").read_text())
    inst = {t["id"]: t for t in pj["tasks"]}
    assert inst["migrate.3"]["origin"] == {"edit": "fanout", "of": "migrate", "index": 3, "item": items[3]}
    assert inst["migrate"]["fanout"] == 20
    summary = json.loads((home / "goals/g/summary.json").read_text())
    assert summary["templates"] == {"migrate": {"from": "plan-files", "instances": 20}}
    out = run("graph", "g", home=home).stdout
    assert '[["migrate<br/>done<br/>x20 (for_each plan-files)"]]' in out and 'subgraph' in out


def test_join_prompt_shares_the_context_budget_between_instances(tmp_path):
    home = tmp_path / "home"
    plan = _plan(tmp_path, "\n".join(json.dumps("x" * 50 + str(i)) for i in range(4)),  # JSON Lines
                 template={"prompt": "{{item}}", "agent": "cat"},
                 more=[{"id": "small", "deps": ["migrate"], "prompt": "p", "agent": "cat", "context_limit": 200}])
    run("run", plan, home=home)
    prompt = (home / "goals/g/tasks/small/prompt.md").read_text()
    assert prompt.count("[... truncated: the first 50 of") == 4      # 200 bytes shared by 4 instances


@pytest.mark.parametrize("output, reason", [
    ("Here are the files: a.py, b.py\n", "the output of plan-files is not a JSON array of items, nor JSON Lines"),
    ('{"files": ["a.py"]}\n  \n{"x"', "line 3 is not JSON"),
    ("", "the output of plan-files is empty"),
    (json.dumps(list(range(201))), "lists 201 items; for_each.max is 200"),
    (json.dumps([{"path": "a"}, {"name": "b"}]), "item 1 has no field 'path'"),
    (json.dumps(["a", None]), "item 1 of the output of plan-files is null"),
])
def test_a_bad_output_fails_the_template_cleanly(tmp_path, output, reason):
    home = tmp_path / "home"
    plan = _plan(tmp_path, output)
    p = run("run", plan, home=home, check=1)
    tasks = home / "goals/g/tasks"
    failed = json.loads((tasks / "migrate/failed").read_text())
    assert failed["reason"].startswith("for_each: ") and reason in failed["reason"], failed
    assert reason in p.stdout + p.stderr
    assert not list(tasks.glob("migrate.*"))                       # nothing half-created
    pj = json.loads((home / "goals/g/plan.json").read_text())
    assert [t["id"] for t in pj["tasks"]] == ["plan-files", "migrate", "join"] and "fanout" not in pj["tasks"][1]
    st = json.loads(run("status", "g", "--json", home=home).stdout)
    assert st["counts"] == {"done": 1, "failed": 1, "blocked": 1}
    assert not any(e["type"] == "agent.plan.replaced" for e in events(home, "g"))


def test_fenced_json_and_zero_items(tmp_path):
    home = tmp_path / "home"
    plan = _plan(tmp_path, "```json\n[\"a\", \"b\"]\n```\n", template={"prompt": "{{item}}", "agent": "cat"})
    run("run", plan, home=home)
    assert (home / "goals/g/tasks/migrate.1/output").read_text().startswith("b")
    home2 = tmp_path / "home2"
    run("run", _plan(tmp_path, "[]"), home=home2)
    assert json.loads((home2 / "goals/g/tasks/migrate/output").read_text()) == []
    assert (home2 / "goals/g/tasks/join/done").exists()


def test_max_tasks_caps_the_fan_out(tmp_path):
    home = tmp_path / "home"
    plan = _plan(tmp_path, json.dumps([{"path": str(i)} for i in range(10)]), max_tasks=8)
    run("run", plan, home=home, check=1)
    failed = json.loads((home / "goals/g/tasks/migrate/failed").read_text())
    assert "10 instances would grow the goal to 13 tasks; its max_tasks is 8" in failed["reason"]


@pytest.mark.parametrize("template, msg", [
    ({"for_each": {"from": "migrate"}}, "a template cannot fan out over its own output"),
    ({"for_each": {"from": "nope"}}, 'unknown dependency "nope"'),
    ({"for_each": {"as": "x"}}, 'for_each needs "from"'),
    ({"for_each": {"from": "plan-files", "as": "a b"}}, "expected a name of letters"),
    ({"for_each": {"from": "plan-files", "max": 0}}, "must be at least 1"),
    ({"for_each": {"from": "plan-files", "every": 1}}, 'unknown field "every" in for_each'),
    ({"for_each": {"from": "plan-files"}, "soft_deps": ["plan-files"]}, "must be a dependency (deps)"),
])
def test_bad_for_each_is_a_plan_error(tmp_path, template, msg):
    plan = _plan(tmp_path, "[]", template=template)
    p = run("validate", plan, check=2)
    assert msg in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_instance_ids_are_reserved(tmp_path):
    plan = _plan(tmp_path, "[]", more=[{"id": "migrate.3", "prompt": "p", "agent": "true"}])
    p = run("validate", plan, check=2)
    assert 'task id "migrate.3" is reserved for the instances of the template "migrate"' in p.stderr


def test_a_bash_lobster_fans_out_through_claim(tmp_path):
    """`dagrun claim` expands a template that is ready and joins one whose instances are done."""
    home = tmp_path / "home"
    plan = _plan(tmp_path, json.dumps(["a", "b", "c"]), template={"prompt": "{{item}}"})
    run("submit", plan, home=home)
    script = tmp_path / "lobster.sh"
    script.write_text(f"""
get() {{ printf '%s' "$c" | {PY} -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }}
while true; do
  c=$({DAGRUN} --home {home} claim g --json); rc=$?
  [ $rc -eq 0 ] || break
  sh -c "$(get agent)" < "$(get prompt_file)" | {DAGRUN} --home {home} complete g "$(get task)" --output -
done
echo "rc=$rc"
""")
    import subprocess
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert "rc=1" in p.stdout, p.stdout + p.stderr
    tasks = home / "goals/g/tasks"
    assert [(tasks / f"migrate.{k}/output").read_text() for k in range(3)] == ["a\n", "b\n", "c\n"]
    assert (tasks / "join/done").exists() and json.loads((tasks / "migrate/output").read_text()) == ["a\n", "b\n", "c\n"]


def test_retry_force_of_the_source_expands_again_from_the_new_output(tmp_path):
    home = tmp_path / "home"
    plan = _plan(tmp_path, json.dumps(["a", "b", "c"]), template={"prompt": "{{item}}"})
    run("run", plan, home=home)
    (tmp_path / "items.txt").write_text(json.dumps(["x", "y"]))
    run("retry", "--force", "g", "plan-files", home=home)
    pj = json.loads((home / "goals/g/plan.json").read_text())
    assert [t["id"] for t in pj["tasks"]] == ["plan-files", "migrate", "join"]     # collapsed
    run("run", "g", home=home)
    tasks = home / "goals/g/tasks"
    assert json.loads((tasks / "migrate/output").read_text()) == ["x\n", "y\n"]
    assert not (tasks / "migrate.2").exists()


def test_submit_again_keeps_the_expansion_and_a_changed_template_reruns_its_instances(tmp_path):
    home = tmp_path / "home"
    plan = _plan(tmp_path, json.dumps(["a", "b"]), template={"prompt": "{{item}}"})
    run("run", plan, home=home)
    assert run("submit", plan, "--json", home=home).stdout.count('"unchanged"') == 1
    doc = json.loads(plan.read_text())
    doc["tasks"][1]["prompt"] = "item {{item}}"
    plan.write_text(json.dumps(doc))
    d = json.loads(run("diff", plan, "--json", home=home).stdout)["diff"]
    assert d["changed"] == ["migrate", "migrate.0", "migrate.1"] and d["downstream"] == ["join"]
    assert d["kept_done"] == ["plan-files"] and d["removed"] == []
    run("run", "--replace", plan, home=home)
    assert json.loads((home / "goals/g/tasks/migrate/output").read_text()) == ["item a\n", "item b\n"]
    # a new `from` expands again once it is done; the old instances are archived
    doc["tasks"].insert(0, {"id": "other", "prompt": "p", "agent": "echo '[\"z\"]'"})
    doc["tasks"][2]["for_each"]["from"] = "other"
    plan.write_text(json.dumps(doc))
    run("run", "--replace", plan, home=home)
    assert json.loads((home / "goals/g/tasks/migrate/output").read_text()) == ["item z\n"]
    assert not (home / "goals/g/tasks/migrate.1").exists()


def test_items_and_placeholders_rules():
    from dagrun.fanrules import FanoutError, parse_items, substitute, template_of
    assert parse_items(b"[1, 2]", source="s", limit=5) == [1, 2]
    assert parse_items(b'{"a": 1}\n\n{"a": 2}\n', source="s", limit=5) == [{"a": 1}, {"a": 2}]
    assert parse_items(b"```json\n[\"a\"]\n```\n", source="s", limit=5) == ["a"]
    with pytest.raises(FanoutError, match="lists more than 2 items"):
        parse_items(b"1\n2\n3\n", source="s", limit=2)
    with pytest.raises(FanoutError, match="is JSON but not an array of items, nor JSON Lines"):
        parse_items(b'{\n"a": 1}', source="s", limit=2)
    with pytest.raises(FanoutError, match="not UTF-8"):
        parse_items(b"\xff[]", source="s", limit=2)
    assert substitute("{{ f.a.0 }}|{{f}}|{{item}}|{{f_index}}", "f", {"a": ["x"]}, 3) == 'x|{"a": ["x"]}|{{item}}|3'
    with pytest.raises(FanoutError, match="item 0 has no field 'b'"):
        substitute("{{f.b}}", "f", {"a": 1}, 0)
    assert template_of("port.12") == "port" and template_of("v1.2.x") is None and template_of("a.01") is None


def test_cancelling_an_expanded_template_cancels_its_running_instances(tmp_path):
    """The template is the join of its instances: `dagrun cancel g migrate` stops them too,
    and the goal ends (it does not wait for instances nobody wants any more)."""
    home = tmp_path / "home"
    plan = _plan(tmp_path, json.dumps(["a", "b", "c"]), template={"prompt": "{{item}}", "agent": "sleep 60"})
    p = spawn("run", plan, "-j", "4", home=home)
    tasks = home / "goals/g/tasks"
    wait_for(lambda: all((tasks / f"migrate.{k}/claim").is_dir() for k in range(3)), what="three instances running")
    out = run("cancel", "g", "migrate", home=home).stdout.split()
    assert out == ["migrate", "migrate.0", "migrate.1", "migrate.2"]
    assert p.wait(timeout=30) == 1
    for k in range(3):
        assert (tasks / f"migrate.{k}/cancelled").exists() and not (tasks / f"migrate.{k}/claim").exists()
    assert agents_of(home) == []
    st = json.loads(run("status", "g", "--json", home=home, check=False).stdout)
    assert st["counts"] == {"done": 1, "cancelled": 4, "blocked": 1}
