"""validate, schema, submit, diff, plan, add."""
from __future__ import annotations

import os
import re
import sys

import typer

from . import app
from .common import JSON_OPT, PLAN_ARG, PLAN_TOOLS, examples, home_of, print_json


@app.command(rich_help_panel=PLAN_TOOLS, epilog=examples(
        "dagrun validate dag.json",
        "dagrun validate dag.json --json | jq .error     # {\"ok\": false, \"error\": ..., \"line\": 14, \"path\": ...}"))
def validate(ctx: typer.Context,
             plan: str = PLAN_ARG,
             json: bool = JSON_OPT):
    """Check a plan (and, with a code workspace, its git repository, base and clean work
    tree); exit 0 if it is valid, 2 with the problem otherwise. Writes nothing. Warns
    (stderr) about agents whose command is not on PATH."""
    from ..agentcheck import plan_warnings
    from ..bulk import one_shot
    from ..edit import load_checked
    from ..errors import PlanError
    from ..scheduler import depth

    one_shot()
    try:
        p, _ = load_checked(plan, home_of(ctx))   # the home's presets.json extends @presets
    except PlanError as e:
        if json:
            print_json(_plan_error(plan, e))
        raise
    warnings = plan_warnings(p, home_of(ctx).root)
    for w in warnings:
        print(f"dagrun: {w}", file=sys.stderr)
    edges = sum(len(t.deps) + len(t.soft_deps) for t in p.tasks)
    longest = depth(p.tasks)
    if json:
        print_json({"ok": True, "goal": p.goal, "tasks": len(p.tasks), "edges": edges, "depth": longest,
                    "warnings": warnings})
    else:
        print(f"ok: goal {p.goal}: {len(p.tasks)} tasks, {edges} dependencies, longest path {longest} tasks")


_WHERE = re.compile(r"^.*?:(\d+)(?::\d+)?: (?:([A-Za-z_$][\w$]*(?:\[\d+\]|\.[\w$]+)*|\(top level\)): )?")


def _plan_error(plan: str, e) -> dict:
    """`validate --json` on failure: the same one line, plus its line and JSON path apart."""
    line, path = getattr(e, "line", None), getattr(e, "json_path", None)
    if line is None:
        m = _WHERE.match(str(e))
        if m:
            line = int(m.group(1))
            path = path or m.group(2)
    return {"ok": False, "error": str(e), "file": plan, "line": line, "path": path}


@app.command(rich_help_panel=PLAN_TOOLS, epilog=examples(
        "dagrun schema > dag.schema.json",
        "dagrun schema --path      # the installed file, for \"$schema\" in dag.json"))
def schema(path: bool = typer.Option(False, "--path", help="Print the path of the installed schema file "
                                     "instead of its text.")):
    """Print the JSON Schema of dag.json (point your editor's "$schema" at it)."""
    from ..plan import SCHEMA_PATH
    if path:
        print(os.path.abspath(SCHEMA_PATH))
        return
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        sys.stdout.write(f.read())


@app.command(rich_help_panel=PLAN_TOOLS, epilog=examples(
        "dagrun submit dag.json            # then a worker (cron, systemd) runs it",
        "dagrun submit --replace dag.json  # after an edit: changed tasks and those below re-run",
        "dagrun submit plans/*.json        # many at once: all are checked first, all or nothing"))
