"""The operations behind the commands that are not the engine loop: submit / diff / replace,
the external claim protocol, cancel, retry, and the status data. Each is one function over
the files; the CLI only parses arguments and renders what these return."""
from __future__ import annotations

import errno
import functools
import os
import secrets
import time
from dataclasses import dataclass, field

from . import claim as claims
from . import events as ev
from . import fsio
from . import plan as planmod
from . import workspace as wsp
from .errors import DagrunError, ExitCode, NotFound, Refused, UsageError, os_error
from .lifecycle import (Claim, Stale, break_if_stale, build_scheduler, capture_workspace, check_holder, claim_task,
                        commit_done,
                        commit_failure, emit_changes, finish_goal_if_ended, latest_attempt, marker_of,
                        mark_cancelled, stop_goal)
from .plan import Plan, check_id
from .scheduler import READY, RETRYING, RUNNING, WAITING
from .store import Home, as_int, dumps, loads, now_iso, parse_ts
from .wsrules import mutex


# ====================================================================================== submit
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
    """Parse and validate a plan, then check its code workspace against git (repository,
    base, clean work tree): (plan, the workspace pin or None). Writes nothing."""
    plan = planmod.load(path)
    return plan, wsp.check_plan(plan, home.root if home is not None else None)


def submit(home: Home, path: str, *, replace: bool = False, dry_run: bool = False, by: str = "submit") -> SubmitResult:
    plan = planmod.load(path)          # raises PlanError before anything is written
    g = plan.goal
    old_raw = fsio.read_bytes(home.plan_path(g)) if os.path.isdir(home.goals_dir) else None
    if old_raw is None:
        pinned = wsp.check_plan(plan, home.root)    # the repository, only when the goal is born:
        if dry_run:                                 # resuming never depends on the user's work tree
            return SubmitResult(g, "would-create")
        home.ensure()
        return SubmitResult(g, _create_goal(home, plan, by, pinned))
    old = Plan.from_dict(loads(old_raw) or {})
    if old_raw == plan.canonical():
        return SubmitResult(g, "unchanged")
    pinned, was = wsp.check_plan(plan, home.root), loads(fsio.read_bytes(home.goal_workspace_path(g)))
    if pinned and isinstance(was, dict) and was.get("repo") != pinned["repo"]:
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
    whole (plan.json, events.jsonl, tasks/) or not at all."""
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
        have = (f.marker or {}).get("definition") if f.state == "done" else None
        have = have or old.task(t.id).definition_digest()
        if have != t.definition_digest():
            changed.add(t.id)
            d.changed.append(t.id)
    below = set(new.descendants(changed)) - changed
    d.downstream = [t for t in new.ids() if t in below and old.has(t) and facts[t].state != "pending"]
    d.removed = [t for t in old.ids() if not new.has(t)]
    d.kept_done = [t for t in new.ids() if old.has(t) and t not in changed and t not in below
                   and facts[t].state == "done"]
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
    ev.emit(home, g, ev.PLAN_REPLACED, worker=by, changed=d.changed, downstream=d.downstream,
            removed=d.removed, added=d.added, archived=moved, archive=adir if moved else None)


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


# ====================================================================================== external protocol
# A script's claim belongs to a process that outlives `dagrun claim`: the calling script (the
# parent of `dagrun claim`, or the shell a subshell was forked from, see claim.script_pid), or
# --pid. On this host the claim lives exactly as long as that process (pid + start time); from
# other hosts it lives while `dagrun heartbeat` (or the holder's engine) refreshes it within
# the plan's lease. complete/fail/heartbeat are accepted from the holder or any process it
# started (a background heartbeat loop, a subshell), or from whoever names its --worker.

def holder_of(pid: int | None) -> int:
    """The process an external claim will belong to: --pid if given (it must exist), else the
    script that called us."""
    if pid:
        if claims.proc_start(pid) is None:
            raise UsageError(f"--pid {pid}: no such process")
        return pid
    return claims.script_pid(os.getppid())


def _owner(home: Home, g: str, t: str, wait: float = 3.0) -> dict | None:
    """claim/owner.json -- waiting up to `wait` s while the claim is being born (claim/ there,
    owner.json not yet): an engine publishes it just after starting the agent, and the agent
    may call `dagrun heartbeat` before that."""
    deadline = time.monotonic() + wait
    while True:
        o = claims.read_owner(home, g, t)
        if o is not None or time.monotonic() > deadline or not os.path.isdir(home.claim_dir(g, t)):
            return o
        time.sleep(0.01)


def _caller(pid: int | None) -> list[tuple[int, str | None]]:
    """Who is asking: --pid, else we and our ancestors (pid, start time). We count too: a
    shell that exec's `dagrun complete` as its last command hands its pid over to us."""
    if pid:
        return [(pid, claims.proc_start(pid))]
    return claims.lineage(os.getpid())


