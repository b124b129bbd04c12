"""The engine loop: files -> scheduler -> claim -> runner -> commit -> event.

One engine serves one goal (`dagrun run`) or every goal under the home (`dagrun worker`).
It sleeps in a single select() on: the watcher's doorbell, one pidfd per running agent, and
the nearest timer (timeouts, backoffs, heartbeats, rescans). Nothing polls in a busy loop.

Hot path (per state change, no rescan): an agent exits -> its pidfd wakes us -> commit its
files -> scheduler.finish() hands back exactly the tasks it unlocked -> claim and start them.
Other processes' changes arrive as appended lines of events.jsonl (doorbell from watchdog or
the polling tick); each is checked against the marker files before the scheduler believes it.
The periodic rescan rebuilds each goal's scheduler from the files: the safety net for
anything a crash or a lost event could have left out.
"""
from __future__ import annotations

import heapq
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from . import claim as claims
from . import events as ev
from . import fsio
from .errors import DagrunError, ExitCode
from .executor import Exit, Launch, ProcessRunner, Runner, StartError
from .lifecycle import (Claim, break_if_stale, build_scheduler, claim_task, commit_done, commit_failure,
                        emit_changes, finish_goal_if_ended, marker_of, record_unfinished, stop_goal)
from .plan import Plan, Task
from .scheduler import RUNNING, Scheduler
from .store import Home
from .watcher import Doorbell, Watcher

HOUSEKEEPING = 1.0        # s: liveness of other workers' claims, stall and output checks
NO_PIDFD_POLL = 0.02      # s: child-exit polling where pidfd_open is missing


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Run:
    """An attempt this engine started."""
    goal: str
    task: Task
    claim: Claim
    handle: dict
    key: str
    out: str
    err: str
    t0: float                                 # monotonic start
    deadline: float | None = None             # monotonic timeout
    kill_at: float | None = None              # monotonic: KILL if still alive
    stop_outcome: str | None = None           # why we are stopping it
    stop_reason: str = ""
    progress_size: int = -1
    progress_at: float = 0.0
    hb_at: float = 0.0
    heartbeat_seen: float = 0.0


@dataclass
class GoalState:
    plan: Plan
    sched: Scheduler
    reader: ev.Reader
    stamp: tuple
    foreign: set = field(default_factory=set)
    next_rescan: float = 0.0
    rescan_cost: float = 0.0
    finished: bool = False
    stopped: bool = False


