"""`dagrun plan`: predictions from estimates and from the home's history."""
from __future__ import annotations

import json

from conftest import run, write_plan

SLEEPS = {"a": 0.6, "b": 0.4, "c": 0.8, "d": 0.5, "e": 0.3, "f": 0.7}
DEPS = {"c": ["a"], "d": ["a", "b"], "e": ["c", "d"]}


def _plan(folder, **top):
    return write_plan(folder, [
        {"id": t, "prompt": t, "deps": DEPS.get(t, []),
         "agent": f"cat >/dev/null; sleep {s}; echo '{{\"cost_usd\": {s / 10}}}' >> \"$DAGRUN_USAGE_FILE\"; echo {t}"}
        for t, s in SLEEPS.items()], goal="est", **top)


def test_prediction_after_one_run_is_within_25_percent(tmp_path):
    home = tmp_path / "home"
    plan = _plan(tmp_path / "p")
    before = json.loads(run("plan", plan, "-j", "2", "--json", home=home).stdout)
    assert before["unknown"] == sorted(SLEEPS) or set(before["unknown"]) == set(SLEEPS)
    assert not (home / "goals").exists()                          # `plan` writes nothing
    run("run", plan, "-j", "2", home=home)
    actual = json.loads((home / "goals/est/summary.json").read_text())
    p = json.loads(run("plan", plan, "-j", "2", "--json", home=home).stdout)
    assert p["sources"] == {"history": 6} and p["unknown"] == []
    assert abs(p["makespan"] - actual["makespan"]) <= 0.25 * actual["makespan"], (p["makespan"], actual["makespan"])
    assert abs(p["usd"] - actual["usage"]["cost_usd"]) <= 0.25 * actual["usage"]["cost_usd"]
    assert p["waves"] == [["a", "b", "f"], ["c", "d"], ["e"]]
    assert p["critical_path"]["tasks"] == ["a", "c", "e"]
    # the text form says the same
    txt = run("plan", plan, "-j", "2", home=home).stdout
    assert "plan est: 6 tasks in 3 waves, -j 2" in txt and "critical path a -> c -> e" in txt
    assert "estimates: 6 history" in txt


def test_estimates_in_the_plan_and_the_agents_median(tmp_path):
    home = tmp_path / "home"
    agent = "cat >/dev/null; sleep 0.2; echo x"
    first = write_plan(tmp_path / "p1", [{"id": "x", "prompt": "x", "agent": agent}], goal="one")
    run("run", first, home=home)
    plan = write_plan(tmp_path / "p2", [
        {"id": "new", "prompt": "n", "agent": agent},                                   # same agent, new id
        {"id": "given", "prompt": "g", "agent": "other", "estimate": {"seconds": 100, "usd": 2.5}},
        {"id": "half", "prompt": "h", "agent": "other", "estimate": {"usd": 1}, "deps": ["given"]},
    ], goal="two")
    p = json.loads(run("plan", plan, "--json", home=home).stdout)
    e = p["estimates"]
    assert e["new"]["source"] == "agent-median" and 0.15 < e["new"]["seconds"] < 2
    assert e["given"] == {"seconds": 100.0, "usd": 2.5, "source": "estimate"}
    assert e["half"]["source"] == "unknown" and e["half"]["usd"] == 1.0
    assert p["unknown"] == ["half"] and p["usd"] == 3.5
    assert p["makespan"] == 100.0 and p["critical_path"]["seconds"] == 100.0


def test_jobs_limit_the_simulated_parallelism(tmp_path):
    tasks = [{"id": f"t{i}", "prompt": "x", "agent": "cat", "estimate": {"seconds": 10}} for i in range(4)]
    plan = write_plan(tmp_path / "p", tasks, goal="par")
    home = tmp_path / "home"
    assert json.loads(run("plan", plan, "-j", "1", "--json", home=home).stdout)["makespan"] == 40
    assert json.loads(run("plan", plan, "-j", "4", "--json", home=home).stdout)["makespan"] == 10
    capped = write_plan(tmp_path / "p", tasks, goal="par", name="capped.json", max_parallel=2)
    assert json.loads(run("plan", capped, "-j", "4", "--json", home=home).stdout)["makespan"] == 20


def test_bad_estimate_is_a_plan_error(tmp_path):
    for est, msg in [('"fast"', "tasks[0].estimate: expected an object"),
                     ('{"seconds": -1}', "tasks[0].estimate.seconds: expected a non-negative number"),
                     ('{"minutes": 3}', 'tasks[0].estimate.minutes: unknown field "minutes" in estimate')]:
        p = tmp_path / "dag.json"
        p.write_text('{"goal": "b", "tasks": [{"id": "a", "prompt": "x", "agent": "cat", "estimate": %s}]}' % est)
        r = run("plan", p, home=tmp_path / "home", check=2)
        assert msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
