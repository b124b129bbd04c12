"""The on-disk layout. Every path comes from here; task state is derived from which files exist.

    $DAGRUN_HOME/goals/<goal>/plan.json              normalised plan as submitted
    $DAGRUN_HOME/goals/<goal>/events.jsonl           append-only event log (also the change feed)
    $DAGRUN_HOME/goals/<goal>/summary.json           written once when the goal ends
    $DAGRUN_HOME/goals/<goal>/archive/               task folders replaced by a plan edit or a forced retry
    $DAGRUN_HOME/goals/<goal>/tasks/<task>/claim/owner.json   exists while a worker holds the task
    $DAGRUN_HOME/goals/<goal>/tasks/<task>/claim/heartbeat    touched by `dagrun heartbeat` (stall/lease)
    $DAGRUN_HOME/goals/<goal>/tasks/<task>/prompt.md
    $DAGRUN_HOME/goals/<goal>/tasks/<task>/output    stdout of the successful attempt
    $DAGRUN_HOME/goals/<goal>/tasks/<task>/stderr.log   stderr of the latest finished attempt
    $DAGRUN_HOME/goals/<goal>/tasks/<task>/done | failed | cancelled   markers (JSON inside)
    $DAGRUN_HOME/goals/<goal>/tasks/<task>/attempts/<n>.out|.err|.json   every attempt, kept

Precedence when several markers exist (a race between `cancel` and a finishing agent):
done > cancelled > failed. A claim with a marker beside it is a leftover and is swept.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
import time
from dataclasses import dataclass, field

import orjson

from . import bulk, fsio
from . import states as S
from .digests import sha1
from .errors import FsError, NotFound, os_error
from .plan import ID_RE, Plan, check_id
from .proc import pid_alive
from .records import NEW, plain_methods
from .states import CANCELLED, DONE, FAILED, MARKERS, PENDING, RUNNING  # noqa: F401 (re-exported)

CLAIM = "claim"
OWNER = "owner.json"
HEARTBEAT = "heartbeat"
ATTEMPTS = "attempts"

# Attempt outcomes. Counted ones use up `retries`; the others were not the agent's fault.
COUNTED = {S.FAILED, "timeout", "stalled", "output_limit", "check_failed"}
UNCOUNTED = {"lost", "interrupted", S.CANCELLED, "superseded", "budget"}


HOST_TAG = sha1(os.uname().nodename.encode()).hexdigest()[:8]   # in names of scratch folders


_VALID: set[str] = set()      # ids that passed ID_RE: a pure check, so remembered (bounded)


def _id(kind: str, s: str) -> str:
    if s not in _VALID:                      # every path of the home goes through here
        if ID_RE.fullmatch(s) is None:
            check_id(kind, s)                # raises the usual one-line error
        if len(_VALID) >= 65536:
            _VALID.clear()
        _VALID.add(s)
    return s


def default_home() -> str:
    return os.environ.get("DAGRUN_HOME") or os.path.join(os.getcwd(), ".dagrun")


_ISO_SECOND = (-1, "")     # the last whole second formatted (an engine stamps ~6 times per task);
                           # one tuple, swapped whole: threads never see a half-updated pair


def now_iso(t: float | None = None) -> str:
    global _ISO_SECOND
    t = time.time() if t is None else t
    s = int(t // 1)
    sec, text = _ISO_SECOND
    if sec != s:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        _ISO_SECOND = (s, text)
    return f"{text}.{int(t % 1 * 1e6):06d}Z"


def parse_iso(s: str) -> float:
    import datetime as dt
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


_SECONDS: dict[str, int] = {}     # "YYYY-MM-DDTHH:MM:SS" -> its Unix seconds (parse_ts; a run's few)


def parse_ts(v) -> float | None:
    """A time from a record's field (ISO string or Unix seconds), None when it is missing or
    not one -- whatever a hand-edited file put there.

    A string in now_iso's own form ("YYYY-MM-DDTHH:MM:SS.ffffffZ": every time dagrun writes)
    is read without datetime: its whole seconds once per distinct second (parse_iso, kept in
    _SECONDS), then (seconds * 10**6 + microseconds) / 10**6 -- exactly the float
    datetime.timestamp() returns (timedelta.total_seconds divides the same integer), so the
    same bits (tests/test_store.py pins it). A goal's end parses two per task (summary.py)."""
    if not v:
        return None
    if v.__class__ is str and len(v) == 27 and v[26] == "Z" and v[19] == "." and v[20:26].isdigit() \
            and v[20:26].isascii() and v[10] == "T" and v[4] == v[7] == "-" and v[13] == v[16] == ":":
        head = v[:19]
        sec = _SECONDS.get(head)
        if sec is None:
            if "Z" in head:
                return _parse_slow(v)
            try:
                sec = int(parse_iso(head + "+00:00"))
            except ValueError:
                return None
            if len(_SECONDS) > 4096:
                _SECONDS.clear()
            _SECONDS[head] = sec
        return (sec * 1_000_000 + int(v[20:26])) / 1_000_000
    return _parse_slow(v)


