"""The pure scheduler: which tasks are ready, in what order, and what a finish unlocks.

No I/O, and no clock of its own (aging reads the one it is handed). Built once from the plan
and the facts on disk (O(V+E)); after that every transition costs O(out-degree) -- the engine
never rescans the whole goal on the hot path.

Ready order (docs/scheduling.md): highest *effective* priority first, then the longest
remaining path in seconds (the task's own duration plus the longest chain of durations below
it: the critical path first), then plan order. Durations are handed in (`durations`: the
plan's estimates, the home's history; 1 s where nothing is known). Aging lifts a priority
class, not a task: a class of priority p whose ready tasks have not been served for w seconds
competes as p + floor(w / aging); serving it (a take) resets w. A class that keeps waiting
gains a point per `aging` seconds on one that keeps being served, so it overtakes a class d
points above it after about (d + 1) * aging seconds more of waiting -- nothing starves --
and within a class the critical-path order is never disturbed.

Misuse is a ValueError naming the task (like graphlib). A transition the incremental rules do
not cover (a failed task reported done, a done task reset) returns None from finish(): the
caller then rebuilds the scheduler from the files (the safety net, not the hot path).
"""
from __future__ import annotations

import heapq
import math
from functools import cached_property
from collections.abc import Callable, Container, Iterable, Mapping, Sequence

from . import states as S
from .wsrules import may_start as files_free

WAITING, READY, RUNNING, RETRYING, DONE, FAILED, CANCELLED, BLOCKED, SKIPPED, AWAITING = range(10)
NAMES = (S.WAITING, S.READY, S.RUNNING, S.RETRYING, S.DONE, S.FAILED, S.CANCELLED, S.BLOCKED, S.SKIPPED, S.AWAITING)
TERMINAL = frozenset((DONE, FAILED, CANCELLED, BLOCKED, SKIPPED))
UNSUCCESSFUL = frozenset((FAILED, CANCELLED, BLOCKED))     # what a trigger rule counts as "failed"
# trigger rules (plan field `trigger`, docs/conditions.md)
ALL_SUCCESS, ALL_DONE, ONE_SUCCESS, ONE_FAILED, NONE_FAILED = S.TRIGGERS
_BY_NAME = {n: i for i, n in enumerate(NAMES)}
_BY_MARKER = frozenset((DONE, FAILED, CANCELLED))     # states only a marker sets (to_read)
_FROM_DEPS = frozenset((WAITING, READY, BLOCKED, SKIPPED))     # what load() derives for a pending task
_SET_DIRECTLY = frozenset((S.DONE, S.FAILED, S.CANCELLED, S.RUNNING, S.RETRYING, S.SKIPPED, S.AWAITING))
_DERIVED = frozenset(("pending", S.WAITING, S.READY, S.BLOCKED))
class CycleError(ValueError):
    """The graph has a dependency cycle; `.cycle` is one of them as [a, b, ..., a], each
    depending on the next (like graphlib.CycleError's second argument)."""

    def __init__(self, cycle: list[str]):
        super().__init__("dependency cycle: " + " -> ".join(cycle), cycle)
        self.cycle = cycle

    def __str__(self) -> str:            # the message alone, not the (message, cycle) tuple
        return self.args[0]


def topo_order(ids: Sequence[str], preds: Sequence[Sequence[int]], succs: Sequence[Sequence[int]]) -> list[int]:
    """Kahn's order of node indices, every one after its predecessors, in one traversal;
    CycleError naming a cycle if there is none. The cycle is found among the nodes the
    traversal could not order (each still waits for one of them): walking from the first such
    node to a predecessor that is also left, a node repeats -- no second walk of the graph."""
    n = len(ids)
    indeg = [len(p) for p in preds]
    order = [i for i in range(n) if indeg[i] == 0]
    k = 0
    while k < len(order):
        i = order[k]
        k += 1
        for d in succs[i]:
            indeg[d] -= 1
            if indeg[d] == 0:
                order.append(d)
    if len(order) == n:
        return order
    at = next(i for i in range(n) if indeg[i] > 0)
    seen: dict[int, int] = {}
    path: list[int] = []
    while at not in seen:
        seen[at] = len(path)
        path.append(at)
        at = next(p for p in preds[at] if indeg[p] > 0)
    cyc = path[seen[at]:] + [at]
    raise CycleError([ids[i] for i in cyc])


def depth(tasks: Sequence["TaskLike"]) -> int:
    """The most tasks on one chain of dependencies, hard and soft (`dagrun validate`'s
    "longest path"; Scheduler.height's maximum). One pass when every task comes after its
    dependencies, as plans are mostly written (100 000 tasks: ~0.05 s, where building the
    Scheduler took ~0.3 s); else from the Scheduler's topological order."""
    level: dict[str, int] = {}
    at = level.__getitem__
    try:
        for t in tasks:
            h = max(map(at, t.deps), default=0)
            if t.soft_deps:
                h = max(h, max(map(at, t.soft_deps)))
            level[t.id] = h + 1
    except KeyError:           # a dependency listed after its dependent
        return max(Scheduler(tasks).height, default=0)
    return max(level.values(), default=0)


