"""Reconciliation: how an engine learns of changes it did not make -- other workers, scripts
(`dagrun complete`), `cancel`, `retry`, plan edits -- and keeps its schedulers true to the
files. Start-up and periodic rescans rebuild a goal's scheduler from the files (_resync);
new lines of a goal's events.jsonl are checked against the markers before the scheduler
believes them (_feed/_apply); claims held by others are watched until they end or their
holder is provably gone (_check_foreign). A mixin of Engine: it shares the engine's goals,
runs and timers; the loop itself is in engine.py.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import bulk
from . import claim as claims
from .records import NEW, plain_methods
from . import events as ev
from . import fsio
from . import proc
from . import states as S
from . import transitions as tr
from .errors import DagrunError, FsError
from .history import read_history
from .lifecycle import initial_states, latest_attempt, marker_of, ranked_scheduler
from .plan import Plan
from .scheduler import FAILED as SCHED_FAILED, Scheduler
from .summary import EventTally, ended

FOREIGN_RETRY_GRACE = 1.0  # s: past another worker's retry_at before we requeue without its `ready`
RESCAN_FACTOR = 50     # a periodic rescan at most every RESCAN_FACTOR x its own cost (<= 2 % of the time)
FULL_FACTOR = 200      # a periodic full one at most every FULL_FACTOR x its cost (<= 0.5 %; _rescan)


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class GoalState:
    """An engine's view of one goal: its plan, scheduler, event reader and rescan times."""
    plan: Plan
    sched: Scheduler
    reader: ev.Reader
    stamp: tuple
    foreign: set = field(default_factory=set)
    next_rescan: float = 0.0
    finished: bool = False
    expand_error: bool = False   # a fan-out expansion failed with an error: retried at the next rescan
    stopped: bool = False     # on_failure=stop was acted on (stop_goal ran, here or in another
    #                           process): run it once. What may start is the scheduler's call.

    def __init__(self, plan, sched, reader, stamp, foreign=NEW, next_rescan=0.0, finished=False,
                 expand_error=False, stopped=False):
        self.plan, self.sched, self.reader, self.stamp = plan, sched, reader, stamp
        self.foreign = set() if foreign is NEW else foreign
        self.next_rescan, self.finished, self.expand_error, self.stopped = next_rescan, finished, expand_error, stopped
        self.tally = EventTally()     # (not a field) the lines _feed read, counted for the goal's summary
        self.next_full = 0.0          # (not a field) when the next periodic rescan is a full one (_rescan)
        self.light_cost = 0.0         # (not a field) seconds the last light rescan took
        self.fulls = 0                # (not a field) full rescans so far (_resync)

    __repr__, __eq__ = plain_methods("plan", "sched", "reader", "stamp", "foreign", "next_rescan", "finished",
                                     "expand_error", "stopped")


def _announcer(d: dict):
    """Who announces a retry's `ready`, as a `retrying` line or a failure record says it (the
    announcer argument of Reconciler._foreign_retry): False for a line that says nobody will,
    else the "announcer" field (None from an older dagrun)."""
    return False if d.get("announced") is False else d.get("announcer")


