"""The shortcuts of big plans give what the general code gives: the validator's plain-task
path (plan._Validator.plain_tasks), Task.to_dict of a task without optional fields, and
scheduler.depth. Each is compared with the general path on the same input -- the same Tasks,
the same plan.json bytes, the same one-line error."""
from __future__ import annotations

import json
import random

import pytest

from conftest import write_plan
from test_plan import AGENT, CASES, OK_TASK, _write
from dagrun import plan as planmod
from dagrun.errors import PlanError
from dagrun.scheduler import Scheduler, depth


def _load_both(p, monkeypatch):
    """(plan or error text) from the validator as it is, then with the plain path off."""
    out = []
    for plain in (True, False):
        with monkeypatch.context() as m:
            if not plain:
                m.setattr(planmod._Validator, "plain_tasks", lambda self, dflt, plan_dir: None)
            try:
                out.append(planmod.load(str(p)))
            except PlanError as e:
                out.append(str(e))
    return out


PLAIN_BAD = [     # plain-looking tasks with a bad value: the plain path must hand each to task()
    ("id null", {"tasks": [{"id": None, "prompt": "p"}]}, "expected a string, got null"),
    ("id number", {"tasks": [{"id": 7, "prompt": "p"}]}, "expected a string, got a number"),
    ("id too long", {"tasks": [{"id": "a" * 129, "prompt": "p"}]}, "invalid id"),
    ("prompt null", {"tasks": [{"id": "a", "prompt": None}]}, "expected a string, got null"),
    ("prompt list", {"tasks": [{"id": "a", "prompt": ["p"]}]}, "expected a string, got an array"),
    ("prompt NUL", {"tasks": [{"id": "a", "prompt": "p\x00q"}]}, "contains a NUL character"),
    ("prompt lone surrogate", '{"defaults": {"agent": "true"}, "tasks": [{"id": "a", "prompt": "x\\ud800"}]}',
     "unpaired UTF-16 surrogate"),
    ("deps null", {"tasks": [{"id": "a", "prompt": "p", "deps": None}]}, "expected an array of task ids"),
    ("deps object", {"tasks": [{"id": "a", "prompt": "p", "deps": {}}]}, "expected an array of task ids"),
    ("dep unhashable", {"tasks": [OK_TASK, {"id": "b", "prompt": "p", "deps": [["a"]]}]}, "expected a task id"),
    ("dep bool", {"tasks": [OK_TASK, {"id": "b", "prompt": "p", "deps": [True]}]}, "expected a task id"),
    ("dep invalid later", {"tasks": [{"id": "b", "prompt": "p", "deps": ["../a"]}, OK_TASK]}, 'invalid id "../a"'),
    ("dep twice, later", {"tasks": [{"id": "b", "prompt": "p", "deps": ["a", "a"]}, OK_TASK]}, "listed twice"),
    ("dep on itself", {"tasks": [{"id": "a", "prompt": "p", "deps": ["a"]}]}, "dependency cycle: a -> a"),
    ("dep unknown among many", {"tasks": [OK_TASK, {"id": "b", "prompt": "p", "deps": ["a"]},
                                          {"id": "c", "prompt": "p", "deps": ["b", "nope"]}]},
     'tasks[2].deps[1]: unknown dependency "nope"'),
    ("description null", {"tasks": [{"id": "a", "prompt": "p", "description": None}]}, "expected a string, got null"),
    ("description number", {"tasks": [{"id": "a", "prompt": "p", "description": 3}]}, "expected a string"),
    ("description NUL", {"tasks": [{"id": "a", "prompt": "p", "description": "x\x00"}]}, "NUL"),
    ("second task bad after plain ones", {"tasks": [OK_TASK, {"id": "b", "prompt": "q"}, {"id": "b", "prompt": "r"}]},
     'tasks[2].id: duplicate task id "b"'),
    ("plain task, bad preset agent", {"defaults": {"agent": "@nosuchpreset"}, "tasks": [{"id": "a/b", "prompt": "p"}]},
     'tasks[0].id: invalid id "a/b"'),
    ("task not an object", {"tasks": [OK_TASK, "b"]}, "tasks[1]: expected an object, got a string"),
]


@pytest.mark.parametrize("name,doc,files,expect", CASES, ids=[c[0] for c in CASES])
def test_every_invalid_plan_gets_the_same_error_without_the_plain_path(plans, home, monkeypatch, name, doc, files,
                                                                    expect):
    fast, slow = _load_both(_write(plans, doc, files), monkeypatch)
    assert isinstance(fast, str) and fast == slow


