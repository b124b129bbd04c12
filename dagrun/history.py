"""How long tasks took in this home: the durations (and costs) of done runs, for ranking
ready tasks (the scheduler's remaining path in seconds), for `dagrun plan` and for
`dagrun simulate`.

A task's guess comes, in this order, from
  1. its `estimate` in the plan ({"seconds": .., "usd": ..}; either may be left out),
  2. the median of earlier done runs of the same task id with the same agent command in
     this home (seconds: the done attempt's duration; dollars: the usage its attempts
     reported, failed ones included),
  3. the median over every done task in the home that used the same agent command,
  4. else unknown (`dagrun plan` counts it as 0 and lists it; the scheduler uses 1 s).

Reading is one pass over the done markers of the goals under the home (the same files a
rescan reads); an engine reads it once and then adds what its events feed tells it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import fsio
from .records import NEW, plain_methods
from .errors import DagrunError
from .plan import Plan
from .store import Home, loads_obj
from .summary import read_attempts

UNKNOWN_SECONDS = 1.0      # the scheduler's duration of a task nothing is known about


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class History:
    """Durations and costs of done tasks in a home, by (task id, agent) and by agent."""
    by_task: dict[tuple[str, str], list[tuple[float, float | None]]] = field(default_factory=dict)
    by_agent: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)

    def __init__(self, by_task=NEW, by_agent=NEW):
        self.by_task = {} if by_task is NEW else by_task
        self.by_agent = {} if by_agent is NEW else by_agent

    __repr__, __eq__ = plain_methods("by_task", "by_agent")

    def add(self, task: str, agent: str, seconds: float, usd: float | None) -> None:
        self.by_task.setdefault((task, agent), []).append((seconds, usd))
        self.by_agent.setdefault(agent, []).append((seconds, usd))


def read_history(home: Home, *, costs: bool = True) -> History:
    """costs=False skips the attempt records (the dollars): what the scheduler needs."""
    h = History()
    for g in home.goals():
        try:
            present = set(os.listdir(home.tasks_dir(g)))
        except OSError:
            continue
        if not present:            # nothing ran yet (a goal just submitted, maybe of 100 000 tasks):
            continue               # neither its plan nor 100 000 missing markers need reading
        try:
            plan = home.load_plan(g)
        except DagrunError:
            continue
        for t in plan.tasks:
            if t.id not in present:
                continue
            done = loads_obj(fsio.read_bytes(os.path.join(home.task_dir(g, t.id), "done"), follow=False))
            if not done or not isinstance(done.get("duration"), (int, float)) or done.get("cached"):
                continue
            usd = None
            if costs:
                for a in read_attempts(home, g, t.id):
                    c = (a.usage or {}).get("cost_usd")
                    if isinstance(c, (int, float)):
                        usd = (usd or 0.0) + float(c)
            h.add(t.id, t.agent, float(done["duration"]), usd)
    return h


def _median(xs: list[float]) -> float | None:
    """statistics.median, without importing statistics (fractions, decimal: ~3 ms of every
    engine start)."""
    if not xs:
        return None
    s, n = sorted(xs), len(xs)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class TaskGuess:
    """A task's expected seconds and cost, and where the guess came from."""
    seconds: float
    usd: float | None
    source: str              # estimate | history | agent-median | unknown

    def __init__(self, seconds, usd, source):
        self.seconds, self.usd, self.source = seconds, usd, source

    __repr__, __eq__ = plain_methods("seconds", "usd", "source")


def guess(plan: Plan, hist: History) -> dict[str, TaskGuess]:
    out = {}
    medians: dict = {}      # by agent: the medians of the agent's runs, worked out once per plan
    for t in plan.tasks:
        runs = hist.by_task.get((t.id, t.agent)) or []
        src = "history" if runs else None
        if runs:
            sec = _median([s for s, _ in runs]) if t.estimate_seconds is None else None
            usd = _median([u for _, u in runs if u is not None]) if t.estimate_usd is None else None
        else:
            runs = hist.by_agent.get(t.agent) or []
            src = "agent-median" if runs else "unknown"
            if t.agent not in medians:
                medians[t.agent] = (_median([s for s, _ in runs]), _median([u for _, u in runs if u is not None]))
            sec, usd = medians[t.agent]
        sec = t.estimate_seconds if t.estimate_seconds is not None else sec
        usd = t.estimate_usd if t.estimate_usd is not None else usd
        if t.estimate_seconds is not None:
            src = "estimate"
        out[t.id] = TaskGuess(float(sec) if sec is not None else 0.0, usd, src if sec is not None else "unknown")
    return out


def durations(plan: Plan, hist: History | None = None) -> dict[str, float]:
    """task -> seconds for the scheduler's ranking: estimate, history, agent median, else 1."""
    if hist is None:
        return {t.id: float(t.estimate_seconds) if t.estimate_seconds is not None else UNKNOWN_SECONDS
                for t in plan.tasks}
    out = {}
    medians: dict = {}
    for t in plan.tasks:
        if t.estimate_seconds is not None:
            out[t.id] = float(t.estimate_seconds)
            continue
        runs = hist.by_task.get((t.id, t.agent))
        if runs:
            out[t.id] = float(_median([s for s, _ in runs]))
            continue
        if t.agent not in medians:
            m = _median([s for s, _ in hist.by_agent.get(t.agent) or []])
            medians[t.agent] = float(m) if m is not None else UNKNOWN_SECONDS
        out[t.id] = medians[t.agent]
    return out
