"""`dagrun simulate`: the real scheduling code against a virtual clock.

Each plan gets the scheduler the engine would build for it (lifecycle.scheduler_for: same
capacity rules, priorities, aging and remaining-path order, same durations), the worker's
slots are filled through the same scheduler.FairShare.take as Engine._dispatch, and the
attempts "run" in simrun.SimRunner for the seconds history.guess predicts (the plan's
`estimate`, the home's history, the agent's median; 1 s when nothing is known). The clock
jumps from one attempt's end to the next, so a 300-task plan is simulated in milliseconds.

It predicts a fresh run of the plans (every task once, every attempt succeeding). It does not
see dispatch overhead beyond `overhead` seconds per attempt, retries, backoffs or other
workers; a budget's spend grows by the tasks' usd estimates. Reads the home's history;
writes nothing.
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from typing import Sequence

from . import history
from . import plan as planmod
from . import states as S
from .errors import UsageError
from .executor import Launch
from .lifecycle import scheduler_for
from .plan import Plan
from .scheduler import FairShare
from .simrun import SimRunner, VirtualClock
from .store import Home


@dataclass(frozen=True)
class Bar:
    """One simulated attempt: where (slot) and when (virtual seconds from the start)."""
    goal: str
    task: str
    slot: int
    start: float
    end: float


@dataclass
class Result:
    jobs: int
    makespan: float
    bars: list[Bar]
    critical_path: float             # the longest chain of durations (+ overhead) of any goal
    work: float                      # every attempt's seconds summed
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    not_started: list[str] = field(default_factory=list)    # goal/task the rules held (budget, stop)
    per_goal: list[tuple[float, int]] = field(default_factory=list)   # (work, slots it may use)

    @property
    def lower_bound(self) -> float | None:
        """No schedule on `jobs` slots is shorter: max(critical path, work / jobs, each
        goal's work / the slots its max_parallel lets it use). None when the plans' rules held
        tasks back (then not every task ran)."""
        if self.not_started:
            return None
        return max([self.critical_path, self.work / self.jobs] + [w / n for w, n in self.per_goal])

    def to_dict(self) -> dict:
        return {
            "jobs": self.jobs, "makespan": round(self.makespan, 3),
            "critical_path": round(self.critical_path, 3), "work": round(self.work, 3),
            "lower_bound": None if self.lower_bound is None else round(self.lower_bound, 3),
            "goals": sorted(self.seconds),
            "tasks": [{"goal": b.goal, "task": b.task, "slot": b.slot, "start": round(b.start, 3),
                       "end": round(b.end, 3), "source": self.sources.get(b.goal, {}).get(b.task, "given")}
                      for b in self.bars],
            "unknown": [f"{g}/{t}" for g, src in sorted(self.sources.items()) for t, s in src.items()
                        if s == "unknown"],
            "not_started": self.not_started,
        }


def run(plans: Sequence[Plan], jobs: int, seconds: dict[str, dict[str, float]], *,
        overhead: float = 0.0, sources: dict[str, dict[str, str]] | None = None) -> Result:
    """Simulate plans (distinct goals) on one worker with `jobs` slots; seconds: goal ->
    task -> duration (every task). Deterministic: the same input gives the same schedule."""
    jobs = max(1, int(jobs))
    goals = [p.goal for p in plans]
    if len(set(goals)) != len(goals):
        raise UsageError("simulate: two plans have the same goal id; give each its own \"goal\"")
    clock = VirtualClock()
    by_goal = {p.goal: p for p in plans}
    dur = {g: {t: float(seconds[g][t]) + overhead for t in seconds[g]} for g in goals}
    scheds = {p.goal: scheduler_for(p, durations=dur[p.goal], clock=clock, hold_templates=False) for p in plans}
    runner = SimRunner(clock, lambda launch: dur[launch.env["DAGRUN_GOAL"]][launch.env["DAGRUN_TASK"]])
    share = FairShare()
    runs: dict[str, tuple[str, str, dict, float, int]] = {}   # key -> goal, task, handle, start, slot
    mine = {g: 0 for g in goals}
    free = list(range(jobs))
    bars: list[Bar] = []
    spent = {g: 0.0 for g in goals}
    while True:
        while len(runs) < jobs:
            nxt = share.take({g: (scheds[g], mine[g], by_goal[g].weight) for g in goals})
            if nxt is None:
                break
            g, t = nxt
            task = by_goal[g].task(t)
            h = runner.start(Launch(agent=task.agent, cwd=task.workdir, env={"DAGRUN_GOAL": g, "DAGRUN_TASK": t},
                                    stdin_path=os.devnull, stdout_path=os.devnull, stderr_path=os.devnull,
                                    run_id=f"sim-{g}-{t}"))
            runs[runner.key(h)] = (g, t, h, clock.now, heapq.heappop(free))
            mine[g] += 1
        if not runs:
            break
        clock.advance(runner.wakeup().timeout or 0.0)
        for k in list(runs):
            g, t, h, t0, slot = runs[k]
            ex = runner.poll(h)
            if ex is None:
                continue
            del runs[k]
            mine[g] -= 1
            heapq.heappush(free, slot)
            bars.append(Bar(g, t, slot, t0, clock.now))
            scheds[g].finish(t, S.DONE if ex.ok else S.FAILED)
            plan = by_goal[g]
            if plan.budget:            # the spend grows by the task's usd estimate
                spent[g] += plan.task(t).estimate_usd or 0.0
                scheds[g].set_budget(plan.budget, {"usd": spent[g]})
    held = [f"{g}/{t}" for g in goals for t in scheds[g].not_started()]
    bars.sort(key=lambda b: (b.start, b.slot))
    return Result(jobs=jobs, makespan=clock.now, bars=bars,
                  critical_path=max((max(s.rank, default=0.0) for s in scheds.values()), default=0.0),
                  work=sum(sum(d.values()) for d in dur.values()),
                  per_goal=[(sum(dur[p.goal].values()), min(jobs, p.max_parallel or jobs)) for p in plans],
                  seconds=seconds, sources=sources or {}, not_started=held)


def simulate_files(home: Home, paths: Sequence[str], jobs: int, *, overhead: float = 0.0) -> Result:
    """`dagrun simulate PLAN... -j N`: validate the plans (as submit would), guess every
    task's seconds from the plan and this home's history, simulate."""
    plans = [planmod.load(p, home.root) for p in paths]
    hist = history.read_history(home, costs=False)
    seconds, sources = {}, {}
    for p in plans:
        guesses = history.guess(p, hist)
        seconds[p.goal] = history.durations(p, hist)
        sources[p.goal] = {t: x.source for t, x in guesses.items()}
    return run(plans, jobs, seconds, overhead=overhead, sources=sources)
