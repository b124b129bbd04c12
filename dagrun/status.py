"""Status data for the views: one goal's overview, one goal's task table, a task's output and
log files (for `dagrun output`/`logs` and the MCP server alike)."""
from __future__ import annotations

import os
import time

from . import budget, fsio
from . import states as S
from .lifecycle import scheduler_from_facts
from .store import Home, loads, now_iso, parse_ts
from .summary import usage_by_task
from .usage import add as add_usage


def goal_overview(home: Home, g: str) -> dict:
    plan = home.load_plan(g)
    sched = scheduler_from_facts(home, plan, home.snapshot(g, plan, view=True))
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
    facts = home.snapshot(g, plan, detail=True, view=True)   # one read of every task folder
    sched = scheduler_from_facts(home, plan, facts)
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
    per = usage_by_task(home, g, facts)                   # usage: every attempt's, failed ones too
    total = None
    for row in rows:
        if row["task"] in per:
            row["usage"] = per[row["task"]]
            total = add_usage(total, per[row["task"]])
    # the goal's last failed hook (hooks never change a task's state, so it shows here)
    hook_failure = loads(fsio.read_bytes(os.path.join(home.hooks_due_dir(g), "last_failure.json")))
    return {"goal": g, "state": _goal_state(sched, len(plan.tasks)), "counts": sched.counts(),
            "tasks": rows, "summary": summary, "source": plan.source, "usage": total,
            "hook_failure": hook_failure,
            **({"budget": {"pool": sched.budget, "spent": sched.spent, "held": sorted(held)}} if plan.budget else {})}




def check_task(home: Home, g: str, t: str):
    """Ids checked; the goal's plan has t (or its folder exists). Raises NotFound."""
    from .errors import NotFound
    from .plan import check_id

    check_id("goal", g)
    check_id("task", t)
    plan = home.load_plan(g)
    if not plan.has(t) and not os.path.isdir(home.task_dir(g, t)):
        raise NotFound(f"goal {g!r} has no task {t!r}")
    return plan


def task_output(home: Home, g: str, t: str) -> bytes:
    """A done task's output; NotFound (with its state) when it has none."""
    from .errors import NotFound
    from .lifecycle import marker_of

    check_task(home, g, t)
    m = marker_of(home, g, t)
    if m != S.DONE:
        state = m or ("running" if os.path.isdir(home.claim_dir(g, t)) else "not done")
        raise NotFound(f"{g}/{t} has no output: it is {state}")
    return home.read_task_file(home.output_path(g, t)) or b""


def log_paths(home: Home, g: str, t: str, *, attempt: int | None = None,
              stdout: bool = False) -> tuple[list[str], int, str]:
    """Where an attempt's stderr (or stdout) is, best first: the running claim's capture, the
    attempt record's copy, the task's stderr.log/output. (paths, attempt number, "stderr"|"stdout")."""
    from .errors import NotFound

    check_task(home, g, t)
    row = next((r for r in goal_detail(home, g)["tasks"] if r["task"] == t), None)
    running = os.path.isdir(home.claim_dir(g, t))
    latest = int((row or {}).get("attempt") or 0)
    if not latest:
        raise NotFound(f"{g}/{t} has not started yet: no logs")
    n = attempt or latest
    if n > latest:
        raise NotFound(f"{g}/{t} has {latest} attempt{'s' if latest != 1 else ''}: no attempt {n}")
    ext, name = ("out", "stdout") if stdout else ("err", "stderr")
    paths = []
    if n == latest and running:
        paths.append(os.path.join(home.claim_dir(g, t), name))
    paths.append(home.attempt_path(g, t, n, ext))
    if n == latest and not running:
        paths.append(home.output_path(g, t) if stdout else home.stderr_path(g, t))
    return paths, n, name