class TaskLike:
    """What the scheduler reads of a task (a protocol: plan.Task has it; not a base class --
    typing is not imported on the run path, docs/performance.md "(10)")."""
    id: str
    deps: Sequence[str]
    soft_deps: Sequence[str]
    priority: int
    # optional: trigger (default "all_success"), approval (a gate: not None)


def verdict(rule: str, pending: int, done: int, failed: int, skipped: int) -> int | None:
    """A trigger rule over the outcomes of a task's (hard) dependencies: READY, BLOCKED,
    SKIPPED, or None (wait). `failed` counts failed, cancelled and blocked dependencies.
    A rule that can no longer be met is decided at once (all_success / none_failed: blocked by
    the first failure); every other verdict waits until all dependencies have ended.

    all_success  all done -> ready; one failed -> blocked; else (some skipped) -> skipped
    none_failed  none failed -> ready (skipped ones are fine); one failed -> blocked
    all_done     all ended, whatever the outcomes -> ready
    one_success  all ended, one done -> ready; none done -> blocked if one failed, else skipped
    one_failed   all ended, one failed -> ready; none failed -> skipped
    """
    if rule in (ALL_SUCCESS, NONE_FAILED) and failed:
        return BLOCKED
    if pending:
        return None
    if rule == ALL_SUCCESS:
        return SKIPPED if skipped else READY
    if rule in (NONE_FAILED, ALL_DONE):
        return READY
    if rule == ONE_SUCCESS:
        return READY if done else (BLOCKED if failed else SKIPPED)
    if rule == ONE_FAILED:
        return READY if failed else SKIPPED
    raise ValueError(f"unknown trigger rule {rule!r}")


def skip_reason(root: str | None) -> str:
    """The reason a task skipped by its trigger rule records: the skipped task behind it
    (root, its `skipped_by`), or -- none: one_failed, every dependency done -- its rule."""
    return f"{root} was skipped" if root is not None else f"trigger {ONE_FAILED}: no dependency failed"


