"""What every command shares: the home, TTY detection, JSON and plain-line output."""
from __future__ import annotations

import os
import sys


from ..store import Home, dumps


class Ctx:
    def __init__(self, home: str | None):
        self._home = home

    @property
    def home(self) -> Home:
        return Home(self._home)


def home_of(ctx) -> Home:
    return ctx.obj.home if ctx.obj else Home(None)


def is_tty(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def print_json(obj) -> None:
    sys.stdout.buffer.write(dumps(obj))
    sys.stdout.flush()


def plain_table(rows: list[list[str]], header: list[str]) -> None:
    """Whitespace-aligned columns: readable, and `awk '{print $2}'`-able."""
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    for r in cols:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


def console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False)


def fmt_duration(s) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_event(e: dict) -> str:
    """One plain line per event (logs, non-TTY progress): time, goal/task, what, key=value."""
    ts = str(e.get("ts", ""))[:19].replace("T", " ")
    typ = e.get("type", "")
    who = e.get("goal", "") + (f"/{e['task']}" if e.get("task") else "")
    if typ.endswith("status.updated"):
        what = e.get("status", "")
    else:
        what = typ.removeprefix("agent.")
    extras = []
    for k in ("attempt", "worker", "duration", "exit_code", "cached", "outcome", "blocked_by", "retry_at", "reason"):
        v = e.get(k)
        if v is None or v == "":
            continue
        if k == "retry_at" and isinstance(v, (int, float)):
            from ..store import now_iso
            v = now_iso(v)[11:19]
        if k == "duration":
            v = fmt_duration(v)
        v = str(v).replace("\n", "\\n").replace("\r", "\\r")   # one event, one line (journald, grep)
        if " " in v:
            v = '"' + v.replace('"', "'") + '"'
        extras.append(f"{k}={v}")
    u = e.get("usage")
    if isinstance(u, dict):                  # an agent that reported usage (presets, $DAGRUN_USAGE_FILE)
        if isinstance(u.get("tokens_in"), int) or isinstance(u.get("tokens_out"), int):
            extras.append(f"tokens={u.get('tokens_in', 0)}/{u.get('tokens_out', 0)}")
        if isinstance(u.get("cost_usd"), (int, float)):
            extras.append(f"cost=${u['cost_usd']:.4f}")
    if typ.endswith("goal.finished"):
        c = e.get("counts") or {}
        extras.append("counts=" + ",".join(f"{k}:{v}" for k, v in c.items()))
    return " ".join([ts, who, what] + extras)
