"""Pure rules of code workspaces (no I/O, no git): which prerequisites a task's snapshot
contains and in what order, whether two tasks' declared `files` globs may touch the same path
(the mutex), and which tasks a merge conflict is between. workspace.py does the git part.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence

from . import lazyre


# ------------------------------------------------------------------------------ snapshot order
def prerequisites(deps: Mapping[str, Sequence[str]], topo: Sequence[str], t: str,
                  uses: Mapping[str, bool] | None = None) -> list[str]:
    """Every task t transitively depends on through hard deps, in topological order (the
    order their commits are merged into t's snapshot). Tasks that do not use the workspace
    (`workspace: false`) contribute no commits but their own prerequisites still count."""
    seen: set[str] = set()
    stack = list(deps.get(t, ()))
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(deps.get(d, ()))
    return [x for x in topo if x in seen and (uses is None or uses.get(x, True))]


# ------------------------------------------------------------------------------ names
# (here, not in workspace.py, so that the run path -- engine, lifecycle -- names them without
# importing git's side: a plan without a code workspace never loads workspace.py)
# what an agent's own git calls must not inherit either (they would leave the worktree)
GIT_REDIRECT = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES")
CONFLICT = "workspace_conflict"    # the outcome of a task whose prerequisites do not merge


def uses(plan, task) -> bool:
    """Does the task work in the plan's code workspace (a git worktree of its own)?"""
    return bool(plan.workspace) and bool(task.workspace)


# ------------------------------------------------------------------------------ globs
_MAGIC = lazyre.Pattern(r"[*?\[]")


def check_glob(g: str) -> str | None:
    """Why a `files` glob is unusable, or None. Globs are repository-relative, `/`-separated."""
    if not g or not g.strip():
        return "must not be empty"
    if g.startswith("/"):
        return "must be relative to the repository root"
    if any(p in ("..", ".") for p in g.split("/")):
        return "must not contain . or .. segments"
    return None


def _segments(g: str) -> list[str]:
    return [s for s in g.split("/") if s]


def _seg_overlap(a: str, b: str) -> bool:
    """Can one path segment match both patterns? Exact when one side is literal; otherwise
    conservative (literal prefixes and suffixes compatible)."""
    ma, mb = _MAGIC.search(a), _MAGIC.search(b)
    if not ma and not mb:
        return a == b
    if not ma:
        return fnmatch.fnmatchcase(a, b)
    if not mb:
        return fnmatch.fnmatchcase(b, a)
    pa, pb = a[:ma.start()], b[:mb.start()]
    sa, sb = re.split(r"[*?\]]", a)[-1], re.split(r"[*?\]]", b)[-1]
    return (pa.startswith(pb) or pb.startswith(pa)) and (sa.endswith(sb) or sb.endswith(sa))


def globs_overlap(a: str, b: str) -> bool:
    """Could some path be touched by both globs? `**` matches any number of segments; a
    pattern names a path and everything below it (`src/auth` covers `src/auth/x.py`).
    Conservative: it may say yes for two globs that cannot really meet (then two tasks are
    serialised for nothing), never no for two that can."""
    return _overlap(_segments(a), _segments(b))


def _overlap(x: list[str], y: list[str]) -> bool:
    if not x or not y:
        return True            # one names a folder the other lies in (or both the same path)
    if x[0] == "**" or y[0] == "**":
        return True            # conservative: ** can swallow whatever the other side needs
    return _seg_overlap(x[0], y[0]) and _overlap(x[1:], y[1:])


def sets_overlap(a: Iterable[str], b: Iterable[str]) -> bool:
    b = list(b)
    return any(globs_overlap(x, y) for x in a for y in b)


def may_start(files: Sequence[str], running: Iterable[Sequence[str]]) -> bool:
    """The mutex (one of Scheduler.may_start/take's rules): a task with declared `files` may
    start unless a running task of the same goal declared files overlapping them. Tasks that
    declare nothing are never held back."""
    if not files:
        return True
    return not any(r and sets_overlap(files, r) for r in running)


# ------------------------------------------------------------------------------ conflicts
def conflict_parties(conflicted: Sequence[str], merged: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """The tasks among `merged` ([(task, files it changed)]) whose changes touch one of the
    conflicted files: the other side of a conflict."""
    cf = set(conflicted)
    return [t for t, files in merged if cf.intersection(files)]


def describe_conflict(task: str, conflicted: Sequence[str], others: Sequence[str], into: str) -> str:
    files = ", ".join(conflicted[:8]) + (f" and {len(conflicted) - 8} more" if len(conflicted) > 8 else "")
    if others:
        who = " and ".join([", ".join(others[:-1]), others[-1]] if len(others) > 1 else others)
        return f"tasks {who} and {task} conflict in {files}"
    return f"task {task} conflicts with {into} in {files}"
