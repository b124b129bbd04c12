"""Every task state change goes through here: start, finish (done / failed / retrying),
an attempt that ended without a verdict, cancel, reset (retry), a lost holder, a stall, the
goal's end. Each function writes the files in commit order (through lifecycle), appends the
events -- this module is the only one that appends task and goal events -- and returns the
Changes the pure scheduler computed (what became ready, blocked, or was cancelled by
on_failure=stop). The engine, the protocol commands (claim/complete/fail), cancel and retry
all call it; a caller only decides what to do next (start the ready ones, set timers).

Commit order (see ARCHITECTURE.md): files -> marker (the commit point) -> claim removed ->
the task's own event -> its consequences' events. A crash anywhere before the marker leaves a
claim whose holder is dead (broken, attempt recorded lost, run again); after it the marker
wins. Events are the change feed, never the truth: a lost event is repaired by the rescan.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import claim as claims
from . import events as ev
from . import fsio
from . import hooks as hk
from . import resources as res
from . import states as S
from .errors import DagrunError, os_error
from .lifecycle import (
    Claim,
    awaiting_of,
    break_if_stale,
    capture_workspace,
    claim_gate,
    commit_done,
    commit_failure,
    commit_skipped,
    drop_awaiting,
    gate_body,
    mark_cancelled,
    marker_of,
    publish_awaiting,
    record_unfinished,
)
from .plan import Plan
from .proc import BOOT_ID, HOST, is_alive
from .records import NEW, plain_methods
from .scheduler import Scheduler, skip_reason
from .store import Home, as_int, dumps, loads


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class Changes:
    """What a transition did to the rest of the goal, as the scheduler computed it."""
    ready: list[str] = field(default_factory=list)              # became ready
    blocked: list[tuple[str, str]] = field(default_factory=list)  # (task, root that blocks it)
    cancelled: list[str] = field(default_factory=list)          # cancelled by on_failure=stop
    rebuild: bool = False     # outside the scheduler's incremental rules: rebuild from the files
    skipped: list[tuple[str, str | None]] = field(default_factory=list)  # (task, the skipped task behind it, if any)

    def __init__(self, ready=NEW, blocked=NEW, cancelled=NEW, rebuild=False, skipped=NEW):
        self.ready = [] if ready is NEW else ready
        self.blocked = [] if blocked is NEW else blocked
        self.cancelled = [] if cancelled is NEW else cancelled
        self.rebuild = rebuild
        self.skipped = [] if skipped is NEW else skipped

    __repr__, __eq__ = plain_methods("ready", "blocked", "cancelled", "rebuild", "skipped")

    def extend(self, other: "Changes") -> None:
        self.ready += other.ready
        self.skipped += other.skipped
        self.blocked += other.blocked
        self.cancelled += other.cancelled
        self.rebuild = self.rebuild or other.rebuild


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class Finished:
    """The result of finish(): the done marker's body or the attempt record, and the changes."""
    outcome: str              # done | failed | retrying
    record: dict
    changes: Changes

    def __init__(self, outcome, record, changes):
        self.outcome, self.record, self.changes = outcome, record, changes

    __repr__, __eq__ = plain_methods("outcome", "record", "changes")


# ---------------------------------------------------------------------------------- hooks
def _emit(home: Home, plan: Plan | None, g: str, type_: str, *, pending=None, hooks: bool = True,
          **fields) -> dict:
    """Append an event that may trigger hooks: the hooks-due record is published before the
    event line, the hooks run (hooks.py, on a thread) after it -- at least once, whatever
    crashes after the commit point. plan None: loaded only if the event can have hooks.
    pending: the record hooks.prepare_pending published before the commit point (a task's
    own done/failed/retrying, a cancel, a blocked dependent, the goal's end), settled here into
    the event's record. hooks=False: the event's hooks are another record's business (a
    re-announced goal end: its finisher's pending record)."""
    e = ev.make(type_, g, **fields)
    due = None
    if pending is not None:
        due = hk.settle(pending, e)
    elif hooks and hk.event_name(e) is not None:
        if plan is None:
            try:
                plan = home.load_plan(g)
            except Exception:        # noqa: BLE001 -- a goal being replaced/removed: no hooks
                plan = None
        if plan is not None:
            due = hk.prepare(home, plan, e)
    ev.append(home, g, e)
    if due is not None:
        ev.flush()          # a held line (the engine's turn) is on disk before its hooks run
        hk.start(due, hook_failed)
    return e


