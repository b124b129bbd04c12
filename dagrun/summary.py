"""The aggregator: what a goal's run looked like, computed from the files alone.

Sources, all plain files: the `done` marker (the successful attempt: worker, started, ended),
`attempts/<n>.json` (every unsuccessful attempt: failed, timed out, stalled, lost, interrupted,
cancelled ...), `claim/owner.json` (an attempt running now) and events.jsonl (what the files do
not keep: how often a task was blocked, how many attempts were started over the goal's life
-- archived task folders included -- and the first-byte latency of done attempts).

`build_summary` is what lands in summary.json when the goal ends (written once, by
transitions.end_goal_if_finished); `goal_run` is the same analysis for a goal at any moment
(the report and `dagrun graph GOAL` use it on running goals too).

The critical path is the chain of dependencies with the largest sum of *actual* task spans
(a task's span: its first attempt's start to its last attempt's end, so retries and their
backoff count). Makespan is the first attempt's start to the last attempt's end; agent time
is the sum of every attempt's duration; achieved parallelism is agent time / makespan.
"""
from __future__ import annotations

import heapq
import os
import sys
import time
from dataclasses import dataclass, field

from . import events as ev
from . import bulk, fsio
from .records import NEW, plain_methods
from . import states as S
from .plan import Plan
from .scheduler import Scheduler
from .usage import add as add_usage
from .store import (
    ATTEMPTS,
    CLAIM,
    MARKERS,
    OWNER,
    Home,
    as_int,
    loads_obj,
    now_iso,
    parse_ts,
)

SLOWEST = 5


