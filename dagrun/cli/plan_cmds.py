"""validate, schema, submit, diff."""
from __future__ import annotations

import sys

import typer

from . import app
from .common import home_of, print_json


@app.command()
def validate(ctx: typer.Context, plan: str = typer.Argument(..., metavar="PLAN", help="Path of a dag.json."),
             json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Check a plan (and its code workspace's repository); exit 0 if it is valid, 2 with the
    problem otherwise. Writes nothing."""
    from ..ops import load_checked
    from ..scheduler import Scheduler

    p, _ = load_checked(plan, home_of(ctx))
    s = Scheduler(p.tasks)
    edges = sum(len(t.deps) + len(t.soft_deps) for t in p.tasks)
    depth = max(s.height) if s.height else 0
    if json:
        print_json({"ok": True, "goal": p.goal, "tasks": len(p.tasks), "edges": edges, "depth": depth})
    else:
        print(f"ok: goal {p.goal}: {len(p.tasks)} tasks, {edges} dependencies, longest path {depth} tasks")


@app.command()
def schema():
    """Print the JSON Schema of dag.json (point your editor's "$schema" at it)."""
    from ..plan import SCHEMA_PATH
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        sys.stdout.write(f.read())


@app.command()
def submit(ctx: typer.Context,
           plan: str = typer.Argument(..., metavar="PLAN", help="Path of a dag.json."),
           replace: bool = typer.Option(False, "--replace", help="Replace the plan of an existing goal: "
                                        "changed tasks and all below them re-run, the rest keeps its results."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Only show what --replace would re-run."),
           json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Validate and register a goal; print its id. Idempotent for the same plan."""
    from ..ops import submit as do_submit

    r = do_submit(home_of(ctx), plan, replace=replace, dry_run=dry_run)
    if json:
        print_json({"goal": r.goal, "action": r.action, "diff": r.diff.to_dict() if r.diff else None})
        return
    print(r.goal)
    if r.diff is not None:
        _print_diff(r.diff, sys.stderr)
    if r.action not in ("created", "unchanged"):
        print(f"dagrun: {r.action} goal {r.goal}", file=sys.stderr)


@app.command()
def diff(ctx: typer.Context,
         plan: str = typer.Argument(..., metavar="PLAN", help="Path of the edited dag.json."),
         json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Show what `submit --replace PLAN` would re-run, keep, add and archive."""
    from ..ops import submit as do_submit

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


def _print_diff(d, out) -> None:
    def line(label, items):
        if items:
            print(f"{label:<10} {' '.join(items)}", file=out)
    line("changed", d.changed)
    line("downstream", d.downstream)
    line("added", d.added)
    line("removed", d.removed)
    print(f"{'kept':<10} {len(d.kept_done)} done task(s) keep their output", file=out)
