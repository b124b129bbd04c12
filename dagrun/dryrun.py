"""`dagrun run --dry-run`: what would start, in order, without starting or writing anything.

The scheduler is built from the files exactly as the engine builds it (done tasks stay done,
a failed one blocks what is below it, max_parallel and on_failure hold), then driven with
the DryRunner: up to `jobs` ready tasks "start" in the scheduler's order, every attempt
succeeds at once, and what that unlocks starts in the next wave. Reading the home writes
nothing (a home or goal that does not exist yet is not created).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import fsio, history
from . import resources as res
from . import states as S
from .errors import Refused
from .executor import Launch
from .lifecycle import ranked_scheduler, ranking_history, scheduler_for
from .plan import Plan
from .simrun import DryRunner
from .store import Home


@dataclass(frozen=True)
class Step:
    wave: int
    goal: str
    task: str
    agent: str
    workdir: str


def dry_run(home: Home, plan: Plan, *, jobs: int) -> list[Step]:
    """The order in which `dagrun run` would start plan's tasks with -j jobs, every one
    succeeding (every `when` true, every approval gate approved). A goal already under the home is taken from its files (its plan must be this
    one: a different plan would need `--replace`, which a dry run does not do)."""
    g = plan.goal
    if home.has_goal(g):
        from .edit import carry_over      # a goal that grew (fan-out, `dagrun add`) is still this plan
        old = home.load_plan(g)
        plan = carry_over(home, old, plan)
        if fsio.read_bytes(home.plan_path(g)) != plan.canonical():
            raise Refused(f"goal {g!r} already exists with a different plan; `dagrun diff {plan.source}` "
                          f"shows what a --replace would re-run")
        sched, _facts = ranked_scheduler(home, plan)
    else:                                # ranked as the engine would: the home's history too
        sched = scheduler_for(plan, durations=history.durations(plan, ranking_history(home, plan)))
        res.apply(home, plan, sched)     # the capacities and what other goals hold now
    runner = DryRunner()
    steps: list[Step] = []
    wave = 0
    while True:
        wave += 1
        started: list[tuple[str, dict]] = []
        for t in sched.expandable():     # a template: its items are unknown until `from` has run
            fe = plan.task(t).for_each
            steps.append(Step(wave, g, t, f"(fan-out: one task per item of the output of {fe['from']}, "
                                          f"at most {fe['max']})", plan.task(t).workdir))
            sched.finish(t, S.DONE)
        while len(started) < max(1, jobs) and (t := sched.take()) is not None:
            task = plan.task(t)
            launch = Launch(agent=task.agent, cwd=task.workdir, env={"DAGRUN_GOAL": g, "DAGRUN_TASK": t},
                            stdin_path=home.prompt_path(g, t), stdout_path=os.devnull, stderr_path=os.devnull,
                            run_id="", max_output=task.max_output)
            started.append((t, runner.start(launch)))
            # what a real run does instead of the agent, or first: an approval gate waits for a
            # person (approved here), a `when` is judged on outputs a dry run does not have
            what = task.agent
            if task.approval is not None:
                what = f"(approval gate, waits for: dagrun approve {g} {t})"
            elif task.when is not None:
                what = f"(if its `when` holds) {task.agent}"
            steps.append(Step(wave, g, t, what, task.workdir))
        if not started:
            return steps
        for t, h in started:
            ex = runner.poll(h)
            sched.finish(t, S.DONE if ex is not None and ex.ok else S.FAILED)
