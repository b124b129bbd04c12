"""integrate, gc: code workspaces (see docs/workspaces.md)."""
from __future__ import annotations

import typer

from . import app
from .common import home_of, print_json


@app.command()
def integrate(ctx: typer.Context,
              goal: str = typer.Argument(..., help="Goal id."),
              into: str = typer.Option(None, "--into", metavar="BRANCH",
                                       help="Merge into this existing branch instead of dagrun/<goal>/_integrated; if it is "
                                            "checked out, its work tree must be clean and is fast-forwarded."),
              json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Merge the branches of the goal's done tasks, in dependency order, into
    dagrun/<goal>/_integrated (created from the goal's base). Nothing is updated if two of them conflict: each conflict
    is reported with the tasks and files (exit 1)."""
    from ..ops import integrate as do_integrate

    r = do_integrate(home_of(ctx), goal, into)
    if json:
        print_json(r.to_dict())
        return
    what = f"{len(r.merged)} task branch(es) merged" if r.updated else "already up to date"
    print(f"{r.branch} {r.head[:12]}: {what}" + (f"; left out (not done): {' '.join(r.skipped)}" if r.skipped else ""))


@app.command()
def gc(ctx: typer.Context,
       dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
       json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Remove the git worktrees of ended goals (and of archived task folders); delete task
    branches dagrun/<goal>/<task> once they are merged into dagrun/<goal>/_integrated. Never deletes a
    branch outside dagrun/."""
    from ..ops import gc as do_gc

    items = do_gc(home_of(ctx), dry_run=dry_run)
    if json:
        print_json([{"goal": i.goal, "what": i.what, "name": i.name} for i in items])
        return
    for i in items:
        print(f"{'would remove' if dry_run else 'removed'} {i.what} {i.name}")
