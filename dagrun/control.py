"""Control: cancel (markers and events first, then wait until the attempts are gone, through
the runner named in each claim's handle) and retry (markers off, retry budget reset; a
forced re-run archives the task and what is below it) and the budget pool (shown, raised)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import budget
from . import claim as claims
from . import fanrules, fsio
from . import states as S
from . import transitions as tr
from .edit import _archive
from .errors import NotFound, Refused, UsageError, os_error
from .lifecycle import build_scheduler, latest_attempt
from .plan import Plan, check_id
from .scheduler import READY, RETRYING, RUNNING, WAITING
from .store import Home, dumps, now_iso


@dataclass
class CancelResult:
    cancelled: list[str] = field(default_factory=list)     # newly marked cancelled
    stopped: list[str] = field(default_factory=list)       # had a running agent, now gone
    still_running: list[str] = field(default_factory=list) # agent not gone when the wait ended
    external: list[str] = field(default_factory=list)      # held by a script (it stops on its next heartbeat)


def cancel(home: Home, g: str, t: str | None, *, by: str, reason: str = "",
           wait: float | None = None) -> CancelResult:
    """Cancel one task (its dependents become blocked) or every unfinished task of the goal.

    The markers and events are written first; the engine that runs an agent watches the
    events and stops its process group (TERM, kill_grace, KILL). A holder that is gone is
    broken here and its orphaned agent killed. Then we wait -- by default the largest
    kill_grace plus 5 s -- until no claim is left and no process of those attempts
    (DAGRUN_RUN_ID) is alive, so that when this returns the agents are gone."""
    from . import executor

    plan = home.load_plan(g)
    if t is not None:
        check_id("task", t)
        if not plan.has(t):
            raise NotFound(f"goal {g!r} has no task {t!r}")
    sched, _ = build_scheduler(home, plan)
    # A task already cancelled that still has a claim: an earlier cancel may have died between
    # the marker and the event, so the engine running it never heard. Announce it again.
    unheard = {x for x in plan.ids() if sched.state_of(x) == S.CANCELLED and os.path.isdir(home.claim_dir(g, x))}
    if t is not None:
        st = sched.state_of(t)
        if st == S.DONE or (st == S.CANCELLED and t not in unheard):
            raise Refused(f"cannot cancel {g}/{t}: it is already {st}")
        # an expanded fan-out template is the join of its instances: cancelling it cancels
        # the instances still to finish too (the join first, then each instance, so each gets
        # its own cancelled marker rather than a "blocked" on the way)
        live = (S.WAITING, S.READY, S.RUNNING, S.RETRYING)
        targets = [t] + [x for x in plan.task(t).instances if sched.state_of(x) in live or x in unheard]
    else:
        # dependents first: each gets its own cancelled marker, not a "blocked" on the way
        targets = [sched.ids[i] for i in reversed(sched.order)
                   if sched.state[i] in (WAITING, READY, RUNNING, RETRYING) or sched.ids[i] in unheard]
    why = reason or f"cancelled by {by}"
    res = CancelResult()
    for x in targets:
        new, _ch = tr.cancel(home, sched, g, x, by=by, reason=why, repeat=x in unheard, plan=plan)
        if new:
            res.cancelled.append(x)
    # after the markers: a task claimed just before its marker landed is running too
    pending = {x for x in targets if os.path.isdir(home.claim_dir(g, x))}
    if wait is None:
        wait = max((plan.task(x).kill_grace for x in pending), default=0.0) + 5.0
    reap = executor.reap_orphan      # through the runner each claim's handle names
    deadline = time.monotonic() + wait
    run_ids: dict[str, dict] = {}     # task -> the attempt's handle (with its run id)
    while True:
        for x in sorted(pending):
            owner = claims.read_owner(home, g, x)
            if owner:
                h = owner.get("handle") if isinstance(owner.get("handle"), dict) else {"runner": "process"}
                rid = owner.get("run_id") or h.get("run_id")
                if rid:
                    run_ids[x] = {**h, "run_id": rid}
            if not os.path.isdir(home.claim_dir(g, x)):
                pending.discard(x)
            elif owner and owner.get("kind") == "external":
                pending.discard(x)         # a script's agent: it learns on its next heartbeat
                res.external.append(x)
            else:
                tr.break_stale(home, plan, x, worker=by, reap=reap)
        watched = {x: h for x, h in run_ids.items() if x not in res.external}
        alive = executor.alive(watched)
        if (not pending and not alive) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    res.still_running = sorted(pending | alive)
    res.stopped = sorted(x for x in run_ids if x not in res.still_running and x not in res.external)
    tr.end_goal_if_finished(home, plan, sched, by)
    return res


def retry(home: Home, g: str, t: str | None, *, cascade: bool = False, force: bool = False,
          by: str = "retry") -> list[str]:
    """Make failed / cancelled tasks (or, with force, done ones) run again with a fresh attempt
    and a fresh retry budget. A blocked task is retried by retrying what blocks it."""
    plan = home.load_plan(g)
    sched, _ = build_scheduler(home, plan)
    if t is None:
        roots = [x for x in plan.ids() if sched.state_of(x) in (S.FAILED, S.CANCELLED)]
        if not roots:
            raise Refused(f"nothing to retry in goal {g!r}: no task failed or was cancelled")
    else:
        check_id("task", t)
        if not plan.has(t):
            raise NotFound(f"goal {g!r} has no task {t!r}")
        st = sched.state_of(t)
        if st == S.BLOCKED:
            roots = _blocking_roots(plan, sched, t)
        elif st in (S.FAILED, S.CANCELLED):
            roots = [t]
        elif st == S.DONE:
            if not force:
                raise Refused(f"{g}/{t} is done; `dagrun retry --force {g} {t}` runs it and everything "
                              f"downstream of it again (their outputs are archived)")
            return _redo_done(home, plan, t, by)
        else:
            raise Refused(f"nothing to retry: {g}/{t} is {st}")
    targets = list(roots)
    if cascade:
        targets += [x for x in plan.descendants(roots) if sched.state_of(x) in (S.FAILED, S.CANCELLED)
                    and x not in targets]
    for x in targets:
        _clear(home, g, x)
        tr.reset(home, g, x, by=by, reason=f"retry requested by {by}")
    try:
        fsio.remove(home.summary_path(g))
    except OSError as e:
        raise os_error("remove", home.summary_path(g), e) from None
    return targets


def _blocking_roots(plan: Plan, sched, t: str) -> list[str]:
    out, seen, stack = [], set(), [t]
    while stack:
        x = stack.pop()
        for d in plan.task(x).deps:
            if d in seen:
                continue
            seen.add(d)
            s = sched.state_of(d)
            if s in (S.FAILED, S.CANCELLED):
                out.append(d)
            elif s == S.BLOCKED:
                stack.append(d)
    return [x for x in plan.ids() if x in out]


def _clear(home: Home, g: str, t: str) -> None:
    """Remove the failed/cancelled marker; reset the retry budget on the latest attempt record."""
    try:
        n, rec = latest_attempt(home, g, t)
        if rec is not None and rec.get("failures"):
            rec = {**rec, "failures": 0, "retry_at": None, "reset": now_iso()}
            fsio.write_atomic(home.attempt_path(g, t, int(rec.get("attempt", n)), "json"), dumps(rec))
        fsio.remove(home.marker_path(g, t, S.FAILED))
        fsio.remove(home.marker_path(g, t, S.CANCELLED))
        fsio.remove(os.path.join(home.task_dir(g, t), S.AWAITING_FILE))   # a rejected gate asks afresh
    except OSError as e:
        raise os_error("reset", home.task_dir(g, t), e) from None


def _redo_done(home: Home, plan: Plan, t: str, by: str) -> list[str]:
    g = plan.goal
    targets = [t] + plan.descendants([t])
    with claims.edit_lock(home, g, exclusive=True):
        try:
            fsio.remove(home.summary_path(g))
            # fan-out templates whose items re-run are expanded again from the new output:
            # the plan without their instances first (a crash before the archive leaves the
            # goal consistent: the old output expands again), then the folders
            redo = set(targets)
            fold = [x for x in targets if plan.task(x).fanout is not None and plan.task(x).for_each["from"] in redo]
            if fold:
                gone = {i for x in fold for i in plan.task(x).instances}
                plan_ = plan.with_tasks([fanrules.collapse(x) if x.id in fold else x
                                         for x in plan.tasks if x.id not in gone])
                fsio.write_atomic(home.plan_path(g), plan_.canonical())
            adir, _ = _archive(home, plan, g, set(targets))
        except OSError as e:
            raise os_error("archive", home.task_dir(g, t), e) from None
    for x in targets:
        tr.reset(home, g, x, by=by, reason=f"forced re-run of {t} requested by {by}", archive=adir)
    if fold:
        tr.plan_replaced(home, g, by=by, edit="fanout-reset", templates=fold, removed=sorted(gone), added=[],
                         changed=[], downstream=[], archived=[])
    return targets


def goal_budget(home: Home, g: str, *, add_usd: float = 0.0, add_tokens: int = 0, by: str = "budget") -> dict:
    """`dagrun budget GOAL [--add D] [--add-tokens N]`: the pool (raised first when asked),
    the spend so far and the ready tasks it holds."""
    plan = home.load_plan(g)
    if not plan.budget:
        raise UsageError(f"goal {g!r} has no budget (set \"budget\": {{\"usd\": N}} in its plan)")
    if add_usd or add_tokens:
        added = budget.raise_pool(home, g, usd=add_usd, tokens=add_tokens)
        tr.budget_raised(home, g, by=by, added={k: v for k, v in (("usd", add_usd), ("tokens", add_tokens)) if v},
                         pool=budget.pool(home, plan))
    sched, _ = build_scheduler(home, plan)
    s = budget.spend(home, plan)
    return {"goal": g, "pool": s.pool, "plan_budget": plan.budget, "added": budget.added(home, g), "spent": s.total,
            "held": sched.budget_held(), "by_task": s.by_task}