def claim_external(home: Home, g: str, *, worker: str | None, pid: int | None = None) -> tuple[int, dict | None]:
    """Claim one ready task for a script. (exit code, facts about the claim): 0 claimed,
    3 nothing ready yet, 1 the goal has ended. prompt.md is in place when this returns."""
    check_id("goal", g)
    holder = holder_of(pid)
    worker = worker or f"{claims.HOST}-{holder}"
    plan = home.load_plan(g)
    sched, facts = build_scheduler(home, plan)
    for t, f in facts.items():          # nobody else may be around to recover dead holders
        if f.state == "running" and break_if_stale(home, plan, t, worker=worker) is not None:
            sched.requeue(t)
    if sched.is_finished():
        finish_goal_if_ended(home, plan, sched, worker)
        return ExitCode.GOAL_FAILED, None
    while True:
        if plan.max_parallel and sched.n(RUNNING) >= plan.max_parallel:
            return ExitCode.NOTHING_READY, None
        if plan.on_failure == "stop" and any(f.state == "failed" for f in facts.values()):
            return ExitCode.NOTHING_READY, None
        t = sched.take(mutex(plan.files_of, sched.running_ids()) if plan.files_of else None)
        if t is None:
            return ExitCode.NOTHING_READY, None
        try:
            with claims.edit_lock(home, g):
                c = claim_task(home, plan, t, worker=worker, kind="external", pid=holder, state_of=sched.state_of,
                               owner_extra={"definition": plan.task(t).definition_digest()})
        except Stale:                  # an input was archived since we looked: look again
            plan = home.load_plan(g)
            sched, facts = build_scheduler(home, plan)
            continue
        if c is None:
            continue
        if c.failed is not None:       # workspace: its prerequisites do not merge
            rec = c.failed
            ev.status(home, g, t, ev.FAILED, attempt=c.attempt, worker=worker, duration=rec["duration"],
                      reason=rec["reason"], outcome=rec["outcome"])
            emit_changes(home, g, (sched.finish(t, "failed") or [])[1:], worker)
            if plan.on_failure == "stop":
                emit_changes(home, g, stop_goal(home, plan, sched, t, worker), worker)
            finish_goal_if_ended(home, plan, sched, worker)
            continue
        ev.status(home, g, t, ev.RUNNING, attempt=c.attempt, worker=worker, pid=holder)
        task = plan.task(t)
        cdir = home.claim_dir(g, t)
        info = {
            "goal": g, "task": t, "attempt": c.attempt, "worker": worker, "pid": holder,
            "home": home.root, "task_dir": home.task_dir(g, t), "prompt_file": home.prompt_path(g, t),
            "stdout_file": os.path.join(cdir, "stdout"), "stderr_file": os.path.join(cdir, "stderr"),
            "output_file": home.output_path(g, t), "run_id": c.owner["run_id"], "lease": plan.lease,
            "agent": task.agent, "workdir": c.workspace.cwd if c.workspace else task.workdir,
            "timeout": task.timeout,
        }
        if c.workspace is not None:      # code workspace: the worktree (workdir is inside it)
            info["workspace"] = c.workspace.path
        return ExitCode.OK, info


def _held(home: Home, g: str, t: str, *, worker: str | None, pid: int | None, force: bool, what: str):
    plan = home.load_plan(g)          # (ids checked by _shared_edit_lock, its callers' wrapper)
    if not plan.has(t):
        raise NotFound(f"goal {g!r} has no task {t!r}")
    m = marker_of(home, g, t)
    if m is not None:
        raise Refused(f"cannot {what} {g}/{t}: it is already {m}")
    owner = _owner(home, g, t)
    forced = check_holder(owner, worker=worker, caller=_caller(pid), force=force, what=what, g=g, t=t)
    want = owner.get("definition")
    if want and want != plan.task(t).definition_digest():
        if not force:
            raise Refused(f"cannot {what} {g}/{t}: the plan changed since it was claimed; it will run again")
        forced = True
    started = parse_ts(owner.get("since")) or time.time()
    c = Claim(g, t, as_int(owner.get("attempt"), 1) or 1, owner, started)
    return plan, c, forced


def _by(c: Claim, worker: str | None, forced: bool) -> str:
    """The worker name events carry: the holder's, or (forced) whoever forced it."""
    if forced:
        return worker or f"{claims.HOST}-{claims.script_pid(os.getppid())}"
    return worker or c.owner.get("worker") or "?"


