"""Two runners that start no process, behind the same Runner protocol as ProcessRunner
(like ninja's DryRunCommandRunner and its test runner: real implementations, not mocks).

FakeRunner: attempts happen inside the driver, with outcomes decided up front (exit code or
signal, stdout/stderr bytes, how long it "runs", whether it ignores TERM). The engine
commits them exactly like real agents: same claims, markers, events, timeouts, stalls,
cancels. Tests use it to run the engine's contracts without shell timing, and to prove the
engine assumes nothing about local processes. Its handle holds no pid: an attempt lives
exactly as long as its driver, so a dead driver's fake attempt has nothing left to reap.

DryRunner: every start "succeeds" at once; it only remembers what was started, in order.
`dagrun run --dry-run` drives it over the scheduler (dryrun.py) and writes nothing.

SimRunner: attempts last the seconds the simulator predicts on a VirtualClock (`dagrun
simulate`, simulate.py): the scheduler and the fair share run unchanged, time is virtual.
"""
from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from .executor import Exit, Launch, Progress, Wakeup
from .proc import BOOT_ID, HOST


@dataclass(frozen=True)
class Outcome:
    """How a fake attempt goes."""
    code: int | None = 0             # exit status (None with a signal)
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    after: float = 0.0               # seconds it runs before it exits
    hang: bool = False               # runs until terminate()/kill()
    ignore_term: bool = False        # terminate() does not stop it; kill() does


@dataclass
class _Attempt:
    handle: dict
    launch: Launch
    outcome: Outcome
    t0: float
    ends_at: float | None            # monotonic; None: hangs
    exit: Exit | None = None
    out_bytes: int = 0
    over_limit: bool = False


def _by_agent(launch: Launch) -> Outcome:
    """The default decision: `true` succeeds, `false` fails, `exit N` exits N; anything else
    succeeds printing nothing."""
    a = launch.agent.strip()
    if a == "false":
        return Outcome(code=1)
    if a.startswith("exit ") and a[5:].strip().isdigit():
        return Outcome(code=int(a[5:]))
    return Outcome()


class _InDriver:
    """What the three in-driver runners share: an attempt leaves no process behind its
    driver, so there is never an orphan to reap, and by default nothing to service, no
    progress to report and nothing to stop (FakeRunner overrides what it simulates)."""
    name = "in-driver"

    def key(self, handle: dict) -> str:
        return f"{self.name}-{handle['id']}"

    def terminate(self, handle: dict) -> None:
        pass

    def kill(self, handle: dict) -> None:
        pass

    def service(self, ready: set[int]) -> None:
        pass

    def progress(self, handle: dict) -> Progress:
        return Progress()

    def reap_orphan(self, handle: dict | None, grace: float, run_id: str | None = None) -> bool:
        return False       # an in-driver attempt ends with its driver: nothing is left to stop

    def alive(self, handles: dict[str, dict]) -> set[str]:
        return set()

    def close(self) -> None:
        pass


