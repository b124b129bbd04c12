"""Event types (the only place they are spelled), appending, reading and following.

events.jsonl is the goal's state bus: every state change appends one JSON line with a single
O_APPEND write. The engine also uses it as its change feed -- an append wakes the watcher,
the engine reads the new lines from its offset and updates the scheduler for just those
tasks -- but the files stay the truth: an event is a hint that is checked against the marker
before the scheduler believes it, and a periodic rescan repairs anything a crash lost.
"""
from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

import orjson

from . import fsio, lazyre
from .errors import UsageError, os_error
from .store import Home, now_iso, parse_iso

PLAN_CREATED = "agent.plan.created"
PLAN_REPLACED = "agent.plan.replaced"
TASK_STATUS = "agent.task.status.updated"
TASK_BLOCKED = "agent.task.blocked"
GOAL_FINISHED = "agent.goal.finished"
GOAL_INTEGRATED = "agent.goal.integrated"    # code workspaces: workspace.integrate at the goal's end
HOOK_FAILED = "agent.hook.failed"      # a hook (hooks.py) failed; the task's outcome is unchanged
TASK_BUDGET = "agent.task.budget"        # a running task spent past its soft share of the budget
GOAL_BUDGET = "agent.goal.budget"        # `dagrun budget GOAL --add`: the pool was raised
TASK_RESOURCES = "agent.task.resources"  # an ended attempt gives its resource units back (just before it does)
TASK_PLACED = "agent.task.placed"        # a cluster runner's queued attempt started on a node
ALL_TYPES = (PLAN_CREATED, PLAN_REPLACED, TASK_STATUS, TASK_BLOCKED, GOAL_FINISHED, GOAL_INTEGRATED, HOOK_FAILED,
             TASK_BUDGET, GOAL_BUDGET, TASK_RESOURCES, TASK_PLACED)

# values of "status" in agent.task.status.updated
from .states import AWAITING, CANCELLED, DONE, FAILED, READY, RETRYING, RUNNING, SKIPPED  # noqa: E402,F401
RESET = "reset"              # a retry took the marker away: the task is pending again

MAX_LINE = 3800   # one write(2) well under a page; long text fields are cut to fit
_HOST = os.uname().nodename     # gethostname(2) on Linux: no socket import


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
    return append(home, goal, make(type_, goal, **fields))


def append(home: Home, goal: str, ev: dict) -> dict:
    """Append an event made by make() (one write(2), see fsio.append_line). In a thread that
    holds its events (hold(): the engine's loop, for one turn) the line waits in memory for
    flush(), which writes each goal's lines of the turn with one write(2)."""
    path = home.events_path(goal)
    held = getattr(_held, "lines", None)
    if held is not None:
        held.setdefault(path, []).append(encode(ev))
        return ev
    try:
        fsio.append_line(path, encode(ev))
    except OSError as e:
        raise os_error("append to", path, e) from None
    return ev


# The engine's loop appends ~3 lines per task (running, done, the dependents' ready), most
# of them in the same turn: held in memory until the turn ends they cost one open/write/close
# per goal and turn instead of one per line. Nothing another process waits for is delayed
# longer than the turn (the loop flushes before it sleeps); a reader in the same thread
# (Reader, iter_all, mentions, the goal's summary) flushes first; a line that must be on disk
# before a next step (a hook's event before the hook runs, a resource `released` before the
# units go back) is flushed right after it is appended. A crash loses at most the lines of
# the turn -- like a crash between a marker and its event always could: events are the change
# feed, the files are the truth, and the rescan repairs what a lost line would have said.
_held = threading.local()
_FLUSH_CHUNK = 1 << 16


# What a holding thread flushed is also kept, per file, as the run of bytes it wrote and the
# offset they start at (fsio.append_line returns where each write ended): that thread's own
# Reader of the file takes its next lines from there instead of opening the file and reading
# them back -- only when they start exactly where the Reader stands, so lines another process
# appended in between (not in the run: the offsets do not meet) are read from the file as
# before. Lines appended by others after ours are read in the same call (one stat says the
# file is longer than our run: Reader.read) -- not left for a next look that the watcher may
# never ring for (its event can be the one that woke this very read). A Reader with nothing of
# ours to take stats the file and reads only when it grew past its offset.
_MINE_MAX = 1 << 22          # bytes kept per file at most (a Reader that never comes: dropped)


def hold() -> None:
    """This thread's appends wait in memory until flush() (or release())."""
    if getattr(_held, "lines", None) is None:
        _held.lines = {}
        _held.mine = {}


def flush() -> None:
    """Write this thread's held lines (one write(2) per goal; in order). Raises the first
    append error (FsError) after trying every goal."""
    held = getattr(_held, "lines", None)
    if not held:
        return
    first = None
    for path in list(held):
        lines = held.pop(path)
        i = 0
        while i < len(lines):       # whole lines, up to _FLUSH_CHUNK bytes per write(2)
            j, n = i, 0
            while j < len(lines) and (j == i or n + len(lines[j]) <= _FLUSH_CHUNK):
                n += len(lines[j])
                j += 1
            chunk = b"".join(lines[i:j])
            try:
                end = fsio.append_line(path, chunk, lines=j - i)
            except OSError as e:
                first = first or os_error("append to", path, e)
                break
            _remember(path, end - len(chunk), chunk, end)
            i = j
    if first is not None:
        raise first


