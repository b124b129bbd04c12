"""The pure scheduler: which tasks are ready, in what order, and what a finish unlocks.

No I/O, no clock. Built once from the plan and the facts on disk (O(V+E)); after that every
transition costs O(out-degree) -- the engine never rescans the whole goal on the hot path.
Ready tasks come out highest `priority` first, then longest remaining path (critical path
first), then plan order.

Misuse is a ValueError naming the task (like graphlib). A transition the incremental rules do
not cover (a failed task reported done, a done task reset) returns None from finish(): the
caller then rebuilds the scheduler from the files (the safety net, not the hot path).
"""
from __future__ import annotations

import heapq
from typing import Iterable, Mapping, Protocol, Sequence

from . import states as S
from .wsrules import may_start as files_free

WAITING, READY, RUNNING, RETRYING, DONE, FAILED, CANCELLED, BLOCKED = range(8)
NAMES = (S.WAITING, S.READY, S.RUNNING, S.RETRYING, S.DONE, S.FAILED, S.CANCELLED, S.BLOCKED)
TERMINAL = frozenset((DONE, FAILED, CANCELLED, BLOCKED))
_BY_NAME = {n: i for i, n in enumerate(NAMES)}


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


class TaskLike(Protocol):
    id: str
    deps: Sequence[str]
    soft_deps: Sequence[str]
    priority: int


