"""The fixed cost of a goal's end in the engine (issue 20, bench/end_instr.py): what it derives
from lines or files it has read already says the same as a read of the whole thing."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import run, write_plan

from dagrun import events as ev
from dagrun import summary as sm
from dagrun.store import Home

LOG = [
    {"type": ev.PLAN_CREATED, "goal": "g"},
    {"type": ev.TASK_STATUS, "task": "a", "status": "ready"},
    {"type": ev.TASK_STATUS, "task": "a", "status": "running", "attempt": 1},
    {"type": ev.TASK_STATUS, "task": "a", "status": "retrying"},
    None,                                                       # a blank line
    {"type": ev.TASK_STATUS, "task": "a", "status": "running", "attempt": 2},
    {"type": ev.TASK_STATUS, "task": "a", "status": "done", "first_byte": 0.25},
    b"{not json",                                               # a line nobody can read
    {"type": ev.TASK_STATUS, "task": "b", "status": "running", "attempt": 1},
    {"type": ev.TASK_STATUS, "task": "b", "status": "failed"},
    {"type": ev.TASK_BLOCKED, "task": "c", "blocked_by": "b"},
    {"type": ev.TASK_BLOCKED, "task": "d", "blocked_by": "b"},
    {"type": ev.TASK_STATUS, "task": "b", "status": "running", "attempt": 2},
    {"type": ev.TASK_STATUS, "task": "b", "status": "done", "first_byte": 1.5},
    {"type": ev.TASK_STATUS, "task": "e", "status": "done", "first_byte": "soon"},
    {"type": ev.TASK_STATUS, "task": 7, "status": "running"},           # hand-written: the task "7"
    {"type": ev.TASK_STATUS, "task": "7", "status": "running"},
    {"type": ev.TASK_STATUS, "task": "f", "status": "done", "first_byte": True},
    {"type": ev.GOAL_FINISHED, "goal": "g"},
]


def _log(tmp_path: Path) -> tuple[str, list[int]]:
    path = str(tmp_path / "events.jsonl")
    starts = [0]
    with open(path, "wb") as f:
        for e in LOG:
            f.write(b"\n" if e is None else (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n")
            starts.append(f.tell())
    return path, starts


def test_a_tally_of_part_of_the_log_plus_the_rest_read_says_what_the_whole_log_says(tmp_path):
    """summary.tally_events(known=): the engine hands over its count of the lines its reader
    read (EventTally); the end reads only the lines before and after them. For every part
    (any line boundaries) the numbers are those of the whole log; a part whose edge is not
    where a line begins (or past the log's end) makes it read the whole log."""
    path, starts = _log(tmp_path)
    whole = sm.tally_events(path)
    assert whole == {"blocked_total": 2, "repeat_total": 3, "first_bytes": [0.25, 1.5, 1.0]}
    for i, s in enumerate(starts):
        for e in starts[i:]:
            t = sm.EventTally()
            t.add(list(ev.iter_all(path, start=s, stop=e)), s, e)
            assert sm.tally_events(path, t) == whole, (s, e)
    for s, e in ((starts[2] + 3, starts[5]), (starts[1], starts[3] + 1), (starts[0], starts[-1] + 40)):
        t = sm.EventTally()
        t.add([LOG[2]] * 5, s, e)          # what a wrong count would add, if it were believed
        assert sm.tally_events(path, t) == whole, (s, e)


def test_a_tally_starts_over_when_the_reader_was_moved(tmp_path):
    """EventTally.add: lines that do not follow the ones counted (a reader moved past a gap)
    restart the count at their offset -- never a count with a hole in it."""
    path, starts = _log(tmp_path)
    t = sm.EventTally()
    t.add(list(ev.iter_all(path, start=starts[0], stop=starts[3])), starts[0], starts[3])
    t.add(list(ev.iter_all(path, start=starts[6], stop=starts[9])), starts[6], starts[9])
    assert (t.start, t.end) == (starts[6], starts[9])
    assert sm.tally_events(path, t) == sm.tally_events(path)


def test_the_goal_end_parses_only_the_event_lines_the_engine_did_not_read(tmp_path, monkeypatch):
    """The engine's end of a goal built summary.json's event counts (blocked_total,
    repeat_total, generation latency) by parsing the whole events.jsonl again -- ~1 500 lines
    at the end of a 500-task fan-out, 3 ms of its ~20 ms (bench/end_instr.py). Its reader
    has parsed every line since the engine started (Reconciler._feed); the end now parses
    only the submit's lines before that and the last ones after it. The numbers are the same
    as from the whole log."""
    from dagrun.engine import Engine

    n = 30
    tasks = [{"id": "flaky", "prompt": "x",
              "agent": f"sh -c 'test -e {tmp_path}/once || {{ touch {tmp_path}/once; exit 1; }}; echo hi'"},
             {"id": "bad", "prompt": "x", "agent": "false", "retries": 0},
             {"id": "after_bad", "deps": ["bad"], "prompt": "x"}]
    tasks += [{"id": f"t{i:02d}", "prompt": "x", **({"deps": [f"t{i - 1:02d}"]} if i else {})} for i in range(n)]
    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", tasks, goal="g",
                   defaults={"agent": "echo out", "retries": 1, "retry_backoff": 0})
    run("submit", p, home=h.root)
    parsed = []
    real = ev.iter_all

    def counted(*a, **kw):
        for e in real(*a, **kw):
            parsed.append(e)
            yield e

    monkeypatch.setattr(sm.ev, "iter_all", counted)
    assert Engine(h, goal="g", jobs=4).run() != 0
    monkeypatch.setattr(sm.ev, "iter_all", real)
    lines = sum(1 for _ in real(h.events_path("g")))
    s = json.loads(Path(h.summary_path("g")).read_text())
    want = sm.tally_events(h.events_path("g"))
    assert (s["blocked_total"], s["repeat_total"]) == (want["blocked_total"], want["repeat_total"]) == (1, 1)
    assert s["generation_latency"]["max"] == round(max(want["first_bytes"]), 3)
    assert len(want["first_bytes"]) == n + 1
    assert lines > 3 * n and len(parsed) <= 8, (lines, len(parsed))


