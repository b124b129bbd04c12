"""The aggregator: summary.json of an ended goal, computed from the files."""
from __future__ import annotations

from .plan import Plan
from .scheduler import Scheduler
from .store import Home, now_iso


def build_summary(home: Home, plan: Plan, sched: Scheduler) -> dict:
    counts = sched.counts()
    states = sched.states()
    failed_roots = [t for t in plan.ids() if states[t] in ("failed", "cancelled")]
    blocked = [{"task": t, "blocked_by": sched.blocked_by(t)} for t in plan.ids() if states[t] == "blocked"]
    outcome = "done" if counts.get("done", 0) == len(states) else "failed"
    return {
        "goal": plan.goal, "outcome": outcome, "finished": now_iso(), "tasks": len(states),
        "counts": counts, "failed_roots": failed_roots, "blocked": blocked,
    }