def _status(home: Home, plan: Plan | None, g: str, t: str, st: str, *, pending=None, hooks: bool = True,
            **fields) -> dict:
    return _emit(home, plan, g, ev.TASK_STATUS, pending=pending, hooks=hooks, task=t, status=st, **fields)


def hook_failed(home: Home, g: str, **fields) -> None:
    """A hook failed (hooks.py reports it): the event, and the goal's last failure for status."""
    e = ev.emit(home, g, ev.HOOK_FAILED, **fields)
    fsio.write_atomic(os.path.join(home.hooks_due_dir(g), "last_failure.json"), dumps(e))


def replay_hooks(home: Home, g: str, worker: str) -> int:
    """Hooks left due by a process that died: run them now (engine start-up and rescan)."""
    return hk.replay(home, g, hook_failed, worker)


def _changes(home: Home, g: str, sched_changes, worker: str, plan: Plan | None = None,
             blocked_due: dict | None = None, skipped_due: dict | None = None) -> Changes:
    """Announce what a terminal transition unlocked or blocked (the first entry is the task
    itself, announced by the caller with its details) and return it. blocked_due /
    skipped_due: the pending on_blocked / on_skipped records published before the commit
    point (_prepare_blocked, _prepare_skipped), settled here."""
    if sched_changes is not None and len(sched_changes) == 1 and not blocked_due and not skipped_due:
        return Changes()       # nothing else changed, nothing pending to settle: the usual commit
    ch = Changes()
    blocked_due = dict(blocked_due or {})
    skipped_due = dict(skipped_due or {})
    try:
        if sched_changes is None:
            ch.rebuild = True
            return ch
        for tid, state, root in sched_changes[1:]:
            if state == S.READY:
                ev.status(home, g, tid, ev.READY, worker=worker)
                ch.ready.append(tid)
            elif state == S.BLOCKED:
                cause = S.CANCELLED if marker_of(home, g, root) == S.CANCELLED else S.FAILED
                _emit(home, plan, g, ev.TASK_BLOCKED, pending=blocked_due.pop(tid, None), task=tid,
                      reason=f"{cause} dependency", blocked_by=root, worker=worker)
                ch.blocked.append((tid, root))
            elif state == S.SKIPPED:    # by its trigger rule (derived, like blocked: no marker)
                _status(home, plan, g, tid, ev.SKIPPED, pending=skipped_due.pop(tid, None), worker=worker,
                        **_rule_skipped(root))
                ch.skipped.append((tid, root))
        return ch
    finally:
        for pend in (*blocked_due.values(), *skipped_due.values()):   # not after all (a retry, a rebuild)
            hk.abandon(pend)


def _rule_skipped(root: str | None) -> dict:
    """The fields of a task skipped by its trigger rule (derived: no marker): the skipped task
    behind it, if any, as `skipped_by`."""
    return {"reason": skip_reason(root), **({"skipped_by": root} if root is not None else {}), "derived": True}


def _prepare_blocked(home: Home, plan: Plan, sched: Scheduler, t: str, attempt: int | None,
                     cancel_id: str | None = None) -> dict:
    """Before the marker that may block t's dependents: their pending on_blocked records."""
    return hk.prepare_blocked(home, plan, plan.goal, t, attempt, cancel_id, lambda: sched.would_block(t))


