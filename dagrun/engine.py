"""The engine loop: files -> scheduler -> claim -> runner -> commit -> event.

One engine serves one goal (`dagrun run`) or every goal under the home (`dagrun worker`).
It sleeps in a single select() on: the inotify fd, a self-pipe for signals, one pidfd and two
output pipes per running agent, the nearest timer (timeouts, backoffs, heartbeats,
rescans), and -- while log lines wait for a reader of its stderr/stdout pipe (linesink) -- that
pipe's room. Nothing polls in a busy loop; an idle engine uses no CPU.

Hot path (per state change, no rescan): an agent exits -> its pidfd wakes us -> commit its
files -> scheduler.finish() hands back exactly the tasks it unlocked -> claim and start them.
Other processes' changes arrive as appended lines of events.jsonl (inotify, or the polling
tick); each is checked against the marker files before the scheduler believes it. The
periodic rescan rebuilds each goal's scheduler from the files: the safety net for anything a
crash or a lost event could have left out.
"""
from __future__ import annotations

import heapq
import os
import select
import signal
import time
from dataclasses import dataclass
from collections.abc import Callable

from . import budget as bud
from . import bulk
from . import cache
from . import claim as claims
from . import events as ev
from . import executor, fanout, fsio
from . import linesink
from . import hooks as hk
from . import resources as res
from . import states as S
from . import transitions as tr
from .agentcheck import exit_reason
from .errors import DagrunError, ExitCode, FsError, os_error
from .executor import Exit, Launch, ProcessRunner, Runner, StartError, Wakeup
from .agentio import agent_env, attempt_extra, failure_verdict
from .lifecycle import Claim, Stale, claim_task, marker_of, record_unfinished
from .plan import Plan, Task
from .presets import shell_command
from .records import plain_methods
from .history import History
from .reconcile import GoalState, Reconciler
from .scheduler import FairShare
from .store import CLAIM, Home, as_int, loads, parse_ts
from .watcher import Doorbell, Watcher
from .wsrules import CONFLICT, GIT_REDIRECT

HOUSEKEEPING = 1.0        # s: liveness of other workers' claims, stall checks
BUDGET_EVERY = 0.2        # s: a goal with a budget: the spend of running attempts is read this often
RESOURCE_EVERY = 0.25     # s: ready tasks wait for resource units: the pools are read again this often
IDLE_RETRY_HORIZON = 60.0  # s: --until-idle waits for a retry due this soon; a later one is the next run's
# s: `dagrun run` polls (watcher.EARLY_POLL) this long before it brings inotify up: a run that
# ends sooner never pays watchdog's import nor reads its own writes' events back (watcher.py)
WATCH_AFTER = 2.0


def default_worker_name() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class Run:
    """An attempt this engine started."""
    goal: str
    task: Task
    claim: Claim
    handle: dict
    key: str
    definition: str                           # the task's definition when it was claimed
    t0: float                                 # monotonic start
    deadline: float | None = None             # monotonic timeout
    kill_at: float | None = None              # monotonic: KILL if still alive
    stop_outcome: str | None = None           # why we are stopping it
    stop_reason: str = ""
    hb_at: float = 0.0
    heartbeat_seen: float = 0.0
    progress_at: float = 0.0
    node: str | None = None                   # a cluster runner: where it runs, once known
    spawning: bool = False                    # submitted to the runner's spawner, not yet running
    claim_ino: int = 0                        # its claim folder's inode (is the claim still ours?)
    cdir: str = ""                            # its claim folder's path (Home.claim_dir), built once

    def __init__(self, goal, task, claim, handle, key, definition, t0, deadline=None, kill_at=None,
                 stop_outcome=None, stop_reason="", hb_at=0.0, heartbeat_seen=0.0, progress_at=0.0, node=None,
                 spawning=False, claim_ino=0, cdir=""):
        self.goal = goal
        self.task = task
        self.claim = claim
        self.handle = handle
        self.key = key
        self.definition = definition
        self.t0 = t0
        self.deadline = deadline
        self.kill_at = kill_at
        self.stop_outcome = stop_outcome
        self.stop_reason = stop_reason
        self.hb_at = hb_at
        self.heartbeat_seen = heartbeat_seen
        self.progress_at = progress_at
        self.node = node
        self.spawning = spawning
        self.claim_ino = claim_ino
        self.cdir = cdir

    __repr__, __eq__ = plain_methods("goal", "task", "claim", "handle", "key", "definition", "t0", "deadline",
                                     "kill_at", "stop_outcome", "stop_reason", "hb_at", "heartbeat_seen",
                                     "progress_at", "node", "spawning", "claim_ino", "cdir")