class Engine:
    def __init__(self, home: Home, *, worker: str | None = None, jobs: int = 4, goal: str | None = None,
                 until_idle: bool = False, poll: float | None = None, runner: Runner | None = None,
                 log: Callable[[str], None] | None = None, on_event: Callable[[dict], None] | None = None,
                 rescan_every: float = 10.0):
        self.home = home
        self.worker = worker or default_worker_name()
        self.jobs = max(1, jobs)
        self.only = goal
        self.until_idle = until_idle
        self.poll = poll
        self.runner = runner or ProcessRunner()
        self.log = log or (lambda m: None)
        self.on_event = on_event or (lambda e: None)
        self.rescan_every = rescan_every
        self.goals: dict[str, GoalState] = {}
        self.runs: dict[str, Run] = {}            # runner key -> Run
        self.by_task: dict[tuple[str, str], Run] = {}
        self.timers: list[tuple[float, int, str, str]] = []   # (mono, seq, goal, task) retry timers
        self._seq = 0
        self.bell = Doorbell()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.bell.r, selectors.EVENT_READ, None)
        self.stopping: int = 0                    # signal number once asked to stop
        self.signals = 0
        self._rr = 0
        self._next_house = 0.0
        self._next_poll = 0.0
        self.watcher: Watcher | None = None
        self.exit_code = ExitCode.OK

    # ================================================================== public
    def run(self) -> int:
        self.home.ensure()
        old = self._install_signals()
        try:
            self.watcher = Watcher(self.home.goals_dir, self.bell, poll=self.poll, log=self.log)
            self._discover(initial=True)
            while True:
                if self.stopping and not getattr(self, "_stop_begun", False):
                    self._begin_stop()
                if self.signals >= 2:       # asked twice: no more grace
                    for r in self.runs.values():
                        self.runner.kill(r.handle)
                self._loop_once()
                if self._should_exit():
                    break
                self._wait(self._next_wakeup())
        finally:
            self._restore_signals(old)
            if self.watcher:
                self.watcher.close()
            self.runner.close()
            self.bell.close()
            self.sel.close()
        if self.stopping:
            return ExitCode.INTERRUPTED if self.stopping == signal.SIGINT else 128 + self.stopping
        if self.only:
            gs = self.goals.get(self.only)
            if gs is not None and gs.sched.counts().get("done", 0) != len(gs.plan.tasks):
                return ExitCode.GOAL_FAILED
        return ExitCode.OK

    # ================================================================== loop
    def _loop_once(self) -> None:
        dirty, rescan = self.bell.take()
        now = time.monotonic()
        polling = self.watcher.polling if self.watcher else True
        if polling and now >= self._next_poll:
            self._next_poll = now + (self.watcher.poll or 1.0)
            dirty = set(self.goals)
            if not self.only:
                rescan = True
        if rescan and not self.only:
            self._discover()
        for g in list(dirty):
            gs = self.goals.get(g)
            if gs is not None:
                self._feed(gs)
        self._reap()
        now = time.monotonic()
        self._fire_timers(now)
        if now >= self._next_house:
            self._next_house = now + HOUSEKEEPING
            self._housekeeping(now)
        for gs in list(self.goals.values()):
            if now >= gs.next_rescan:
                self._resync(gs)
        if not self.stopping:
            self._dispatch()
        for gs in list(self.goals.values()):
            self._feed(gs)            # our own events, for the on_event view

    def _wait(self, timeout: float | None) -> None:
        try:
            for key, _ in self.sel.select(timeout):
                pass  # which fd does not matter: _loop_once looks at everything that can change
        except InterruptedError:
            pass

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        t = now + 3600.0
        for gs in self.goals.values():
            t = min(t, gs.next_rescan)
        if self.timers:
            t = min(t, self.timers[0][0])
        needs_house = any(gs.foreign for gs in self.goals.values())
        for r in self.runs.values():
            if r.deadline is not None:
                t = min(t, r.deadline)
            if r.kill_at is not None:
                t = min(t, r.kill_at)
            if r.task.stall_timeout or r.task.max_output or r.stop_outcome:
                needs_house = True
            t = min(t, r.hb_at)
        if needs_house or (self.until_idle and not self.runs):
            t = min(t, self._next_house)
        if self.watcher is None or self.watcher.polling:
            t = min(t, self._next_poll)
        if self.runs and not getattr(self.runner, "pidfd_ok", True):
            t = min(t, now + NO_PIDFD_POLL)
        return max(0.0, t - now)

    def _should_exit(self) -> bool:
        if self.stopping:
            return not self.runs
        if self.runs:
            return False
        if self.only:
            gs = self.goals.get(self.only)
            return gs is None or gs.sched.is_finished()
        if self.until_idle:
            if self.timers:
                return False
            for gs in self.goals.values():
                if self._dispatchable(gs):
                    return False
            return True
        return False

    # ================================================================== goals
    def _discover(self, initial: bool = False) -> None:
        names = [self.only] if self.only else self.home.goals()
        for g in names:
            if g in self.goals:
                continue
            try:
                plan = self.home.load_plan(g)
            except DagrunError as e:
                if self.only:
                    raise
                self.log(f"warning: skipping goal {g}: {e}")
                continue
            reader = ev.Reader(self.home.events_path(g))
            reader.offset = _size(reader.path)        # history is in the snapshot
            gs = GoalState(plan=plan, sched=None, reader=reader, stamp=self.home.plan_stamp(g))  # type: ignore[arg-type]
            self.goals[g] = gs
            if self.watcher:
                self.watcher.watch_goal(g)
            self._resync(gs)

    def _resync(self, gs: GoalState) -> None:
        """Rebuild the goal's scheduler from the files (start-up, plan change, periodic)."""
        g = gs.plan.goal
        t0 = time.monotonic()
        stamp = self.home.plan_stamp(g)
        if not stamp:
            self._drop_goal(g)
            return
        if stamp != gs.stamp:
            try:
                gs.plan = self.home.load_plan(g)
            except DagrunError as e:
                self.log(f"warning: cannot reload plan of {g}: {e}")
                return
            gs.stamp = stamp
            gs.finished = False
            gs.stopped = False
        plan = gs.plan
        sched, facts = build_scheduler(self.home, plan)
        gs.sched = sched
        gs.foreign = set()
        mine = {t for (gg, t) in self.by_task if gg == g}
        for t in mine:
            run = self.by_task[(g, t)]
            f = facts.get(t)
            if f is None or not f.owner or f.owner.get("nonce") != run.claim.nonce:
                if f is not None and f.state == "cancelled":
                    self._stop_run(run, "cancelled", "cancelled")
                else:
                    self._stop_run(run, "superseded", "the plan changed or the claim was taken away")
            else:
                sched.start(t)
        now_wall = time.time()
        for t, f in facts.items():
            if f.owner is not None or (f.state == "running"):
                if t in mine:
                    continue
                if f.state == "running":
                    gs.foreign.add(t)
                else:
                    self._sweep_leftover_claim(gs, t, f.owner)
            if sched.state_of(t) == "retrying":
                self._add_timer(time.monotonic() + max(0.0, f.retry_at - now_wall), g, t)
        gs.rescan_cost = time.monotonic() - t0
        gs.next_rescan = time.monotonic() + max(self.rescan_every, 50 * gs.rescan_cost)
        self._check_ended(gs)

    def _sweep_leftover_claim(self, gs: GoalState, t: str, owner: dict | None) -> None:
        """A claim beside a done/failed/cancelled marker: the holder died after committing."""
        if claims.judge(self.home, gs.plan.goal, t, owner, lease=gs.plan.lease) is not None:
            claims.break_claim(self.home, gs.plan.goal, t, owner.get("nonce") if owner else None,
                               lease=gs.plan.lease)

    def _drop_goal(self, g: str) -> None:
        for (gg, t), run in list(self.by_task.items()):
            if gg == g:
                self._stop_run(run, "superseded", "the goal was removed")
        if not any(gg == g for (gg, _t) in self.by_task):
            self.goals.pop(g, None)
            if self.watcher:
                self.watcher.unwatch_goal(g)

    def _check_ended(self, gs: GoalState) -> None:
        if gs.sched.is_finished() and not any(k[0] == gs.plan.goal for k in self.by_task):
            if not gs.finished:
                gs.finished = True
                finish_goal_if_ended(self.home, gs.plan, gs.sched, self.worker)
        else:
            gs.finished = False

    # ================================================================== the change feed
    def _feed(self, gs: GoalState) -> None:
        for e in gs.reader.read():
            if e.get("worker") != self.worker:
                self._apply(gs, e)
            self.on_event(e)
        if self.home.plan_stamp(gs.plan.goal) != gs.stamp:
            self._resync(gs)

    def _apply(self, gs: GoalState, e: dict) -> None:
        typ = e.get("type")
        if typ == ev.PLAN_REPLACED:
            self._resync(gs)
            return
        if typ != ev.TASK_STATUS:
            return
        t = e.get("task")
        g = gs.plan.goal
        if not isinstance(t, str) or not gs.plan.has(t):
            return
        st = e.get("status")
        sched = gs.sched
        if st == ev.RUNNING:
            if (g, t) not in self.by_task:
                sched.start(t)
                gs.foreign.add(t)
        elif st in (ev.DONE, ev.FAILED, ev.CANCELLED):
            m = marker_of(self.home, g, t)
            if m is None:
                return               # reset since; the rescan will tell
            run = self.by_task.get((g, t))
            if run is not None and m == "cancelled":
                self._stop_run(run, "cancelled", e.get("reason") or "cancelled")
            gs.foreign.discard(t)
            changes = sched.finish(t, m)
            if changes is None:
                self._resync(gs)
            elif m == "failed" and gs.plan.on_failure == "stop":
                gs.stopped = True
            self._check_ended(gs)
        elif st == ev.RETRYING:
            if (g, t) not in self.by_task:
                sched.retrying(t)
                gs.foreign.discard(t)
                when = float(e.get("retry_at") or 0.0)
                self._add_timer(time.monotonic() + max(0.0, when - time.time()), g, t)
        elif st == ev.READY:
            s = sched.state_of(t)
            if (g, t) in self.by_task:
                return
            if s == "retrying" or (s == "running" and not os.path.isdir(self.home.claim_dir(g, t))):
                gs.foreign.discard(t)
                sched.requeue(t)
        elif st == ev.RESET:
            self._resync(gs)

    # ================================================================== dispatch
    def _dispatchable(self, gs: GoalState) -> bool:
        if gs.stopped or gs.sched.peek() is None:
            return False
        mp = gs.plan.max_parallel
        return not (mp and gs.sched.n(RUNNING) >= mp)

    def _dispatch(self) -> None:
        goals = list(self.goals.values())
        if not goals:
            return
        while len(self.runs) < self.jobs:
            progressed = False
            for k in range(len(goals)):
                gs = goals[(self._rr + k) % len(goals)]
                if len(self.runs) >= self.jobs:
                    break
                if not self._dispatchable(gs):
                    continue
                t = gs.sched.take()
                if t is None:
                    continue
                progressed = True
                self._start(gs, t)
            self._rr += 1
            if not progressed:
                break

    def _start(self, gs: GoalState, t: str) -> None:
        plan, g = gs.plan, gs.plan.goal
        sched = gs.sched
        try:
            c = claim_task(self.home, plan, t, worker=self.worker, kind="engine", state_of=sched.state_of)
        except DagrunError as e:
            self.log(f"error: {e}")
            sched.requeue(t)
            self._add_timer(time.monotonic() + 1.0, g, t)   # retry the claim a bit later
            sched.retrying(t)
            return
        if c is None:
            m = marker_of(self.home, g, t)
            if m is not None:
                changes = sched.finish(t, m)
                if changes is None:
                    self._resync(gs)
            else:
                gs.foreign.add(t)          # somebody else holds it; sched says running
            return
        task = plan.task(t)
        out = self.home.attempt_path(g, t, c.attempt, "out")
        err = self.home.attempt_path(g, t, c.attempt, "err")
        env = dict(os.environ)
        env.update({
            "DAGRUN_HOME": self.home.root, "DAGRUN_GOAL": g, "DAGRUN_TASK": t,
            "DAGRUN_ATTEMPT": str(c.attempt), "DAGRUN_TASK_DIR": self.home.task_dir(g, t),
            "DAGRUN_PROMPT_FILE": self.home.prompt_path(g, t), "DAGRUN_OUTPUT_FILE": out,
            "DAGRUN_WORKER": self.worker,
        })
        launch = Launch(agent=task.agent, cwd=task.workdir, env=env, stdin_path=self.home.prompt_path(g, t),
                        stdout_path=out, stderr_path=err, run_id=c.nonce)
        now = time.monotonic()
        try:
            fsio._step(f"spawn {g}/{t}")
            handle = self.runner.start(launch)
        except StartError as e:
            rec = commit_failure(self.home, plan, c, outcome="failed", ended=time.time(), exit_code=None,
                                 reason=str(e))
            self._after_failure(gs, c, rec, duration=0.0)
            return
        c.owner["handle"] = handle
        try:
            claims.update_owner(self.home, g, t, c.owner)
        except OSError as e:
            self.log(f"warning: cannot record the agent's handle for {g}/{t}: {e.strerror}")
        key = self.runner.key(handle)
        run = Run(goal=g, task=task, claim=c, handle=handle, key=key, out=out, err=err, t0=now,
                  deadline=now + task.timeout if task.timeout else None, progress_at=now,
                  hb_at=now + plan.lease / 3)
        self.runs[key] = run
        self.by_task[(g, t)] = run
        for fd, k in self.runner.wait_fds().items():
            if k == key:
                self.sel.register(fd, selectors.EVENT_READ, key)
        ev.status(self.home, g, t, ev.RUNNING, attempt=c.attempt, worker=self.worker)

    # ================================================================== endings
    def _reap(self) -> None:
        for key, run in list(self.runs.items()):
            ex = self.runner.poll(run.handle)
            if ex is None:
                continue
            self._unregister(key)
            del self.runs[key]
            del self.by_task[(run.goal, run.task.id)]
            self._commit(run, ex)

    def _unregister(self, key: str) -> None:
        for fd, k in list(self.sel.get_map().items()):
            if k.data == key:
                self.sel.unregister(fd)

    def _commit(self, run: Run, ex: Exit) -> None:
        g, t, c = run.goal, run.task.id, run.claim
        gs = self.goals.get(g)
        ended = time.time()
        if not claims.holds(self.home, g, t, c.nonce) or gs is None or not gs.plan.has(t):
            return                   # taken away (plan edit, broken claim): not ours to commit
        plan = gs.plan
        if run.stop_outcome in ("cancelled", "superseded", "interrupted"):
            record_unfinished(self.home, g, t, c.attempt, outcome=run.stop_outcome, reason=run.stop_reason,
                              worker=self.worker, started=c.owner.get("since"))
            claims.release(self.home, g, t)
            if run.stop_outcome == "interrupted":
                ev.status(self.home, g, t, ev.READY, attempt=c.attempt + 1, worker=self.worker,
                          reason=f"attempt {c.attempt} interrupted")
                gs.sched.requeue(t)
            return
        if run.stop_outcome is None and ex.ok:
            try:
                body = commit_done(self.home, plan, c, ended=ended, output_from=run.out)
            except DagrunError as e:
                self.log(f"error: {e}")
                self._give_back(gs, c, str(e))
                return
            ev.status(self.home, g, t, ev.DONE, attempt=c.attempt, worker=self.worker,
                      duration=body["duration"], exit_code=0)
            changes = gs.sched.finish(t, "done")
            if changes is None:
                self._resync(gs)
            else:
                emit_changes(self.home, g, changes[1:], self.worker)
            self._check_ended(gs)
            return
        outcome = run.stop_outcome or "failed"
        reason = run.stop_reason or ex.describe()
        try:
            rec = commit_failure(self.home, plan, c, outcome=outcome, ended=ended, exit_code=ex.code,
                                 signal=ex.signal, reason=reason)
        except DagrunError as e:
            self.log(f"error: {e}")
            self._give_back(gs, c, str(e))
            return
        self._after_failure(gs, c, rec, duration=rec["duration"])

    def _give_back(self, gs: GoalState, c: Claim, why: str) -> None:
        """Committing failed (disk full...): leave no half state; the task runs again later."""
        try:
            claims.release(self.home, c.goal, c.task)
        except OSError:
            pass
        gs.sched.retrying(c.task)
        self._add_timer(time.monotonic() + 5.0, c.goal, c.task)

    def _after_failure(self, gs: GoalState, c: Claim, rec: dict, duration: float) -> None:
        g, t = c.goal, c.task
        if rec["final"]:
            ev.status(self.home, g, t, ev.FAILED, attempt=c.attempt, worker=self.worker, duration=duration,
                      exit_code=rec.get("exit_code"), reason=rec.get("reason"), outcome=rec["outcome"])
            changes = gs.sched.finish(t, "failed")
            if changes is None:
                self._resync(gs)
                return
            emit_changes(self.home, g, changes[1:], self.worker)
            if gs.plan.on_failure == "stop" and not gs.stopped:
                gs.stopped = True
                emit_changes(self.home, g, stop_goal(self.home, gs.plan, gs.sched, t, self.worker), self.worker)
            self._check_ended(gs)
        else:
            ev.status(self.home, g, t, ev.RETRYING, attempt=c.attempt, worker=self.worker, duration=duration,
                      exit_code=rec.get("exit_code"), reason=rec.get("reason"), outcome=rec["outcome"],
                      retry_at=rec["retry_at"])
            gs.sched.retrying(t)
            self._add_timer(time.monotonic() + max(0.0, rec["retry_at"] - time.time()), g, t)

    def _stop_run(self, run: Run, outcome: str, reason: str) -> None:
        if run.stop_outcome is not None:
            return
        run.stop_outcome = outcome
        run.stop_reason = reason
        self.runner.terminate(run.handle)
        run.kill_at = time.monotonic() + run.task.kill_grace
        run.deadline = None

    # ================================================================== timers
    def _add_timer(self, when: float, g: str, t: str) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (when, self._seq, g, t))

    def _fire_timers(self, now: float) -> None:
        while self.timers and self.timers[0][0] <= now:
            _, _, g, t = heapq.heappop(self.timers)
            gs = self.goals.get(g)
            if gs is not None and gs.plan.has(t) and gs.sched.state_of(t) == "retrying":
                gs.sched.requeue(t)
        for run in list(self.runs.values()):
            if run.deadline is not None and now >= run.deadline:
                self._stop_run(run, "timeout", f"timed out after {run.task.timeout:g}s")
            if run.kill_at is not None and now >= run.kill_at:
                self.runner.kill(run.handle)
                run.kill_at = None
            if now >= run.hb_at:
                gs = self.goals.get(run.goal)
                run.hb_at = now + (gs.plan.lease / 3 if gs else 20.0)
                try:
                    os.utime(self.home.owner_path(run.goal, run.task.id))   # lease for other hosts
                except OSError:
                    pass

    def _housekeeping(self, now: float) -> None:
        if self.watcher is not None and not self.watcher.healthy():
            self._next_poll = now
        for run in list(self.runs.values()):
            if run.stop_outcome:
                continue
            task = run.task
            if task.stall_timeout or task.max_output:
                size = _size(run.out) + _size(run.err)
                hb = _mtime(self.home.heartbeat_path(run.goal, task.id))
                if size != run.progress_size or hb > run.heartbeat_seen:
                    run.progress_size, run.heartbeat_seen, run.progress_at = size, hb, now
                if task.max_output and _size(run.out) > task.max_output:
                    self._stop_run(run, "output_limit", f"stdout exceeded max_output ({task.max_output} bytes)")
                elif task.stall_timeout and now - run.progress_at > task.stall_timeout:
                    reason = f"stalled: no output and no heartbeat for {task.stall_timeout:g}s"
                    ev.emit(self.home, run.goal, ev.TASK_BLOCKED, task=task.id, reason=reason,
                            attempt=run.claim.attempt, worker=self.worker)
                    self._stop_run(run, "stalled", reason)
        for gs in list(self.goals.values()):
            for t in list(gs.foreign):
                self._check_foreign(gs, t)

    def _check_foreign(self, gs: GoalState, t: str) -> None:
        g = gs.plan.goal
        if gs.sched.state_of(t) != "running" or (g, t) in self.by_task:
            gs.foreign.discard(t)
            return
        if not os.path.isdir(self.home.claim_dir(g, t)):
            m = marker_of(self.home, g, t)
            gs.foreign.discard(t)
            if m is not None:
                ch = gs.sched.finish(t, m)
                if ch is None:
                    self._resync(gs)
                self._check_ended(gs)
            else:
                gs.sched.requeue(t)
            return
        try:
            reason = break_if_stale(self.home, gs.plan, t, worker=self.worker, reap=self.runner.reap_orphan)
        except (OSError, DagrunError) as e:
            self.log(f"warning: cannot break the stale claim of {g}/{t}: {e}")
            return
        if reason is not None:
            self.log(f"recovered {g}/{t}: {reason}")
            gs.foreign.discard(t)
            m = marker_of(self.home, g, t)
            if m is not None:
                gs.sched.finish(t, m)
                self._check_ended(gs)
            else:
                gs.sched.requeue(t)

    # ================================================================== signals
    def _install_signals(self):
        def handler(signum, frame):
            self.signals += 1
            if not self.stopping:
                self.stopping = signum
            try:
                os.write(self.bell.w, b"s")
            except OSError:
                pass
        old = {}
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                old[s] = signal.signal(s, handler)
            except ValueError:      # not the main thread (tests)
                pass
        return old

    def _restore_signals(self, old) -> None:
        for s, h in old.items():
            signal.signal(s, h)

    def _begin_stop(self) -> None:
        self._stop_begun = True
        self.log(f"stopping: terminating {len(self.runs)} running agent(s)")
        for run in list(self.runs.values()):
            self._stop_run(run, "interrupted", f"worker {self.worker} was stopped")
            run.kill_at = min(run.kill_at or 0, time.monotonic() + min(run.task.kill_grace, 5.0))

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        self.stopping = signum
        try:
            os.write(self.bell.w, b"s")
        except OSError:
            pass


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0

