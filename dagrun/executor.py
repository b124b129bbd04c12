"""Runners start agents and tell when they end. The only module that starts or signals processes.

The Runner protocol assumes no local pid: start() returns a *handle*, a small JSON dict that
is written into claim/owner.json, so a restarted driver (or a Slurm/Ray runner later, whose
handle is a job id) can find the attempt again; poll/terminate/kill/reap_orphan work on it.
The task's files are committed by the engine, whatever runner ran the attempt.

ProcessRunner runs `sh -c "$agent"` in a new session (own process group), stdin from the
rendered prompt.md, stdout/stderr into files -- never pipes, so an agent that floods stdout,
never reads stdin or closes it early cannot block or bloat dagrun. Exits are noticed through a
pidfd per child (poll(2)-able: the engine sleeps in one select() on pidfds + the watcher's
doorbell), falling back to a short poll where pidfd_open is missing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

from .claim import BOOT_ID, HOST, proc_start

RUN_ID_VAR = "DAGRUN_RUN_ID"


@dataclass(frozen=True)
class Launch:
    agent: str               # the shell command; never contains prompt or output text
    cwd: str
    env: dict
    stdin_path: str
    stdout_path: str
    stderr_path: str
    run_id: str              # unique per attempt; exported as DAGRUN_RUN_ID to find strays


@dataclass(frozen=True)
class Exit:
    code: int | None         # exit status, or None when killed by a signal
    signal: int | None = None

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        return f"exit code {self.code}"


class Runner(Protocol):
    name: str

    def start(self, launch: Launch) -> dict: ...
    def poll(self, handle: dict) -> Exit | None: ...
    def terminate(self, handle: dict) -> None: ...
    def kill(self, handle: dict) -> None: ...
    def wait_fds(self) -> dict[int, str]: ...       # fd -> handle key; readable when it ended
    def key(self, handle: dict) -> str: ...
    def reap_orphan(self, handle: dict, grace: float) -> bool: ...
    def close(self) -> None: ...


class StartError(Exception):
    """The agent could not be started (cwd missing, sh missing, fork failed)."""


class ProcessRunner:
    name = "process"

    def __init__(self):
        self._procs: dict[str, subprocess.Popen] = {}
        self._pidfds: dict[str, int] = {}
        self._fd_key: dict[int, str] = {}
        self.pidfd_ok = hasattr(os, "pidfd_open")

    def key(self, handle: dict) -> str:
        return f"{handle['pid']}"

    def start(self, launch: Launch) -> dict:
        env = dict(launch.env)
        env[RUN_ID_VAR] = launch.run_id
        fds = []
        try:
            fds.append(os.open(launch.stdin_path, os.O_RDONLY | os.O_CLOEXEC))
            fds.append(os.open(launch.stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
            fds.append(os.open(launch.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
            # start_new_session: own session + process group, so signals reach the whole agent
            # tree with killpg and the terminal's Ctrl-C does not (we decide how agents stop).
            p = subprocess.Popen(["/bin/sh", "-c", launch.agent], cwd=launch.cwd, env=env,
                                 stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                 start_new_session=True, close_fds=True)
        except OSError as e:
            raise StartError(f"cannot start agent in {launch.cwd}: {e.strerror or e}") from None
        finally:
            for fd in fds:
                os.close(fd)
        k = str(p.pid)
        self._procs[k] = p
        if self.pidfd_ok:
            try:
                pfd = os.pidfd_open(p.pid)
                self._pidfds[k] = pfd
                self._fd_key[pfd] = k
            except OSError:
                self.pidfd_ok = False
        return {"runner": self.name, "host": HOST, "boot_id": BOOT_ID, "pid": p.pid, "pgid": p.pid,
                "start": proc_start(p.pid), "run_id": launch.run_id}

    def poll(self, handle: dict) -> Exit | None:
        k = self.key(handle)
        p = self._procs.get(k)
        if p is None:
            return Exit(None, signal.SIGKILL)
        rc = p.poll()
        if rc is None:
            return None
        self._forget(k)
        # the shell is gone; whatever it left running in its group goes too
        _killpg(handle["pgid"], signal.SIGKILL)
        return Exit(rc, None) if rc >= 0 else Exit(None, -rc)

    def _forget(self, k: str) -> None:
        self._procs.pop(k, None)
        pfd = self._pidfds.pop(k, None)
        if pfd is not None:
            self._fd_key.pop(pfd, None)
            os.close(pfd)

    def terminate(self, handle: dict) -> None:
        _killpg(handle["pgid"], signal.SIGTERM)

    def kill(self, handle: dict) -> None:
        _killpg(handle["pgid"], signal.SIGKILL)
        kill_strays(handle.get("run_id"))

    def wait_fds(self) -> dict[int, str]:
        return self._fd_key

    def running(self) -> int:
        return len(self._procs)

    def reap_orphan(self, handle: dict, grace: float) -> bool:
        """Stop what is left of an attempt whose driver died (we are not its parent).
        Only on the same host and boot, and only processes proved to be that attempt's:
        the group leader by pid + start time, the rest by DAGRUN_RUN_ID in their environment."""
        if not handle or handle.get("runner") != self.name:
            return False
        if handle.get("host") != HOST or (handle.get("boot_id") and handle["boot_id"] != BOOT_ID):
            return False
        pid = int(handle.get("pid") or 0)
        leader_ours = pid > 0 and proc_start(pid) == handle.get("start")
        strays = _processes_with(RUN_ID_VAR, handle.get("run_id")) if handle.get("run_id") else []
        if not leader_ours and not strays:
            return False
        if leader_ours:
            _killpg(handle["pgid"], signal.SIGTERM)
        for p in strays:
            _kill(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc_start(pid) != handle.get("start") and not any(proc_start(p) for p in strays):
                break
            time.sleep(0.05)
        if leader_ours and proc_start(pid) == handle.get("start"):
            _killpg(handle["pgid"], signal.SIGKILL)
        kill_strays(handle.get("run_id"))
        return True

    def close(self) -> None:
        for k in list(self._procs):
            self._forget(k)


def kill_strays(run_id: str | None) -> int:
    """SIGKILL every process that carries DAGRUN_RUN_ID=<run_id>: what an agent started in
    another process group or session (daemonised grandchildren) still inherits it."""
    if not run_id:
        return 0
    n = 0
    for p in _processes_with(RUN_ID_VAR, run_id):
        _kill(p, signal.SIGKILL)
        n += 1
    return n


def _processes_with(var: str, value: str) -> list[int]:
    needle = f"{var}={value}".encode() + b"\0"
    me = os.getpid()
    out = []
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return out
    for pid in pids:
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    out.append(pid)
        except OSError:
            continue
    return out


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