def _prepare_skipped(home: Home, plan: Plan, sched: Scheduler, t: str, outcome: str, cause: dict,
                     own: dict | None = None) -> dict:
    """Before t's marker of `outcome` (the commit point; cause: its attempt, or the skip_id /
    cancel_id it names): the pending on_skipped records of t's own skip (own: its event's
    fields) and of the tasks the trigger rules skip after it (the scheduler's would_skip)."""
    def skips():
        out = [(t, own)] if own is not None else []
        for tid, root in sched.would_skip(t, outcome):
            out.append((tid, _rule_skipped(root)))
        return out
    return hk.prepare_skipped(home, plan, plan.goal, {"marker": outcome, "task": t, **cause}, skips)


def _abandon(*pending) -> None:
    for p in pending:
        if isinstance(p, dict):
            for q in p.values():
                hk.abandon(q)
        else:
            hk.abandon(p)


# ---------------------------------------------------------------------------------- start
def started(home: Home, c: Claim, *, worker: str, **fields) -> None:
    """The claim is held and the agent runs (its owner.json is published): `running`, with
    the resource units it holds."""
    ev.status(home, c.goal, c.task, ev.RUNNING, attempt=c.attempt, worker=worker, resources=c.resources, **fields)


def release_resources(home: Home, c: Claim, *, worker: str, why: str) -> None:
    """The attempt has ended (its process is gone): its resource units go back before its
    commit, so the best ready task anywhere can have them at once. The event comes first:
    in events.jsonl a unit's `released` line is always before the next holder's `running`."""
    units = c.owner.get("units") if c.owner else None
    if not units:
        return
    names = sorted({res.describe(res.key_of(home, u)) for u in units if isinstance(u, str)})
    ev.emit(home, c.goal, ev.TASK_RESOURCES, task=c.task, attempt=c.attempt, released=names, why=why, worker=worker)
    ev.flush()              # on disk before another process can take the units (held lines: events.hold)
    res.release(home, units, c.owner.get("run_id"))


def placed(home: Home, c: Claim, *, worker: str, **fields) -> None:
    """A cluster runner's attempt that was queued when it started now runs on a node (its
    `running` event could not say where): `node`, with the runner and its remote id."""
    ev.emit(home, c.goal, ev.TASK_PLACED, task=c.task, attempt=c.attempt, worker=worker, **fields)


