"""`when`: a task's condition over its dependencies' outcomes and outputs (docs/conditions.md).

Pure: no I/O, no clock, no eval, no shell. check() validates an expression at plan load (an
unknown operator, a reference to a task that is not a dependency -> ValueError naming the
place); evaluate() judges it over what the caller read from the files (Facts), returning
(value, reason) -- the reason is what a skipped task records.

The language (every node is a JSON object with exactly one operator):
  {"output_of": T, "contains": S}          T's output contains the string S
  {"output_of": T, "equals": S}            T's output, stripped of surrounding whitespace, is S
  {"output_of": T, "empty": true|false}    T's output is empty (or only whitespace)
  {"json_of": T, "path": P, OP: V}         T's output parsed as JSON; P a dotted path ("a.b.0",
                                           "" for the whole document); OP one of equals, in,
                                           exists (true|false), gt, lt (numbers), contains
  {"outcome_of": T, "is": O}               T ended O: done | skipped | failed | cancelled | blocked
  {"outcome_of": T, "in": [O, ...]}
  {"all": [E, ...]}  {"any": [E, ...]}  {"not": E}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Callable, Sequence

from .records import frozen_methods, plain_methods

OUTCOMES = ("done", "skipped", "failed", "cancelled", "blocked")
OUTPUT_OPS = ("contains", "equals", "empty")
JSON_OPS = ("equals", "in", "exists", "gt", "lt", "contains")
OUTCOME_OPS = ("is", "in")
MAX_DEPTH = 32
MAX_NODES = 1000


class ConditionError(ValueError):
    """A bad expression: `.path` (a tuple under the task's `when`) and the message."""

    def __init__(self, path: tuple, msg: str):
        super().__init__(msg)
        self.path = path


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Facts:
    """What the caller read from the files: each referenced dependency's outcome and output."""
    outcome: Callable[[str], str]            # done | skipped | failed | cancelled | blocked
    output: Callable[[str], bytes | None]    # its output (None: no output file)

    def __init__(self, outcome, output):
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "output", output)

    __repr__, __eq__ = plain_methods("outcome", "output")
    __setattr__, __delattr__, __hash__ = frozen_methods("outcome", "output")


