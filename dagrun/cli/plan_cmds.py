"""validate, schema, submit, diff, plan, add."""
from __future__ import annotations

import os
import re
import sys

import typer

from . import app
from .common import GOAL_ARG, JSON_OPT, PLAN_ARG, PLAN_TOOLS, examples, home_of, print_json


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
    from ..edit import load_checked
    from ..errors import PlanError
    from ..scheduler import Scheduler

    try:
        p, _ = load_checked(plan, home_of(ctx))   # the home's presets.json extends @presets
    except PlanError as e:
        if json:
            print_json(_plan_error(plan, e))
        raise
    warnings = plan_warnings(p, home_of(ctx).root)
    for w in warnings:
        print(f"dagrun: {w}", file=sys.stderr)
    s = Scheduler(p.tasks)
    edges = sum(len(t.deps) + len(t.soft_deps) for t in p.tasks)
    depth = max(s.height) if s.height else 0
    if json:
        print_json({"ok": True, "goal": p.goal, "tasks": len(p.tasks), "edges": edges, "depth": depth,
                    "warnings": warnings})
    else:
        print(f"ok: goal {p.goal}: {len(p.tasks)} tasks, {edges} dependencies, longest path {depth} tasks")


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
        "dagrun submit --replace dag.json  # after an edit: changed tasks and those below re-run"))
def submit(ctx: typer.Context,
           plan: str = PLAN_ARG,
           replace: bool = typer.Option(False, "--replace", help="Replace the plan of an existing goal: "
                                        "changed tasks and all below them re-run, the rest keeps its results."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Only show what --replace would re-run."),
           json: bool = JSON_OPT):
    """Validate and register a goal; print its id. Idempotent for the same plan. Warns
    (stderr) about agents whose command is not on PATH."""
    from ..agentcheck import plan_warnings
    from ..edit import submit as do_submit
    from ..plan import load

    home = home_of(ctx)
    parsed = load(plan, home.root)
    for w in plan_warnings(parsed, home.root):
        print(f"dagrun: {w}", file=sys.stderr)

    r = do_submit(home, plan, replace=replace, dry_run=dry_run, parsed=parsed)
    if json:
        print_json({"goal": r.goal, "action": r.action, "diff": r.diff.to_dict() if r.diff else None})
        return
    print(r.goal)
    if r.diff is not None:
        _print_diff(r.diff, sys.stderr)
    if r.action not in ("created", "unchanged"):
        print(f"dagrun: {r.action} goal {r.goal}", file=sys.stderr)


@app.command(rich_help_panel=PLAN_TOOLS, epilog=examples("dagrun diff dag.json"))
def diff(ctx: typer.Context,
         plan: str = PLAN_ARG,
         json: bool = JSON_OPT):
    """Show what `submit --replace PLAN` would re-run, keep, add and archive."""
    from ..edit import submit as do_submit

    r = do_submit(home_of(ctx), plan, dry_run=True)
    if json:
        print_json({"goal": r.goal, "action": r.action, "diff": r.diff.to_dict() if r.diff else None})
        return
    if r.action == "would-create":
        print(f"goal {r.goal} does not exist yet: submit would create it")
    elif r.action == "unchanged":
        print(f"goal {r.goal}: the plan is unchanged")
    else:
        _print_diff(r.diff, sys.stdout)


@app.command(rich_help_panel=PLAN_TOOLS, epilog=examples(
        "dagrun add g more.json     # {\"tasks\": [{\"id\": \"docs\", \"deps\": [\"impl\"], \"prompt\": ..., \"agent\": ...}]}",
        "echo '{\"tasks\": [...]}' | dagrun add g -     # from an agent's run: the fragment on stdin"))
def add(ctx: typer.Context,
        goal: str = GOAL_ARG,
        fragment: str = typer.Argument(..., metavar="FRAGMENT", show_default=False,
                                       help="A JSON file with \"tasks\" (an array, as in dag.json) and optional "
                                            "\"defaults\", or - for stdin."),
        by: str = typer.Option(None, "--by", metavar="NAME", help="Who adds them (recorded in the event; default: user@host)."),
        json: bool = JSON_OPT):
    """Add tasks to a goal, even while it runs: validated like a plan (ids, dependencies,
    cycles); new tasks may depend on existing ones, nothing existing changes or re-runs.
    A running engine picks them up; the goal ends when they have run too."""
    from ..edit import add_tasks
    from ..errors import UsageError

    if fragment == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            with open(fragment, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise UsageError(f"cannot read fragment {fragment}: {e.strerror}") from None
    who = by or f"{os.environ.get('USER', 'user')}@{os.uname().nodename}"
    added = add_tasks(home_of(ctx), goal, raw, by=who, shown=fragment if fragment != "-" else "<stdin>")
    if json:
        print_json({"goal": goal, "added": added})
    else:
        print(" ".join(added))


def _print_diff(d, out) -> None:
    def line(label, items):
        if items:
            print(f"{label:<10} {' '.join(items)}", file=out)
    line("changed", d.changed)
    line("downstream", d.downstream)
    line("added", d.added)
    line("removed", d.removed)
    print(f"{'kept':<10} {len(d.kept_done)} done task(s) keep their output", file=out)


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
