"""Wake-ups. The only module that imports watchdog.

We use watchdog's inotify binding (inotify_init / inotify_add_watch and its event parser) but
not its observer threads: the inotify fd goes straight into the engine's select(), so a change
costs one read(2) in the engine's own thread -- no three-thread hand-off fighting the engine
for the GIL on every append (measured: that hand-off cost more than the rest of dispatch).

Events are only a doorbell: they say "look at goal g" (or "look for new goals"); the engine
then reads what changed from the files. Watches are non-recursive, one per goal folder plus
one on goals/: a goal's events.jsonl is appended on every state change, so the goal folder
watch sees everything without a watch per task (10 000 tasks would exhaust the default
fs.inotify.max_user_watches).

When inotify cannot be used -- a home on a network file system (NFS, CIFS, Ceph ...: other
hosts' writes raise no inotify events here, so a watch would silently miss them), an
exhausted max_user_watches / max_user_instances, a platform without inotify -- the Watcher
says `polling`, and the engine wakes every `poll` seconds and compares the events files'
sizes (one stat per goal). A periodic full rescan backs both modes.

`dagrun run` starts its watcher late (`later=`): for its first seconds the engine polls
every EARLY_POLL, and inotify comes up only if the run is still going then -- a run that
ends sooner never imports watchdog's binding (~27 M instructions, ~11 % of a one-task run,
docs/performance.md "(10)") nor reads its own writes' events back every turn. Watches are
placed before the engine looks at the files again (Engine.run: every goal fed once after
start_late), so nothing written before a watch existed is missed.
"""
from __future__ import annotations

import errno
import os
import threading

from . import fsio

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000

GOAL_MASK = IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF
ROOT_MASK = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ONLYDIR


# File systems where several machines may write the home: inotify only reports this kernel's
# own writes there.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs",
              "ocfs2", "gfs2", "beegfs", "orangefs", "fuse.sshfs", "fuse.glusterfs", "fuse.ceph",
              "fuse.s3fs", "fuse.rclone", "fuse.juicefs", "fuse.gcsfuse", "fuse.beegfs"}
AUTO_POLL = 1.0
EARLY_POLL = 0.05     # s: the poll of a watcher started late (`later=`), until start_late()


# fs_type lives in fsio (layer 1: fsio.short_read_is_eof asks it too); the name stays here
fs_type = fsio.fs_type