def _ended_goal(tmp_path: Path, tasks: list[dict], **top):
    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", tasks, goal="g", defaults={"agent": "echo out"}, **top)
    run("submit", p, home=h.root)
    eng = Engine(h, goal="g", jobs=4)
    eng.run()
    return h, eng


TREE = [{"id": "a", "prompt": "x"}, {"id": "b", "deps": ["a"], "prompt": "x", "agent": "false"},
        {"id": "c", "deps": ["b"], "prompt": "x"}, {"id": "d", "deps": ["a"], "prompt": "x", "priority": 3},
        {"id": "e", "deps": ["c", "d"], "prompt": "x", "trigger": "one_failed"},
        {"id": "f", "deps": ["b"], "prompt": "x", "trigger": "all_done"}]


def test_the_snapshot_at_a_goals_end_takes_the_engines_graph_and_says_what_status_says(tmp_path, monkeypatch):
    """At a goal's end the engine derives the status snapshot from the facts it has just read;
    its scheduler was built from the plan again (Scheduler.__init__: the graph, its order,
    the ranks -- ~1.5 ms of fan-out-500's end). It now takes the engine's own scheduler's
    graph (Scheduler.again, lifecycle.scheduler_from_facts(like=)) and sets only the states
    from the facts: the snapshot's bytes are those of a status computed from the files."""
    from dagrun import scheduler as sc
    from dagrun import statuscache
    from dagrun.engine import Engine

    h = Home(str(tmp_path / "home"))
    p = write_plan(tmp_path / "p", TREE, goal="g", defaults={"agent": "echo out"})
    run("submit", p, home=h.root)
    built = []
    real = sc.Scheduler.__init__

    def counted(self, *a, **kw):
        built.append(1)
        real(self, *a, **kw)

    eng = Engine(h, goal="g", jobs=4)
    orig = eng._snapshot_status

    def watched(gs, pre=None):
        monkeypatch.setattr(sc.Scheduler, "__init__", counted)
        try:
            orig(gs, pre)
        finally:
            monkeypatch.setattr(sc.Scheduler, "__init__", real)

    eng._snapshot_status = watched
    assert eng.run() != 0
    assert built == [] and "g" in eng.fresh
    cached = run("status", "g", "--json", home=h.root).stdout
    (Path(h.root) / "goals" / "g" / statuscache.NAME).unlink()
    assert run("status", "g", "--json", home=h.root).stdout == cached
    rows = {r["task"]: r["state"] for r in json.loads(cached)["tasks"]}
    assert rows == {"a": "done", "b": "failed", "c": "blocked", "d": "done", "e": "done", "f": "done"}


def test_a_scheduler_built_again_from_anothers_graph_is_the_one_built_from_the_plan(tmp_path):
    """Scheduler.again and scheduler_from_facts(like=) against a scheduler built from the plan:
    the same states, roots, counts and verdicts for the facts of a goal at its end, and for
    facts that leave a task ready (then the plan's own ranks decide the order: built anew) or
    a scheduler of other tasks (built anew)."""
    from dagrun.lifecycle import ranked_scheduler, scheduler_from_facts
    from dagrun.store import TaskFacts

    h, eng = _ended_goal(tmp_path, TREE)
    plan = h.load_plan("g")
    engines, facts = ranked_scheduler(h, plan, clock=lambda: 0.0)

    def same(a, b):
        assert a.states() == b.states() and a.counts() == b.counts()
        assert [a.blocked_by(t) for t in a.ids] == [b.blocked_by(t) for t in b.ids]
        assert a.budget_held() == b.budget_held() and a.ready_ids() == b.ready_ids()

    got = scheduler_from_facts(h, plan, facts, like=engines)
    assert got is not engines and got.deps is engines.deps and got.clock is None
    same(got, scheduler_from_facts(h, plan, facts))
    assert engines.clock is not None and engines.states() == got.states()     # the engine's is left as it was
    reopened = dict(facts, b=TaskFacts())          # b pending again: ready, as its dependency is done
    got = scheduler_from_facts(h, plan, reopened, like=engines)
    assert got.deps is not engines.deps and got.ready_ids() == ["b"]
    same(got, scheduler_from_facts(h, plan, reopened))
    other = h.load_plan("g")
    got = scheduler_from_facts(h, other, facts, like=engines)
    assert got.deps is not engines.deps
    same(got, scheduler_from_facts(h, other, facts))