class Scheduler:
    def __init__(self, tasks: Sequence[TaskLike], initial: dict[str, str] | None = None, *,
                 max_parallel: int | None = None, stop_on_failure: bool = False,
                 files: Mapping[str, Sequence[str]] | None = None,
                 budget: dict | None = None, estimates: dict[str, float] | None = None):
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
        self.ids = [t.id for t in tasks]
        # the files mutex (code workspaces): a task whose declared globs overlap those of a
        # running task stays ready until that one ends (wsrules.may_start); None: no task
        # declares any, the rule is off
        self.files = [tuple(files.get(tid, ())) for tid in self.ids] if files else None
        idx = self.index = {tid: i for i, tid in enumerate(self.ids)}
        n = len(self.ids)
        self.deps = [[idx[d] for d in t.deps] for t in tasks]
        self.soft = [[idx[d] for d in t.soft_deps] for t in tasks]
        self.hard_out: list[list[int]] = [[] for _ in range(n)]
        self.soft_out: list[list[int]] = [[] for _ in range(n)]
        for i in range(n):
            for d in self.deps[i]:
                self.hard_out[d].append(i)
            for d in self.soft[i]:
                self.soft_out[d].append(i)
        self.order = self._topo()
        height = [1] * n
        for i in reversed(self.order):
            outs = self.hard_out[i] + self.soft_out[i]
            if outs:
                height[i] = 1 + max(height[d] for d in outs)
        self.height = height
        self.key = [(-t.priority, -height[i], i) for i, t in enumerate(tasks)]
        self.load(initial or {})

    def topo_ids(self) -> list[str]:
        """The task ids, every one after its (hard and soft) dependencies."""
        return [self.ids[i] for i in self.order]

    def _topo(self) -> list[int]:
        return topo_order(self.ids, [self.deps[i] + self.soft[i] for i in range(len(self.ids))],
                          [self.hard_out[i] + self.soft_out[i] for i in range(len(self.ids))])

    # ------------------------------------------------------------------ building
    def load(self, initial: dict[str, str]) -> None:
        """Set every task from the facts: done/failed/cancelled/running/retrying/pending."""
        n = len(self.ids)
        self.state = [WAITING] * n
        self.root: dict[int, int] = {}
        self.count = [0] * len(NAMES)
        self.count[WAITING] = n
        self.rem_hard = [0] * n
        self.rem_soft = [0] * n
        self.heap: list[tuple] = []
        for i in self.order:
            s = initial.get(self.ids[i], "pending")
            if s in ("done", "failed", "cancelled", "running", "retrying"):
                self._set(i, _BY_NAME[s])
                continue
            if s not in ("pending", "waiting", "ready", "blocked"):
                raise ValueError(f"task {self.ids[i]!r}: unknown initial state {s!r}")
            root = None
            for d in self.deps[i]:
                if self.state[d] in (FAILED, CANCELLED):
                    root = d
                    break
                if self.state[d] == BLOCKED:
                    root = self.root[d]
                    break
            if root is not None:
                self._set(i, BLOCKED)
                self.root[i] = root
        for i in range(n):
            self.rem_hard[i] = sum(1 for d in self.deps[i] if self.state[d] != DONE)
            self.rem_soft[i] = sum(1 for d in self.soft[i] if self.state[d] not in TERMINAL)
            if self.state[i] == WAITING and self.rem_hard[i] == 0 and self.rem_soft[i] == 0:
                self._set(i, READY)
                heapq.heappush(self.heap, self.key[i])

    def _set(self, i: int, s: int) -> None:
        self.count[self.state[i]] -= 1
        self.state[i] = s
        self.count[s] += 1

    # ------------------------------------------------------------------ queries
    def _i(self, tid: str) -> int:
        try:
            return self.index[tid]
        except KeyError:
            raise ValueError(f"unknown task {tid!r}") from None

    def state_of(self, tid: str) -> str:
        return NAMES[self.state[self._i(tid)]]

    def blocked_by(self, tid: str) -> str | None:
        r = self.root.get(self._i(tid))
        return None if r is None else self.ids[r]

    def states(self) -> dict[str, str]:
        return {tid: NAMES[s] for tid, s in zip(self.ids, self.state)}

    def counts(self) -> dict[str, int]:
        return {NAMES[s]: c for s, c in enumerate(self.count) if c}

    def n(self, state: int) -> int:
        return self.count[state]

    def is_finished(self) -> bool:
        """Nothing waiting, ready, running or retrying: the goal has ended."""
        return self.count[WAITING] + self.count[READY] + self.count[RUNNING] + self.count[RETRYING] == 0

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
        if self.files is None:
            tid = self.peek()
            return tid is not None and self.fits_budget(tid)
        # the files mutex: the best ready task whose files are free is the candidate, and it
        # must fit the budget (in priority order: a cheaper task does not jump a held one)
        busy = self._busy_files()
        for k in sorted(self.heap):
            if self.state[k[2]] == READY and self._files_free(k[2], busy):
                return self.fits_budget(self.ids[k[2]])
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
        h = self.heap
        while h and self.state[h[0][2]] != READY:
            heapq.heappop(h)
        return self.ids[h[0][2]] if h else None

    def _busy_files(self) -> list[tuple[str, ...]]:
        fs = self.files or []
        return [fs[i] for i, s in enumerate(self.state) if s == RUNNING and fs[i]]

    def _files_free(self, i: int, busy: list[tuple[str, ...]]) -> bool:
        return self.files is None or files_free(self.files[i], busy)

    def ready_ids(self) -> list[str]:
        return [self.ids[k[2]] for k in sorted(self.heap) if self.state[k[2]] == READY]

    # ------------------------------------------------------------------ transitions
    def take(self) -> str | None:
        """Pop the best ready task and mark it running (the caller is about to claim it); None
        when nothing is ready or the goal's rules (max_parallel, on_failure=stop) say wait.
        With the files mutex the best ready task whose files are free is taken; the ones it
        passes over stay ready."""
        if self.stopped or self.at_capacity():
            return None
        if self.files is None:
            tid = self.peek()
            if tid is not None and not self.fits_budget(tid):
                return None             # in priority order: a cheaper task does not jump the queue
            if tid is not None:
                heapq.heappop(self.heap)
                self._set(self.index[tid], RUNNING)
            return tid
        busy, held, tid = self._busy_files(), [], None
        while self.peek() is not None:
            k = heapq.heappop(self.heap)
            held.append(k)
            if self._files_free(k[2], busy):
                if self.fits_budget(self.ids[k[2]]):
                    held.pop()
                    tid = self.ids[k[2]]
                    self._set(k[2], RUNNING)
                break                   # taken, or held at the budget: nothing behind it jumps
        for k in held:
            heapq.heappush(self.heap, k)
        return tid

    def start(self, tid: str) -> None:
        """Somebody (maybe another worker) is running it."""
        i = self._i(tid)
        if self.state[i] in (WAITING, READY, RETRYING):
            self._set(i, RUNNING)   # a stale heap entry is skipped by peek()

    def retrying(self, tid: str) -> None:
        """The attempt failed and another one will follow after a backoff."""
        i = self._i(tid)
        if self.state[i] not in TERMINAL:
            self._set(i, RETRYING)

    def requeue(self, tid: str) -> list[tuple[str, str, str | None]]:
        """Back to ready (a released or broken claim, a finished backoff)."""
        i = self._i(tid)
        if self.state[i] in TERMINAL or self.state[i] == READY:
            return []
        if self.rem_hard[i] == 0 and self.rem_soft[i] == 0:
            self._set(i, READY)
            heapq.heappush(self.heap, self.key[i])
            return [(tid, "ready", None)]
        self._set(i, WAITING)
        return []

    def finish(self, tid: str, outcome: str) -> list[tuple[str, str, str | None]] | None:
        """Record a terminal outcome (done | failed | cancelled). Returns the changes it caused,
        [(task, new_state, root)], [] if it was already recorded, or None when the transition
        is outside the incremental rules (rebuild from the files)."""
        i = self._i(tid)
        s = _BY_NAME.get(outcome)
        if s not in (DONE, FAILED, CANCELLED):
            raise ValueError(f"task {tid!r}: {outcome!r} is not a terminal outcome")
        cur = self.state[i]
        if cur == s:
            return []
        if cur in TERMINAL:
            return None
        self._set(i, s)
        changes: list[tuple[str, str, str | None]] = [(tid, outcome, None)]
        if s == DONE:
            for d in self.hard_out[i]:
                self.rem_hard[d] -= 1
                self._check(d, changes)
        else:
            self._block_from(i, i, changes)
        for d in self.soft_out[i]:
            self.rem_soft[d] -= 1
            self._check(d, changes)
        return changes

    def _check(self, d: int, changes: list) -> None:
        if self.state[d] == WAITING and self.rem_hard[d] == 0 and self.rem_soft[d] == 0:
            self._set(d, READY)
            heapq.heappush(self.heap, self.key[d])
            changes.append((self.ids[d], "ready", None))

    def _block_from(self, i: int, root: int, changes: list) -> None:
        stack = [i]
        while stack:
            j = stack.pop()
            for d in self.hard_out[j]:
                if self.state[d] in (WAITING, READY):
                    self._set(d, BLOCKED)
                    self.root[d] = root
                    changes.append((self.ids[d], "blocked", self.ids[root]))
                    stack.append(d)
                    for sd in self.soft_out[d]:
                        self.rem_soft[sd] -= 1
                        self._check(sd, changes)

    def would_block(self, tid: str) -> list[str]:
        """The tasks finish(tid, failed|cancelled) would block now, without changing anything
        (the hooks' pending records are published before the commit point)."""
        seen: set[int] = set()
        stack = [self._i(tid)]
        out = []
        while stack:
            j = stack.pop()
            for d in self.hard_out[j]:
                if d not in seen and self.state[d] in (WAITING, READY):
                    seen.add(d)
                    out.append(self.ids[d])
                    stack.append(d)
        return out

    def failed_roots(self) -> list[str]:
        return [self.ids[i] for i in range(len(self.ids)) if self.state[i] in (FAILED, CANCELLED)]

    def not_started(self) -> Iterable[str]:
        return (self.ids[i] for i in range(len(self.ids)) if self.state[i] in (WAITING, READY, RETRYING))
