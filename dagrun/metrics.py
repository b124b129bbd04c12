"""Prometheus text format (version 0.0.4) for the node exporter's textfile collector.

Where each number comes from:
- task states, ready-queue depth, running: the files, through the same scheduler code as
  `dagrun status` (a worker's --metrics refresh uses its in-memory schedulers instead: no
  rescan of the files);
- counters and histograms (blocked_total, repeat_total, task durations, generation latency,
  agent seconds, parallelism): the goals' events.jsonl, read incrementally -- a Collector
  remembers each log's offset, so a worker's periodic refresh only reads the new lines;
- dagrun_statebus_lag_ms: measured by a worker (`dagrun worker --metrics PATH`), which
  records, for every event written by another process, the time from the event's `ts` (set
  just before its write) to the moment its engine read the line (inotify wake-up + read).
  A one-shot `dagrun metrics` observes nothing, so it has no such series.

The textfile is published by rename (temp file in the same folder): the collector never
reads half a file.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import events as ev
from . import fsio
from . import states as S
from .errors import DagrunError
from .lifecycle import build_scheduler
from .scheduler import NAMES
from .store import Home, parse_iso
from .summary import ended
from .usage import by_model

DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LAG_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass
class Histogram:
    buckets: tuple
    counts: list = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self):
        self.counts = [0] * len(self.buckets)

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.total += v
        self.n += 1


@dataclass
class GoalTally:
    """Counters of one goal, accumulated from its events (incrementally)."""
    reader: ev.Reader
    blocked_total: int = 0
    repeat_total: int = 0
    started: dict = field(default_factory=dict)       # task -> attempts started
    durations: dict = field(default_factory=dict)     # outcome -> Histogram
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    agent_seconds: float = 0.0
    first_start: float | None = None
    last_end: float | None = None
    cost_usd: float = 0.0
    tokens: dict = field(default_factory=dict)        # (model, kind) -> tokens; kind: in|out|cached

    def add(self, e: dict) -> None:
        typ = e.get("type")
        if typ == ev.TASK_BLOCKED:
            self.blocked_total += 1
        if typ != ev.TASK_STATUS:
            return
        st = e.get("status")
        try:
            ts = parse_iso(str(e.get("ts")))
        except ValueError:
            return
        if st == ev.RUNNING:
            t = str(e.get("task"))
            n = self.started.get(t, 0)
            self.started[t] = n + 1
            self.repeat_total += 1 if n else 0
            self.first_start = ts if self.first_start is None else min(self.first_start, ts)
        d = e.get("duration")
        if st in (ev.DONE, ev.FAILED, ev.RETRYING) and isinstance(d, (int, float)):
            outcome = S.DONE if st == ev.DONE else S.FAILED
            self.durations.setdefault(outcome, Histogram(DURATION_BUCKETS)).observe(float(d))
            self.agent_seconds += float(d)
            self.last_end = ts if self.last_end is None else max(self.last_end, ts)
            if st == ev.DONE and isinstance(e.get("first_byte"), (int, float)):
                self.latency.observe(float(e["first_byte"]))
        if st in (ev.DONE, ev.FAILED, ev.RETRYING) and isinstance(e.get("usage"), dict):
            for model, u in by_model(e["usage"]).items():
                if not isinstance(u, dict):
                    continue
                if isinstance(u.get("cost_usd"), (int, float)):
                    self.cost_usd += float(u["cost_usd"])
                for kind in ("in", "out", "cached"):
                    v = u.get(f"tokens_{kind}")
                    if isinstance(v, int) and not isinstance(v, bool):
                        self.tokens[(str(model), kind)] = self.tokens.get((str(model), kind), 0) + v

    def parallelism(self) -> float | None:
        if self.first_start is None or self.last_end is None or self.last_end <= self.first_start:
            return None
        return self.agent_seconds / (self.last_end - self.first_start)


class Collector:
    """Metrics of every goal under a home. Keep one around to read the logs incrementally."""

    def __init__(self, home: Home):
        self.home = home
        self.tallies: dict[str, GoalTally] = {}
        self.lag: Histogram | None = None      # set by a worker that observes the bus
        self.worker: str | None = None

    def observe(self, e: dict, me: str) -> None:
        """A worker's on_event hook: the state-bus lag of another process's event."""
        if e.get("worker") == me:
            return
        a = ev.age(e)
        if a is None:
            return
        if self.lag is None:
            self.lag = Histogram(LAG_BUCKETS_MS)
            self.worker = me
        self.lag.observe(max(0.0, a) * 1000.0)     # clocks of other hosts may be a little ahead

    def _tally(self, g: str) -> GoalTally:
        t = self.tallies.get(g)
        if t is None:
            t = self.tallies[g] = GoalTally(ev.Reader(self.home.events_path(g)))
        for e in t.reader.read():
            t.add(e)
        return t

    def render(self, states: dict[str, dict[str, int]] | None = None) -> str:
        """The whole exposition. `states`: goal -> counts by state, when the caller (a worker)
        already knows them; other goals are read from the files."""
        states = dict(states or {})
        goals = self.home.goals()
        for g in list(self.tallies):
            if g not in goals:
                del self.tallies[g]
        counts: dict[str, dict[str, int]] = {}
        for g in goals:
            if g in states:
                counts[g] = states[g]
                continue
            s = ended(self.home, g)          # an ended goal: its summary.json, not its task files
            if s is not None:
                counts[g] = s["counts"]
                continue
            try:
                plan = self.home.load_plan(g)
                counts[g] = build_scheduler(self.home, plan)[0].counts()
            except DagrunError:
                continue          # a goal being replaced or removed right now: next time
        tallies = {g: self._tally(g) for g in counts}
        out = _Out()
        out.family("dagrun_tasks", "gauge", "Tasks of a goal by state (waiting, ready, running, retrying, "
                   "done, failed, cancelled, blocked).")
        for g, c in counts.items():
            for s in NAMES:
                out.sample("dagrun_tasks", {"goal": g, "state": s}, c.get(s, 0))
        out.family("dagrun_ready_queue_depth", "gauge", "Tasks of a goal whose dependencies are done, "
                   "waiting for a worker slot.")
        for g, c in counts.items():
            out.sample("dagrun_ready_queue_depth", {"goal": g}, c.get(S.READY, 0))
        out.family("dagrun_running_tasks", "gauge", "Tasks running now, over every goal of the home.")
        out.sample("dagrun_running_tasks", {}, sum(c.get(S.RUNNING, 0) for c in counts.values()))
        out.family("dagrun_goal_finished", "gauge", "1 when the goal has ended (nothing waiting, ready, "
                   "running or retrying).")
        for g, c in counts.items():
            live = sum(c.get(s, 0) for s in (S.WAITING, S.READY, S.RUNNING, S.RETRYING))
            out.sample("dagrun_goal_finished", {"goal": g}, 0 if live else 1)
        out.family("dagrun_blocked_total", "counter", "agent.task.blocked events (a failed or cancelled "
                   "dependency, a stall, ...).")
        for g, t in tallies.items():
            out.sample("dagrun_blocked_total", {"goal": g}, t.blocked_total)
        out.family("dagrun_repeat_total", "counter", "Attempts started beyond a task's first (retries, "
                   "lost claims, interrupted runs, manual retries).")
        for g, t in tallies.items():
            out.sample("dagrun_repeat_total", {"goal": g}, t.repeat_total)
        out.family("dagrun_agent_seconds_total", "counter", "Seconds agents ran, summed over ended attempts.")
        for g, t in tallies.items():
            out.sample("dagrun_agent_seconds_total", {"goal": g}, round(t.agent_seconds, 3))
        out.family("dagrun_agent_cost_usd_total", "counter", "US dollars agents reported spending "
                   "(ended attempts, failed ones included).")
        for g, t in tallies.items():
            out.sample("dagrun_agent_cost_usd_total", {"goal": g}, round(t.cost_usd, 6))
        out.family("dagrun_agent_tokens_total", "counter", "Tokens agents reported, by model and kind "
                   "(in: prompt tokens, cached ones included; out; cached).")
        for g, t in tallies.items():
            for (model, kind), n in sorted(t.tokens.items()):
                out.sample("dagrun_agent_tokens_total", {"goal": g, "model": model, "kind": kind}, n)
        out.family("dagrun_goal_parallelism", "gauge", "Achieved parallelism: agent seconds / seconds from "
                   "the first attempt's start to the last attempt's end.")
        for g, t in tallies.items():
            p = t.parallelism()
            if p is not None:
                out.sample("dagrun_goal_parallelism", {"goal": g}, round(p, 3))
        out.family("dagrun_task_duration_seconds", "histogram", "Duration of ended attempts (outcome done, "
                   "or failed for failed and retried ones).")
        for g, t in tallies.items():
            for outcome, h in sorted(t.durations.items()):
                out.histogram("dagrun_task_duration_seconds", {"goal": g, "outcome": outcome}, h)
        out.family("dagrun_generation_latency_seconds", "histogram", "From a task's claim to its agent's "
                   "first byte of output (done attempts).")
        for g, t in tallies.items():
            if t.latency.n:
                out.histogram("dagrun_generation_latency_seconds", {"goal": g}, t.latency)
        if self.lag is not None:
            out.family("dagrun_statebus_lag_ms", "histogram", "Milliseconds from an event's write (its ts) by "
                       "another process to this worker reading it.")
            out.histogram("dagrun_statebus_lag_ms", {"worker": self.worker or ""}, self.lag)
        out.family("dagrun_metrics_timestamp_seconds", "gauge", "When these metrics were computed (Unix time).")
        out.sample("dagrun_metrics_timestamp_seconds", {}, round(time.time(), 3))
        return out.text()


class _Out:
    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, typ: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {typ}")

    def sample(self, name: str, labels: dict, value) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def histogram(self, name: str, labels: dict, h: Histogram) -> None:
        for b, c in zip(h.buckets, h.counts):
            self.sample(f"{name}_bucket", {**labels, "le": _num(b)}, c)
        self.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, h.n)
        self.sample(f"{name}_sum", labels, round(h.total, 6))
        self.sample(f"{name}_count", labels, h.n)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    esc = lambda v: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')  # noqa: E731
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _num(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class WorkerMetrics:
    """`dagrun worker --metrics PATH`: the engine's tick writes the textfile every few
    seconds from its in-memory schedulers plus the new event lines; its on_event feeds the
    state-bus lag."""

    def __init__(self, home: Home, path: str, worker: str):
        self.collector = Collector(home)
        self.collector.lag = Histogram(LAG_BUCKETS_MS)     # exported from the start, count 0
        self.collector.worker = worker
        self.path = os.path.abspath(path)
        self.worker = worker

    def observe(self, e: dict) -> None:
        self.collector.observe(e, self.worker)

    def __call__(self, engine) -> None:
        states = {g: gs.sched.counts() for g, gs in engine.goals.items() if gs.sched is not None}
        # published by rename in the target's folder: the textfile collector reads *.prom
        # only, so the temporary name is never collected
        fsio.write_named(self.path, self.collector.render(states).encode())