class Reconciler:
    """The engine's side that follows the files (see the module docstring)."""

    def _discover(self) -> None:
        ev.flush()          # our held lines first: a goal's reader starts at the log's end
        names = [self.only] if self.only else self.home.goals()
        if not self.only:
            for g in set(self.dormant) - set(names):      # removed (dagrun gc)
                del self.dormant[g]
                if self.watcher is not None:
                    self.watcher.unwatch_goal(g)
        for g in names:
            if g in self.goals:
                continue
            if not self.only and self._still_dormant(g):
                continue
            # the stamp before the read: a plan replaced meanwhile shows as a change, never the
            # other way round (so does a plan the caller loaded after taking the same stamp)
            stamp = self.home.plan_stamp(g)
            pre = self._loaded.pop(g, None) if getattr(self, "_loaded", None) else None
            if pre is not None and pre[0] == stamp and stamp:
                plan = pre[1]        # the caller's load (`dagrun run`), after this same stamp
            else:
                try:
                    plan = self.home.load_plan(g)
                except DagrunError as e:
                    if self.only:
                        raise
                    self.log(f"warning: skipping goal {g}: {e}")
                    continue
            fsio.sweep_temps(self.home.goal_dir(g))   # e.g. .summary.json.<pid>.tmp of a killed finisher
            reader = ev.Reader(self.home.events_path(g))
            reader.offset = fsio.size(reader.path)        # the past is in the snapshot
            gs = GoalState(plan=plan, sched=None, reader=reader, stamp=stamp)  # type: ignore[arg-type]
            self.goals[g] = gs
            if self.watcher is not None:
                self.watcher.watch_goal(g)
            self._resync(gs)

    # -- dormant goals: a goal that ended (and settled) is not loaded, scheduled nor rescanned:
    # a worker that served a thousand goals starts and idles as fast as a fresh one. It stays
    # watched, and any change to its events.jsonl (a retry, a plan edit) wakes it up.
    def _settled(self, g: str) -> bool:
        """Ended with nothing left for an engine to do: summary.json valid (summary.ended),
        its agent.goal.finished appended, no hook left due."""
        s = ended(self.home, g)
        if s is None:
            return False
        try:
            with open(self.home.events_path(g), "rb") as f:
                f.seek(s["events_size"])
                if ev.GOAL_FINISHED.encode() not in f.read():
                    return False            # its finisher died before announcing it
            due = os.listdir(self.home.hooks_due_dir(g))
        except FileNotFoundError:
            due = []
        except OSError:
            return False
        return not any(n != "last_failure.json" for n in due)

    def _still_dormant(self, g: str) -> bool:
        """True: g is (or now becomes) dormant. Re-checked only when its events.jsonl grew."""
        size = fsio.size(self.home.events_path(g))
        if self.dormant.get(g) == size:
            return True
        if not self._settled(g):
            self.dormant.pop(g, None)
            return False
        self.dormant[g] = size
        if self.watcher is not None:
            self.watcher.watch_goal(g)
        return True

    def _maybe_sleep(self, gs: GoalState) -> None:
        """A goal that ended while we served it goes dormant (dropped from self.goals)."""
        g = gs.plan.goal
        if self.only or not gs.finished or gs.foreign or any(gg == g for (gg, _t) in self.by_task):
            return
        if self._still_dormant(g):
            self._forget_goal(g)

    def _rescan(self, gs: GoalState) -> None:
        """The periodic safety net: what a missed inotify event (another process's line, a
        marker written by a script, a claim whose holder died) or a change made without an
        event line left unseen. Light unless a full rescan (_resync) is due: the goal's unread
        event lines first (_feed: a reset, a plan replaced or an unexplained outcome rebuild as
        always), then the folders of the tasks that no marker ended in the scheduler -- one
        listdir of tasks/ and a task_facts per such folder -- checked against the scheduler
        (Scheduler.to_read/agrees); any difference, or a task of ours not among them, rebuilds
        from the files (_resync). What only the full rescan looks at is the folders of tasks
        ended by a marker: a marker removed by hand without `dagrun retry`, a claim or temp
        file left beside a marker by a process that died (housekeeping: an ended task waits
        for nothing). It runs at start-up, on any change above, and at most every FULL_FACTOR
        x its cost (ARCHITECTURE.md, "Safety net").
        Was: a full rescan every max(--rescan, 50 x its cost): 1.6 s once in the middle of a
        100 000-task run (docs/performance.md, fourteenth session)."""
        t0 = time.monotonic()
        if gs.sched is None or t0 >= gs.next_full:
            self._resync(gs)
            return
        g = gs.plan.goal
        fulls = gs.fulls
        self._feed(gs)
        if gs.fulls != fulls or self.goals.get(g) is not gs:
            return                    # _feed rebuilt it, or dropped the goal
        sched = gs.sched
        present = self.home.task_folders(g)
        claims.sweep_aside(self.home, g, present)     # a breaker or releaser died half-way
        read = sched.to_read(present)
        if read is None:
            self._resync(gs)
            return
        with bulk.paused():
            facts = {t: self.home.task_facts(g, t) for t in read}
        if not sched.agrees(read, initial_states(facts, time.time())) or \
                any(gg == g and t not in facts for (gg, t) in self.by_task) or \
                (gs.plan.on_failure == "stop" and sched.n(SCHED_FAILED)):
            self._resync(gs)          # (a stopped goal: _settle's stop check needs every marker)
            return
        self._settle(gs, facts, t0, light=True)

    def _resync(self, gs: GoalState) -> None:
        """Rebuild the goal's scheduler from the files (start-up, plan change, periodic)."""
        g = gs.plan.goal
        t0 = time.monotonic()
        stamp = self.home.plan_stamp(g)
        if not stamp:
            self._drop_goal(g)
            return
        like = gs.sched         # its graph serves again if the plan is the same (Scheduler.again)
        if stamp != gs.stamp:
            try:
                gs.plan = self.home.load_plan(g)
            except DagrunError as e:
                self.log(f"warning: cannot reload the plan of {g}: {e}")
                return
            gs.stamp = stamp
            gs.finished = gs.stopped = False
            like = None
        plan = gs.plan
        present = self.home.task_folders(g)   # one listing: the sweep's and the facts'
        claims.sweep_aside(self.home, g, present)
        if self.history is None:
            self.history = read_history(self.home, costs=False)
        sched, facts = ranked_scheduler(self.home, plan, self.history, clock=time.monotonic, like=like,
                                        present=present)
        if gs.sched is not None:
            sched.keep_waits(gs.sched)        # aging survives the rebuild
        gs.sched = sched
        gs.fulls += 1
        self._settle(gs, facts, t0, light=False)

    def _settle(self, gs: GoalState, facts: dict, t0: float, light: bool) -> None:
        """The rescan's findings acted on: our runs the files no longer back, other workers'
        claims to watch, leftovers to sweep, retries and approval gates to time, a stop to
        finish, hooks left due; then when the next one is due. facts: every task's (a full
        rescan), or those of the light one's folders (_rescan)."""
        g = gs.plan.goal
        plan, sched = gs.plan, gs.sched
        gs.expand_error = False           # a failed fan-out expansion is tried again
        gs.foreign = set()
        mine = {t for (gg, t) in self.by_task if gg == g}
        for t in mine:
            run = self.by_task[(g, t)]
            f = facts.get(t)
            if f is not None and f.state == S.CANCELLED:
                self._stop_run(run, S.CANCELLED, S.CANCELLED)
            elif f is None or plan.task(t).definition_digest() != run.definition or \
                    (not run.spawning and not claims.holds(self.home, g, t, run.claim.nonce, run.claim.held)):
                # (a run still being spawned has no owner.json yet: Engine._spawned checks
                # that its claim folder is still the one it made)
                self._stop_run(run, "superseded", "the plan changed or the claim was taken away")
            if f is not None:
                # running until its process is reaped, even when being stopped: a second
                # attempt must not start beside the one still dying (_commit requeues it)
                sched.start(t)
        now_wall = time.time()
        for t, f in facts.items():
            if f.extra.get("temps"):
                tdir = self.home.task_dir(g, t)
                fsio.sweep_temps(tdir)
                fsio.sweep_temps(os.path.join(tdir, "attempts"))
            if t in mine:
                continue
            if f.state == S.RUNNING:
                gs.foreign.add(t)
            elif f.owner is not None or f.claim_mtime:
                self._sweep_leftover_claim(gs, t, f.owner)
            if f.extra.get("claim_leftovers") and f.state in S.MARKERS:
                # a claim renamed away beside a marker, its remover dead before the rmtree
                # (a crash in _sweep_leftover_claim, or in a release): nobody claims the
                # task again to sweep it (claim_task), so the rescan does
                claims.sweep_leftovers(self.home, g, t, f.extra["claim_leftovers"])
            if sched.state_of(t) == S.RETRYING:
                # a retry this worker recorded is announced by whichever of its timers fires
                # first; another's waits a grace longer for that announcement (one `ready` line)
                # -- unless nobody will make it (_foreign_retry)
                rec = f.record or {}
                if rec.get("worker") == self.worker:
                    self._add_timer(time.monotonic() + max(0.0, f.retry_at - now_wall), g, t, announce=f.attempt + 1)
                else:
                    self._foreign_retry(g, t, f.retry_at, _announcer(rec))
        if sched.awaiting():               # approval gates: reject those past their timeout, time the rest
            _gone, nxt = tr.expire_approvals(self.home, plan, sched, worker=self.worker)
            if _gone:
                self._touched.add(g)
            if nxt is not None:
                self._add_timer(time.monotonic() + max(0.0, nxt - time.time()) + 0.01, g, sched.awaiting()[0])
        if not light:         # (a light rescan of a goal with a failure under on_failure=stop is a full one)
            gs.stopped = plan.on_failure == "stop" and any(f.state == S.FAILED for f in facts.values())
        if gs.stopped and not light and any(True for _ in sched.not_started()):
            # a stop that was cut short (a crash inside stop_goal, or a failure committed by
            # another process): finish it, or the goal would wait for ever
            root = next(t for t, f in facts.items() if f.state == S.FAILED)
            tr.stop_goal(self.home, plan, sched, root, self.worker)
            self._touched.add(g)
        tr.replay_hooks(self.home, g, self.worker)    # hooks left due by a process that died
        now = time.monotonic()
        cost = now - t0
        if light:
            gs.light_cost = cost
        else:
            gs.next_full = now + max(self.rescan_every, FULL_FACTOR * cost)
        gs.next_rescan = now + max(self.rescan_every, RESCAN_FACTOR * (cost if light else gs.light_cost))
        self._check_ended(gs)

    def _sweep_leftover_claim(self, gs: GoalState, t: str, owner: dict | None) -> None:
        """A claim beside a done/failed/cancelled marker: its holder committed and died before
        removing it. Remove it now if the holder is gone (the marker proves the work ended)."""
        g = gs.plan.goal
        lease = self._judge_lease(gs.plan)
        if owner is None or claims.judge(self.home, g, t, owner, lease=lease) is not None:
            res = claims.break_claim(self.home, g, t, owner.get("nonce") if owner else None,
                                     lease=lease, grace=0.0)
            if res is not None:
                fsio.rmtree(res[2])

    def _forget_goal(self, g: str) -> None:
        """g leaves self.goals (dormant or removed)."""
        self.goals.pop(g, None)

    def _drop_goal(self, g: str) -> None:
        for (gg, _t), run in list(self.by_task.items()):
            if gg == g:
                self._stop_run(run, "superseded", "the goal was removed")
        if not any(gg == g for (gg, _t) in self.by_task):
            self._forget_goal(g)
            self.share.forget(g)
            if self.watcher is not None:
                self.watcher.unwatch_goal(g)

    def _stamp_held(self, g: str) -> bool:
        """Is g's plan.json known to be the one its scheduler was built from, for the rest of
        this turn (the engine: compared while it holds the goal's edit lock, which every writer
        of plan.json must have exclusive)? Then _feed need not stat it again."""
        return False

    def _feed(self, gs: GoalState) -> bool:
        """Apply the goal's new event lines. True when a line of another process was among them
        (it may have made work ready)."""
        resync = foreign = False
        r = gs.reader
        at = r.offset
        evs = r.read()
        gs.tally.add(evs, at, r.offset)     # the summary's event counts, as the lines pass (tally_events)
        for e in evs:
            if e.get("type") == ev.TASK_STATUS and e.get("status") == ev.DONE and self.history is not None \
                    and isinstance(e.get("duration"), (int, float)) and not e.get("cached") and gs.plan.has(e.get("task")):
                self.history.add(e["task"], gs.plan.task(e["task"]).agent, float(e["duration"]), None)
            if e.get("worker") != self.worker:
                foreign = True
                resync = self._apply(gs, e) or resync
            self.on_event(e)
        if resync or (not self._stamp_held(gs.plan.goal) and self.home.plan_stamp(gs.plan.goal) != gs.stamp):
            self._resync(gs)
            foreign = True
        return foreign

    def _apply(self, gs: GoalState, e: dict) -> bool:
        """Update the scheduler from another process's event. True: rebuild from the files."""
        typ = e.get("type")
        if typ == ev.PLAN_REPLACED:
            return True
        if typ != ev.TASK_STATUS:
            return False
        t = e.get("task")
        g = gs.plan.goal
        if not isinstance(t, str) or not gs.plan.has(t):
            return False
        st = e.get("status")
        sched = gs.sched
        mine = (g, t) in self.by_task
        if st == ev.RUNNING:
            if not mine:
                sched.start(t)
                gs.foreign.add(t)
        elif st == ev.AWAITING:
            if not mine and marker_of(self.home, g, t) is None and os.path.exists(
                    os.path.join(self.home.task_dir(g, t), S.AWAITING_FILE)):
                gs.foreign.discard(t)
                sched.wait_approval(t)
                at = e.get("timeout_at")
                if at:
                    self._gate_timer(gs, t, {"timeout_at": at})
            elif not mine and sched.state_of(t) == S.READY:
                return True          # the gate's file is not there yet (being published): ask the files
        elif st in (ev.DONE, ev.FAILED, ev.CANCELLED, ev.SKIPPED):
            if st == ev.SKIPPED and e.get("derived"):
                return False         # our scheduler derives it from the root's own line
            m = marker_of(self.home, g, t)
            if m is None:
                return False             # reset since then; the files will tell
            if mine and m == S.CANCELLED:
                self._stop_run(self.by_task[(g, t)], S.CANCELLED, e.get("reason") or S.CANCELLED)
            elif mine:     # `dagrun complete/fail --force` over our claim: the agent's work is moot
                self._stop_run(self.by_task[(g, t)], "superseded", f"{m} with --force by {e.get('worker')}")
            gs.foreign.discard(t)
            changes = sched.finish(t, m)
            if changes is None:
                return True
            if m == S.FAILED and gs.plan.on_failure == "stop":
                gs.stopped = True
            self._check_ended(gs)
        elif st == ev.RETRYING:
            if not mine:
                sched.retrying(t)
                gs.foreign.discard(t)
                # the engine that recorded the retry announces `ready` when its backoff ends and
                # we requeue on that line; our own timer only matters if that engine is gone
                self._foreign_retry(g, t, float(e.get("retry_at") or 0.0), _announcer(e))
        elif st == ev.READY:
            s = sched.state_of(t)
            if not mine and (s == S.RETRYING or (s == S.RUNNING and not os.path.isdir(self.home.claim_dir(g, t)))):
                gs.foreign.discard(t)
                self._announcers.pop((g, t), None)
                sched.requeue(t)
        elif st == ev.RESET:
            return True
        return False

    def _foreign_retry(self, g: str, t: str, retry_at: float, announcer) -> None:
        """Time another process's retry of g/t. announcer: the engine process that will
        announce its `ready` (a dict: host, boot_id, pid, pid_start), False when nobody will
        (a script's `fail`), None when unknown (a line or record of an older dagrun). We
        requeue at retry_at when nobody will announce it or its announcer is gone by then
        (checked when the timer fires: _fire_timers); else a grace later, so that its one
        `ready` line comes first. Was: always the grace -- 1 s lost per retry left by a bash
        script, or by an engine stopped during the backoff (README.md #33, #34)."""
        when = time.monotonic() + max(0.0, retry_at - time.time())
        self._announcers.pop((g, t), None)
        if announcer is None:
            self._add_timer(when + FOREIGN_RETRY_GRACE, g, t)
            return
        if isinstance(announcer, dict):
            self._announcers[(g, t)] = announcer
        self._add_timer(when + 0.01, g, t)

    def _wait_for_announcer(self, g: str, t: str, now: float) -> bool:
        """A timer for another process's retry of g/t fired (see _foreign_retry): True to wait
        on -- its announcer may be alive (one of another host cannot be judged), so its
        `ready` line gets a grace (once: a second timer of the same retry, from a rescan,
        waits for the end of that grace too); False to requeue now."""
        who = self._announcers.get((g, t))
        if isinstance(who, float):          # in its grace already
            if now < who:
                return True
        elif isinstance(who, dict):
            alive = who.get("host") != proc.HOST
            if not alive:
                try:
                    alive = int(who.get("pid") or 0) > 0 and proc.why_dead(
                        who.get("boot_id"), int(who["pid"]), who.get("pid_start")) is None
                except (TypeError, ValueError):
                    alive = False
            if alive:
                self._announcers[(g, t)] = now + FOREIGN_RETRY_GRACE
                self._add_timer(now + FOREIGN_RETRY_GRACE, g, t)
                return True
        self._announcers.pop((g, t), None)
        return False

    def _check_foreign(self, gs: GoalState, t: str) -> None:
        """Is another worker's claim still alive? Break it if its holder is provably gone."""
        g = gs.plan.goal
        if gs.sched.state_of(t) != S.RUNNING or (g, t) in self.by_task:
            gs.foreign.discard(t)
            return
        if not os.path.isdir(self.home.claim_dir(g, t)):
            m = marker_of(self.home, g, t)
            gs.foreign.discard(t)
            if m is None:
                # released without a marker: given back, or failed with a retry left -- then its
                # backoff holds (we may not have read the `retrying` line yet)
                rec = latest_attempt(self.home, g, t)[1] or {}
                wait = float(rec.get("retry_at") or 0.0) - time.time() if not rec.get("final") else 0.0
                if wait > 0:
                    gs.sched.retrying(t)
                    self._foreign_retry(g, t, float(rec["retry_at"]), _announcer(rec))
                else:
                    gs.sched.requeue(t)
            elif gs.sched.finish(t, m) is None:
                self._resync(gs)
            else:
                self._check_ended(gs)
            return
        try:
            if self._reattach(gs, t):        # its attempt still runs on a cluster: follow it
                gs.foreign.discard(t)
                return
            reason = tr.break_stale(self.home, gs.plan, t, worker=self.worker, reap=self._reap_orphan,
                                    lease=self._judge_lease(gs.plan))
        except (OSError, FsError) as e:     # the disk is full or failing: nothing can progress
            self._fs_failed(e)
            return
        except DagrunError as e:
            self.log(f"warning: cannot break the stale claim of {g}/{t}: {e}")
            return
        if reason is not None:
            self.log(f"recovered {g}/{t}: {reason}")
            self._touched.add(g)
            gs.foreign.discard(t)
            m = marker_of(self.home, g, t)
            if m is None:
                gs.sched.requeue(t)
            elif gs.sched.finish(t, m) is not None:
                self._check_ended(gs)


