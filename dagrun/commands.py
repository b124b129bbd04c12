"""The protocol commands a script calls: claim, complete, fail, heartbeat. Each is one
function over the files (through transitions), shared by the fast path (protocol.py) and the
typer CLI."""
from __future__ import annotations

import functools
import os
import time

from . import claim as claims
from . import fanout, fsio, proc
from . import resources as res
from . import states as S
from . import transitions as tr
from .agentio import agent_env, attempt_extra
from .errors import ExitCode, NotFound, Refused, UsageError, os_error
from .lifecycle import (
    Claim,
    Stale,
    build_scheduler,
    check_holder,
    claim_task,
    marker_of,
)
from .plan import check_id
from .presets import shell_command
from .store import Home, as_int, parse_ts
from .wsrules import CONFLICT

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
        if proc.proc_start(pid) is None:
            raise UsageError(f"--pid {pid}: no such process")
        return pid
    return proc.script_pid(os.getppid())


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
        return [(pid, proc.proc_start(pid))]
    return proc.lineage(os.getpid())


def claim_external(home: Home, g: str, *, worker: str | None, pid: int | None = None) -> tuple[int, dict | None]:
    """Claim one ready task for a script. (exit code, facts about the claim): 0 claimed,
    3 nothing ready yet, 1 the goal has ended. prompt.md is in place when this returns."""
    check_id("goal", g)
    holder = holder_of(pid)
    worker = worker or f"{proc.HOST}-{holder}"
    plan = home.load_plan(g)
    # ranked by the plan's estimates only: the engine's history ranking would read every done
    # marker under the home on every claim (~95 ms per 5 000 done tasks, bench/claim_ranking.py)
    sched, facts = build_scheduler(home, plan)
    for t, f in facts.items():          # nobody else may be around to recover dead holders
        if f.state == S.RUNNING and tr.break_stale(home, plan, t, worker=worker) is not None:
            sched.requeue(t)
    tr.replay_hooks(home, g, worker)  # hooks left due by a process that died (no engine may be around)
    if sched.expandable() and fanout.expand_due(home, plan, sched, worker):   # fan-out templates now ready
        plan = home.load_plan(g)
        sched, facts = build_scheduler(home, plan)
    if sched.awaiting():              # approval gates past their timeout (no engine may be around)
        tr.expire_approvals(home, plan, sched, worker=worker)
    if sched.is_finished():
        tr.end_goal_if_finished(home, plan, sched, worker)
        return ExitCode.GOAL_FAILED, None
    while True:
        t = sched.take()              # None too when max_parallel or on_failure=stop say wait
        if t is None:
            if sched.is_finished():   # what was left got skipped just now: the goal has ended
                tr.end_goal_if_finished(home, plan, sched, worker)
                return ExitCode.GOAL_FAILED, None
            return ExitCode.NOTHING_READY, None
        try:
            with claims.edit_lock(home, g):
                c = claim_task(home, plan, t, worker=worker, kind="external", pid=holder, state_of=sched.state_of,
                               owner_extra={"definition": plan.task(t).definition_digest()})
                # no agent for a false `when` (skipped) or an approval gate (it waits on a
                # person, not on this script): settled under the same lock, on to the next task
                if c is not None and c.conflict is None and c.skip is not None:
                    tr.skip(home, plan, sched, c, worker=worker)
                    c = None
                elif c is not None and c.conflict is None and plan.task(t).approval is not None:
                    tr.await_approval(home, plan, sched, c, worker=worker)
                    continue
        except Stale:                  # an input was archived since we looked: look again
            plan = home.load_plan(g)
            sched, facts = build_scheduler(home, plan)
            continue
        except res.Busy as e:          # another worker took the units first: that pool is full
            sched.requeue(t)
            res.apply(home, plan, sched)
            sched.free[e.pool] = 0
            continue
        if c is None:
            continue
        if c.conflict is not None:     # code workspace: its prerequisites do not merge
            tr.finish(home, plan, sched, c, ok=False, worker=worker, outcome=CONFLICT, reason=c.conflict,
                      final=True)
            tr.end_goal_if_finished(home, plan, sched, worker)
            continue
        if plan.task(t).fanout is not None:   # an expanded template: joined here, no agent
            fanout.join(home, plan, sched, c, worker)
            tr.end_goal_if_finished(home, plan, sched, worker)
            if sched.expandable() and fanout.expand_due(home, plan, sched, worker):
                plan = home.load_plan(g)
                sched, facts = build_scheduler(home, plan)
            if sched.is_finished():
                return ExitCode.GOAL_FAILED, None     # the goal has ended
            continue
        tr.started(home, c, worker=worker, pid=holder)
        task = plan.task(t)
        cdir = home.claim_dir(g, t)
        info = {
            "goal": g, "task": t, "attempt": c.attempt, "worker": worker, "pid": holder,
            "home": home.root, "task_dir": home.task_dir(g, t), "prompt_file": home.prompt_path(g, t),
            "stdout_file": os.path.join(cdir, "stdout"), "stderr_file": os.path.join(cdir, "stderr"),
            "output_file": home.output_path(g, t), "run_id": c.owner["run_id"], "lease": plan.lease,
            "agent": shell_command(task.agent, task.check, task.check_timeout),   # presets and checks expanded
            "workdir": c.workspace.cwd if c.workspace else task.workdir, "timeout": task.timeout,
            **({"resources": c.resources} if c.resources else {}),
            # usage_file, raw_file, check_file, heartbeat_file: what the agent hands back (agentio)
            **{k.removeprefix("DAGRUN_").lower(): v for k, v in agent_env(cdir).items()},
        }
        if c.workspace is not None:    # code workspace: the worktree (workdir is inside it)
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
        return worker or f"{proc.HOST}-{proc.script_pid(os.getppid())}"
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
    done = tr.finish(home, plan, sched, c, ok=True, worker=by, output_data=data, forced=extra,
                     extra=attempt_extra(home.claim_dir(g, t)))     # the agent's $DAGRUN_USAGE_FILE lines
    tr.end_goal_if_finished(home, plan, sched, by)
    if done.outcome != S.DONE:     # its code workspace could not be committed: the attempt failed
        then = "it runs again" if done.outcome == S.RETRYING else "no retry is left"
        raise Refused(f"cannot complete {g}/{t}: {done.record.get('reason')}; the attempt is recorded as "
                      f"failed ({then})")
    return done.record


