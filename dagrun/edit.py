"""Plan editing: submit a plan (a new goal folder, whole or not at all), diff two plans,
replace a goal's plan (archive what must re-run, publish the new plan last), add tasks to a
goal that may be running (add_tasks)."""
from __future__ import annotations

import errno
import os
import secrets
import time
from dataclasses import dataclass, field

import orjson

from . import claim as claims
from . import executor
from . import events as ev
from . import fsio
from . import plan as planmod
from . import states as S
from . import transitions as tr
from . import workspace as wsp
from .errors import DagrunError, Refused, os_error
from .plan import Plan, check_id
from .store import Home, dumps, loads, loads_obj


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)        # definition differs
    downstream: list[str] = field(default_factory=list)     # unchanged, but below a changed task
    kept_done: list[str] = field(default_factory=list)

    @property
    def rerun(self) -> list[str]:
        return self.changed + self.downstream

    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.downstream)

    def to_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "downstream": self.downstream, "kept_done": self.kept_done}


@dataclass
class SubmitResult:
    goal: str
    action: str                 # created | unchanged | replaced | would-replace
    diff: Diff | None = None


def load_checked(path: str, home: Home | None = None) -> tuple[Plan, dict | None]:
    """`dagrun validate`: parse and validate a plan, then check its code workspace against
    git as submit would (repository, base, clean work tree): (plan, the workspace pin or
    None). Writes nothing."""
    plan = planmod.load(path, home.root if home is not None else None)
    return plan, wsp.check_plan(plan, home.root if home is not None else None)


def submit(home: Home, path: str, *, replace: bool = False, dry_run: bool = False, by: str = "submit",
           parsed: Plan | None = None) -> SubmitResult:
    """`parsed`: the plan already loaded from `path` by the caller (the CLI checks its agents
    first): a 100 000-task plan is parsed once, not twice."""
    # raises PlanError before anything is written (home: presets.json)
    plan = parsed if parsed is not None else planmod.load(path, home.root)
    executor.require({t.runner for t in plan.tasks if t.runner != "local"}, options=executor.options_of([plan]))
    g = plan.goal
    old_raw = home.plan_bytes(g) if os.path.isdir(home.goals_dir) else None
    if old_raw is None:
        # the code workspace's repository is checked (and its base pinned) only when the goal
        # is born: resuming it never depends on the state of the user's work tree
        pinned = wsp.check_plan(plan, home.root)
        if dry_run:
            return SubmitResult(g, "would-create")
        home.ensure()
        return SubmitResult(g, _create_goal(home, plan, by, pinned))
    old = Plan.from_dict(loads(old_raw) or {})
    if old_raw == plan.canonical():
        return SubmitResult(g, "unchanged")
    pinned = wsp.check_plan(plan, home.root)
    was = loads_obj(fsio.read_bytes(home.goal_workspace_path(g), follow=False))
    if pinned and was and was.get("repo") != pinned["repo"]:
        raise Refused(f"goal {g!r} works in the repository {was.get('repo')}; a plan edit cannot move it to "
                      f"{pinned['repo']}: submit it under another goal id")
    d = diff(home, old, plan)
    if dry_run:
        return SubmitResult(g, "would-replace", d)
    if not replace:
        raise Refused(f"goal {g!r} already exists with a different plan (from {old.source}); "
                      f"`dagrun diff {path}` shows what would re-run, `--replace` applies it")
    _replace_goal(home, old, plan, d, by)
    return SubmitResult(g, "replaced", d)


def _create_goal(home: Home, plan: Plan, by: str, pinned: dict | None = None) -> str:
    """Build the goal folder under a dot-name and rename it into place: a goal is there
    whole (plan.json, events.jsonl, tasks/, the code workspace's pinned base) or not at all."""
    g = plan.goal
    home.sweep_unborn_goals()
    tmp = home.unborn_goal_dir(g)
    try:
        fsio.makedirs(os.path.join(tmp, "tasks"))
        fsio.write_atomic(os.path.join(tmp, "plan.json"), plan.canonical())
        if pinned:           # the workspace's base commit, fixed with the goal (workspace.pin)
            fsio.write_atomic(os.path.join(tmp, os.path.basename(home.goal_workspace_path(g))), dumps(pinned))
        lines = [ev.encode(ev.make(ev.PLAN_CREATED, g, worker=by, tasks=len(plan.tasks), source=plan.source))]
        for t in plan.tasks:
            if not t.deps and not t.soft_deps:
                lines.append(ev.encode(ev.make(ev.TASK_STATUS, g, task=t.id, status=ev.READY, worker=by)))
        fsio.write_atomic(os.path.join(tmp, "events.jsonl"), b"".join(lines))
        try:
            fsio.rename(tmp, home.goal_dir(g))
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise                         # disk full, I/O error: reported below
            fsio.rmtree(tmp)                  # a concurrent submit won
            existing = fsio.read_bytes(home.plan_path(g))
            if existing == plan.canonical():
                return "unchanged"
            if existing is None:
                raise DagrunError(f"cannot create goal folder {home.goal_dir(g)}: it exists but has no plan.json; "
                                  f"remove it or pick another goal id") from None
            raise Refused(f"goal {g!r} was just submitted with a different plan by another process") from None
    except OSError as e:
        fsio.rmtree(tmp)
        raise os_error("create goal", home.goal_dir(g), e) from None
    return "created"