class Scheduler:
    def __init__(self, tasks: Sequence[TaskLike], initial: dict[str, str] | None = None, *,
                 max_parallel: int | None = None, stop_on_failure: bool = False,
                 files: Mapping[str, Sequence[str]] | None = None,
                 budget: dict | None = None, estimates: dict[str, float] | None = None,
                 serial: Mapping[str, str] | None = None, hold: Iterable[str] = (),
                 durations: Mapping[str, float] | None = None, aging: float | None = None,
                 clock: Callable[[], float] | None = None):
        # Capacity rules: what may start, decided here and nowhere else (engine, claim and
        # the CLI only ask may_start()/take()). A new rule (a resource, a budget) is one more
        # condition in may_start().
        self.max_parallel = max_parallel or None     # running tasks of this goal, any worker's
        self.stop_on_failure = stop_on_failure       # on_failure=stop: nothing new after a failure
        # the budget pool ({"usd", "tokens"}, either) and what the goal spent so far (set by the
        # caller from the files, set_spent); a task's usd estimate must fit in what is left
        self.budget = dict(budget) if budget else None
        self.spent: dict = {}
        self.estimates = dict(estimates or {})
        self.tasks = tasks        # what it was built from (again(): the same plan's tasks)
        self.ids = [t.id for t in tasks]
        # the files mutex (code workspaces): a task whose declared globs overlap those of a
        # running task stays ready until that one ends (wsrules.may_start); None: no task
        # declares any, the rule is off
        self.files = [tuple(files.get(tid, ())) for tid in self.ids] if files else None
        idx = self.index = {tid: i for i, tid in enumerate(self.ids)}
        # fan-out templates not expanded yet: they become ready like any task but are never
        # handed out (no agent runs a template); whoever sees one ready expands it (fanout.py)
        self.hold = frozenset(idx[t] for t in hold)
        n = len(self.ids)
        # serial groups: a task starts only once every earlier task of its group (plan order)
        # has ended; None: no task has a group, the rule is off
        self.serial_before: list[tuple[int, ...]] | None = None
        if serial:
            members: dict[str, list[int]] = {}
            self.serial_before = [()] * n
            for i, tid in enumerate(self.ids):
                grp = serial.get(tid)
                if grp:
                    self.serial_before[i] = tuple(members.setdefault(grp, []))
                    members[grp].append(i)
        # resources (resources.py): pool -> units a task holds while it runs, and the units free
        # in each pool as the caller last read them from the files (set_resources); a ready
        # task whose pools lack units stays ready. None: no task needs any, the rule is off
        self.needs: list[dict[str, int]] | None = None
        self.free: dict[str, int] = {}
        self.holding: dict[int, dict[str, int]] = {}   # units of tasks take() gave out, until they end
        # the graph as int ids: a tuple of dependencies per task (the one empty tuple for none),
        # dependents as lists only for the tasks that have some (ARCHITECTURE.md, "Plans of
        # 100 000 tasks"); deps + soft deps concatenated only where a task has soft ones
        at = idx.__getitem__          # map(): no comprehension frame per task (100 000 tasks: -0.05 s)
        self.deps = [tuple(map(at, t.deps)) for t in tasks]
        self.trigger = [getattr(t, "trigger", None) or ALL_SUCCESS for t in tasks]
        self.gated = [getattr(t, "approval", None) is not None for t in tasks]
        self.soft = [tuple(map(at, t.soft_deps)) if t.soft_deps else () for t in tasks]
        self.any_soft = any(self.soft)
        self.hard_out: list = [()] * n
        self.soft_out: list = [()] * n
        for outs, ins in ((self.hard_out, self.deps), (self.soft_out, self.soft if self.any_soft else ())):
            for i, ds in enumerate(ins):
                for d in ds:
                    if outs[d]:
                        outs[d].append(i)
                    else:
                        outs[d] = [i]
        self.order = self._topo()
        self.rank = self._ranks(durations)
        self.prio = [int(t.priority) for t in tasks]
        # aging (seconds per priority point; None/0: off) on the clock it is handed (the engine's
        # monotonic clock, the simulator's virtual one); without a clock base priorities hold
        self.aging = aging if aging and clock is not None else None
        self.clock = clock
        self.load(initial or {})

    def _ranks(self, durations: Mapping[str, float] | None) -> list[float]:
        """The remaining path in seconds (HEFT's upward rank): own duration + the longest below."""
        seconds = (durations or {}).get
        rank = [max(0.0, float(seconds(tid, 1.0))) for tid in self.ids]
        below = rank.__getitem__
        if self.any_soft:
            for i in reversed(self.order):
                outs = self._outs(i)
                if outs:
                    rank[i] += max(map(below, outs))
        else:
            hard_out = self.hard_out
            for i in reversed(self.order):
                outs = hard_out[i]
                if outs:
                    rank[i] += max(map(below, outs))
        return rank

    def again(self, initial: dict[str, str], budget: dict | None = None, *,
              durations: Mapping[str, float] | None = None, clock: Callable[[], float] | None = None) -> "Scheduler":
        """A scheduler of the same tasks and rules with its states set from `initial` (load),
        as the constructor builds it -- the graph, its order, the serial groups shared with
        this one (never changed after __init__), at the cost of load() alone; the budget pool
        as the plan states it, no spend, no resources (the caller applies the files', as to a
        new one). Without durations its ranks are this one's (a caller whose answer depends on
        the order ready tasks are taken in builds a new one instead, or passes them) and it
        has no clock (aging off); with durations the ranks are worked out again from them, as
        the constructor does, and clock -- which must be this one's, the one aging was set up
        on -- keeps this one's aging (the engine's rescan: Reconciler._resync)."""
        if clock is not None and clock is not self.clock:
            raise ValueError("again(): a clock other than the one this scheduler was built with")
        new = object.__new__(Scheduler)
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("_resources_of", None)      # resources.apply's memo of this one's needs
        new.budget = dict(budget) if budget else None
        new.spent = {}
        new.needs, new.free, new.holding = None, {}, {}
        if clock is None:
            new.aging = new.clock = None
        if durations is not None:
            new.rank = new._ranks(durations)
        new.load(initial)
        return new

    def to_read(self, present: Container[str]) -> list[str] | None:
        """The periodic rescan's light look (Reconciler._rescan): the tasks whose folders it
        reads -- those with a folder (present: the names in tasks/) that no marker ended here
        (done, failed, cancelled) -- or None when the files cannot give these states without a
        rebuild: a task that only its files put in its state here (a marker, a claim, a
        retry's record, an approval's file) has no folder."""
        ids = self.ids
        out = []
        for i, s in enumerate(self.state):
            if s in _BY_MARKER:
                if ids[i] not in present:
                    return None
            elif ids[i] in present:
                out.append(ids[i])
            elif s not in _FROM_DEPS:
                return None
        return out

    def agrees(self, read: Iterable[str], initial: Mapping[str, str]) -> bool:
        """Does each task of `read` stand here as load() would set it from the files?
        initial: their states from the files (lifecycle.initial_states; none: pending, which
        load derives from the dependencies)."""
        state, index, get = self.state, self.index, initial.get
        for tid in read:
            s = state[index[tid]]
            f = get(tid)
            if f is None:
                if s not in _FROM_DEPS:
                    return False
            elif _BY_NAME.get(f) != s:
                return False
        return True

    def topo_ids(self) -> list[str]:
        """The task ids, every one after its (hard and soft) dependencies."""
        return [self.ids[i] for i in self.order]

    def _outs(self, i: int):
        """Task i's dependents, hard and soft."""
        return [*self.hard_out[i], *self.soft_out[i]] if self.any_soft and self.soft_out[i] else self.hard_out[i]

    def _topo(self) -> list[int]:
        n = len(self.ids)
        if not self.any_soft:
            return topo_order(self.ids, self.deps, self.hard_out)
        return topo_order(self.ids, [self.deps[i] + self.soft[i] for i in range(n)],
                          [self._outs(i) for i in range(n)])

    @cached_property
    def height(self) -> list[int]:
        """Unit weights: each task's longest path to the end, in tasks (validate's depth)."""
        height = [1] * len(self.ids)
        for i in reversed(self.order):
            outs = self._outs(i)
            if outs:
                height[i] = 1 + max([height[d] for d in outs])
        return height

    # ------------------------------------------------------------------ building
    def load(self, initial: dict[str, str]) -> None:
        """Set every task from the facts: done/skipped/failed/cancelled/running/retrying/
        awaiting_approval/pending. The rest (waiting/ready/blocked/skipped by the rule) is
        derived from the dependencies, in topological order."""
        n = len(self.ids)
        self.state = [WAITING] * n
        self.root: dict[int, int] = {}
        self.count = [0] * len(NAMES)
        self.count[WAITING] = n
        self.pend = [0] * n          # hard dependencies not ended
        self.ndone = [0] * n
        self.nfail = [0] * n         # failed, cancelled or blocked
        self.nskip = [0] * n
        self.rem_soft = [0] * n
        self.heaps: dict[int, list[tuple]] = {}      # priority -> heap of (-rank, i)
        self.nready: dict[int, int] = {}             # priority -> ready tasks in the class
        self.since: dict[int, float] = {}            # priority -> last served (or became non-empty)
        state, pend, ndone, nfail, nskip = self.state, self.pend, self.ndone, self.nfail, self.nskip
        ids, deps, soft, get = self.ids, self.deps, self.soft, initial.get
        scratch: list = []
        for i in self.order:
            for d in deps[i]:          # d's state into i's trigger counters (once per edge)
                sd = state[d]
                if sd == DONE:
                    ndone[i] += 1
                elif sd == SKIPPED:
                    nskip[i] += 1
                elif sd in UNSUCCESSFUL:
                    nfail[i] += 1
                else:
                    pend[i] += 1
            if soft[i]:
                self.rem_soft[i] = sum(1 for d in soft[i] if state[d] not in TERMINAL)
            s = get(ids[i], "pending")
            if s in _SET_DIRECTLY:
                self._set(i, _BY_NAME[s])
                continue
            if s not in _DERIVED:
                raise ValueError(f"task {ids[i]!r}: unknown initial state {s!r}")
            if pend[i] and not nfail[i]:
                continue        # waiting, whatever its rule: _check's verdict would be None
            self._check(i, scratch)
            scratch.clear()

    def _root(self, i: int, states: frozenset) -> int:
        """The task at the origin of i's verdict: the first dependency in one of `states`,
        or the origin of its own (derived) verdict."""
        for d in self.deps[i]:
            if self.state[d] in states:
                return self.root.get(d, d)
        return i

    def _push(self, i: int) -> None:
        """Ready task i into its priority class's heap (a held template never: nobody takes it)."""
        if i not in self.hold:
            heapq.heappush(self.heaps.setdefault(self.prio[i], []), (-self.rank[i], i))

    def expandable(self) -> list[str]:
        """Held templates that are ready: their items can be read now (fanout.expand)."""
        return [self.ids[i] for i in self.hold if self.state[i] == READY]

    def _set(self, i: int, s: int) -> None:
        old = self.state[i]
        self.count[old] -= 1
        self.state[i] = s
        self.count[s] += 1
        if old == READY:
            self.nready[self.prio[i]] -= 1
        if s == READY:
            p = self.prio[i]
            k = self.nready.get(p, 0)
            if k == 0 and self.aging:
                self.since[p] = self.clock()          # the class starts waiting now
            self.nready[p] = k + 1

    # ------------------------------------------------------------------ ready order
    def effective_priority(self, p: int, now: float | None = None) -> int:
        """A ready class's priority with its aging credit: p + floor(waited / aging)."""
        if not self.aging or p not in self.since:
            return p
        now = self.clock() if now is None else now
        return p + int(math.floor(max(0.0, now - self.since[p]) / self.aging))

    def _classes(self) -> list[int]:
        """The priorities that have ready tasks, best first (effective priority, then base)."""
        ps = [p for p, k in self.nready.items() if k > 0]
        if len(ps) <= 1:
            return ps
        now = self.clock() if self.aging else None
        return sorted(ps, key=lambda p: (-self.effective_priority(p, now), -p))

    def _ready_order(self) -> Iterable[int]:
        """Every ready task, in take order."""
        seen: set[int] = set()      # a requeued task may have a second (stale) heap entry
        for p in self._classes():
            for k in sorted(self.heaps.get(p, ())):
                if self.state[k[1]] == READY and k[1] not in seen:
                    seen.add(k[1])
                    yield k[1]

    def _top(self, p: int) -> int | None:
        h = self.heaps.get(p) or []
        while h and self.state[h[0][1]] != READY:
            heapq.heappop(h)
        return h[0][1] if h else None

    def keep_waits(self, old: "Scheduler") -> None:
        """Rebuilt from the files: a class that was already waiting keeps its wait."""
        if self.aging and old.aging:
            for p, k in self.nready.items():
                if k > 0 and old.nready.get(p, 0) > 0 and p in old.since:
                    self.since[p] = old.since[p]

    def _served(self, i: int) -> None:
        """Task i of its class is taken: the class's wait starts over."""
        if self.aging:
            self.since[self.prio[i]] = self.clock()

    # ------------------------------------------------------------------ queries
    def _i(self, tid: str) -> int:
        try:
            return self.index[tid]
        except KeyError:
            raise ValueError(f"unknown task {tid!r}") from None

    def state_of(self, tid: str) -> str:
        return NAMES[self.state[self._i(tid)]]

    def blocked_by(self, tid: str) -> str | None:
        """The failed/cancelled task that blocks tid -- or, for a task skipped by its trigger
        rule, the skipped task behind it (None when no dependency was skipped: one_failed with
        none failed, see skip_reason)."""
        r = self.root.get(self._i(tid))
        return None if r is None else self.ids[r]

    def awaiting(self) -> list[str]:
        """Approval gates waiting on a person."""
        return [self.ids[i] for i, s in enumerate(self.state) if s == AWAITING]

    def states(self) -> dict[str, str]:
        return {tid: NAMES[s] for tid, s in zip(self.ids, self.state)}

    def counts(self) -> dict[str, int]:
        return {NAMES[s]: c for s, c in enumerate(self.count) if c}

    def n(self, state: int) -> int:
        return self.count[state]

    def is_finished(self) -> bool:
        """Nothing waiting, ready, running, retrying or awaiting approval: the goal has ended."""
        return self.count[WAITING] + self.count[READY] + self.count[RUNNING] + self.count[RETRYING] + \
            self.count[AWAITING] == 0

    @property
    def stopped(self) -> bool:
        """on_failure=stop and a task failed: nothing new may start."""
        return self.stop_on_failure and self.count[FAILED] > 0

    def at_capacity(self) -> bool:
        return bool(self.max_parallel) and self.count[RUNNING] >= self.max_parallel

    def may_start(self) -> bool:
        """A ready task exists and the goal's rules let one more start now."""
        if self.stopped or self.at_capacity():
            return False
        if self.files is None and self.needs is None and self.serial_before is None:
            tid = self.peek()
            return tid is not None and self.fits_budget(tid)
        # the files mutex, serial groups, resources: the best ready task they let start is the
        # candidate, and it must fit the budget (in priority order: a cheaper task does not
        # jump a held one)
        busy, taken = self._busy_files(), set()
        for i in self._ready_order():
            if self._may_run(i, busy, taken):
                return self.fits_budget(self.ids[i])
        return False

    def set_resources(self, needs: Mapping[str, Mapping[str, int]] | None, free: Mapping[str, int]) -> None:
        """Pools each task needs (pool -> units; only pools with a capacity) and the units free
        in each pool right now, read from the files by the caller (resources.apply)."""
        if needs is not None:
            self.needs = [dict(needs.get(tid) or {}) for tid in self.ids] if any(needs.values()) else None
        self.free = dict(free)
        self.holding.clear()          # the files count what runs now

    def _give_back(self, i: int) -> None:
        """A task take() gave units to has ended (or goes back to the queue): they are free
        again in this view (the caller's next read of the files says the same)."""
        for p, n in self.holding.pop(i, {}).items():
            self.free[p] = self.free.get(p, 0) + n

    def _fits(self, i: int) -> bool:
        return self.needs is None or all(self.free.get(p, 0) >= n for p, n in self.needs[i].items())

    def resource_held(self) -> dict[str, list[str]]:
        """Ready tasks the resources keep from starting: task -> the pools short of units."""
        if self.needs is None:
            return {}
        out, taken = {}, set()
        for i in self._ready_order():
            if not self.needs[i]:
                continue
            short = [p for p, n in self.needs[i].items() if self.free.get(p, 0) < n or p in taken]
            if short:                  # short of units, or they wait for a better-ranked task
                out[self.ids[i]] = short
                taken.update(self.needs[i])
        return out

    def serial_wait(self, tid: str) -> str | None:
        """The earlier task of tid's serial group it waits for, or None."""
        if self.serial_before is None:
            return None
        return next((self.ids[j] for j in self.serial_before[self._i(tid)] if self.state[j] not in TERMINAL), None)

    def _may_run(self, i: int, busy: list, taken: set) -> bool:
        """The files mutex, the serial group and the resources let ready task i start. taken:
        pools a better-ranked ready task waits for -- a lower-ranked one does not take their
        units (no starvation of a task that needs several), it may use other pools."""
        if not self._files_free(i, busy):
            return False
        if self.serial_before is not None and any(self.state[j] not in TERMINAL for j in self.serial_before[i]):
            return False
        if self.needs is None:
            return True
        need = self.needs[i]
        if self._fits(i) and not taken.intersection(need):
            return True
        taken.update(need)
        return False

    def set_budget(self, pool: dict | None, spent: dict) -> None:
        """The pool as raised so far and the goal's spend ({"usd", "tokens"}) right now."""
        self.budget = dict(pool) if pool else None
        self.spent = dict(spent or {})

    def fits_budget(self, tid: str) -> bool:
        """Spend so far plus the task's estimate stays within the pool (no pool: always)."""
        if not self.budget:
            return True
        usd, tokens = self.budget.get("usd"), self.budget.get("tokens")
        spent_usd, spent_tokens = self.spent.get("usd", 0.0), self.spent.get("tokens", 0)
        if usd is not None and (spent_usd >= usd or spent_usd + self.estimates.get(tid, 0.0) > usd):
            return False
        return tokens is None or spent_tokens < tokens

    def budget_held(self) -> list[str]:
        """Ready tasks the budget keeps from starting (the rule of may_start/take)."""
        if not self.budget:
            return []
        return [t for t in self.ready_ids() if not self.fits_budget(t)]

    def peek(self) -> str | None:
        """The task take() would start next (files and budget aside)."""
        for p in self._classes():
            i = self._top(p)
            if i is not None:
                return self.ids[i]
        return None

    def _busy_files(self) -> list[tuple[str, ...]]:
        fs = self.files
        if fs is None:
            return []
        return [fs[i] for i, s in enumerate(self.state) if s == RUNNING and fs[i]]

    def _files_free(self, i: int, busy: list[tuple[str, ...]]) -> bool:
        return self.files is None or files_free(self.files[i], busy)

    def ready_ids(self) -> list[str]:
        return [self.ids[i] for i in self._ready_order()]

    # ------------------------------------------------------------------ transitions
    def take(self) -> str | None:
        """Pop the best ready task and mark it running (the caller is about to claim it); None
        when nothing is ready or the goal's rules (max_parallel, on_failure=stop) say wait.
        With the files mutex the best ready task whose files are free is taken; the ones it
        passes over stay ready."""
        if self.stopped or self.at_capacity():
            return None
        if self.files is None and self.needs is None and self.serial_before is None:
            tid = self.peek()
            if tid is not None and not self.fits_budget(tid):
                return None             # in priority order: a cheaper task does not jump the queue
            if tid is not None:
                self._take(self.index[tid])
            return tid
        busy, taken = self._busy_files(), set()
        for i in self._ready_order():
            if self._may_run(i, busy, taken):
                if not self.fits_budget(self.ids[i]):
                    return None         # held at the budget: nothing behind it jumps
                self._take(i)
                return self.ids[i]
        return None

    def _take(self, i: int) -> None:
        self._served(i)
        self._set(i, RUNNING)           # its heap entry is stale now: _top() drops it
        if self.needs is not None and self.needs[i]:   # spoken for until it ends
            self.holding[i] = self.needs[i]
            for p, n in self.needs[i].items():
                self.free[p] = self.free.get(p, 0) - n

    def start(self, tid: str) -> None:
        """Somebody (maybe another worker) is running it."""
        i = self._i(tid)
        if self.state[i] in (WAITING, READY, RETRYING, AWAITING):
            self._set(i, RUNNING)   # a stale heap entry is skipped by _top()

    def retrying(self, tid: str) -> None:
        """The attempt failed and another one will follow after a backoff."""
        i = self._i(tid)
        self._give_back(i)
        if self.state[i] not in TERMINAL:
            self._set(i, RETRYING)

    def requeue(self, tid: str) -> list[tuple[str, str, str | None]]:
        """Back to ready (a released or broken claim, a finished backoff)."""
        i = self._i(tid)
        self._give_back(i)
        if self.state[i] in TERMINAL or self.state[i] in (READY, AWAITING):
            return []
        self._set(i, WAITING)
        changes: list = []
        if self._check(i, changes):          # its rule says blocked/skipped now: so are those below
            self._propagate(i, changes)
        return changes

    def wait_approval(self, tid: str) -> None:
        """The task is an approval gate that now waits on a person (its `awaiting` file)."""
        i = self._i(tid)
        if self.state[i] not in TERMINAL:
            self._set(i, AWAITING)

    def finish(self, tid: str, outcome: str) -> list[tuple[str, str, str | None]] | None:
        """Record a terminal outcome (done | skipped | failed | cancelled). Returns the changes
        it caused, [(task, new_state, root)], [] if it was already recorded, or None when the
        transition is outside the incremental rules (rebuild from the files)."""
        i = self._i(tid)
        s = _BY_NAME.get(outcome)
        if s not in (DONE, FAILED, CANCELLED, SKIPPED):
            raise ValueError(f"task {tid!r}: {outcome!r} is not a terminal outcome")
        self._give_back(i)
        cur = self.state[i]
        if cur == s:
            return []
        if cur in TERMINAL:
            return None
        self._set(i, s)
        changes: list[tuple[str, str, str | None]] = [(tid, outcome, None)]
        self._propagate(i, changes)
        return changes

    def _check(self, d: int, changes: list) -> bool:
        """Judge a waiting task by its trigger rule; True when it ended (blocked/skipped)."""
        if self.state[d] != WAITING:
            return False
        v = verdict(self.trigger[d], self.pend[d], self.ndone[d], self.nfail[d], self.nskip[d])
        if v is None:
            return False
        if v == READY:
            if self.rem_soft[d] == 0:
                self._set(d, READY)
                self._push(d)
                changes.append((self.ids[d], "ready", None))
            return False
        root = self._root(d, UNSUCCESSFUL if v == BLOCKED else frozenset((SKIPPED,)))
        self._set(d, v)
        if root == d:       # skipped by its own rule, no dependency skipped (one_failed: none failed)
            changes.append((self.ids[d], NAMES[v], None))
            return True
        self.root[d] = root
        changes.append((self.ids[d], NAMES[v], self.ids[root]))
        return True

    def _propagate(self, i: int, changes: list) -> None:
        """Task i ended: count it into its dependents' rules; what that ends, in turn."""
        stack = [i]
        state, pend = self.state, self.pend
        while stack:
            j = stack.pop()
            s = state[j]
            tally = self.ndone if s == DONE else self.nskip if s == SKIPPED else self.nfail
            for d in self.hard_out[j]:
                pend[d] -= 1
                tally[d] += 1
                if state[d] == WAITING and self._check(d, changes):
                    stack.append(d)
            for d in self.soft_out[j]:
                self.rem_soft[d] -= 1
                if state[d] == WAITING and self._check(d, changes):
                    stack.append(d)

    def would_block(self, tid: str) -> list[str]:
        """The tasks finish(tid, failed|cancelled) would block now, without changing anything
        (the hooks' pending records are published before the commit point): its waiting (or
        ready) hard dependents whose trigger rule that failure decides as blocked, and theirs
        in turn -- only the tasks it reaches are looked at, each judged with the counts it
        would have. (A failure never skips a task: the rules decide blocked or ready.) If tid
        has ended already, as if it had failed instead."""
        start = self._i(tid)
        was = self.state[start]
        # the counts of the dependents judged, as they would be -- only for the rules that
        # need them: all_success and none_failed block at the first failure. tid's end takes
        # a pending dependency off them (an ended tid: the tally of the outcome it has), the
        # failure adds one
        pend, ndone, nfail, nskip = (_Overlay(x) for x in (self.pend, self.ndone, self.nfail, self.nskip))
        undo = pend if was not in TERMINAL else ndone if was == DONE else nskip if was == SKIPPED else nfail
        state, trigger, ids = self.state, self.trigger, self.ids
        seen: set[int] = set()
        stack = [start]
        out = []
        while stack:
            j = stack.pop()
            for d in self.hard_out[j]:
                if d in seen or state[d] not in (WAITING, READY):
                    continue
                rule = trigger[d]
                if rule != ALL_SUCCESS and rule != NONE_FAILED:
                    (undo if j == start else pend)[d] -= 1      # (j != start: blocked, no longer pending)
                    nfail[d] += 1
                    if verdict(rule, pend[d], ndone[d], nfail[d], nskip[d]) != BLOCKED:
                        continue
                seen.add(d)
                out.append(ids[d])
                stack.append(d)
        return out

    def would_end(self, tid: str, outcome: str) -> list[tuple[str, str, str | None]] | None:
        """What finish(tid, outcome) would return now, without changing anything (the hooks'
        pending on_skipped records are published before the commit point): finish's own
        rules run on a _Shadow, whose writes stay in overlays -- the work is that of the
        tasks the outcome reaches, not a copy of the scheduler."""
        return _Shadow(self).finish(tid, outcome)

    def would_skip(self, tid: str, outcome: str) -> list[tuple[str, str]]:
        """The tasks finish(tid, outcome) would skip by their trigger rules, each with the
        skipped task it names: [(task, root)] (the on_skipped records before a commit point).
        A failure or a cancel never skips a task -- it counts as a failed dependency, and every
        rule then decides blocked or ready, down the whole cascade -- so for those nothing is
        worked out; otherwise would_end's changes, filtered."""
        if outcome in (S.FAILED, S.CANCELLED):
            return []
        return [(t, root) for t, st, root in (self.would_end(tid, outcome) or [])[1:] if st == S.SKIPPED]

    def failed_roots(self) -> list[str]:
        return [self.ids[i] for i in range(len(self.ids)) if self.state[i] in (FAILED, CANCELLED)]

    def not_started(self) -> Iterable[str]:
        return (self.ids[i] for i in range(len(self.ids)) if self.state[i] in (WAITING, READY, RETRYING, AWAITING))