def _forced_fields(c: Claim, forced: bool, by: str) -> dict:
    """What a forced complete/fail records (marker/attempt record and event): who forced it
    over whose claim."""
    if not forced:
        return {}
    o = c.owner
    return {"forced_by": by, "held_by": f"{o.get('worker')} (pid {o.get('pid')} on {o.get('host')})"}


def _shared_edit_lock(fn):
    """Run a commit of an external claim under the goal's shared edit lock (claim.edit_lock):
    the claim cannot be archived by a plan edit between the holder check and the commit."""
    @functools.wraps(fn)
    def locked(home: Home, g: str, t: str, *args, **kw):
        check_id("goal", g)
        check_id("task", t)          # before the lock file: a refused command creates nothing
        with claims.edit_lock(home, g):
            return fn(home, g, t, *args, **kw)
    return locked


@_shared_edit_lock
def complete(home: Home, g: str, t: str, *, output: str | None, worker: str | None, pid: int | None,
             force: bool, stdin=None) -> dict:
    """Commit a script's claim as done. The output is --output FILE, stdin (`-`), or what
    the script wrote to claim/stdout (stdout_file of `dagrun claim --json`); stderr it wrote to
    claim/stderr becomes stderr.log."""
    plan, c, forced = _held(home, g, t, worker=worker, pid=pid, force=force, what="complete")
    data = None
    if output == "-":
        data = (stdin.read() if stdin is not None else b"")
    elif output:
        try:
            with open(output, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"cannot read --output {output}: {e.strerror}") from None
    by = _by(c, worker, forced)
    extra = _forced_fields(c, forced, by)
    sched, _ = build_scheduler(home, plan)
    why = capture_workspace(home, plan, c)     # code workspace: commit it before `done`
    if why is not None:
        raise DagrunError(f"cannot complete {g}/{t}: {why}", ExitCode.IO)
    body = commit_done(home, plan, c, ended=time.time(), output_data=data, **extra)
    ev.status(home, g, t, ev.DONE, attempt=c.attempt, worker=by, duration=body["duration"], exit_code=0,
              output_bytes=body["output_bytes"], **extra)
    changes = sched.finish(t, "done") or []
    emit_changes(home, g, changes[1:], by)
    finish_goal_if_ended(home, plan, sched, by)
    return body


@_shared_edit_lock
def fail(home: Home, g: str, t: str, *, reason: str, worker: str | None, pid: int | None, force: bool,
         exit_code: int | None = None) -> dict:
    """Commit a script's claim as a failed attempt (retried while `retries` last); what it
    wrote to claim/stdout and claim/stderr is kept under attempts/."""
    plan, c, forced = _held(home, g, t, worker=worker, pid=pid, force=force, what="fail")
    by = _by(c, worker, forced)
    extra = _forced_fields(c, forced, by)
    sched, _ = build_scheduler(home, plan)
    rec = commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=exit_code,
                         reason=reason or "reported failed by the worker", **extra)
    if rec["final"]:
        ev.status(home, g, t, ev.FAILED, attempt=c.attempt, worker=by, duration=rec["duration"],
                  exit_code=exit_code, reason=rec["reason"], outcome="failed", **extra)
        changes = sched.finish(t, "failed") or []
        emit_changes(home, g, changes[1:], by)
        if plan.on_failure == "stop":
            emit_changes(home, g, stop_goal(home, plan, sched, t, by), by)
        finish_goal_if_ended(home, plan, sched, by)
    else:
        ev.status(home, g, t, ev.RETRYING, attempt=c.attempt, worker=by, duration=rec["duration"],
                  exit_code=exit_code, reason=rec["reason"], outcome="failed", retry_at=rec["retry_at"], **extra)
        if float(rec.get("retry_at") or 0) <= time.time():
            # no backoff: ready again right now, and nobody else will say so (a running
            # worker would requeue it silently after its grace for a foreign retry)
            ev.status(home, g, t, ev.READY, attempt=c.attempt + 1, worker=by,
                      reason=f"attempt {c.attempt}: {rec['reason']}")
    return rec


