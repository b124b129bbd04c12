"""What every command shares: the home, TTY detection, JSON and plain-line output."""
from __future__ import annotations

import os
import sys

import typer


from ..linesink import err
from ..store import Home, dumps


class Ctx:
    def __init__(self, home: str | None, color: str = "auto"):
        self._home = home
        self.color = color

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


# --color auto|always|never (set by the root callback); FORCE_COLOR / NO_COLOR beside it
COLOR = {"mode": "auto"}


def use_color(stream=None) -> bool:
    """Colour on `stream`? --color always/never decide; under auto, NO_COLOR (non-empty) turns
    it off, FORCE_COLOR (non-empty, not 0) on, else colour iff the stream is a terminal."""
    mode = COLOR["mode"]
    if mode in ("always", "never"):
        return mode == "always"
    if os.environ.get("NO_COLOR"):
        return False
    force = os.environ.get("FORCE_COLOR")
    if force and force not in ("0", "false", "no"):
        return True
    return is_tty(stream)


def console(stderr: bool = False):
    from rich.console import Console
    colour = use_color(sys.stderr if stderr else sys.stdout)
    return Console(stderr=stderr, highlight=False, force_terminal=True if colour else None,
                   no_color=not colour)


SGR = {"green": "32", "cyan": "36", "blue": "34", "white": "37", "yellow": "33", "red": "31",
       "magenta": "35", "bright_black": "90", "bold": "1"}


def paint(text: str, colour: str | None, on: bool) -> str:
    """ANSI colour for plain-line output (status): nothing when `on` is false."""
    if not on or not colour or colour not in SGR:
        return text
    return f"\x1b[{SGR[colour]}m{text}\x1b[0m"


