"""graph (the plan as Mermaid or dot) and report (a self-contained timeline of a goal's run)."""
from __future__ import annotations

import os
import sys

import typer

from . import app
from .common import GOAL_ARG, INSPECT, complete_goal, examples, home_of


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun graph examples/add-auth/dag.json                 # Mermaid, for a README or an issue",
    "dagrun graph add-auth --format dot | dot -Tsvg > g.svg  # a goal: coloured by state"))
def graph(ctx: typer.Context,
          target: str = typer.Argument(..., metavar="PLAN|GOAL", help="A dag.json, or a submitted goal (then the "
                                       "tasks are coloured by state and the run's critical path is red).",
                                       autocompletion=complete_goal),
          fmt: str = typer.Option("mermaid", "--format", metavar="mermaid|dot",
                                  help="mermaid (for markdown) or dot (for Graphviz: | dot -Tsvg > g.svg).")):
    """Print the dependency graph as Mermaid or Graphviz dot."""
    from ..errors import UsageError
    from ..graph import render
    from ..plan import load, valid_id

    if fmt not in ("mermaid", "dot"):
        raise UsageError(f"--format {fmt!r}: expected mermaid or dot")
    home = home_of(ctx)
    states = critical = None
    if os.path.isfile(target):
        plan = load(target)
    elif valid_id(target) and home.has_goal(target):
        from ..lifecycle import build_scheduler
        from ..summary import goal_run
        plan = home.load_plan(target)
        sched = build_scheduler(home, plan)[0]
        states = sched.states()
        critical = goal_run(home, plan, sched).critical_path()[0]
    else:
        raise UsageError(f"no plan file and no goal named {target!r} under {home.root}")
    sys.stdout.write(render(plan, fmt, states, critical))


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun report add-auth                   # writes ./add-auth-report.html and prints its path",
    "dagrun report add-auth -o timeline.svg   # the timeline alone"))
def report(ctx: typer.Context,
           goal: str = GOAL_ARG,
           out: str = typer.Option(None, "--out", "-o", metavar="FILE.html|FILE.svg",
                                   help="Where to write it (default: GOAL-report.html here); .svg writes the "
                                        "timeline alone.")):
    """Write a self-contained (offline) timeline of every attempt by worker slot, with the
    dependencies and the critical path, plus a table of every task."""
    from ..errors import UsageError
    from ..fsio import write_named
    from ..plan import check_id
    from ..report import render

    check_id("goal", goal)
    out = out or f"{goal}-report.html"
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".html", ".htm", ".svg"):
        raise UsageError(f"--out {out}: name it .html or .svg")
    text = render(home_of(ctx), goal, "svg" if ext == ".svg" else "html")
    write_named(out, text.encode())
    print(out)