class _Overlay(dict):
    """A list or dict seen through a layer of writes (this dict): a read of what was not
    written falls through to `base`, which is never changed."""
    __slots__ = ("base",)

    def __init__(self, base) -> None:
        super().__init__()
        self.base = base

    def __missing__(self, k):
        return self.base[k]

    def get(self, k, default=None):
        return self[k] if k in self else self.base.get(k, default)


class _Shadow(Scheduler):
    """A scheduler's finish() without its effects (would_end): the same rules (finish,
    _propagate, _check, _root) over overlays of what they read and write -- the states, the
    dependency counts, the roots -- and none of the bookkeeping they would update besides
    (state counts, ready heaps, class waits, resource units), which no verdict reads."""

    def __init__(self, sched: Scheduler) -> None:      # noqa: super().__init__ would rebuild
        self.__dict__.update(sched.__dict__)
        for name in ("state", "pend", "ndone", "nfail", "nskip", "rem_soft", "root"):
            setattr(self, name, _Overlay(getattr(sched, name)))

    def _set(self, i: int, s: int) -> None:
        self.state[i] = s

    def _push(self, i: int) -> None:
        pass

    def _give_back(self, i: int) -> None:
        pass


class FairShare:
    """Which goal a worker serving several starts its next task from (the engine's dispatch
    and the simulator ask the same object): the goal with the fewest of *this worker's*
    running tasks per unit of its `weight`, then the one served least so far (stride
    scheduling: every start advances the goal's pass by 1/weight), then the goal id. So
    while every goal has ready work, a weight-2 goal gets two starts for each one of a
    weight-1 goal, and equal goals alternate -- never first-submitted-first. A goal seen for
    the first time (or again after having nothing to start) joins at the current pass (that
    of the goal served last): no burst of catch-up starts."""

    def __init__(self) -> None:
        self.passes: dict[str, float] = {}
        self.vtime = 0.0             # the pass of the goal served last (before its advance)

    def pick(self, goals: Mapping[str, tuple[int, float]]) -> str | None:
        """goals: goal -> (this worker's running tasks of it, its weight), only the goals that
        may start a task now. The goal to take from next, or None."""
        if not goals:
            return None
        for g in goals:
            if self.passes.get(g, -1.0) < self.vtime:
                self.passes[g] = self.vtime
        return min(goals, key=lambda g: (goals[g][0] / goals[g][1], self.passes[g], g))

    def take(self, goals: Mapping[str, tuple["Scheduler", int, float]]) -> tuple[str, str] | None:
        """The next start of a worker: goals maps goal -> (its scheduler, this worker's running
        tasks of it, its weight). Picks the goal (pick), takes its best ready task (marked
        running in its scheduler), counts the start; None when no goal may start one. The
        engine's dispatch and the simulator both start tasks only through this.

        One goal (an engine serving one plan, the common case): nothing to pick, and its
        scheduler's take() applies the very rules may_start() would (stopped, max_parallel,
        the best ready task the files, serial groups and resources let start, the budget) --
        asked once instead of twice (may_start, then take), without the pick's key function."""
        if len(goals) == 1:
            for g, (s, _mine, w) in goals.items():
                t = s.take()
                if t is None:
                    return None
                self.served(g, w)
                return g, t
        g = self.pick({g: (mine, w) for g, (s, mine, w) in goals.items() if s.may_start()})
        if g is None:
            return None
        s, _mine, w = goals[g]
        t = s.take()
        if t is None:
            return None
        self.served(g, w)
        return g, t

    def served(self, goal: str, weight: float) -> None:
        """A task of goal was started."""
        p = max(self.passes.get(goal, 0.0), self.vtime)
        self.vtime = p
        self.passes[goal] = p + 1.0 / weight

    def forget(self, goal: str) -> None:
        self.passes.pop(goal, None)
