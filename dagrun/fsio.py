"""The one place that changes files.

Every file another process may read is published whole or not at all: written to
`.<name>.<pid>.tmp` in the *same* folder (rename is only atomic within one file system),
then renamed over the final name. Appends to logs are a single write(2) on an O_APPEND fd.

Every mutation goes through `_step()`, so a crash can be injected at the k-th file-system
operation (`DAGRUN_CRASH_AT=k` kills the process with SIGKILL right before that operation;
`DAGRUN_CRASH_AT=k:after` right after it). The reliability tests use it to crash at every step.

`DAGRUN_FSYNC=1` fsyncs data and the folder around each publish: needed to survive power
loss, not process crashes (the kernel keeps written pages whatever happens to the process).
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import time

DURABLE = os.environ.get("DAGRUN_FSYNC", "") not in ("", "0")

_crash_at = 0
_crash_after = False
_steps = 0
_env = os.environ.get("DAGRUN_CRASH_AT", "")
if _env:
    _n, _, _when = _env.partition(":")
    _crash_at = int(_n)
    _crash_after = _when == "after"
del _env


def _step(label: str) -> None:
    """Count one file-system mutation; die here if the crash harness asked for it."""
    global _steps
    if not _crash_at:
        return
    _steps += 1
    if _steps == _crash_at and not _crash_after:
        _die(label)


def _done_step(label: str) -> None:
    if _crash_at and _crash_after and _steps == _crash_at:
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
def read_bytes(path: str) -> bytes | None:
    """The file's content, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False


# ---------------------------------------------------------------------------------- writes
def tmp_name(path: str) -> str:
    d, name = os.path.split(path)
    return os.path.join(d, f".{name}.{os.getpid()}.tmp")


def write_atomic(path: str, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> bool:
    """Publish `data` at `path` whole or not at all.

    exclusive=True publishes only if `path` does not exist yet (link(2) instead of rename(2):
    link fails with EEXIST, so exactly one of several racing writers wins). Returns False when
    another writer won, True otherwise.
    """
    tmp = tmp_name(path)
    _step(f"create {tmp}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if DURABLE:
            os.fsync(fd)
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


def append_line(path: str, line: bytes) -> None:
    """Append one line with a single write(2) on an O_APPEND fd: on a local file system
    concurrent appenders never interleave or tear lines (the inode lock covers the write)."""
    if not line.endswith(b"\n"):
        line += b"\n"
    _step(f"append {path}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        n = os.write(fd, line)
        if n != len(line):  # only on a full disk; a partial line must not stay half-written
            raise OSError(errno.ENOSPC, "short write (file system full?)")
        if DURABLE:
            os.fsync(fd)
    finally:
        os.close(fd)
    _done_step(f"append {path}")


def mkdir(path: str, *, mode: int = 0o755) -> bool:
    """mkdir(2); True if we created it, False if it already existed. This is the claim lock."""
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
    os.makedirs(path, mode=mode, exist_ok=True)
    _done_step(f"makedirs {path}")


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
    _step(f"rmdir {path}")
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return False
    _done_step(f"rmdir {path}")
    return True


def rmtree(path: str) -> None:
    _step(f"rmtree {path}")
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


def open_for_output(path: str) -> int:
    """A fresh file for an agent's stdout/stderr (the agent writes it, nobody renames over it)."""
    _step(f"open {path}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    _done_step(f"open {path}")
    return fd


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
