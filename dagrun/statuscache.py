"""The status snapshot of a goal: `dagrun status GOAL --json`'s bytes, kept in
goals/<g>/status.cache with what they were derived from, so that status of a quiet goal does
not parse plan.json, build the scheduler and read every task's files again.

Derived, never authoritative: a reader uses the snapshot only when every stamp in it still
matches the files, and otherwise status computes from the files as it always did (and writes
a new snapshot). What is stamped, and why each is needed:

- plan.json (inode, mtime, size): submit --replace, `dagrun add`, a fan-out expansion;
- events.jsonl (inode, size): every transition appends to it (transitions.py);
- the names in tasks/ (all of them): a first claim, an archive, gc of a folder, `rm -rf`;
- every task folder's (inode, mtime): a marker, a claim or a temp file created, renamed or
  removed -- by a transition whose event never got written (a crash between the two), or by
  hand (`rm -rf claim`, `rm done`, `touch done`);
- attempts/ of the tasks that have one (inode, mtime): records written or removed;
- summary.json, hooks/last_failure.json and resources/limits.json: shown or used by status.

A folder's mtime has the file system's granularity (a few ms on ext4, 1 s on some): a change
in the same tick as the stamp would leave it equal. Like git's "racily clean" index entries,
a stamp taken less than RACY_NS before the snapshot was published (the snapshot file's own
mtime, the same clock) is racy: the writer also keeps the folder's listing (the name and inode
of each entry) for it, and the reader compares that listing too.

The fine window: on a local file system that keeps sub-second times (LOCAL_FS, _fine) a
folder's time comes from this kernel's coarse clock, whose tick is <= 10 ms -- a change in
the same tick as a stamp taken at t0 has a time > t0 - one tick. Such a snapshot is
published with its file's mtime set to t0 (the time before its first stamp, set before the
rename) and says "racy_ns": FINE_RACY_NS (50 ms); the reader's racy window is then
[t0 - 50 ms, ...), and the writer lists only the folders changed in the last 100 ms before
t0 instead of the last 8 s -- at a goal's end, right after its run, that was every task
folder (one listing each; fan-out-500: ~500 of them, docs/performance.md "twelfth
session"). Any other file system keeps RACY_NS and the snapshot's own mtime.

Only a goal with no running or retrying task, no budget and no resource pool is snapshotted:
those rows depend on the clock (a duration, a retry_at), on a holder's liveness, or on other
goals' claims. The file is one header line (JSON: stamps and the goal overview) and then the
bytes status prints.
"""
from __future__ import annotations

import os
import stat
import time

import orjson

from . import fsio
from .store import ATTEMPTS, Home

VERSION = 2      # 2: a racy listing is [name, inode] (was [name, inode, size, mtime])
RACY_NS = 2_000_000_000      # > the coarsest mtime granularity (1 s) with a margin
FINE_RACY_NS = 50_000_000    # a local file system with sub-second times: > its clock's tick (<= 10 ms)
NAME = "status.cache"
# File systems whose times this kernel's clock stamps (the coarse real-time clock, one tick
# <= 10 ms, the times kept to the nanosecond unless the inodes are too small for it -- then
# to the second, and every time's sub-second part is 0): a snapshot of a goal there may
# use the fine racy window (Stamps). Any other (network, FUSE, FAT-like) keeps RACY_NS.
LOCAL_FS = frozenset({"ext4", "ext3", "ext2", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "bcachefs"})
_fs_kind: dict[str, str | None] = {}    # tasks/ folder -> its file system type (watcher.fs_type), once


def path(home: Home, g: str) -> str:
    return os.path.join(home.goal_dir(g), NAME)


