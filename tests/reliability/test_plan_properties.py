"""Property-based tests of plan validation (hypothesis).

1. Whatever bytes or JSON a plan file holds, validation either returns a Plan or raises a
   PlanError with one line -- never another exception -- and an accepted plan is sound: ids
   valid, every dependency exists, no cycle, the normalised plan round-trips, and the shipped
   JSON Schema accepts the document too.
2. Accepted small plans (random DAGs of random agents: succeeding, failing, binary output,
   not reading stdin) always run to completion with `dagrun run`: exit 0 or 1 as the states
   say, every task in a final state that follows from its agent and dependencies, no claim
   left, one agent.goal.finished.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import pytest
import re

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import events, run, write_plan  # noqa: E402

from dagrun import plan as planmod  # noqa: E402
from dagrun.errors import PlanError  # noqa: E402

SHOWN = "dag.json"
# Under mutmut (run with DAGRUN_MUTMUT=1) each mutant re-runs these tests: fewer examples, and no
# `dagrun run` subprocesses, which mutmut's in-process mutants do not reach anyway.
MUTMUT = bool(os.environ.get("DAGRUN_MUTMUT"))


def _examples(n: int) -> int:
    return min(n, 40) if MUTMUT else n
# what must never reach an error line raw (errors.one_line escapes it)
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

ids = st.one_of(
    st.sampled_from(["a", "b", "c", "d", "e", "x.y", "t-1", "T_2", "0"]),
    st.text(max_size=6),
    st.sampled_from(["..", ".", "a/b", "a\nb", "a\x00", "\u0430", "a" * 129, "", " a", "a\n"]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10 ** 20), 10 ** 20), st.floats(allow_nan=True),
                    st.text(max_size=12))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                        max_leaves=8)


@functools.lru_cache(maxsize=None)     # one strategy per field: building them all anew for every
def knob_value(name: str):              # drawn field was 90% of this file's time (the values drawn are the same)
    f = planmod.KNOBS.get(name) or planmod.TASK_FIELDS.get(name) or planmod.TOP_FIELDS.get(name)
    good = {
        "string": st.sampled_from(["true", "cat", "sh -c 'exit 1'", "", "  ", "@claude --model 'x y'", "@nope",
                                   "@", "@claude 'open"]),
        "text": st.text(max_size=20),
        "id": ids,
        "ids": st.lists(ids, max_size=4),
        "integer": st.one_of(st.integers(-3, 200), st.floats(-2, 5)),
        "number": st.one_of(st.floats(-1, 1e7, allow_nan=False), st.integers(-1, 10 ** 7)),
        "enum": st.sampled_from(list(f.choices) + ["nope"]) if f and f.choices else st.text(max_size=4),
        "object": st.dictionaries(st.sampled_from(list(planmod.KNOBS) + ["bogus"]), scalars, max_size=3),
        "tasks": st.just([]),
        "boolean": st.one_of(st.booleans(), scalars),
        "argv": st.lists(st.one_of(st.sampled_from(["true", "pytest", "-q", ""]), scalars), max_size=3),
        "estimate": st.dictionaries(st.sampled_from(["seconds", "usd", "bogus"]),
                                    st.one_of(scalars, st.floats(0, 1e6)), max_size=2),
        "globs": st.lists(st.sampled_from(["src/**", "*.py", "a/b", "../x", "/abs", "", " "]), max_size=3),
        "workspace": st.dictionaries(
            st.sampled_from(["repo", "base", "author", "integrate", "bogus"]),
            st.one_of(scalars, st.sampled_from(["repo", "main", "-x", "a b"]),
                      st.fixed_dictionaries({"name": st.sampled_from(["n", "", "a<b"]), "email": st.just("e@x")})),
            max_size=4),
        "hooks": st.dictionaries(st.sampled_from(list(planmod.HOOK_EVENTS) + ["bogus"]),
                                 st.lists(st.one_of(st.lists(st.sampled_from(["true", "", "x"]), max_size=2),
                                                    st.fixed_dictionaries({"url": st.sampled_from(["http://h/x", "ftp:"])}),
                                                    anything), max_size=2), max_size=2),
        "budget": st.dictionaries(st.sampled_from(["usd", "tokens", "bogus"]),
                                  st.one_of(scalars, st.floats(-1, 1e6), st.integers(-1, 10 ** 9)), max_size=2),
        # issue 18: a `when` condition (its operators, nested, with anything in them) and an approval gate
        "when": st.recursive(
            st.dictionaries(st.sampled_from(["output_of", "json_of", "outcome_of", "contains", "equals", "empty",
                                             "path", "in", "exists", "gt", "lt", "is", "bogus"]),
                            st.one_of(ids, scalars, st.lists(st.one_of(ids, scalars), max_size=2)), max_size=3),
            lambda inner: st.one_of(st.dictionaries(st.sampled_from(["all", "any", "not"]),
                                                    st.one_of(inner, st.lists(inner, max_size=3)), max_size=2),
                                    anything), max_leaves=6),
        "approval": st.dictionaries(st.sampled_from(["prompt", "timeout", "bogus"]),
                                    st.one_of(scalars, st.sampled_from(["2h", "90s", "1x", "", "0", "1e9d"])),
                                    max_size=2),
        "for_each": st.dictionaries(st.sampled_from(["from", "as", "max", "bogus"]),
                                    st.one_of(ids, scalars, st.sampled_from(["item", "a b", "x1"]),
                                              st.integers(-1, 20000)), max_size=4),
        # the cluster runners' options: known sub-fields (and a bogus one) with anything in them
        "options": st.dictionaries(st.sampled_from(list(f.fields or {}) + ["bogus"]) if f and f.fields else st.text(max_size=4),
                                   st.one_of(scalars, st.lists(scalars, max_size=3), st.sampled_from(["2G", "512", "1X"])),
                                   max_size=3),
        # counted resources: the cluster fields, resource names (and bad ones), units or junk
        "resources": st.dictionaries(st.sampled_from(list(f.fields or {}) + ["gpu", "repo", "a b", ""]) if f and f.fields
                                     else st.text(max_size=4),
                                     st.one_of(scalars, st.integers(-1, 3), st.sampled_from(["2G", "1X"])), max_size=3),
        "capacities": st.dictionaries(st.sampled_from(["gpu", "repo", "@claude", "claude", "a b", ""]),
                                      st.one_of(scalars, st.integers(-1, 3)), max_size=3),
    }[f.kind] if f else anything
    return st.one_of(good, anything) if f else anything


@st.composite
def task_dicts(draw):
    keys = draw(st.sets(st.sampled_from(list(planmod.TASK_FIELDS) + ["bogus"]), max_size=6))
    keys |= {"id"} if draw(st.booleans()) or True else set()
    if draw(st.integers(0, 3)):
        keys.add("prompt")
    return {k: draw(knob_value(k)) for k in sorted(keys)}


@st.composite
def plan_docs(draw):
    top = {}
    for k in draw(st.sets(st.sampled_from([k for k in planmod.TOP_FIELDS if k != "tasks"] + ["bogus"]), max_size=4)):
        top[k] = draw(knob_value(k))
    if draw(st.integers(0, 9)):
        top["tasks"] = draw(st.lists(task_dicts(), max_size=6))
    if draw(st.integers(0, 4)) == 0:
        return draw(anything)
    return top


def _check(raw: bytes, tmp: str) -> None:
    try:
        p = planmod.parse(raw, shown=SHOWN, source=os.path.join(tmp, "dag.json"), default_goal="dag")
    except PlanError as e:
        msg = str(e)
        assert not CONTROL.search(msg) and msg.startswith(SHOWN), msg
        return
    _sound(p)


def _sound(p: planmod.Plan) -> None:
    tids = [t.id for t in p.tasks]
    assert all(planmod.valid_id(x) for x in tids + [p.goal])
    assert len(set(tids)) == len(tids)
    done: set[str] = set()
    left = {t.id: set(t.deps) | set(t.soft_deps) for t in p.tasks}
    assert all(d in left for deps in left.values() for d in deps)
    while left:   # Kahn: an accepted plan has no cycle
        ready = [t for t, deps in left.items() if deps <= done]
        assert ready, f"cycle accepted: {left}"
        for t in ready:
            done.add(t)
            del left[t]
    again = planmod.Plan.from_dict(json.loads(p.canonical()))
    assert again.canonical() == p.canonical()


@settings(max_examples=_examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=plan_docs())
# pinned: names with control characters in JSON paths (found by chance 4 runs in 26 before)
@example(doc={"defaults": {"a\nb": 1}, "tasks": [{"id": "a", "prompt": "p", "agent": "true"}]})
@example(doc={"tasks": [{"id": "a", "prompt": "p", "agent": "true", "x\u2028\x1b[2J": 1}]})
@example(doc={"goal": "g\r", "tasks": [{"id": "a\tb", "prompt": "p", "agent": "true"}]})
def test_validation_of_random_plans_never_crashes(doc, tmp_path_factory):
    tmp = str(tmp_path_factory.getbasetemp())
    raw = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    _check(raw, tmp)
    try:
        p = planmod.parse(raw, shown=SHOWN, source=os.path.join(tmp, "dag.json"), default_goal="dag")
    except PlanError:
        return
    import jsonschema
    jsonschema.validate(doc, planmod.json_schema())    # what dagrun accepts, editors accept
    assert p.tasks


@settings(max_examples=_examples(300), deadline=None)
@given(data=st.data())
def test_validation_of_mangled_bytes_never_crashes(data, tmp_path_factory):
    tmp = str(tmp_path_factory.getbasetemp())
    base = json.dumps({"goal": "g", "defaults": {"agent": "true"},
                       "tasks": [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q", "deps": ["a"]}]},
                      indent=1).encode()
    how = data.draw(st.sampled_from(["truncate", "insert", "replace", "random"]))
    if how == "random":
        raw = data.draw(st.binary(max_size=200))
    else:
        i = data.draw(st.integers(0, len(base)))
        junk = data.draw(st.binary(min_size=1, max_size=4))
        raw = base[:i] if how == "truncate" else base[:i] + junk + base[i + (len(junk) if how == "replace" else 0):]
    _check(raw, tmp)


# ----------------------------------------------------------------------------- running them
AGENTS = {
    "cat": True, "true": True, "cat >/dev/null; echo done": True, "printf '\\377\\376\\000x'": True,
    "sleep 0.05; echo slow": True, "exit 3": False, "echo partial; exit 1": False,
}


@st.composite
def runnable_plans(draw):
    n = draw(st.integers(1, 6))
    tasks = []
    for i in range(n):
        earlier = [f"t{j}" for j in range(i)]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        rest = [e for e in earlier if e not in deps]
        soft = draw(st.lists(st.sampled_from(rest), unique=True, max_size=2)) if rest and draw(st.booleans()) else []
        text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30)
        t = {"id": f"t{i}", "prompt": draw(text), "deps": deps,
             "agent": draw(st.sampled_from(sorted(AGENTS)))}
        if soft:
            t["soft_deps"] = soft
        if draw(st.booleans()):
            t["retries"] = draw(st.integers(0, 1))
            t["retry_backoff"] = 0
        tasks.append(t)
    top = {"goal": "prop", "max_parallel": draw(st.integers(1, 3))}
    return tasks, top


def expected_states(tasks: list[dict]) -> dict[str, str]:
    st_: dict[str, str] = {}
    for t in tasks:
        if any(st_[d] in ("failed", "blocked") for d in t["deps"]):
            st_[t["id"]] = "blocked"
        else:
            st_[t["id"]] = "done" if AGENTS[t["agent"]] else "failed"
    return st_


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(spec=runnable_plans())
def test_accepted_small_plans_run_to_completion(spec, tmp_path_factory):
    if MUTMUT:
        return                              # runs the installed dagrun: not what mutmut mutates
    tasks, top = spec
    base = tmp_path_factory.mktemp("prop")
    p = write_plan(base / "plan", tasks, **top)
    planmod.load(str(p))                    # accepted (the generator only builds valid DAGs)
    home = base / "home"
    r = run("run", p, home=home, check=False, timeout=120)
    want = expected_states(tasks)
    assert r.returncode == (0 if all(s == "done" for s in want.values()) else 1), r.stdout + r.stderr
    got = {row["task"]: row["state"] for row in json.loads(run("status", "prop", "--json", home=home).stdout)["tasks"]}
    assert got == want
    assert not list((home / "goals" / "prop" / "tasks").glob("*/claim"))
    fin = [e for e in events(home, "prop") if e["type"] == "agent.goal.finished"]
    assert len(fin) == 1
    for t in tasks:
        if got[t["id"]] == "done" and t["agent"] == "cat":
            out = (home / "goals" / "prop" / "tasks" / t["id"] / "output").read_bytes()
            assert out.decode("utf-8", "surrogateescape").startswith(t["prompt"].rstrip("\n")[:10])