class FakeRunner(_InDriver):
    name = "fake"

    def __init__(self, decide: Callable[[Launch], Outcome] | dict[str, Outcome] | None = None):
        if isinstance(decide, dict):
            table = decide
            decide = lambda launch: table.get(launch.env.get("DAGRUN_TASK", ""), Outcome())  # noqa: E731
        self.decide = decide or _by_agent
        self.started: list[Launch] = []
        self._runs: dict[str, _Attempt] = {}
        self._ids = itertools.count(1)

    def start(self, launch: Launch) -> dict:
        o = self.decide(launch)
        now = time.monotonic()
        handle = {"runner": self.name, "id": next(self._ids), "host": HOST, "boot_id": BOOT_ID,
                  "driver": os.getpid(), "run_id": launch.run_id}
        a = _Attempt(handle, launch, o, now, None if o.hang else now + max(0.0, o.after))
        if launch.max_output is not None and len(o.stdout) > launch.max_output:
            a.over_limit = True      # printed past the cap: the driver stops it (output_limit)
        a.out_bytes = len(o.stdout) if launch.max_output is None else min(len(o.stdout), launch.max_output)
        self._runs[self.key(handle)] = a
        self.started.append(launch)
        return handle

    def poll(self, handle: dict) -> Exit | None:
        a = self._runs.get(self.key(handle))
        if a is None:
            return Exit(None, signal.SIGKILL)
        if a.exit is None:
            if a.ends_at is None or time.monotonic() < a.ends_at:
                return None
            a.exit = Exit(a.outcome.code if a.outcome.signal is None else None, a.outcome.signal)
        self._write(a)
        del self._runs[self.key(handle)]
        return Exit(a.exit.code, a.exit.signal, self._progress(a))

    def _write(self, a: _Attempt) -> None:
        """The capture files, as a real agent's pipes would have left them (first byte only)."""
        out = a.outcome.stdout[: a.out_bytes]
        for data, path in ((out, a.launch.stdout_path), (a.outcome.stderr, a.launch.stderr_path)):
            if data:
                try:
                    with open(path, "wb") as f:
                        f.write(data)
                except (FileNotFoundError, NotADirectoryError):
                    pass              # the claim vanished: the output is lost, as with a real agent

    def terminate(self, handle: dict) -> None:
        a = self._runs.get(self.key(handle))
        if a is not None and a.exit is None and not a.outcome.ignore_term:
            a.exit = Exit(None, signal.SIGTERM)

    def kill(self, handle: dict) -> None:
        a = self._runs.get(self.key(handle))
        if a is not None and a.exit is None:
            a.exit = Exit(None, signal.SIGKILL)

    def wakeup(self) -> Wakeup:
        now = time.monotonic()
        due = [0.0 if a.exit is not None else a.ends_at - now
               for a in self._runs.values() if a.exit is not None or a.ends_at is not None]
        return Wakeup((), max(0.0, min(due)) if due else None)

    def progress(self, handle: dict) -> Progress:
        a = self._runs.get(self.key(handle))
        return Progress() if a is None else self._progress(a)

    def _progress(self, a: _Attempt) -> Progress:
        out = a.t0 if a.out_bytes else None
        return Progress(out_bytes=a.out_bytes, err_bytes=len(a.outcome.stderr), first_byte=out,
                        last_output=a.t0, over_limit=a.over_limit)

    def alive(self, handles: dict[str, dict]) -> set[str]:
        return {k for k, h in handles.items() if isinstance(h, dict) and h.get("driver") == os.getpid()
                and self._runs.get(self.key(h)) is not None}

    def close(self) -> None:
        self._runs.clear()


class DryRunner(_InDriver):
    """Starts nothing: every attempt succeeds the moment it is polled. `started` is the order."""
    name = "dry"

    def __init__(self):
        self.started: list[Launch] = []
        self._ids = itertools.count(1)
        self._live: set[str] = set()

    def start(self, launch: Launch) -> dict:
        handle = {"runner": self.name, "id": next(self._ids)}
        self.started.append(launch)
        self._live.add(self.key(handle))
        return handle

    def poll(self, handle: dict) -> Exit | None:
        self._live.discard(self.key(handle))
        return Exit(0, None, Progress())

    def wakeup(self) -> Wakeup:
        return Wakeup((), 0.0 if self._live else None)


class VirtualClock:
    """The simulator's time: seconds from 0, moved only by advance(). Callable, so it can be
    handed to the scheduler as its aging clock."""

    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += max(0.0, dt)


class SimRunner(_InDriver):
    """`dagrun simulate`'s runner: an attempt "runs" on a virtual clock for the seconds the
    simulator predicts for it (`seconds(launch)`), then exits 0. wakeup() says how far the
    clock must move for the next attempt to end; nothing is started, nothing is written."""
    name = "sim"

    def __init__(self, clock: VirtualClock, seconds: Callable[[Launch], float]):
        self.clock = clock
        self.seconds = seconds
        self.started: list[Launch] = []
        self._ends: dict[str, float] = {}
        self._ids = itertools.count(1)

    def start(self, launch: Launch) -> dict:
        handle = {"runner": self.name, "id": next(self._ids)}
        self._ends[self.key(handle)] = self.clock.now + max(0.0, float(self.seconds(launch)))
        self.started.append(launch)
        return handle

    def poll(self, handle: dict) -> Exit | None:
        k = self.key(handle)
        end = self._ends.get(k)
        if end is not None and self.clock.now < end:
            return None
        self._ends.pop(k, None)
        return Exit(0, None, Progress())

    def wakeup(self) -> Wakeup:
        if not self._ends:
            return Wakeup((), None)
        return Wakeup((), max(0.0, min(self._ends.values()) - self.clock.now))

    def alive(self, handles: dict[str, dict]) -> set[str]:
        return {k for k, h in handles.items() if isinstance(h, dict) and self.key(h) in self._ends}

    def close(self) -> None:
        self._ends.clear()
