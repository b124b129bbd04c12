"""Status data for the views: one goal's overview, one goal's task table."""
from __future__ import annotations

import time

from . import budget, fsio
from . import states as S
from .lifecycle import build_scheduler
from .store import Home, loads, now_iso, parse_ts
from .summary import goal_run


def goal_overview(home: Home, g: str) -> dict:
    plan = home.load_plan(g)
    sched, _ = build_scheduler(home, plan)
    counts = sched.counts()
    return {"goal": g, "state": _goal_state(sched, len(plan.tasks)), "tasks": len(plan.tasks), "counts": counts,
            "source": plan.source}


def _goal_state(sched, n: int) -> str:
    c = sched.counts()
    if sched.is_finished():
        if c.get(S.DONE, 0) == n:
            return S.DONE
        return S.FAILED if c.get(S.FAILED, 0) else S.CANCELLED
    if c.get(S.RUNNING, 0):
        return S.RUNNING
    if c.get(S.RETRYING, 0):
        return S.RETRYING
    return S.READY


def goal_detail(home: Home, g: str) -> dict:
    plan = home.load_plan(g)
    facts = home.snapshot(g, plan, detail=True)
    sched, _ = build_scheduler(home, plan)
    now = time.time()
    held = set(sched.budget_held())
    rows = []
    for t in plan.ids():
        f = facts[t]
        st = sched.state_of(t)
        row = {"task": t, "state": st, "attempt": f.attempt, "worker": None, "started": None,
               "duration": None}
        if st == S.RUNNING and f.owner:
            row["worker"] = f.owner.get("worker")
            row["started"] = f.owner.get("since")
            since = parse_ts(f.owner.get("since"))
            if since:
                row["duration"] = round(now - since, 3)
        elif f.marker:
            row["worker"] = f.marker.get("worker") or f.marker.get("by")
            row["started"] = f.marker.get("started")
            row["duration"] = f.marker.get("duration")
            if f.marker.get("reason"):
                row["reason"] = f.marker["reason"]
            if f.marker.get("cached") is True:
                row["cached"] = True
            if f.marker.get("exit_code") is not None and st == S.FAILED:
                row["exit_code"] = f.marker["exit_code"]
        elif st == S.RETRYING and f.record:
            row["retry_at"] = now_iso(f.retry_at)
            row["reason"] = f.record.get("reason")
        if st == S.BLOCKED:
            row["blocked_by"] = sched.blocked_by(t)
        elif st == S.READY and t in held:       # the budget pool keeps it from starting
            row["state"], row["blocked_by"] = S.BLOCKED, "budget"
            row["reason"] = f"budget: spent {budget.fmt(sched.spent, sched.budget)} of {budget.fmt(sched.budget)}"
        rows.append(row)
    summary = loads(fsio.read_bytes(home.summary_path(g)))
    run = goal_run(home, plan, sched, now)                # usage: every attempt's, failed ones too
    per = run.usage_by_task()
    for row in rows:
        if row["task"] in per:
            row["usage"] = per[row["task"]]
    return {"goal": g, "state": _goal_state(sched, len(plan.tasks)), "counts": sched.counts(),
            "tasks": rows, "summary": summary, "source": plan.source, "usage": run.usage(),
            **({"budget": {"pool": sched.budget, "spent": sched.spent, "held": sorted(held)}} if plan.budget else {})}


