"""The budget pool: plan `budget`, per-task soft `budget_share`, the hard pool in the scheduler,
running attempts stopped past it, `dagrun budget GOAL --add` resuming the held tasks."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import events, run, spawn, task_dir, wait_for, write_plan

from dagrun.errors import PlanError
from dagrun.plan import parse
from dagrun.scheduler import Scheduler

# reports its usage as it goes: 15 lines of $0.01, one every 0.25 s ($0.15 in about 4 s);
# prints whether it was told that it went past its share of the budget
AGENT = ("cat >/dev/null; i=0; while [ $i -lt 15 ]; do echo '{\"cost_usd\": 0.01, \"tokens_out\": 10}' "
         ">> \"$DAGRUN_USAGE_FILE\"; i=$((i+1)); sleep 0.25; done; "
         "if [ -e \"$DAGRUN_BUDGET_FILE\" ]; then echo told; else echo untold; fi")


class T:
    def __init__(self, tid, deps=(), priority=0):
        self.id, self.deps, self.soft_deps, self.priority = tid, list(deps), [], priority


def test_scheduler_budget_rule():
    s = Scheduler([T("a", priority=2), T("b", priority=1), T("c")], budget={"usd": 1.0},
                  estimates={"a": 0.6, "b": 0.6})
    s.set_budget({"usd": 1.0}, {"usd": 0.5, "tokens": 0})
    assert not s.may_start() and s.take() is None            # 0.5 + 0.6 > 1: a waits, b and c do not jump it
    assert s.budget_held() == ["a", "b"]
    s.set_budget({"usd": 2.0}, {"usd": 0.5})                  # raised
    assert s.take() == "a" and s.take() == "b" and s.take() == "c"
    s2 = Scheduler([T("x")], budget={"tokens": 100})
    s2.set_budget({"tokens": 100}, {"usd": 0.0, "tokens": 100})
    assert s2.take() is None and s2.budget_held() == ["x"]    # no estimate: held once the pool is spent
    s2.set_budget(None, {})
    assert s2.take() == "x"


def test_the_budget_counts_the_task_s_own_estimate_when_a_mutex_or_a_serial_group_is_on():
    """take() with the files mutex, a serial group or resources goes the long way (each ready
    task in turn): there too a task whose usd estimate does not fit what is left waits."""
    for rule in ({"files": {"a": ["src/*"]}}, {"serial": {"a": "g"}}):
        s = Scheduler([T("a")], budget={"usd": 1.0}, estimates={"a": 0.6}, **rule)
        s.set_budget({"usd": 1.0}, {"usd": 0.5})
        assert s.take() is None and s.budget_held() == ["a"], rule     # 0.5 + 0.6 > 1
        s.set_budget({"usd": 1.0}, {"usd": 0.4})
        assert s.take() == "a", rule                                    # 0.4 + 0.6 = 1: fits


@pytest.mark.parametrize("top,msg", [
    ({"budget": {}}, "an empty budget limits nothing"),
    ({"budget": {"usd": -1}}, "expected a positive number"),
    ({"budget": {"dollars": 1}}, 'unknown field "dollars" in budget'),
    ({"budget": {"tokens": 1.5}}, "whole number of tokens"),
    ({"budget": 5}, "expected an object"),
    ({"defaults": {"budget_share": 1.5}}, "at most 1"),
])
def test_budget_fields_are_validated(top, msg):
    doc = {**top, "tasks": [{"id": "a", "prompt": "p", "agent": "true"}]}
    with pytest.raises(PlanError, match=msg):
        parse(json.dumps(doc).encode(), shown="dag.json", source="/tmp/dag.json", default_goal="g")


def test_plan_without_budget_keeps_its_plan_json():
    doc = {"tasks": [{"id": "a", "prompt": "p", "agent": "true"}]}
    d = parse(json.dumps(doc).encode(), shown="x", source="/tmp/x.json", default_goal="g").to_dict()
    assert "budget" not in d and "budget_share" not in d["tasks"][0]
    doc["budget"] = {"usd": 2, "tokens": 1000}
    doc["defaults"] = {"budget_share": 0.25}
    p = parse(json.dumps(doc).encode(), shown="x", source="/tmp/x.json", default_goal="g")
    assert p.budget == {"usd": 2.0, "tokens": 1000} and p.tasks[0].budget_share == 0.25


def _spent(home: Path, g: str) -> dict:
    return json.loads(run("budget", g, "--json", home=home).stdout)


def test_budget_stops_the_goal_at_the_pool_and_add_resumes_it(tmp_path):
    home = tmp_path / "home"
    tasks = [{"id": f"t{i}", "prompt": "p", "agent": AGENT} for i in range(8)]
    plan = write_plan(tmp_path / "p", tasks, goal="spend", budget={"usd": 1.0},
                      defaults={"budget_share": 0.1})
    t0 = time.monotonic()
    r = run("run", plan, "-j", "3", home=home, check=1, timeout=120)
    assert "held at its budget" in r.stderr and "dagrun budget spend --add" in r.stderr
    b = _spent(home, "spend")
    assert b["pool"] == {"usd": 1.0}
    assert 1.0 <= b["spent"]["usd"] <= 1.05, b["spent"]         # overshoot beyond the pool <= 5 %
    assert b["held"], b
    done = [t["id"] for t in tasks if (task_dir(home, "spend", t["id"]) / "done").exists()]
    assert 5 <= len(done) <= 7 and set(b["held"]) == {t["id"] for t in tasks} - set(done)
    # the soft share ($0.10): every task that went past it was told, through the file
    assert all((task_dir(home, "spend", t) / "output").read_text().strip() == "told" for t in done)
    ev = events(home, "spend")
    assert sum(1 for e in ev if e["type"] == "agent.task.budget") >= len(done)
    held_ev = [e for e in ev if e["type"] == "agent.task.blocked" and e.get("blocked_by") == "budget"]
    assert {e["task"] for e in held_ev} >= set(b["held"]) and all(e["reason"].startswith("budget") for e in held_ev)
    stopped = [json.loads(p.read_text()) for p in (home / "goals" / "spend" / "tasks").glob("*/attempts/*.json")]
    stopped = [r for r in stopped if r.get("outcome") == "budget"]
    assert stopped and all(r["usage"]["cost_usd"] > 0 for r in stopped)   # what they spent is counted
    st = json.loads(run("status", "spend", "--json", home=home).stdout)
    rows = {x["task"]: x for x in st["tasks"]}
    assert all(rows[t]["state"] == "blocked" and rows[t]["blocked_by"] == "budget" for t in b["held"])
    assert "budget" in run("status", "spend", home=home).stdout
    assert time.monotonic() - t0 < 60
    # --add: the held tasks go on (a worker serving the home picks the raise up)
    w = spawn("worker", "-j", "3", home=home)
    try:
        time.sleep(1.0)
        assert not any((task_dir(home, "spend", t) / "done").exists() for t in b["held"])   # still held
        out = run("budget", "spend", "--add", "1", home=home).stdout
        assert "spent $1.0" in out and "of $2.0000" in out
        wait_for(lambda: all((task_dir(home, "spend", t["id"]) / "done").exists() for t in tasks), timeout=60,
                 what="every task done after --add")
    finally:
        w.terminate()
        w.wait(timeout=30)
    assert any(e["type"] == "agent.goal.budget" and e["added"] == {"usd": 1.0} for e in events(home, "spend"))
    assert _spent(home, "spend")["spent"]["usd"] <= 2.0


def test_budget_command_errors(tmp_path):
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "p", "agent": "echo hi"}], goal="free")
    run("submit", plan, home=home)
    r = run("budget", "free", "--add", "1", home=home, check=2)
    assert r.stderr.strip() == "dagrun: goal 'free' has no budget (set \"budget\": {\"usd\": N} in its plan)"
    assert not (home / "goals" / "free" / "budget.json").exists()
    assert "no goal 'nosuch'" in run("budget", "nosuch", home=home, check=2).stderr
