"""events: the state bus, as JSON lines (like `tail -f events.jsonl | jq -c`)."""
from __future__ import annotations

import sys

import orjson
import typer

from . import app
from .common import home_of


@app.command()
def events(ctx: typer.Context,
           goal: str = typer.Argument(..., help="Goal id."),
           follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new events as they are appended."),
           since: str = typer.Option(None, "--since", metavar="TS", help="Only events at or after this ISO time."),
           type_: list[str] = typer.Option(None, "--type", metavar="TYPE",
                                           help="Only these event types (repeatable; a suffix like task.blocked works).")):
    """Print a goal's events, one JSON object per line."""
    from ..events import Reader
    from ..plan import check_id

    check_id("goal", goal)
    home = home_of(ctx)
    home.load_plan(goal)     # a clear error for an unknown goal
    reader = Reader(home.events_path(goal))

    def emit(batch):
        out = sys.stdout.buffer
        for e in batch:
            if since and str(e.get("ts", "")) < since:
                continue
            if type_ and not any(str(e.get("type", "")).endswith(t) for t in type_):
                continue
            out.write(orjson.dumps(e) + b"\n")
        out.flush()

    emit(reader.read())
    if not follow:
        return
    import selectors

    from ..watcher import Watcher

    w = Watcher(home.goals_dir)
    w.watch_goal(goal)
    sel = selectors.DefaultSelector()
    if w.fd is not None:
        sel.register(w.fd, selectors.EVENT_READ)
    try:
        while True:
            if w.fd is not None:
                sel.select(None)
                w.read()
            else:
                sel.select(w.poll or 1.0) if sel.get_map() else __import__("time").sleep(w.poll or 1.0)
            emit(reader.read())
    finally:
        w.close()
