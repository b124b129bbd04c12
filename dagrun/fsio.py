"""The one place that changes files.

Every file another process may read is published whole or not at all: written to
`.<name>.<pid>.tmp` in the *same* folder (rename is only atomic within one file system),
then renamed over the final name. Appends to logs are a single write(2) on an O_APPEND fd.

Every mutation goes through `_step()`, so a crash can be injected at the k-th file-system
operation (`DAGRUN_CRASH_AT=k` kills the process with SIGKILL right before that operation;
`DAGRUN_CRASH_AT=k:after` right after it). The reliability tests use it to crash at every step;
`DAGRUN_STEP_TRACE=file` appends "k label" for every step (how many steps a clean run takes).
`DAGRUN_CRASH_ON=pattern` (fnmatch, on the label, e.g. "publish */hooks/due-*") makes k count
only the steps whose label matches: "the k-th hooks record" is the same step in every run,
where the engine's threads (spawner, spare pool) and its batched event appends make "the k-th
step" differ from run to run.

`DAGRUN_FSYNC=1` fsyncs data and the folder around each publish: needed to survive power
loss, not process crashes (the kernel keeps written pages whatever happens to the process).
"""
from __future__ import annotations

import errno
import os
import stat
import shutil
import signal
import threading
import time

from .errors import os_error
from .proc import my_pid, pid_alive

DURABLE = os.environ.get("DAGRUN_FSYNC", "") not in ("", "0")

_crash_at = 0
_crash_after = False
_steps = 0
_step_trace = os.environ.get("DAGRUN_STEP_TRACE", "")
_env = os.environ.get("DAGRUN_CRASH_AT", "")
_crash_on = os.environ.get("DAGRUN_CRASH_ON", "")
_matched = 0
if _env:
    _n, _, _when = _env.partition(":")
    _crash_at = int(_n)
    _crash_after = _when == "after"
_counting = bool(_crash_at or _step_trace)
del _env


_count_lock = threading.Lock()
_mine = threading.local()       # the thread that took step _crash_at (for a crash right after it)


def _step(label: str) -> None:
    """Count one file-system mutation; die here if the crash harness asked for it. Threads
    (the spawner, the spare pool) count too: one lock makes each step one number, and a crash
    "after" step k happens in the thread that took step k, whatever other threads counted
    while its operation ran (a git call takes long)."""
    global _steps, _matched
    if not _counting:
        return
    with _count_lock:
        _steps += 1
        k = _steps
        if _step_trace:
            with open(_step_trace, "a") as f:
                f.write(f"{k} {label}\n")
        if _crash_on:
            from fnmatch import fnmatchcase   # only under the crash harness
            if not fnmatchcase(label, _crash_on):
                return
            _matched += 1
            k = _matched
    if k == _crash_at:
        if not _crash_after:
            _die(label)
        _mine.after = True


def _done_step_if_after(label: str) -> None:
    """A crash asked for right after a step that is not followed by its own mutation (a held
    event line whose write comes with the last of its group): die now, before the write."""
    if _crash_after and getattr(_mine, "after", False):
        _die(label)


def _done_step(label: str) -> None:
    if _crash_after and getattr(_mine, "after", False):
        _die(label)