@pytest.mark.parametrize("name,doc,expect", PLAIN_BAD, ids=[c[0] for c in PLAIN_BAD])
def test_bad_values_in_plain_tasks_are_worded_by_the_general_validator(plans, home, monkeypatch, name, doc, expect):
    if isinstance(doc, dict):
        doc = {"defaults": AGENT, **doc}
    fast, slow = _load_both(_write(plans, doc, {}), monkeypatch)
    assert isinstance(fast, str) and fast == slow
    assert expect in fast and "\n" not in fast


def _mixed_tasks(n: int, seed: int) -> list[dict]:
    """Plain tasks (ids, deps, prompt, description) with others between them (own knobs, soft
    deps, a trigger, files, checks, a prompt with escapes) and deps to earlier and later tasks."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        t: dict = {"id": f"t{i}", "prompt": rng.choice(["p", "ünïcode ✓", "line\nbreak", "quote \" and \\ slash",
                                                      "emoji \U0001F600"])}
        earlier = [f"t{j}" for j in range(i)]
        if earlier and rng.random() < 0.7:
            t["deps"] = rng.sample(earlier, min(len(earlier), rng.randint(1, 3)))
        if rng.random() < 0.2:
            t["description"] = f"about {i}"
        extra = rng.random()
        if extra < 0.05:
            t["timeout"] = 30
        elif extra < 0.10 and "deps" in t and i > 3:
            t["soft_deps"] = [d for d in earlier[:2] if d not in t["deps"]] or [earlier[-1]]
            t["soft_deps"] = [d for d in t["soft_deps"] if d not in t["deps"]]
            if not t["soft_deps"]:
                del t["soft_deps"]
        elif extra < 0.15:
            t["trigger"] = "all_done"
        elif extra < 0.18:
            t["files"] = ["src/**"]
        elif extra < 0.20:
            t["check"] = ["true"]
        elif extra < 0.22:
            t["priority"] = 5
        elif extra < 0.24:
            t["deps"] = []
        tasks.append(t)
    if n > 2:     # one dependency on a later task
        tasks[-1].pop("deps", None)
        tasks[-1].pop("soft_deps", None)
        tasks[1]["deps"] = [f"t{n - 1}"]
    return tasks


def _count_plain(monkeypatch) -> list:
    """Count the tasks the plain path builds (so a test sees that it ran)."""
    built = []
    real = planmod._Validator.plain_tasks

    def counting(self, dflt, plan_dir):
        plain = real(self, dflt, plan_dir)

        def wrapped(i, rt, seen):
            t = plain(i, rt, seen)
            if t is not None:
                built.append(t.id)
            return t
        return wrapped if plain is not None else None
    monkeypatch.setattr(planmod._Validator, "plain_tasks", counting)
    return built


@pytest.mark.parametrize("seed", range(4))
def test_plain_path_builds_the_tasks_and_plan_json_of_the_general_one(plans, monkeypatch, seed):
    p = write_plan(plans, _mixed_tasks(60, seed), defaults={"agent": "true", "timeout": 10, "retries": 1})
    built = _count_plain(monkeypatch)
    fast, slow = _load_both(p, monkeypatch)
    assert 30 < len(set(built)) < 60       # most tasks took the plain path, not all
    assert [tuple(t) for t in fast.tasks] == [tuple(t) for t in slow.tasks]
    assert fast.canonical() == slow.canonical()
    assert planmod.Plan.from_json(fast.canonical()) == fast


@pytest.mark.parametrize("escape,valid", [("\\u0000", False), ("\\uD83D\\uDE00", True), ("\\uDE00", True),
                                          ("\\\\u0000", True), ("\\\\uD800", True)])
@pytest.mark.parametrize("field", ["prompt", "description"])
def test_strings_are_checked_when_the_text_has_a_nul_or_surrogate_escape(plans, monkeypatch, escape, valid, field):
    """A NUL is refused anywhere, a lone surrogate too (anywhere in the document, before any
    task is built: it could never be written as UTF-8); a pair is one valid character; an
    escaped backslash before "u0000" is text."""
    if escape == "\\uDE00":
        valid = False
    ok = [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q", "deps": ["a"]}]
    text = json.dumps({"defaults": AGENT, "tasks": ok})
    text = text.replace('"q"', '"q' + escape + '"') if field == "prompt" else \
        text[:-3] + ', "description": "x' + escape + '"}]}'
    (plans / "dag.json").write_text(text)
    built = _count_plain(monkeypatch)
    fast, slow = _load_both(plans / "dag.json", monkeypatch)
    if valid:
        assert [tuple(t) for t in fast.tasks] == [tuple(t) for t in slow.tasks] and built == ["a", "b"]
    else:
        assert isinstance(fast, str) and fast == slow and f"tasks[1].{field}: contains" in fast
        assert built == (["a"] if escape == "\\u0000" else [])


OPTIONAL_FIELDS = [{"check": ["true"]}, {"cache": True}, {"estimate": {"seconds": 3}}, {"estimate": {"usd": 0.5}},
                   {"workspace": False}, {"files": ["a/**"]}, {"hooks": {"on_done": [["true"]]}},
                   {"budget_share": 0.5}, {"runner": "slurm"}, {"resources": {"gpu": 1}},
                   {"slurm": {"partition": "p"}}, {"ray": {"address": "auto"}}, {"mutex": "m"}, {"serial": "s"},
                   {"when": {"output_of": "a", "contains": "x"}}, {"trigger": "all_done"},
                   {"approval": {"prompt": "ok?"}}, {"check_timeout": 5}, {"retries": 3}, {"timeout": 9}]


@pytest.mark.parametrize("extra", OPTIONAL_FIELDS, ids=[next(iter(e)) + "-" + str(i) for i, e in
                                                        enumerate(OPTIONAL_FIELDS)])
def test_task_to_dict_shortcut_is_the_general_to_dict(plans, extra):
    p = write_plan(plans, [OK_TASK, {"id": "b", "prompt": "q", "deps": ["a"], **extra}], defaults=AGENT)
    pl = planmod.load(str(p))
    for t in pl.tasks:
        assert t.to_dict() == t._to_dict_generic()
    instance = pl.tasks[1].replace(fanout=None, origin={"edit": "add", "by": "x"})
    assert instance.to_dict() == instance._to_dict_generic() and "origin" in instance.to_dict()


def test_depth_is_the_schedulers_longest_path():
    class T:
        def __init__(self, i, deps, soft=()):
            self.id, self.deps, self.soft_deps, self.priority = i, tuple(deps), tuple(soft), 0
    for seed in range(100):
        rng = random.Random(seed)
        n = rng.randint(1, 25)
        ids = [f"n{i}" for i in range(n)]
        tasks = []
        for i in range(n):
            deps = rng.sample(ids[:i], rng.randint(0, min(i, 3)))
            soft = [d for d in rng.sample(ids[:i], rng.randint(0, min(i, 2))) if d not in deps]
            tasks.append(T(ids[i], deps, soft))
        want = max(Scheduler(tasks).height)
        assert depth(tasks) == want
        rng.shuffle(tasks)              # dependencies after their dependents: the general order
        assert depth(tasks) == want
    assert depth([]) == 0


def test_every_plainly_valid_task_takes_the_plain_path(plans, monkeypatch):
    """The plain path takes every task of only id, deps, prompt and description whose values
    are plainly valid -- the general validator builds only its prototype (issue 21: mutants
    that sent such a task to task() changed no result, only the time of a 100 000-task plan)."""
    built = _count_plain(monkeypatch)
    general = []
    real = planmod._Validator.task
    monkeypatch.setattr(planmod._Validator, "task", lambda self, i, rt, *a: general.append(rt["id"]) or real(self, i, rt, *a))
    longest = "p" * (planmod.MAX_PROMPT_BYTES // 4)
    tasks = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "deps": ["a"]},
             {"id": "c", "prompt": "z", "deps": ["d", "a"], "description": "after d"},
             {"id": "d", "prompt": longest, "deps": []}, {"id": "e", "prompt": "q", "deps": ["d"], "description": ""}]
    pl = planmod.load(str(write_plan(plans, tasks, defaults={"agent": "true"})))
    assert built == ["a", "b", "c", "d", "e"] and general == ["x"]          # "x": the prototype
    assert [(t.id, t.deps, t.description) for t in pl.tasks] == \
        [("a", (), None), ("b", ("a",), None), ("c", ("d", "a"), "after d"), ("d", (), None), ("e", ("d",), "")]
    assert pl.task("d").prompt == longest and {t.workdir for t in pl.tasks} == {str(plans)}