def heartbeat(home: Home, g: str, t: str, *, worker: str | None, pid: int | None) -> None:
    """The holder says it is alive and working: refreshes the lease other hosts judge the
    claim by, and resets stall_timeout. Refused (exit 4) once the task was cancelled, ended,
    or the claim is no longer the caller's -- the script should stop its agent then."""
    check_id("goal", g)
    check_id("task", t)
    m = marker_of(home, g, t)
    if m == "cancelled":
        raise Refused(f"{g}/{t} was cancelled: stop working on it")
    if m is not None:
        raise Refused(f"{g}/{t} is already {m}")
    owner = _owner(home, g, t)
    check_holder(owner, worker=worker, caller=_caller(pid), force=False, what="heartbeat", g=g, t=t)
    try:
        fsio.touch(home.heartbeat_path(g, t))
    except FileNotFoundError:
        raise Refused(f"cannot heartbeat {g}/{t}: its claim is gone") from None
    except OSError as e:
        raise os_error("touch", home.heartbeat_path(g, t), e) from None


# ====================================================================================== control
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
    from .executor import ProcessRunner, live_attempts

    plan = home.load_plan(g)
    if t is not None:
        check_id("task", t)
        if not plan.has(t):
            raise NotFound(f"goal {g!r} has no task {t!r}")
    sched, _ = build_scheduler(home, plan)
    # A task already cancelled that still has a claim: an earlier cancel may have died between
    # the marker and the event, so the engine running it never heard. Announce it again.
    unheard = {x for x in plan.ids() if sched.state_of(x) == "cancelled" and os.path.isdir(home.claim_dir(g, x))}
    if t is not None:
        st = sched.state_of(t)
        if st == "done" or (st == "cancelled" and t not in unheard):
            raise Refused(f"cannot cancel {g}/{t}: it is already {st}")
        targets = [t]
    else:
        # dependents first: each gets its own cancelled marker, not a "blocked" on the way
        targets = [sched.ids[i] for i in reversed(sched.order)
                   if sched.state[i] in (WAITING, READY, RUNNING, RETRYING) or sched.ids[i] in unheard]
    why = reason or f"cancelled by {by}"
    res = CancelResult()
    for x in targets:
        if mark_cancelled(home, g, x, by=by, reason=why):
            ev.status(home, g, x, ev.CANCELLED, worker=by, reason=why)
            res.cancelled.append(x)
        elif x in unheard:
            ev.status(home, g, x, ev.CANCELLED, worker=by, reason=why, repeated=True)
        ch = sched.finish(x, "cancelled") or []
        emit_changes(home, g, ch[1:], by)
    # after the markers: a task claimed just before its marker landed is running too
    pending = {x for x in targets if os.path.isdir(home.claim_dir(g, x))}
    if wait is None:
        wait = max((plan.task(x).kill_grace for x in pending), default=0.0) + 5.0
    reap = ProcessRunner().reap_orphan
    deadline = time.monotonic() + wait
    run_ids: dict[str, str] = {}
    while True:
        for x in sorted(pending):
            owner = claims.read_owner(home, g, x)
            if owner:
                rid = owner.get("run_id") or (owner.get("handle") or {}).get("run_id")
                if rid:
                    run_ids[x] = rid
            if not os.path.isdir(home.claim_dir(g, x)):
                pending.discard(x)
            elif owner and owner.get("kind") == "external":
                pending.discard(x)         # a script's agent: it learns on its next heartbeat
                res.external.append(x)
            else:
                break_if_stale(home, plan, x, worker=by, reap=reap)
        watched = {x: rid for x, rid in run_ids.items() if x not in res.external}
        live = live_attempts(set(watched.values()))
        alive = {x for x, rid in watched.items() if rid in live}
        if (not pending and not alive) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    res.still_running = sorted(pending | alive)
    res.stopped = sorted(x for x in run_ids if x not in res.still_running and x not in res.external)
    finish_goal_if_ended(home, plan, sched, by)
    return res


def retry(home: Home, g: str, t: str | None, *, cascade: bool = False, force: bool = False,
          by: str = "retry") -> list[str]:
    """Make failed / cancelled tasks (or, with force, done ones) run again with a fresh attempt
    and a fresh retry budget. A blocked task is retried by retrying what blocks it."""
    plan = home.load_plan(g)
    sched, _ = build_scheduler(home, plan)
    if t is None:
        roots = [x for x in plan.ids() if sched.state_of(x) in ("failed", "cancelled")]
        if not roots:
            raise Refused(f"nothing to retry in goal {g!r}: no task failed or was cancelled")
    else:
        check_id("task", t)
        if not plan.has(t):
            raise NotFound(f"goal {g!r} has no task {t!r}")
        st = sched.state_of(t)
        if st == "blocked":
            roots = _blocking_roots(plan, sched, t)
        elif st in ("failed", "cancelled"):
            roots = [t]
        elif st == "done":
            if not force:
                raise Refused(f"{g}/{t} is done; `dagrun retry --force {g} {t}` runs it and everything "
                              f"downstream of it again (their outputs are archived)")
            return _redo_done(home, plan, t, by)
        else:
            raise Refused(f"nothing to retry: {g}/{t} is {st}")
    targets = list(roots)
    if cascade:
        targets += [x for x in plan.descendants(roots) if sched.state_of(x) in ("failed", "cancelled")
                    and x not in targets]
    for x in targets:
        _clear(home, g, x)
        ev.status(home, g, x, ev.RESET, worker=by, reason=f"retry requested by {by}")
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
            if s in ("failed", "cancelled"):
                out.append(d)
            elif s == "blocked":
                stack.append(d)
    return [x for x in plan.ids() if x in out]


