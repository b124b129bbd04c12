"""Event types (the only place they are spelled), appending, reading and following.

events.jsonl is the goal's state bus: every state change appends one JSON line with a single
O_APPEND write. The engine also uses it as its change feed -- an append wakes the watcher,
the engine reads the new lines from its offset and updates the scheduler for just those
tasks -- but the files stay the truth: an event is a hint that is checked against the marker
before the scheduler believes it, and a periodic rescan repairs anything a crash lost.
"""
from __future__ import annotations

import os
import socket

import orjson

from . import fsio
from .errors import os_error
from .store import Home, now_iso

PLAN_CREATED = "agent.plan.created"
PLAN_REPLACED = "agent.plan.replaced"
TASK_STATUS = "agent.task.status.updated"
TASK_BLOCKED = "agent.task.blocked"
GOAL_FINISHED = "agent.goal.finished"
ALL_TYPES = (PLAN_CREATED, PLAN_REPLACED, TASK_STATUS, TASK_BLOCKED, GOAL_FINISHED)

# values of "status" in agent.task.status.updated
READY, RUNNING, DONE, FAILED, RETRYING, CANCELLED, RESET = (
    "ready", "running", "done", "failed", "retrying", "cancelled", "reset")

MAX_LINE = 3800   # one write(2) well under a page; long text fields are cut to fit
_HOST = socket.gethostname()


def make(type_: str, goal: str, **fields) -> dict:
    ev = {"ts": now_iso(), "type": type_, "goal": goal}
    for k, v in fields.items():
        if v is not None:
            ev[k] = v
    return ev


def encode(ev: dict) -> bytes:
    line = orjson.dumps(ev)
    if len(line) > MAX_LINE:
        for k in ("reason", "summary", "detail"):
            if isinstance(ev.get(k), str) and len(ev[k]) > 200:
                ev = {**ev, k: ev[k][:200] + "..."}
        line = orjson.dumps(ev)
        if len(line) > MAX_LINE:
            ev = {k: ev[k] for k in ("ts", "type", "goal", "task", "status", "attempt", "worker") if k in ev}
            ev["truncated"] = True
            line = orjson.dumps(ev)
    return line + b"\n"


def emit(home: Home, goal: str, type_: str, **fields) -> dict:
    ev = make(type_, goal, **fields)
    path = home.events_path(goal)
    try:
        fsio.append_line(path, encode(ev))
    except OSError as e:
        raise os_error("append to", path, e) from None
    return ev


def status(home: Home, goal: str, task: str, st: str, **fields) -> dict:
    return emit(home, goal, TASK_STATUS, task=task, status=st, **fields)


class Reader:
    """Reads complete new lines from an events.jsonl, remembering the offset (tail -f)."""

    def __init__(self, path: str, offset: int = 0):
        self.path = path
        self.offset = offset
        self._partial = b""

    def size_changed(self) -> bool:
        try:
            return os.stat(self.path).st_size != self.offset + len(self._partial)
        except FileNotFoundError:
            return False

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset + len(self._partial))
                data = f.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        self.offset += cut
        out = []
        for line in data[:cut].splitlines():
            if not line.strip():
                continue
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # never written by us (we write whole lines); skip what we cannot read
        return out


def mentions(path: str, needle: str, tail: int | None = None) -> bool:
    """Does events.jsonl (or its last `tail` bytes) contain `needle`? (A cheap look for one
    event by its id, without parsing.)"""
    try:
        with open(path, "rb") as f:
            if tail is not None:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - tail))
            return needle.encode() in f.read()
    except FileNotFoundError:
        return False


def read_all(path: str) -> list[dict]:
    return Reader(path).read()