def _die(label: str) -> None:
    trace = os.environ.get("DAGRUN_CRASH_TRACE")
    if trace:  # tell the harness where we died (append, best effort)
        with open(trace, "a") as f:
            f.write(f"{_steps} {label}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def steps() -> int:
    return _steps


# ---------------------------------------------------------------------------------- reads
def read_bytes(path: str, *, follow: bool = True) -> bytes | None:
    """The file's content, or None when it does not exist (follow=False: or when its last
    component is a symbolic link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            return None
        raise
    try:
        return read_fd(fd)
    finally:
        os.close(fd)


def close_quiet(fd: int) -> None:
    """close(2) that ignores errors: for fds being given up (an ended agent's pipes, an
    inotify instance) where a failed close changes nothing the caller could act on."""
    try:
        os.close(fd)
    except OSError:
        pass


def read_fd(fd: int, limit: int | None = None, size_hint: int = 0) -> bytes:
    """Read fd from where it stands to its end (or `limit` bytes) with plain read(2) calls:
    no file object -- a buffered one costs an fstat, an ioctl and an lseek per file, and the
    engine reads a few small files per task. size_hint: the size if known (one read then)."""
    parts = []
    n = 0
    chunk = max(size_hint + 1, 1 << 16)
    while limit is None or n < limit:
        b = os.read(fd, chunk if limit is None else min(chunk, limit - n))
        if not b:
            break
        parts.append(b)
        n += len(b)
        chunk = min(chunk * 2, 1 << 24)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# ---------------------------------------------------------------------------------- writes
def tmp_name(path: str) -> str:
    i = path.rfind("/") + 1                  # folder/.name.<pid>.tmp (split + join, inlined)
    return f"{path[:i]}.{path[i:]}.{my_pid()}.tmp"


def _write_whole(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if DURABLE:
        os.fsync(fd)


_SPARE_PUBLISH = True    # False once a rename out of the spare pool was refused (EXDEV)


def write_atomic(path: str, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> bool:
    """Publish `data` at `path` whole or not at all.

    For a file under the home the temporary file is a spare of the pool when there is one:
    written where it lies (the pool's folder is private to this process) and renamed straight
    to `path` -- one rename instead of create + rename; a crash leaves it in the pool of a
    dead process, which the next engine sweeps. Otherwise `.<name>.<pid>.tmp` next to `path`
    (a file outside the home -- `--metrics` textfile, `report --out` -- may be on another
    file system, and its folder may be watched for a name pattern the temp must not match).

    exclusive=True publishes only if `path` does not exist yet (link(2) instead of rename(2):
    link fails with EEXIST, so exactly one of several racing writers wins). Returns False when
    another writer won, True otherwise.
    """
    global _SPARE_PUBLISH
    tmp = tmp_name(path)
    _step(f"create {tmp}")
    src, fd = tmp, None
    pool = SPARES if _SPARE_PUBLISH and not exclusive and mode == 0o644 else None
    spare = pool.pop_file() if pool is not None and path.startswith(pool.inside) else None
    if spare is not None and not data:
        src = spare                  # an empty file (an agent that printed nothing): the spare
    elif spare is not None:          # is one already, no open/write/close
        try:
            src, fd = spare, os.open(spare, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            src = tmp
    if fd is None and src == tmp:
        fd = _open_new(tmp, mode)
    if fd is not None:
        try:
            _write_whole(fd, data)
        except BaseException:
            os.close(fd)
            _unlink_quiet(src)
            raise
        os.close(fd)
    _done_step(f"create {tmp}")
    _step(f"publish {path}")
    try:
        if exclusive:
            try:
                os.link(src, path)
            except FileExistsError:
                return False
            finally:
                _unlink_quiet(src)
        else:
            os.rename(src, path)
    except OSError as e:
        _unlink_quiet(src)
        if e.errno == errno.EXDEV and src != tmp:    # a mount inside the home: no more spares
            _SPARE_PUBLISH = False
            return write_atomic(path, data, mode=mode, exclusive=exclusive)
        raise
    except BaseException:
        _unlink_quiet(src)
        raise
    _done_step(f"publish {path}")
    if DURABLE:
        fsync_dir(os.path.dirname(path))
    return True


def write_named(path: str, data: bytes) -> None:
    """write_atomic for a file the user named (`report --out`, `metrics --textfile`): an OS
    error becomes the one-line FsError naming it."""
    try:
        write_atomic(path, data)
    except OSError as e:
        raise os_error("write", path, e) from None


def rewrite(path: str, data: bytes) -> None:
    """Replace the content of an existing private (temporary-named) file in place.

    Written over the old bytes, then cut to the new length -- not opened
    with O_TRUNC: on ext4 a truncate-to-zero followed by a write makes close(2) start
    writeback at once (auto_da_alloc, the replace-via-truncate heuristic), which costs
    ~0.1 ms per task."""
    _step(f"rewrite {path}")
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _write_whole(fd, data)
        # then cut what the old content had past it (shrinking keeps the block: no writeback
        # at close); after the write, not before: no fstat needed to know whether to cut
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    _done_step(f"rewrite {path}")


def append_line(path: str, line: bytes, *, lines: int = 1) -> int:
    """Append one line with a single write(2) on an O_APPEND fd: on a local file system
    concurrent appenders never interleave or tear lines (the inode lock covers the write).
    Returns the file's offset just past the line (O_APPEND put the write at the end: the
    line starts at that offset minus its length -- events.flush remembers it for the
    writer's own Reader).
    `lines`: that many whole lines in one write (events.flush). Each line is counted as a
    step of its own, as when every line had its write: the crash harnesses see the same
    number of steps however the lines were grouped (a crash at or after any line but the
    last dies before the write -- the same files as before the first)."""
    if not line.endswith(b"\n"):
        line += b"\n"
    for i in range(lines - 1):
        _step(f"append {path}")
        _done_step_if_after(f"append {path}")
    _step(f"append {path}")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        n = os.write(fd, line)
        if n != len(line):  # only on a full disk; a partial line must not stay half-written
            _cut_partial(fd, line[:n])
            raise OSError(errno.ENOSPC, "No space left on device (short write)", path)
        end = os.lseek(fd, 0, os.SEEK_CUR)
        if DURABLE:
            os.fsync(fd)
    finally:
        os.close(fd)
    _done_step(f"append {path}")
    return end


def _cut_partial(fd: int, written: bytes) -> None:
    """Remove the first part of a line that a full disk cut short -- if it is still the last
    thing in the file (nobody appended after it); shrinking needs no free space. Otherwise
    end it with a newline, making it one unreadable line that readers skip."""
    if not written:
        return
    try:
        size = os.fstat(fd).st_size
        if size >= len(written) and os.pread(fd, len(written), size - len(written)) == written:
            os.ftruncate(fd, size - len(written))
            return
    except OSError:
        pass
    try:
        os.write(fd, b"\n")
    except OSError:
        pass


def mkdir(path: str, *, mode: int = 0o755) -> bool:
    """Create a folder exclusively: True if we created it, False if it already existed.
    This is the claim lock: mkdir(2), or -- when a spare folder is at hand -- renameat2(2)
    with RENAME_NOREPLACE, which is exactly as exclusive and does not allocate an inode."""
    _step(f"mkdir {path}")
    pool = SPARES
    if pool is not None:
        got = pool.take_dir(path)
        if got is not None:
            if got:
                _done_step(f"mkdir {path}")
            return got
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    _done_step(f"mkdir {path}")
    return True


def mkdir_fresh(path: str, inner: str, before=None) -> bool | None:
    """Create folder `path` with an empty folder `inner` in it, both at once: a task folder
    born with its claim (one rename of a spare nest, see Spares). True: made; False: `path`
    exists already; None: no nest at hand (or no parent): the caller makes them one by one.
    before(nest): called with the nest's path right before it is renamed to `path` (a claim's
    creator locks it there: the lock is on the folder, so it is already held when it appears)."""
    pool = SPARES
    if pool is None or pool.nest != inner or not pool._nests:
        return None
    _step(f"mkdir {path}/{inner}")
    got = pool.take_nest(path, before)
    if got:
        _done_step(f"mkdir {path}/{inner}")
    return got


def nest_inodes(path: str) -> tuple[int, int] | None:
    """(inode of `path`, of its inner folder) if this thread's last mkdir_fresh made `path`
    from a spare nest; None otherwise (then stat them)."""
    pool = SPARES
    return None if pool is None else pool.nest_inodes(path)


def makedirs(path: str, *, mode: int = 0o755) -> None:
    if os.path.isdir(path):
        return
    _step(f"makedirs {path}")
    parent = os.path.dirname(path)
    if SPARES is not None and os.path.isdir(parent):
        if SPARES.take_dir(path) is not None or os.path.isdir(path):
            _done_step(f"makedirs {path}")
            return
    _makedirs(path, mode)
    _done_step(f"makedirs {path}")


def _makedirs(path: str, mode: int) -> None:
    """os.makedirs, but missing parents get 0755 (less the umask) too: os.makedirs gives them
    0777 less the umask, i.e. group-writable under a umask of 002."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        _makedirs(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def rename(src: str, dst: str) -> None:
    _step(f"rename {src} -> {dst}")
    os.rename(src, dst)
    _done_step(f"rename {src} -> {dst}")
    if DURABLE:
        fsync_dir(os.path.dirname(dst))


def link(src: str, dst: str) -> None:
    _step(f"link {src} -> {dst}")
    os.link(src, dst)
    _done_step(f"link {src} -> {dst}")


def size(path: str | None) -> int:
    """A file's size, 0 when it is not there (or no path)."""
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def remove(path: str) -> bool:
    """unlink(2); False if it was already gone."""
    _step(f"unlink {path}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    _done_step(f"unlink {path}")
    return True


def rmdir(path: str, *, discard: bool = False) -> bool:
    """Remove an empty folder (recycled into the spare pool when there is one); a folder with
    something in it is refused (OSError ENOTEMPTY). discard=True (claim.release, which
    deletes a claim's content either way): the pool takes it whatever is in it and deletes
    that there (Spares.give_dir) -- one listing instead of two; without a pool rmdir(2)
    still refuses it."""
    _step(f"rmdir {path}")
    pool = SPARES
    if pool is not None and pool.give_dir(path, discard=discard):
        _done_step(f"rmdir {path}")
        return True
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return False
    _done_step(f"rmdir {path}")
    return True


def rmtree(path: str) -> None:
    """Remove a folder and everything in it; a symbolic link is removed itself, never followed."""
    _step(f"rmtree {path}")
    if os.path.islink(path):
        _unlink_quiet(path)
    else:
        shutil.rmtree(path, ignore_errors=True)
    _done_step(f"rmtree {path}")


def touch(path: str) -> None:
    """Bump mtime (heartbeats); creates the file if needed."""
    _step(f"touch {path}")
    try:
        os.utime(path)
    except FileNotFoundError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.close(fd)
    _done_step(f"touch {path}")


def utime(path: str) -> None:
    """Bump mtime of an existing file (a lease); never creates it."""
    _step(f"utime {path}")
    os.utime(path)
    _done_step(f"utime {path}")


def open_lock(path: str) -> int:
    """An fd for flock(2) on `path`, creating the (empty) lock file when it is missing --
    the creation is a counted step, opening an existing one is not a mutation."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    _step(f"create {path}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _done_step(f"create {path}")
    return fd


def write_fd(fd: int, data: bytes, label: str) -> None:
    """Write all of `data` to an open fd (an agent's capture file): one counted step."""
    _step(f"write {label}")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    _done_step(f"write {label}")


def open_for_output(path: str) -> int:
    """A fresh file for an agent's stdout/stderr (the agent writes it, nobody renames over it)."""
    _step(f"open {path}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    _done_step(f"open {path}")
    return fd


def _open_new(path: str, mode: int = 0o644) -> int:
    """Open a fresh file for writing: a spare (made 0644) renamed into place, or O_CREAT."""
    pool = SPARES if mode == 0o644 else None
    if pool is not None and pool.take_file(path):
        try:
            return os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError:
            pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)


# ---------------------------------------------------------------------------------- spare inodes
# Measured on this project's CI disks (ext4 on a virtual disk): creating an inode (a new file or
# folder) takes 40-800 us depending on the host's load, while rename(2) takes ~20-50 us; and
# several creators in parallel get ~2x the throughput of one. A task needs 5 new inodes (its
# folder, claim/, owner.json, prompt.md, output), so creating them on the engine's hot path
# made dispatch 3x slower than make, which creates one per task. Spares moves creation off the
# hot path: background threads keep a few dozen empty files and folders ready under
# $DAGRUN_HOME/.spare/, and the engine renames them into place. Spares are scratch: a crash
# leaves a few empty files that the next engine sweeps.
RENAME_NOREPLACE = 1
SPARES: "Spares | None" = None


def _openat2():
    """openat2(2) (Linux >= 5.6) through libc's syscall(), or None."""
    try:
        nr = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine)
        if nr is None:
            return None
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (AttributeError, ImportError, OSError):
        return None

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    syscall.restype = ctypes.c_long
    size = ctypes.c_size_t(ctypes.sizeof(OpenHow))
    nr = ctypes.c_long(nr)
    hows: dict[int, object] = {}     # flags -> the open_how, built once (one per call was ~5 calls)

    def call(dirfd: int, path: str, flags: int) -> int:
        how = hows.get(flags)
        if how is None:
            how = hows[flags] = OpenHow(flags, 0, RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)
        fd = syscall(nr, ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how), size)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
        return fd
    return call


RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x04, 0x08
_OPENAT2 = False      # not looked up yet: on the first open_beneath (ctypes: ~3 ms of an import)


def open_beneath(root: str, rel: str) -> int | None:
    """Open root/rel for reading in one openat2(2) that follows no symbolic link anywhere in
    `rel` and never leaves `root` (RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH). Returns the fd,
    or None when this kernel cannot (then walk the path one O_NOFOLLOW component at a
    time). FileNotFoundError / NotADirectoryError: no such file; OSError ELOOP or EXDEV: a
    symbolic link or a way out of `root` on the path (the caller's walk says which)."""
    global _OPENAT2
    if _OPENAT2 is False:
        _OPENAT2 = _openat2()
    if _OPENAT2 is None:
        return None
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _OPENAT2(rfd, rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
            _OPENAT2 = None          # no openat2 here (old kernel, seccomp): walk from now on
            return None
        raise
    finally:
        os.close(rfd)


def _renameat2():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def rename_noreplace(src: str, dst: str) -> None:
        if fn(-100, os.fsencode(src), -100, os.fsencode(dst), RENAME_NOREPLACE) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), dst)
    return rename_noreplace


