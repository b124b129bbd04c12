"""`dagrun add` / edit.add_tasks (issue 19): tasks added to a goal, validated like a plan."""
from __future__ import annotations

import json

import pytest

from conftest import DAGRUN, run, write_plan


def _goal(tmp_path):
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo a"},
                                       {"id": "b", "deps": ["a"], "prompt": "x", "agent": "echo b"}], goal="g")
    run("submit", plan, home=home)
    return home


@pytest.mark.parametrize("fragment, msg", [
    ({"tasks": [{"id": "x", "deps": ["y"], "prompt": "p", "agent": "true"},
                {"id": "y", "deps": ["x"], "prompt": "p", "agent": "true"}]}, "dependency cycle: x -> y -> x"),
    ({"tasks": [{"id": "b", "prompt": "p", "agent": "true"}]}, 'task id "b" already exists in goal "g"'),
    ({"tasks": [{"id": "x", "prompt": "p", "agent": "true"}, {"id": "x", "prompt": "p", "agent": "true"}]},
     'duplicate task id "x"'),
    ({"tasks": [{"id": "x", "deps": ["nope"], "prompt": "p", "agent": "true"}]}, 'unknown dependency "nope"'),
    ({"tasks": []}, "a fragment needs \"tasks\""),
    ({"tasks": [{"id": "x", "prompt": "p"}]}, "has no agent"),
])
def test_bad_fragment_is_refused_with_exit_2_and_changes_nothing(tmp_path, fragment, msg):
    home = _goal(tmp_path)
    gdir = home / "goals" / "g"
    before = {p.name: p.read_bytes() for p in gdir.iterdir() if p.is_file()}
    frag = tmp_path / "frag.json"
    frag.write_text(json.dumps(fragment))
    p = run("add", "g", frag, home=home, check=2)
    assert msg in p.stderr and "Traceback" not in p.stderr, p.stderr
    after = {p.name: p.read_bytes() for p in gdir.iterdir() if p.is_file()}
    assert after == before


def test_add_to_a_finished_goal_reopens_it(tmp_path):
    home = _goal(tmp_path)
    run("run", "g", home=home)
    assert (home / "goals/g/summary.json").exists()
    run("add", "g", "-", home=home, input=json.dumps(
        {"defaults": {"agent": "echo c"}, "tasks": [{"id": "c", "deps": ["b"], "prompt": "p"}]}))
    st = json.loads(run("status", "g", "--json", home=home).stdout)
    assert st["state"] == "ready" and st["counts"] == {"done": 2, "ready": 1}
    run("run", "g", home=home)
    assert (home / "goals/g/tasks/c/output").read_text() == "c\n"
    ev = [json.loads(x) for x in (home / "goals/g/events.jsonl").read_text().splitlines()]
    add = [e for e in ev if e["type"] == "agent.plan.replaced"]
    assert add[0]["edit"] == "add" and add[0]["added"] == ["c"] and add[0]["worker"]
    assert [e["type"] for e in ev].count("agent.goal.finished") == 2


def test_a_task_added_by_a_running_agent_runs_before_the_goal_ends(tmp_path):
    frag = tmp_path / "frag.json"
    frag.write_text(json.dumps({"tasks": [
        {"id": "child1", "deps": ["parent"], "prompt": "p", "agent": "echo child1"},
        {"id": "child2", "deps": ["child1", "later"], "prompt": "p", "agent": "cat"}]}))
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [
        {"id": "parent", "prompt": "x", "agent": f'{DAGRUN} add "$DAGRUN_GOAL" {frag} --by "$DAGRUN_TASK" && echo fanned'},
        {"id": "later", "deps": ["parent"], "prompt": "x", "agent": "sleep 0.3; echo later"}], goal="g")
    run("run", plan, home=home)
    for t in ("parent", "later", "child1", "child2"):
        assert (home / "goals/g/tasks" / t / "done").exists(), t
    assert "child1" in (home / "goals/g/tasks/child2/prompt.md").read_text()
    s = json.loads((home / "goals/g/summary.json").read_text())
    assert s["counts"] == {"done": 4}
