"""The live views, kept up to date from events (GoalView is shared by `run` and `watch`).

`watch` redraws when an event arrives -- it sleeps on the follower's inotify fd, not on a
timer. While tasks run it also wakes once a second so their elapsed times tick; with nothing
running it sleeps until the next event.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from ..store import parse_iso
from .common import fmt_duration, fmt_event

ORDER = ("done", "running", "awaiting_approval", "ready", "waiting", "retrying", "failed", "blocked", "skipped",
         "cancelled")
COLOURS = {"done": "green", "running": "cyan", "ready": "blue", "waiting": "white", "retrying": "yellow",
           "failed": "red", "blocked": "magenta", "cancelled": "bright_black", "skipped": "bright_black",
           "awaiting_approval": "bold yellow"}
ENDED = ("done", "failed", "cancelled")
TICK = 1.0          # s: the elapsed-time tick while tasks run (never faster)


class GoalView:
    def __init__(self, detail: dict, recent: int = 8):
        self.goal = detail["goal"]
        self.tasks: dict[str, dict] = {}
        self.recent: deque[str] = deque(maxlen=recent)
        self.finished = False
        self.outcome = None
        self.lock = threading.Lock()     # rich redraws from its own thread (dagrun run)
        self.load(detail)

    def load(self, detail: dict) -> None:
        with self.lock:
            self.tasks = {}
            for r in detail["tasks"]:
                row = dict(r)
                row["t0"] = time.time() - (r.get("duration") or 0) if r["state"] == "running" else None
                self.tasks[r["task"]] = row
            self.finished = detail["state"] in ENDED
            self.outcome = detail["state"] if self.finished else None

    def apply(self, e: dict) -> bool:
        with self.lock:
            return self._apply(e)

    def _apply(self, e: dict) -> bool:
        typ = e.get("type", "")
        t = e.get("task")
        if typ.endswith("goal.finished"):
            self.finished = True
            self.outcome = e.get("outcome")
        elif t in self.tasks:
            row = self.tasks[t]
            if typ.endswith("status.updated"):
                st = e.get("status")
                if st == "reset":
                    st = "waiting"
                row["state"] = st
                if e.get("attempt"):
                    row["attempt"] = e["attempt"]
                if e.get("worker"):
                    row["worker"] = e["worker"]
                if st == "running":
                    try:
                        row["t0"] = parse_iso(e["ts"])
                    except (KeyError, ValueError):
                        row["t0"] = time.time()
                elif e.get("duration") is not None:
                    row["duration"] = e["duration"]
                if st in ("ready", "waiting", "running", "retrying", "awaiting_approval"):
                    self.finished = False
                if st == "awaiting_approval" and e.get("prompt"):
                    row["reason"] = e["prompt"]
            elif typ.endswith("task.blocked") and e.get("blocked_by"):
                row["state"] = "blocked"
                row["blocked_by"] = e["blocked_by"]
        self.recent.append(fmt_event(e))
        return True

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.tasks.values():
            c[r["state"]] = c.get(r["state"], 0) + 1
        return c

    def running(self) -> bool:
        with self.lock:
            return any(r["state"] == "running" for r in self.tasks.values())

    def progress(self) -> tuple[int, int]:
        c = self.counts()
        return sum(c.get(s, 0) for s in ("done", "failed", "blocked", "cancelled", "skipped")), len(self.tasks)

    def __rich__(self):
        with self.lock:
            return self._render()

    def _head(self):
        from rich.text import Text

        c = self.counts()
        head = Text()
        head.append(f"{self.goal}  ", style="bold")
        head.append(f"{c.get('done', 0)}/{len(self.tasks)} done  ")
        for s in ORDER[1:]:
            if c.get(s):
                head.append(f"{s} {c[s]}  ", style=COLOURS[s])
        if self.finished:
            head.append(f"[{self.outcome}]", style="bold green" if self.outcome == "done" else "bold red")
        return head

    def _render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        ended, total = self.progress()
        bar = Table.grid(padding=(0, 1))          # a bare ProgressBar ends without a line break
        bar.add_row(progress_bar(self.counts(), ended, total, 60),
                    Text(f"{ended}/{total} ended", style="bright_black"))
        run = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        run.add_column("running")
        run.add_column("attempt", justify="right")
        run.add_column("elapsed", justify="right")
        run.add_column("worker")
        now = time.time()
        running = [r for r in self.tasks.values() if r["state"] == "running"]
        for r in sorted(running, key=lambda r: r.get("t0") or now)[:20]:
            run.add_row(r["task"], str(r.get("attempt") or ""), fmt_duration(now - (r.get("t0") or now)),
                        str(r.get("worker") or ""))
        if len(running) > 20:
            run.add_row(f"... and {len(running) - 20} more", "", "", "")
        parts = [self._head(), bar]
        if running:
            parts.append(run)
        by_state = Text()
        for s in ("awaiting_approval", "ready", "retrying", "waiting", "failed", "blocked", "skipped", "cancelled"):
            ids = [t for t, r in self.tasks.items() if r["state"] == s]
            if ids:
                shown = " ".join(ids[:12]) + (f" ... (+{len(ids) - 12})" if len(ids) > 12 else "")
                by_state.append(f"{s:>9}: ", style=COLOURS[s])
                by_state.append(shown + "\n")
        if by_state:
            by_state.rstrip()
            parts.append(by_state)
        if self.recent:
            parts.append(Text("\n".join(self.recent), style="bright_black", no_wrap=True, overflow="ellipsis"))
        return Group(*parts)


class GoalsView:
    """Every goal under the home: one row each, plus the latest events of all of them."""

    def __init__(self, views: dict[str, GoalView], recent: int = 10):
        self.views = views
        self.recent: deque[str] = deque(maxlen=recent)
        self.lock = threading.Lock()

    def apply(self, e: dict, load) -> None:
        g = e.get("goal")
        with self.lock:
            if g not in self.views:
                self.views[g] = GoalView(load(g))
            self.views[g].apply(e)
            self.recent.append(fmt_event(e))

    def finished(self) -> bool:
        return all(v.finished for v in self.views.values())

    def running(self) -> bool:
        return any(v.running() for v in self.views.values())

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            t = Table(box=None, header_style="bold", pad_edge=False)
            for h in ("goal", "state", "progress", "done", "running", "other"):
                t.add_column(h)
            for g in sorted(self.views):
                v = self.views[g]
                with v.lock:
                    c = v.counts()
                    ended, total = v.progress()
                    state = (v.outcome or "ended") if v.finished else ("running" if c.get("running") else "waiting")
                    other = " ".join(f"{k}:{n}" for k, n in c.items() if k not in ("done", "running"))
                    t.add_row(g, Text(state, style=COLOURS.get(state, "")), progress_bar(c, ended, total, 30),
                              f"{c.get('done', 0)}/{total}", str(c.get("running", 0)), other)
            parts = [t]
            if self.recent:
                parts.append(Text("\n".join(self.recent), style="bright_black", no_wrap=True, overflow="ellipsis"))
            return Group(*parts)


def progress_bar(counts: dict, ended: int, total: int, width: int):
    """How much of the goal has ended, green only while nothing failed: a goal with failed,
    blocked or cancelled tasks draws its bar red, so "all ended" never looks like "all done"."""
    from rich.progress_bar import ProgressBar

    bad = any(counts.get(k) for k in ("failed", "blocked", "cancelled"))
    style = "red" if bad else "green"
    return ProgressBar(total=max(total, 1), completed=ended, width=width,
                       complete_style="red" if bad else "cyan", finished_style=style)


def _final_line(v: GoalView) -> str:
    c = v.counts()
    parts = ", ".join(f"{n} {k}" for k, n in c.items())
    return f"goal {v.goal} {v.outcome or 'ended'}: {parts}"


def watch_goal(home, goal: str, *, tty: bool, poll: float | None = None) -> int:
    from ..events import PLAN_REPLACED, Follower
    from ..status import goal_detail

    fol = Follower(home, goal, start="end", poll=poll)     # before the snapshot: nothing is missed
    try:
        view = GoalView(goal_detail(home, goal))
        if tty:
            from rich.live import Live

            from .common import console
            with Live(view, console=console(), auto_refresh=False, transient=False) as live:
                while not view.finished:
                    fol.wait(TICK if view.running() else None)
                    _feed(fol, view, lambda: goal_detail(home, goal), PLAN_REPLACED)
                    live.refresh()
        else:
            ended, total = view.progress()
            if not view.finished:
                print(f"watching goal {goal}: {ended}/{total} ended", flush=True)
            while not view.finished:
                fol.wait()
                for e in _feed(fol, view, lambda: goal_detail(home, goal), PLAN_REPLACED):
                    print(fmt_event(e), flush=True)
    finally:
        fol.close()
    print(_final_line(view), flush=True)
    return 0 if view.outcome == "done" else 1


def _feed(fol, view: GoalView, load, replaced: str) -> list[dict]:
    batch = fol.read()
    for e in batch:
        view.apply(e)
    if any(e.get("type") == replaced for e in batch):
        view.load(load())              # the task list changed: start from the files again
    return batch


def watch_all(home, *, tty: bool, poll: float | None = None) -> int:
    """No goal named and not exactly one unfinished: every goal, until all have ended."""
    from ..events import Follower
    from ..status import goal_detail

    if not home.goals():
        print(f"no goals under {home.root}", flush=True)
        return 0
    fol = Follower(home, None, start="end", poll=poll)
    try:
        load = lambda g: goal_detail(home, g)   # noqa: E731
        gv = GoalsView({g: GoalView(load(g)) for g in home.goals()})
        if tty:
            from rich.live import Live

            from .common import console
            with Live(gv, console=console(), auto_refresh=False, transient=False) as live:
                while gv.views and not gv.finished():
                    fol.wait(TICK if gv.running() else None)
                    for e in fol.read():
                        gv.apply(e, load)
                    live.refresh()
        else:
            for g in sorted(gv.views):
                print(_final_line(gv.views[g]) if gv.views[g].finished else
                      f"watching goal {g}: {gv.views[g].progress()[0]}/{gv.views[g].progress()[1]} ended", flush=True)
            while gv.views and not gv.finished():
                fol.wait()
                for e in fol.read():
                    gv.apply(e, load)
                    print(fmt_event(e), flush=True)
    finally:
        fol.close()
    return 0 if all(v.outcome == "done" for v in gv.views.values()) else 1
