"""Runners start agents and tell when they end. The only module that starts or signals processes.

The Runner protocol assumes no local pid: start() returns a *handle*, a small JSON dict that
is written into claim/owner.json, so a restarted driver (or a Slurm/Ray runner later, whose
handle is a job id) can find the attempt again; poll/terminate/kill/reap_orphan work on it.
The task's files are committed by the engine, whatever runner ran the attempt.

ProcessRunner runs `sh -c "$agent"` in a new session (own process group) -- or, when the shell
would add nothing (shellwords.plain_argv: a plain command, as GNU make decides for a recipe
line), the agent's words directly, with the environment dash would pass on -- with stdin = the
rendered prompt.md (a file: an agent that never reads it, or closes it early, blocks nobody).
stdout and stderr are pipes that the engine's loop drains into capture files, created on the
first byte (an agent that prints nothing costs no inode: on slow disks inode creation is
the dominant per-task cost). Draining in 64 KiB reads keeps memory flat however much an agent
prints, gives exact "last output" times for stall detection and the first-byte latency,
and lets max_output stop a flood exactly. When the shell exits, what is left of its process
group is killed; a process that escaped the group and still holds the pipe gets EOF taken
away (SIGPIPE on its next write) instead of being waited for.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

from . import fsio, lazyre
from .fsio import close_quiet
from .proc import BOOT_ID, HOST, is_alive, my_pid, proc_start, stat_fields
from .records import NEW, frozen_methods, plain_methods
from .shellwords import plain_argv
from .store import as_int

RUN_ID_VAR = "DAGRUN_RUN_ID"
_NAME = lazyre.Pattern(r"[A-Za-z_][A-Za-z0-9_]*")    # the environment names dash passes on
NO_PIDFD_POLL = 0.02      # s: child-exit polling where pidfd_open is missing
CHUNK = 65536
FAIR_SHARE = 4 * 1024 * 1024     # bytes drained from one pipe before others get a turn


_set = object.__setattr__     # the frozen classes' __init__ (as @dataclass(frozen=True) sets fields)
_LAUNCH = ("agent", "cwd", "env", "stdin_path", "stdout_path", "stderr_path", "run_id", "max_output", "runner", "spec",
           "argv")


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Launch:
    """What a runner needs to start one attempt of a task."""
    agent: str               # the shell command; never contains prompt or output text
    cwd: str
    env: dict
    stdin_path: str
    stdout_path: str         # capture files, created on the first byte
    stderr_path: str
    run_id: str              # exported as DAGRUN_RUN_ID: finds strays of this attempt
    max_output: int | None = None
    runner: str = "process"  # registry name of the runner that starts it (Mux picks by it)
    spec: dict = field(default_factory=dict, hash=False)   # for cluster runners: resources,
    #                          timeout, kill_grace, the runner's plan options, a job name
    argv: tuple = ()         # ProcessRunner: exec this instead of `/bin/sh -c agent` (a cluster
    #                          runner's own client, e.g. Slurm steps' srun: no shell in between)

    def __init__(self, agent, cwd, env, stdin_path, stdout_path, stderr_path, run_id, max_output=None,
                 runner="process", spec=NEW, argv=()):
        _set(self, "agent", agent)
        _set(self, "cwd", cwd)
        _set(self, "env", env)
        _set(self, "stdin_path", stdin_path)
        _set(self, "stdout_path", stdout_path)
        _set(self, "stderr_path", stderr_path)
        _set(self, "run_id", run_id)
        _set(self, "max_output", max_output)
        _set(self, "runner", runner)
        _set(self, "spec", {} if spec is NEW else spec)
        _set(self, "argv", argv)

    __repr__, __eq__ = plain_methods(*_LAUNCH)
    __setattr__, __delattr__, __hash__ = frozen_methods(*(n for n in _LAUNCH if n != "spec"))   # (spec: hash=False)


_PROGRESS = ("out_bytes", "err_bytes", "first_byte", "last_output", "over_limit")


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Progress:
    """What an attempt has printed so far: stall detection, max_output, first-byte latency."""
    out_bytes: int = 0
    err_bytes: int = 0
    first_byte: float | None = None    # monotonic time of stdout's first byte
    last_output: float | None = None   # monotonic time of the last byte on stdout or stderr
    over_limit: bool = False           # stdout went past max_output (cut there): stop it

    def __init__(self, out_bytes=0, err_bytes=0, first_byte=None, last_output=None, over_limit=False):
        _set(self, "out_bytes", out_bytes)
        _set(self, "err_bytes", err_bytes)
        _set(self, "first_byte", first_byte)
        _set(self, "last_output", last_output)
        _set(self, "over_limit", over_limit)

    __repr__, __eq__ = plain_methods(*_PROGRESS)
    __setattr__, __delattr__, __hash__ = frozen_methods(*_PROGRESS)


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Wakeup:
    """How the driver's loop learns that something happened to a runner's attempts."""
    fds: tuple = ()                    # poll(2) these: readable = call service()/poll()
    timeout: float | None = None       # and come back within this many seconds (None: no need)

    def __init__(self, fds=(), timeout=None):
        _set(self, "fds", fds)
        _set(self, "timeout", timeout)

    __repr__, __eq__ = plain_methods("fds", "timeout")
    __setattr__, __delattr__, __hash__ = frozen_methods("fds", "timeout")


_EXIT_COMPARED = ("code", "signal", "strays", "reason", "node")    # (progress: compare=False)


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Exit:
    """How an attempt's process ended (and its progress as of the exit)."""
    code: int | None         # exit status, or None when killed by a signal
    signal: int | None = None
    progress: Progress | None = field(default=None, compare=False)   # as of the exit (the
    #                          runner forgets the attempt once it has reported its exit)
    strays: int = 0          # processes it left behind outside its group, killed by us
    reason: str | None = None   # a cluster engine's own account of the end (Slurm state + exit code)
    node: str | None = None     # a cluster runner: the node the attempt ran on, when it knows

    def __init__(self, code, signal=None, progress=None, strays=0, reason=None, node=None):
        _set(self, "code", code)
        _set(self, "signal", signal)
        _set(self, "progress", progress)
        _set(self, "strays", strays)
        _set(self, "reason", reason)
        _set(self, "node", node)

    __repr__ = plain_methods("code", "signal", "progress", "strays", "reason", "node")[0]
    __eq__ = plain_methods(*_EXIT_COMPARED)[1]
    __setattr__, __delattr__, __hash__ = frozen_methods(*_EXIT_COMPARED)

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        if self.reason:
            return self.reason
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        return f"exit code {self.code}"


class Runner:     # a protocol (not a base class: typing is not imported on the run path)
    """The contract between a driver (the engine) and whatever runs agents. ARCHITECTURE.md
    ("The Runner protocol") says what each method must guarantee; summary:

    name         the registry key; start() writes it into the handle as handle["runner"]
    start        launch an attempt; returns its handle, a small JSON-able dict that goes into
                 claim/owner.json (a restarted driver finds the attempt by it); StartError if
                 it could not be launched (the attempt then fails, counted)
    key          a string naming a live attempt within this runner instance
    poll         None while it runs; its Exit once (then the runner forgets it). Before it
                 returns an Exit, the capture files (launch.stdout_path/stderr_path) are final
    terminate    ask it to stop (TERM); kill: make it stop now (KILL). Idempotent
    wakeup       fds for the driver's poll(2) plus the longest it may sleep
    service      called with the readable fds of wakeup() (drain pipes, read a socket)
    progress     Progress of a live attempt (zeros when unknown)
    reap_orphan  stop what is left of an attempt whose driver died, by its handle (or, for a
                 claim that died before its handle was published, its run id); True if it
                 found something of that attempt
    alive        which of these attempts (key -> handle, maybe another driver's) still run
    close        forget everything (the driver exits)

    Optional (cluster runners): adopt(handle) follows a dead driver's attempt (reattach);
    node(handle) names the node a live attempt runs on once the engine has placed it (None
    until then; cheap: the driver asks on every loop until it knows, see node_of).
    Optional (local processes): submit(launch) is start() without waiting for the fork (the
    handle comes back at once, completed when spawned() reports it: [(handle, StartError or
    None)]; its fd is in wakeup() meanwhile). The engine uses it when the runner has it.
    Optional (a runner whose every exit wakes the driver through a wakeup() fd): exits(ready)
    gives the keys of the attempts that may have ended, given the fds poll(2) found readable;
    the driver then polls only those (and the ones whose spawn it just collected). None: it
    cannot tell, poll every attempt. Without the method every attempt is polled every turn.
    """
    name: str

    def start(self, launch: Launch) -> dict: ...
    def key(self, handle: dict) -> str: ...
    def poll(self, handle: dict) -> Exit | None: ...
    def terminate(self, handle: dict) -> None: ...
    def kill(self, handle: dict) -> None: ...
    def wakeup(self) -> Wakeup: ...
    def service(self, ready: set[int]) -> None: ...
    def progress(self, handle: dict) -> Progress: ...
    def reap_orphan(self, handle: dict | None, grace: float, run_id: str | None = None) -> bool: ...
    def alive(self, handles: dict[str, dict]) -> set[str]: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------- registry
