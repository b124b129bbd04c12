"""The budget pool: what a goal may spend (plan `budget: {"usd": d, "tokens": n}`).

The pool is the plan's budget plus what `dagrun budget GOAL --add` added, kept in
goals/<g>/budget.json (`{"usd": added, "tokens": added}`, published by rename under the
goal's exclusive edit lock, so two raises never lose one). The spend is read from the files:
every attempt's `usage` (done markers, attempt records -- failed and stopped attempts cost
too) plus what running attempts reported so far in their claim's usage.jsonl. Spent tokens
are tokens_in + tokens_out.

The rule itself is the scheduler's (Scheduler.fits_budget, in may_start/take): `apply` hands it
the pool and the spend. The engine stops a running attempt of ours once the spend is past the
pool (outcome `budget`, not counted; the attempt's usage is kept) and tells a task past its
soft share (`budget_share` of the pool) through claim/budget.json ($DAGRUN_BUDGET_FILE).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import claim as claims
from .records import NEW, plain_methods
from . import fsio
from .plan import Plan
from .scheduler import Scheduler
from .store import Home, dumps, loads_obj
from .summary import read_attempts
from .usage import USAGE_FILE
from .usage import add as add_usage
from .usage import read as read_usage

FILE = "budget.json"            # goals/<g>/budget.json: the raises; claim/budget.json: what a task is told
OUTCOME = "budget"              # a running attempt stopped at the pool


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class Spend:
    """A goal's budget pool and what it spent, in all and per task."""
    pool: dict | None                                   # {"usd", "tokens"} as raised; None: no budget
    total: dict = field(default_factory=dict)           # {"usd": float, "tokens": int}
    by_task: dict = field(default_factory=dict)         # task -> usage (usage.add sums)

    def __init__(self, pool, total=NEW, by_task=NEW):
        self.pool = pool
        self.total = {} if total is NEW else total
        self.by_task = {} if by_task is NEW else by_task

    __repr__, __eq__ = plain_methods("pool", "total", "by_task")

    def over(self) -> bool:
        """The spend is past the pool (usd or tokens)."""
        if not self.pool:
            return False
        return any(k in self.pool and self.total.get(k, 0) > self.pool[k] for k in ("usd", "tokens"))


def _path(home: Home, g: str) -> str:
    return os.path.join(home.goal_dir(g), FILE)


def added(home: Home, g: str) -> dict:
    d = loads_obj(fsio.read_bytes(_path(home, g), follow=False)) or {}
    return {k: d[k] for k in ("usd", "tokens") if isinstance(d.get(k), (int, float)) and not isinstance(d[k], bool)}


def pool(home: Home, plan: Plan) -> dict | None:
    """The plan's budget plus the raises; None when the plan has no budget."""
    if not plan.budget:
        return None
    more = added(home, plan.goal)
    out = {k: v + more.get(k, 0) for k, v in plan.budget.items()}
    for k, v in more.items():
        out.setdefault(k, v)
    return out


def raise_pool(home: Home, g: str, *, usd: float = 0.0, tokens: int = 0) -> dict:
    """Add to the goal's raises (published by rename); returns the new raises."""
    with claims.edit_lock(home, g, exclusive=True):
        cur = added(home, g)
        if usd:
            cur["usd"] = round(cur.get("usd", 0.0) + usd, 6)
        if tokens:
            cur["tokens"] = int(cur.get("tokens", 0) + tokens)
        fsio.write_atomic(_path(home, g), dumps(cur))
    return cur


def amounts(u: dict | None) -> dict:
    u = u or {}
    return {"usd": float(u.get("cost_usd") or 0.0), "tokens": int(u.get("tokens_in") or 0) + int(u.get("tokens_out") or 0)}


def spend(home: Home, plan: Plan) -> Spend:
    """Pool and spend of the goal, from the files (committed attempts + running claims)."""
    g = plan.goal
    by_task: dict = {}
    for t in plan.ids():
        u = None
        for a in read_attempts(home, g, t):
            u = add_usage(u, a.usage)
        running, _ = read_usage(os.path.join(home.claim_dir(g, t), USAGE_FILE))
        u = add_usage(u, running)
        if u:
            by_task[t] = u
    total = {"usd": 0.0, "tokens": 0}
    for u in by_task.values():
        a = amounts(u)
        total["usd"] = round(total["usd"] + a["usd"], 6)
        total["tokens"] += a["tokens"]
    return Spend(pool(home, plan), total, by_task)


def apply(home: Home, plan: Plan, sched: Scheduler) -> Spend:
    """Hand the pool and the spend to the scheduler's budget rule; returns them."""
    s = spend(home, plan)
    sched.set_budget(s.pool, s.total)
    return s


def share_of(plan: Plan, t: str, pool_: dict | None) -> dict | None:
    """What task t may spend before it is told: budget_share of the pool."""
    if not pool_:
        return None
    f = plan.task(t).budget_share
    return {k: (round(v * f, 6) if k == "usd" else int(v * f)) for k, v in pool_.items()}


def over_share(plan: Plan, t: str, s: Spend) -> dict | None:
    """The task's share when its spend is past it, else None."""
    share = share_of(plan, t, s.pool)
    if not share:
        return None
    mine = amounts(s.by_task.get(t))
    return share if any(mine[k] > v for k, v in share.items()) else None


def tell(claim_dir: str, *, share: dict, spent: dict, pool_: dict) -> None:
    """claim/budget.json ($DAGRUN_BUDGET_FILE): the running task is past its soft share."""
    fsio.write_atomic(os.path.join(claim_dir, FILE),
                      dumps({"over_share": True, "share": share, "spent": spent, "pool": pool_}))


def fmt(d: dict | None, like: dict | None = None) -> str:
    """'$1.0200, 1020 tokens'; with `like` (a pool): only the amounts the pool limits."""
    if like:
        d = {k: v for k, v in (d or {}).items() if k in like}
    if not d:
        return "-"
    parts = []
    if "usd" in d:
        parts.append(f"${d['usd']:.4f}")
    if "tokens" in d:
        parts.append(f"{d['tokens']} tokens")
    return ", ".join(parts)