def term_width(default: int = 80) -> int:
    import shutil
    return shutil.get_terminal_size((default, 24)).columns


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, the last one an ellipsis when it was cut."""
    if len(text) <= width:
        return text
    return text[:max(width - 1, 0)] + "\u2026" if width > 0 else ""


def columns(rows: list[list[str]], header: list[str], *, width: int | None, shrink: list[tuple[int, int]],
            colours: list[str | None] | None = None, colour_col: int | None = None, on: bool = False) -> list[str]:
    """Whitespace-aligned columns (readable, `awk`-able). With a `width` (a terminal's), the
    steps of `shrink` -- (column, narrowest width) -- give up characters, in that order, until
    a row fits; cut cells end with an ellipsis. `colours[i]` paints row i's cell in `colour_col`."""
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    if width is not None:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        for i, floor in shrink:
            if over <= 0:
                break
            give = min(over, max(widths[i] - floor, 0))
            widths[i] -= give
            over -= give
    out = []
    for k, r in enumerate(cols):
        cells = []
        for i, (v, w) in enumerate(zip(r, widths)):
            v = clip(str(v), w)
            pad = v.ljust(w)
            if k and colours and i == colour_col:
                pad = paint(v, colours[k - 1], on) + " " * (w - len(v))
            elif k == 0:
                pad = paint(v, "bold", on) + " " * (w - len(v))
            cells.append(pad)
        out.append("  ".join(cells).rstrip())
    return out


def fmt_duration(s) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_event(e: dict, ts: bool = True) -> str:
    """One plain line per event (logs, non-TTY progress): time, goal/task, what, key=value.
    ts=False leaves the time out (the journal has its own)."""
    stamp = str(e.get("ts", ""))[:19].replace("T", " ")
    typ = e.get("type", "")
    who = e.get("goal", "") + (f"/{e['task']}" if e.get("task") else "")
    if typ.endswith("status.updated"):
        what = e.get("status", "")
    else:
        what = typ.removeprefix("agent.")
    extras = []
    for k in ("attempt", "worker", "node", "duration", "exit_code", "cached", "outcome", "blocked_by", "retry_at",
              "reason"):
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
    r = e.get("resources")
    if isinstance(r, dict) and r:            # the units a running attempt holds
        extras.append("resources=" + ",".join(f"{k.replace(' ', '')}:{v}" for k, v in r.items()))
    if isinstance(e.get("released"), list):  # and gives back when it has ended
        extras.append("released=" + ",".join(str(x).replace(" ", "") for x in e["released"]))
    if typ.endswith("plan.replaced") and e.get("edit"):     # add / fanout: what grew the plan
        extras.append(f"edit={e['edit']}")
        if e.get("template"):
            extras.append(f"template={e['template']} from={e.get('source')}")
        added = e.get("added") or []
        if added:
            extras.append(f"added={len(added)}:" + ",".join(added[:5]) + (",..." if len(added) > 5 else ""))
    if e.get("instances") is not None and typ.endswith("status.updated"):
        extras.append(f"instances={e['instances']}")
    if typ.endswith("goal.finished"):
        c = e.get("counts") or {}
        extras.append("counts=" + ",".join(f"{k}:{v}" for k, v in c.items()))
    return " ".join(([stamp] if ts else []) + [who, what] + extras)


def journald_stderr() -> bool:
    """stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode of it)."""
    js = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class LogLine:
    """The worker's stderr log. Plain: `dagrun: ...` lines (a cron log file). Under journald:
    `<N>` priority prefixes (sd-daemon(3): 3 error, 4 warning, 6 info) and no name or time,
    which the journal records itself. `quiet`: the start line is held back until there is
    something else to say, so an idle cron run writes nothing. A pipe nobody reads never stops
    the worker: linesink keeps or drops what does not fit (events.jsonl is the record)."""

    def __init__(self, *, journal: bool | None = None, quiet: bool = False):
        self.journal = journald_stderr() if journal is None else journal
        self.quiet = quiet
        self.held: list[tuple[str, int]] = []
        self.said = False

    def __call__(self, msg: str, prio: int | None = None) -> None:
        if prio is None:
            prio = 3 if msg.startswith("error") else 4 if msg.startswith("warning") else 6
        if self.held:
            held, self.held = self.held, []
            for m, p in held:
                self._write(m, p)
        self._write(msg, prio)

    def start(self, msg: str) -> None:
        if self.quiet:
            self.held.append((msg, 6))
        else:
            self(msg)

    def event(self, e: dict) -> None:
        bad = e.get("status") == "failed" or (e.get("type", "").endswith("goal.finished")
                                              and e.get("outcome") not in (None, "done"))
        self(fmt_event(e, ts=not self.journal), 4 if bad else 6)

    def _write(self, msg: str, prio: int) -> None:
        self.said = True
        err(f"<{prio}>{msg}" if self.journal else f"dagrun: {msg}")     # never blocks (linesink)


# ------------------------------------------------------------------ help: panels, examples, arguments
RUN, INSPECT, CONTROL, PROTOCOL, PLAN_TOOLS, SETUP = (
    "Run", "Inspect", "Control", "Protocol (for bash workers)", "Plan tools", "Set-up")
PANELS = (RUN, INSPECT, CONTROL, PLAN_TOOLS, PROTOCOL, SETUP)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str, option: str = "AGE") -> float:
    """An age like 90s, 15m, 12h, 30d (a bare number: seconds) in seconds; typer.BadParameter
    (exit 2, one line) otherwise."""
    import re
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise typer.BadParameter(f"{text!r}: use a number with s, m, h or d (e.g. 30d)", param_hint=option)
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def examples(*lines: str) -> str:
    """A help page's epilog: `Examples:` and the lines as written (\\b: click must not rewrap)."""
    return "\b\nExamples:\n" + "\n".join("  " + line for line in lines)


def _completion_home(ctx) -> Home:
    root = ctx.find_root() if ctx is not None else None
    home = root.params.get("home") if root is not None else None
    return Home(home or os.environ.get("DAGRUN_HOME"))


def complete_goal(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: the goal ids under the home (--home, DAGRUN_HOME or ./.dagrun)."""
    try:
        return [g for g in _completion_home(ctx).goals() if g.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion never fails loudly
        return []


def complete_task(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: the task ids of the goal given before it."""
    try:
        goal = ctx.params.get("goal")
        plan = _completion_home(ctx).load_plan(goal)
        return [t.id for t in plan.tasks if t.id.startswith(incomplete)]
    except Exception:  # noqa: BLE001
        return []


_t = typer
GOAL_ARG = _t.Argument(..., metavar="GOAL", help="Goal id.", autocompletion=complete_goal, show_default=False)
TASK_ARG = _t.Argument(..., metavar="TASK", help="Task id.", autocompletion=complete_task, show_default=False)
PLAN_ARG = _t.Argument(..., metavar="PLAN", help="Path of a dag.json.", show_default=False)
JSON_OPT = _t.Option(False, "--json", help="Machine-readable output (one JSON object).")
WORKER_NAME = ("--worker", "--name")     # one order everywhere: --worker first
RUNNER_OPT = _t.Option(None, "--runner", metavar="NAME",
                       help="Run every task with this runner, whatever the plan says: local, slurm or ray "
                            "(see docs/cluster.md).")
POLL_OPT = _t.Option(None, "--poll", min=0.01, metavar="SECONDS",
                     help="Poll the files every SECONDS instead of using inotify (homes on NFS).")
