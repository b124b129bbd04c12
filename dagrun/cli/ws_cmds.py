"""integrate, gc: code workspaces (see docs/workspaces.md) and the retention of finished goals
(docs/retention.md)."""
from __future__ import annotations

import typer

from . import app
from ..store import now_iso
from .common import CONTROL, GOAL_ARG, JSON_OPT, examples, home_of, parse_age, print_json


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
    "dagrun gc --dry-run                   # what would go",
    "dagrun gc                             # worktrees and merged task branches only",
    "dagrun gc --older-than 30d            # and the goals that ended more than 30 days ago",
    "dagrun gc --keep 100 --archive        # move all but the 100 latest ended goals to archive/"))
def gc(ctx: typer.Context,
       older_than: str = typer.Option(None, "--older-than", metavar="AGE",
                                      help="Also remove finished goals that ended more than AGE ago (e.g. 12h, 30d)."),
       keep: int = typer.Option(None, "--keep", min=0, metavar="N",
                                help="Also remove finished goals beyond the N that ended last (with --older-than: "
                                     "only those that are both)."),
       archive: bool = typer.Option(False, "--archive", help="Move the goals chosen by --older-than/--keep to "
                                    "$DAGRUN_HOME/archive/GOAL.STAMP instead of deleting them."),
       dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
       json: bool = JSON_OPT):
    """Clean up a home. Always: remove the git worktrees of ended code-workspace goals (and of
    archived task folders); delete task branches dagrun/GOAL/TASK once they are merged into
    dagrun/GOAL/_integrated (never a branch outside dagrun/). With --older-than and/or --keep:
    also delete (or --archive) finished goals -- ended, nothing running or left to run; a
    running or unfinished goal is never touched. See docs/retention.md."""
    from ..errors import UsageError
    from ..goalgc import gc_goals
    from ..wsops import gc as do_gc

    if archive and older_than is None and keep is None:
        raise UsageError("--archive goes with --older-than AGE or --keep N (which finished goals to archive)")
    age = parse_age(older_than, "--older-than") if older_than is not None else None
    home = home_of(ctx)
    items = do_gc(home, dry_run=dry_run)
    goals = gc_goals(home, older_than=age, keep=keep, archive=archive, dry_run=dry_run) \
        if age is not None or keep is not None else []
    if json:
        print_json({"dry_run": dry_run, "items": [{"goal": i.goal, "what": i.what, "name": i.name} for i in items],
                    "goals": [{"goal": r.goal, "action": r.action, "ended": now_iso(r.ended), "path": r.path}
                              for r in goals]})
        return
    for i in items:
        print(f"{'would remove' if dry_run else 'removed'} {i.what} {i.name}")
    for r in goals:
        print(f"{r.action} goal {r.goal} (ended {now_iso(r.ended)[:19]})" + (f" -> {r.path}" if r.path else ""))