def _parse_slow(v) -> float | None:
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return parse_iso(str(v))
    except ValueError:
        return None


def dumps(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def as_int(v, default: int = 0) -> int:
    """An int from a record's field, whatever a hand-edited (or hostile) file put there."""
    if isinstance(v, bool):
        return default
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return default


def loads_obj(data: bytes | None) -> dict | None:
    """Like loads, but only a JSON object counts (records and markers are objects)."""
    v = loads(data)
    return v if isinstance(v, dict) else None


def loads(data: bytes | None):
    """JSON from a marker/record; None for a missing or unreadable one (a half-written file
    cannot exist -- we publish by rename -- but a hand-edited one can)."""
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class TurnMemo:
    """Answers about the home a thread remembers for one turn of the engine's loop (which
    calls hold() before its first turn, end() after each, release() at the end): a look made
    once per task or more is then made once per turn. Whatever changes during a turn counts
    from the next one, a few milliseconds later -- as if it had changed a moment after the
    look, which it may as well have. Threads that do not hold (scripts' commands, tests)
    look every time. Used by hooks.py (does the home's hooks folder exist) and resources.py
    (limits.json)."""

    def __init__(self) -> None:
        self._t = threading.local()

    def hold(self) -> None:
        self._t.seen = {}

    def end(self) -> None:
        seen = getattr(self._t, "seen", None)
        if seen:
            seen.clear()

    def release(self) -> None:
        self._t.seen = None

    def get(self, home: "Home", look):
        """look(home), remembered per home while this thread holds a turn."""
        seen = getattr(self._t, "seen", None)
        if seen is None:
            return look(home)
        got = seen.get(home.root)
        if got is None:
            got = seen[home.root] = look(home)
        return got

    def put(self, home: "Home", value) -> None:
        """What the thread has just read itself, as the turn's answer (when it holds one)."""
        seen = getattr(self._t, "seen", None)
        if seen is not None:
            seen[home.root] = value


def _identity(st: os.stat_result) -> tuple:
    """A file unchanged since this stat has the same (device, inode, size, mtime, ctime):
    what Home.read_output compares with the stat of an output it remembers."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(slots=True, init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class TaskFacts:
    """What the files say about one task (the scheduler turns pending into waiting/ready/blocked)."""
    state: str = PENDING              # done | skipped | failed | cancelled | running | awaiting_approval | pending
    attempt: int = 0                    # number of the latest attempt started (0: never)
    owner: dict | None = None           # claim/owner.json when running
    marker: dict | None = None          # the marker's JSON (detail=True only)
    record: dict | None = None          # attempts/<attempt>.json of the latest ended attempt
    claim_mtime: float = 0.0
    extra: dict = field(default_factory=dict)

    def __init__(self, state=PENDING, attempt=0, owner=None, marker=None, record=None, claim_mtime=0.0, extra=NEW):
        self.state, self.attempt, self.owner, self.marker, self.record = state, attempt, owner, marker, record
        self.claim_mtime = claim_mtime
        self.extra = {} if extra is NEW else extra

    __repr__, __eq__ = plain_methods("state", "attempt", "owner", "marker", "record", "claim_mtime", "extra")

    @property
    def failures(self) -> int:
        return as_int(self.record.get("failures", 0)) if self.record else 0

    @property
    def retry_at(self) -> float:
        try:
            return float(self.record.get("retry_at") or 0.0) if self.record else 0.0
        except (TypeError, ValueError):
            return 0.0


# Home.read_output's memory: how many outputs, and how many of their bytes (512 outputs of the
# 64 KiB it keeps at most). Empty outputs (no-op agents: every one of a wide plan's) cost
# an entry and no bytes: with 512 entries at most a layered-1000 plan forgot them all at
# once twice and read ~0.3 outputs a task the safe way again (six system calls each).
OUTPUTS_KEPT = 16384
OUTPUT_BYTES_KEPT = 512 * 65536


class Home:
    def __init__(self, root: str | None = None):
        self.root = os.path.abspath(root or default_home())
        self.goals_dir = os.path.join(self.root, "goals")
        self._outputs: dict[str, tuple] = {}     # read_output's memory: path -> (identity, limit, data, size)
        self._output_bytes = 0                   # the bytes it holds

    # -- creation
    def ensure(self) -> None:
        """Create the home 0700: prompts and outputs are often private (see ARCHITECTURE.md)."""
        if os.path.isdir(self.goals_dir):
            return
        try:
            fsio.makedirs(self.root, mode=0o700)
            fsio.makedirs(self.goals_dir, mode=0o700)
        except OSError as e:
            raise os_error("create home", self.root, e) from None

    # -- paths: built only from validated ids, so no path can leave the home (a "../x" or
    # "a/b" id raises here even if a caller forgot to check it)
    def goal_dir(self, g: str) -> str:
        return f"{self.goals_dir}/{g if g in _VALID else _id('goal', g)}"

    def plan_path(self, g: str) -> str:
        return self.goal_dir(g) + "/plan.json"

    def events_path(self, g: str) -> str:
        return self.goal_dir(g) + "/events.jsonl"

    def summary_path(self, g: str) -> str:
        return os.path.join(self.goal_dir(g), "summary.json")

    def hooks_due_dir(self, g: str) -> str:
        """Hooks due for this goal: one record per transition, removed once they ran."""
        return os.path.join(self.goal_dir(g), "hooks")

    def hooks_root(self) -> str:
        """$DAGRUN_HOME/hooks: the run-parts folders of the hooks every goal runs."""
        return self.root + "/hooks"

    def home_hooks_dir(self, event: str) -> str:
        """$DAGRUN_HOME/hooks/<event>.d: run-parts style hooks for every goal."""
        return f"{self.hooks_root()}/{event}.d"

    def archive_dir(self, g: str) -> str:
        return os.path.join(self.goal_dir(g), "archive")

    def tasks_dir(self, g: str) -> str:
        return os.path.join(self.goal_dir(g), "tasks")

    def task_dir(self, g: str, t: str) -> str:
        # concatenation, not os.path.join: the ids are checked (no "/"), and the engine builds
        # ~90 task paths per task it runs
        if g not in _VALID or t not in _VALID:     # (checked once per id: _id remembers)
            _id("goal", g)
            _id("task", t)
        return f"{self.goals_dir}/{g}/tasks/{t}"

    def claim_dir(self, g: str, t: str) -> str:
        return f"{self.task_dir(g, t)}/{CLAIM}"

    def task_paths(self, g: str, t: str) -> tuple[str, str, str, str]:
        """(task_dir, claim_dir, prompt_path, output_path) of g/t from one task_dir: what an
        attempt's start needs (its environment, its launch), built once."""
        d = self.task_dir(g, t)
        return d, f"{d}/{CLAIM}", d + "/prompt.md", d + "/output"

    def owner_path(self, g: str, t: str) -> str:
        return f"{self.task_dir(g, t)}/{CLAIM}/{OWNER}"

    def heartbeat_path(self, g: str, t: str) -> str:
        return f"{self.task_dir(g, t)}/{CLAIM}/{HEARTBEAT}"

    def marker_path(self, g: str, t: str, kind: str) -> str:
        # kind: a marker's name (done, failed, ...), never a path: concatenation, as task_dir
        return f"{self.task_dir(g, t)}/{kind}"

    def prompt_path(self, g: str, t: str) -> str:
        return self.task_dir(g, t) + "/prompt.md"

    def output_path(self, g: str, t: str) -> str:
        return self.task_dir(g, t) + "/output"

    def stderr_path(self, g: str, t: str) -> str:
        return self.task_dir(g, t) + "/stderr.log"

    # -- code workspaces (workspace.py): a task's git worktree and what capture publishes
    def worktree_path(self, g: str, t: str) -> str:
        return os.path.join(self.task_dir(g, t), "worktree")

    def snapshot_path(self, g: str, t: str) -> str:
        return os.path.join(self.task_dir(g, t), "snapshot.json")

    def patch_path(self, g: str, t: str) -> str:
        return os.path.join(self.task_dir(g, t), "patch")

    def changes_path(self, g: str, t: str) -> str:
        return os.path.join(self.task_dir(g, t), "changes.json")

    def goal_workspace_path(self, g: str) -> str:
        return os.path.join(self.goal_dir(g), "workspace.json")

    def attempts_dir(self, g: str, t: str) -> str:
        """The task's attempts/ folder; a symbolic link there (planted by an agent) is refused:
        records are never written, nor listed, through it."""
        p = os.path.join(self.task_dir(g, t), ATTEMPTS)
        if os.path.islink(p):
            raise FsError(f"refusing to use {p}: it is a symbolic link (attempts/ is made by dagrun; remove it)")
        return p

    def has_attempts(self, g: str, t: str) -> bool:
        """Is there an attempts/ folder? One lstat: isdir(attempts_dir()) was an lstat (the
        symlink refusal) and a stat. A symbolic link there is refused as attempts_dir does."""
        p = os.path.join(self.task_dir(g, t), ATTEMPTS)
        try:
            mode = os.lstat(p).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISLNK(mode):
            self.attempts_dir(g, t)          # raises: the same refusal, the same words
        return stat.S_ISDIR(mode)

    def attempt_path(self, g: str, t: str, n: int, ext: str) -> str:
        return os.path.join(self.attempts_dir(g, t), f"{int(n)}.{ext}")

    def attempt_record(self, g: str, t: str, n: int) -> dict | None:
        """attempts/<n>.json as a JSON object; None if missing, unreadable, not an object, or
        a symbolic link (a hand-edited `[1]` or a link is no record: never a crash)."""
        return loads_obj(fsio.read_bytes(self.attempt_path(g, t, n, "json"), follow=False))

    # -- goals
    def goals(self) -> list[str]:
        try:
            names = os.listdir(self.goals_dir)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise os_error("list goals in", self.goals_dir, e) from None
        return sorted(n for n in names if ID_RE.fullmatch(n) and os.path.isfile(os.path.join(self.goals_dir, n, "plan.json")))

    def unborn_goal_dir(self, g: str) -> str:
        """Where `submit` builds a goal before renaming it into place. The name carries host
        and pid, so a folder left by a submit that died can be proved dead and swept."""
        return os.path.join(self.goals_dir, f".new-{g}.{HOST_TAG}.{os.getpid()}.{os.urandom(4).hex()}")

    def sweep_unborn_goals(self, max_age: float = 3600.0) -> int:
        """Remove goal folders whose submit died before renaming them into place: on this
        host when the pid is gone, from other hosts (a shared NFS home) after max_age."""
        try:
            entries = [e for e in os.scandir(self.goals_dir) if e.name.startswith(".new-")]
        except OSError:
            return 0
        n = 0
        now = time.time()
        for e in entries:
            parts = e.name.rsplit(".", 3)
            dead = False
            if len(parts) == 4 and parts[1] == HOST_TAG and parts[2].isdigit():
                dead = not pid_alive(int(parts[2]))
            if not dead:
                try:
                    dead = now - e.stat(follow_symlinks=False).st_mtime > max_age
                except FileNotFoundError:
                    continue
            if dead:
                fsio.rmtree(e.path)
                n += 1
        return n

    def has_goal(self, g: str) -> bool:
        return os.path.isfile(self.plan_path(g))

    def plan_bytes(self, g: str) -> bytes | None:
        """plan.json's bytes (None: no such goal). A symlinked goal folder is refused: every
        command on a goal reads its plan first, so none reads or writes through the link."""
        if os.path.islink(self.goal_dir(g)):
            raise FsError(f"refusing to use {self.goal_dir(g)}: it is a symbolic link (goal folders are made "
                          f"by dagrun; remove it)")
        return fsio.read_bytes(self.plan_path(g))

    def load_plan(self, g: str) -> Plan:
        check_id("goal", g)
        data = self.plan_bytes(g)
        if data is None:
            raise NotFound(f"no goal {g!r} under {self.root} (submit a plan first; `dagrun status` lists goals)")
        try:
            return Plan.from_json(data)
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise FsError(f"corrupt plan file {self.plan_path(g)}: {e}") from None

    def plan_stamp(self, g: str) -> tuple:
        """Identity of the current plan.json (changes when a plan is replaced)."""
        try:
            st = os.stat(self.plan_path(g))
        except FileNotFoundError:
            return ()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # -- reading task files without following symlinks out of the home
    def open_task_file(self, path: str) -> int | None:
        """Open a file under the home for reading, following no symbolic link below the home
        folder itself: each component is opened with O_NOFOLLOW relative to the previous one,
        so a symlinked task folder, claim or output (planted by a sandboxed agent, or by
        another user of a shared home) cannot make dagrun read -- and put into a prompt, or
        print -- a file outside the home. None when the file does not exist."""
        got = self._open_task_file(path)
        return None if got is None else got[0]

    def _open_task_file(self, path: str) -> tuple[int, os.stat_result] | None:
        """open_task_file's (fd, the fstat that proved it regular)."""
        prefix = self.root + "/"
        if path.startswith(prefix) and "/." not in path[len(prefix) - 1:] and "//" not in path \
                and not path.endswith("/"):
            rel = path[len(prefix):]          # a plain path under the home (as Home builds them):
        else:                                 # relpath would return exactly this, at ~25 calls
            rel = os.path.relpath(path, self.root)
        parts = rel.split(os.sep)
        if rel.startswith("..") or os.path.isabs(rel) or not parts:
            raise FsError(f"refusing to read {path}: it is outside {self.root}")
        try:     # one openat2(2) with the same guarantees; the walk below names what it refused
            fd = fsio.open_beneath(self.root, rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.EXDEV):
                raise os_error("read", path, e) from None
            fd = None
        if fd is not None:
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise FsError(f"refusing to read {path}: not a regular file")
            except BaseException:
                os.close(fd)
                raise
            return fd, st
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise os_error("read", path, e) from None
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else os.O_DIRECTORY)
                try:
                    nxt = os.open(part, flags, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError) as e:
                    if isinstance(e, NotADirectoryError) and os.path.islink(os.path.join(self.root, *parts[:i + 1])):
                        raise FsError(f"refusing to read {path}: {os.path.join(self.root, *parts[:i + 1])} "
                                      f"is a symbolic link") from None
                    return None
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        raise FsError(f"refusing to read {path}: {os.path.join(self.root, *parts[:i + 1])} "
                                      f"is a symbolic link") from None
                    raise os_error("read", path, e) from None
                os.close(fd)
                fd = nxt
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FsError(f"refusing to read {path}: not a regular file")
            out, fd = fd, -1
            return out, st
        finally:
            if fd >= 0:
                os.close(fd)

    def read_task_file(self, path: str, limit: int | None = None) -> bytes | None:
        """A file's bytes (see open_task_file: no symlink is followed), None if missing."""
        got = self.read_task_file_sized(path, limit)
        return None if got is None else got[0]

    def read_task_file_sized(self, path: str, limit: int | None = None) -> tuple[bytes, int] | None:
        """(the first `limit` bytes, the whole size) of the file read by read_task_file."""
        got = self._read_task_file_stat(path, limit)
        return None if got is None else got[:2]

    def _read_task_file_stat(self, path: str, limit: int | None) -> tuple[bytes, int, os.stat_result] | None:
        got = self._open_task_file(path)
        if got is None:
            return None
        fd, st = got
        size = st.st_size
        try:
            data = fsio.read_fd(fd, limit, size_hint=size if limit is None else min(size, limit))
        finally:
            os.close(fd)
        return data, (size if limit is not None else max(size, len(data))), st

    def read_output(self, path: str, limit: int) -> tuple[bytes, int] | None:
        """read_task_file_sized(path, limit) of a committed output, remembered: the prompts of
        a fan-out's 500 tasks read the same upstream output 500 times, six system calls each
        (the safe walk: open the home, openat2, close, fstat, read, close). The second time
        one stat(2) of the path says whether it is still the inode read then, unchanged
        (device, inode, size, mtime and ctime all equal): then its bytes are the ones read.
        Anything else -- the output archived by a plan edit or a forced retry (ENOENT: the
        caller's Stale check), replaced, written to, or the path now through a symbolic link
        to another file -- is read again the safe way. A symbolic link can only lead back to
        the very inode the safe walk read, whose bytes were in the home when read. Outputs of
        up to 64 KiB are remembered, OUTPUTS_KEPT at most and OUTPUT_BYTES_KEPT bytes in all
        (then forgotten all at once). An empty output
        is b"" whatever the limit: one remembered by file_size (at its commit) serves any."""
        got = self._outputs.get(path)
        if got is not None and (got[1] == limit or got[3] == 0):
            ident = got[0]
            try:            # (made_empty's: no identity -- the name itself, not followed)
                st = os.stat(path) if ident is not None else os.lstat(path)
            except OSError:
                st = None
            if st is not None and (_identity(st) == ident if ident is not None
                                   else not st.st_size and stat.S_ISREG(st.st_mode)):
                return got[2], got[3]
        got = self._read_task_file_stat(path, limit)
        if got is None:
            return None
        data, size, st = got
        if st.st_size <= 65536:
            self._remember_output(path, st, limit, data, size)
        return data, size

    def _remember_output(self, path: str, st: os.stat_result | None, limit: int | None, data: bytes,
                         size: int) -> None:
        outputs = self._outputs
        old = outputs.pop(path, None)
        if old is not None:
            self._output_bytes -= len(old[2])
        if len(outputs) >= OUTPUTS_KEPT or self._output_bytes + len(data) > OUTPUT_BYTES_KEPT:
            outputs.clear()
            self._output_bytes = 0
        outputs[path] = (None if st is None else _identity(st), limit, data, size)
        self._output_bytes += len(data)

    def made_empty(self, path: str) -> None:
        """A task's output that lifecycle.commit_done has just created empty (fsio.write_fresh),
        remembered for read_output without a look at it (file_size's lstat): while the name
        itself (lstat, not followed) is an empty regular file, its bytes are b"" -- whichever
        inode it is, nothing is served that is not there. Anything else there (written to,
        a symbolic link, gone) is read the safe way."""
        self._remember_output(path, None, None, b"", 0)

    def file_size(self, path: str) -> int:
        """The size of a task's just-committed output (lifecycle.commit_done: the done marker's
        output_bytes), one lstat. An empty regular file is remembered for read_output as if
        read -- its bytes are b"" whatever resolves to that inode, so nothing is served that
        the safe walk could have refused to show -- and the first dependent's prompt then
        costs one stat, not the safe walk's six calls (no-op agents print nothing: a chain's
        every edge, a fan-out's sink reading 500 outputs)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return 0
        if not st.st_size and stat.S_ISREG(st.st_mode):
            self._remember_output(path, st, None, b"", 0)
        return st.st_size

    # -- facts
    def task_facts(self, g: str, t: str, *, detail: bool = False, view: bool = False) -> TaskFacts:
        tdir = self.task_dir(g, t)
        if view:
            # read-only views (status): a task done at its first attempt is all in its `done`
            # marker (the marker wins over anything else in the folder, and attempt 1 means
            # no earlier attempts/): one open+read instead of listing the folder first. What
            # the listing adds -- a writer's dead temp file, a claim left over after the
            # marker -- only matters to an engine, which sweeps them (view=False).
            m = loads_obj(fsio.read_bytes(os.path.join(tdir, DONE), follow=False))
            if m is not None and as_int(m.get("attempt")) == 1:
                return TaskFacts(state=DONE, attempt=1, marker=m if detail else None)
        try:
            names = set(os.listdir(tdir))
        except (FileNotFoundError, NotADirectoryError):
            return TaskFacts()
        f = TaskFacts()
        if any(n.endswith(".tmp") and n.startswith(".") for n in names):
            f.extra["temps"] = True       # a writer died mid-publish here: sweep when old
        if any(n.startswith(".claim.") for n in names):
            f.extra["claim_leftovers"] = names  # a breaker or releaser died before its rmtree
        for m in MARKERS:
            if m in names:
                f.state = m
                if detail:
                    f.marker = loads_obj(fsio.read_bytes(os.path.join(tdir, m), follow=False)) or {}
                break
        if ATTEMPTS in names:
            f.extra["attempts"] = True    # earlier attempts on record (status reads their usage)
            temps: list = []
            f.attempt, f.record = self._latest_attempt(g, t, with_record=(f.state == PENDING or detail), temps=temps)
            if temps:
                f.extra["temps"] = True
        if f.state == PENDING and S.AWAITING_FILE in names:
            f.state = S.AWAITING          # an approval gate waits on a person (no claim while it does)
            if detail:
                f.extra["awaiting"] = loads_obj(fsio.read_bytes(os.path.join(tdir, S.AWAITING_FILE), follow=False)) or {}
        if CLAIM in names:
            owner = loads_obj(fsio.read_bytes(os.path.join(tdir, CLAIM, OWNER), follow=False))
            if f.state in (PENDING, S.AWAITING):
                f.state = RUNNING
            f.owner = owner
            try:
                f.claim_mtime = os.stat(os.path.join(tdir, CLAIM)).st_mtime
            except FileNotFoundError:
                pass
            if owner and owner.get("attempt"):
                f.attempt = max(f.attempt, as_int(owner["attempt"]))
        if f.marker and f.marker.get("attempt"):
            f.attempt = max(f.attempt, as_int(f.marker["attempt"]))
        return f

    def _latest_attempt(self, g: str, t: str, with_record: bool, temps: list | None = None) -> tuple[int, dict | None]:
        try:
            names = os.listdir(self.attempts_dir(g, t))
        except FileNotFoundError:
            return 0, None
        nums = []
        recs = []
        for n in names:
            if temps is not None and n.startswith(".") and n.endswith(".tmp"):
                temps.append(n)
            stem, _, ext = n.partition(".")
            if stem.isdigit():
                nums.append(int(stem))
                if ext == "json":
                    recs.append(int(stem))
        top = max(nums, default=0)
        rec = None
        if with_record and recs:
            rec = self.attempt_record(g, t, max(recs))
        return top, rec

    def task_folders(self, g: str) -> set[str]:
        """The names in the goal's tasks/: the tasks that have a folder (one listdir)."""
        try:
            return set(os.listdir(self.tasks_dir(g)))
        except FileNotFoundError:
            return set()
        except OSError as e:
            raise os_error("list", self.tasks_dir(g), e) from None

    def snapshot(self, g: str, plan: Plan, *, detail: bool = False, view: bool = False,
                 present: set | None = None) -> dict[str, TaskFacts]:
        """Facts for every task of the plan: one listdir of tasks/ plus one per existing task
        folder (view=True: a done marker of a first attempt instead, see task_facts).
        present: the names in tasks/ as the caller listed them a moment ago (the status
        snapshot's stamps, statuscache.Stamps.names): tasks/ is not listed again. A folder
        made after that listing reads as absent, one removed since as absent too (its reads
        find nothing) -- what a listing taken then would have shown; the stamps taken with
        it make such a snapshot stale."""
        if present is None:
            present = self.task_folders(g)
        with bulk.paused():
            if view and present:
                return self._view_snapshot(g, plan, present, detail)
            return {tid: self.task_facts(g, tid, detail=detail, view=view) if tid in present else TaskFacts()
                    for tid in plan.ids()}

    def _view_snapshot(self, g: str, plan: Plan, present: set, detail: bool) -> dict[str, TaskFacts]:
        """snapshot(view=True): task_facts(view=True) of every task, its first look -- the
        `done` marker of a first attempt -- opened relative to tasks/ (one fd for the goal: no
        path built and walked per task; a goal's end and `status` read every task's marker),
        the rest (no such marker) the long way, as task_facts does after that look."""
        tdir = self.tasks_dir(g)
        try:
            tfd = os.open(tdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return {tid: TaskFacts() for tid in plan.ids()}
        out: dict[str, TaskFacts] = {}
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | fsio.NOATIME    # (fsio.open_noatime)
        sfx = "/" + DONE

        def open_marker(name: str) -> int:
            """fd of tasks/<name>, -1 when there is none (or it is a symbolic link: no marker,
            as read_bytes says)."""
            nonlocal flags
            while True:
                try:
                    return open_(name, flags, dir_fd=tfd)
                except (FileNotFoundError, NotADirectoryError):
                    return -1
                except OSError as e:
                    if e.errno == errno.EPERM and flags & fsio.NOATIME:
                        flags &= ~fsio.NOATIME      # another user's marker: atimes as before
                        continue
                    if e.errno != errno.ELOOP:
                        raise
                    return -1
        read_fd, read, open_, close, parse, bad = fsio.read_fd, os.read, os.open, os.close, orjson.loads, \
            orjson.JSONDecodeError
        # a marker in one read(2), not two: where a short read is the end (fsio.read_fd)
        short_eof = fsio.short_read_is_eof(tdir)
        ASK = 1 << 16
        if g not in _VALID:
            _id("goal", g)
        try:
            for tid in plan.ids():
                if tid not in present:
                    out[tid] = TaskFacts()
                    continue
                if tid not in _VALID:          # the check task_dir makes (a hand-edited plan.json)
                    _id("task", tid)
                fd = open_marker(tid + sfx)
                m = None
                if fd >= 0:
                    try:
                        if short_eof:        # read_fd(fd, short_eof=True), its first read inlined
                            data = read(fd, ASK)
                            if len(data) == ASK:
                                data += read_fd(fd, short_eof=True)
                        else:
                            data = read_fd(fd)
                    finally:
                        close(fd)
                    try:                     # loads_obj, inlined
                        m = parse(data)
                    except bad:
                        m = None
                    if not isinstance(m, dict):
                        m = None
                first = False
                if m is not None:    # as_int(m.get("attempt")) == 1 (an int as it is: a bool is not one)
                    a = m.get("attempt")
                    first = a == 1 if a.__class__ is int else as_int(a) == 1
                if first:
                    out[tid] = TaskFacts(state=DONE, attempt=1, marker=m if detail else None)
                else:
                    out[tid] = self.task_facts(g, tid, detail=detail)
        finally:
            close(tfd)
        return out

    def write_marker(self, g: str, t: str, kind: str, body: dict) -> None:
        path = self.marker_path(g, t, kind)
        try:
            fsio.write_atomic(path, dumps(body))
        except OSError as e:
            raise os_error("write", path, e) from None