class Spares:
    def __init__(self, home: str, *, threads: int = 2, target: int = 48, nest: str | None = None,
                 left: int | None = None):
        self.base = os.path.join(home, ".spare")
        self.inside = os.path.join(home, "")     # the files it may stand in for: under the home
        self.target = target
        self._lock = threading.Lock()
        self._want = threading.Condition(self._lock)
        self._files: list[str] = []
        self._dirs: list[str] = []
        self.nest = nest                         # nests: a folder with an empty folder `nest` in it
        self._nests: list[str] = []              # (a task folder and its claim, one rename)
        self._inos: dict[str, tuple[int, int]] = {}   # nest -> (its inode, its inner folder's)
        self._taken = threading.local()          # .last: (dst, inodes) of this thread's last nest taken
        # with nests, plain folders only serve claims in folders that exist (retries), and
        # released claims come back to the pool anyway: a few suffice
        self.dir_target = max(4, target // 4) if nest is not None else target
        self.left: int | None = left             # tasks the engine has still to start (None: unknown)
        self._stop = False
        self._noreplace = _renameat2()
        self._threads = []
        if not os.path.isdir(self.base):
            _step(f"makedirs {self.base}")
            os.makedirs(self.base, mode=0o700, exist_ok=True)
            _done_step(f"makedirs {self.base}")
        if SPREAD:
            mark_top_dir(self.base)
        self._sweep()
        for k in range(threads):
            d = os.path.join(self.base, f"{my_pid()}-{k}")
            _step(f"mkdir {d}")
            os.makedirs(d, exist_ok=True)
            _done_step(f"mkdir {d}")
            th = threading.Thread(target=self._fill, args=(d, k), name=f"dagrun-spares-{k}", daemon=True)
            self._threads.append(th)
            th.start()

    def _sweep(self) -> None:
        sweep_spares(os.path.dirname(self.base))

    def _fill(self, d: str, k: int) -> None:
        seq = 0
        while True:
            with self._lock:
                # refill in batches: sleep once the pool is full and wake when it is half
                # empty, not on every take -- each wake-up is a GIL hand-over with the
                # engine's thread (measured: 8 000 instead of 13 000 voluntary context
                # switches of the engine per layered-1000 run)
                if not self._stop and self._full() and self._surplus() is None:
                    while not self._stop and not self._low() and self._surplus() is None:
                        self._want.wait()
                if self._stop:
                    return
                extra = self._surplus()
                if extra is not None:        # more than the work left can use: removed here,
                    pool = extra             # not by the engine's exit (see _surplus)
                    victim = pool.pop()
                    self._inos.pop(victim, None)
                else:
                    victim = None
            if victim is not None:
                if pool is self._nests:
                    _rmdir_quiet(os.path.join(victim, self.nest))
                _rmdir_quiet(victim)
                continue
            with self._lock:
                if self._stop:
                    return
                kind = self._next_kind()
                if kind is None:             # everything at its cap (the work left is small)
                    continue
                need_nest, need_dir = kind == "n", kind == "d"
                inner = self._dirs.pop() if need_nest and len(self._dirs) > self._caps()[1] // 2 else None
            seq += 1
            p = os.path.join(d, f"{'n' if need_nest else 'd' if need_dir else 'f'}{seq}")
            try:
                if need_nest:
                    os.mkdir(p, 0o755)
                    if inner is not None:    # a recycled claim folder goes inside: no new inode
                        os.rename(inner, os.path.join(p, self.nest))
                        inner = None
                    else:
                        os.mkdir(os.path.join(p, self.nest), 0o755)
                elif need_dir:
                    os.mkdir(p, 0o755)
                else:                        # mknod(2) of a regular file: open+close in one call
                    os.mknod(p, stat.S_IFREG | 0o644)
            except OSError:
                if inner is not None:
                    _rmdir_quiet(inner)
                time.sleep(0.5)          # disk full or folder gone: the engine creates on demand
                continue
            if need_nest:                # its inodes, for the claim that takes it (nest_inodes):
                try:                     # stat'ed here, off the engine's thread
                    inos = (os.lstat(p).st_ino, os.lstat(os.path.join(p, self.nest)).st_ino)
                except OSError:
                    inos = None
            with self._lock:
                (self._nests if need_nest else self._dirs if need_dir else self._files).append(p)
                if need_nest and inos is not None:
                    self._inos[p] = inos

    def _nesting(self) -> bool:
        return self.nest is not None and self._noreplace is not None

    def _caps(self) -> tuple[int, int, int]:
        """How many spare files, folders and nests to keep: the targets, or what the tasks
        still to start can use (3 files, a nest, a folder for a retry's claim each) when the
        engine said so (`left`): near the end of a goal no spare is made only to be deleted
        again when the engine exits (rmdir is ~3 ms on a busy ext4)."""
        left = self.left
        files, dirs, nests = self.target, self.dir_target, self.target
        if left is not None:
            files, dirs, nests = min(files, 3 * left), min(dirs, left), min(nests, left)
        return files, (dirs if self._noreplace is not None else 0), (nests if self._nesting() else 0)

    def _next_kind(self) -> str | None:
        """The kind furthest below its cap ("n", "d", "f"), None when none is below."""
        caps = self._caps()
        have = (len(self._files), len(self._dirs), len(self._nests))
        best, kind = 0.0, None
        for k, cap, n in zip("fdn", caps, have):
            if cap > 0 and (cap - n) / cap > best:
                best, kind = (cap - n) / cap, k
        return kind

    def _full(self) -> bool:
        return self._next_kind() is None

    def _surplus(self) -> list[str] | None:
        """The folders or nests of which the pool holds more than the tasks still to start
        can use (`left` fell: a nest per task, a folder per claim made in a folder that
        exists, plus the recycled folders that become the nests still to make), or None.
        The filler threads remove those in the background: removing an inode costs as much
        as making one (rmdir 0.1-5 ms on a busy ext4), and what the pool holds when the
        engine exits is removed on its exit path, after the goal's last task (measured: a
        fan-out of 500 ended with ~45 recycled claim folders, 0.15-0.5 s of rmdir before
        `dagrun run` returned)."""
        if self.left is None:
            return None
        files, dirs, nests = self._caps()
        if len(self._nests) > nests:
            return self._nests
        if len(self._dirs) > min(2 * self.target, dirs + max(0, self.left - len(self._nests))):
            return self._dirs
        return None

    def _low(self) -> bool:
        caps = self._caps()
        return any(n < cap // 2 or (n == 0 and cap > 0)
                   for n, cap in zip((len(self._files), len(self._dirs), len(self._nests)), caps))

    def set_left(self, n: int) -> None:
        """The engine's count of tasks still to start (caps the pool, see _caps)."""
        with self._lock:
            if n == self.left:
                return
            self.left = n
            if self._low() or self._surplus() is not None:
                self._want.notify()

    def take_nest(self, dst: str, before=None) -> bool | None:
        """Make `dst` and `dst/<nest>` in one renameat2(RENAME_NOREPLACE) of a spare nest.
        True: both made; False: `dst` exists already (nothing done); None: no nest at hand,
        or `dst`'s parent is missing -- make them one by one. before(nest): see mkdir_fresh."""
        if not self._nesting():
            return None
        self._taken.last = None          # (set again by _take if this take renames a nest)
        return self._take(self._nests, dst, keep=True, before=before)

    def nest_inodes(self, dst: str) -> tuple[int, int] | None:
        """(inode of `dst`, inode of `dst/<nest>`) when this thread's last take_nest made
        `dst` (rename(2) keeps inodes: the filler thread stat'ed them when it made the nest),
        else None. Asked right after a take that returned True (claim.acquire's NEW)."""
        last = getattr(self._taken, "last", None)
        return last[1] if last is not None and last[0] == dst else None

    def pop_file(self) -> str | None:
        """An empty spare file, now the caller's (None when the pool is empty)."""
        with self._lock:
            if not self._files:
                return None
            f = self._files.pop()
            if self._low():
                self._want.notify()
            return f

    def take_file(self, dst: str) -> bool:
        src = self.pop_file()
        if src is None:
            return False
        try:
            os.rename(src, dst)
            return True
        except OSError:
            return False

    def take_dir(self, dst: str) -> bool | None:
        """True: created `dst`; False: `dst` exists already; None: no spare, use mkdir."""
        if self._noreplace is None:
            return None
        return self._take(self._dirs, dst, keep=False)

    def _take(self, pool: list[str], dst: str, *, keep: bool, before=None) -> bool | None:
        """Rename a spare of `pool` (folders or nests) to `dst` with renameat2(RENAME_NOREPLACE),
        exactly as exclusive as mkdir(2). True: made; False: `dst` exists already (the spare
        goes back to the pool); None: the pool is empty, or the rename failed otherwise (the
        caller makes `dst` by hand) -- the spare goes back only if `keep` (a nest: its
        failure is mostly `dst`'s missing parent, the nest is still good)."""
        with self._lock:
            if not pool:
                return None
            src = pool.pop()
            inos = self._inos.pop(src, None) if pool is self._nests else None
            if self._low():
                self._want.notify()
        if before is not None:
            before(src)
        try:
            self._noreplace(src, dst)
            if inos is not None:
                self._taken.last = (dst, inos)
            return True
        except OSError as e:
            if keep or e.errno == errno.EEXIST:
                with self._lock:
                    pool.append(src)
                    if inos is not None:
                        self._inos[src] = inos
            if e.errno == errno.EEXIST:
                return False
            if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EXDEV):
                self._noreplace = None   # this file system cannot: plain mkdir from now on
            return None

    def give_dir(self, path: str, *, discard: bool = False) -> bool:
        """Recycle an empty folder instead of rmdir + a later mkdir. A folder with something
        in it is refused (rmdir(2) semantics: the caller gets ENOTEMPTY from os.rmdir); rename(2)
        would happily move it, and its files would turn up inside the next folder taken from
        the pool (a claim's owner.json inside a task's attempts/). After the rename it is
        looked into again (a file landed in between) and emptied there if so.
        discard=True (a released claim, whose content claim.release deletes either way: a
        folder rmdir refused was renamed away and rmtree'd): no look before the rename --
        the one after it decides, and whatever is in it is deleted in the pool, never
        recycled. One listing a task instead of two (5 system calls)."""
        if self._noreplace is None:
            return False
        if not discard:
            try:
                if os.listdir(path):
                    return False
            except OSError:
                return False
        with self._lock:
            if self._stop or len(self._dirs) >= 2 * self.target:
                return False
            dst = os.path.join(self.base, f"{my_pid()}-0", f"r{id(path)}-{time.monotonic_ns()}")
        try:
            os.rename(path, dst)
        except OSError:
            return False
        try:
            dirty = bool(os.listdir(dst))    # something landed before the rename (or was in it: discard)
        except OSError:
            dirty = True
        if dirty:
            if os.path.islink(dst):          # a symlinked claim: the link goes, never its target
                _unlink_quiet(dst)
            else:
                shutil.rmtree(dst, ignore_errors=True)
            return True
        with self._lock:
            self._dirs.append(dst)
            if self._surplus() is not None:
                self._want.notify()
        return True

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._want.notify_all()
        for th in self._threads:
            th.join(timeout=2)
        folders = [os.path.join(self.base, f"{os.getpid()}-{k}") for k in range(len(self._threads))]
        remove_many([e.path for d in folders for e in _scandir_quiet(d)])
        remove_many(folders)             # (a folder still holding something: rmtree)


