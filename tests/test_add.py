"""`dagrun add` / edit.add_tasks (issue 19): tasks added to a goal, validated like a plan."""
from __future__ import annotations

import json

import pytest

from conftest import DAGRUN, events, run, write_plan


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
    ev = events(home, "g")
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


@pytest.mark.parametrize("fragment, msg", [
    ({"tasks": [{"id": "t.0", "prompt": "p", "agent": "true"}]}, 'task id "t.0" is reserved for the instances of the template "t"'),
    ({"tasks": [{"id": "a.1", "prompt": "p", "agent": "true"},
                {"id": "a", "prompt": "p", "agent": "true"}]}, 'task id "a" already exists'),
    ({"tasks": [{"id": f"n{i}", "prompt": "p", "agent": "true"} for i in range(3)]},
     "the goal would have 6 tasks; its max_tasks is 5"),
])
def test_reserved_ids_and_max_tasks_are_refused(tmp_path, fragment, msg):
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo []"},
                                       {"id": "t", "for_each": {"from": "a"}, "prompt": "x", "agent": "cat"},
                                       {"id": "b", "deps": ["a"], "prompt": "x", "agent": "echo b"}],
                      goal="g", max_tasks=5)
    run("submit", plan, home=home)
    before = (home / "goals/g/plan.json").read_bytes(), (home / "goals/g/events.jsonl").read_bytes()
    p = run("add", "g", "-", home=home, check=2, input=json.dumps(fragment))
    assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert ((home / "goals/g/plan.json").read_bytes(), (home / "goals/g/events.jsonl").read_bytes()) == before


def test_an_agent_adds_three_sub_goals_with_its_dagrun_variables(tmp_path):
    """Inside a run, `dagrun add FRAGMENT` needs no goal and no --by: $DAGRUN_GOAL names the
    goal, $DAGRUN_TASK/$DAGRUN_ATTEMPT who added them (event and plan.json)."""
    frag = tmp_path / "frag.json"
    frag.write_text(json.dumps({"defaults": {"agent": "sleep 0.2; head -1"}, "tasks": [
        {"id": f"sub{i}", "deps": ["boss"], "prompt": f"sub-goal {i}"} for i in range(3)]}))
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [
        {"id": "boss", "prompt": "x", "agent": f"{DAGRUN} add {frag} >/dev/null && echo planned"},
        {"id": "side", "prompt": "x", "agent": "sleep 0.5; echo side"}], goal="g")
    run("run", plan, home=home)
    tasks = home / "goals/g/tasks"
    assert [(tasks / f"sub{i}/output").read_text() for i in range(3)] == [f"sub-goal {i}\n" for i in range(3)]
    s = json.loads((home / "goals/g/summary.json").read_text())
    assert s["counts"] == {"done": 5}
    ev = events(home, "g")
    add = [e for e in ev if e["type"] == "agent.plan.replaced"]
    assert len(add) == 1 and add[0]["worker"] == "g/boss" and add[0]["by_task"] == "boss" and add[0]["by_attempt"] == 1
    assert add[0]["added"] == ["sub0", "sub1", "sub2"]
    finished = next(i for i, e in enumerate(ev) if e["type"] == "agent.goal.finished")
    for i in range(3):
        done = next(j for j, e in enumerate(ev) if e.get("task") == f"sub{i}" and e.get("status") == "done")
        assert done < finished
    pj = {t["id"]: t for t in json.loads((home / "goals/g/plan.json").read_text())["tasks"]}
    assert pj["sub1"]["origin"]["by"] == "g/boss" and pj["sub1"]["origin"]["edit"] == "add"
    assert "origin" not in pj["boss"]


def test_add_keeps_the_plans_budget_and_cap(tmp_path):
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo a"}], goal="g",
                      budget={"usd": 5}, max_tasks=10)
    run("submit", plan, home=home)
    run("add", "g", "-", home=home, input=json.dumps({"tasks": [{"id": "b", "prompt": "p", "agent": "true"}]}))
    pj = json.loads((home / "goals/g/plan.json").read_text())
    assert pj["budget"] == {"usd": 5.0} and pj["max_tasks"] == 10


def test_add_outside_a_run_needs_the_goal(tmp_path):
    home = _goal(tmp_path)
    p = run("add", "-", home=home, check=2, input="{}")
    assert "give GOAL and FRAGMENT" in p.stderr
