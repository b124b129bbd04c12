"""Process liveness, proved not guessed: a process is named by (host, boot id, pid, start
time). The pid alone is not enough (pids are recycled), the start time alone is not (it is
clock ticks since boot), and another host's processes cannot be seen at all (claims from
there are judged by their lease instead, in claim.py). The bottom layer: no dagrun imports.
"""
from __future__ import annotations

import os

HOST = os.uname().nodename      # = socket.gethostname() (uname(2)), without importing socket


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


BOOT_ID = _boot_id()


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None when there is
    no such process (or no /proc), [] when it cannot be read."""
    # plain open/read/close: a file object adds an fstat, an ioctl and an lseek, and this runs
    # once per spawned agent (proc_start) in a spawner thread
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return []
    try:
        data = os.read(fd, 8192)     # procfs hands the whole line (52 numbers and comm: < 1.3 KiB) to one read
    except OSError:
        return []
    finally:
        os.close(fd)
    return data[data.rfind(b")") + 2:].split()


def proc_start(pid: int) -> str | None:
    """Start time of a live process as a string (clock ticks since boot on Linux), None if
    there is no such process. Together with the pid it identifies a process for good."""
    if pid <= 0:
        return None
    rest = stat_fields(pid)
    if rest is None:
        return None
    if rest:
        if rest[0] == b"Z":            # a zombie has finished: it holds nothing any more
            return None
        return rest[19].decode()
    try:  # no /proc (macOS): psutil gives the creation time
        import psutil
        return f"{psutil.Process(pid).create_time():.3f}"
    except Exception:  # noqa: BLE001 - NoSuchProcess, AccessDenied, ImportError
        return None


def _parent(pid: int) -> int | None:
    rest = stat_fields(pid)
    return int(rest[1]) if rest and len(rest) > 1 else None


def _image(pid: int) -> tuple[str, bytes] | None:
    """(program, command line) of a process: a forked copy that never exec'd has its parent's."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.readlink(f"/proc/{pid}/exe"), f.read()
    except OSError:
        return None


SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "ksh93", "mksh", "ash", "busybox", "yash", "posh", "oksh"}


def script_pid(pid: int) -> int:
    """The process a script's claim belongs to: `pid` (the caller of `dagrun claim`) -- unless
    that is a *subshell*, a copy of a shell script forked to run `$(dagrun claim g || true)`,
    `$(dagrun claim g 2>/dev/null)` (bash), `( ... )` or a pipeline: it exits the moment
    `dagrun claim` does, and a claim owned by it would look dead at once and be taken while
    the script works on it. A subshell is recognised as a shell process with exactly the
    program and command line of its parent (fork without exec); the claim goes to the
    script it was forked from. Python, or any non-shell caller, is never walked past."""
    for _ in range(32):
        pp = _parent(pid)
        if pp is None or pp <= 1:
            return pid
        img = _image(pid)
        if img is None or os.path.basename(img[0]) not in SHELLS or img != _image(pp):
            return pid
        pid = pp
    return pid


def lineage(pid: int) -> list[tuple[int, str | None]]:
    """(pid, start time) of `pid` and each of its ancestors up to (not including) init."""
    out = []
    for _ in range(64):
        if pid <= 1:
            break
        out.append((pid, proc_start(pid)))
        pp = _parent(pid)
        if pp is None:
            break
        pid = pp
    return out


_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def my_pid() -> int:
    """os.getpid() without the system call (getpid(2) is not cached by glibc): the engine's
    thread asked ~9 times a task (temporary names, owner.json, the children list). Kept right
    across os.fork() by an at-fork hook; a vfork+exec child runs no Python to need it."""
    return _PID[0]


_SELF: tuple[int, str | None] = (0, None)


def self_start() -> str | None:
    """This process's start time, read once per process (a forked child reads its own)."""
    global _SELF
    pid = _PID[0]
    if _SELF[0] != pid:
        _SELF = (pid, proc_start(pid))
    return _SELF[1]


def pid_alive(pid: int) -> bool:
    """A process with this pid exists (any owner): for names that carry only a pid, like
    unborn goal folders of this host (and the spare pools older versions left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


GONE, REUSED, REBOOTED = "gone", "reused", "rebooted"


def why_dead(boot_id, pid: int, start) -> str | None:
    """None when the process (boot id, pid, start time) of THIS host is provably alive;
    else GONE (no such pid), REUSED (the pid now has another start time) or REBOOTED (it
    ran before a reboot). A process of another host cannot be judged: callers check the
    host first (claims from there are judged by their lease, in claim.py)."""
    if boot_id and BOOT_ID and boot_id != BOOT_ID:
        return REBOOTED
    now = proc_start(pid)
    if now is None:
        return GONE
    if start and now != start:
        return REUSED
    return None


def is_alive(host, boot_id, pid: int, start) -> bool:
    """(host, boot id, pid, start time) names a live process of this host."""
    return host == HOST and why_dead(boot_id, pid, start) is None