# name (as stored in owner.json's handle) -> (module, class). Looked up lazily: a command
# that only reaps or cancels imports just the runner it needs.
RUNNERS: dict[str, tuple[str, str]] = {
    "process": ("dagrun.executor", "ProcessRunner"),
    "fake": ("dagrun.simrun", "FakeRunner"),
    "dry": ("dagrun.simrun", "DryRunner"),
    "slurm": ("dagrun.slurm", "SlurmRunner"),
    "ray": ("dagrun.rayrun", "RayRunner"),
}
# a plan's "runner" -> registry name
PLAN_RUNNERS = {"local": "process", "slurm": "slurm", "ray": "ray"}


def node_of(runner, handle: dict) -> str | None:
    """Where a live attempt runs, for a runner that can tell (Slurm: the job's node; Ray: the
    node of the Ray worker); None for the others and until it is known."""
    f = getattr(runner, "node", None)
    return f(handle) if f is not None else None


def unusable(name: str, opts: dict | None = None) -> str | None:
    """Why the runner of this registry name cannot start anything here (None: it can).
    Checked at submit and when a driver starts, never mid-goal."""
    if name not in RUNNERS:
        return f"runner {name}: unknown (known: {', '.join(sorted(RUNNERS))})"
    import importlib
    module, cls = RUNNERS[name]
    check = getattr(getattr(importlib.import_module(module), cls), "unusable", None)
    return check(opts) if check is not None else None


def register(name: str, module: str, cls: str) -> None:
    """Add a runner (a Slurm runner: register("slurm", "dagrun.slurm", "SlurmRunner"))."""
    RUNNERS[name] = (module, cls)


def get(name: str) -> Runner:
    """A new runner by its name; KeyError for an unknown one."""
    import importlib
    module, cls = RUNNERS[name]
    return getattr(importlib.import_module(module), cls)()


def for_handle(handle: dict | None, mine: Runner | None = None) -> Runner | None:
    """The runner that can act on this handle: the driver's own if it is of that kind, else a
    new one from the registry; None for a name nobody registered. A claim that died before
    its handle was published (handle None) can only have started a local process."""
    name = handle.get("runner") if isinstance(handle, dict) else "process"
    if mine is not None and getattr(mine, "name", None) == name:
        return mine
    if not isinstance(name, str) or name not in RUNNERS:
        return None
    return get(name)


def reap_orphan(handle: dict | None, grace: float, run_id: str | None = None, *, mine: Runner | None = None) -> bool:
    """Stop what is left of a dead driver's attempt, through the runner named in its handle."""
    r = for_handle(handle, mine)
    return False if r is None else r.reap_orphan(handle, grace, run_id=run_id)


def alive(handles: dict[str, dict], *, mine: Runner | None = None) -> set[str]:
    """Which of these attempts (key -> handle, any runner) still run: one call per runner."""
    by_name: dict[str, dict[str, dict]] = {}
    for k, h in handles.items():
        by_name.setdefault(h.get("runner") or "process", {})[k] = h
    out: set[str] = set()
    for _name, hs in by_name.items():
        r = for_handle(next(iter(hs.values())), mine)
        if r is not None:
            out |= r.alive(hs)
    return out


def require(plan_names, force: str | None = None, options: dict | None = None) -> None:
    """UsageError (exit 2) naming the first runner that cannot start anything here: the plan's
    runners ("local", "slurm"), or the one forced by `--runner`. Checked at submit and when a
    driver starts, so a goal never fails half-way for want of its runner."""
    from .errors import UsageError
    if force is not None:
        if force not in PLAN_RUNNERS:
            raise UsageError(f"runner {force}: unknown (known: {', '.join(PLAN_RUNNERS)})")
        plan_names = {force}
    for n in sorted(set(plan_names)):
        why = unusable(PLAN_RUNNERS.get(n, n), (options or {}).get(n))
        if why:
            raise UsageError(why)


def options_of(plans) -> dict:
    """runner name -> the first task's options for it (a Ray address to check)."""
    out: dict = {}
    for p in plans:
        for t in p.tasks:
            if t.runner == "ray" and t.ray:
                out.setdefault("ray", t.ray)
    return out


def for_driver(plans, force: str | None = None) -> "Mux":
    """The runner of an engine serving these plans (`--runner NAME`: force, a plan name):
    checked first (UsageError, exit 2), local processes always available."""
    names = {t.runner for p in plans for t in p.tasks if t.runner != "local"}
    require(names, force, options_of(plans))
    mux = Mux({"process": ProcessRunner()}, force=PLAN_RUNNERS[force] if force else None)
    # a runner with warm() starts connecting now (Ray: import + ray.init, seconds), while the
    # engine scans the home, instead of on the first attempt
    for n in ({force} if force else names) - {"local"}:
        r = mux._get(PLAN_RUNNERS.get(n, n))
        # what only a driver needs (Slurm steps mode: to run inside an allocation)
        check = getattr(r, "driver_unusable", None)
        why = check([t for p in plans for t in p.tasks if force or t.runner == n]) if check else None
        if why:
            from .errors import UsageError
            raise UsageError(why)
        if hasattr(r, "warm"):
            r.warm(options_of(plans).get(n) or {})
    return mux


class Mux:
    """The engine's runner when tasks of one goal use different runners: starts each attempt
    with the runner its Launch names (created on first use) and sends every other call to the
    runner named in the handle. `force` replaces every Launch's runner (`--runner NAME`)."""
    name = "mux"

    def __init__(self, runners: dict[str, Runner] | None = None, force: str | None = None):
        self.runners: dict[str, Runner] = dict(runners or {})
        self.force = force

    def _get(self, name: str) -> Runner:
        r = self.runners.get(name)
        if r is None:
            r = self.runners[name] = get(name)
        return r

    def _of(self, handle: dict) -> Runner:
        return self._get(handle.get("runner") or "process")

    def start(self, launch: Launch) -> dict:
        return self._get(self.force or launch.runner).start(launch)

    def submit(self, launch: Launch) -> dict | None:
        """start() without waiting, for a runner that can (ProcessRunner.submit); None: this
        launch's runner cannot, call start()."""
        r = self._get(self.force or launch.runner)
        f = getattr(r, "submit", None)
        return f(launch) if f is not None else None

    def spawned(self) -> list:
        out: list = []
        for r in self.runners.values():
            f = getattr(r, "spawned", None)
            if f is not None:
                out += f()
        return out

    def key(self, handle: dict) -> str:
        return f"{handle.get('runner')}:{self._of(handle).key(handle)}"

    def reap_together(self, handles: list[dict]) -> None:
        """reap_together() of each runner that has it, with its own handles."""
        if len(self.runners) == 1:          # (the usual case: every handle is that runner's)
            for r in self.runners.values():
                f = getattr(r, "reap_together", None)
                if f is not None:
                    f(handles)
            return
        by: dict[int, tuple[Runner, list[dict]]] = {}
        for h in handles:
            r = self._of(h)
            by.setdefault(id(r), (r, []))[1].append(h)
        for r, hs in by.values():
            f = getattr(r, "reap_together", None)
            if f is not None and len(hs) > 1:
                f(hs)

    def poll(self, handle: dict) -> Exit | None:
        return self._of(handle).poll(handle)

    def terminate(self, handle: dict) -> None:
        self._of(handle).terminate(handle)

    def kill(self, handle: dict) -> None:
        self._of(handle).kill(handle)

    def wakeup(self) -> Wakeup:
        fds: tuple = ()
        timeout = None
        for r in self.runners.values():
            w = r.wakeup()
            fds += tuple(w.fds)
            if w.timeout is not None:
                timeout = w.timeout if timeout is None else min(timeout, w.timeout)
        return Wakeup(fds, timeout)

    def service(self, ready: set[int]) -> None:
        for r in self.runners.values():
            r.service(ready)

    def exits(self, ready: set[int]) -> set[str] | None:
        """exits() of every runner in use, in this Mux's keys; None if one of them cannot
        tell (has no exits(), or says None): then every attempt is polled."""
        out: set[str] = set()
        for name, r in self.runners.items():
            f = getattr(r, "exits", None)
            keys = f(ready) if f is not None else None
            if keys is None:
                return None
            out.update(f"{name}:{k}" for k in keys)
        return out

    def progress(self, handle: dict) -> Progress:
        return self._of(handle).progress(handle)

    def reap_orphan(self, handle: dict | None, grace: float, run_id: str | None = None) -> bool:
        name = handle.get("runner") if isinstance(handle, dict) else "process"
        if not isinstance(name, str) or name not in RUNNERS:
            return False
        return self._get(name).reap_orphan(handle, grace, run_id=run_id)

    def alive(self, handles: dict[str, dict]) -> set[str]:
        return alive(handles)

    def node(self, handle: dict) -> str | None:
        return node_of(self._of(handle), handle)

    def adopt(self, handle: dict) -> bool:
        """Follow an attempt a dead driver started (a runner with adopt(): Slurm jobs)."""
        name = handle.get("runner")
        if not isinstance(name, str) or name not in RUNNERS:
            return False
        r = self._get(name)
        return bool(getattr(r, "adopt", None)) and r.adopt(handle)

    def close(self) -> None:
        for r in self.runners.values():
            r.close()


