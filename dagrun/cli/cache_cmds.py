"""cache ls|rm|gc: the home's result cache (see dagrun/cache.py)."""
from __future__ import annotations

import typer

from . import app
from .common import CONTROL, JSON_OPT, examples, home_of, parse_age, plain_table, print_json

cache_app = typer.Typer(help="The result cache of tasks with `cache: true` (shared by the home's goals).",
                        no_args_is_help=True, epilog=examples(
                            "dagrun cache ls                   # key, origin, size, last use",
                            "dagrun cache rm 3f2a9c            # one entry (a unique key prefix)",
                            "dagrun cache gc --older-than 30d  # entries unused for 30 days"))
app.add_typer(cache_app, name="cache", rich_help_panel=CONTROL)

def _seconds(text: str) -> float:
    return parse_age(text, "--older-than")


@cache_app.command("ls", epilog=examples("dagrun cache ls", "dagrun cache ls --json | jq '.entries[].key'"))
def ls(ctx: typer.Context, json: bool = JSON_OPT):
    """List the cached results: key, origin, size, last use."""
    from ..cache import entries

    rows = entries(home_of(ctx))
    if json:
        print_json({"entries": rows})
        return
    plain_table([[r["key"][:16], f"{r['goal']}/{r['task']}", str(r["bytes"]), (r["created"] or "-")[:19],
                  (r["last_used"] or "-")[:19]] for r in rows], ["KEY", "FROM", "BYTES", "CREATED", "LAST USED"])


@cache_app.command("rm", epilog=examples("dagrun cache rm 3f2a9c       # a unique prefix of a key",
                                         "dagrun cache rm --all"))
def rm(ctx: typer.Context,
       keys: list[str] = typer.Argument(None, metavar="KEY...", help="Keys (64 hex digits; a unique prefix will do)."),
       all_: bool = typer.Option(False, "--all", help="Remove every entry.")):
    """Remove cached results: the next identical task runs its agent again."""
    from ..cache import entries, remove
    from ..errors import UsageError

    home = home_of(ctx)
    have = [r["key"] for r in entries(home)]
    if all_ == bool(keys):
        raise UsageError("give KEY... or --all")
    chosen = have if all_ else []
    for k in keys or []:
        match = [h for h in have if h.startswith(k.lower())]
        if len(match) != 1:
            raise UsageError(f"{'no' if not match else 'more than one'} cache entry matches {k!r}")
        chosen.append(match[0])
    for k in chosen:
        remove(home, k)
    print(f"removed {len(chosen)} cache entr{'y' if len(chosen) == 1 else 'ies'}")


@cache_app.command("gc", epilog=examples("dagrun cache gc                   # unused for 30 days",
                                         "dagrun cache gc --older-than 12h --json"))
def gc(ctx: typer.Context,
       older_than: str = typer.Option("30d", "--older-than", metavar="AGE",
                                      help="Remove entries not used for this long (e.g. 12h, 30d)."),
       json: bool = JSON_OPT):
    """Remove entries not used for a while and leftovers of interrupted writes."""
    from ..cache import gc as do_gc

    r = do_gc(home_of(ctx), _seconds(older_than))
    if json:
        print_json(r)
        return
    print(f"removed {len(r['removed'])} unused entr{'y' if len(r['removed']) == 1 else 'ies'}, "
          f"{r['leftovers']} leftover(s)")