# ---------------------------------------------------------------------------------- finish
def finish(home: Home, plan: Plan, sched: Scheduler, c: Claim, *, ok: bool, worker: str,
           ended: float | None = None, outcome: str = S.FAILED, exit_code: int | None = None,
           signal: int | None = None, reason: str = "", output_data: bytes | None = None,
           forced: dict | None = None, fields: dict | None = None, stop_handled: bool = False,
           announce_ready: bool = False, extra: dict | None = None, cached: str | None = None,
           final: bool | None = None, listing: frozenset | set | None = None) -> Finished:
    """An attempt ended with a verdict. ok: publish output, stderr.log and `done`; else record
    the attempt (`failed` when no retry is left, `retrying` otherwise). Then the events and
    the scheduler's consequences. A final failure under on_failure=stop cancels what has
    not started (unless `stop_handled`: this process already did, or another one does).

    forced: {"forced_by", "held_by"} of a `--force` complete/fail (marker, record and event).
    fields: more fields for the task's own event (first_byte, strays_killed, ...).
    announce_ready: a retry without backoff is announced `ready` at once (a script's `fail`:
    nobody else would say so); one with a backoff says `announced: false` in its event.
    extra: what the agent handed back (agentio.attempt_extra: `usage`, the acceptance
    `check`): into the marker and the attempt record; `usage` also into the event.
    cached: the result cache's key when `output_data` is a cache hit (no agent ran): the
    marker says `"cached": true` (no exit code) and so does the event.
    final: True fails the task for good whatever its retries (a workspace conflict).
    listing: the names in the claim folder, listed by the caller after the agent ended
    (the engine): commit_done looks only for the capture files it names.

    With a code workspace, ok first commits the worktree (lifecycle.capture_workspace); if
    that fails the attempt fails with git's reason instead (and is retried like any failure)."""
    g, t = c.goal, c.task
    ended = time.time() if ended is None else ended
    forced = forced or {}
    extra = dict(extra) if extra else {}
    release_resources(home, c, worker=worker, why=S.DONE if ok else (outcome or S.FAILED))
    if ok:
        why = capture_workspace(home, plan, c)
        if why is not None:
            ok, outcome, reason = False, S.FAILED, why
            exit_code = 0 if exit_code is None else exit_code
    # no hook anywhere for this plan (the usual case): nothing to prepare before the marker
    # nor for the event -- each prepare would ask the same two questions and find nothing
    hooked = not hk.none_for(home, plan)
    if ok:
        if cached is not None:
            extra.update(cached=True, cache_key=cached)
            code = None
        else:
            code = exit_code if exit_code is not None else 0
        if hooked:
            pending = hk.prepare_pending(home, plan, g, t, c.attempt, ("on_done",))
            skipped_due = _prepare_skipped(home, plan, sched, t, S.DONE, {"attempt": c.attempt})
        else:
            pending, skipped_due = None, {}
        try:
            body = commit_done(home, plan, c, ended=ended, exit_code=code, output_data=output_data,
                               extra=extra or None, listing=listing, **forced)
        except BaseException:
            _abandon(pending, skipped_due)
            raise
        _status(home, plan, g, t, ev.DONE, pending=pending, hooks=hooked, attempt=c.attempt, worker=worker,
                duration=body["duration"], exit_code=code, output_bytes=body["output_bytes"], usage=body.get("usage"),
                node=body.get("node"), cached=True if cached else None, **(fields or {}), **forced)
        return Finished(S.DONE, body, _changes(home, g, sched.finish(t, S.DONE), worker, plan,
                                               skipped_due=skipped_due))
    # who announces a retry's `ready` when its backoff ends: the engine process that holds the
    # claim, or nobody (a script's `fail`); other engines requeue at retry_at once it is gone
    announcer = False if announce_ready else (
        {k: c.owner.get(k) for k in ("host", "boot_id", "pid", "pid_start")} if c.owner.get("kind") == "engine" else None)
    if hooked:
        pending = hk.prepare_pending(home, plan, g, t, c.attempt, ("on_failed", "on_retrying"))
        blocked_due = _prepare_blocked(home, plan, sched, t, c.attempt)     # if this failure is final
        skipped_due = _prepare_skipped(home, plan, sched, t, S.FAILED, {"attempt": c.attempt})
    else:
        pending, blocked_due, skipped_due = None, {}, {}
    try:
        rec = commit_failure(home, plan, c, outcome=outcome, ended=ended, exit_code=exit_code, signal=signal,
                             announcer=announcer,
                             reason=reason, extra=extra or None, final=final, **forced)
    except BaseException:
        _abandon(pending, blocked_due, skipped_due)
        raise
    common = dict(attempt=c.attempt, worker=worker, duration=rec["duration"], exit_code=rec.get("exit_code"),
                  signal=rec.get("signal"), reason=rec.get("reason"), outcome=rec["outcome"], usage=rec.get("usage"),
                  node=rec.get("node"))
    common.update(fields or {})     # e.g. a rejected gate's decided_by (docs/conditions.md), like a success's
    if rec["final"]:
        _status(home, plan, g, t, ev.FAILED, pending=pending, hooks=hooked, **common, **forced)
        ch = _changes(home, g, sched.finish(t, S.FAILED), worker, plan, blocked_due, skipped_due)
        if not ch.rebuild and sched.stop_on_failure and not stop_handled:
            ch.extend(stop_goal(home, plan, sched, t, worker))
        return Finished(S.FAILED, rec, ch)
    _abandon(blocked_due, skipped_due)          # a retry blocks and skips nobody
    # a script's retry (announce_ready) has no engine behind it to announce `ready` when its
    # backoff ends: `announced: false` tells the engines reading the line to requeue it at
    # retry_at, not a grace later (tests/reliability/README.md #33)
    due = float(rec.get("retry_at") or 0) <= time.time()
    _status(home, plan, g, t, ev.RETRYING, pending=pending, hooks=hooked, **common, retry_at=rec["retry_at"],
            announced=False if announce_ready and not due else None,
            announcer=announcer or None, **forced)
    sched.retrying(t)
    if announce_ready and due:
        ev.status(home, g, t, ev.READY, attempt=c.attempt + 1, worker=worker,
                  reason=f"attempt {c.attempt}: {rec['reason']}")
    return Finished(S.RETRYING, rec, Changes())