@dataclass(slots=True, init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class Attempt:
    """One attempt of a task as its files tell it."""
    task: str
    attempt: int
    outcome: str                 # done | running | failed | timeout | stalled | output_limit | lost | ...
    worker: str | None
    start: float | None          # epoch seconds; None when the files do not say (a claim lost before owner.json)
    end: float | None            # None while running
    exit_code: int | None = None
    reason: str | None = None
    usage: dict | None = None    # tokens/cost the attempt reported (usage.py)

    def __init__(self, task, attempt, outcome, worker, start, end, exit_code=None, reason=None, usage=None):
        self.task, self.attempt, self.outcome, self.worker, self.start, self.end = task, attempt, outcome, worker, start, end
        self.exit_code, self.reason, self.usage = exit_code, reason, usage

    __repr__, __eq__ = plain_methods("task", "attempt", "outcome", "worker", "start", "end", "exit_code", "reason",
                                     "usage")

    def duration(self, now: float) -> float:
        if self.start is None:
            return 0.0
        return max(0.0, (self.end if self.end is not None else now) - self.start)


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class GoalRun:
    """A goal's run so far: attempts from the files, tallies from the events."""
    plan: Plan
    order: list[str]             # the plan's ids, dependencies first (Scheduler.topo_ids)
    attempts: list[Attempt]
    now: float
    blocked_total: int = 0
    repeat_total: int = 0
    first_bytes: list[float] = field(default_factory=list)
    # spans(), window() and agent_time() once per GoalRun (built from the files, never changed
    # after): summarize asks for them several times over (window, makespan, parallelism, the
    # critical path, the slowest tasks)
    _spans: dict | None = field(default=None, init=False, repr=False, compare=False)
    _agent_time: float | None = field(default=None, init=False, repr=False, compare=False)
    _window: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, plan, order, attempts, now, blocked_total=0, repeat_total=0, first_bytes=NEW):
        self.plan, self.order, self.attempts, self.now = plan, order, attempts, now
        self.blocked_total, self.repeat_total = blocked_total, repeat_total
        self.first_bytes = [] if first_bytes is NEW else first_bytes
        self._spans = None
        self._agent_time = None
        self._window = None             # window(), once: () when no attempt was timed

    __repr__, __eq__ = plain_methods("plan", "order", "attempts", "now", "blocked_total", "repeat_total",
                                     "first_bytes")

    def by_task(self) -> dict[str, list[Attempt]]:
        out: dict[str, list[Attempt]] = {t: [] for t in self.plan.ids()}
        for a in self.attempts:
            out.setdefault(a.task, []).append(a)
        return out

    def spans(self) -> dict[str, tuple[float, float]]:
        """task -> (first start, last end) over its timed attempts."""
        if self._spans is not None:
            return self._spans
        out: dict[str, tuple[float, float]] = {}
        now = self.now
        for a in self.attempts:
            start = a.start
            if start is None:
                continue
            end = a.end
            if end is None:
                end = now
            had = out.get(a.task)
            if had is None:             # the first (most often the only) timed attempt
                out[a.task] = (start, end)
            else:
                s, e = had
                out[a.task] = (min(s, start), max(e, end))
        self._spans = out
        return out

    def window(self) -> tuple[float, float] | None:
        if self._window is not None:
            return self._window or None
        sp = self.spans().values()
        if not sp:
            self._window = ()
            return None
        w = self._window = (min([s for s, _ in sp]), max([e for _, e in sp]))
        return w

    def makespan(self) -> float:
        w = self.window()
        return round(w[1] - w[0], 3) if w else 0.0

    def agent_time(self) -> float:
        if self._agent_time is None:
            self._agent_time = round(sum(a.duration(self.now) for a in self.attempts), 3)
        return self._agent_time

    def parallelism(self) -> float | None:
        m = self.makespan()
        return round(self.agent_time() / m, 3) if m > 0 else None

    def critical_path(self) -> tuple[list[str], float]:
        """The dependency chain with the largest sum of actual spans (tasks that ran)."""
        spans = self.spans()
        best: dict[str, tuple[float, str | None]] = {}
        index = self.plan._index
        for t in self.order:
            se = spans.get(t)
            if se is None:
                continue
            prev, acc = None, 0.0
            task = index[t]
            for deps in (task.deps, task.soft_deps):
                for d in deps:
                    b = best.get(d)
                    if b is not None and b[0] > acc:
                        prev, acc = d, b[0]
            best[t] = (acc + (se[1] - se[0]), prev)
        if not best:
            return [], 0.0
        top = max(b[0] for b in best.values())      # the first in plan order of the longest
        end = next(t for t in self.plan.ids() if t in best and best[t][0] == top)
        path, cur = [], end
        while cur is not None:
            path.append(cur)
            cur = best[cur][1]
        return path[::-1], round(best[end][0], 3)

    def usage_by_task(self) -> dict[str, dict]:
        """task -> the summed usage of all its attempts (failed ones cost too)."""
        out: dict[str, dict] = {}
        for a in self.attempts:
            if a.usage:
                out[a.task] = add_usage(out.get(a.task), a.usage)
        return out

    def usage(self) -> dict | None:
        total = None
        for u in self.usage_by_task().values():
            total = add_usage(total, u)
        return total

    def slowest(self, n: int = SLOWEST) -> list[dict]:
        # the n first of the spans sorted by duration, longest first (a stable sort: ties in
        # the spans' order) -- heapq.nsmallest is that, without sorting 100 000 rows; the
        # attempts counted only for those n
        spans = self.spans()
        top = heapq.nsmallest(n, ((t, round(e - s, 3)) for t, (s, e) in spans.items()), key=_minus_duration)
        count = {t: 0 for t, _ in top}
        for a in self.attempts:
            if a.task in count:
                count[a.task] += 1
        return [{"task": t, "duration": d, "attempts": count[t]} for t, d in top]


def _minus_duration(row: tuple) -> float:
    return -row[1]


# ---------------------------------------------------------------------------------- reading
def _shared(v):
    """A worker name as one string object for all the attempts it made (a big goal has
    100 000 of them and a handful of workers)."""
    return sys.intern(v) if isinstance(v, str) else v


def _first_done(t: str, m: dict) -> Attempt:
    """The attempt a first-attempt `done` marker m tells of (its whole story)."""
    return Attempt(t, 1, S.DONE, _shared(m.get("worker")), parse_ts(m.get("started")), parse_ts(m.get("ended")),
                   m.get("exit_code"), usage=m.get("usage") if isinstance(m.get("usage"), dict) else None)