def _clear(home: Home, g: str, t: str) -> None:
    """Remove the failed/cancelled marker; reset the retry budget on the latest attempt record."""
    try:
        n, rec = latest_attempt(home, g, t)
        if rec is not None and rec.get("failures"):
            rec = {**rec, "failures": 0, "retry_at": None, "reset": now_iso()}
            fsio.write_atomic(home.attempt_path(g, t, int(rec.get("attempt", n)), "json"), dumps(rec))
        fsio.remove(home.marker_path(g, t, "failed"))
        fsio.remove(home.marker_path(g, t, "cancelled"))
    except OSError as e:
        raise os_error("reset", home.task_dir(g, t), e) from None


def _redo_done(home: Home, plan: Plan, t: str, by: str) -> list[str]:
    g = plan.goal
    targets = [t] + plan.descendants([t])
    with claims.edit_lock(home, g, exclusive=True):
        try:
            fsio.remove(home.summary_path(g))
            adir, _ = _archive(home, plan, g, set(targets))
        except OSError as e:
            raise os_error("archive", home.task_dir(g, t), e) from None
    for x in targets:
        ev.status(home, g, x, ev.RESET, worker=by, reason=f"forced re-run of {t} requested by {by}",
                  archive=adir)
    return targets


# ====================================================================================== status
def goal_overview(home: Home, g: str) -> dict:
    plan = home.load_plan(g)
    sched, _ = build_scheduler(home, plan)
    counts = sched.counts()
    return {"goal": g, "state": _goal_state(sched, len(plan.tasks)), "tasks": len(plan.tasks), "counts": counts,
            "source": plan.source}


def _goal_state(sched, n: int) -> str:
    c = sched.counts()
    if sched.is_finished():
        if c.get("done", 0) == n:
            return "done"
        return "failed" if c.get("failed", 0) else "cancelled"
    if c.get("running", 0):
        return "running"
    if c.get("retrying", 0):
        return "retrying"
    return "ready"


def goal_detail(home: Home, g: str) -> dict:
    plan = home.load_plan(g)
    facts = home.snapshot(g, plan, detail=True)
    sched, _ = build_scheduler(home, plan)
    now = time.time()
    rows = []
    for t in plan.ids():
        f = facts[t]
        st = sched.state_of(t)
        row = {"task": t, "state": st, "attempt": f.attempt, "worker": None, "started": None,
               "duration": None}
        if st == "running" and f.owner:
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
            if f.marker.get("exit_code") is not None and st == "failed":
                row["exit_code"] = f.marker["exit_code"]
        elif st == "retrying" and f.record:
            row["retry_at"] = now_iso(f.retry_at)
            row["reason"] = f.record.get("reason")
        if st == "blocked":
            row["blocked_by"] = sched.blocked_by(t)
        rows.append(row)
    summary = loads(fsio.read_bytes(home.summary_path(g)))
    return {"goal": g, "state": _goal_state(sched, len(plan.tasks)), "counts": sched.counts(),
            "tasks": rows, "summary": summary, "source": plan.source}



# ====================================================================================== workspaces
def integrate(home: Home, g: str, into: str | None = None) -> "wsp.Integration":
    """`dagrun integrate`: merge every done task's branch into dagrun/<goal>/_integrated (or --into)."""
    check_id("goal", g)
    plan = home.load_plan(g)
    with claims.edit_lock(home, g):        # no plan edit archives task folders meanwhile
        return wsp.integrate(home, plan, into)


def gc(home: Home, *, dry_run: bool = False) -> list["wsp.GcItem"]:
    """`dagrun gc`: worktrees of ended goals (and of archived task folders) removed; task
    branches deleted once integrated into dagrun/<goal>/_integrated."""
    plans, ended = [], set()
    for g in home.goals():
        try:
            plan = home.load_plan(g)
        except DagrunError:
            continue
        plans.append(plan)
        if os.path.exists(home.summary_path(g)):
            ended.add(g)
    return wsp.gc(home, plans, ended=ended, dry_run=dry_run)
