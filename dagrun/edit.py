"""Plan editing: submit a plan (a new goal folder, whole or not at all), diff two plans,
replace a goal's plan (archive what must re-run, publish the new plan last), add tasks to a
goal that may be running (add_tasks). transitions and claim (lifecycle, hooks) are imported
by the functions that edit a goal: submitting a new goal -- `dagrun submit` on the fast path
-- does not pay for them."""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field

import orjson

from . import events as ev
from . import fanrules
from . import fsio
from . import plan as planmod
from . import resources as res
from . import states as S
from .errors import DagrunError, PlanError, Refused, os_error
from .plan import Plan, check_id
from .records import NEW, plain_methods
from .store import Home, dumps, loads, loads_obj, now_iso


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class Diff:
    """Tasks a plan replacement adds, removes or changes, and those below a change."""
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)        # definition differs
    downstream: list[str] = field(default_factory=list)     # unchanged, but below a changed task
    kept_done: list[str] = field(default_factory=list)

    def __init__(self, added=NEW, removed=NEW, changed=NEW, downstream=NEW, kept_done=NEW):
        self.added = [] if added is NEW else added
        self.removed = [] if removed is NEW else removed
        self.changed = [] if changed is NEW else changed
        self.downstream = [] if downstream is NEW else downstream
        self.kept_done = [] if kept_done is NEW else kept_done

    __repr__, __eq__ = plain_methods("added", "removed", "changed", "downstream", "kept_done")

    @property
    def rerun(self) -> list[str]:
        return self.changed + self.downstream

    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.downstream)

    def to_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "downstream": self.downstream, "kept_done": self.kept_done}


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class SubmitResult:
    """What a submit did to a goal (created, unchanged, replaced), and the plan's diff."""
    goal: str
    action: str                 # created | unchanged | replaced | would-replace
    diff: Diff | None = None
    # created or unchanged: (plan.json's stamp, the Plan it holds) -- what `dagrun run` hands
    # its engine instead of parsing the file again (store.Home.plan_stamp's tuple)
    written: tuple | None = None

    def __init__(self, goal, action, diff=None, written=None):
        self.goal, self.action, self.diff, self.written = goal, action, diff, written

    __repr__, __eq__ = plain_methods("goal", "action", "diff", "written")


def load_checked(path: str, home: Home | None = None) -> tuple[Plan, dict | None]:
    """`dagrun validate`: parse and validate a plan, then check its code workspace against
    git as submit would (repository, base, clean work tree): (plan, the workspace pin or
    None). Writes nothing."""
    plan = planmod.load(path, home.root if home is not None else None)
    if home is not None:
        check_capacities(home, plan, path)
    return plan, _pin(plan, home.root if home is not None else None)


def _pin(plan: Plan, home_root: str | None) -> dict | None:
    """workspace.check_plan: the code workspace's pin, None for a plan without one -- for
    which the git side (workspace.py) is not even imported (`dagrun submit`'s start-up)."""
    if not plan.workspace:
        return None
    from .workspace import check_plan
    return check_plan(plan, home_root)


def check_capacities(home: Home, plan: Plan, path: str) -> None:
    """A task asking for more than a home or tenant capacity could never start: a plan error
    at submit (the plan's own capacities are the validator's). A capacity lowered later
    shows as the task's waiting reason in `dagrun status`."""
    bad = res.too_big(plan, res.limits(home))
    if bad:
        raise PlanError(f"{path}: {bad[0]} in {home.root} (see: dagrun resources)")