def _remember(path: str, start: int, chunk: bytes, end: int) -> None:
    """Keep what this thread just wrote at [start, end) of path (see _MINE_MAX above)."""
    mine = getattr(_held, "mine", None)
    if mine is None:
        return
    run = mine.get(path)
    if run is not None and run[1] == start and run[2] + len(chunk) <= _MINE_MAX:
        run[1] = end                         # right after the last write: the run goes on
        run[2] += len(chunk)
        run[3].append(chunk)
    else:                                     # somebody else wrote in between: a new run
        mine[path] = [start, end, len(chunk), [chunk]]


def _take_mine(path: str, pos: int) -> bytes | None:
    """The bytes this thread wrote to path from offset pos on, if it wrote all of them."""
    mine = getattr(_held, "mine", None)
    run = mine.get(path) if mine else None
    if run is None or run[0] != pos:
        return None
    del mine[path]
    return b"".join(run[3])


def wrote_all(path: str, start: int, end: int) -> bool:
    """Did this holding thread write every byte of path in [start, end) (flushed, see
    _remember)? False when it cannot tell -- another writer in between, a Reader took the
    run, the run outgrew _MINE_MAX -- so a caller only ever trusts it the safe way round."""
    if start == end:
        return True
    mine = getattr(_held, "mine", None)
    run = mine.get(path) if mine else None
    return run is not None and run[0] <= start and run[1] == end


def release() -> None:
    """Flush and stop holding."""
    try:
        flush()
    finally:
        _held.lines = None
        _held.mine = None


def status(home: Home, goal: str, task: str, st: str, **fields) -> dict:
    return emit(home, goal, TASK_STATUS, task=task, status=st, **fields)


class Reader:
    """Reads complete new lines from an events.jsonl, remembering the offset (tail -f)."""

    def __init__(self, path: str, offset: int = 0):
        self.path = path
        self.offset = offset
        self._partial = b""

    def size_changed(self) -> bool:
        flush()
        try:
            return os.stat(self.path).st_size != self.offset + len(self._partial)
        except FileNotFoundError:
            return False

    def _from(self, pos: int, look: bool) -> bytes:
        """The file's bytes from offset pos on; look: one stat first, and no open when the file
        is not longer than pos."""
        try:
            if look and os.stat(self.path, follow_symlinks=False).st_size <= pos:
                return b""
            with open(self.path, "rb", opener=_nofollow) as f:
                f.seek(pos)
                return f.read()
        except FileNotFoundError:
            return b""

    def read(self) -> list[dict]:
        flush()
        pos = self.offset + len(self._partial)
        data = _take_mine(self.path, pos) if not self._partial else None
        if data is not None:
            # ours from memory, and what others appended after it from the file, in the same
            # call: the inotify event of such an append may already have been taken -- it woke
            # the turn that now reads our run -- and nothing else would ring for it until the
            # periodic rescan (seen: a `dagrun run` and a `dagrun worker --until-idle` on one
            # goal, the run waiting 10 s for the worker's last `done` lines, 1 run in 8)
            data += self._from(pos + len(data), look=True)
        else:
            mine = getattr(_held, "mine", None)
            if mine is not None:          # a holding thread (the engine): a stat says whether to read
                mine.pop(self.path, None)     # a run that does not start here: the file has it
            data = self._from(pos, look=mine is not None)
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


def at_line_start(path: str, pos: int) -> bool:
    """Does a line of the log begin at offset pos (its start, or right after a newline, and
    the log at least that long)?"""
    if pos == 0:
        return True
    flush()
    try:
        fd = _nofollow(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return os.pread(fd, 1, pos - 1) == b"\n"
    finally:
        os.close(fd)


def _nofollow(path: str, flags: int) -> int:
    """events.jsonl is never read through a symbolic link (ELOOP: see fsio.append_line)."""
    return os.open(path, flags | os.O_NOFOLLOW)


def mentions(path: str, needle: str, tail: int | None = None) -> bool:
    """Does events.jsonl (or its last `tail` bytes) contain `needle`? (A cheap look for one
    event by its id, without parsing.)"""
    flush()
    try:
        with open(path, "rb", opener=_nofollow) as f:
            if tail is not None:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - tail))
            return needle.encode() in f.read()
    except FileNotFoundError:
        return False


def read_all(path: str) -> list[dict]:
    return Reader(path).read()


