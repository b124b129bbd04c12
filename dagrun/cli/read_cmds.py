"""status, show, output, logs."""
from __future__ import annotations

import os
import sys
import time

import typer

from . import app
from .common import (GOAL_ARG, INSPECT, JSON_OPT, TASK_ARG, clip, columns, complete_goal, examples, fmt_duration,
                     home_of, is_tty, print_json, term_width, use_color)
from .live import COLOURS


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun status                  # every goal: state, done/total",
    "dagrun status add-auth         # one goal's tasks (fits the terminal; coloured)",
    "dagrun status add-auth --json | jq '.tasks[] | select(.state==\"failed\")'"))
def status(ctx: typer.Context,
           goal: str = typer.Argument(None, metavar="GOAL", help="A goal id (default: a table of every goal).",
                                      autocompletion=complete_goal),
           json: bool = JSON_OPT):
    """A table of goals, or one goal's tasks with state, attempt, worker, start and duration.
    On a terminal the table is cut to its width and states are coloured; elsewhere plain
    aligned columns (awk-able)."""
    from ..bulk import one_shot
    from ..status import goal_detail, goal_detail_json, goal_overview
    from ..plan import check_id
    from ..usage import fmt as fmt_usage

    one_shot()

    home = home_of(ctx)
    tty = is_tty()
    width = term_width() if tty else None
    colour = use_color()
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
        for line in columns(table, ["GOAL", "STATE", "DONE", "OTHER"], width=width, shrink=[(3, 8), (0, 12), (3, 0), (0, 4)],
                            colours=[COLOURS.get(r["state"]) for r in rows], colour_col=1, on=colour):
            print(line)
        return
    check_id("goal", goal)
    if json:
        sys.stdout.buffer.write(goal_detail_json(home, goal))
        sys.stdout.flush()
        return
    d = goal_detail(home, goal)
    table, states = [], []
    usage = d.get("usage")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    for r in d["tasks"]:
        state = r["state"]
        states.append(COLOURS.get(state))
        if state == "blocked" and r.get("blocked_by"):
            state = f"blocked by {r['blocked_by']}"
        if r.get("timeout_at"):
            r = {**r, "reason": f"{r.get('reason') or ''} (rejected at {r['timeout_at'][11:19]} unless decided)"}
        started = r.get("started") or ""
        if not started:
            started = "-"
        elif started[:10] == today:
            started = started[11:19]                   # UTC, like the event log
        else:
            started = started[5:10] + " " + started[11:16]
        note = r.get("reason") or ("cached" if r.get("cached") else "")
        if r.get("template") and not note:
            n = r["template"]["instances"]
            note = f"for_each {r['template']['from']}: " + (f"{n} instance{'s' if n != 1 else ''}" if n is not None
                                                             else "not expanded yet")
        elif r.get("added_by") and not note:
            note = f"added by {r['added_by']}"
        if r.get("retry_at"):
            note = f"retry at {r['retry_at'][11:19]}: {note}"
        if r.get("runner") and not note:     # a running cluster attempt: its remote id
            note = f"slurm job {r['job']}" if r.get("job") else f"ray task {str(r.get('task_id', ''))[:16]}"
        who = (r.get("worker") or "-") + (f"@{r['node']}" if r.get("node") else "")   # a cluster node
        row = [r["task"], state, str(r["attempt"] or "-"), who, started,
               fmt_duration(r.get("duration"))]
        if usage:                    # only goals whose agents report usage get the column
            row.append(fmt_usage(r.get("usage")))
        table.append(row + [" ".join(note.split())])
    # on a terminal, what gives way: a long note, the worker, the state's "by X", a long task
    # id (down to 16), then the note and the task id further (the usage column, when there is
    # one, keeps its place before the note and gives way last)
    n = 7 if usage else 6
    shrink = [(n, 24), (3, 8), (1, 12), (0, 16), (n, 12), (0, 8), (n, 4), (3, 4), (n, 0)]
    for line in columns(table, ["TASK", "STATE", "TRY", "WORKER", "STARTED", "TIME"] + (["USAGE"] if usage else [])
                        + ["NOTE"], width=width, shrink=shrink + ([(6, 8)] if usage else []),
                        colours=states, colour_col=1, on=colour):
        print(line)
    c = d["counts"]
    fit = (lambda s: clip(s, width)) if width else (lambda s: s)
    print(fit(f"goal {goal}: {d['state']} (" + ", ".join(f"{v} {k}" for k, v in c.items()) + ")"))
    if usage:
        print(fit(f"  usage {fmt_usage(usage)}"))
    if d.get("budget"):
        from ..budget import fmt as fmt_budget
        b = d["budget"]
        print(fit(f"  budget: spent {fmt_budget(b['spent'], b['pool'])} of {fmt_budget(b['pool'])}"
                  + (f"; held: {' '.join(b['held'])} (dagrun budget {goal} --add N)" if b["held"] else "")))
    for line in _summary_lines(d.get("summary")):
        print(fit("  " + line))
    hf = d.get("hook_failure")
    if hf:
        where = f"{goal}/{hf['task']}" if hf.get("task") else goal
        print(fit(f"  last hook failure {hf.get('ts', '')[:19]}: {hf.get('hook_event')} of {where} "
                  f"({hf.get('hook')}): {hf.get('reason')}"))


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


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun show release merge            # an approval gate: its question and the upstream outputs",
    "dagrun show release fix --json | jq .when"))