def read_attempts(home: Home, g: str, t: str) -> list[Attempt]:
    """Every attempt of one task that the files remember, in attempt order."""
    tdir = home.task_dir(g, t)
    # a task done at its first attempt is all in its `done` marker (the marker wins over
    # anything else in the folder; attempt 1 means no earlier attempts/ -- the same reading
    # as Home.task_facts(view=True)): one read, no listing of the folder
    m = loads_obj(fsio.read_bytes(os.path.join(tdir, S.DONE), follow=False))
    if m is not None and as_int(m.get("attempt")) == 1:
        return [_first_done(t, m)]
    try:
        names = set(os.listdir(tdir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: dict[int, Attempt] = {}
    if ATTEMPTS in names:
        try:
            recs = os.listdir(os.path.join(tdir, ATTEMPTS))
        except FileNotFoundError:
            recs = []
        for n in recs:
            stem, _, ext = n.partition(".")
            if ext != "json" or not stem.isdigit():
                continue
            r = loads_obj(fsio.read_bytes(os.path.join(tdir, ATTEMPTS, n), follow=False))
            if r is None:
                continue
            k = as_int(r.get("attempt")) or int(stem)
            out[k] = Attempt(t, k, str(r.get("outcome") or S.FAILED), _shared(r.get("worker")), parse_ts(r.get("started")),
                             parse_ts(r.get("ended")), r.get("exit_code"), r.get("reason"),
                             r.get("usage") if isinstance(r.get("usage"), dict) else None)
    if S.DONE in names:
        m = loads_obj(fsio.read_bytes(os.path.join(tdir, S.DONE), follow=False)) or {}
        k = as_int(m.get("attempt")) or (max(out, default=0) + 1)
        out[k] = Attempt(t, k, S.DONE, _shared(m.get("worker")), parse_ts(m.get("started")), parse_ts(m.get("ended")),
                         m.get("exit_code"), usage=m.get("usage") if isinstance(m.get("usage"), dict) else None)
    elif CLAIM in names and not any(x in names for x in MARKERS):
        o = loads_obj(fsio.read_bytes(os.path.join(tdir, CLAIM, OWNER), follow=False)) or {}
        if as_int(o.get("attempt")):
            k = as_int(o["attempt"])
            out.setdefault(k, Attempt(t, k, S.RUNNING, o.get("worker"), parse_ts(o.get("since")), None))
    return [out[k] for k in sorted(out)]


def usage_by_task(home: Home, g: str, facts: dict) -> dict[str, dict]:
    """task -> the summed usage of all its attempts, from facts read with detail
    (home.snapshot(detail=True)): the done marker's usage, plus attempts/<n>.json only for
    the tasks that have earlier attempts on record -- the same sums as
    GoalRun.usage_by_task without reading every task folder and the event log again."""
    out: dict[str, dict] = {}
    for t, f in facts.items():
        if f.extra.get("attempts"):
            for a in read_attempts(home, g, t):
                if a.usage:
                    out[t] = add_usage(out.get(t), a.usage)
        elif f.state == S.DONE and f.marker and isinstance(f.marker.get("usage"), dict):
            out[t] = add_usage(None, f.marker["usage"])
    return out


class EventTally:
    """tally_events of the lines [start, end) of a goal's events.jsonl, counted as a reader
    that goes through the log anyway hands them over (the engine's Reconciler._feed: every
    line of its goals passes there, parsed). At the goal's end tally_events(known=) then
    parses only the lines before start (those of the submit, for a `dagrun run`) and after
    end, instead of the whole log again."""

    __slots__ = ("start", "end", "blocked", "started", "first_bytes")

    def __init__(self):
        self.start: int | None = None
        self.end: int | None = None
        self.blocked = 0
        self.started: dict[str, int] = {}
        self.first_bytes: list[float] = []

    def add(self, events: list[dict], start: int, end: int) -> None:
        """events: every complete line of the log in [start, end), parsed, in order."""
        if start != self.end:         # the first lines, or the reader was moved: count from here
            self.__init__()
            self.start = start
        self.end = end
        if events:
            _count(events, self)


def _count(events, t: EventTally) -> None:
    blocked, started, first_bytes = 0, t.started, t.first_bytes
    BLOCKED, STATUS, RUNNING, DONE = ev.TASK_BLOCKED, ev.TASK_STATUS, ev.RUNNING, ev.DONE
    for e in events:
        typ = e.get("type")
        if typ == STATUS:
            st = e.get("status")
            if st == RUNNING:
                k = e.get("task")
                if k.__class__ is not str:         # (a hand-written line's; str() of a str is itself)
                    k = str(k)
                started[k] = started.get(k, 0) + 1
            elif st == DONE:
                fb = e.get("first_byte")
                if fb is not None and isinstance(fb, (int, float)):
                    first_bytes.append(float(fb))
        elif typ == BLOCKED:
            blocked += 1
    t.blocked += blocked


def tally_events(path: str, known: EventTally | None = None) -> dict:
    """What only the event log knows: blocked events, attempts started (repeats), first-byte
    latencies of done attempts. known: the tally of a part of the log its caller has read
    already (EventTally): only the lines before and after that part are read here -- the
    same numbers as a read of the whole log, which is what happens when the part's edges are
    not where lines begin (or the log is shorter than the part)."""
    parts: tuple = ()
    if known is not None and known.start is not None and ev.at_line_start(path, known.start) \
            and ev.at_line_start(path, known.end):
        head, tail = EventTally(), EventTally()
        _count(ev.iter_all(path, stop=known.start), head)
        _count(ev.iter_all(path, start=known.end), tail)
        parts = (head, known, tail)
    else:
        whole = EventTally()
        _count(ev.iter_all(path), whole)      # streamed: a big goal's log never sits in memory whole
        parts = (whole,)
    blocked, started, first_bytes = 0, {}, []
    for p in parts:
        blocked += p.blocked
        for t, n in p.started.items():
            started[t] = started.get(t, 0) + n
        first_bytes += p.first_bytes
    return {"blocked_total": blocked, "repeat_total": sum(n - 1 for n in started.values()),
            "first_bytes": first_bytes}


def goal_run(home: Home, plan: Plan, sched: Scheduler, now: float | None = None, facts: dict | None = None,
             tally: EventTally | None = None) -> GoalRun:
    """facts: the goal's task facts as Home.snapshot(detail=True, view=True) read them a
    moment ago (the engine's end of a goal, which reads them for the status snapshot anyway):
    a task whose facts hold a first-attempt `done` marker is taken from it -- exactly what
    read_attempts makes of that marker -- instead of reading the marker again; every other
    task is read from its files. tally: the part of the event log the caller has counted
    (tally_events)."""
    with bulk.paused():
        return _goal_run(home, plan, sched, now, facts, tally)


def _goal_run(home: Home, plan: Plan, sched: Scheduler, now: float | None, facts: dict | None = None,
              tally: EventTally | None = None) -> GoalRun:
    g = plan.goal
    attempts: list[Attempt] = []
    present: set | None = None      # tasks/ listed once, when a task is not in the facts' markers
    DONE = S.DONE
    add, intern = attempts.append, sys.intern
    for t in plan.ids():
        if facts is not None:
            f = facts.get(t)
            m = f.marker if f is not None and f.state == DONE else None
            if isinstance(m, dict) and as_int(m.get("attempt")) == 1:
                # _first_done(t, m), inlined: a 100 000-task goal's end makes 100 000 of them
                w, u = m.get("worker"), m.get("usage")
                add(Attempt(t, 1, DONE, intern(w) if w.__class__ is str else _shared(w), parse_ts(m.get("started")),
                            parse_ts(m.get("ended")), m.get("exit_code"), None, u if isinstance(u, dict) else None))
                continue
        if present is None:
            try:
                present = set(os.listdir(home.tasks_dir(g)))
            except FileNotFoundError:
                present = set()
        if t in present:
            attempts.extend(read_attempts(home, g, t))
    tl = tally_events(home.events_path(g), tally)
    return GoalRun(plan, sched.topo_ids(), attempts, time.time() if now is None else now,
                   blocked_total=tl["blocked_total"], repeat_total=tl["repeat_total"],
                   first_bytes=tl["first_bytes"])


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def summarize(run: GoalRun, counts: dict[str, int], blocked: list[dict], failed_roots: list[str],
              skipped: list[dict] | None = None) -> dict:
    plan = run.plan
    # done: every task done or skipped (a false condition, or its trigger rule) -- nothing failed
    outcome = S.DONE if counts.get(S.DONE, 0) + counts.get(S.SKIPPED, 0) == len(plan.tasks) else S.FAILED
    w = run.window()
    path, length = run.critical_path()
    by_outcome: dict[str, int] = {}
    for a in run.attempts:
        by_outcome[a.outcome] = by_outcome.get(a.outcome, 0) + 1
    return {
        "goal": plan.goal, "outcome": outcome, "finished": now_iso(run.now), "tasks": len(plan.tasks),
        "source": plan.source, "counts": counts, "failed_roots": failed_roots, S.BLOCKED: blocked,
        **({S.SKIPPED: skipped} if skipped else {}),
        "started": now_iso(w[0]) if w else None, "ended": now_iso(w[1]) if w else None,
        "makespan": run.makespan(), "agent_time": run.agent_time(), "parallelism": run.parallelism(),
        "critical_path": {"tasks": path, "duration": length},
        "attempts": len(run.attempts), "attempts_by_outcome": by_outcome,
        "repeat_total": run.repeat_total, "blocked_total": run.blocked_total,
        "slowest": run.slowest(),
        "generation_latency": {"p50": _pct(run.first_bytes, 0.5), "max": _pct(run.first_bytes, 1.0)},
        "workers": sorted({a.worker for a in run.attempts if a.worker}),
        "usage": run.usage(), "usage_by_task": run.usage_by_task(),
    }


def build_summary(home: Home, plan: Plan, sched: Scheduler, run: GoalRun | None = None,
                  facts: dict | None = None, tally: EventTally | None = None) -> dict:
    """summary.json of the goal as the scheduler sees it (`run`: already read by the caller;
    `facts`: the task facts just read, `tally`: the events counted, see goal_run)."""
    states = sched.states()
    failed_roots = [t for t in plan.ids() if states[t] in (S.FAILED, S.CANCELLED)]
    blocked = [{"task": t, "blocked_by": sched.blocked_by(t)} for t in plan.ids() if states[t] == S.BLOCKED]
    skipped = [{"task": t, **({"skipped_by": sched.blocked_by(t)} if sched.blocked_by(t) else {})}
               for t in plan.ids() if states[t] == S.SKIPPED]
    out = summarize(run or goal_run(home, plan, sched, facts=facts, tally=tally), sched.counts(), blocked, failed_roots, skipped)
    grown = {t.id: {"from": t.for_each["from"], "instances": t.fanout} for t in plan.tasks if t.for_each}
    if grown:                       # fan-out templates: what each became
        out["templates"] = grown
    added = [t.id for t in plan.tasks if t.origin and t.origin.get("edit") == "add"]
    if added:                       # tasks `dagrun add` put in
        out["added"] = added
    return out


# events that change what a goal's tasks are: after one of these, summary.json no longer tells
# the goal's state (e.g. a retry whose summary.json removal a crash cut off)
_REOPENING = (ev.TASK_STATUS.encode(), ev.PLAN_REPLACED.encode())


def ended(home: Home, g: str) -> dict | None:
    """The summary.json of goal g if the goal has ended and nothing reopened it since: no
    task or plan event was appended after the summary was taken ("events_size", the size of
    events.jsonl then; only the tail past it is read). None otherwise -- the goal's state is
    then to be computed from its task files. Cheap: two small reads, whatever the goal's size."""
    s = loads_obj(fsio.read_bytes(home.summary_path(g)))
    if s is None or not isinstance(s.get("counts"), dict) or not isinstance(s.get("tasks"), int):
        return None
    at = s.get("events_size")
    if not isinstance(at, int) or at < 0:
        return None                     # written by an older dagrun: cannot tell
    try:
        with open(home.events_path(g), "rb") as f:
            f.seek(at)
            tail = f.read()
    except OSError:
        return None
    if any(k in tail for k in _REOPENING):
        return None
    return s
