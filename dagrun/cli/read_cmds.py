"""status, output, logs."""
from __future__ import annotations

import os
import sys
import time

import typer

from . import app
from .common import console, fmt_duration, home_of, is_tty, plain_table, print_json


@app.command()
def status(ctx: typer.Context,
           goal: str = typer.Argument(None, help="A goal id (default: a table of every goal)."),
           json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """A table of goals, or one goal's tasks with state, attempt, worker, start and duration."""
    from ..status import goal_detail, goal_overview
    from ..plan import check_id

    home = home_of(ctx)
    if goal is None:
        rows = [goal_overview(home, g) for g in home.goals()]
        if json:
            print_json({"goals": rows})
            return
        if not rows:
            print(f"no goals under {home.root}", file=sys.stderr)
            return
        table = [[r["goal"], r["state"], f"{r['counts'].get('done', 0)}/{r['tasks']}",
                  " ".join(f"{k}:{v}" for k, v in r["counts"].items() if k != "done")] for r in rows]
        _table(table, ["GOAL", "STATE", "DONE", "OTHER"])
        return
    check_id("goal", goal)
    d = goal_detail(home, goal)
    if json:
        print_json(d)
        return
    table = []
    for r in d["tasks"]:
        state = r["state"]
        if state == "blocked" and r.get("blocked_by"):
            state = f"blocked by {r['blocked_by']}"
        started = (r.get("started") or "-")[:19].replace("T", " ")
        note = r.get("reason") or ""
        if r.get("retry_at"):
            note = f"retry at {r['retry_at'][11:19]}: {note}"
        table.append([r["task"], state, str(r["attempt"] or "-"), r.get("worker") or "-", started,
                      fmt_duration(r.get("duration")), note[:60]])
    _table(table, ["TASK", "STATE", "ATTEMPT", "WORKER", "STARTED", "DURATION", "NOTE"])
    c = d["counts"]
    print(f"goal {goal}: {d['state']} (" + ", ".join(f"{v} {k}" for k, v in c.items()) + ")")
    for line in _summary_lines(d.get("summary")):
        print("  " + line)


def _summary_lines(s: dict | None) -> list[str]:
    """summary.json (written when the goal ended) in three lines."""
    if not s or s.get("makespan") is None:
        return []
    par = f"{s['parallelism']:.2f}" if s.get("parallelism") else "-"
    out = [f"makespan {fmt_duration(s['makespan'])}, agent time {fmt_duration(s.get('agent_time'))}, "
           f"parallelism {par}, repeats {s.get('repeat_total', 0)}, blocked {s.get('blocked_total', 0)}"]
    cp = s.get("critical_path") or {}
    if cp.get("tasks"):
        out.append(f"critical path {' -> '.join(cp['tasks'])} ({fmt_duration(cp.get('duration'))})")
    if s.get("slowest"):
        out.append("slowest: " + ", ".join(f"{r['task']} {fmt_duration(r['duration'])}" +
                                           (f" ({r['attempts']} attempts)" if r.get("attempts", 1) > 1 else "")
                                           for r in s["slowest"][:3]))
    return out


def _table(rows, header):
    if not is_tty():
        plain_table(rows, header)
        return
    from rich.table import Table
    t = Table(box=None, header_style="bold", pad_edge=False)
    for h in header:
        t.add_column(h)
    for r in rows:
        t.add_row(*[str(v) for v in r])
    console().print(t)


def _task_args(ctx, goal: str, task: str):
    from ..errors import NotFound
    from ..plan import check_id

    check_id("goal", goal)
    check_id("task", task)
    home = home_of(ctx)
    plan = home.load_plan(goal)
    if not plan.has(task) and not os.path.isdir(home.task_dir(goal, task)):
        raise NotFound(f"goal {goal!r} has no task {task!r}")
    return home


@app.command()
def output(ctx: typer.Context,
           goal: str = typer.Argument(..., help="Goal id."),
           task: str = typer.Argument(..., help="Task id.")):
    """Print a done task's output (what its agent wrote to stdout)."""
    from ..errors import NotFound
    from ..lifecycle import marker_of

    home = _task_args(ctx, goal, task)
    m = marker_of(home, goal, task)
    if m != "done":
        state = m or ("running" if os.path.isdir(home.claim_dir(goal, task)) else "not done")
        raise NotFound(f"{goal}/{task} has no output: it is {state}")
    data = home.read_task_file(home.output_path(goal, task))
    sys.stdout.buffer.write(data or b"")
    sys.stdout.flush()


@app.command()
def logs(ctx: typer.Context,
         goal: str = typer.Argument(..., help="Goal id."),
         task: str = typer.Argument(..., help="Task id."),
         attempt: int = typer.Option(None, "--attempt", min=1, help="A given attempt (default: the latest)."),
         stdout: bool = typer.Option(False, "--stdout", help="Show the attempt's stdout instead of its stderr."),
         follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing while the attempt runs.")):
    """Print a task's stderr (the running attempt's, or the latest finished one's)."""
    from ..errors import NotFound
    from ..lifecycle import latest_attempt

    home = _task_args(ctx, goal, task)
    n = attempt or latest_attempt(home, goal, task)[0]
    if not n:
        raise NotFound(f"{goal}/{task} has not started yet: no logs")
    path = home.attempt_path(goal, task, n, "out" if stdout else "err")
    fd = home.open_task_file(path)            # follows no symlink out of the home
    if fd is None and stdout:
        fd = home.open_task_file(home.output_path(goal, task))
    if fd is None:
        raise NotFound(f"{goal}/{task}: attempt {n} has no {'stdout' if stdout else 'stderr'} file")
    out = sys.stdout.buffer
    with os.fdopen(fd, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(chunk)
                continue
            out.flush()
            if not follow or not os.path.isdir(home.claim_dir(goal, task)):
                break
            time.sleep(0.2)