def submit(ctx: typer.Context,
           plans: list[str] = typer.Argument(..., metavar="PLAN...", show_default=False,
                                             help="Path(s) of dag.json files. Several: all or nothing -- if any is "
                                                  "bad, each bad one is named and none is submitted."),
           replace: bool = typer.Option(False, "--replace", help="Replace the plan of an existing goal: "
                                        "changed tasks and all below them re-run, the rest keeps its results."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Only show what --replace would re-run."),
           json: bool = JSON_OPT):
    """Validate and register goals; print their ids. Idempotent for the same plan. Warns
    (stderr) about agents whose command is not on PATH."""
    from ..protocol import cmd_submit

    rc = cmd_submit(home_of(ctx), plans, replace=replace, dry_run=dry_run, json=json)
    if rc:
        raise typer.Exit(rc)


@app.command(rich_help_panel=PLAN_TOOLS, epilog=examples("dagrun diff dag.json"))
def diff(ctx: typer.Context,
         plan: str = PLAN_ARG,
         json: bool = JSON_OPT):
    """Show what `submit --replace PLAN` would re-run, keep, add and archive."""
    from ..edit import submit as do_submit
    from ..protocol import print_diff

    r = do_submit(home_of(ctx), plan, dry_run=True)
    if json:
        print_json({"goal": r.goal, "action": r.action, "diff": r.diff.to_dict() if r.diff else None})
        return
    if r.action == "would-create":
        print(f"goal {r.goal} does not exist yet: submit would create it")
    elif r.action == "unchanged":
        print(f"goal {r.goal}: the plan is unchanged")
    else:
        print_diff(r.diff, sys.stdout)


@app.command(rich_help_panel=PLAN_TOOLS, epilog=examples(
        "dagrun add g more.json     # {\"tasks\": [{\"id\": \"docs\", \"deps\": [\"impl\"], \"prompt\": ..., \"agent\": ...}]}",
        "echo '{\"tasks\": [...]}' | dagrun add -     # inside an agent's run: the goal is $DAGRUN_GOAL"))
def add(ctx: typer.Context,
        args: list[str] = typer.Argument(..., metavar="[GOAL] FRAGMENT", show_default=False,
                                         help="Goal id (default inside an agent's run: $DAGRUN_GOAL), then a JSON "
                                              "file with \"tasks\" (an array, as in dag.json) and optional "
                                              "\"defaults\", or - for stdin."),
        by: str = typer.Option(None, "--by", metavar="NAME", help="Who adds them (recorded in the event and in "
                               "plan.json; default: the agent's goal/task inside a run, else user@host)."),
        json: bool = JSON_OPT):
    """Add tasks to a goal, even while it runs: validated like a plan (ids, dependencies,
    cycles, the goal's max_tasks); new tasks may depend on existing ones (or be new leaves),
    nothing existing changes or re-runs. A running engine picks them up; the goal ends when
    they have run too. A refusal exits 2 with one line and changes nothing."""
    from ..edit import add_tasks
    from ..errors import UsageError

    env = os.environ
    if len(args) > 2:
        raise UsageError(f"add takes GOAL and FRAGMENT, got {len(args)} arguments")
    if len(args) == 2:
        goal, fragment = args
    else:                             # `dagrun add FRAGMENT` from inside an agent's run
        goal, fragment = env.get("DAGRUN_GOAL", ""), args[0]
        if not goal:
            raise UsageError("add: give GOAL and FRAGMENT ($DAGRUN_GOAL names the goal only inside an agent's run)")
    if fragment == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            with open(fragment, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise UsageError(f"cannot read fragment {fragment}: {e.strerror}") from None
    agent = None
    if env.get("DAGRUN_GOAL") == goal and env.get("DAGRUN_TASK"):      # an agent adds to its own goal
        agent = {"by_task": env["DAGRUN_TASK"]}
        if env.get("DAGRUN_ATTEMPT", "").isdigit():
            agent["by_attempt"] = int(env["DAGRUN_ATTEMPT"])
    who = by or (f"{goal}/{agent['by_task']}" if agent else f"{env.get('USER', 'user')}@{os.uname().nodename}")
    added = add_tasks(home_of(ctx), goal, raw, by=who, shown=fragment if fragment != "-" else "<stdin>", agent=agent)
    if json:
        print_json({"goal": goal, "added": added})
    else:
        print(" ".join(added))


@app.command("plan", rich_help_panel=PLAN_TOOLS, epilog=examples(
        "dagrun plan dag.json               # waves, critical path, makespan and cost",
        "dagrun plan dag.json -j 8 --json | jq .makespan"))
def plan_cmd(ctx: typer.Context,
             plan: str = PLAN_ARG,
             jobs: int = typer.Option(None, "-j", "--jobs", min=1, metavar="N",
                                      help="Agents at once (default: the plan's max_parallel, else 4)."),
             json: bool = JSON_OPT):
    """Predict a plan before running it: waves, critical path, makespan and cost, from the
    tasks' `estimate` or the history of earlier runs in this home. Writes nothing."""
    from ..estimate import predict_file
    from .common import fmt_duration

    p = predict_file(home_of(ctx), plan, jobs)
    if json:
        print_json(p)
        return
    est = p["estimates"]

    def one(t):
        e = est[t]
        cost = f", ${e['usd']:.4f}" if e["usd"] is not None else ""
        return f"{t} ({fmt_duration(e['seconds']) if e['source'] != 'unknown' else '?'}{cost})"
    print(f"plan {p['goal']}: {p['tasks']} tasks in {len(p['waves'])} waves, -j {p['jobs']}")
    for i, w in enumerate(p["waves"], 1):
        print(f"  wave {i}: " + ", ".join(one(t) for t in w))
    cp = p["critical_path"]
    print(f"critical path {' -> '.join(cp['tasks'])} ({fmt_duration(cp['seconds'])})")
    cost = f"${p['usd']:.4f}" if p["usd"] is not None else "unknown"
    print(f"predicted makespan {fmt_duration(p['makespan'])}, agent time {fmt_duration(p['agent_seconds'])}, cost {cost}")
    src = p["sources"]
    print("estimates: " + ", ".join(f"{n} {k}" for k, n in sorted(src.items())) +
          (f" (unknown, counted as 0: {' '.join(p['unknown'])})" if p["unknown"] else ""))


@app.command("simulate", rich_help_panel=PLAN_TOOLS, epilog=examples(
        "dagrun simulate dag.json -j 8          # a text Gantt and the predicted makespan",
        "dagrun simulate a.json b.json -j 2     # several goals on one worker: the fair share",
        "dagrun simulate dag.json -j 4 --json | jq .makespan"))
def simulate_cmd(ctx: typer.Context,
                 plans: list[str] = typer.Argument(..., metavar="PLAN...", show_default=False,
                                                   help="One or more dag.json (several: goals sharing one worker)."),
                 jobs: int = typer.Option(4, "-j", "--jobs", min=1, metavar="N", help="Agents at once (the worker's -j)."),
                 overhead: float = typer.Option(0.0, "--overhead", min=0.0, metavar="S",
                                                help="Seconds added to every attempt (dispatch cost)."),
                 width: int = typer.Option(None, "--width", min=10, max=1000, metavar="COLS",
                                           help="Columns of the Gantt bars (default: what the terminal leaves)."),
                 json: bool = JSON_OPT):
    """Predict a run: the real scheduler (priorities, aging, critical path in seconds, the
    fair share across goals, max_parallel) on a virtual clock, each task lasting its
    `estimate` or its history in this home (1 s if unknown). Prints a Gantt chart and the
    makespan. Writes nothing."""
    from ..simulate import simulate_files
    from .common import console, fmt_duration

    r = simulate_files(home_of(ctx), plans, jobs, overhead=overhead)
    if json:
        print_json(r.to_dict())
        return
    from rich.table import Table
    from rich.text import Text

    out = console()
    span = r.makespan or 1.0
    multi = len(r.seconds) > 1
    names = [f"{b.goal}/{b.task}" if multi else b.task for b in r.bars]
    cols = (("slot", "right", 4), ("task", "left", max([4, *map(len, names)])), ("start", "right", 7),
            ("secs", "right", 6))
    width = width or max(10, out.width - sum(w + 1 for _, _, w in cols) - 2)
    t = Table(box=None, pad_edge=False, show_edge=False)
    for col, just, w in cols:
        t.add_column(col, justify=just, no_wrap=True, min_width=w)
    t.add_column("", no_wrap=True, min_width=width + 1)
    colours = ("cyan", "green", "magenta", "yellow", "blue")
    goal_colour = {g: colours[i % len(colours)] for i, g in enumerate(sorted(r.seconds))}
    for b, name in zip(r.bars, names):
        a = min(width - 1, int(round(b.start / span * width)))
        z = max(a + 1, int(round(b.end / span * width)))
        bar = Text(" " * a)
        bar.append("█" * (z - a), style=goal_colour[b.goal])
        t.add_row(str(b.slot), name, f"{b.start:.1f}", f"{b.end - b.start:.1f}", bar)
    out.print(t, width=max(out.width, sum(w + 1 for _, _, w in cols) + width + 3))
    d = r.to_dict()
    bound = "" if r.lower_bound is None else (
        f" (lower bound {fmt_duration(r.lower_bound)}: critical path {fmt_duration(r.critical_path)}, "
        f"work {fmt_duration(r.work)} / {r.per_goal[0][1] if len(r.per_goal) == 1 else r.jobs})")
    out.print(f"predicted makespan {fmt_duration(r.makespan)} with -j {r.jobs}{bound}", markup=False)
    if d["unknown"]:
        out.print(f"no estimate or history, counted as 1 s: {' '.join(d['unknown'])}", markup=False)
    if r.not_started:
        out.print(f"held by the plan's rules, never started: {' '.join(r.not_started)}", markup=False)