class StartError(Exception):
    """The agent could not be started (cwd missing, sh missing, fork failed)."""


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class _Spawned:
    """A child _spawn started (in a spawner thread or the loop), before the loop adopts it."""
    popen: "subprocess.Popen | _Child"
    pid: int
    start: str | None
    r_out: int
    r_err: int
    pidfd: int | None

    def __init__(self, popen, pid, start, r_out, r_err, pidfd):
        self.popen = popen
        self.pid = pid
        self.start = start
        self.r_out = r_out
        self.r_err = r_err
        self.pidfd = pidfd

    __repr__, __eq__ = plain_methods("popen", "pid", "start", "r_out", "r_err", "pidfd")


# Exec a plain agent command directly, as GNU make does with a plain recipe line: `sh -c
# "true"` costs an exec of dash, its start-up and its PATH search before the agent's own exec
# (docs/performance.md, "ninth round"). DAGRUN_DIRECT_EXEC=0: always `sh -c` (A/B runs only).
DIRECT_EXEC = os.environ.get("DAGRUN_DIRECT_EXEC", "1") != "0"


@functools.lru_cache(maxsize=256)
def _plain(command: str) -> "tuple[str, ...] | None":
    argv = plain_argv(command)
    return None if argv is None else tuple(argv)


@functools.lru_cache(maxsize=64)
def _unnamed(names: tuple) -> frozenset:
    """The environment names dash drops (not a shell variable's name)."""
    return frozenset(k for k in names if not _NAME.fullmatch(k))


_PWDS: dict = {}      # (inherited PWD, cwd) -> (cwd's dev and inode, the PWD dash would export)


def _pwd(inherited: str | None, cwd: str, here=None) -> str | None:
    """The PWD dash exports: the inherited one when it is absolute and names the cwd, else
    the cwd's physical path (its getcwd()). Remembered per (PWD, cwd) while the cwd is the
    same inode: one stat(2) a spawn instead of a stat of each and a realpath's lstats (every
    call that releases the GIL makes the spawner thread queue for it behind the loop's).
    here: the cwd's (st_dev, st_ino) when the caller stat'ed it."""
    if here is None:
        try:
            st = os.stat(cwd)
        except OSError:
            return None
        here = (st.st_dev, st.st_ino)
    key = (inherited, cwd)
    hit = _PWDS.get(key)
    if hit is not None and hit[0] == here:
        return hit[1]
    out = None
    if inherited and inherited[0] == "/":
        try:
            p = os.stat(inherited)
            out = inherited if (p.st_dev, p.st_ino) == here else None
        except OSError:
            pass
    out = out or os.path.realpath(cwd)
    if len(_PWDS) > 1024:
        _PWDS.clear()
    _PWDS[key] = (here, out)
    return out


def _direct(launch: Launch, env: dict, here=None) -> "tuple[list[str], dict] | None":
    """argv and environment when the agent can run without `sh -c` to the same effect
    (shellwords.plain_argv), the environment as dash passes it on: only names a shell
    variable can have, PWD as dash sets it. The PATH search is the child's (subprocess
    tries execve(2) on `dir/word` for each PATH entry in turn, as dash does; a word with a
    slash is exec'd as it is); when it finds nothing (or ENOEXEC: a script without #!)
    Popen raises and _spawn runs `sh -c` instead, which says what the shell says (127, 126).
    A PATH with an entry ending in `/` is left to the shell (dash execs `dir//word`: a
    script's $0 would differ)."""
    argv = _plain(launch.agent)
    if argv is None:
        return None
    if "/" not in argv[0]:
        path = env.get("PATH")
        if not path or "/:" in path or path.endswith("/"):
            return None
    bad = _unnamed(tuple(env))
    out = {k: v for k, v in env.items() if k not in bad} if bad else dict(env)
    pwd = _pwd(out.get("PWD"), launch.cwd, here)
    if pwd is None:
        return None
    out["PWD"] = pwd
    return list(argv), out


# The fork itself. subprocess.Popen costs ~100-150 us of Python per spawn (its argument
# checks, the environment encoded name by name through os.fsencode, os.get_exec_path under
# warnings.catch_warnings, the audit, the bookkeeping for __del__), all of it holding the GIL in
# a spawner thread -- time the engine's loop thread, the critical path of a wide plan, waits
# for (docs/performance.md, "2026-12-06"). _fork_exec passes _posixsubprocess.fork_exec the
# very arguments Popen(argv, cwd=, env=, stdin=fd, stdout=fd, stderr=fd,
# start_new_session=True, close_fds=True) passes it on CPython 3.11-3.13 (vfork allowed:
# no preexec_fn, uid, gid or groups; restore_signals; the same error pipe, read the same way,
# raising the same OSError), the environment encoded in one piece (_env_bytes). Another
# interpreter, a fork_exec that refuses the arguments (TypeError, before any fork), or
# DAGRUN_LEAN_SPAWN=0 (A/B runs only): Popen.
try:
    import _posixsubprocess
    _LEAN = (3, 11) <= sys.version_info[:2] <= (3, 13) and sys.implementation.name == "cpython" \
        and os.environ.get("DAGRUN_LEAN_SPAWN", "1") != "0"
except ImportError:           # (not CPython on Linux)
    _posixsubprocess = None
    _LEAN = False


class _Child:
    """What the runner uses of a subprocess.Popen (pid, args, returncode, poll, wait), for a
    child _fork_exec started. Polled by one thread (the loop's), as the runner's are."""
    __slots__ = ("pid", "args", "returncode", "born")

    def __init__(self, pid: int, args: list, born: tuple = (0, 0)):
        self.pid, self.args, self.returncode = pid, args, None
        self.born = born        # CLOCK_BOOTTIME just before and after the fork (_start_of)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, sts = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:       # reaped elsewhere (as Popen: dead, status unknown)
                self.returncode = 0
            else:
                if pid == self.pid:
                    self.returncode = -os.WSTOPSIG(sts) if os.WIFSTOPPED(sts) else os.waitstatus_to_exitcode(sts)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.005)
        return self.returncode


@functools.lru_cache(maxsize=64)
def _search_list(exe: bytes, path: str | None) -> tuple:
    """Where a PATH search looks for exe (Popen's executable_list): exe itself when it has a
    slash, else each entry of PATH (os.get_exec_path's default when there is none)."""
    if b"/" in exe:
        return (exe,)
    dirs = (path if path is not None else os.defpath).split(os.pathsep)
    return tuple(os.path.join(os.fsencode(d), exe) for d in dirs)