def interrupted(home: Home, sched: Scheduler | None, c: Claim, *, outcome: str, reason: str, worker: str,
                announce: bool = True, extra: dict | None = None) -> None:
    """An attempt that ended without a verdict (cancelled, superseded by a plan edit,
    interrupted by a stop or a failing disk): recorded, not counted against `retries`; the
    claim is released. Unless it was cancelled the task is ready again (announced when
    `announce`)."""
    g, t = c.goal, c.task
    release_resources(home, c, worker=worker, why=outcome)
    record_unfinished(home, g, t, c.attempt, outcome=outcome, reason=reason, worker=worker,
                      started=c.owner.get("since"), captures_from=home.claim_dir(g, t), extra=extra)
    claims.release(home, g, t)
    if outcome == S.CANCELLED:
        return
    if announce:
        ev.status(home, g, t, ev.READY, attempt=c.attempt + 1, worker=worker,
                  reason=f"attempt {c.attempt}: {reason}", usage=(extra or {}).get("usage"))
    if sched is not None:
        sched.requeue(t)


def budget_held(home: Home, g: str, t: str, *, reason: str, worker: str) -> None:
    """A ready task the budget pool keeps from starting (announced once per hold)."""
    ev.emit(home, g, ev.TASK_BLOCKED, task=t, reason=reason, blocked_by="budget", worker=worker)


def over_share(home: Home, c: Claim, *, reason: str, share: dict, worker: str) -> None:
    """A running task spent past its soft share of the budget (it is told, not stopped)."""
    ev.emit(home, c.goal, ev.TASK_BUDGET, task=c.task, attempt=c.attempt, reason=reason, share=share, worker=worker)


def budget_raised(home: Home, g: str, *, by: str, added: dict, pool: dict | None) -> None:
    """`dagrun budget GOAL --add`: engines pick the new pool up from budget.json."""
    ev.emit(home, g, ev.GOAL_BUDGET, worker=by, added=added, pool=pool)


def retry_due(home: Home, g: str, t: str, *, attempt: int, worker: str) -> None:
    """A retry's backoff ended: the task is ready again (announced by the worker that recorded
    the retry)."""
    ev.status(home, g, t, ev.READY, attempt=attempt, worker=worker, reason="retry backoff ended")


def stalled(home: Home, c: Claim, *, reason: str, worker: str) -> None:
    """No output and no heartbeat for stall_timeout: announced before the attempt is stopped
    (its ending is then a normal finish with outcome `stalled`)."""
    ev.emit(home, c.goal, ev.TASK_BLOCKED, task=c.task, reason=reason, attempt=c.attempt, worker=worker)


# ---------------------------------------------------------------------------------- conditions, gates
def skip(home: Home, plan: Plan, sched: Scheduler, c: Claim, *, worker: str) -> Changes:
    """The task's `when` is false (claim_task set c.skip): the `skipped` marker, the event,
    and what that decides for its dependents (their trigger rules)."""
    g, t = c.goal, c.task
    # the on_skipped hooks of this skip, published before its marker (the commit point); the
    # marker names the skip, so a replay runs them only for this one
    sid = os.urandom(8).hex()
    due = _prepare_skipped(home, plan, sched, t, S.SKIPPED, {"id": sid}, own={"reason": c.skip})
    try:
        commit_skipped(home, plan, c, worker=worker, skip_id=sid if due else None)
    except BaseException:
        _abandon(due)
        raise
    _status(home, plan, g, t, ev.SKIPPED, pending=due.pop(t, None), worker=worker, reason=c.skip)
    return _changes(home, g, sched.finish(t, S.SKIPPED), worker, plan, skipped_due=due)


