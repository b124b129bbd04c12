"""`dagrun plan`: what a plan will take before it runs -- waves, critical path, makespan, cost.

Each task's seconds and dollars come, in this order, from
  1. its `estimate` in the plan ({"seconds": .., "usd": ..}; either may be left out),
  2. the history of this home: the median of earlier done runs of the same task id with the
     same agent command (seconds: the done attempt's duration; dollars: the usage its
     attempts reported, failed ones included),
  3. the median over every done task in the home that used the same agent command,
  4. else unknown: counted as 0 and listed, so the prediction says what it does not know.

The makespan is `dagrun simulate`'s run (simulate.py: the real scheduler -- same priority, same
critical-path-first order -- on a virtual clock) with `-j` slots (and the plan's max_parallel)
and those durations.
It ignores dispatch overhead, retries and backoffs, which the history's durations do not see.
"""
from __future__ import annotations

from .history import History, TaskGuess, guess, read_history  # noqa: F401  (re-exported)
from .plan import Plan
from .scheduler import Scheduler
from .store import Home


def waves(plan: Plan) -> list[list[str]]:
    """Tasks by depth: wave 1 has no dependencies, wave n depends on wave n-1 at the latest."""
    sched = Scheduler(plan.tasks)
    level: dict[str, int] = {}
    for t in sched.topo_ids():
        task = plan.task(t)
        level[t] = 1 + max((level[d] for d in (*task.deps, *task.soft_deps)), default=0)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=0))]
    for t in plan.ids():
        out[level[t] - 1].append(t)
    return out


def critical_path(plan: Plan, seconds: dict[str, float]) -> tuple[list[str], float]:
    best: dict[str, tuple[float, str | None]] = {}
    for t in Scheduler(plan.tasks).topo_ids():
        task = plan.task(t)
        prev, acc = None, 0.0
        for d in (*task.deps, *task.soft_deps):
            if best[d][0] > acc:
                prev, acc = d, best[d][0]
        best[t] = (acc + seconds[t], prev)
    end = max(best, key=lambda t: best[t][0])
    path, cur = [], end
    while cur is not None:
        path.append(cur)
        cur = best[cur][1]
    return path[::-1], best[end][0]


def simulate(plan: Plan, seconds: dict[str, float], slots: int) -> float:
    """Makespan of the plan on `slots` workers: `dagrun simulate`'s run (the real scheduler
    and fair share on a virtual clock) with these durations."""
    from .simulate import run
    return run([plan], slots, {plan.goal: seconds}).makespan


def predict(home: Home, plan: Plan, jobs: int | None = None) -> dict:
    hist = read_history(home)
    g = guess(plan, hist)
    seconds = {t: x.seconds for t, x in g.items()}
    j = jobs or plan.max_parallel or 4
    slots = max(1, min(j, plan.max_parallel) if plan.max_parallel else j)
    path, length = critical_path(plan, seconds)
    usd_known = [x.usd for x in g.values() if x.usd is not None]
    sources: dict[str, int] = {}
    for x in g.values():
        sources[x.source] = sources.get(x.source, 0) + 1
    return {
        "goal": plan.goal, "jobs": slots, "tasks": len(plan.tasks),
        "waves": waves(plan),
        "critical_path": {"tasks": path, "seconds": round(length, 3)},
        "makespan": round(simulate(plan, seconds, slots), 3),
        "usd": round(sum(usd_known), 6) if usd_known else None,
        "agent_seconds": round(sum(seconds.values()), 3),
        "sources": sources,
        "unknown": [t for t, x in g.items() if x.source == "unknown"],
        "estimates": {t: {"seconds": round(x.seconds, 3), "usd": None if x.usd is None else round(x.usd, 6),
                          "source": x.source} for t, x in g.items()},
    }


def predict_file(home: Home, path: str, jobs: int | None = None) -> dict:
    """`dagrun plan PLAN`: validate the plan (as submit would), then predict it."""
    from .plan import load
    return predict(home, load(path, home.root), jobs)
