"""The operations on code workspaces a person runs: `dagrun integrate` (merge a goal's task
branches) and `dagrun gc` (remove worktrees, delete integrated task branches). The git part
is workspace.py; this module finds the goals and holds the goal's edit lock around it."""
from __future__ import annotations

import os

from . import claim as claims
from . import workspace as wsp
from .errors import DagrunError
from .plan import check_id
from .store import Home


def integrate(home: Home, g: str, into: str | None = None) -> wsp.Integration:
    """`dagrun integrate`: merge every done task's branch, in dependency order, into
    dagrun/<goal>/_integrated (or the existing branch `into`); Conflict names tasks and files."""
    check_id("goal", g)
    plan = home.load_plan(g)
    with claims.edit_lock(home, g):        # no plan edit archives task folders meanwhile
        return wsp.integrate(home, plan, into)


def gc(home: Home, *, dry_run: bool = False) -> list[wsp.GcItem]:
    """`dagrun gc`: the worktrees of ended goals (and of archived task folders) removed; task
    branches deleted once integrated into dagrun/<goal>/_integrated."""
    plans, ended = [], set()
    for g in home.goals():
        try:
            plan = home.load_plan(g)
        except DagrunError:
            continue                       # a goal being created or a corrupt plan: not ours to clean
        plans.append(plan)
        if os.path.exists(home.summary_path(g)):
            ended.add(g)
    return wsp.gc(home, plans, ended=ended, dry_run=dry_run)