def submit(home: Home, path: str, *, replace: bool = False, dry_run: bool = False, by: str = "submit",
           plan: Plan | None = None) -> SubmitResult:
    """`plan`: the plan at `path`, already loaded by the caller (planmod.load)."""
    if plan is None:
        plan = planmod.load(path, home.root)   # raises PlanError before anything is written (home: presets.json)
    check_capacities(home, plan, path)
    runners = {t.runner for t in plan.tasks if t.runner != "local"}
    if runners:         # the local runner is always there: submitting a local plan imports no runner code
        from . import executor
        executor.require(runners, options=executor.options_of([plan]))
    g = plan.goal
    # plan.json's stamp before its read: a file replaced in between has another stamp, and the
    # engine given (stamp, plan) as SubmitResult.written then reads the file (store.plan_stamp)
    stamp = home.plan_stamp(g) if os.path.isdir(home.goals_dir) else ()
    old_raw = home.plan_bytes(g) if os.path.isdir(home.goals_dir) else None
    if old_raw is None:
        # the code workspace's repository is checked (and its base pinned) only when the goal
        # is born: resuming it never depends on the state of the user's work tree
        pinned = _pin(plan, home.root)
        if dry_run:
            return SubmitResult(g, "would-create")
        home.ensure()
        action, stamp = _create_goal(home, plan, by, pinned)
        return SubmitResult(g, action, written=(stamp, plan) if action == "created" else None)
    if old_raw == plan.canonical():   # the same plan again (`dagrun run PLAN` resumed): nothing to parse
        return SubmitResult(g, "unchanged", written=(stamp, plan) if stamp else None)
    old = Plan.from_dict(loads(old_raw) or {})
    # what the goal grew by itself stays: tasks `dagrun add` put in, templates' expansions
    plan = carry_over(home, old, plan)
    if old_raw == plan.canonical():
        return SubmitResult(g, "unchanged", written=(stamp, plan) if stamp else None)
    pinned = _pin(plan, home.root)
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
    _replace_goal(home, old, plan, d, by, old_raw)
    return SubmitResult(g, "replaced", d)


class BadPlans(DagrunError):
    """submit_many: one or more plans were refused; `bad` has (path, error) for each."""

    def __init__(self, bad: list[tuple[str, DagrunError]]):
        super().__init__(f"{len(bad)} of the plans refused: " + "; ".join(f"{p}: {e}" for p, e in bad),
                         max(int(e.exit_code) for _p, e in bad))
        self.bad = bad


def submit_many(home: Home, paths: list[str], *, replace: bool = False, dry_run: bool = False,
                by: str = "submit", loaded: dict[str, Plan] | None = None) -> list[SubmitResult]:
    """`dagrun submit a.json b.json ...`: all or nothing. Every plan is validated and checked
    against the goal already there (a different plan without `replace`, two files for one
    goal) before any is submitted; BadPlans names each bad one and nothing is written. Then
    each is submitted in turn (each goal whole or not at all, as `submit`); a crash half-way
    leaves the first ones submitted, and running the same command again finishes the job
    (a plan already there is `unchanged`). `loaded`: path -> plan already loaded."""
    loaded = dict(loaded or {})
    bad: list[tuple[str, DagrunError]] = []
    owner: dict[str, str] = {}
    for p in paths:
        try:
            if p not in loaded:
                loaded[p] = planmod.load(p, home.root)
            g = loaded[p].goal
            if g in owner:
                raise PlanError(f"goal {g!r} is also the goal of {owner[g]}: one plan per goal")
            owner[g] = p
            r = submit(home, p, dry_run=True, plan=loaded[p])
            if r.action == "would-replace" and not replace:
                raise Refused(f"goal {g!r} already exists with a different plan; `dagrun diff {p}` shows what "
                              f"would re-run, `--replace` applies it")
        except DagrunError as e:
            bad.append((p, e))
    if bad:
        raise BadPlans(bad)
    return [submit(home, p, replace=replace, dry_run=dry_run, by=by, plan=loaded[p]) for p in paths]
def carry_over(home: Home, old: Plan, new: Plan) -> Plan:
    """The goal's growth carried into a new version of its plan (`submit --replace`, and
    `run dag.json` again on a goal that has grown):

    - tasks added by `dagrun add` (origin "add") that the new plan does not name are kept,
      unless something they depend on is gone (then they are removed, and archived);
    - an expanded template keeps its instances, rebuilt from the items recorded in plan.json
      with the new template (a changed prompt re-runs them, like any changed task), when its
      `for_each` (from, as) is unchanged, its `from` task does not re-run, and the items still
      fit `max`; otherwise the instances are removed and the template expands again once its
      `from` task is done."""
    kept = [fanrules.collapse(t) for t in old.tasks
            if t.origin and t.origin.get("edit") == "add" and not new.has(t.id)]
    plan = _expand_as_before(home, old, new)
    for _ in range(2):     # kept tasks may hang below instances, kept templates have their own
        if not kept:
            break
        plan = _expand_as_before(home, old, _keep_valid(plan, kept))
    return plan