def iter_all(path: str, chunk: int = 1 << 20, *, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Every complete line of an events.jsonl, one parsed event at a time: memory for one
    chunk, not for the whole log (a 100 000-task goal's log is ~50 MB and 300 000 events).
    start, stop: only the bytes [start, stop) (offsets where lines begin, see at_line_start)."""
    flush()
    try:
        f = open(path, "rb", opener=_nofollow)
    except FileNotFoundError:
        return
    with f:
        if start:
            f.seek(start)
        left = None if stop is None else max(0, stop - start)
        rest = b""
        while True:
            if left is None:
                data = f.read(chunk)
            else:
                data = f.read(min(chunk, left)) if left else b""
                left -= len(data)
            if not data:
                return                          # a last line without its newline is not complete
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            for line in data[:cut].splitlines():
                if not line.strip():
                    continue
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # never written by us (we write whole lines); skip what we cannot read


# ---------------------------------------------------------------------------------- following
class Follower:
    """`tail -f` over one goal's events.jsonl, or over every goal under the home (`goal=None`:
    goals submitted later join as they appear, from their first line).

    wait() sleeps on the inotify fd of watcher.py (one watch per goal folder plus one on
    goals/), so a follower costs nothing while nothing happens and wakes within
    milliseconds of an append. Where inotify is unavailable (NFS, exhausted watches,
    DAGRUN_NO_INOTIFY=1) it polls the files' sizes every `poll` seconds instead.

    start="begin" reads each goal's log from its first line; "end" only what is appended
    from now on (take a snapshot of the files *after* creating the follower and apply the
    events it reads afterwards: nothing falls in between)."""

    def __init__(self, home: Home, goal: str | None = None, *, start: str = "begin",
                 poll: float | None = None, watch: bool = True):
        self.home = home
        self.goal = goal
        self.start = start
        self.watcher = None
        if watch:                        # watch=False: read what is there (no inotify, no home created)
            from .watcher import Watcher     # not needed by the protocol commands: keep their start fast
            if goal is None:
                home.ensure()               # the watch on goals/ needs the folder
            self.watcher = Watcher(home.goals_dir, poll=poll)
        self.readers: dict[str, Reader] = {}
        self._initial = True
        self._discover()
        self._initial = False

    def _discover(self) -> None:
        names = [self.goal] if self.goal else self.home.goals()
        for g in names:
            if g in self.readers:
                continue
            if self.watcher is not None:
                self.watcher.watch_goal(g)     # watch first, then read: no append slips between
            r = Reader(self.home.events_path(g))
            if self._initial and self.start == "end":
                try:
                    r.offset = os.stat(r.path).st_size
                except FileNotFoundError:
                    pass
            self.readers[g] = r

    def read(self) -> list[dict]:
        """The complete lines appended since the last read, oldest first (merged by time
        across goals)."""
        out: list[dict] = []
        for r in list(self.readers.values()):
            out.extend(r.read())
        if len(self.readers) > 1:
            out.sort(key=lambda e: str(e.get("ts", "")))
        return out

    def wait(self, timeout: float | None = None) -> None:
        """Sleep until something may have been appended (or `timeout` seconds passed)."""
        w = self.watcher
        if w is None:
            raise RuntimeError("Follower(watch=False) cannot wait")
        if w.polling:
            step = w.poll or 1.0
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if any(r.size_changed() for r in self.readers.values()):
                    return
                if self.goal is None and set(self.home.goals()) - self.readers.keys():
                    self._discover()
                    return
                left = step if deadline is None else min(step, deadline - time.monotonic())
                if left <= 0:
                    return
                time.sleep(left)
        p = select.poll()
        p.register(w.fd, select.POLLIN)
        try:
            ready = p.poll(None if timeout is None else max(0.0, timeout) * 1000.0)
        except InterruptedError:
            ready = []
        if ready:
            _, root_changed = w.read()
            if w.polling or (root_changed and self.goal is None):
                self._discover()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()


# ---------------------------------------------------------------------------------- filtering
_REL = lazyre.Pattern(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")


def parse_since(text: str, now: float | None = None) -> str:
    """--since: an ISO time (UTC unless it names an offset; 'T' or a space), a Unix time, or
    an age like 90s / 15m / 2h / 1d. Returns the canonical ts string: event times have a
    fixed width, so comparing strings compares times."""
    s = text.strip()
    now = time.time() if now is None else now
    m = _REL.match(s)
    if m:
        return now_iso(now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])
    try:
        return now_iso(float(s))
    except ValueError:
        pass
    iso = s.replace(" ", "T", 1)
    if len(iso) == 10:
        iso += "T00:00:00"
    try:
        import datetime as dt
        d = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        return now_iso(d.timestamp())
    except ValueError:
        raise UsageError(f"--since {text!r}: expected an ISO time (2026-11-25T14:00:00Z), a Unix time "
                         f"or an age like 90s, 15m, 2h, 1d") from None


def matcher(since: str | None = None, types: list[str] | None = None):
    """A predicate for `dagrun events`: at or after `since` (a canonical ts) and of one of
    `types` (full names, or a suffix such as task.blocked / blocked / goal.finished)."""
    types = [t for t in (types or []) if t]

    def ok(e: dict) -> bool:
        if since and str(e.get("ts", "")) < since:
            return False
        if types:
            typ = str(e.get("type", ""))
            return any(typ == t or typ.endswith("." + t) for t in types)
        return True
    return ok


def age(e: dict, now: float | None = None) -> float | None:
    """Seconds since the event was written (None for a line without a readable ts)."""
    try:
        return (time.time() if now is None else now) - parse_iso(str(e["ts"]))
    except (KeyError, ValueError):
        return None