# The child's PATH search, shortened. The child tries execve(2) on each entry in turn and goes
# on past ENOENT/ENOTDIR (and past any other error, reporting the first such): `true` with this
# machine's PATH cost every agent 8 failed execve before /usr/bin/true. _exec_list drops the
# leading entries where a stat(2) -- the same path walk as execve's -- found nothing
# (ENOENT/ENOTDIR), as the child would, and keeps all the rest: the child then does exactly
# what the full search does from there on (a file gone meanwhile: it goes on to the next
# entries; a script with a missing interpreter: ENOENT, the next entry, as before). A relative
# entry (the child's cwd, not ours) stops the trimming. The stats are remembered per (name,
# PATH) for PATH_TTL seconds, so the one difference from a search per spawn: a program put into
# an earlier PATH directory during a run is found by the agents started up to PATH_TTL later,
# not at once. DAGRUN_PATH_TTL=0: the full search in every child (A/B runs only).
PATH_TTL = float(os.environ.get("DAGRUN_PATH_TTL", "") or 1.0)
_EXEC_LISTS: dict = {}      # (exe, PATH) -> (time.monotonic() of the stats, the list)


def _exec_list(exe: bytes, path: str | None) -> tuple:
    full = _search_list(exe, path)
    if len(full) < 2 or PATH_TTL <= 0:
        return full
    key, now = (exe, path), time.monotonic()
    hit = _EXEC_LISTS.get(key)
    if hit is not None and now - hit[0] < PATH_TTL:
        return hit[1]
    out = full
    for i, f in enumerate(full):
        if f[:1] != b"/":                 # relative: the child's cwd decides
            out = full[i:]
            break
        try:
            os.stat(f)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError):     # (EACCES, ELOOP, ...: the child's execve gets it too)
            pass
        out = full[i:]
        break
    if len(_EXEC_LISTS) > 256:
        _EXEC_LISTS.clear()
    _EXEC_LISTS[key] = (now, out)
    return out


def _fork_exec(argv: list, cwd: str, env: dict, stdin: int, stdout: int, stderr: int, errpipe: "list | None" = None):
    """Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
    start_new_session=True, close_fds=True), lean when it can be (see above). The child's
    `born`: CLOCK_BOOTTIME read right before and after the fork (_start_of). errpipe: see _lean
    (Popen leaves it alone)."""
    global _LEAN
    if _LEAN:
        try:
            return _lean(argv, cwd, env, stdin, stdout, stderr, errpipe)
        except _Unsupported:      # this fork_exec takes other arguments: Popen from now on
            _LEAN = False
    t0 = _boottime()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                         start_new_session=True, close_fds=True)
    p.born = (t0, _boottime())        # as a _Child's (_start_of)
    return p


class _Unsupported(Exception):
    """fork_exec refused the arguments (another CPython's signature): nothing was started."""


_FS_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def _env_bytes(env: dict) -> list:
    """["NAME=value" as bytes] as Popen encodes them (os.fsencode), with one encode of the
    whole environment instead of two os.fsencode calls per name (~6 us instead of ~45 us
    for 50 names). A name with "=", a NUL anywhere (ValueError, as Popen and fork_exec
    raise), a value that is not a str: the name-by-name way, which says what Popen says."""
    try:
        if "=" not in "".join(env):
            out = "\0".join(map("=".join, env.items())).encode(*_FS_ENCODING).split(b"\0")
            if len(out) == len(env):
                return out
    except TypeError:
        pass
    out = []
    for k, v in env.items():
        kb = os.fsencode(k)
        if b"=" in kb:
            raise ValueError("illegal environment variable name")
        vb = os.fsencode(v)
        if b"\0" in kb or b"\0" in vb:
            raise ValueError("embedded null byte")
        out.append(kb + b"=" + vb)
    return out


def _error_pipe() -> list:
    """[r, w]: the pipe a lean child reports its exec error on ("name:hex errno:text"), both
    ends close-on-exec, w never one of the fds the child dup2()s onto 0-2."""
    r, w = os.pipe2(os.O_CLOEXEC)
    low = []
    while w < 3:
        low.append(w)
        w = os.dup(w)
    for fd in low:
        os.close(fd)
    return [r, w]


def _lean(argv: list, cwd: str, env: dict, stdin: int, stdout: int, stderr: int, errpipe: "list | None" = None) -> _Child:
    """errpipe: an _error_pipe() the caller made; its w is taken (closed here, errpipe[1] set
    to None), its r left to the caller. Without one (or once taken) the pipe is made here."""
    sys.audit("subprocess.Popen", argv[0], argv, cwd, env)
    env_list = _env_bytes(env)
    exe = _exec_list(os.fsencode(argv[0]), env.get("PATH"))
    if errpipe is not None and errpipe[1] is not None:
        (r, w), errpipe[1], own = errpipe, None, False
    else:
        (r, w), own = _error_pipe(), True
    try:
        try:
            try:
                t0 = _boottime()
                pid = _posixsubprocess.fork_exec(
                    argv, exe, True, (w,), cwd, env_list, stdin, -1, -1, stdout, -1, stderr, r, w,
                    True, True, -1, None, None, None, -1, None, subprocess._USE_VFORK)
                t1 = _boottime()
            except TypeError as e:       # (its arguments are checked before any fork)
                raise _Unsupported(str(e)) from None
        finally:
            os.close(w)
        data = b""
        while True:
            part = os.read(r, 50000)
            data += part
            if not part or len(data) > 50000:
                break
    finally:
        if own:
            os.close(r)
    child = _Child(pid, argv, (t0, t1))
    if not data:
        return child
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    import builtins
    try:
        name, hex_errno, msg = data.split(b":", 2)
        msg = msg.decode()
    except ValueError:
        raise subprocess.SubprocessError(f"Bad exception data from child: {data!r}") from None
    kind = getattr(builtins, name.decode("ascii", "replace"), subprocess.SubprocessError)
    if isinstance(kind, type) and issubclass(kind, OSError) and hex_errno:
        num = int(hex_errno, 16)
        noexec = msg.startswith("noexec")       # (3.11: "noexec"; 3.13: "noexec:chdir") the chdir failed
        raise kind(num, os.strerror(num) if num else ("" if noexec else msg), cwd if noexec else argv[0])
    raise (kind if isinstance(kind, type) and issubclass(kind, Exception) else subprocess.SubprocessError)(msg)


class _Stdio:
    """The fds of one spawn: the agent's stdin (prompt.md), its two output pipes, and the
    error pipe of its exec when the caller made one; all close-on-exec (the child gets its
    ends as 0-2). A spawn made by a spawner thread has all but stdin made by the loop's thread
    (_Spawner.submit), which closes the parent's copies of the child's ends when it collects
    the spawn: each of those calls in the spawner thread was a GIL release and reacquisition,
    a hand-off the loop's thread could park on for far longer than the call (docs/performance.md,
    "2026-12-06 (11)")."""
    __slots__ = ("stdin", "r_out", "w_out", "r_err", "w_err", "errpipe")

    def __init__(self, errpipe: bool):
        self.stdin = None
        self.errpipe = None
        self.r_out, self.w_out = os.pipe2(os.O_CLOEXEC)
        try:
            self.r_err, self.w_err = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(self.r_out)
            os.close(self.w_out)
            raise
        if errpipe and _LEAN:
            try:
                self.errpipe = _error_pipe()
            except OSError:
                self.close(False)
                raise

    def open_stdin(self, launch: Launch) -> None:
        self.stdin = os.open(launch.stdin_path, os.O_RDONLY | os.O_CLOEXEC)

    def close(self, spawned: bool) -> None:
        """Close the child's ends (and the error pipe); with spawned=False the read ends too."""
        fds = [self.stdin, self.w_out, self.w_err] + (self.errpipe or [])
        if not spawned:
            fds += [self.r_out, self.r_err]
        for fd in fds:
            if fd is not None:
                close_quiet(fd)


def _start_error(launch: Launch, e: OSError) -> StartError:
    return StartError(f"cannot start the agent in {launch.cwd}: {e.strerror or e}")


def _spawn(launch: Launch, want_pidfd: bool) -> "_Spawned | StartError":
    """Fork and exec the agent for one attempt -- `sh -c AGENT`, or AGENT's words directly when
    the shell would add nothing (_direct); thread-safe (no runner state touched)."""
    try:
        io = _Stdio(False)
    except OSError as e:
        return _start_error(launch, e)
    sp = None
    try:
        sp = _open_and_exec(launch, want_pidfd, io)
    finally:
        io.close(isinstance(sp, _Spawned))
    return _started(sp)