def _scandir_quiet(path: str) -> list:
    try:
        return list(os.scandir(path))
    except OSError:
        return []


REMOVERS = 8


def remove_many(paths: list[str], threads: int = REMOVERS) -> None:
    """Remove spares (empty files, empty folders, nests) with up to `threads` threads at
    once. On this project's VM (ext4 without a journal, a busy virtual disk) an unlink or
    rmdir took 0.5-4 ms of wall time, mostly waiting, and removals made at the same time
    overlap those waits: 64 nests took 19-35 ms with 8 threads against 73-253 ms one after
    the other (measured). An engine's exit, after its goal's last task, removes what is
    left of its pool with it."""
    if not paths:
        return
    todo = list(paths)

    def work():
        while True:
            try:
                p = todo.pop()
            except IndexError:
                return
            try:
                os.unlink(p)
            except IsADirectoryError:
                try:
                    os.rmdir(p)
                except OSError:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass
    n = min(threads, len(todo))
    helpers = [threading.Thread(target=work, name=f"dagrun-remove-{k}", daemon=True) for k in range(n - 1)]
    for th in helpers:
        th.start()
    work()
    for th in helpers:
        th.join()


SPREAD = os.environ.get("DAGRUN_SPARE_SPREAD", "1") not in ("", "0")
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def mark_top_dir(path: str) -> bool:
    """Give folder `path` the "top of a directory hierarchy" attribute (`chattr +T`,
    FS_TOPDIR_FL): ext4's Orlov allocator then places each folder made in it in a block group
    of its own choosing (one with more free inodes than average and the fewest folders)
    instead of next to its parent -- and a file's inode goes to its folder's group. Where the
    parent's group has many recently deleted inodes (test suites and benchmark homes come and
    go under /tmp), an ext4 without a journal skips each of them one by one on every inode it
    allocates there (find_inode_bit -> recently_deleted): 110-160 us of system time per
    create instead of 9 us, measured. Only an allocation hint: no effect on what the folder
    holds; False where the file system has no such flag (tmpfs, xfs, NFS ...)."""
    import fcntl
    import struct
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = struct.unpack_from("i", buf)[0]
        if flags & FS_TOPDIR_FL:
            return True
        struct.pack_into("i", buf, 0, flags | FS_TOPDIR_FL)
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, buf)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def sweep_spares(home: str) -> None:
    """Remove the spare pools of engines that died (their pid is gone). Called when an engine
    starts, whether or not it will make a pool of its own."""
    base = os.path.join(home, ".spare")
    try:
        names = os.listdir(base)
    except OSError:
        return
    for n in names:
        pid = n.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            rmtree(os.path.join(base, n))


def start_spares(home: str, **kw) -> "Spares | None":
    global SPARES
    if os.environ.get("DAGRUN_NO_SPARES"):
        return None
    try:
        SPARES = Spares(home, **kw)
    except OSError:
        SPARES = None
    return SPARES


def spares_left(n: int) -> None:
    """Tell the pool how many tasks are still to be started (it keeps no more than they use)."""
    pool = SPARES
    if pool is not None:
        pool.set_left(n)


def stop_spares() -> None:
    global SPARES
    pool, SPARES = SPARES, None
    if pool is not None:
        pool.close()


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sweep_temps(folder: str, max_age: float = 120.0) -> int:
    """Remove `.<name>.<pid>.tmp` leftovers of writers that died mid-publish.

    Judged by age only (not by pid): on a home shared over NFS the pid may belong to another
    host. A live writer touches its temp continuously and publishes within milliseconds."""
    n = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for e in entries:
        if not (e.name.startswith(".") and e.name.endswith(".tmp")):
            continue
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        if age > max_age and remove(e.path):
            n += 1
    return n


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
    return True
