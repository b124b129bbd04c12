"""integrate, gc: code workspaces (see docs/workspaces.md)."""
from __future__ import annotations

import typer

from . import app
from .common import CONTROL, GOAL_ARG, JSON_OPT, examples, home_of, print_json


@app.command(rich_help_panel=CONTROL, epilog=examples(
    "dagrun integrate add-auth                  # into dagrun/add-auth/_integrated",
    "dagrun integrate add-auth --into feature   # fast-forwards a clean checked-out branch",
    "dagrun integrate add-auth --json | jq .merged"))
def integrate(ctx: typer.Context,
              goal: str = GOAL_ARG,
              into: str = typer.Option(None, "--into", metavar="BRANCH",
                                       help="Merge into this existing branch instead of dagrun/GOAL/_integrated; if it "
                                            "is checked out, its work tree must be clean and is fast-forwarded."),
              json: bool = JSON_OPT):
    """Merge the branches of a code-workspace goal's done tasks, in dependency order, into
    dagrun/GOAL/_integrated (created from the goal's base). Nothing is updated if two of them
    conflict: each conflict is reported with the tasks and files (exit 1)."""
    from ..wsops import integrate as do_integrate

    r = do_integrate(home_of(ctx), goal, into)
    if json:
        print_json(r.to_dict())
        return
    what = f"{len(r.merged)} task branch(es) merged" if r.updated else "already up to date"
    print(f"{r.branch} {r.head[:12]}: {what}" + (f"; left out (not done): {' '.join(r.skipped)}" if r.skipped else ""))


@app.command(rich_help_panel=CONTROL, epilog=examples(
    "dagrun gc --dry-run      # what would go",
    "dagrun gc"))
def gc(ctx: typer.Context,
       dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
       json: bool = JSON_OPT):
    """Remove the git worktrees of ended code-workspace goals (and of archived task folders);
    delete task branches dagrun/GOAL/TASK once they are merged into dagrun/GOAL/_integrated.
    Never deletes a branch outside dagrun/."""
    from ..wsops import gc as do_gc

    items = do_gc(home_of(ctx), dry_run=dry_run)
    if json:
        print_json({"dry_run": dry_run, "items": [{"goal": i.goal, "what": i.what, "name": i.name} for i in items]})
        return
    for i in items:
        print(f"{'would remove' if dry_run else 'removed'} {i.what} {i.name}")