_ASK = object()     # _exec's `here` when the caller did not stat the cwd


def _open_and_exec(launch: Launch, want_pidfd: bool, io: "_Stdio", here=_ASK) -> "_Spawned | StartError":
    """The agent's stdin opened into io, then _exec; an OSError of either is a failed start.
    (_spawn's, and a spawner thread's with the fds and the cwd's stat the loop made.)"""
    try:
        io.open_stdin(launch)
        return _exec(launch, want_pidfd, io, here)
    except OSError as e:
        return _start_error(launch, e)


def _exec(launch: Launch, want_pidfd: bool, io: _Stdio, here=_ASK) -> "_Spawned | StartError":
    """_spawn's fork and exec with the fds of io (closes none of them but io.errpipe's w, when
    it uses it). here: the cwd's (st_dev, st_ino) when the caller stat'ed it (None: it failed)."""
    env = dict(launch.env)
    env[RUN_ID_VAR] = launch.run_id
    direct = None
    if DIRECT_EXEC and not launch.argv and here is not None:     # (None: the cwd is not there; sh says so)
        direct = _direct(launch, env, None if here is _ASK else here)
    try:
        # start_new_session: own session + process group, so killpg reaches the whole
        # agent tree and the terminal's Ctrl-C does not (we decide how agents stop).
        # No preexec_fn, uid/gid or groups: Python can then use vfork(2) (no page-table copy)
        p = None
        if direct is not None:
            try:
                p = _fork_exec(direct[0], launch.cwd, direct[1], io.stdin, io.w_out, io.w_err, io.errpipe)
            except OSError:      # not found, not executable, ENOEXEC (a script without #!): the
                p = None         # shell does what it does with it (127, 126, runs it)
        if p is None:
            p = _fork_exec(list(launch.argv) or ["/bin/sh", "-c", launch.agent], launch.cwd, env,
                           io.stdin, io.w_out, io.w_err, io.errpipe)
    except OSError as e:
        return _start_error(launch, e)
    os.set_blocking(io.r_out, False)        # (ioctl FIONBIO: keeps the GIL)
    os.set_blocking(io.r_err, False)
    pidfd = None
    if want_pidfd:
        try:
            pidfd = os.pidfd_open(p.pid)
        except OSError:
            pidfd = None
    t0, t1 = p.born
    if _START_CLOCK is True and t0 // _TICK_NS != t1 // _TICK_NS:
        start = _LATER         # /proc/PID/stat's three calls: the caller's (_Spawner.collect: the loop's)
    else:
        start = _start_of(p.pid, t0, t1)
    return _Spawned(p, p.pid, start, io.r_out, io.r_err, pidfd)


_LATER = object()     # _Spawned.start to be read from /proc/PID/stat by whoever takes the spawn


def _started(sp: "_Spawned | StartError") -> "_Spawned | StartError":
    """sp with its start time (read from /proc when _exec left it for later)."""
    if isinstance(sp, _Spawned) and sp.start is _LATER:
        sp.start = proc_start(sp.pid)
    return sp


# The child's start time (proc_start: field 22 of /proc/PID/stat, clock ticks since boot) is the
# kernel's CLOCK_BOOTTIME at its fork, in ticks: between two readings of that clock taken before
# and after the fork. When both readings fall in the same tick, that tick is the start time,
# with no open/read/close of /proc (three calls that release the GIL in a spawner thread, each
# a hand-off the loop's thread may wait for: docs/performance.md, "twelfth session"). Trusted
# once a readable /proc/PID/stat has agreed with it in this process (another kernel, a time
# namespace, a USER_HZ that does not divide a second: it disagrees, and /proc is read from then
# on); otherwise, and when the readings straddle a tick, /proc is read as before.
# DAGRUN_START_CLOCK=0: always /proc (A/B runs only).
try:
    _TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK") if 10**9 % os.sysconf("SC_CLK_TCK") == 0 else None
    _BOOTTIME_ID = time.CLOCK_BOOTTIME
except (AttributeError, ValueError, OSError):    # (no CLOCK_BOOTTIME, no SC_CLK_TCK: not Linux)
    _TICK_NS = _BOOTTIME_ID = None
_START_CLOCK: "bool | None" = None if _TICK_NS and os.environ.get("DAGRUN_START_CLOCK", "1") != "0" else False


def _boottime() -> int:
    return time.clock_gettime_ns(_BOOTTIME_ID) if _START_CLOCK is not False else 0


