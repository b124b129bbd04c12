"""The live view of a goal, kept up to date from events (shared by `run` and `watch`)."""
from __future__ import annotations

import threading
import time
from collections import deque

from ..store import parse_iso
from .common import fmt_duration, fmt_event

ORDER = ("done", "running", "ready", "waiting", "retrying", "failed", "blocked", "cancelled")
COLOURS = {"done": "green", "running": "cyan", "ready": "blue", "waiting": "white", "retrying": "yellow",
           "failed": "red", "blocked": "magenta", "cancelled": "bright_black"}


class GoalView:
    def __init__(self, detail: dict, recent: int = 8):
        self.goal = detail["goal"]
        self.tasks: dict[str, dict] = {}
        self.recent: deque[str] = deque(maxlen=recent)
        self.finished = False
        self.outcome = None
        self.lock = threading.Lock()     # rich redraws from its own thread
        self.load(detail)

    def load(self, detail: dict) -> None:
        self.tasks = {}
        for r in detail["tasks"]:
            row = dict(r)
            row["t0"] = time.time() - (r.get("duration") or 0) if r["state"] == "running" else None
            self.tasks[r["task"]] = row
        self.finished = detail["state"] in ("done", "failed", "cancelled")
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
                if st in ("ready", "waiting", "running"):
                    self.finished = False
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

    def __rich__(self):
        with self.lock:
            return self._render()

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        total = len(self.tasks)
        c = self.counts()
        ended = sum(c.get(s, 0) for s in ("done", "failed", "blocked", "cancelled"))
        head = Text()
        head.append(f"{self.goal}  ", style="bold")
        head.append(f"{c.get('done', 0)}/{total} done  ")
        for s in ORDER[1:]:
            if c.get(s):
                head.append(f"{s} {c[s]}  ", style=COLOURS[s])
        if self.finished:
            head.append(f"[{self.outcome}]", style="bold green" if self.outcome == "done" else "bold red")
        bar = ProgressBar(total=max(total, 1), completed=ended, width=60)
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
        parts = [head, bar]
        if running:
            parts.append(run)
        if self.recent:
            parts.append(Text("\n".join(self.recent), style="bright_black"))
        return Group(*parts)