def _stat(p: str) -> list | None:
    try:
        st = os.stat(p, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def _files(home: Home, g: str) -> dict:
    """The goal-level stamps (taken before anything is read)."""
    from . import resources as res
    return {"plan": _stat(home.plan_path(g)), "events": _stat(home.events_path(g)),
            "summary": _stat(home.summary_path(g)),
            "hook_failure": _stat(os.path.join(home.hooks_due_dir(g), "last_failure.json")),
            "limits": _stat(res.limits_path(home))}


def _dir_stamp(p: str, dir_fd: int | None = None) -> list | None:
    try:
        st = os.stat(p, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISDIR(st.st_mode):
        return [st.st_ino, st.st_mtime_ns, -1]
    return [st.st_ino, st.st_mtime_ns]


def listing(p: str) -> list | None:
    """A folder's entries: [name, inode] each, sorted (the racy check). The names and inodes
    come with the listing itself (getdents64's d_ino, os.scandir): no stat per entry. What a
    listing must catch is what a folder stamp catches outside the racy window -- an entry
    created, renamed (over another: a new inode under an old name) or removed in the same
    mtime tick; a file rewritten in place changes no folder's mtime and is no change of a
    stamp either (a goal's end lists every task folder: was listdir and a stat per entry,
    ~3/4 of the stamps' cost, docs/performance.md "twelfth session")."""
    try:
        with os.scandir(p) as it:
            out = [[e.name, e.inode()] for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return None
    out.sort()
    return out


class Stamps:
    """What the writer saw before it read the goal's files."""

    def __init__(self, home: Home, g: str):
        self.home, self.g = home, g
        self.t0 = time.time_ns()             # before any stamp: the fine window's time (write)
        self.files = _files(home, g)
        tdir = home.tasks_dir(g)
        self.dirs: dict[str, list | None] = {}      # every name in tasks/ -> its stamp
        try:
            fd = os.open(tdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            fd = None
        if fd is not None:
            try:
                dirs, st_, ISDIR = self.dirs, os.stat, stat.S_ISDIR
                for n in os.listdir(fd):         # _dir_stamp(n, fd), inlined (100 000 folders)
                    try:
                        s = st_(n, dir_fd=fd, follow_symlinks=False)
                    except (FileNotFoundError, NotADirectoryError):
                        dirs[n] = None
                        continue
                    dirs[n] = [s.st_ino, s.st_mtime_ns] if ISDIR(s.st_mode) else [s.st_ino, s.st_mtime_ns, -1]
            finally:
                os.close(fd)
        self.lists = {}
        self.attempts: dict[str, list | None] = {}
        # listings of the folders that changed recently: the racy ones (see the module doc)
        recent = self.t0 - 4 * RACY_NS
        racy = [n for n, s in self.dirs.items() if s is not None and s[1] >= recent]
        self.fine = bool(racy) and _fine(tdir, self.dirs)
        if self.fine:        # the fine window: only the folders changed in its last 2 windows
            recent = self.t0 - 2 * FINE_RACY_NS
            racy = [n for n in racy if self.dirs[n][1] >= recent]
        for n in racy:
            self.lists[n] = listing(os.path.join(tdir, n))

    def names(self) -> set[str]:
        """The names in tasks/ as the stamps listed them: Home.snapshot(present=) takes them
        instead of listing tasks/ again (taken before any file is read, like every stamp)."""
        return set(self.dirs)

    def add_attempts(self, tasks) -> None:
        """Stamp attempts/ of these tasks (taken after the read: the caller re-reads them)."""
        tdir = self.home.tasks_dir(self.g)
        recent = self.t0 - 2 * FINE_RACY_NS if self.fine else time.time_ns() - 4 * RACY_NS
        for t in tasks:
            p = os.path.join(tdir, t, ATTEMPTS)
            s = self.attempts[t] = _dir_stamp(p)
            if s is not None and s[1] >= recent:
                self.lists[f"{t}/{ATTEMPTS}"] = listing(p)


def _fine(tdir: str, dirs: dict) -> bool:
    """May a snapshot of these task folders use the fine racy window? Their file system is a
    local one (LOCAL_FS: its times come from this kernel's clock, the clock that
    time.time_ns() reads) and keeps sub-second times (one folder's time has a sub-second
    part: a file system that keeps whole seconds -- ext4 with 128-byte inodes -- never
    shows one)."""
    if tdir not in _fs_kind:
        from .watcher import fs_type
        _fs_kind[tdir] = fs_type(tdir)
    if _fs_kind[tdir] not in LOCAL_FS:
        return False
    return any(s is not None and s[1] % 1_000_000_000 for s in dirs.values())


class Fresh:
    """A snapshot this process has just published (write): its status bytes, good for as long
    as the goal-level files are the ones it was derived with (`dagrun run`'s closing line,
    right after its engine derived the snapshot at the goal's end, takes them without
    reading the snapshot back and checking every task folder: the same process saw those
    folders a moment ago; any transition since then appended to events.jsonl)."""

    def __init__(self, home: Home, g: str, files: dict, body: bytes):
        self.home, self.g, self.files, self.body = home, g, files, body

    def unchanged(self) -> bool:
        return _files(self.home, self.g) == self.files


def write(stamps: Stamps, overview: dict, body: bytes) -> Fresh | None:
    """Publish the snapshot (by rename). None when the files changed while it was derived
    (the goal-level stamps differ now): nothing is written then."""
    home, g = stamps.home, stamps.g
    if _files(home, g) != stamps.files:
        return None
    head = {"v": VERSION, "files": stamps.files, "dirs": stamps.dirs, "attempts": stamps.attempts,
            "lists": stamps.lists, "overview": overview}
    if stamps.fine:
        # published at the stamps' time (t0, the file's mtime set before its rename), with the
        # fine window: a folder changed again after its stamp in the same tick of the clock
        # had its time >= t0 - one tick > t0 - FINE_RACY_NS, so the reader compares its listing
        head["racy_ns"] = FINE_RACY_NS
    fsio.write_atomic(path(home, g), orjson.dumps(head) + b"\n" + body,
                      mtime_ns=stamps.t0 if stamps.fine else None)
    return Fresh(home, g, stamps.files, body)


def remove(home: Home, g: str) -> None:
    fsio.remove(path(home, g))


def load(home: Home, g: str) -> tuple[dict, bytes] | None:
    """(overview, status bytes) when the snapshot is current, else None."""
    p = path(home, g)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        published = os.fstat(fd).st_mtime_ns
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError:
        return None
    head_bytes, nl, body = data.partition(b"\n")
    try:
        head = orjson.loads(head_bytes)
    except orjson.JSONDecodeError:
        return None
    if not nl or not isinstance(head, dict) or head.get("v") != VERSION or not body:
        return None
    try:
        if not _current(home, g, head, published):
            return None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None                 # a hand-edited header: not ours to trust
    return head["overview"], body


def _current(home: Home, g: str, head: dict, published: int) -> bool:
    if _files(home, g) != head["files"]:
        return False
    tdir = home.tasks_dir(g)
    dirs, lists = head["dirs"], head["lists"]
    try:
        names = os.listdir(tdir)
    except FileNotFoundError:
        names = []
    if len(names) != len(dirs) or any(n not in dirs for n in names):
        return False
    racy = published - head.get("racy_ns", RACY_NS)
    join = os.path.join
    try:
        fd = os.open(tdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return not dirs
    try:        # one stat per task folder, relative to tasks/: the bulk of a big goal's check
        stat_at, isdir = os.stat, stat.S_ISDIR
        for n, s in dirs.items():
            try:
                st = stat_at(n, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return False
            if s is None or s[0] != st.st_ino or s[1] != st.st_mtime_ns or (len(s) == 2) != isdir(st.st_mode):
                return False
            if s[1] >= racy and listing(join(tdir, n)) != lists.get(n, False):
                return False
    finally:
        os.close(fd)
    for t, s in head["attempts"].items():
        p = join(tdir, t, ATTEMPTS)
        if _dir_stamp(p) != s:
            return False
        if s is not None and s[1] >= racy and listing(p) != lists.get(f"{t}/{ATTEMPTS}", False):
            return False
    return True