@_shared_edit_lock
def fail(home: Home, g: str, t: str, *, reason: str, worker: str | None, pid: int | None, force: bool,
         exit_code: int | None = None) -> dict:
    """Commit a script's claim as a failed attempt (retried while `retries` last); what it
    wrote to claim/stdout and claim/stderr is kept under attempts/."""
    plan, c, forced = _held(home, g, t, worker=worker, pid=pid, force=force, what="fail")
    by = _by(c, worker, forced)
    extra = _forced_fields(c, forced, by)
    sched, _ = build_scheduler(home, plan)
    # a retry without backoff is announced ready at once: nobody else will say so; one with a
    # backoff says `announced: false`, and running workers requeue it (silently) at retry_at
    done = tr.finish(home, plan, sched, c, ok=False, worker=by, exit_code=exit_code,
                     reason=reason or "reported failed by the worker", forced=extra, announce_ready=True,
                     extra=attempt_extra(home.claim_dir(g, t)))
    if done.outcome == S.FAILED:
        tr.end_goal_if_finished(home, plan, sched, by)
    return done.record


def _decider() -> str:
    """Who decides a gate: user@host (recorded in the marker and the event)."""
    import getpass
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{proc.HOST}"


@_shared_edit_lock
def decide(home: Home, g: str, t: str, *, approve: bool, text: str = "", by: str | None = None) -> dict:
    """`dagrun approve GOAL TASK [--note]` / `dagrun reject GOAL TASK --reason`: an approval
    gate that awaits a person becomes done (the note is its output) or failed (its dependents
    are blocked). A gate past its timeout is rejected instead, and approving it is refused."""
    plan = home.load_plan(g)
    if not plan.has(t):
        raise NotFound(f"goal {g!r} has no task {t!r}")
    if plan.task(t).approval is None:
        raise Refused(f"cannot {'approve' if approve else 'reject'} {g}/{t}: it is not an approval gate "
                      "(no \"approval\" in the plan)")
    by = by or _decider()
    sched, _ = build_scheduler(home, plan)
    if approve and t in tr.expire_approvals(home, plan, sched, worker=by)[0]:
        raise Refused(f"cannot approve {g}/{t}: its approval timed out; it was rejected (dagrun retry {g} {t} asks again)")
    done = tr.decide(home, plan, sched, t, approve=approve, by=by, text=text)
    tr.end_goal_if_finished(home, plan, sched, by)
    return done.record


def heartbeat(home: Home, g: str, t: str, *, worker: str | None, pid: int | None) -> None:
    """The holder says it is alive and working: refreshes the lease other hosts judge the
    claim by, and resets stall_timeout. Refused (exit 4) once the task was cancelled, ended,
    or the claim is no longer the caller's -- the script should stop its agent then."""
    check_id("goal", g)
    check_id("task", t)
    m = marker_of(home, g, t)
    if m == S.CANCELLED:
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