def _expand_as_before(home: Home, old: Plan, plan: Plan) -> Plan:
    if not any(old.has(t) and old.task(t).fanout is not None for t in plan.unexpanded):
        return plan
    d = diff(home, old, plan)
    rerun = set(d.changed) | set(plan.descendants(d.changed))
    for tid in plan.unexpanded:
        t = plan.task(tid)
        o = old.task(tid) if old.has(tid) else None
        if o is None or o.fanout is None or not o.for_each or t.for_each["from"] in rerun or \
                (o.for_each["from"], o.for_each["as"]) != (t.for_each["from"], t.for_each["as"]) or \
                o.fanout > t.for_each["max"]:
            continue
        items = [old.task(i).origin.get("item") for i in o.instances if old.has(i) and old.task(i).origin]
        if len(items) != o.fanout:
            continue
        try:
            from . import fanout      # only a resubmit of an expanded goal needs it (keeps submit's start-up small)
            plan = fanout.build(plan, tid, items)
        except fanrules.FanoutError:
            continue
    return plan


def _keep_valid(new: Plan, kept: list) -> Plan:
    """new plus the kept tasks whose dependencies all exist (to a fixpoint)."""
    have = set(new.ids())
    out = []
    pending = [t for t in kept if t.id not in have]
    changed = True
    while changed:
        changed = False
        for t in list(pending):
            if all(d in have for d in (*t.deps, *t.soft_deps)):
                out.append(t)
                have.add(t.id)
                pending.remove(t)
                changed = True
    order = {t.id: i for i, t in enumerate(kept)}
    return new.with_tasks(list(new.tasks) + sorted(out, key=lambda t: order[t.id]))


def _create_goal(home: Home, plan: Plan, by: str, pinned: dict | None = None) -> tuple[str, tuple]:
    """Build the goal folder under a dot-name and rename it into place: a goal is there
    whole (plan.json, events.jsonl, tasks/, the code workspace's pinned base) or not at all.
    (action, the stamp of the plan.json this call wrote -- the file's identity, kept by the
    folder's rename; meaningful when the action is "created")."""
    g = plan.goal
    home.sweep_unborn_goals()
    tmp = home.unborn_goal_dir(g)
    try:
        fsio.makedirs(os.path.join(tmp, "tasks"))
        fsio.mark_top_dir(os.path.join(tmp, "tasks"))     # an allocation hint (ext4), see there
        fsio.write_atomic(os.path.join(tmp, "plan.json"), plan.canonical())
        st = os.stat(os.path.join(tmp, "plan.json"))      # kept by the folder's rename
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
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
                return "unchanged", stamp
            if existing is None:
                raise DagrunError(f"cannot create goal folder {home.goal_dir(g)}: it exists but has no plan.json; "
                                  f"remove it or pick another goal id") from None
            raise Refused(f"goal {g!r} was just submitted with a different plan by another process") from None
    except OSError as e:
        fsio.rmtree(tmp)
        raise os_error("create goal", home.goal_dir(g), e) from None
    if len(plan.tasks) >= SNAPSHOT_MIN_TASKS:
        from .status import refresh_snapshot
        try:
            refresh_snapshot(home, g, plan, stamp)
        except (OSError, DagrunError):
            pass               # best effort: status computes from the files without it
    return "created", stamp


# A big goal's first `status` would parse plan.json again, build the scheduler and its rows
# (~2 s of CPU at 100 000 tasks); submit has the plan parsed and derives the status snapshot
# (statuscache.py) for ~0.9 s of that (load 15-20). Small goals' status is cheap, and submit of a small plan
# stays free of the status imports.
SNAPSHOT_MIN_TASKS = 2_000


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


