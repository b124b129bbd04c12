"""The claim folders of tasks an engine has committed done, removed off its loop thread.

Once a task's done marker is published (lifecycle.commit_done renames owner.json out of the
claim to make it), its claim folder is empty and means nothing: what is left is one rmdir(2).
On the home disk (ext4 without a journal, mounted `discard`) that rmdir frees the folder's
block with a synchronous discard: 176-221 us of wall time for ~20 us of CPU, on the engine's
loop thread, which is the critical path of a wide plan (docs/performance.md, "2026-12-06 (2)",
"The deferred release"). The engine hands it here instead; one thread does it.

What a crash can leave is what it could leave before: `done` beside an empty `claim/` (a crash
between the marker's rename and the rmdir), which the next engine sweeps (reconcile:
_sweep_leftover_claim); only more tasks can be in that state at once.

Order with everything that looks at a done task's claim folder in a live run:
  * plan edits and forced retries archive task folders under the goal's edit lock taken
    exclusive; the engine commits under it taken shared (a turn's lock, Engine._lock_turn).
    The turn's lock fd comes here at the turn's end (unlock) and is closed only after every
    release queued before it: an archive never sees the claim of a done task, nor does it
    move a task folder under a pending rmdir (which could then remove a new claim made in a
    new folder of the same name);
  * the engine drains (drain) before it rebuilds a goal from its files (reconcile._resync:
    a leftover claim there is swept as a dead holder's), before a goal's end (summary.json,
    the status snapshot) and before it exits (close);
  * other processes (status, a peer engine, a script's `dagrun claim`) could always see done +
    claim/ for a moment; a claimer then finds the claim held, and the marker when it comes
    back (lifecycle.claim_task).
The birth lock (claim.born) went when owner.json was published; release() drops it on the
loop thread anyway (a no-op then), so claim._BIRTHS stays the loop's alone.

An error of the thread (the disk failing) is raised on the loop at its next call here.
DAGRUN_DEFER_RELEASE=0 (A/B runs only): every release on the loop thread, as before.
"""
from __future__ import annotations

import os
import threading
from collections import deque

from . import claim as claims
from . import fsio
from .store import Home

DEFER = os.environ.get("DAGRUN_DEFER_RELEASE", "1") != "0"

_RELEASE, _CLOSE, _STOP = 0, 1, 2


class Reaper:
    """Deferred claim releases of one engine, done in order by one thread (started at the
    first one). release() queues; unlock(fd) closes an edit-lock fd once what was queued
    before it is done; drain() waits for all of it; close() drains and stops the thread."""

    def __init__(self, home: Home, *, defer: bool | None = None):
        self.home = home
        self.defer = DEFER if defer is None else defer
        self._jobs: deque = deque()
        self._cv = threading.Condition()
        self._pending = 0                   # queued and not yet done
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def release(self, g: str, t: str) -> None:
        """Drop our claim of g/t, whose done marker is published (lifecycle.commit_done)."""
        self._raise()
        if not self.defer:
            claims.release(self.home, g, t)
            return
        claims.born(self.home, g, t)        # (a no-op: owner.json was published)
        self._put((_RELEASE, g, t), wake=False)   # the thread is woken once a turn (unlock)

    def unlock(self, fd: int) -> None:
        """Close fd (a goal's edit lock held shared) after the releases queued before it."""
        if not self._pending:
            os.close(fd)
            return
        self._put((_CLOSE, fd, None))

    def drain(self) -> None:
        """Return when every queued release is done; raise the thread's error, if any."""
        if self._pending:
            self._wake()
            with self._cv:
                while self._pending:
                    self._cv.wait()
        self._raise()

    def close(self) -> None:
        th = self._thread
        if th is not None:
            self._put((_STOP, None, None))
            th.join()
            self._thread = None
        self._raise()

    # ------------------------------------------------------------------ internals
    def _raise(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def _put(self, job: tuple, wake: bool = True) -> None:
        # a release only queues (deque.append is atomic): waking the thread for each one cost
        # ~3 context switches a task (GIL hand-overs) -- a loss on tmpfs, where the rmdir
        # itself is ~20 us; the turn's end (unlock), drain and close wake it once
        with self._cv:                      # (uncontended but for the thread's bookkeeping)
            self._pending += 1
            self._jobs.append(job)
        if wake:
            self._wake()

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dagrun-reaper", daemon=True)
            self._thread.start()
        with self._cv:
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                kind, a, b = self._jobs.popleft()
            try:
                if kind == _RELEASE:
                    gone = claims.take_away(self.home, a, b)
                    if gone is not None:
                        fsio.rmtree(gone)
                elif kind == _CLOSE:
                    os.close(a)             # closing the only fd of the lock releases it
            except BaseException as e:      # kept for the loop (drain/release raise it)
                if self._error is None:
                    self._error = e
            finally:
                with self._cv:
                    self._pending -= 1
                    self._cv.notify_all()
            if kind == _STOP:
                return