class Doorbell:
    """A self-pipe for wake-ups from signal handlers or other threads."""

    def __init__(self):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._rescan = False

    def ring(self, goal: str | None = None) -> None:
        with self._lock:
            if goal is None:
                self._rescan = True
            else:
                self._dirty.add(goal)
        try:
            os.write(self.w, b"x")
        except BlockingIOError:
            pass  # the pipe is full of unread rings: one more changes nothing

    def take(self) -> tuple[set[str], bool]:
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            rescan, self._rescan = self._rescan, False
        return dirty, rescan

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class Watcher:
    """inotify watches on goals/ and on each goal folder, read in the caller's thread."""

    def __init__(self, goals_dir: str, *, poll: float | None = None, log=None, later: bool = False):
        """later: poll every EARLY_POLL until the caller's start_late() brings inotify up (it
        is the caller's to call, and to look at every goal after it)."""
        self.goals_dir = goals_dir
        self.log = log or (lambda msg: None)
        self.poll = poll               # None: inotify; a number: poll every `poll` seconds
        self.reason = "polling requested (--poll)" if poll else ""
        self.fd: int | None = None
        self.pending = False           # later=True: inotify not started yet (start_late)
        self._wd_goal: dict[int, str | None] = {}
        self._goal_wd: dict[str, int] = {}
        if poll is None:
            kind = fs_type(os.path.dirname(goals_dir) if not os.path.exists(goals_dir) else goals_dir)
            if kind in NETWORK_FS:
                self.poll = AUTO_POLL
                self.reason = (f"the home is on {kind}: inotify does not see other hosts' writes there; "
                               f"polling every {AUTO_POLL:g}s (--poll to change)")
                self.log(f"warning: {self.reason}")
                return
            if later:
                self.pending = True
                self.poll = EARLY_POLL
                self.reason = "inotify not started yet"
                return
            try:
                self._start()
            except Exception as e:  # noqa: BLE001 - any failure of the backend means: poll
                self._degrade(e)

    def start_late(self, goals) -> bool:
        """Bring up inotify now (a watcher made with later=True): goals/ and each of `goals`
        watched. True when it is up; the caller must then look at every goal once -- whatever
        was written before a watch was placed raised no event. False: it stays polling (every
        AUTO_POLL, with the warning, as a watcher whose start failed)."""
        if not self.pending:
            return False
        self.pending = False
        self.poll, self.reason = None, ""
        try:
            self._start()
        except Exception as e:  # noqa: BLE001 - any failure of the backend means: poll
            self._degrade(e)
            return False
        for g in goals:
            self.watch_goal(g)
        return not self.polling

    @property
    def polling(self) -> bool:
        return self.poll is not None

    def _start(self) -> None:
        if os.environ.get("DAGRUN_NO_INOTIFY"):
            raise OSError("disabled by DAGRUN_NO_INOTIFY")
        ic = self._ic = _binding()
        fd = ic.inotify_init()
        if fd < 0:
            e = _errno()
            raise OSError(e, os.strerror(e))
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self.fd = fd
        fsio.makedirs(self.goals_dir)   # a counted step when it creates the folder
        self._add(self.goals_dir, ROOT_MASK, None)

    def _add(self, path: str, mask: int, goal: str | None) -> None:
        wd = self._ic.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            e = _errno()
            raise OSError(e, f"{os.strerror(e)} (inotify_add_watch {path})")
        self._wd_goal[wd] = goal
        if goal is not None:
            self._goal_wd[goal] = wd

    def _degrade(self, err: Exception) -> None:
        self.poll = AUTO_POLL
        hint = ""
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            hint = " (raise fs.inotify.max_user_watches)"
        elif isinstance(err, OSError) and err.errno == errno.EMFILE:
            hint = " (raise fs.inotify.max_user_instances)"
        self.reason = f"inotify unavailable: {err}{hint}; polling every {AUTO_POLL:g}s"
        self.log(f"warning: {self.reason}")
        self.close()

    def watch_goal(self, goal: str) -> None:
        if self.polling or goal in self._goal_wd:
            return
        path = os.path.join(self.goals_dir, goal)
        try:
            self._add(path, GOAL_MASK, goal)
        except OSError as e:
            if e.errno == errno.ENOENT or not os.path.isdir(path):
                return
            self._degrade(e)

    def unwatch_goal(self, goal: str) -> None:
        wd = self._goal_wd.pop(goal, None)
        if wd is not None and self.fd is not None:
            self._wd_goal.pop(wd, None)
            self._ic.inotify_rm_watch(self.fd, wd)

    def read(self) -> tuple[set[str], bool]:
        """Drain the inotify fd: (goals whose folder changed, whether goals/ changed)."""
        dirty: set[str] = set()
        rescan = False
        if self.fd is None:
            return dirty, rescan
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                self._degrade(e)
                return dirty, True
            if not buf:
                break
            for wd, mask, _cookie, _name in self._ic.InotifyFD._parse_event_buffer(buf):
                if mask & IN_Q_OVERFLOW:
                    rescan = True               # events were lost: look at everything
                    dirty.update(self._goal_wd)
                    continue
                goal = self._wd_goal.get(wd, "")
                if mask & IN_IGNORED:
                    if goal:
                        self._goal_wd.pop(goal, None)
                    self._wd_goal.pop(wd, None)
                    rescan = True
                    continue
                if goal is None:
                    rescan = True
                elif goal:
                    dirty.add(goal)
        return dirty, rescan

    def release(self) -> None:
        """The engine is about to exit (its only goal ended): remove the watches now. The
        kernel frees a removed watch's mark after an SRCU grace period (10-20 ms) in a
        worker of its own, and close(2) waits only for marks still being freed: removed
        20 ms before, the close at the exit takes ~10 us instead of 15 ms (measured) --
        and the process's exit waits for that close. From here on the engine polls
        (should it not exit after all: a goal whose plan was replaced at its very end); a
        watcher not started yet (later=True) never starts."""
        if self.pending:
            self.pending = False
            self.poll, self.reason = AUTO_POLL, "the engine is ending"
            return
        if self.fd is None or self.polling:
            return
        for wd in self._wd_goal:
            self._ic.inotify_rm_watch(self.fd, wd)
        try:
            while os.read(self.fd, 65536):   # their IN_IGNORED (and nothing else is wanted now)
                pass
        except OSError:
            pass
        self._wd_goal.clear()
        self._goal_wd.clear()
        self.poll = AUTO_POLL
        self.reason = "the engine is ending"

    def close(self) -> None:
        """Close the inotify fd -- in a thread of its own: the kernel destroys the inotify
        instance inside close(2) and waits there for an SRCU grace period (10-20 ms measured
        with `strace -T`, whatever the number of watches), which the engine's exit overlaps
        with the rest of its work instead of waiting for it."""
        fd, self.fd = self.fd, None
        if fd is not None:
            threading.Thread(target=fsio.close_quiet, args=(fd,), name="dagrun-inotify-close", daemon=True).start()
        self._wd_goal.clear()
        self._goal_wd.clear()


def _binding():
    """watchdog's inotify binding, `watchdog.observers.inotify_c`. Imported the usual way, its
    package's __init__ first picks an observer class -- importing watchdog's InotifyObserver,
    its event classes, buffers and queues, none of which we use: ~10 ms of every engine's
    start, half of the binding's import (docs/performance.md, "2026-12-06: start-up and
    exit"). So the module is loaded from its file under its own name without running the
    package's __init__ (a later `import watchdog.observers` by anyone gets this same module
    for inotify_c). Any surprise in watchdog's layout: the usual import."""
    import sys
    name = "watchdog.observers.inotify_c"
    if name in sys.modules:
        return sys.modules[name]
    try:
        import importlib.util

        import watchdog
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(watchdog.__file__), "observers", "inotify_c.py"))
        if spec is None or spec.loader is None:
            raise ImportError(name)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod          # (dataclasses looks its module up while the file runs)
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
        return mod
    except (ImportError, OSError):
        from watchdog.observers import inotify_c
        return inotify_c


def _errno() -> int:
    import ctypes
    return ctypes.get_errno() or errno.EIO
