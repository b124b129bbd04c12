"""Retention of finished goals: `dagrun gc --older-than AGE / --keep N [--archive]` and the
worker's `--gc-older-than AGE`.

Only a goal that has ended is a candidate -- summary.ended(): its summary.json is there and
no task or plan event came after it -- and it is checked again under the goal's exclusive
edit lock (no claim, commit or plan edit meanwhile) with no claim folder left in it. Removal
is one rename out of goals/ (into $DAGRUN_HOME/archive/ with --archive, or into
$DAGRUN_HOME/.trash/ to be deleted), so a goal is either whole under goals/ or gone from it:
a crash half-way through deleting leaves a partial folder in .trash/, which no command reads
as a goal and the next gc (or worker gc) removes first.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from . import claim as claims
from . import fsio
from .errors import os_error
from .store import CLAIM, Home
from .summary import ended


@dataclass
class GoalGc:
    goal: str
    action: str            # "removed" | "archived" | "would remove" | "would archive"
    ended: float           # when it ended (summary.json's mtime), Unix time
    path: str | None = None  # the archive folder


def trash_dir(home: Home) -> str:
    return os.path.join(home.root, ".trash")


def archive_root(home: Home) -> str:
    return os.path.join(home.root, "archive")


def sweep_trash(home: Home) -> int:
    """Finish deletions a crash cut short. Returns how many leftovers were removed."""
    try:
        names = os.listdir(trash_dir(home))
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise os_error("list", trash_dir(home), e) from None
    for n in names:
        _delete(os.path.join(trash_dir(home), n))
    return len(names)


def _delete(path: str) -> None:
    """Task folders one by one, then the rest (each a step: a crash leaves a partial tree)."""
    tasks = os.path.join(path, "tasks")
    try:
        entries = sorted(os.listdir(tasks))
    except OSError:
        entries = []
    for n in entries:
        fsio.rmtree(os.path.join(tasks, n))
    fsio.rmtree(path)


def _ended_at(home: Home, g: str) -> float | None:
    if ended(home, g) is None:
        return None
    try:
        return os.stat(home.summary_path(g)).st_mtime
    except OSError:
        return None


def _has_claim(home: Home, g: str) -> bool:
    try:
        tasks = os.listdir(home.tasks_dir(g))
    except FileNotFoundError:
        return False
    return any(os.path.isdir(os.path.join(home.tasks_dir(g), t, CLAIM)) for t in tasks)


def candidates(home: Home, *, older_than: float | None, keep: int | None,
               now: float | None = None) -> list[tuple[str, float]]:
    """(goal, ended at) of the ended goals to remove, oldest first: beyond the `keep` most
    recently ended ones and ended more than `older_than` seconds ago (either may be None)."""
    now = time.time() if now is None else now
    done = []
    for g in home.goals():
        t = _ended_at(home, g)
        if t is not None:
            done.append((g, t))
    done.sort(key=lambda x: (x[1], x[0]), reverse=True)       # newest first
    if keep is not None:
        done = done[keep:]
    if older_than is not None:
        done = [(g, t) for g, t in done if now - t >= older_than]
    return sorted(done, key=lambda x: (x[1], x[0]))


def gc_goals(home: Home, *, older_than: float | None = None, keep: int | None = None,
             archive: bool = False, dry_run: bool = False) -> list[GoalGc]:
    """Remove (or archive) finished goals chosen by `candidates`; a goal that is found
    reopened, claimed or gone meanwhile is left alone. Leftovers of a crashed gc go first."""
    if older_than is None and keep is None:
        raise ValueError("gc_goals needs older_than or keep")
    if not dry_run:
        sweep_trash(home)
    out = []
    for g, t in candidates(home, older_than=older_than, keep=keep):
        if dry_run:
            out.append(GoalGc(g, "would archive" if archive else "would remove", t))
            continue
        r = _take(home, g, t, archive)
        if r is not None:
            out.append(r)
    return out


def _take(home: Home, g: str, t: float, archive: bool) -> GoalGc | None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()
    dest_root = archive_root(home) if archive else trash_dir(home)
    dest = os.path.join(dest_root, f"{g}.{stamp}")
    with claims.edit_lock(home, g, exclusive=True):
        if _ended_at(home, g) is None or _has_claim(home, g):
            return None                 # reopened (retry, plan edit) or claimed since we looked
        try:
            fsio.makedirs(dest_root, mode=0o700)
            fsio.rename(home.goal_dir(g), dest)
        except FileNotFoundError:
            return None                 # another gc took it
        except OSError as e:
            raise os_error("move out of goals/", home.goal_dir(g), e) from None
    if archive:
        return GoalGc(g, "archived", t, dest)
    _delete(dest)
    return GoalGc(g, "removed", t)


class GcSchedule:
    """The worker's `--gc-older-than AGE`: gc_goals at start and then every `every` seconds,
    from the engine's periodic tick (composed with the --metrics textfile when there is one)."""

    def __init__(self, home: Home, older_than: float, *, every: float = 3600.0, log=None, then=None):
        self.home = home
        self.older_than = older_than
        self.every = every
        self.log = log or (lambda m: None)
        self.then = then                 # another tick (WorkerMetrics), called every time
        self._next = 0.0

    def __call__(self, engine) -> None:
        if self.then is not None:
            self.then(engine)
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        for r in gc_goals(self.home, older_than=self.older_than):
            self.log(f"gc: {r.action} goal {r.goal}" + (f" -> {r.path}" if r.path else ""))