def diff(home: Home, old: Plan, new: Plan) -> Diff:
    """What replacing `old` by `new` would re-run: tasks whose definition changed and all
    that depend on them (their inputs change); done tasks elsewhere are kept."""
    facts = home.snapshot(old.goal, old, detail=True)
    d = Diff()
    changed = set()
    for t in new.tasks:
        if not old.has(t.id):
            d.added.append(t.id)
            continue
        f = facts[t.id]
        have = (f.marker or {}).get("definition") if f.state == S.DONE else None
        have = have or old.task(t.id).definition_digest()
        if have != t.definition_digest():
            changed.add(t.id)
            d.changed.append(t.id)
    below = set(new.descendants(changed)) - changed
    d.downstream = [t for t in new.ids() if t in below and old.has(t) and facts[t].state != S.PENDING]
    d.removed = [t for t in old.ids() if not new.has(t)]
    d.kept_done = [t for t in new.ids() if old.has(t) and t not in changed and t not in below
                   and facts[t].state == S.DONE]
    # tasks below a change that never ran need nothing archived, but they will run with new inputs
    return d


def _replace_goal(home: Home, old: Plan, new: Plan, d: Diff, by: str) -> None:
    """Archive the task folders that must re-run (claims of running ones go with them, so
    their holders see the claim vanish and stop), then publish the new plan."""
    g = new.goal
    below = set(new.descendants(d.changed)) | set(d.changed)
    targets = below | set(d.removed)
    with claims.edit_lock(home, g, exclusive=True):
        try:
            fsio.remove(home.summary_path(g))
            adir, moved = _archive(home, old, g, targets)
            fsio.write_atomic(home.plan_path(g), new.canonical())
        except OSError as e:
            raise os_error("replace the plan of", home.goal_dir(g), e) from None
    tr.plan_replaced(home, g, by=by, changed=d.changed, downstream=d.downstream,
                     removed=d.removed, added=d.added, archived=moved, archive=adir if moved else None)


def add_tasks(home: Home, g: str, fragment: bytes | dict, *, by: str, shown: str = "fragment") -> list[str]:
    """Add the tasks of a fragment ({"tasks": [...], "defaults": {...}}) to goal g, running
    or not: validated like a plan (plan.parse_fragment: ids, unknown deps, cycles, limits, no
    id clash), new tasks only below existing ones or as new leaves, so nothing that exists
    changes or re-runs. Under the goal's exclusive edit lock (no claim or commit meanwhile,
    no second edit): summary.json goes first (the goal is open again; a crash right after
    leaves the old plan, whose end is simply announced again), then the new plan.json is
    published by rename -- the old plan or the new one, nothing in between -- and an
    `agent.plan.replaced` event names who added what (engines rebuild the goal on it).
    Returns the added ids. Raises PlanError (exit 2) before anything is written."""
    check_id("goal", g)
    raw = fragment if isinstance(fragment, (bytes, bytearray)) else orjson.dumps(fragment)
    planmod.parse_fragment(bytes(raw), shown=shown, plan=home.load_plan(g))  # refused: nothing created
    with claims.edit_lock(home, g, exclusive=True):
        old = home.load_plan(g)                 # again under the lock: another edit may have won
        new = planmod.parse_fragment(bytes(raw), shown=shown, plan=old)
        added = new.ids()[len(old.tasks):]
        try:
            fsio.remove(home.summary_path(g))
            fsio.write_atomic(home.plan_path(g), new.canonical())
        except OSError as e:
            raise os_error("add tasks to", home.goal_dir(g), e) from None
    tr.plan_replaced(home, g, by=by, edit="add", added=added, changed=[], downstream=[], removed=[],
                     archived=[])
    return added


def _archive(home: Home, plan: Plan, g: str, targets: set[str]) -> tuple[str, list[str]]:
    """Move the task folders of `targets` to archive/<stamp>/ -- dependents before what they
    depend on (reverse topological order of `plan`, the plan in force on disk). The caller
    holds the goal's exclusive edit lock, so nobody claims or commits meanwhile; the order is
    for a crash half-way: every task still done then has all its inputs still done, the state
    stays consistent, and running the same command again finishes the job."""
    from .scheduler import Scheduler

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    adir = os.path.join(home.archive_dir(g), stamp)
    order = [plan.tasks[i].id for i in reversed(Scheduler(plan.tasks).order)]
    order = [t for t in sorted(targets) if not plan.has(t)] + [t for t in order if t in targets]
    moved = []
    for t in order:
        src = home.task_dir(g, t)
        if os.path.isdir(src):
            fsio.makedirs(adir)
            fsio.rename(src, os.path.join(adir, t))
            moved.append(t)
    return adir, moved


