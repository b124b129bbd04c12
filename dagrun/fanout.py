"""Fan-out (`for_each`): expanding a template into one task per item, a plan edit.

Where it happens. A template is held by the scheduler (never handed out); when it is ready
(its dependencies, `from` among them, are done) whoever drives the goal expands it: the
engine before each dispatch (so right after the `from` task's commit, and again on start-up
and every rescan), `dagrun claim` before it looks for work. Expanding twice is harmless: the
second one finds the template expanded (or failed) and does nothing. So a crash between the
`from` task's done marker and the expansion is repaired by the next driver that looks.

Crash safety. The expansion is one publish of plan.json by rename under the goal's exclusive
edit lock (the old plan or the new one, nothing in between; like `dagrun add`): the template
gains its instances as dependencies (fanout = their number) and the instances are inserted
after it. Nothing else is written before: the instances' folders appear only when they are
claimed, so each runs exactly once through the usual claims. The `agent.plan.replaced` event
(edit "fanout") comes after the publish; plan.json itself is the record (every instance
carries its origin: template, index, item).

A bad output (not JSON, too many items, an item without a field the prompt asks for, a goal
past max_tasks) fails the template for good: a claim, a `failed` marker with the reason,
the usual events and blocked dependents -- through transitions.finish, like any failed
attempt -- and no instance is created.

The join. An expanded template runs no agent: when all its instances are done it is claimed
like a task and committed done at once (`join_output`: a JSON array of the instances'
outputs, in item order), so `cat output` works and a second template can fan out over it.
"""
from __future__ import annotations

import time

import orjson

from . import claim as claims
from . import fsio
from . import states as S
from . import transitions as tr
from .errors import DagrunError, os_error
from .fanrules import MAX_ITEMS_BYTES, FanoutError, expand, parse_items
from .lifecycle import Claim, build_scheduler, latest_attempt, marker_of
from .plan import MAX_PROMPT_BYTES, Plan
from .scheduler import Scheduler
from .store import Home, now_iso


def items_of(home: Home, plan: Plan, tid: str) -> list:
    """The template's items from its `from` task's output; FanoutError when unusable."""
    t = plan.task(tid)
    src = t.for_each["from"]
    got = home.read_task_file_sized(home.output_path(plan.goal, src), MAX_ITEMS_BYTES + 1)
    data = got[0] if got else b""
    return parse_items(data, source=src, limit=t.for_each["max"])


def build(plan: Plan, tid: str, items: list) -> Plan:
    """The plan with template tid expanded over items (pure; FanoutError past max_tasks or
    for an unusable item)."""
    tpl = plan.task(tid)
    joined, inst = expand(tpl, items, MAX_PROMPT_BYTES)
    total = len(plan.tasks) + len(inst)
    if total > plan.task_cap():
        raise FanoutError(f"{len(inst)} instances would grow the goal to {total} tasks; its max_tasks is "
                          f"{plan.task_cap()}")
    tasks = []
    for t in plan.tasks:
        if t.id == tid:
            tasks.append(joined)
            tasks += inst
        else:
            tasks.append(t)
    return plan.with_tasks(tasks)


def expand_due(home: Home, plan: Plan, sched: Scheduler, worker: str) -> bool:
    """Expand (or fail) every held template that is ready. True when anything changed: the
    caller rebuilds its scheduler from the files (the plan is new, or a template failed)."""
    changed = False
    for tid in sched.expandable():
        changed = expand_one(home, plan.goal, tid, worker, sched) or changed
    return changed


def expand_one(home: Home, g: str, tid: str, worker: str, sched: Scheduler | None = None) -> bool:
    """Expand template tid of goal g if it is still unexpanded, its dependencies are done and
    it has no marker; fail it if its items are unusable. Idempotent. True if it did either."""
    plan = home.load_plan(g)
    if not _due(home, plan, tid):
        return False
    try:
        items = items_of(home, plan, tid)
        build(plan, tid, items)
    except FanoutError as e:
        return _fail(home, g, tid, str(e), worker)
    with claims.edit_lock(home, g, exclusive=True):
        plan = home.load_plan(g)               # again under the lock: another driver may have won
        if not _due(home, plan, tid):
            return False
        try:
            new = build(plan, tid, items_of(home, plan, tid))
        except FanoutError as e:
            why = str(e)
            new = None
        if new is not None:
            try:
                fsio.remove(home.summary_path(g))
                fsio.write_atomic(home.plan_path(g), new.canonical())      # the commit point
            except OSError as e:
                raise os_error("expand the template of", home.goal_dir(g), e) from None
    if new is None:
        return _fail(home, g, tid, why, worker)
    t = new.task(tid)
    tr.plan_replaced(home, g, by=worker, edit="fanout", template=tid, source=t.for_each["from"],
                     added=list(t.instances), count=len(t.instances), changed=[], downstream=[], removed=[],
                     archived=[])
    return True


def _due(home: Home, plan: Plan, tid: str) -> bool:
    if not plan.has(tid) or tid not in plan.unexpanded or marker_of(home, plan.goal, tid) is not None:
        return False
    return marker_of(home, plan.goal, plan.task(tid).for_each["from"]) == S.DONE


def _fail(home: Home, g: str, tid: str, reason: str, worker: str) -> bool:
    """The template's items are unusable: fail it for good through a claim (so exactly one
    process records it, and a crash half-way is a lost attempt that is judged again)."""
    reason = f"for_each: {reason}"
    with claims.edit_lock(home, g):
        plan = home.load_plan(g)
        if not _due(home, plan, tid) or not claims.acquire(home, g, tid, hold=True):
            return False
        try:
            if marker_of(home, g, tid) is not None:
                claims.release(home, g, tid)
                return False
            attempt = latest_attempt(home, g, tid)[0] + 1
            owner = claims.new_owner(worker, attempt, kind="fanout")
            claims.update_owner(home, g, tid, owner)
        except OSError as e:
            claims.release(home, g, tid)
            raise os_error("fail the template", home.task_dir(g, tid), e) from None
        sched, _ = build_scheduler(home, plan)
        sched.start(tid)
        c = Claim(g, tid, attempt, owner, time.time())
        tr.finish(home, plan, sched, c, ok=False, worker=worker, reason=reason, final=True)
    return True


def join_output(home: Home, plan: Plan, tid: str) -> bytes:
    """The output of an expanded template: a JSON array of its instances' outputs (text,
    in item order)."""
    g = plan.goal
    outs = []
    for iid in plan.task(tid).instances:
        got = home.read_task_file_sized(home.output_path(g, iid))
        if got is None:
            raise DagrunError(f"{g}/{iid} has no output (it is done: was its folder changed by hand?)")
        outs.append(got[0].decode("utf-8", "replace"))
    return orjson.dumps(outs, option=orjson.OPT_APPEND_NEWLINE)


def join(home: Home, plan: Plan, sched: Scheduler, c: Claim, worker: str) -> tr.Finished:
    """Commit a claimed, expanded template done: no agent, its output the join of its
    instances'."""
    n = plan.task(c.task).fanout
    return tr.finish(home, plan, sched, c, ok=True, worker=worker, output_data=join_output(home, plan, c.task),
                     fields={"instances": n}, extra={"instances": n, "joined": now_iso()})