def show(ctx: typer.Context,
         goal: str = GOAL_ARG,
         task: str = TASK_ARG,
         json: bool = JSON_OPT):
    """One task: its state (and why), dependencies and their states, trigger rule and
    condition; for an approval gate the question, its deadline, the rendered prompt with the
    upstream outputs, and the commands that decide it."""
    from json import dumps

    from ..status import task_detail

    d = task_detail(home_of(ctx), goal, task)
    if json:
        print_json(d)
        return
    lines = [f"{goal}/{task}: {d['state']}" + (f" -- {d['reason']}" if d.get("reason") else "")]
    for k in ("blocked_by", "skipped_by", "decided_by", "decided_at", "timeout_at", "worker", "started"):
        if d.get(k):
            lines.append(f"  {k}: {d[k]}")
    if d["deps"]:
        lines.append("  deps: " + ", ".join(f"{x} ({s})" for x, s in d["deps"].items()))
    if d["soft_deps"]:
        lines.append("  soft_deps: " + ", ".join(f"{x} ({s})" for x, s in d["soft_deps"].items()))
    if d["trigger"] != "all_success":
        lines.append(f"  trigger: {d['trigger']}")
    if d.get("when") is not None:
        lines.append(f"  when: {dumps(d['when'])}")
    if d.get("approval"):
        lines.append(f"  approval: {d['approval']['prompt']}")
    for c in d.get("commands") or ():
        lines.append(f"  decide: {c}")
    print("\n".join(lines))
    if d.get("prompt_md") is not None:
        print("--- prompt.md " + "-" * 40)
        sys.stdout.write(d["prompt_md"] if d["prompt_md"].endswith("\n") else d["prompt_md"] + "\n")


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun output add-auth review",
    "dagrun output add-auth implement > implement.md"))
def output(ctx: typer.Context,
           goal: str = GOAL_ARG,
           task: str = TASK_ARG):
    """Print a done task's output (what its agent wrote to stdout)."""
    from ..status import task_output

    sys.stdout.buffer.write(task_output(home_of(ctx), goal, task))
    sys.stdout.flush()


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun logs add-auth implement            # stderr of the running or latest attempt",
    "dagrun logs add-auth implement -f         # keep printing while it runs",
    "dagrun logs add-auth test --attempt 1 --stdout"))
def logs(ctx: typer.Context,
         goal: str = GOAL_ARG,
         task: str = TASK_ARG,
         attempt: int = typer.Option(None, "--attempt", min=1, metavar="N", help="A given attempt (default: the latest)."),
         stdout: bool = typer.Option(False, "--stdout", help="Show the attempt's stdout instead of its stderr."),
         follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing while the attempt runs.")):
    """Print a task's stderr (the running attempt's, or the latest finished one's). An
    attempt that wrote nothing prints nothing (exit 0)."""
    from ..status import log_paths

    home = home_of(ctx)
    paths, n, name = log_paths(home, goal, task, attempt=attempt, stdout=stdout)
    fd = None
    for p in paths:
        fd = home.open_task_file(p)            # follows no symlink out of the home
        if fd is not None:
            break
    if fd is None:
        if is_tty(sys.stderr):
            print(f"dagrun: {goal}/{task}: attempt {n} wrote no {name}", file=sys.stderr)
        return
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