class Engine(Reconciler):
    def __init__(self, home: Home, *, worker: str | None = None, jobs: int = 4, goal: str | None = None,
                 until_idle: bool = False, poll: float | None = None, runner: Runner | None = None,
                 log: Callable[[str], None] | None = None, on_event: Callable[[dict], None] | None = None,
                 rescan_every: float = 10.0, lease: float | None = None,
                 tick: Callable[["Engine"], None] | None = None, tick_every: float = 15.0,
                 use_cache: bool = True, plans: dict[str, tuple[tuple, Plan]] | None = None,
                 watch_after: float | None = None):
        """plans: {goal: (plan_stamp, Plan)} the caller has just loaded (the stamp taken
        before the load, as _discover takes it): used at start-up instead of parsing
        plan.json again if the file's stamp is still that one. watch_after: seconds of
        polling (watcher.EARLY_POLL) before inotify comes up (`dagrun run`: WATCH_AFTER);
        None: inotify from the start."""
        self.home = home
        self._loaded = dict(plans or {})
        self.worker = worker or default_worker_name()
        self.jobs = max(1, jobs)
        self.only = goal
        self.until_idle = until_idle
        self.poll = poll
        # tasks of one goal may name different runners (plan "runner"): a Mux starts each
        # attempt with its own; a runner passed in (tests, --runner) runs every task
        self.runner = runner or executor.Mux({"process": ProcessRunner()})
        self.log = log or (lambda m: None)
        self.on_event = on_event or (lambda e: None)
        self.rescan_every = rescan_every
        self.lease = lease                        # --lease: a floor for judging other hosts' claims
        self.tick = tick                          # periodic hook (the --metrics textfile), in the loop's thread
        self.tick_every = max(0.05, tick_every)
        self._next_tick = 0.0
        self.goals: dict[str, GoalState] = {}
        self.dormant: dict[str, int] = {}         # ended goals not loaded -> their events.jsonl size
        self.runs: dict[str, Run] = {}            # runner key -> Run
        self.by_task: dict[tuple[str, str], Run] = {}
        self.timers: list[tuple[float, int, str, str, int]] = []   # retry timers: (mono, seq, goal, task, announce)
        self._announcers: dict = {}   # (goal, task) -> the engine process to announce another's retry (_foreign_retry)
        self._seq = 0
        self.bell = Doorbell()
        self._ready: set[int] = set()
        self._carry: tuple[set[str], bool] = (set(), False)   # inotify news read before a sleep (_absorb_own)
        self._turn_locks: dict[str, int] = {}      # goal -> fd of its shared edit lock, held this turn
        self._stamp_seen: set[str] = set()         # goals whose plan.json stamp was compared under that lock
        self._touched: set[str] = set()          # goals we appended events to this turn
        self.stopping = 0                         # the signal that asked us to stop
        self.signals = 0
        self._stop_begun = False
        self._killed_all = False
        self.share = FairShare()                  # which goal the next start comes from
        self.history: History | None = None       # durations of done runs (ranking), read once
        self._next_house = 0.0
        self._next_poll = 0.0
        self.watcher: Watcher | None = None
        self.fs_error: FsError | None = None      # the disk said no: stop, exit 5
        self._base_env = dict(os.environ)         # the agents' environment, copied once (not per task)
        self._wake = Wakeup()                     # the runner's wake-up, as of _next_wakeup
        self._next_budget = 0.0
        self._held: dict[str, set[str]] = {}      # goal -> ready tasks its budget holds (announced)
        self.fresh: dict = {}      # goal -> the status snapshot derived when it ended (statuscache.Fresh)
        self._share_told: set[tuple[str, str, int]] = set()   # attempts told they are past their share
        self.use_cache = use_cache                # --no-cache: neither look up nor store results
        self.watch_after = watch_after
        self._watch_at = 0.0                      # monotonic: a late watcher's start_late() is due

    # ================================================================== public
    def run(self) -> int:
        self.home.ensure()
        self.home.sweep_unborn_goals()     # left by a submit that was killed half-way
        fsio.sweep_old_spares(self.home.root)  # .spare/ pools left by older versions (killed)
        old = self._install_signals()
        ev.hold()        # the loop's event lines go out once per turn (events.hold)
        hk.hold_turn()   # ... and the home's hooks folder is looked for once per turn
        res.hold_turn()  # ... and resources/limits.json read once per turn (claims)
        try:
            self.watcher = Watcher(self.home.goals_dir, poll=self.poll, log=self.log,
                                   later=self.watch_after is not None)
            self._watch_at = time.monotonic() + (self.watch_after or 0.0)
            self._discover()
            bulk.settled()     # the process's start is built (entry.main paused the collector)
            while True:
                if (self.stopping or self.fs_error) and not self._stop_begun:
                    self._begin_stop()
                if self.signals >= 2 and not self._killed_all:   # asked twice: no more grace
                    self._killed_all = True
                    for r in self.runs.values():
                        self.runner.kill(r.handle)
                try:
                    self._loop_once()
                except (OSError, FsError) as e:
                    self._fs_failed(e)
                finally:
                    self._unlock_turn()
                    hk.end_turn()
                    res.end_turn()
                try:
                    ev.flush()                     # before we sleep: what the turn appended
                except FsError as e:
                    self._fs_failed(e)
                if self.tick is not None and time.monotonic() >= self._next_tick:
                    self._run_tick()
                if self._should_exit():
                    break
                if self.watcher.pending and time.monotonic() >= self._watch_at:
                    self._watch_late()
                self._absorb_own()
                self._ready = self._wait(0.0 if self._carry[0] or self._carry[1] else self._next_wakeup())
            if self.tick is not None:
                self._run_tick()                   # the final state, for --until-idle
        finally:
            hk.release_turn()
            res.release_turn()
            try:
                ev.release()
            except FsError as e:
                self._fs_failed(e)
            self._restore_signals(old)
            if self.watcher:
                self.watcher.close()       # (its close(2) waits in a thread: started first)
            self.runner.close()
            self.bell.close()
        if self.fs_error is not None:
            raise self.fs_error
        if self.stopping:
            return ExitCode.INTERRUPTED if self.stopping == signal.SIGINT else 128 + self.stopping
        if self.only:
            gs = self.goals.get(self.only)
            if gs is not None and self._budget_stuck(gs):
                s = bud.spend(self.home, gs.plan)
                self.log(f"goal {self.only}: held at its budget (spent {bud.fmt(s.total, s.pool)} of {bud.fmt(s.pool)}); "
                         f"raise it with: dagrun budget {self.only} --add N")
            c = gs.sched.counts() if gs is not None else {}
            if gs is not None and c.get(S.DONE, 0) + c.get(S.SKIPPED, 0) != len(gs.plan.tasks):
                return ExitCode.GOAL_FAILED     # done or skipped (a false condition) is success
        return ExitCode.OK

    def _watch_late(self) -> None:
        """The run outlived its polling start (watch_after): inotify comes up, every goal is
        watched, then every goal is looked at once in the next turn (fed, its plan stamp
        compared; goals/ listed for a worker): what another process wrote before a watch
        existed raised no event, and the polls saw only up to their last look."""
        if self.watcher.start_late(list(self.goals) + list(self.dormant)):
            self._carry = (self._carry[0] | set(self.goals), True)

    def _run_tick(self) -> None:
        self._next_tick = time.monotonic() + self.tick_every
        try:
            self.tick(self)
        except (OSError, DagrunError) as e:
            self.log(f"warning: {e}")

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        self.stopping = signum
        self.bell.ring(None)

    # ================================================================== loop
    def _loop_once(self) -> None:
        ready, self._ready = self._ready, set()
        _, rescan = self.bell.take()
        (dirty, carried), self._carry = self._carry, (set(), False)    # left by _absorb_own
        rescan = rescan or carried
        w = self.watcher
        if w is not None and w.fd is not None and w.fd in ready:
            more, root_changed = w.read()
            dirty |= more
            rescan = rescan or root_changed
        now = time.monotonic()
        if w is None or w.polling:
            if now >= self._next_poll:
                self._next_poll = now + (w.poll if w is not None and w.poll else 1.0)
                dirty = {g for g, gs in self.goals.items()
                         if gs.reader.size_changed() or self.home.plan_stamp(g) != gs.stamp}
                rescan = True
        if not self.only and (rescan or any(g in self.dormant for g in dirty)):
            self._discover()                       # new goals, or a dormant goal changed: wake it up
        for g in dirty:
            gs = self.goals.get(g)
            if gs is not None:
                self._feed(gs)
        exits = getattr(self.runner, "exits", None)
        due = exits(ready) if exits is not None else None   # None: poll every run
        if ready:
            self.runner.service(ready)
        fresh = self._collect_spawns()
        self._reap(None if due is None else due | fresh)
        now = time.monotonic()
        self._fire_timers(now)
        if now >= self._next_house:
            self._next_house = now + HOUSEKEEPING
            self._housekeeping(now)
        for gs in list(self.goals.values()):
            if now >= gs.next_rescan:
                self._rescan(gs)
                self._maybe_sleep(gs)
        if now >= self._next_budget:
            self._next_budget = now + BUDGET_EVERY
            self._budget_tick()
        if not self.stopping and not self.fs_error:
            self._expand()
            self._dispatch()
        touched, self._touched = self._touched, set()
        for g in touched:                  # read back our own events: the on_event view
            gs = self.goals.get(g)
            if gs is not None and self._feed(gs):
                # another process's lines came with ours (their inotify event may be spent):
                # what they made ready waits for a dispatch, and this turn's has run -- the
                # next turn comes at once (was: a sleep until the rescan, 10 s, seen with a
                # `dagrun run` and a `dagrun worker` on one goal)
                self._carry = (self._carry[0] | {g}, self._carry[1])

    def _wait(self, timeout: float) -> set[int]:
        # A fresh poll set every time: epoll would keep a registration for an fd number that
        # was closed and reused by a new pipe (and miss its events); a poll set of a few
        # dozen fds costs microseconds.
        p = select.poll()
        p.register(self.bell.r, select.POLLIN)
        if self.watcher is not None and self.watcher.fd is not None:
            p.register(self.watcher.fd, select.POLLIN)
        for fd in self._wake.fds:
            p.register(fd, select.POLLIN)
        outs = {s.wfd: s for s in tuple(linesink.waiting()) if s.wfd is not None}   # (hooks' threads add)
        for fd in outs:                    # log lines wait for a reader of stderr/stdout (linesink)
            p.register(fd, select.POLLOUT)
        try:
            got = {fd for fd, _ in p.poll(timeout * 1000.0)}
        except InterruptedError:
            return set()
        if outs:
            for fd in got & outs.keys():
                outs[fd].pump()
            got -= outs.keys()
        return got

    def _absorb_own(self) -> None:
        """Before the loop sleeps: take the inotify events of the turn's own writes (its
        events lines, owner.json, markers change the goal's folder), which would otherwise
        wake it at once for a turn with nothing to do -- one such turn per task, run while the
        next task's agent starts, on the same CPUs. A goal whose events.jsonl holds no byte
        the engine has not read (its reader took our own lines from memory) and whose plan
        file is unchanged has nothing for _feed; any other goal (or goals/ itself) is carried
        into the next turn, which then comes at once. The fd is read before the files are
        looked at: whatever another process writes after the read rings it again."""
        w = self.watcher
        if w is None or w.fd is None or w.polling:
            return
        dirty, root_changed = w.read()
        try:
            keep = {g for g in dirty if g not in self.goals or self.goals[g].reader.size_changed()
                    or self.home.plan_stamp(g) != self.goals[g].stamp}
        except (OSError, DagrunError):     # cannot tell: the next turn looks at them all
            keep = dirty
        if keep or root_changed:
            self._carry = (self._carry[0] | keep, self._carry[1] or root_changed)

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        t = now + 3600.0
        for gs in self.goals.values():
            t = min(t, gs.next_rescan)
        if self.timers:
            t = min(t, self.timers[0][0])
        needs_house = any(gs.foreign for gs in self.goals.values())
        for r in self.runs.values():     # every turn, every run: comparisons, not min() calls
            if r.deadline is not None and r.deadline < t:
                t = r.deadline
            if r.kill_at is not None and r.kill_at < t:
                t = r.kill_at
            if r.task.stall_timeout or r.task.max_output:
                needs_house = True
            if r.hb_at < t:
                t = r.hb_at
        if needs_house:
            t = min(t, self._next_house)
        if any(gs.plan.budget and not gs.sched.is_finished() for gs in self.goals.values()):
            t = min(t, self._next_budget)
        if len(self.runs) < self.jobs and any(gs.sched.needs is not None and gs.sched.peek() is not None
                                              for gs in self.goals.values()):
            t = min(t, now + RESOURCE_EVERY)   # units given back by other processes: look again soon
        if self.watcher is None or self.watcher.polling:
            t = min(t, self._next_poll)
            if self.watcher is not None and self.watcher.pending:
                t = min(t, self._watch_at)     # inotify's late start (watch_after)
        if self.tick is not None:
            t = min(t, self._next_tick)
        self._wake = self.runner.wakeup()
        if self.runs and self._wake.timeout is not None:
            t = min(t, now + self._wake.timeout)
        return max(0.0, t - now)

    def _should_exit(self) -> bool:
        if self.stopping or self.fs_error:
            return not self.runs
        if self.runs:
            return False
        if self.only:
            gs = self.goals.get(self.only)
            if gs is not None and self._budget_stuck(gs):
                self._budget_tick()        # announce what it holds (the last stop may have just landed)
                return self._budget_stuck(gs)
            return gs is None or gs.sched.is_finished()
        if self.until_idle:
            # Nothing of ours runs. Stay only for what we could start: a ready task, or a
            # retry due soon. Tasks held by others, waiting on them, or retrying much later
            # are left to their holders and to the next run (cron starts one every minute).
            soon = time.monotonic() + IDLE_RETRY_HORIZON
            for when, _, g, t, _ in self.timers:
                gs = self.goals.get(g)
                if when <= soon and gs is not None and gs.plan.has(t) and gs.sched.state_of(t) == S.RETRYING:
                    return False
            return not any(gs.sched.may_start() for gs in self.goals.values())
        return False

    def _judge_lease(self, plan: Plan) -> float:
        """How long another host's claim may go without a heartbeat: the plan's lease, or the
        worker's --lease if that is longer (judging never gets more eager than either)."""
        return max(plan.lease, self.lease or 0.0)

    def _refresh_every(self, plan: Plan) -> float:
        """Our own claims' lease refresh: often enough for the shorter of the two."""
        return min(plan.lease, self.lease or plan.lease) / 3

    def _check_ended(self, gs: GoalState) -> None:
        if gs.sched.is_finished() and not any(k[0] == gs.plan.goal for k in self.by_task):
            if not gs.finished:
                gs.finished = True
                if gs.plan.goal == self.only and self.watcher is not None:
                    self.watcher.release()   # we exit after this end: its grace period overlaps it
                self._touched.add(gs.plan.goal)
                # claims renamed away by a process killed before it deleted them: the goal
                # ends clean (claim.sweep_aside; before the end's stamps, which list tasks/)
                claims.sweep_aside(self.home, gs.plan.goal)
                # the collector paused for the whole end: it builds ~4 containers per task
                # (the facts, their markers, the attempts, the status rows) that are all
                # garbage once it returns (freed by reference counting, no cycles); young and
                # full collections on the way walked them again and again -- 0.3-0.6 s CPU of
                # a 100 000-task goal's end (docs/performance.md, "2026-12-06 (13)")
                with bulk.paused():
                    pre = self._read_for_end(gs)
                    tr.end_goal_if_finished(self.home, gs.plan, gs.sched, self.worker,
                                            facts=pre.facts if pre is not None else None, tally=gs.tally)
                    self._snapshot_status(gs, pre)
                    del pre
        else:
            gs.finished = False

    # A 100 000-task layered goal (bench/scale.py) derived at its end: the worker's peak RSS
    # 369 MB (309-312 MB without), the first `status --json` after the run 0.39-0.41 s instead
    # of 2.9-3.2 s (docs/performance.md, twelfth session). Above it the first status derives it.
    SNAPSHOT_MAX_TASKS = 100_000

    def _read_for_end(self, gs: GoalState):
        """The goal ended: stamp its files and read its task facts once, for summary.json and
        the status snapshot both (status.read_for_end). None when no snapshot is derived
        (too many tasks) or the read failed: each then reads the files itself, as before."""
        if len(gs.plan.tasks) > self.SNAPSHOT_MAX_TASKS or os.path.exists(self.home.summary_path(gs.plan.goal)):
            return None      # (summary.json there: the goal had ended, nothing to build)
        ev.flush()           # the turn's lines first: the stamps take events.jsonl's size
        from .status import read_for_end
        try:
            return read_for_end(self.home, gs.plan.goal, gs.plan, gs.stamp, gs.sched)
        except (OSError, DagrunError):
            return None

    def _snapshot_status(self, gs: GoalState, pre=None) -> None:
        """The goal ended: derive its status snapshot now (statuscache.py), so the first
        `status` after the run does not read every task's files. Skipped above
        SNAPSHOT_MAX_TASKS: deriving it holds every task's marker and row in memory at once
        (a 100 000-task goal's adds ~60 MB to the worker's peak); the first status writes it
        then. Best effort: a snapshot is never needed."""
        if len(gs.plan.tasks) > self.SNAPSHOT_MAX_TASKS:
            return
        # the turn's held event lines (the goal's last `done`, goal.finished) go out first:
        # the snapshot stamps events.jsonl's size, and lines flushed after it made every
        # snapshot stale at once (`dagrun run`'s closing status derived it all again)
        ev.flush()
        from . import statuscache
        from .status import refresh_snapshot, snapshot_after_end
        try:
            if statuscache.load(self.home, gs.plan.goal) is not None:
                return           # a goal that had ended before this worker came: it is current
            if pre is not None:  # the facts read for summary.json (_read_for_end): not read again
                self.fresh[gs.plan.goal] = snapshot_after_end(self.home, gs.plan.goal, pre)
            else:
                self.fresh[gs.plan.goal] = refresh_snapshot(self.home, gs.plan.goal, gs.plan, gs.stamp)
        except (OSError, DagrunError) as e:
            self.log(f"warning: {gs.plan.goal}: status snapshot not written: {e}")

    # ================================================================== dispatch
    def _expand(self) -> None:
        """Fan-out: expand (or fail) the templates that became ready -- right after their
        `from` task's commit, and at start-up and every rescan for one a crash left behind
        (fanout.py). A goal whose expansion hit an error is tried again at its next rescan."""
        for gs in list(self.goals.values()):
            if not gs.plan.unexpanded or gs.expand_error or not gs.sched.expandable():
                continue
            self._unlock_turn()          # expanding takes the lock exclusive (on another fd)
            try:
                changed = fanout.expand_due(self.home, gs.plan, gs.sched, self.worker)
            except (OSError, FsError) as e:
                self._fs_failed(e)
                return
            except DagrunError as e:
                self.log(f"error: {gs.plan.goal}: fan-out: {e}")
                gs.expand_error = True
                continue
            if changed:
                self._touched.add(gs.plan.goal)
                self._resync(gs)

    def _dispatch(self) -> None:
        """Fill free slots: the goal comes from the fair share (scheduler.FairShare: fewest of
        our runs per weight, then least served), the task from that goal's scheduler."""
        if len(self.runs) < self.jobs:
            for gs in self.goals.values():   # resources: the units free now (others may have given some back)
                if gs.sched.needs is not None and gs.sched.peek() is not None:
                    res.apply(self.home, gs.plan, gs.sched)
        mine: dict[str, int] = {}
        for r in self.runs.values():
            mine[r.goal] = mine.get(r.goal, 0) + 1
        while len(self.runs) < self.jobs:
            nxt = self.share.take({g: (gs.sched, mine.get(g, 0), gs.plan.weight) for g, gs in self.goals.items()})
            if nxt is None:
                break
            g, t = nxt
            gs = self.goals[g]
            n = len(self.runs)
            self._start(gs, t)
            mine[g] = mine.get(g, 0) + (len(self.runs) - n)

    def _lock_turn(self, g: str) -> None:
        """The goal's edit lock, shared (claim.edit_lock), held until the turn ends
        (_unlock_turn): a turn's spawns, commits and claims take it once, not once each. A
        plan edit or forced retry (exclusive) waits for the end of the turn."""
        if g not in self._turn_locks:
            fd = claims.lock_shared(self.home, g)
            if fd is not None:
                self._turn_locks[g] = fd

    def _stamp_held(self, g: str) -> bool:
        # _commit_locked compared the stamp under the goal's shared edit lock, held until
        # _unlock_turn (which forgets it): the turn's read-back of our own lines (_feed) does
        # not stat plan.json a second time
        return g in self._stamp_seen

    def _unlock_turn(self) -> None:
        locks, self._turn_locks = self._turn_locks, {}
        self._stamp_seen.clear()
        for fd in locks.values():
            os.close(fd)                 # closing the only fd of the lock releases it

    def _start(self, gs: GoalState, t: str) -> None:
        # claim, render, spawn and owner.json under the goal's shared edit lock: a plan edit
        # or forced retry archives folders only in between (see claim.edit_lock). An agent
        # handed to the runner's spawner is forked while the loop goes on; _spawned() takes
        # the lock again and publishes owner.json only if the claim folder is still the one
        # we made (an archive in between took it away: the agent is stopped, as for any run
        # whose claim vanished).
        self._lock_turn(gs.plan.goal)
        self._start_locked(gs, t)

    def _start_locked(self, gs: GoalState, t: str) -> bool:
        """Claim, render and start task t; True when the start was handed to the runner's
        spawner (_spawned() goes on from there)."""
        plan, g, sched = gs.plan, gs.plan.goal, gs.sched
        try:
            c = claim_task(self.home, plan, t, worker=self.worker, kind="engine", state_of=sched.state_of,
                           publish_owner=False)
        except Stale:
            self._resync(gs)               # a dependency was archived under us: ask the files
            return False
        except res.Busy as e:              # another worker or script took the units first:
            sched.requeue(t)               # ready again, and that pool is full until we look again
            res.apply(self.home, plan, sched)
            sched.free[e.pool] = 0
            return False
        except DagrunError as e:
            sched.retrying(t)
            self._add_timer(time.monotonic() + 5.0, g, t)    # try this claim again later
            if isinstance(e, FsError):
                self._fs_failed(e)
            else:
                self.log(f"error: {e}")
            return False
        if c is None:
            m = marker_of(self.home, g, t)
            if m is not None:
                if sched.finish(t, m) is None:
                    self._resync(gs)
            else:
                gs.foreign.add(t)          # somebody else holds it; the scheduler says running
            return False
        if c.conflict is not None:         # code workspace: its prerequisites do not merge
            self._finish(gs, c, ok=False, outcome=CONFLICT, reason=c.conflict, final=True)
            return False
        task = plan.task(t)
        if c.skip is not None or task.approval is not None:    # a false `when`; an approval gate
            self._gate(gs, c)
            return False
        if task.fanout is not None:        # an expanded template: the join of its instances, no agent
            try:
                data = fanout.join_output(self.home, plan, t)
            except (OSError, DagrunError) as e:
                self._give_back(gs, c, f"fan-out join: {e}")
                self.log(f"error: {g}/{t}: {e}")
                return False
            self._finish(gs, c, ok=True, output_data=data, fields={"instances": task.fanout},
                         extra={"instances": task.fanout})
            return False
        if task.cache and self.use_cache and self._serve_cached(gs, c, task):    # the result cache
            return False
        tdir, cdir, prompt, output = self.home.task_paths(g, t)     # (one task_dir, not five)
        env = {**self._base_env,
               "DAGRUN_HOME": self.home.root, "DAGRUN_GOAL": g, "DAGRUN_TASK": t,
               "DAGRUN_ATTEMPT": str(c.attempt), "DAGRUN_TASK_DIR": tdir,
               "DAGRUN_PROMPT_FILE": prompt, "DAGRUN_OUTPUT_FILE": output, "DAGRUN_WORKER": self.worker,
               **agent_env(cdir)}                  # agents: DAGRUN_USAGE_FILE, _RAW_, _CHECK_, _HEARTBEAT_FILE
        if plan.budget:                            # written when the task is past its share of the budget
            env["DAGRUN_BUDGET_FILE"] = os.path.join(cdir, bud.FILE)
        agent = shell_command(task.agent, task.check, task.check_timeout)   # agents: presets and checks
        cwd = task.workdir
        if c.workspace is not None:        # code workspace: run in the task's worktree
            cwd = c.workspace.cwd
            env.update(c.workspace.env())
            for k in GIT_REDIRECT:
                env.pop(k, None)
        launch = Launch(agent=agent, cwd=cwd, env=env, stdin_path=prompt,
                        stdout_path=cdir + "/stdout", stderr_path=cdir + "/stderr",
                        run_id=c.owner["run_id"], max_output=task.max_output,
                        runner=executor.PLAN_RUNNERS.get(task.runner, task.runner), spec=_spec(task, g))
        now = time.monotonic()
        run = Run(goal=g, task=task, claim=c, handle={}, key="", definition=task.definition_digest(), t0=now,
                  progress_at=now, deadline=now + task.timeout if task.timeout else None,
                  hb_at=now + self._refresh_every(plan), cdir=cdir)
        submit = getattr(self.runner, "submit", None)
        try:
            step = f"spawn {g}/{t}"
            fsio._step(step)
            if submit is not None:     # (the claim's listing gave its number: no stat)
                run.claim_ino = c.ino or os.stat(cdir).st_ino
            handle = submit(launch) if submit is not None else None
            if handle is None:
                handle = self.runner.start(launch)
            else:                  # forked by the runner's thread; _spawned() goes on from here
                run.spawning = True
            fsio._done_step(step)
        except StartError as e:
            claims.update_owner(self.home, g, t, c.owner)
            self._finish(gs, c, ok=False, reason=str(e))
            return False
        run.handle, run.key, run.node = handle, self.runner.key(handle), handle.get("node")
        self.runs[run.key] = run
        self.by_task[(g, t)] = run
        if run.spawning:
            return True
        self._running(gs, run)
        return False

    def _collect_spawns(self) -> set[str]:
        """Agents the runner's spawner has forked since the last turn: on with their start.
        Returns their keys: their pidfds were not in this turn's poll(2), so _reap polls
        them now (an agent that exits at once is committed in this turn, not the next)."""
        spawned = getattr(self.runner, "spawned", None)
        if spawned is None:
            return set()
        fresh: set[str] = set()
        for handle, err in spawned():
            run = next((r for r in self.runs.values() if r.handle is handle), None)
            if run is not None:
                fresh.add(run.key)
                self._spawned(run, err)
        return fresh

    def _spawned(self, run: Run, err: StartError | None) -> None:
        run.spawning = False
        g, t = run.goal, run.task.id
        gs = self.goals.get(g)
        try:
            self._lock_turn(g)
        except (OSError, FsError) as e:      # the disk fails: the agent runs, unrecorded
            if err is None:
                self._abandon(gs, run, e, f"could not lock the goal: {e}", e)
            else:
                self._fs_failed(e)
            return
        try:
            ours = gs is not None and gs.plan.has(t) and self._claim_still(run)
            if not ours:
                claims.born(self.home, g, t)   # not ours any more: its birth lock goes too
            if err is not None or not ours:
                if err is None:          # archived or broken meanwhile: stop it, the commit
                    self._stop_run(run, "superseded", "its claim was taken away while it started")
                    return               # finds the claim gone and asks the files
                del self.runs[run.key]
                if self.by_task.get((g, t)) is run:
                    del self.by_task[(g, t)]
                if not ours:
                    if gs is not None:
                        self._resync(gs)
                    return
                claims.update_owner(self.home, g, t, run.claim.owner)
                self._finish(gs, run.claim, ok=False, reason=str(err))
                return
            self._running(gs, run)
        except (OSError, FsError) as e:
            self._fs_failed(e)
        except DagrunError as e:
            self.log(f"error: {e}")

    def _claim_still(self, run: Run) -> bool:
        """Is the claim folder the one this attempt made (not archived, broken, re-made)?
        claim_ino came from claim_task's listing (getdents' d_ino): where stat's number is
        another (a file system whose d_ino is not st_ino, such as some overlayfs setups) the
        listing is asked again, so a claim is never taken for another one by that alone."""
        try:
            if os.stat(run.cdir).st_ino == run.claim_ino:
                return True
            return claims.listing(os.path.dirname(run.cdir), CLAIM)[1] == run.claim_ino
        except OSError:
            return False

    def _running(self, gs: GoalState, run: Run) -> None:
        """The agent runs: owner.json (with the runner's handle) and the `running` event."""
        g, t, c, handle = run.goal, run.task.id, run.claim, run.handle
        c.owner["handle"] = handle
        try:
            c.held = claims.update_owner(self.home, g, t, c.owner, hold=True)   # open until the commit
        except OSError as e:
            self._abandon(gs, run, e, f"could not publish owner.json: {e.strerror or e}",
                          os_error("publish", self.home.owner_path(g, t), e))
            return
        run.node = run.node or handle.get("node")
        tr.started(self.home, c, worker=self.worker, **_remote(handle))
        self._touched.add(g)

    def _abandon(self, gs: GoalState | None, run: Run, e: Exception, reason: str, report: Exception) -> None:
        """The agent started but its owner.json cannot be published (the disk fails): stop it,
        record the attempt `interrupted` (its number is used up), give the claim back and stop
        the engine with `report` -- one error line, the task runs again later."""
        g, t, c, handle = run.goal, run.task.id, run.claim, run.handle
        cdir = self.home.claim_dir(g, t)
        del self.runs[run.key]
        if self.by_task.get((g, t)) is run:
            del self.by_task[(g, t)]
        self.runner.kill(handle)
        while self.runner.poll(handle) is None:
            time.sleep(0.01)
        requeue = gs is not None and gs.plan.has(t)
        if isinstance(e, FileNotFoundError) and not os.path.isdir(cdir):
            # our claim was taken away while we started the agent (archived by a plan edit; or
            # broken: we held no birth lock -- no flock here -- and a very slow start took us
            # past the half-born grace): the breaker recorded the attempt
            claims.born(self.home, g, t)
            self.log(f"warning: the claim of {g}/{t} was broken while its agent started; it runs again")
            if requeue:
                gs.sched.retrying(t)
                self._add_timer(time.monotonic() + 1.0, g, t)
            return
        try:                # the agent ran (perhaps to its end): its attempt number is used up
            record_unfinished(self.home, g, t, c.attempt, outcome="interrupted", worker=self.worker,
                              reason=reason, started=c.owner.get("since"), captures_from=cdir)
            res.release_attempt(self.home, g, t, c.owner)
            claims.release(self.home, g, t)
        except (OSError, DagrunError):
            pass            # a claim without owner.json: the next engine breaks it after the grace
        if requeue:
            gs.sched.retrying(t)
            self._add_timer(time.monotonic() + 5.0, g, t)
        self._fs_failed(report)

    # ================================================================== endings
    def _reap(self, due: set[str] | None = None) -> None:
        """Commit the runs that ended. `due`: the keys that can have ended this turn (the
        runner's exits(): their pidfd fired, or they were just spawned); None: poll them all."""
        runs = self.runs.items()
        todo = list(runs) if due is None else [(k, r) for k, r in runs if k in due]
        if len(todo) > 1:           # leaders reaped first, then one children read for all
            together = getattr(self.runner, "reap_together", None)
            if together is not None:
                together([r.handle for _, r in todo])
        for key, run in todo:
            ex = self.runner.poll(run.handle)
            if ex is None:
                if run.node is None and run.handle.get("runner") not in _LOCAL:
                    self._placed(run)
                continue
            del self.runs[key]
            if self.by_task.get((run.goal, run.task.id)) is run:
                del self.by_task[(run.goal, run.task.id)]
            try:
                self._commit(run, ex)
            except (OSError, DagrunError) as e:
                if isinstance(e, (OSError, FsError)):
                    self._fs_failed(e)
                else:
                    self.log(f"error: {e}")
                gs = self.goals.get(run.goal)
                if gs is not None:
                    self._give_back(gs, run.claim, f"could not commit the attempt: {e}")
            finally:
                if run.claim.held is not None:
                    run.claim.held.close()      # the attempt has ended: its owner.json's fd goes

    def _placed(self, run: Run) -> None:
        """A cluster runner placed an attempt that was queued when it started (a pending Slurm
        job, a Ray task waiting for a worker): its node goes into the handle in owner.json
        (status shows it) and into a `placed` event."""
        node = executor.node_of(self.runner, run.handle)
        if not node:
            return
        run.node = node
        run.handle["node"] = node
        c = run.claim
        c.owner["handle"] = run.handle
        try:
            if claims.holds(self.home, c.goal, c.task, c.nonce, c.held):
                old, c.held = c.held, claims.update_owner(self.home, c.goal, c.task, c.owner, hold=True)
                if old is not None:
                    old.close()
        except (OSError, DagrunError) as e:     # status misses the node; the attempt goes on
            self.log(f"warning: {c.goal}/{c.task}: could not record its node {node}: {e}")
        tr.placed(self.home, c, worker=self.worker, **_remote(run.handle))
        self._touched.add(c.goal)

    def _commit(self, run: Run, ex: Exit) -> None:
        self._lock_turn(run.goal)        # the claim cannot be archived mid-commit
        self._commit_locked(run, ex)

    def _commit_locked(self, run: Run, ex: Exit) -> None:
        g, t, c = run.goal, run.task.id, run.claim
        gs = self.goals.get(g)
        if gs is not None and g not in self._stamp_seen:
            # Every writer of plan.json holds the goal's edit lock exclusive, and we hold it
            # shared until the turn ends: one look per goal and turn is as good as one per commit
            if self.home.plan_stamp(g) != gs.stamp:
                self._resync(gs)     # a plan edit landed while it ran: judge against the new plan
            elif g in self._turn_locks:
                self._stamp_seen.add(g)
        # owner.json with our nonce proves claim/ is a folder (a symlinked one is never read),
        # so _vanished (whose first look is exactly that) is asked only when it is not ours.
        # One listing of the claim proves it (owner.json's inode: claim.holds_listed) and
        # names what the attempt left there (the agent has ended): the capture files and
        # usage/check files it does not name are not looked for one by one
        held, listing = False, None
        in_plan = gs is not None and gs.plan.has(t)
        if in_plan:
            held, listing = claims.holds_listed(self.home, g, t, c.nonce, c.held, run.cdir)
        if not held and in_plan and self._vanished(gs, c, ex):
            return
        if not held:
            if gs is not None:       # taken away (plan edit, forced retry, broken claim): not
                self._resync(gs)     # ours to commit; the files say what the task is now
            return
        if ex.strays:
            self.log(f"{g}/{t}: killed {ex.strays} process(es) attempt {c.attempt} left running outside its group")
        plan = gs.plan
        prog = ex.progress if ex.progress is not None else self.runner.progress(run.handle)
        if run.stop_outcome is None and plan.task(t).definition_digest() != run.definition:
            run.stop_outcome, run.stop_reason = "superseded", "the task's definition changed while it ran"
        cdir = run.cdir             # (listing None: each capture file is looked for)
        used = attempt_extra(cdir, lambda w: self.log(f"warning: {g}/{t}: {w}"), listing)   # usage, the check's verdict
        node = ex.node or run.node         # a cluster runner's node: into the marker, record and event
        if node:
            used = {**(used or {}), "node": node}
        if run.stop_outcome in (S.CANCELLED, "superseded", "interrupted", bud.OUTCOME):
            keep = {k: used[k] for k in ("usage", "node") if used and used.get(k)}
            tr.interrupted(self.home, gs.sched, c, outcome=run.stop_outcome, reason=run.stop_reason,
                           worker=self.worker, extra=keep or None)
            self._touched.add(g)
            return
        if run.stop_outcome is None and ex.ok:
            done = self._finish(gs, c, ok=True, extra=used, listing=listing,
                                fields={"first_byte": _first_byte(prog.first_byte, c.started),
                                        "strays_killed": ex.strays or None})
            if done.outcome == S.DONE and run.task.cache and self.use_cache:
                self._cache_store(plan, t, done.record)     # after the done marker: only committed results
            return
        verdict, why = failure_verdict(cdir, exit_reason(ex.describe(), ex.code, run.task.agent,
                                                                c.workspace.cwd if c.workspace else run.task.workdir))
        self._finish(gs, c, ok=False, outcome=run.stop_outcome or verdict, exit_code=ex.code, signal=ex.signal,
                     extra=used, reason=run.stop_reason or why)

    def _serve_cached(self, gs: GoalState, c: Claim, task: Task) -> bool:
        """A cache hit: commit the cached output as this attempt through transitions.finish
        (no agent starts). False on a miss."""
        try:
            hit = cache.lookup_for(self.home, gs.plan, task)
            if hit is None:
                return False
            key, data, _ = hit
            self._finish(gs, c, ok=True, output_data=data, cached=key)
        except (OSError, DagrunError) as e:
            self._give_back(gs, c, f"result cache: {e}")
            if isinstance(e, (OSError, FsError)):
                self._fs_failed(e)
            else:
                self.log(f"error: {e}")
        return True

    def _cache_store(self, plan: Plan, t: str, body: dict) -> None:
        try:
            cache.store_for(self.home, plan, plan.task(t), body)
        except (OSError, DagrunError) as e:       # the task is done; only the reuse is lost
            self.log(f"warning: {plan.goal}/{t}: could not store the result in the cache: {e}")

    def _vanished(self, gs: GoalState, c: Claim, ex: Exit) -> bool:
        """The claim (or the whole task folder) disappeared while the agent ran, and nobody
        recorded why -- no marker, no record of this attempt (a breaker or a plan edit
        leaves those): the agent (or a person) deleted it. That is the attempt's failure,
        counted like any other, so an agent that always does it ends failed, not looping."""
        g, t = c.goal, c.task
        if os.path.isdir(self.home.claim_dir(g, t)) or marker_of(self.home, g, t) is not None or \
                os.path.exists(self.home.attempt_path(g, t, c.attempt, "json")):
            return False
        try:       # a plan edit moves the folder, claim and all, into archive/: not vanished
            for stamp in os.listdir(self.home.archive_dir(g)):
                o = loads(fsio.read_bytes(os.path.join(self.home.archive_dir(g), stamp, t, "claim", "owner.json")))
                if o and o.get("nonce") == c.nonce:
                    return False
        except FileNotFoundError:
            pass
        fsio.makedirs(self.home.task_dir(g, t))
        reason = f"its task folder was deleted while it ran ({ex.describe()})"
        self.log(f"{g}/{t}: attempt {c.attempt} failed: {reason}")
        self._finish(gs, c, ok=False, exit_code=ex.code, signal=ex.signal, reason=reason)
        return True

    def _gate(self, gs: GoalState, c: Claim) -> None:
        """No agent: a false condition skips the task; an approval gate waits on a person
        (its timeout, if any, is one of our timers)."""
        self._touched.add(c.goal)
        if c.skip is not None:
            ch = tr.skip(self.home, gs.plan, gs.sched, c, worker=self.worker)
            if ch.rebuild:
                self._resync(gs)
            else:
                self._check_ended(gs)
            return
        gate = tr.await_approval(self.home, gs.plan, gs.sched, c, worker=self.worker)
        self._gate_timer(gs, c.task, gate)
        self._check_ended(gs)

    def _gate_timer(self, gs: GoalState, t: str, gate: dict | None) -> None:
        at = parse_ts((gate or {}).get("timeout_at"))
        if at is not None:
            self._add_timer(time.monotonic() + max(0.0, at - time.time()) + 0.01, gs.plan.goal, t)

    def _expire_gates(self, gs: GoalState) -> None:
        """Approval gates past their timeout are rejected (by this worker)."""
        gone, _next = tr.expire_approvals(self.home, gs.plan, gs.sched, worker=self.worker)
        if gone:
            self._touched.add(gs.plan.goal)
            self._check_ended(gs)

    def _give_back(self, gs: GoalState, c: Claim, reason: str) -> None:
        """Committing failed (disk full ...): the attempt is recorded as interrupted (so its
        number is not reused), the claim goes back and the task runs again later. If even that
        fails, the claim stays with this engine's owner.json in it: once this engine has
        exited, the next one proves it dead, breaks the claim and re-runs the task."""
        try:
            res.release_attempt(self.home, c.goal, c.task, c.owner)
            if claims.holds(self.home, c.goal, c.task, c.nonce) and marker_of(self.home, c.goal, c.task) is None:
                record_unfinished(self.home, c.goal, c.task, c.attempt, outcome="interrupted", reason=reason,
                                  worker=self.worker, started=c.owner.get("since"),
                                  captures_from=self.home.claim_dir(c.goal, c.task))
            if claims.holds(self.home, c.goal, c.task, c.nonce):
                claims.release(self.home, c.goal, c.task)
        except (OSError, DagrunError):
            pass
        if gs.plan.has(c.task):
            gs.sched.retrying(c.task)
            self._add_timer(time.monotonic() + 5.0, c.goal, c.task)

    def _finish(self, gs: GoalState, c: Claim, *, ok: bool, **kw) -> tr.Finished:
        """An attempt of ours ended with a verdict: the transition, then what this engine does
        next (rebuild, a retry timer, the goal's end)."""
        g, t = c.goal, c.task
        done = tr.finish(self.home, gs.plan, gs.sched, c, ok=ok, worker=self.worker, stop_handled=gs.stopped, **kw)
        self._touched.add(g)
        if done.outcome == S.RETRYING:
            # this engine recorded the retry, so it announces `ready` when the backoff ends
            # (other engines requeue silently on their own timers: one line, not one per worker)
            rec = done.record
            self._add_timer(time.monotonic() + max(0.0, rec["retry_at"] - time.time()), g, t,
                            announce=c.attempt + 1)
            return done
        if done.changes.rebuild:
            self._resync(gs)
            return done
        if done.outcome == S.FAILED and gs.sched.stop_on_failure:
            gs.stopped = True
        self._check_ended(gs)
        return done

    def _budget_stuck(self, gs: GoalState) -> bool:
        """Nothing of the goal runs or waits for a retry, and its budget holds every ready task."""
        sched = gs.sched
        c = sched.counts()
        return bool(gs.plan.budget) and not c.get(S.RUNNING) and not c.get(S.RETRYING) \
            and bool(sched.budget_held()) and not sched.may_start()

    def _budget_tick(self) -> None:
        """Goals with a budget: hand the scheduler the spend (running attempts' usage files
        included), announce the ready tasks it holds, stop our attempts once the spend is past
        the pool, tell an attempt past its share (event, log, $DAGRUN_BUDGET_FILE)."""
        for gs in list(self.goals.values()):
            plan, g = gs.plan, gs.plan.goal
            if not plan.budget or gs.sched.is_finished():
                continue
            try:
                s = bud.apply(self.home, plan, gs.sched)
                now_held = set(gs.sched.budget_held())
                for t in sorted(now_held - self._held.get(g, set())):
                    tr.budget_held(self.home, g, t, worker=self.worker,
                                   reason=f"budget: spent {bud.fmt(s.total, s.pool)} of {bud.fmt(s.pool)}")
                    self._touched.add(g)
                self._held[g] = now_held
                for run in [r for r in self.runs.values() if r.goal == g and r.stop_outcome is None]:
                    t = run.task.id
                    if s.over():
                        reason = f"budget: the goal spent {bud.fmt(s.total, s.pool)}, past its pool of {bud.fmt(s.pool)}"
                        self.log(f"{g}/{t}: stopping attempt {run.claim.attempt}: {reason}")
                        self._stop_run(run, bud.OUTCOME, reason)
                        continue
                    share = bud.over_share(plan, t, s)
                    key = (g, t, run.claim.attempt)
                    if share and key not in self._share_told:
                        self._share_told.add(key)
                        mine = bud.amounts(s.by_task.get(t))
                        reason = f"spent {bud.fmt(mine, share)}, past its share {bud.fmt(share)} of the budget"
                        self.log(f"{g}/{t}: {reason}")
                        bud.tell(self.home.claim_dir(g, t), share=share, spent=mine, pool_=s.pool)
                        tr.over_share(self.home, run.claim, reason=reason, share=share, worker=self.worker)
                        self._touched.add(g)
            except (OSError, DagrunError) as e:
                self.log(f"warning: {g}: budget: {e}")

    def _stop_run(self, run: Run, outcome: str, reason: str) -> None:
        if run.stop_outcome is not None:
            return
        run.stop_outcome = outcome
        run.stop_reason = reason
        self.runner.terminate(run.handle)
        run.kill_at = time.monotonic() + run.task.kill_grace
        run.deadline = None

    # ================================================================== timers
    def _add_timer(self, when: float, g: str, t: str, announce: int = 0) -> None:
        """announce: the attempt number to announce as `ready` when it fires (0: silent)."""
        self._seq += 1
        heapq.heappush(self.timers, (when, self._seq, g, t, announce))

    def _fire_timers(self, now: float) -> None:
        requeued: set[tuple[str, str]] = set()
        while self.timers and self.timers[0][0] <= now:
            _, _, g, t, announce = heapq.heappop(self.timers)
            gs = self.goals.get(g)
            if gs is None or not gs.plan.has(t):
                continue
            if gs.sched.state_of(t) == S.RETRYING:
                if not announce and self._wait_for_announcer(g, t, now):
                    continue        # another engine's retry, and it lives: its `ready` line should come
                gs.sched.requeue(t)
                requeued.add((g, t))
            elif gs.sched.state_of(t) == S.AWAITING:      # an approval gate's timeout
                self._expire_gates(gs)
            if announce and (g, t) in requeued:     # a rescan's silent twin may have fired first
                tr.retry_due(self.home, g, t, attempt=announce, worker=self.worker)
                self._touched.add(g)
        for run in list(self.runs.values()):
            if run.deadline is not None and now >= run.deadline:
                self._stop_run(run, "timeout", f"timed out after {run.task.timeout:g}s")
            if run.kill_at is not None and now >= run.kill_at:
                self.runner.kill(run.handle)
                run.kill_at = None
            if run.task.max_output and not run.stop_outcome and self.runner.progress(run.handle).over_limit:
                self._stop_run(run, "output_limit", f"stdout exceeded max_output ({run.task.max_output} bytes)")
            if now >= run.hb_at:
                gs = self.goals.get(run.goal)
                run.hb_at = now + (self._refresh_every(gs.plan) if gs else 20.0)
                try:
                    fsio.utime(self.home.owner_path(run.goal, run.task.id))   # the lease, for other hosts
                except OSError:
                    pass

    def _housekeeping(self, now: float) -> None:
        for run in list(self.runs.values()):
            task = run.task
            if run.stop_outcome or not task.stall_timeout:
                continue
            prog = self.runner.progress(run.handle)
            hb = _mtime(self.home.heartbeat_path(run.goal, task.id))
            if hb > run.heartbeat_seen:
                run.heartbeat_seen, run.progress_at = hb, now
            run.progress_at = max(run.progress_at, prog.last_output or 0.0)
            if now - run.progress_at > task.stall_timeout:
                reason = f"stalled: no output and no heartbeat for {task.stall_timeout:g}s"
                tr.stalled(self.home, run.claim, reason=reason, worker=self.worker)
                self._touched.add(run.goal)
                self._stop_run(run, "stalled", reason)
        for gs in list(self.goals.values()):
            for t in list(gs.foreign):
                self._check_foreign(gs, t)

    def _reattach(self, gs: GoalState, t: str) -> bool:
        """A stale claim (its driver died) whose attempt runs on a cluster engine that outlives
        drivers (a Slurm job): take the claim over and follow the job, never resubmit it. Only
        runners with adopt(handle) do this; for the others the claim is broken as before."""
        adopt = getattr(self.runner, "adopt", None)
        g = gs.plan.goal
        owner = claims.read_owner(self.home, g, t)
        h = (owner or {}).get("handle")
        if adopt is None or not isinstance(h, dict) or h.get("runner") in (None, "process"):
            return False
        if claims.judge(self.home, g, t, owner, lease=self._judge_lease(gs.plan)) is None:
            return False
        new = claims.take_over(self.home, g, t, owner.get("nonce"), self.worker, lease=self._judge_lease(gs.plan),
                               adopt=lambda o: isinstance(o.get("handle"), dict) and adopt(o["handle"]))
        if new is None:
            return False
        task = gs.plan.task(t)
        c = Claim(g, t, as_int(new.get("attempt")), new, _epoch(new.get("since")))
        now = time.monotonic()
        run = Run(goal=g, task=task, claim=c, handle=new["handle"], key=self.runner.key(new["handle"]),
                  definition=task.definition_digest(), t0=now, progress_at=now,
                  deadline=now + task.timeout if task.timeout else None, hb_at=now, node=new["handle"].get("node"),
                  cdir=self.home.claim_dir(g, t))
        self.runs[run.key] = run
        self.by_task[(g, t)] = run
        self.log(f"reattached {g}/{t} attempt {c.attempt} to {h.get('runner')} job {h.get('job', '?')}")
        return True

    def _reap_orphan(self, handle: dict | None, grace: float, run_id: str | None = None) -> bool:
        """A dead driver's attempt, through the runner its handle names (ours if the same)."""
        return executor.reap_orphan(handle, grace, run_id, mine=self.runner)

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
            except ValueError:      # not the main thread
                pass
        return old

    def _restore_signals(self, old) -> None:
        for s, h in old.items():
            signal.signal(s, h)

    def _fs_failed(self, err: Exception) -> None:
        """A file-system error (disk full, I/O error, permission): nothing can be committed
        any more, so stop -- terminate the agents, record what still can be recorded -- and
        exit 5 with this one error. Every file is published by rename, so what is on disk is
        consistent; run again once the disk is fixed (done work is kept)."""
        if self.fs_error is not None:
            return                       # the same cause again while stopping: said once
        if isinstance(err, FsError):
            self.fs_error = err
        else:
            where = getattr(err, "filename", None)
            self.fs_error = os_error("write", where, err) if where else \
                FsError(f"file-system error: {getattr(err, 'strerror', None) or err}")

    def _begin_stop(self) -> None:
        self._stop_begun = True
        if self.runs and not self.fs_error:
            self.log(f"stopping: terminating {len(self.runs)} running agent(s)")
        why = f"worker {self.worker} stopped: {self.fs_error}" if self.fs_error else f"worker {self.worker} was stopped"
        for run in list(self.runs.values()):
            self._stop_run(run, "interrupted", why)
            run.kill_at = time.monotonic() + min(run.task.kill_grace, 5.0)



def _spec(task: Task, g: str) -> dict:
    """What a cluster runner passes to its engine (resources, limits, its plan options)."""
    if task.runner == "local" and not task.resources and not task.slurm and not task.ray:
        return {}
    return {"resources": task.resources, "timeout": task.timeout, "kill_grace": task.kill_grace,
            "slurm": task.slurm, "ray": task.ray, "name": f"dagrun.{g}.{task.id}"}


_LOCAL = ("process", "fake", "dry", None)


def _remote(handle: dict) -> dict:
    """A cluster runner's attempt in its `running` (and `placed`) event: the runner, the Slurm
    job id or Ray task id, and the node once known."""
    if handle.get("runner") in _LOCAL:
        return {}
    return {"runner": handle["runner"], **{k: handle[k] for k in ("job", "task_id", "node") if handle.get(k)}}


def _epoch(iso) -> float:
    from datetime import datetime
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _first_byte(mono: float | None, claimed_wall: float) -> float | None:
    """Seconds from the claim to the agent's first byte of stdout (the generation latency);
    the runner stamps it on the monotonic clock, the claim on the wall clock."""
    if mono is None:
        return None
    return round(max(0.0, time.time() - (time.monotonic() - mono) - claimed_wall), 3)