def await_approval(home: Home, plan: Plan, sched: Scheduler, c: Claim, *, worker: str) -> dict:
    """An approval gate whose dependencies ended (claimed, prompt.md rendered): no agent.
    The event (and its on_approval_needed hooks) first, then the `awaiting` file, then the
    claim is dropped: a crash in between leaves a dead claim, broken and claimed again, and
    the event repeats -- at least once, never lost. A gate already awaiting keeps its file
    (its `since` and timeout)."""
    g, t = c.goal, c.task
    body = awaiting_of(home, g, t)
    if body is None:
        body = gate_body(plan, t, worker)
        _status(home, plan, g, t, ev.AWAITING, worker=worker, prompt=body["prompt"], timeout_at=body["timeout_at"])
        publish_awaiting(home, g, t, body)
    else:
        claims.release(home, g, t)
    sched.wait_approval(t)
    return body


def decide(home: Home, plan: Plan, sched: Scheduler, t: str, *, approve: bool, by: str, text: str = "",
           timed_out: bool = False) -> Finished:
    """`dagrun approve` (done; the note is its output) or `dagrun reject` / a timeout (failed
    for good, the usual cascade) of an awaiting gate: under its claim, through finish() --
    the marker records who decided and when; then the `awaiting` file goes."""
    # a note from argv may hold bytes that are not UTF-8 (surrogate escapes): the output keeps
    # them as given; the JSON records (marker, attempt record, event) get U+FFFD in their place
    shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    c = claim_gate(home, plan, t, by=by)
    now = time.time()
    gate = awaiting_of(home, plan.goal, t) or {}
    when = {"decided_by": by, "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "approval_since": gate.get("since")}
    if approve:
        note = text if not text or text.endswith("\n") else text + "\n"
        done = finish(home, plan, sched, c, ok=True, worker=by, ended=now, exit_code=None,
                      output_data=note.encode("utf-8", "surrogateescape"),
                      extra={"approved": True, **when, **({"note": shown} if text else {})},
                      fields={"approved": True, "decided_by": by})
    else:
        outcome = "approval_timeout" if timed_out else "rejected"
        done = finish(home, plan, sched, c, ok=False, worker=by, ended=now, outcome=outcome, reason=shown,
                      final=True, extra={"approved": False, **when},
                      fields={"decided_by": by})
    drop_awaiting(home, plan.goal, t)
    return done


def expire_approvals(home: Home, plan: Plan, sched: Scheduler, *, worker: str, now: float | None = None
                     ) -> tuple[list[str], float | None]:
    """Reject the gates whose timeout passed (any engine, `dagrun claim`, `approve` itself).
    Returns (the tasks rejected, the next deadline among those still awaiting)."""
    from .store import parse_ts
    now = time.time() if now is None else now
    gone, nxt = [], None
    for t in sched.awaiting():
        gate = awaiting_of(home, plan.goal, t) or {}
        at = parse_ts(gate.get("timeout_at"))
        if at is None:
            continue
        if at <= now:
            try:
                decide(home, plan, sched, t, approve=False, by=worker, timed_out=True,
                       text=f"approval timed out: nobody decided within {gate.get('timeout'):g}s")
                gone.append(t)
            except DagrunError:
                pass        # decided or held by somebody else right now: their event tells
        elif nxt is None or at < nxt:
            nxt = at
    return gone, nxt


# ---------------------------------------------------------------------------------- lost
def break_stale(home: Home, plan: Plan, t: str, *, worker: str, lease: float | None = None,
                reap=None) -> str | None:
    """Break t's claim if its holder is provably gone (lifecycle.break_if_stale: the orphan
    is reaped, the attempt recorded `lost`), then announce the task ready. Returns the reason,
    or None when the claim is live (or gone)."""
    res = break_if_stale(home, plan, t, worker=worker, lease=lease, reap=reap)
    if res is None:
        return None
    reason, attempt, ended = res
    if ended is None:
        ev.status(home, plan.goal, t, ev.READY, attempt=attempt + 1, worker=worker, reason=f"claim broken: {reason}")
    return reason


# ---------------------------------------------------------------------------------- control
def cancel(home: Home, sched: Scheduler, g: str, t: str, *, by: str, reason: str,
           repeat: bool = False, plan: Plan | None = None) -> tuple[bool, Changes]:
    """Cancel one task: the `cancelled` marker (unless it is done or cancelled already), the
    event, and the dependents it blocks. repeat: announce an existing cancel again (an earlier
    cancel died between its marker and its event). Returns (newly marked, changes)."""
    pending, blocked_due, skipped_due, cid = None, {}, {}, None
    if plan is not None and hk.any_hook(home, plan, "on_cancelled", "on_blocked", "on_skipped") \
            and marker_of(home, g, t) not in (S.DONE, S.CANCELLED):
        # the hooks this cancel triggers, published before its marker (the commit point); the
        # marker names the cancel, so a replay runs them only for this one
        cid = os.urandom(8).hex()
        pending = hk.prepare_cancel(home, plan, g, t, cid)
        blocked_due = _prepare_blocked(home, plan, sched, t, None, cid)
        skipped_due = _prepare_skipped(home, plan, sched, t, S.CANCELLED, {"id": cid})
        if pending is None and not blocked_due and not skipped_due:
            cid = None
    try:
        new = mark_cancelled(home, g, t, by=by, reason=reason, cancel_id=cid)
    except BaseException:
        new = False
        raise
    finally:
        if not new:                  # no commit (done already, an error): nothing is due
            _abandon(pending, blocked_due, skipped_due)
            pending, blocked_due, skipped_due = None, {}, {}
    if new:
        _status(home, plan, g, t, ev.CANCELLED, pending=pending, worker=by, reason=reason)
    elif repeat:
        ev.status(home, g, t, ev.CANCELLED, worker=by, reason=reason, repeated=True)
    return new, _changes(home, g, sched.finish(t, S.CANCELLED) or [], by, plan, blocked_due, skipped_due)


def stop_goal(home: Home, plan: Plan, sched: Scheduler, root: str, worker: str) -> Changes:
    """on_failure=stop: everything not started yet is cancelled, naming the failed task."""
    out = Changes()
    reason = f"goal stopped: {root} failed (on_failure=stop)"
    for tid in list(sched.not_started()):
        new, ch = cancel(home, sched, plan.goal, tid, by=worker, reason=reason, plan=plan)
        if new:
            out.cancelled.append(tid)
        out.extend(ch)
    return out


def reset(home: Home, g: str, t: str, *, by: str, reason: str, **fields) -> None:
    """The task's marker was taken away (retry) or its folder archived (forced re-run): it
    is pending again; engines rebuild the goal from the files on this line."""
    ev.status(home, g, t, ev.RESET, worker=by, reason=reason, **fields)


def plan_replaced(home: Home, g: str, *, by: str, **fields) -> None:
    ev.emit(home, g, ev.PLAN_REPLACED, worker=by, **fields)


# ---------------------------------------------------------------------------------- the goal
def end_goal_if_finished(home: Home, plan: Plan, sched: Scheduler, worker: str, facts: dict | None = None,
                         tally=None) -> dict | None:
    """When nothing can run any more, publish summary.json exactly once (link(2) is
    exclusive) and let the winner announce agent.goal.finished. facts: the goal's task facts
    the caller has just read; tally: the part of the event log it has counted
    (summary.goal_run)."""
    if not sched.is_finished():
        return None
    if os.path.exists(home.summary_path(plan.goal)):
        announce_if_lost(home, plan.goal, worker)   # its writer may have died before announcing it
        return None     # already written: the analysis reads every task's files
    from .summary import build_summary
    ev.flush()  # the summary reads the whole log: this turn's held lines too
    try:        # taken first: summary.ended() reads only what was appended after it
        at = os.stat(home.events_path(plan.goal)).st_size
    except OSError:
        at = None
    summary = build_summary(home, plan, sched, facts=facts, tally=tally)
    if at is not None:
        summary["events_size"] = at
    me = claims.new_owner(worker, 0, kind="finisher")
    summary["finisher"] = {k: me[k] for k in ("worker", "host", "boot_id", "pid", "pid_start", "nonce")}
    pending = hk.prepare_goal(home, plan, me["nonce"])     # on_goal_finished, before the commit point
    try:
        won = fsio.write_atomic(home.summary_path(plan.goal), dumps(summary), exclusive=True)
    except OSError as e:
        hk.abandon(pending)
        raise os_error("write", home.summary_path(plan.goal), e) from None
    if not won:
        hk.abandon(pending)
    if won:
        _emit(home, plan, plan.goal, ev.GOAL_FINISHED, pending=pending, worker=worker, outcome=summary["outcome"],
              counts=summary["counts"], failed_roots=summary["failed_roots"], finish_id=me["nonce"])
        integrate_if_asked(home, plan, summary["outcome"], worker)
    else:
        announce_if_lost(home, plan.goal, worker)
    return summary


def integrate_if_asked(home: Home, plan: Plan, outcome: str, worker: str) -> None:
    """workspace.integrate: true -- the finisher merges the task branches once the goal ended
    with every task done. A conflict or git error is an event, not a failure of the goal
    (`dagrun integrate` reports the same again)."""
    if not plan.workspace or not plan.workspace.get("integrate") or outcome != S.DONE:
        return
    from . import workspace as wsp  # (here: a plan without a code workspace never loads git's side)
    try:
        r = wsp.integrate(home, plan)
        ev.emit(home, plan.goal, ev.GOAL_INTEGRATED, worker=worker, branch=r.branch, head=r.head, merged=r.merged)
    except DagrunError as e:
        ev.emit(home, plan.goal, ev.GOAL_INTEGRATED, worker=worker, error=str(e))


def announce_if_lost(home: Home, g: str, worker: str) -> bool:
    """The process that published summary.json died before appending agent.goal.finished
    (found by the crash-at-every-step tests): append it for it, once. The event carries the
    summary's finish_id, so a look at the end of events.jsonl tells whether it was written;
    a finisher that is still alive (between its two steps) is left to do it itself."""
    s = loads(fsio.read_bytes(home.summary_path(g)))
    fin = (s or {}).get("finisher") or {}
    fid = fin.get("nonce")
    path = home.events_path(g)
    if not fid or ev.mentions(path, fid, tail=65536):
        return False
    if fin.get("host") == HOST and fin.get("boot_id") == BOOT_ID:
        if is_alive(HOST, BOOT_ID, as_int(fin.get("pid")), fin.get("pid_start") or "?"):
            return False              # alive: it appends the event itself in a moment
    else:
        try:
            if time.time() - os.stat(home.summary_path(g)).st_mtime < 60.0:
                return False          # another host: give it a minute
        except OSError:
            return False
    from filelock import FileLock
    with FileLock(os.path.join(home.goal_dir(g), ".break.lock")):
        if ev.mentions(path, fid):
            return False
        # no hooks here: the dead finisher published their pending record before summary.json,
        # and the replay of that record runs them (once)
        _emit(home, None, g, ev.GOAL_FINISHED, hooks=False, worker=worker, outcome=s.get("outcome"),
              counts=s.get("counts"), failed_roots=s.get("failed_roots"), finish_id=fid, recovered=True)
        if s.get("outcome") == S.DONE:          # the dead finisher's automatic integration too
            try:
                integrate_if_asked(home, home.load_plan(g), S.DONE, worker)
            except DagrunError:
                pass                            # an unreadable plan: `dagrun integrate` says why
    return True
