"""The one place that changes files.

Every file another process may read is published whole or not at all: written to
`.<name>.<pid>.tmp` in the *same* folder (rename is only atomic within one file system),
then renamed over the final name (write_atomic; publish_held keeps the new file open). The
one exception, write_fresh, is for a file nobody reads before its writer says so (a first
prompt.md before the agent starts, an empty output before `done`): made under its own name
with O_EXCL, falling back to the rename when a file is there already. (owner.json is not
such a file: a script or a test that waits for it and reads it would find it empty -- the
thirteenth session tried, tests/test_runners.py caught it.) Appends to logs are a single
write(2) on an O_APPEND fd.

Every mutation goes through `_step()`, so a crash can be injected at the k-th file-system
operation (`DAGRUN_CRASH_AT=k` kills the process with SIGKILL right before that operation;
`DAGRUN_CRASH_AT=k:after` right after it). The reliability tests use it to crash at every step;
`DAGRUN_STEP_TRACE=file` appends "k label" for every step (how many steps a clean run takes).
`DAGRUN_CRASH_ON=pattern` (fnmatch, on the label, e.g. "publish */hooks/due-*") makes k count
only the steps whose label matches: "the k-th hooks record" is the same step in every run,
where the engine's threads (the spawners) and its batched event appends make "the k-th
step" differ from run to run.

`DAGRUN_FSYNC=1` fsyncs data and the folder around each publish: needed to survive power
loss, not process crashes (the kernel keeps written pages whatever happens to the process).
"""
from __future__ import annotations

import errno
import os
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
    (the spawners) count too: one lock makes each step one number, and a crash
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
# Reads leave the file's access time alone (O_NOATIME, where the kernel has it): under the
# usual `relatime` the first read of a file written since it was last read updates its
# atime -- its inode made dirty, written to the journal and back -- and dagrun reads what it
# has just written (a goal's end reads every `done` marker: 100 000 freshly written files
# read in 0.42 s of wall and 0.18 s of write-back after, 0.24 s and 0.01 s with O_NOATIME;
# docs/performance.md, fifteenth session). Nothing reads dagrun's atimes. O_NOATIME is only
# for the file's owner (or CAP_FOWNER): a file of another user answers EPERM, and is opened
# again without it (open_noatime).
NOATIME = getattr(os, "O_NOATIME", 0)


def open_noatime(path: str, flags: int, dir_fd: int | None = None) -> int:
    """os.open(path, flags | O_NOATIME), or without O_NOATIME for a file we do not own."""
    try:
        return os.open(path, flags | NOATIME, dir_fd=dir_fd)
    except PermissionError as e:
        if not NOATIME or e.errno != errno.EPERM:
            raise
    return os.open(path, flags, dir_fd=dir_fd)