def _kind(v: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number")


def check(expr: object, deps: Sequence[str]) -> None:
    """Validate an expression; raise ConditionError naming the problem and where it is."""
    count = [0]
    _check(expr, set(deps), (), 0, count)


def _check(e: object, deps: set, path: tuple, depth: int, count: list) -> None:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise ConditionError(path, f"the condition has more than {MAX_NODES} nodes")
    if depth > MAX_DEPTH:
        raise ConditionError(path, f"the condition is nested deeper than {MAX_DEPTH}")
    if not isinstance(e, dict) or not e:
        raise ConditionError(path, f"expected a condition object (output_of, json_of, outcome_of, all, any, not), "
                                   f"got {_kind(e)}")
    if "all" in e or "any" in e:
        op = "all" if "all" in e else "any"
        _only(e, (op,), path)
        items = e[op]
        if not isinstance(items, list) or not items:
            raise ConditionError(path + (op,), f"\"{op}\" needs a non-empty array of conditions")
        for j, x in enumerate(items):
            _check(x, deps, path + (op, j), depth + 1, count)
        return
    if "not" in e:
        _only(e, ("not",), path)
        _check(e["not"], deps, path + ("not",), depth + 1, count)
        return
    for ref, ops, extra in (("output_of", OUTPUT_OPS, ()), ("json_of", JSON_OPS, ("path",)),
                            ("outcome_of", OUTCOME_OPS, ())):
        if ref in e:
            break
    else:
        raise ConditionError(path + (next(iter(e)),), f"unknown operator {json.dumps(next(iter(e)))} "
                             "(known: output_of, json_of, outcome_of, all, any, not)")
    t = e[ref]
    if not isinstance(t, str):
        raise ConditionError(path + (ref,), f"expected a task id, got {_kind(t)}")
    if t not in deps:
        raise ConditionError(path + (ref,), f"{json.dumps(t)} is not a dependency of this task "
                             "(a condition may only look at tasks in deps or soft_deps)")
    _only(e, (ref, *extra, *ops), path)
    given = [k for k in ops if k in e]
    if len(given) != 1:
        raise ConditionError(path, f"\"{ref}\" needs exactly one of {', '.join(ops)}" +
                             (f" (got {', '.join(given)})" if given else ""))
    op, v = given[0], e[given[0]]
    where = path + (op,)
    if ref == "json_of":
        p = e.get("path", "")
        if not isinstance(p, str):
            raise ConditionError(path + ("path",), f"expected a dotted path string, got {_kind(p)}")
    if op in ("contains",) and ref == "output_of" and not isinstance(v, str):
        raise ConditionError(where, f"expected a string, got {_kind(v)}")
    if op == "equals" and ref == "output_of" and not isinstance(v, str):
        raise ConditionError(where, f"expected a string, got {_kind(v)}")
    if op in ("empty", "exists") and not isinstance(v, bool):
        raise ConditionError(where, f"expected true or false, got {_kind(v)}")
    if op in ("gt", "lt") and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise ConditionError(where, f"expected a number, got {_kind(v)}")
    if op == "in" and (not isinstance(v, list) or not v):
        raise ConditionError(where, "expected a non-empty array")
    if ref == "outcome_of":
        for o in (v if op == "in" else [v]):
            if o not in OUTCOMES:
                raise ConditionError(where, f"unknown outcome {json.dumps(o)} (known: {', '.join(OUTCOMES)})")


def _only(e: dict, allowed: tuple, path: tuple) -> None:
    for k in e:
        if k not in allowed:
            raise ConditionError(path + (k,), f"unexpected {json.dumps(k)} beside {json.dumps(allowed[0])}"
                                 f" (allowed here: {', '.join(allowed)})")


def refs(expr: object) -> list[str]:
    """The tasks an expression looks at."""
    out: list[str] = []
    stack = [expr]
    while stack:
        e = stack.pop()
        if not isinstance(e, dict):
            continue
        for k in ("output_of", "json_of", "outcome_of"):
            if isinstance(e.get(k), str) and e[k] not in out:
                out.append(e[k])
        stack += list(e.get("all") or []) + list(e.get("any") or [])
        if "not" in e:
            stack.append(e["not"])
    return out


_MISSING = object()


def _walk(doc: object, path: str) -> object:
    if path == "":
        return doc
    for part in path.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.lstrip("-").isdigit() and -len(doc) <= int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
    return doc


def _text(b: bytes | None) -> str:
    return (b or b"").decode("utf-8", "replace")


def evaluate(expr: object, facts: Facts) -> tuple[bool, str]:
    """(value, why) of a checked expression. A dependency that ended without output reads as
    empty; json_of over an output that is not JSON (or a path that is missing) is false for
    every operator but `exists: false`."""
    if "all" in expr:
        for x in expr["all"]:
            ok, why = evaluate(x, facts)
            if not ok:
                return False, why
        return True, "all of its conditions hold"
    if "any" in expr:
        whys = []
        for x in expr["any"]:
            ok, why = evaluate(x, facts)
            if ok:
                return True, why
            whys.append(why)
        return False, "none of: " + "; ".join(whys)
    if "not" in expr:
        ok, why = evaluate(expr["not"], facts)
        return (not ok), ("not (" + why + ")")
    if "outcome_of" in expr:
        t = expr["outcome_of"]
        o = facts.outcome(t)
        want = expr["in"] if "in" in expr else [expr["is"]]
        ok = o in want
        return ok, f"{t} ended {o}" + ("" if ok else f" (not {' or '.join(want)})")
    if "output_of" in expr:
        t = expr["output_of"]
        out = _text(facts.output(t))
        if "contains" in expr:
            ok = expr["contains"] in out
            return ok, f"output of {t} {'contains' if ok else 'does not contain'} {json.dumps(expr['contains'])}"
        if "equals" in expr:
            ok = out.strip() == expr["equals"]
            return ok, f"output of {t} {'is' if ok else 'is not'} {json.dumps(expr['equals'])}"
        ok = (not out.strip()) == expr["empty"]
        return ok, f"output of {t} is {'empty' if not out.strip() else 'not empty'}"
    t, p = expr["json_of"], expr.get("path", "")
    where = f"{t}:{p}" if p else t
    try:
        doc = json.loads(_text(facts.output(t)))
    except ValueError:
        doc = _MISSING
        where += " (output is not JSON)"
    v = _MISSING if doc is _MISSING else _walk(doc, p)
    if "exists" in expr:
        ok = (v is not _MISSING) == expr["exists"]
        return ok, f"{where} {'exists' if v is not _MISSING else 'does not exist'}"
    if v is _MISSING:
        return False, f"{where} does not exist"
    shown = json.dumps(v)[:80]
    if "equals" in expr:
        ok = v == expr["equals"] and type(v) is type(expr["equals"]) or (
            _num(v) and _num(expr["equals"]) and v == expr["equals"])
        return bool(ok), f"{where} is {shown}" + ("" if ok else f", not {json.dumps(expr['equals'])}")
    if "in" in expr:
        ok = any(v == x and (type(v) is type(x) or (_num(v) and _num(x))) for x in expr["in"])
        return ok, f"{where} is {shown}" + ("" if ok else f", not one of {json.dumps(expr['in'])[:80]}")
    if "contains" in expr:
        x = expr["contains"]
        ok = (isinstance(v, str) and isinstance(x, str) and x in v) or (isinstance(v, list) and x in v) or \
            (isinstance(v, dict) and isinstance(x, str) and x in v)
        return ok, f"{where} {'contains' if ok else 'does not contain'} {json.dumps(x)[:80]}"
    op = "gt" if "gt" in expr else "lt"
    if not _num(v):
        return False, f"{where} is {shown}, not a number"
    ok = v > expr[op] if op == "gt" else v < expr[op]
    return ok, f"{where} is {shown}" + ("" if ok else f", not {'>' if op == 'gt' else '<'} {expr[op]}")


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
