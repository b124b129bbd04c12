"""The pure scheduler, table-driven: no files, no processes."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from dagrun.scheduler import Scheduler


@dataclass
class T:
    id: str
    deps: tuple = ()
    soft_deps: tuple = ()
    priority: int = 0


def plan(spec: str) -> list[T]:
    """'a; b<a; c<a,b; d~c' : '<' hard deps, '~' soft deps."""
    out = []
    for part in spec.split(";"):
        part = part.strip()
        soft = ()
        if "~" in part:
            part, s = part.split("~")
            soft = tuple(s.split(","))
        deps = ()
        if "<" in part:
            part, d = part.split("<")
            deps = tuple(d.split(","))
        out.append(T(part.strip(), deps, soft))
    return out


def random_dag(rng, n: int, *, most_soft: int, make=T) -> list:
    """Tasks t0..t<n-1>, each with up to 3 hard and `most_soft` soft deps on earlier tasks
    (picked by `rng`); make(id, deps, soft_deps) builds each."""
    tasks = []
    for i in range(n):
        prev = [f"t{j}" for j in range(i)]
        hard = tuple(rng.sample(prev, min(len(prev), rng.randint(0, 3))))
        soft = tuple(x for x in rng.sample(prev, min(len(prev), rng.randint(0, most_soft))) if x not in hard)
        tasks.append(make(f"t{i}", hard, soft))
    return tasks


def taken(s: Scheduler) -> list[str]:
    """Every task s.take() hands out until it says None, in order (each once: take() marks
    the task it hands out running)."""
    got = []
    while (t := s.take()) is not None:
        assert t not in got, f"take() handed out {t!r} twice"
        got.append(t)
    return got


DIAMOND = "a; b<a; c<a; d<b,c"
THREE, FOUR = "a; b; c", "a; b; c; d"          # independent tasks

# (plan, initial states, expected ready order, expected states of interest)
LOAD_CASES = [
    (DIAMOND, {}, ["a"], {"b": "waiting", "d": "waiting"}),
    (DIAMOND, {"a": "done"}, ["b", "c"], {"d": "waiting"}),
    (DIAMOND, {"a": "done", "b": "failed"}, ["c"], {"d": "blocked"}),
    (DIAMOND, {"a": "cancelled"}, [], {"b": "blocked", "c": "blocked", "d": "blocked"}),
    (DIAMOND, {"a": "running"}, [], {"b": "waiting"}),
    ("a; b~a", {"a": "failed"}, ["b"], {"b": "ready"}),
    ("a; b<a; c~b", {"a": "failed"}, ["c"], {"b": "blocked"}),
    ("a; b~a", {"a": "running"}, [], {"b": "waiting"}),
    ("a; b; c<a,b", {"a": "done", "b": "retrying"}, [], {"c": "waiting", "b": "retrying"}),
]


@pytest.mark.parametrize("spec,initial,ready,states", LOAD_CASES)
def test_load(spec, initial, ready, states):
    s = Scheduler(plan(spec), initial)
    assert s.ready_ids() == ready
    for t, st in states.items():
        assert s.state_of(t) == st


def test_blocked_names_the_failed_root_transitively():
    s = Scheduler(plan("a; b<a; c<b; d<c; e"), {"a": "failed"})
    assert [s.blocked_by(x) for x in "bcd"] == ["a", "a", "a"]
    assert s.state_of("e") == "ready"


FINISH_CASES = [
    # (plan, steps [(task, outcome)], expected changes of the last step)
    (DIAMOND, [("a", "done")], [("a", "done", None), ("b", "ready", None), ("c", "ready", None)]),
    (DIAMOND, [("a", "done"), ("b", "done")], [("b", "done", None)]),
    (DIAMOND, [("a", "done"), ("b", "done"), ("c", "done")], [("c", "done", None), ("d", "ready", None)]),
    (DIAMOND, [("a", "done"), ("b", "failed")], [("b", "failed", None), ("d", "blocked", "b")]),
    ("a; b<a; c~b", [("a", "failed")], [("a", "failed", None), ("b", "blocked", "a"), ("c", "ready", None)]),
    ("a; b~a", [("a", "cancelled")], [("a", "cancelled", None), ("b", "ready", None)]),
    (DIAMOND, [("a", "done"), ("a", "done")], []),          # idempotent
]


@pytest.mark.parametrize("spec,steps,changes", FINISH_CASES)
def test_finish(spec, steps, changes):
    s = Scheduler(plan(spec))
    for t, _ in steps:
        if s.state_of(t) == "ready":
            s.take() if s.peek() == t else s.start(t)
    out = None
    for t, outcome in steps:
        out = s.finish(t, outcome)
    assert out == changes


def test_finish_outside_incremental_rules_asks_for_rebuild():
    s = Scheduler(plan("a; b<a"), {"a": "failed"})
    assert s.finish("a", "done") is None


def test_misuse_names_the_task():
    s = Scheduler(plan("a"))
    with pytest.raises(ValueError, match="'zz'"):
        s.finish("zz", "done")
    with pytest.raises(ValueError, match="not a terminal outcome"):
        s.finish("a", "running")


def test_cycle_is_a_value_error():
    with pytest.raises(ValueError, match="cycle"):
        Scheduler(plan("a<b; b<a"))


def test_a_cycle_error_carries_its_cycle_in_its_args_like_graphlib_s():
    """CycleError(ValueError) is built like graphlib.CycleError: args = (message, cycle)."""
    import graphlib
    from dagrun.scheduler import CycleError
    with pytest.raises(CycleError) as e:
        Scheduler(plan("a<b; b<a"))
    msg, cycle = e.value.args
    assert cycle is e.value.cycle and cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b"]
    assert msg == str(e.value) == "dependency cycle: " + " -> ".join(cycle)
    ts = graphlib.TopologicalSorter({"a": ["b"], "b": ["a"]})
    with pytest.raises(graphlib.CycleError) as g:
        ts.prepare()
    assert len(g.value.args) == len(e.value.args) == 2


def test_critical_path_first_then_priority():
    # the chain a->b->c->d is longer than the single tasks x, y: a goes first
    tasks = plan("x; y; a; b<a; c<b; d<c")
    s = Scheduler(tasks)
    assert s.ready_ids() == ["a", "x", "y"]
    tasks[1].priority = 5
    s = Scheduler(tasks)
    assert s.take() == "y"


def test_take_requeue_retrying_cycle():
    s = Scheduler(plan("a; b<a"))
    assert s.take() == "a" and s.state_of("a") == "running"
    assert s.take() is None
    s.retrying("a")
    assert s.state_of("a") == "retrying" and not s.is_finished()
    assert s.requeue("a") == [("a", "ready", None)]
    assert s.take() == "a"
    s.finish("a", "done")
    assert s.take() == "b"
    s.finish("b", "done")
    assert s.is_finished() and s.counts() == {"done": 2}


def test_incremental_matches_rebuild_on_random_dags():
    import random
    rng = random.Random(7)
    for trial in range(50):
        tasks = random_dag(rng, rng.randint(1, 40), most_soft=2)
        s = Scheduler(tasks)
        facts = {}
        while True:
            t = s.take()
            if t is None:
                break
            outcome = rng.choice(["done", "done", "done", "failed", "cancelled"])
            s.finish(t, outcome)
            facts[t] = outcome
            rebuilt = Scheduler(tasks, facts)
            assert rebuilt.states() == {k: ("waiting" if v == "running" else v) for k, v in s.states().items()} \
                or rebuilt.states() == s.states()
        assert s.is_finished()


# ---------------------------------------------------------------------------- capacity rules
# (plan, initial states, max_parallel, stop_on_failure, the tasks take() hands out in order)
CAPACITY_CASES = [
    (FOUR, {}, 2, False, ["a", "b"]),
    (FOUR, {"a": "running"}, 2, False, ["b"]),                  # another worker's run counts
    (FOUR, {"a": "running", "b": "running"}, 2, False, []),
    (THREE, {}, None, False, ["a", "b", "c"]),
    (THREE, {"a": "failed"}, None, True, []),                      # on_failure=stop: nothing new
    (THREE, {"a": "failed"}, None, False, ["b", "c"]),
    (THREE, {"a": "cancelled"}, None, True, ["b", "c"]),           # a cancel is not a failure
]


@pytest.mark.parametrize("spec,initial,mp,stop,expect", CAPACITY_CASES)
def test_capacity_is_decided_by_the_scheduler(spec, initial, mp, stop, expect):
    s = Scheduler(plan(spec), initial, max_parallel=mp, stop_on_failure=stop)
    assert taken(s) == expect
    assert s.may_start() is False


def test_a_finish_frees_capacity_and_a_failure_stops_the_goal():
    s = Scheduler(plan(FOUR), max_parallel=1, stop_on_failure=True)
    assert s.take() == "a" and s.take() is None and s.may_start() is False
    s.finish("a", "done")
    assert s.may_start() and s.take() == "b"
    s.finish("b", "failed")
    assert s.stopped and s.take() is None and s.state_of("c") == "ready"


# the files mutex of code workspaces: one more capacity rule, (files per task, initial, take() order)
FILES_CASES = [
    ({"a": ["src/**"], "b": ["src/x.py"], "c": ["docs/*"]}, {}, ["a", "c"]),      # b waits for a
    ({"a": ["src/**"], "b": ["src/x.py"], "c": ["docs/*"]}, {"a": "running"}, ["c"]),   # anyone's run
    ({"a": ["*.py"], "b": ["*.md"], "c": []}, {}, ["a", "b", "c"]),               # disjoint; c declares none
    ({"a": ["x"], "b": ["x"], "c": ["x"]}, {"a": "done"}, ["b"]),                 # a done task holds nothing
]


@pytest.mark.parametrize("files,initial,expect", FILES_CASES)
def test_overlapping_files_are_a_rule_of_the_scheduler(files, initial, expect):
    s = Scheduler(plan(THREE), initial, files=files)
    assert taken(s) == expect
    assert s.may_start() is False
    held = [t for t in "abc" if s.state_of(t) == "ready"]
    assert s.ready_ids() == held                      # passed over, still ready, once each


def test_a_task_absent_from_the_files_map_declares_no_files():
    """files= may name only the tasks that declare globs: the others edit nothing and run
    beside anything."""
    s = Scheduler(plan(THREE), files={"a": ["src/**"], "b": ["src/x.py"]})
    assert taken(s) == ["a", "c"] and s.files[2] == ()


def test_a_finish_releases_the_files_it_held():
    s = Scheduler(plan(THREE), files={"a": ["src/**"], "b": ["src/auth/*"], "c": ["src/auth/x.py"]})
    assert s.take() == "a" and s.take() is None and not s.may_start()
    s.finish("a", "done")
    assert s.may_start() and s.take() == "b" and s.take() is None
    s.finish("b", "failed")
    assert s.take() == "c"


@pytest.mark.parametrize("spec,cycle", [
    ("a<a", ["a", "a"]),
    ("a<c; b<a; c<b", ["a", "c", "b", "a"]),
    ("x; a<x,c; b<a; c<b; d<a", ["a", "c", "b", "a"]),
    ("a~b; b<a", ["a", "b", "a"]),
])
def test_cycle_error_carries_the_cycle(spec, cycle):
    from dagrun.scheduler import CycleError
    with pytest.raises(CycleError) as ei:
        Scheduler(plan(spec))
    assert ei.value.cycle == cycle
    assert isinstance(ei.value, ValueError)


@dataclass
class TR(T):
    trigger: str = "all_success"


def test_would_end_predicts_finish_and_changes_nothing():
    """would_end is finish on a shadow: the same changes, on random DAGs with random trigger
    rules and outcomes, and the scheduler as before; would_skip (the on_skipped records before
    a commit point) is its skipped part, none for a failure or a cancel."""
    import random
    rng = random.Random(11)
    rules = ["all_success", "none_failed", "all_done", "one_success", "one_failed"]
    skipped_seen = False
    for trial in range(40):
        tasks = random_dag(rng, rng.randint(1, 30), most_soft=1,
                           make=lambda *a: TR(*a, trigger=rng.choice(rules)))
        s = Scheduler(tasks)
        while (t := s.take()) is not None:
            outcome = rng.choice(["done", "done", "failed", "cancelled", "skipped"])
            before = (s.states(), s.count[:], dict(s.nready))
            predicted = s.would_end(t, outcome)
            skips = s.would_skip(t, outcome)
            assert (s.states(), s.count[:], dict(s.nready)) == before
            assert skips == [(x, root) for x, st, root in predicted[1:] if st == "skipped"]   # failures skip none
            assert s.finish(t, outcome) == predicted
            skipped_seen = skipped_seen or any(st == "skipped" for _, st, _ in predicted[1:])
        assert s.is_finished()
    assert skipped_seen


def test_would_block_names_exactly_the_tasks_a_failure_blocks_under_every_trigger_rule():
    """would_block (the on_blocked records before a commit point) lists what finish(t, failed
    or cancelled) then blocks -- no task whose rule lets it run anyway (all_done, one_failed,
    one_success with a done dependency), none twice -- and changes nothing."""
    import random
    rng = random.Random(5)
    rules = ["all_success", "none_failed", "all_done", "one_success", "one_failed"]
    spared = 0
    for trial in range(60):
        tasks = random_dag(rng, rng.randint(1, 30), most_soft=1,
                           make=lambda *a: TR(*a, trigger=rng.choice(rules)))
        s = Scheduler(tasks)
        while (t := s.take()) is not None:
            outcome = rng.choice(["done", "failed", "cancelled"])
            before = (s.states(), s.count[:], dict(s.nready))
            predicted = s.would_block(t)
            assert (s.states(), s.count[:], dict(s.nready)) == before
            reachable = len(predicted)
            changes = s.finish(t, outcome)
            if outcome != "done":
                assert predicted == [x for x, st, _ in changes[1:] if st == "blocked"]
                spared += sum(1 for x, st, _ in changes[1:] if st == "ready")
            assert len(set(predicted)) == reachable
    assert spared                     # some dependents of a failure were made ready, not blocked


def test_an_ended_task_s_would_block_takes_back_exactly_its_own_outcome():
    """would_block of a task that has ended already judges as if it had failed instead: its
    outcome is taken off each dependent's count of that outcome, one, whatever the others
    (the counts finish() kept, one per dependency)."""
    for other, want in (("done", []), ("failed", ["d"])):
        s = Scheduler([TR("x"), TR("y"), TR("d", ("x", "y"), trigger="one_success")])
        assert taken(s) == ["x", "y"]
        s.finish("x", "done")
        s.finish("y", other)
        assert s.state_of("d") == "ready"
        # y done: d keeps one done dependency; y failed: d is left with none, so blocked
        assert s.would_block("x") == want, other


def test_would_block_follows_each_rule():
    s = Scheduler([TR("a"), TR("b"), TR("all", ("a",), trigger="all_done"), TR("one", ("a", "b"), trigger="one_success"),
                   TR("nf", ("a",), trigger="none_failed"), TR("x", ("nf", "all")), TR("y", ("nf", "one"))])
    assert sorted(s.would_block("a")) == ["nf", "x", "y"]  # all_done runs anyway; one_success waits for b
    assert s.take() in ("a", "b") and s.take() in ("a", "b")
    s.finish("b", "failed")
    assert sorted(s.would_block("a")) == ["nf", "one", "x", "y"]   # now one_success has no chance left