def _replace_goal(home: Home, old: Plan, new: Plan, d: Diff, by: str, old_raw: bytes | None = None) -> None:
    """Archive the task folders that must re-run (claims of running ones go with them, so
    their holders see the claim vanish and stop), then publish the new plan."""
    from . import claim as claims
    from . import transitions as tr

    g = new.goal
    below = set(new.descendants(d.changed)) | set(d.changed)
    targets = below | set(d.removed)
    with claims.edit_lock(home, g, exclusive=True):
        if old_raw is not None and home.plan_bytes(g) != old_raw:
            raise Refused(f"the plan of goal {g!r} changed meanwhile (a fan-out or `dagrun add`); "
                          f"run the command again")
        try:
            fsio.remove(home.summary_path(g))
            adir, moved = _archive(home, old, g, targets)
            fsio.write_atomic(home.plan_path(g), new.canonical())
        except OSError as e:
            raise os_error("replace the plan of", home.goal_dir(g), e) from None
    tr.plan_replaced(home, g, by=by, changed=d.changed, downstream=d.downstream,
                     removed=d.removed, added=d.added, archived=moved, archive=adir if moved else None)


def add_tasks(home: Home, g: str, fragment: bytes | dict, *, by: str, shown: str = "fragment",
              agent: dict | None = None) -> list[str]:
    """Add the tasks of a fragment ({"tasks": [...], "defaults": {...}}) to goal g, running
    or not: validated like a plan (plan.parse_fragment: ids, unknown deps, cycles, limits, no
    id clash), new tasks only below existing ones or as new leaves, so nothing that exists
    changes or re-runs. Under the goal's exclusive edit lock (no claim or commit meanwhile,
    no second edit): summary.json goes first (the goal is open again; a crash right after
    leaves the old plan, whose end is simply announced again), then the new plan.json is
    published by rename -- the old plan or the new one, nothing in between -- and an
    `agent.plan.replaced` event names who added what (engines rebuild the goal on it), and
    each added task carries its `origin` in plan.json ({"edit": "add", "by", "at", and the
    adding agent's task/attempt when `agent` says so}), so the record survives a crash
    between the publish and the event. The goal's max_tasks caps the growth.
    Returns the added ids. Raises PlanError (exit 2) before anything is written."""
    from . import claim as claims
    from . import transitions as tr

    check_id("goal", g)
    raw = fragment if isinstance(fragment, (bytes, bytearray)) else orjson.dumps(fragment)
    planmod.parse_fragment(bytes(raw), shown=shown, plan=home.load_plan(g))  # refused: nothing created
    with claims.edit_lock(home, g, exclusive=True):
        old = home.load_plan(g)                 # again under the lock: another edit may have won
        new = planmod.parse_fragment(bytes(raw), shown=shown, plan=old)
        added = new.ids()[len(old.tasks):]
        origin = {"edit": "add", "by": by, "at": now_iso(), **(agent or {})}
        new = new.with_tasks(list(new.tasks[:len(old.tasks)]) +
                             [t.replace(origin=origin) for t in new.tasks[len(old.tasks):]])
        try:
            fsio.remove(home.summary_path(g))
            fsio.write_atomic(home.plan_path(g), new.canonical())
        except OSError as e:
            raise os_error("add tasks to", home.goal_dir(g), e) from None
    tr.plan_replaced(home, g, by=by, edit="add", added=added, changed=[], downstream=[], removed=[],
                     archived=[], **(agent or {}))
    return added


def _archive(home: Home, plan: Plan, g: str, targets: set[str]) -> tuple[str, list[str]]:
    """Move the task folders of `targets` to archive/<stamp>/ -- dependents before what they
    depend on (reverse topological order of `plan`, the plan in force on disk). The caller
    holds the goal's exclusive edit lock, so nobody claims or commits meanwhile; the order is
    for a crash half-way: every task still done then has all its inputs still done, the state
    stays consistent, and running the same command again finishes the job."""
    from .scheduler import Scheduler

    import secrets
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