def read_bytes(path: str, *, follow: bool = True) -> bytes | None:
    """The file's content, or None when it does not exist (follow=False: or when its last
    component is a symbolic link). Its access time is left alone (NOATIME)."""
    try:
        fd = open_noatime(path, os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
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


def read_fd(fd: int, limit: int | None = None, size_hint: int = 0, short_eof: bool = False) -> bytes:
    """Read fd from where it stands to its end (or `limit` bytes) with plain read(2) calls:
    no file object -- a buffered one costs an fstat, an ioctl and an lseek per file, and the
    engine reads a few small files per task. size_hint: the size if known (one read then).

    short_eof: fd is a regular file on a file system where a read(2) that returns fewer
    bytes than asked is at the end of the file (short_read_is_eof): the read stops there
    instead of asking once more to be told 0 -- a small file (a `done` marker) in one
    read(2), not two. Elsewhere the end is only the read that returns 0 bytes."""
    parts = []
    n = 0
    chunk = max(size_hint + 1, 1 << 16)
    while limit is None or n < limit:
        ask = chunk if limit is None else min(chunk, limit - n)
        b = os.read(fd, ask)
        if not b:
            break
        parts.append(b)
        n += len(b)
        if short_eof and len(b) < ask:
            break
        chunk = min(chunk * 2, 1 << 24)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def fs_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system `path` lives on (Linux: the longest matching mount point
    in mountinfo), or None when that cannot be told."""
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    path = os.path.realpath(path)
    best, kind = -1, None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mnt = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if path == mnt or path.startswith(mnt.rstrip("/") + "/"):
            if len(mnt) >= best:          # later lines with the same mount point shadow earlier ones
                best, kind = len(mnt), right.split()[0]
    return kind


# File systems whose regular files this kernel reads through its page cache (filemap_read):
# a read(2) returns fewer bytes than asked only at the end of the file (or with an I/O error
# or a fatal signal, which the next read would report or which ends the process). Not so on
# network and FUSE file systems (a FUSE server in direct-I/O mode may answer short anywhere):
# there read_fd keeps reading until a read returns 0.
SHORT_READ_EOF = frozenset({"ext4", "ext3", "ext2", "xfs", "btrfs", "tmpfs", "f2fs"})
_short_eof: dict[str, bool] = {}     # folder -> short_read_is_eof, told once per folder


def short_read_is_eof(folder: str) -> bool:
    """Is a short read(2) of a regular file in this folder its end (read_fd(short_eof=))?
    The folder's file system type (fs_type, once per folder) is in SHORT_READ_EOF."""
    hit = _short_eof.get(folder)
    if hit is None:
        hit = _short_eof[folder] = fs_type(folder) in SHORT_READ_EOF
    return hit


# ---------------------------------------------------------------------------------- writes
def tmp_name(path: str) -> str:
    i = path.rfind("/") + 1                  # folder/.name.<pid>.tmp (split + join, inlined)
    return f"{path[:i]}.{path[i:]}.{my_pid()}.tmp"


def _write_whole(fd: int, data: bytes, mtime_ns: int | None = None) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if mtime_ns is not None:        # before the fsync: the time is as durable as the bytes
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    if DURABLE:
        os.fsync(fd)


def write_atomic(path: str, data: bytes, *, mode: int = 0o644, exclusive: bool = False,
                 mtime_ns: int | None = None) -> bool:
    """Publish `data` at `path` whole or not at all: written to `.<name>.<pid>.tmp` next to
    `path`, then renamed over it (a file outside the home -- `--metrics` textfile, `report
    --out` -- may be on another file system, and its folder may be watched for a name pattern
    the temp must not match).

    exclusive=True publishes only if `path` does not exist yet (link(2) instead of rename(2):
    link fails with EEXIST, so exactly one of several racing writers wins). Returns False when
    another writer won, True otherwise.

    mtime_ns: the file's modification time (and access time), set before it is published
    (the status snapshot's time of its stamps: statuscache.write).
    """
    tmp = tmp_name(path)
    _step(f"create {tmp}")
    fd = _open_new(tmp, mode)
    try:
        if mtime_ns is None:
            _write_whole(fd, data)
        else:
            _write_whole(fd, data, mtime_ns)
    except BaseException:
        os.close(fd)
        _unlink_quiet(tmp)
        raise
    os.close(fd)
    _done_step(f"create {tmp}")
    _step(f"publish {path}")
    try:
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                _unlink_quiet(tmp)
        else:
            os.rename(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    _done_step(f"publish {path}")
    if DURABLE:
        fsync_dir(os.path.dirname(path))
    return True


def publish_held(path: str, data: bytes, *, mode: int = 0o644) -> tuple[int, int, int]:
    """write_atomic, keeping the file open: (fd, st_dev, st_ino) of the file published at
    `path`. While the fd is open the inode cannot be freed, so its number cannot name another
    file: a later lstat(path) with this device and inode proves `path` is still this very file
    (claim.Held). The caller closes the fd."""
    tmp = tmp_name(path)
    _step(f"create {tmp}")
    fd = _open_new(tmp, mode)
    try:
        _write_whole(fd, data)
        st = os.fstat(fd)
        _done_step(f"create {tmp}")
        _step(f"publish {path}")
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        _unlink_quiet(tmp)
        raise
    _done_step(f"publish {path}")
    if DURABLE:
        fsync_dir(os.path.dirname(path))
    return fd, st.st_dev, st.st_ino


def write_fresh(path: str, data: bytes, *, mode: int = 0o644) -> None:
    """write_atomic for a file no reader looks at before its writer says so: a task's
    prompt.md before its agent starts, its output before its `done` marker. Created under
    its own name (O_EXCL: never through a symbolic link, never over another file) and written
    there -- one rename(2) less than the temporary name; a file that is there already (an
    earlier attempt's, perhaps linked under attempts/, or one a crash cut short) is replaced
    by write_atomic as before, so it is never rewritten in place."""
    _step(f"create {path}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        write_atomic(path, data, mode=mode)
        return
    try:
        if data:
            _write_whole(fd, data)
        elif DURABLE:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(path)          # ours (O_EXCL made it): no part of it is left behind
        raise
    os.close(fd)
    _done_step(f"create {path}")
    if DURABLE:
        fsync_dir(os.path.dirname(path))


def write_named(path: str, data: bytes) -> None:
    """write_atomic for a file the user named (`report --out`, `metrics --textfile`): an OS
    error becomes the one-line FsError naming it."""
    try:
        write_atomic(path, data)
    except OSError as e:
        raise os_error("write", path, e) from None


def rewrite(path: str, data: bytes, *, fd: int = -1) -> None:
    """Replace the content of an existing private (temporary-named) file in place.

    Written over the old bytes, then cut to the new length -- not opened
    with O_TRUNC: on ext4 a truncate-to-zero followed by a write makes close(2) start
    writeback at once (auto_da_alloc, the replace-via-truncate heuristic), which costs
    ~0.1 ms per task. fd: the file open for writing already (written from offset 0; left
    open), instead of opening `path`."""
    _step(f"rewrite {path}")
    own = fd < 0
    if own:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if own:
            _write_whole(fd, data)
        else:
            view, at = memoryview(data), 0
            while at < len(view):
                at += os.pwrite(fd, view[at:], at)
            if DURABLE:
                os.fsync(fd)
        # then cut what the old content had past it (shrinking keeps the block: no writeback
        # at close); after the write, not before: no fstat needed to know whether to cut
        os.ftruncate(fd, len(data))
    finally:
        if own:
            os.close(fd)
    _done_step(f"rewrite {path}")


def append_line(path: str, line: bytes, *, lines: int = 1) -> int:
    """Append one line with a single write(2) on an O_APPEND fd: on a local file system
    concurrent appenders never interleave or tear lines (the inode lock covers the write).
    A concurrent *reader* can see one half done: the file's size grows page by page within
    the write (ext4: 4.6 % of reads saw a torn last line with 300-byte appends, 0 with
    256-byte ones that never cross a page; tests/conftest.events, 2026-12-06), so readers
    leave an unterminated last line for later (events.Reader, events.read_all).
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
    This is the claim lock: mkdir(2)."""
    _step(f"mkdir {path}")
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    _done_step(f"mkdir {path}")
    return True


def makedirs(path: str, *, mode: int = 0o755) -> None:
    if os.path.isdir(path):
        return
    _step(f"makedirs {path}")
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


def rmdir(path: str) -> bool:
    """Remove an empty folder; a folder with something in it is refused (OSError
    ENOTEMPTY). False if it was already gone."""
    _step(f"rmdir {path}")
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
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)


RENAME_NOREPLACE = 1


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


def sweep_old_spares(home: str) -> None:
    """Remove what dagrun < 2026-12-06 left in `$DAGRUN_HOME/.spare/`: the spare-inode pools
    (empty files and folders, `<pid>-<k>/`) of engines that were killed. Those versions kept
    a pool there; this one does not (docs/performance.md, "2026-12-06: the spare pool
    removed"). A pool whose pid lives is left alone (an older engine may still be using it
    on a shared home); the folder itself goes once it is empty. It is scratch: deleting it
    by hand while no older engine runs is safe. One listdir (ENOENT) an engine start."""
    base = os.path.join(home, ".spare")
    try:
        names = os.listdir(base)
    except OSError:
        return
    for n in names:
        pid = n.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid)):
            rmtree(os.path.join(base, n))
    try:
        os.rmdir(base)
    except OSError:
        pass


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


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
    return True


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def mark_top_dir(path: str) -> bool:
    """Give folder `path` the "top of a directory hierarchy" attribute (`chattr +T`,
    FS_TOPDIR_FL): ext4's Orlov allocator then places each folder made in it in a block group
    of its own choosing (one with more free inodes than average and the fewest folders)
    instead of next to its parent -- and a file's inode goes to its folder's group. Where the
    parent's group has many recently deleted inodes (test suites and benchmark homes come and
    go under /tmp), an ext4 without a journal skips each of them one by one on every inode it
    allocates there (find_inode_bit -> recently_deleted): 110-160 us of system time per
    create instead of 9 us, measured (bench/inode_groups.py). Each goal's tasks/ folder
    carries it (edit._create_goal): a task's folder, its claim/ and its files land in a group
    with few folders -- not next to the claims other tasks of the run just released, which
    would be recently deleted there. Only an allocation hint: no effect on what the folder
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