def _start_of(pid: int, t0: int, t1: int) -> str | None:
    """proc_start(pid) of a child forked between CLOCK_BOOTTIME readings t0 and t1."""
    global _START_CLOCK
    if _START_CLOCK is False or t0 // _TICK_NS != t1 // _TICK_NS:
        return proc_start(pid)
    guess = str(t0 // _TICK_NS)
    if _START_CLOCK:
        return guess
    real = proc_start(pid)
    if real is not None:                 # (None: it has exited already, nothing to compare)
        if real != guess:
            _START_CLOCK = False         # (for good: another thread's agreement cannot undo it)
        elif _START_CLOCK is None:
            _START_CLOCK = True
    return real


# Spawner threads. One spawn is ~0.12-0.22 ms of the thread's CPU but 1.2-3.5 ms of wall time on
# a 2-core VM: vfork(2) parks the thread until the child has exec'd, and the child first waits
# for a CPU. With one thread the spawner was the bottleneck of a wide plan (busy 93 % of the
# time between the first and the last spawn of fan-out-500; docs/performance.md, "sixth
# round"); with two, once the lean spawn had cut a spawn's CPU, still: both busy ~90 % of
# fan-out-500's spawning window on tmpfs, a launch waiting 3-11 ms in the queue for a thread.
# Four overlap those waits (queue 0.3-0.8 ms); each holds the GIL only between its system
# calls. On the home disk (ext4 without a journal) the loop, not the spawners, is the
# bottleneck and the A/B runs there were mixed (docs/performance.md, "2026-12-06 (2)").
# DAGRUN_SPAWNERS=N: for A/B runs only.
SPAWNERS = max(1, int(os.environ.get("DAGRUN_SPAWNERS", "") or 4))


class _Spawner:
    """Threads (SPAWNERS) that fork the agents handed to ProcessRunner.submit(), so the
    driver's loop never sleeps in vfork(2) waiting for an agent's exec. Results come back
    through collect(), in the order the spawns finished (ProcessRunner.spawned reports them
    in submission order); a byte on a pipe (fd) wakes the loop's poll(2).

    What a spawner thread costs the loop is mostly its GIL hand-offs: each call that releases
    the GIL lets the loop's thread park on a futex until the spawner next releases it
    (docs/performance.md, "twelfth session"). So the jobs come through a queue.SimpleQueue (C:
    put() and get() take no Python-level lock, where a threading.Condition took an RLock and a
    waiter lock of its own per job), and the wake-up byte is written only when the loop has
    collected since the last one (`_armed`): spawns that finish before the loop comes round
    share one write(2) and the loop's read(2) of it."""

    def __init__(self):
        import collections
        from _queue import SimpleQueue     # (queue.SimpleQueue itself, without queue.py's import)
        self._jobs: "SimpleQueue" = SimpleQueue()   # (key, launch, want_pidfd); None: stop
        self._done: "collections.deque" = collections.deque()
        self._armed = True                 # no wake-up byte written since the loop's last collect()
        self.fd, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # One thread with the first submit; another whenever more spawns are in flight
        # (submitted, not yet collected) than there are threads -- a thread blocked in a spawn
        # (a FIFO prompt's open, a slow disk) never holds up the next one while fewer than
        # SPAWNERS are, as with all of them started at once -- and the rest at the first
        # collect(), while the first agent runs and the loop waits for it. So a run's first
        # agent (a fan-out's root, a one-task plan) waits for one thread's start, not four
        # (each a thread start and its GIL hand-offs on the loop's thread before the first
        # spawn), and a fan-out's first wave still finds all of them up: starting them during
        # the wave cost it more than the first edge gained (docs/performance.md "2026-12-06 (12)").
        self._threads: list = []
        self._inflight = 0                 # submitted and not yet collected (the loop's thread alone)
        self._closed = False               # close() began: no thread is started any more
        self._grow()

    def _grow(self) -> None:
        if self._closed:                   # (ProcessRunner.close collects after close(): none to serve)
            return
        import threading
        th = threading.Thread(target=self._run, name=f"dagrun-spawner-{len(self._threads)}", daemon=True)
        self._threads.append(th)
        th.start()

    def submit(self, key: str, launch: Launch, want_pidfd: bool) -> None:
        """Called by the loop's thread, which makes the spawn's pipes (_Stdio) and stat's the
        cwd for a direct exec's PWD itself (~1-2 us each) and closes the child's ends when it
        collects: in a spawner thread each of those calls was a GIL release and reacquisition,
        a hand-off the loop's thread could park on for far longer (docs/performance.md,
        "2026-12-06 (11)"). The prompt's open stays the spawner's (it may block: a FIFO, a slow
        disk)."""
        here = _ASK
        if DIRECT_EXEC and not launch.argv and _plain(launch.agent) is not None:
            try:
                st = os.stat(launch.cwd)
                here = (st.st_dev, st.st_ino)
            except OSError:
                here = None
        try:
            io = _Stdio(True)
        except OSError as e:                # comes back through collect() like any failed start
            io = _start_error(launch, e)
        self._jobs.put((key, launch, want_pidfd, io, here))
        self._inflight += 1
        if self._inflight > len(self._threads) and len(self._threads) < SPAWNERS:
            self._grow()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            key, launch, want_pidfd, io, here = job
            try:
                if isinstance(io, StartError):
                    sp, io = io, None
                else:
                    sp = _open_and_exec(launch, want_pidfd, io, here)
            except Exception as e:          # never lose a job: it comes back as a failed start
                sp = StartError(f"cannot start the agent in {launch.cwd}: {e}")
            self._done.append((key, sp, io))
            # (the append comes first: see collect)
            if self._armed:
                self._armed = False
                try:
                    os.write(self._w, b"s")
                except OSError:             # the pipe is full: the loop has wake-ups pending
                    pass

    def collect(self) -> list:
        try:
            os.read(self.fd, 4096)          # (one byte or a few: a byte written after it wakes the loop once more)
        except OSError:
            pass
        # re-armed after the read and before the pops: a spawner that finds it disarmed then
        # has its result popped below, or one that disarmed it after this line writes a byte
        # this read did not take
        self._armed = True
        out = []
        while self._done:
            key, sp, io = self._done.popleft()
            if io is not None:              # the child's ends (all of them when it did not start)
                io.close(isinstance(sp, _Spawned))
            out.append((key, _started(sp)))
        self._inflight -= len(out)
        while len(self._threads) < SPAWNERS and not self._closed:  # the rest, once the first agent runs
            self._grow()
        return out

    def close(self) -> None:
        """Finish what was submitted (those spawns are then collected and killed), stop."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)            # (after every job: each thread takes one and ends)
        for th in self._threads:
            th.join()
        # the fds are closed by the ProcessRunner after its last collect()


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class _Stream:
    """One of an agent's output pipes and its capture file."""
    fd: int
    path: str
    out: int | None = None           # capture file fd, opened on the first byte
    bytes: int = 0
    cap: int | None = None
    eof: bool = False
    lost: bool = False               # the capture file's folder vanished: output is discarded

    def __init__(self, fd, path, out=None, bytes=0, cap=None, eof=False, lost=False):
        self.fd = fd
        self.path = path
        self.out = out
        self.bytes = bytes
        self.cap = cap
        self.eof = eof
        self.lost = lost

    __repr__, __eq__ = plain_methods("fd", "path", "out", "bytes", "cap", "eof", "lost")


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class _Proc:
    """A running agent of a ProcessRunner: its process, pipes and pidfd."""
    popen: "subprocess.Popen | _Child"
    handle: dict
    streams: dict = field(default_factory=dict)   # "out"/"err" -> _Stream
    pidfd: int | None = None
    rc: int | None = None
    first_byte: float | None = None
    last_output: float = 0.0
    over_limit: bool = False
    exited_at: float | None = None
    stopping: bool = False          # we sent TERM/KILL: nothing of this attempt may outlive it
    alone: bool = False             # reaped by reap_together(): the children list read after it was empty

    def __init__(self, popen, handle, streams=NEW, pidfd=None, rc=None, first_byte=None, last_output=0.0,
                 over_limit=False, exited_at=None, stopping=False, alone=False):
        self.popen = popen
        self.handle = handle
        self.streams = {} if streams is NEW else streams
        self.pidfd = pidfd
        self.rc = rc
        self.first_byte = first_byte
        self.last_output = last_output
        self.over_limit = over_limit
        self.exited_at = exited_at
        self.stopping = stopping
        self.alone = alone

    __repr__, __eq__ = plain_methods("popen", "handle", "streams", "pidfd", "rc", "first_byte", "last_output",
                                     "over_limit", "exited_at", "stopping", "alone")


_INSTANCES: "weakref.WeakSet[ProcessRunner]" = weakref.WeakSet()   # every live ProcessRunner of this process


class ProcessRunner:
    name = "process"

    def __init__(self):
        _INSTANCES.add(self)     # (a cluster runner may hold one too: Slurm steps' srun processes)
        self._procs: dict[str, _Proc] = {}
        self._fd_owner: dict[int, tuple[str, str]] = {}   # fd -> (key, "out"|"err"|"pid")
        self.pidfd_ok = hasattr(os, "pidfd_open")
        self._subreaper: bool | None = None       # set on the first start()
        self._ended_groups: dict[int, None] = {}   # pgids of ended attempts (recent ones), killed already
        self._spawner: _Spawner | None = None    # submit(): forks off the caller's thread
        self._pending: dict[str, tuple[Launch, dict]] = {}   # key -> submitted, not yet collected
        self._stops: dict[str, int] = {}         # key -> signal asked for while it was pending
        self._finished: dict[str, object] = {}   # key -> spawn result not yet reported (an earlier one runs)

    def key(self, handle: dict) -> str:
        rid = handle.get("run_id")
        return rid if isinstance(rid, str) and rid else str(handle["pid"])

    # ------------------------------------------------------------------ start
    def start(self, launch: Launch) -> dict:
        if self._subreaper is None:
            self._subreaper = _become_subreaper()
        sp = _spawn(launch, self.pidfd_ok)
        if isinstance(sp, StartError):
            raise sp
        handle = {"runner": self.name, "host": HOST, "boot_id": BOOT_ID, "run_id": launch.run_id}
        self._register(launch, handle, sp)
        return handle

    def submit(self, launch: Launch) -> dict:
        """start() without waiting for the fork: a spawner thread forks and execs the agent
        while the caller's loop goes on (vfork(2) parks the calling thread until the child has
        exec'd; Python >= 3.11.6 releases the GIL meanwhile). Returns the attempt's handle at
        once -- without pid/pgid/start until the loop has collected the spawn through
        spawned(); poll() says None and terminate()/kill() are remembered and applied at
        registration until then. key() is the run id's, stable across both states."""
        if self._subreaper is None:
            self._subreaper = _become_subreaper()
        if self._spawner is None:
            self._spawner = _Spawner()
        handle = {"runner": self.name, "host": HOST, "boot_id": BOOT_ID, "run_id": launch.run_id}
        k = self.key(handle)
        self._pending[k] = (launch, handle)
        self._spawner.submit(k, launch, self.pidfd_ok)
        return handle

    def spawned(self) -> list[tuple[dict, "StartError | None"]]:
        """The submitted attempts whose spawn finished since the last call, registered (their
        handle now has pid, pgid and start) or failed (StartError; the runner forgets them)."""
        if self._spawner is None or not self._pending:
            return []
        out: list[tuple[dict, StartError | None]] = []
        self._finished.update(self._spawner.collect())
        # reported in the order they were submitted (the engine's `running` lines follow the
        # dispatch order, as with one spawner thread): a spawn that finished before an earlier
        # one waits for it -- its agent runs meanwhile, only its registration waits
        for k in list(self._pending):
            if k not in self._finished:
                break
            sp = self._finished.pop(k)
            launch, handle = self._pending.pop(k)
            if isinstance(sp, StartError):
                self._stops.pop(k, None)
                out.append((handle, sp))
                continue
            self._register(launch, handle, sp)
            sig = self._stops.pop(k, None)
            if sig is not None:             # stopped while it was being spawned
                self._procs[k].stopping = True
                _killpg(handle["pgid"], sig)
                kill_strays(launch.run_id, sig)
            out.append((handle, None))
        return out

    def _register(self, launch: Launch, handle: dict, sp: "_Spawned") -> None:
        handle.update({"pid": sp.pid, "pgid": sp.pid, "start": sp.start})
        k = self.key(handle)
        proc = _Proc(popen=sp.popen, handle=handle, last_output=time.monotonic())
        proc.streams["out"] = _Stream(sp.r_out, launch.stdout_path, cap=launch.max_output)
        proc.streams["err"] = _Stream(sp.r_err, launch.stderr_path)
        self._fd_owner[sp.r_out] = (k, "out")
        self._fd_owner[sp.r_err] = (k, "err")
        if sp.pidfd is not None:
            proc.pidfd = sp.pidfd
            self._fd_owner[sp.pidfd] = (k, "pid")
        elif self.pidfd_ok:
            self.pidfd_ok = False
        self._procs[k] = proc

    # ------------------------------------------------------------------ the loop's side
    def wakeup(self) -> Wakeup:
        """The pipes and pidfds; without pidfd_open a child's exit wakes nobody, so then
        the loop comes back every NO_PIDFD_POLL while an agent runs."""
        fds = tuple(self._fd_owner)
        if self._pending:
            fds += (self._spawner.fd,)
        return Wakeup(fds, None if self.pidfd_ok or not self._procs else NO_PIDFD_POLL)

    def service(self, ready: set[int]) -> None:
        """Drain the readable pipes (bounded per call, so a flood cannot starve the loop)."""
        for fd in ready:
            owner = self._fd_owner.get(fd)
            if owner is None or owner[1] == "pid":
                continue
            proc = self._procs.get(owner[0])
            if proc is not None:
                self._drain(proc, proc.streams[owner[1]], FAIR_SHARE)

    def exits(self, ready: set[int]) -> set[str] | None:
        """The attempts whose pidfd is among the readable fds: only they can have ended
        since the last poll (a pidfd stays readable once its process has exited, so one whose
        turn was missed is reported again). None without pidfds: any may have ended."""
        if not self.pidfd_ok:
            return None
        owners = self._fd_owner
        return {o[0] for fd in ready if (o := owners.get(fd)) is not None and o[1] == "pid"}

    def reap_together(self, handles: list[dict]) -> None:
        """The attempts the loop is about to poll (their pidfds fired, or they were just
        spawned): wait4 each leader now, then read the children list once for all those that
        ended (poll() takes the verdict from proc.alone) -- not once per exit. The list read
        after the last wait4 covers every leader reaped before it: each one's orphans were
        re-parented to us at its exit, before wait4 could report it (see poll)."""
        if self._subreaper is not True:
            return
        reaped = []
        procs, key = self._procs, self.key
        for h in handles:
            proc = procs.get(key(h))
            if proc is not None and proc.rc is None:
                rc = proc.popen.poll()
                if rc is not None:
                    proc.rc = rc
                    reaped.append(proc)
        if reaped and _childless():
            for proc in reaped:
                proc.alone = True

    def _drain(self, proc: _Proc, s: _Stream, budget: int | None) -> None:
        while not s.eof and (budget is None or budget > 0):
            try:
                data = os.read(s.fd, CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                s.eof = True
                self._fd_owner.pop(s.fd, None)
                close_quiet(s.fd)
                return
            now = time.monotonic()
            if proc.first_byte is None and s is proc.streams["out"]:
                proc.first_byte = now
            proc.last_output = now
            if s.cap is not None and s.bytes + len(data) > s.cap:
                data = data[: max(0, s.cap - s.bytes)]
                proc.over_limit = True
            if data and not s.lost:
                try:
                    if s.out is None:      # counted steps: the crash/fault harnesses reach them
                        s.out = fsio.open_for_output(s.path)
                    fsio.write_fd(s.out, data, s.path)
                except (FileNotFoundError, NotADirectoryError):
                    s.lost = True         # the agent deleted its task folder: keep draining, drop it
                except OSError as e:      # disk full: name the file (write(2) errors carry none)
                    raise OSError(e.errno, e.strerror, s.path) from None
                s.bytes += len(data)
            if budget is not None:
                budget -= len(data) or CHUNK

    def progress(self, handle: dict) -> Progress:
        p = self._procs.get(self.key(handle))
        return Progress() if p is None else _progress_of(p)

    def poll(self, handle: dict) -> Exit | None:
        k = self.key(handle)
        proc = self._procs.get(k)
        if proc is None:
            if k in self._pending:
                return None                 # being spawned: spawned() registers it first
            return Exit(None, signal.SIGKILL)
        if proc.rc is None:             # (asked again after the commits before it in this
            rc = proc.popen.poll()      # turn: one just spawned has had that long to end)
            if rc is None:
                return None
            proc.rc = rc
            # The leader is reaped. As a child subreaper we inherit every orphan of its process
            # tree at the leader's exit, before wait4 can report it; so any process of its group
            # (or one that escaped it) still alive descends from the leader, and the top-most
            # live one of its line is a child of ours -- of the main thread, where the kernel
            # re-parents orphans and sweep() looks. Agents are the spawner threads' children,
            # so that list is empty in the usual case: then nothing of the attempt is left,
            # and there is no group to kill (the kill would say ESRCH) and nothing to sweep.
            alone = self._subreaper is True and not proc.stopping and _childless()
        else:                           # reaped by reap_together(): one list read for all
            alone = proc.alone and not proc.stopping
        if not alone:
            # the shell is gone; whatever it left running in its group goes too (its
            # output still sits in the pipes and is read below)
            _killpg(handle["pgid"], signal.SIGKILL)
            self._ended_groups[handle["pgid"]] = None
            if len(self._ended_groups) > 1024:
                del self._ended_groups[next(iter(self._ended_groups))]
            if proc.stopping:
                # a stopped attempt (timeout, stall, cancel, Ctrl-C): also what escaped the
                # group (setsid, daemonised children), found by DAGRUN_RUN_ID. The shell may
                # have died of the TERM long before its TERM-ignoring escapees would.
                kill_strays(handle.get("run_id"))
        for s in proc.streams.values():
            self._drain(proc, s, None)
            if not s.eof:               # held open by a process outside the group: stop listening
                self._fd_owner.pop(s.fd, None)
                close_quiet(s.fd)
                s.eof = True
            if s.out is not None:
                close_quiet(s.out)
                s.out = None
        st = _progress_of(proc)
        self._forget(k)
        strays = 0 if alone else self.sweep()
        rc = proc.rc
        return Exit(rc if rc >= 0 else None, -rc if rc < 0 else None, st, strays=strays)

    def sweep(self) -> int:
        """Kill the processes our agents left behind outside their process group (a
        daemonised grandchild: setsid + double fork). As a child subreaper (prctl) we inherit
        every orphan of our agents, so one read of our own children list finds them -- no scan
        of /proc. An orphan of an attempt that still runs is left alone (it may be a helper
        the agent waits for); it is killed when that attempt ends. Returns how many were killed."""
        if not self._subreaper:
            return 0
        children = _children()
        if not children:
            return 0                    # the usual case: agents are the spawner thread's children
        procs = _agent_procs()
        mine = {p.popen.pid for p in procs}
        active = {p.handle.get("run_id") for p in procs}
        n = 0
        for pid in children:
            if pid in mine or pid in _COMMANDS or pid in _SERVICES:   # an agent; a hook; a service
                continue
            if _is_zombie(pid):
                _reap(pid)
                continue
            rid = _env_value(pid, RUN_ID_VAR)
            if rid in active or (rid is None and active):
                continue     # a running attempt's helper -- or, without a run id, maybe one
            pgid = _pgid(pid)
            if pgid == pid:                  # it leads a group of its own: take the group too
                _killpg(pid, signal.SIGKILL)
            _kill(pid, signal.SIGKILL)
            if pgid not in self._ended_groups:   # not just a member of a group we killed, dying
                n += 1
        return n

    def _forget(self, k: str) -> None:
        proc = self._procs.pop(k, None)
        if proc is None:
            return
        if proc.pidfd is not None:
            self._fd_owner.pop(proc.pidfd, None)
            close_quiet(proc.pidfd)
        for s in proc.streams.values():
            if not s.eof:
                self._fd_owner.pop(s.fd, None)
                close_quiet(s.fd)
            if s.out is not None:
                close_quiet(s.out)

    def terminate(self, handle: dict) -> None:
        if self._stop_pending(handle, signal.SIGTERM):
            return
        self._mark_stopping(handle)
        _killpg(handle["pgid"], signal.SIGTERM)
        kill_strays(handle.get("run_id"), signal.SIGTERM)   # escapees of the group get the same grace

    def kill(self, handle: dict) -> None:
        if self._stop_pending(handle, signal.SIGKILL):
            return
        self._mark_stopping(handle)
        _killpg(handle["pgid"], signal.SIGKILL)
        kill_strays(handle.get("run_id"))

    def _stop_pending(self, handle: dict, sig: int) -> bool:
        k = self.key(handle)
        if k not in self._pending:
            return False
        if self._stops.get(k) != signal.SIGKILL:
            self._stops[k] = sig
        return True

    def _mark_stopping(self, handle: dict) -> None:
        p = self._procs.get(self.key(handle))
        if p is not None:
            p.stopping = True

    def alive(self, handles: dict[str, dict]) -> set[str]:
        """Attempts with a live process on this host (one carrying their DAGRUN_RUN_ID): one
        pass over /proc however many are asked about."""
        by_rid = {h.get("run_id"): k for k, h in handles.items() if h.get("run_id")}
        return {by_rid[rid] for rid in live_attempts(set(by_rid))}

    def reap_orphan(self, handle: dict | None, grace: float, run_id: str | None = None) -> bool:
        """Stop what is left of an attempt whose driver died (we are not its parent). Only on
        the same host and boot, and only processes proved to be that attempt's: the group
        leader by pid + start time, the rest by DAGRUN_RUN_ID in their environment."""
        handle = handle or {}
        if handle and handle.get("runner") != self.name:
            return False
        if handle.get("host", HOST) != HOST or (handle.get("boot_id") and handle["boot_id"] != BOOT_ID):
            return False      # another host's or boot's processes: not ours to signal
        run_id = handle.get("run_id") or run_id
        pid = as_int(handle.get("pid"))
        pgid = pid     # started as a session leader: its group is its pid (owner.json's pgid is not trusted)
        start = handle.get("start")
        leader_ours = pid > 0 and start is not None and is_alive(HOST, None, pid, start)
        strays = _processes_with(RUN_ID_VAR, run_id) if run_id else []
        if not leader_ours and not strays:
            return False
        if leader_ours:
            _killpg(pgid, signal.SIGTERM)
        for p in strays:
            _kill(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            alive = (leader_ours and proc_start(pid) == start) or any(proc_start(p) for p in strays)
            if not alive:
                break
            time.sleep(0.02)
        if leader_ours and proc_start(pid) == start:
            _killpg(pgid, signal.SIGKILL)
        kill_strays(run_id)
        return True

    def close(self) -> None:
        if self._spawner is not None:      # what is still being spawned is killed once it runs
            self._spawner.close()
            for k in list(self._pending):
                self._stops[k] = signal.SIGKILL
            self.spawned()
            close_quiet(self._spawner.fd)
            close_quiet(self._spawner._w)
            self._spawner = None
        for k in list(self._procs):
            self._forget(k)
        # orphans adopted after the last agent ended (their parent died a moment later)
        deadline = time.monotonic() + 0.5
        while self._subreaper and time.monotonic() < deadline:
            self.sweep()
            if not _children():
                break
            time.sleep(0.02)


# ---------------------------------------------------------------------------------- hooks
_COMMANDS: set[int] = set()    # pids of run_command's processes: never swept as strays
_SERVICES: set[int] = set()    # children this process started for itself (a local Ray head): never swept


def keep_children() -> None:
    """Whatever child of this process runs now and is neither an agent of ours nor carries an
    attempt's run id was started by this process for itself -- call it right after starting
    such services (ray.init of a local cluster: its GCS, raylet, dashboard ...) -- and is
    never swept as an agent's orphan."""
    mine = {p.popen.pid for p in _agent_procs()}
    # the main thread's children, and the calling thread's own (a process started in a thread
    # is that thread's child until the thread ends)
    kids = set(_children()) | set(_children(threading.get_native_id()))
    _SERVICES.update(pid for pid in kids if pid not in mine and _env_value(pid, RUN_ID_VAR) is None)


def run_command(argv: list[str], *, stdin: bytes, env: dict, cwd: str, timeout: float) -> tuple[int | None, bool, bytes]:
    """Run a hook's argv (never a shell) in a session of its own, the event JSON on stdin,
    stdout discarded. At `timeout` its whole process group is killed. Returns (exit code or
    -signal, timed out, the tail of stderr). Raises OSError when it cannot be started.
    Safe from any thread; its pid is kept out of the engine's stray sweep."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         cwd=cwd, env=env, start_new_session=True, close_fds=True)
    _COMMANDS.add(p.pid)
    timed_out = False
    try:
        try:
            _out, err = p.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(p.pid, signal.SIGKILL)
            try:
                _out, err = p.communicate(timeout=2.0)
            except subprocess.TimeoutExpired:     # a setsid'd grandchild holds stderr open
                p.kill()
                p.wait()
                err = b""
    finally:
        _COMMANDS.discard(p.pid)
    return p.returncode, timed_out, (err or b"")[-400:]


def _become_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of our agents are re-parented to us, not init."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0       # 36 = PR_SET_CHILD_SUBREAPER (Linux >= 3.4)
    except (OSError, AttributeError):
        return False


_CHILDREN_PATH: tuple[int, bytes] = (0, b"")


def _agent_procs() -> list[_Proc]:
    """The running agents of every ProcessRunner of this process (Mux's, Slurm steps')."""
    return [p for r in list(_INSTANCES) for p in r._procs.values()]


def _progress_of(p: "_Proc") -> Progress:
    """What an attempt's output has been so far, from its process's streams."""
    return Progress(out_bytes=p.streams["out"].bytes, err_bytes=p.streams["err"].bytes,
                    first_byte=p.first_byte, last_output=p.last_output, over_limit=p.over_limit)


def _children(tid: int | None = None) -> list[int]:
    """Children of one of our threads -- by default the main thread, where orphans of our
    agents are re-parented (os.open and that path built once per pid: it is read at every
    agent's end). [] when the list cannot be read."""
    data = _children_bytes(tid)
    return [int(x) for x in data.split()] if data else []


def _childless() -> bool:
    """Has the main thread no child at all -- read, not assumed (an unreadable list: False)?"""
    return _children_bytes(None) == b""


def _children_bytes(tid: int | None) -> bytes | None:
    global _CHILDREN_PATH
    me = my_pid()
    if tid is not None and tid != me:
        path = f"/proc/{me}/task/{tid}/children".encode()
    else:
        if _CHILDREN_PATH[0] != me:
            _CHILDREN_PATH = (me, f"/proc/{me}/task/{me}/children".encode())
        path = _CHILDREN_PATH[1]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    finally:
        os.close(fd)
    return data


def _is_zombie(pid: int) -> bool:
    rest = stat_fields(pid)
    return bool(rest) and rest[0] == b"Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _env_value(pid: int, var: str) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = var.encode() + b"="
    for part in env.split(b"\0"):
        if part.startswith(key):
            return part[len(key):].decode(errors="replace")
    return None


def live_attempts(run_ids: set[str]) -> set[str]:
    """Which of these attempts still have a live process (one carrying DAGRUN_RUN_ID=<id>):
    one pass over /proc however many are asked about."""
    if not run_ids:
        return set()
    return {rid for pid in _pids() if (rid := _env_value(pid, RUN_ID_VAR)) in run_ids}


def kill_strays(run_id: str | None, sig: int = signal.SIGKILL) -> int:
    """Signal (SIGKILL) every process that carries DAGRUN_RUN_ID=<run_id>: what an agent
    started in another process group or session (daemonised grandchildren) still inherits it."""
    if not run_id:
        return 0
    n = 0
    for p in _processes_with(RUN_ID_VAR, run_id):
        _kill(p, sig)
        n += 1
    return n


def _pids() -> list[int]:
    """Every process but this one."""
    me = os.getpid()
    try:
        return [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != me]
    except OSError:
        return []


def _processes_with(var: str, value: str) -> list[int]:
    return [pid for pid in _pids() if _env_value(pid, var) == value]


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


