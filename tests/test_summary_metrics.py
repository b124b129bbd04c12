"""The aggregator (summary.json, `dagrun status GOAL`) and the Prometheus metrics (one-shot and
a worker's periodic textfile), on real runs."""
from __future__ import annotations

import json
import os
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import kill_group, run, run_goal, spawn, wait_for, write_plan

# a -> b is the long chain (2 x 0.5 s); c is short; d fails twice (one retry) and blocks e
TASKS = [
    {"id": "a", "prompt": "p", "agent": "sleep 0.5; echo a"},
    {"id": "b", "prompt": "p", "deps": ["a"], "agent": "sleep 0.5; echo b"},
    {"id": "c", "prompt": "p", "agent": "sleep 0.1; echo c"},
    {"id": "d", "prompt": "p", "agent": "echo boom >&2; exit 3", "retries": 1, "retry_backoff": 0.05},
    {"id": "e", "prompt": "p", "deps": ["d"]},
]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    home, _ = run_goal(tmp_path_factory.mktemp("agg"), TASKS, check=1, goal="agg", defaults={"agent": "true"},
                       max_parallel=4)
    return home


def _metrics(text: str) -> dict:
    """{(name, frozenset(labels)): value} from the exposition, via prometheus_client's parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_summary_json_of_an_ended_goal(ran):
    s = json.loads((ran / "goals" / "agg" / "summary.json").read_text())
    assert s["outcome"] == "failed" and s["tasks"] == 5
    assert s["counts"] == {"done": 3, "failed": 1, "blocked": 1}
    assert s["failed_roots"] == ["d"] and s["blocked"] == [{"task": "e", "blocked_by": "d"}]
    assert s["critical_path"]["tasks"] == ["a", "b"]
    assert 1.0 <= s["critical_path"]["duration"] <= s["makespan"] + 0.001
    assert s["attempts"] == 5 and s["attempts_by_outcome"] == {"done": 3, "failed": 2}
    assert s["repeat_total"] == 1 and s["blocked_total"] == 1
    assert s["agent_time"] >= 1.1
    assert s["parallelism"] == pytest.approx(s["agent_time"] / s["makespan"], rel=0.01)
    assert [r["task"] for r in s["slowest"][:2]] in (["a", "b"], ["b", "a"])
    assert {r["task"]: r["attempts"] for r in s["slowest"]}["d"] == 2
    assert s["generation_latency"]["p50"] > 0 and s["generation_latency"]["max"] >= s["generation_latency"]["p50"]
    assert len(s["workers"]) == 1 and s["started"] < s["ended"]


def test_status_shows_the_summary(ran):
    out = run("status", "agg", home=ran, check=True).stdout
    assert "critical path a -> b" in out
    for word in ("makespan", "agent time", "parallelism", "repeats 1", "blocked 1", "slowest"):
        assert word in out, out
    d = json.loads(run("status", "agg", "--json", home=ran).stdout)
    assert d["summary"]["critical_path"]["tasks"] == ["a", "b"]


def test_summary_is_rewritten_after_a_retry_and_counts_the_repeat(home, plans):
    flag = plans / "ok"
    p = write_plan(plans, [{"id": "x", "prompt": "p", "agent": f"test -e {flag}"}], goal="again",
                   defaults={"agent": "true"})
    run("run", p, home=home, check=1)
    s1 = json.loads((home / "goals" / "again" / "summary.json").read_text())
    assert s1["outcome"] == "failed" and s1["repeat_total"] == 0
    flag.write_text("")
    run("retry", "again", "x", home=home)
    assert not (home / "goals" / "again" / "summary.json").exists()
    run("run", "again", home=home)
    s2 = json.loads((home / "goals" / "again" / "summary.json").read_text())
    assert s2["outcome"] == "done" and s2["repeat_total"] == 1
    assert s2["attempts_by_outcome"] == {"failed": 1, "done": 1}


def test_metrics_parse_and_match_the_files(ran, tmp_path):
    text = run("metrics", home=ran).stdout
    m = _metrics(text)
    g = ("goal", "agg")
    for state, n in {"done": 3, "failed": 1, "blocked": 1, "waiting": 0, "ready": 0, "running": 0}.items():
        assert m[("dagrun_tasks", frozenset({g, ("state", state)}))] == n
    assert m[("dagrun_ready_queue_depth", frozenset({g}))] == 0
    assert m[("dagrun_running_tasks", frozenset())] == 0
    assert m[("dagrun_goal_finished", frozenset({g}))] == 1
    assert m[("dagrun_blocked_total", frozenset({g}))] == 1
    assert m[("dagrun_repeat_total", frozenset({g}))] == 1
    assert m[("dagrun_task_duration_seconds_count", frozenset({g, ("outcome", "done")}))] == 3
    assert m[("dagrun_task_duration_seconds_count", frozenset({g, ("outcome", "failed")}))] == 2
    assert m[("dagrun_task_duration_seconds_bucket", frozenset({g, ("outcome", "done"), ("le", "+Inf")}))] == 3
    assert m[("dagrun_task_duration_seconds_bucket", frozenset({g, ("outcome", "done"), ("le", "0.1")}))] == 0
    assert m[("dagrun_generation_latency_seconds_count", frozenset({g}))] == 3
    s = json.loads((ran / "goals" / "agg" / "summary.json").read_text())
    assert m[("dagrun_goal_parallelism", frozenset({g}))] == pytest.approx(s["parallelism"], rel=0.2)
    assert not any(name == "dagrun_statebus_lag_ms_count" for name, _ in m)   # only a worker observes the bus
    # --textfile: the same, published by rename (no temporary file left beside it)
    out = tmp_path / "prom" / "dagrun.prom"
    out.parent.mkdir()
    run("metrics", "--textfile", out, home=ran)
    assert _metrics(out.read_text()).keys() == m.keys()
    assert os.listdir(out.parent) == ["dagrun.prom"]
    r = run("metrics", "--textfile", tmp_path / "missing" / "x.prom", home=ran, check=5)
    assert r.stderr.startswith("dagrun: ") and len(r.stderr.splitlines()) == 1


def test_metrics_of_a_running_goal(home, plans):
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(5)], goal="busy",
                   defaults={"agent": "sleep 30"})
    eng = spawn("run", p, "-j", "2", home=home)
    try:
        wait_for(lambda: len(list((home / "goals" / "busy" / "tasks").glob("*/claim/owner.json"))) == 2,
                 what="two running tasks")
        m = _metrics(run("metrics", home=home).stdout)
        g = ("goal", "busy")
        assert m[("dagrun_tasks", frozenset({g, ("state", "running")}))] == 2
        assert m[("dagrun_tasks", frozenset({g, ("state", "ready")}))] == 3
        assert m[("dagrun_ready_queue_depth", frozenset({g}))] == 3
        assert m[("dagrun_running_tasks", frozenset())] == 2
        assert m[("dagrun_goal_finished", frozenset({g}))] == 0
    finally:
        kill_group(eng, signal.SIGINT)
        eng.wait(30)


def test_worker_refreshes_its_textfile_with_the_statebus_lag(home, plans, tmp_path):
    """Worker A keeps a textfile; `dagrun run` (another process) runs tasks of the same goal,
    and A measures how long its events took to reach it."""
    (tmp_path / "prom").mkdir()
    prom = tmp_path / "prom" / "w.prom"
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(6)], goal="lag",
                   defaults={"agent": "sleep 0.3"})
    a = spawn("worker", "-j", "1", "--name", "wa", "--metrics", prom, "--metrics-every", "0.2", home=home)
    try:
        wait_for(lambda: prom.exists(), what="the first textfile")
        first = _metrics(prom.read_text())
        assert first[("dagrun_statebus_lag_ms_count", frozenset({("worker", "wa")}))] >= 0
        t0 = first[("dagrun_metrics_timestamp_seconds", frozenset())]
        # wb submits the goal and starts two tasks at once: wa (already up) cannot have taken
        # them all before wb starts, however slowly wb starts (a submit before wa let a loaded
        # machine hand wa all six and wb none)
        run("run", p, "-j", "2", "--worker", "wb", home=home)

        def final():
            m = _metrics(prom.read_text())
            return m if m.get(("dagrun_goal_finished", frozenset({("goal", "lag")}))) == 1 else None
        m = wait_for(final, what="the textfile to show the goal ended")
        assert m[("dagrun_metrics_timestamp_seconds", frozenset())] > t0        # refreshed
        assert m[("dagrun_tasks", frozenset({("goal", "lag"), ("state", "done")}))] == 6
        w = frozenset({("worker", "wa")})
        n = m[("dagrun_statebus_lag_ms_count", w)]
        assert n >= 4                       # wb's running/done events at least, seen by wa
        assert m[("dagrun_statebus_lag_ms_bucket", w | {("le", "+Inf")})] == n
        assert 0 <= m[("dagrun_statebus_lag_ms_sum", w)] / n < 2000
    finally:
        kill_group(a, signal.SIGTERM)
        assert a.wait(30) == 143
    assert os.listdir(tmp_path / "prom") == ["w.prom"]       # no temporary file left behind
