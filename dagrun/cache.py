"""The result cache: `cache: true` makes a repeated sub-goal free.

Key = sha256 of (the task's agent command, its check, its context_limit, the *normalised*
prompt -- CRLF/CR become LF, trailing whitespace of every line and trailing blank lines are
dropped -- and, for every dependency in order, its id, hard/soft, and the sha256 of its
output, or its state when a soft dependency ended without one). So a changed upstream output
changes exactly the keys of the tasks that read it, and whatever a task's prompt says about
where files live under the home does not matter (the key never sees the rendered prompt).

Entries are content-addressed under `$DAGRUN_HOME/cache/<key>/` (`output` + `meta.json`),
shared by every goal and worker of the home. An entry is built in `cache/.<key>.<pid>.tmp/`
and renamed into place: it is there whole or not at all; of two writers of the same key, one
rename wins and the other's folder is removed. A hit is verified against the sha256 in
meta.json (an edited or damaged entry is a miss, and is removed), and its meta.json's mtime
records the last use (for `gc`).

The engine looks up a ready task just after claiming it (before any agent starts) and
stores a result just after its `done` marker: a crash in between leaves a done task and no
entry (the next identical task runs its agent once more), never an entry for a result that
was not committed.
"""
from __future__ import annotations

import os
import time

import orjson

from . import fsio, proc
from .digests import sha256
from .errors import UsageError
from .plan import Plan, Task
from .store import Home, loads_obj, now_iso

CACHE = "cache"
VERSION = 1
TMP_MAX_AGE = 3600.0


def normalise(prompt: str) -> str:
    text = prompt.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n")


def _sha256_file(path: str) -> str | None:
    h = sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def key_for(home: Home, plan: Plan, task: Task) -> str | None:
    """The task's cache key as its inputs are now; None if a done input has no output."""
    g = plan.goal
    inputs = []
    for dep, soft in [(d, False) for d in task.deps] + [(d, True) for d in task.soft_deps]:
        tdir = home.task_dir(g, dep)
        if os.path.exists(os.path.join(tdir, "done")):
            h = _sha256_file(home.output_path(g, dep))
            if h is None:
                return None
            inputs.append([dep, soft, "done", h])
        else:
            state = next((m for m in ("skipped", "cancelled", "failed") if os.path.exists(os.path.join(tdir, m))),
                         "blocked")
            inputs.append([dep, soft, state])
    doc = {"v": VERSION, "agent": task.agent, "check": list(task.check or ()), "context_limit": task.context_limit,
           "prompt": normalise(task.prompt), "inputs": inputs}
    return sha256(orjson.dumps(doc)).hexdigest()


def _dir(home: Home) -> str:
    return os.path.join(home.root, CACHE)


def _entry(home: Home, key: str) -> str:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise UsageError(f"invalid cache key {key!r}: 64 hex digits")
    return os.path.join(_dir(home), key)


def lookup(home: Home, key: str) -> tuple[bytes, dict] | None:
    """(output, meta) of a valid entry, else None (a damaged entry is removed)."""
    e = _entry(home, key)
    meta = loads_obj(fsio.read_bytes(os.path.join(e, "meta.json"), follow=False))
    if meta is None:
        return None
    data = fsio.read_bytes(os.path.join(e, "output"), follow=False)
    if data is None or sha256(data).hexdigest() != meta.get("sha256"):
        remove(home, key)
        return None
    try:
        os.utime(os.path.join(e, "meta.json"))      # last use, for gc
    except OSError:
        pass
    return data, meta


def store(home: Home, key: str, output_path: str, meta: dict) -> bool:
    """Publish an entry (no-op if the key is there already). True if this call published it."""
    final = _entry(home, key)
    if os.path.isdir(final):
        return False
    data = fsio.read_bytes(output_path, follow=False)
    if data is None:
        return False
    fsio.makedirs(_dir(home), mode=0o700)
    tmp = os.path.join(_dir(home), f".{key}.{os.getpid()}.tmp")
    fsio.rmtree(tmp)
    fsio.mkdir(tmp, mode=0o700)
    fsio.write_atomic(os.path.join(tmp, "output"), data)
    body = {"key": key, "created": now_iso(), "bytes": len(data), "sha256": sha256(data).hexdigest(), **meta}
    fsio.write_atomic(os.path.join(tmp, "meta.json"), orjson.dumps(body, option=orjson.OPT_INDENT_2))
    try:
        fsio.rename(tmp, final)
    except OSError:            # somebody published the same key first (ENOTEMPTY/EEXIST)
        fsio.rmtree(tmp)
        return False
    return True


def remove(home: Home, key: str) -> bool:
    e = _entry(home, key)
    if not os.path.isdir(e):
        return False
    gone = os.path.join(_dir(home), f".{key}.{os.getpid()}.rm.tmp")
    try:
        fsio.rename(e, gone)            # gone from lookups in one step, then deleted
    except FileNotFoundError:
        return False
    fsio.rmtree(gone)
    return True


def entries(home: Home) -> list[dict]:
    try:
        names = sorted(os.listdir(_dir(home)))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.startswith("."):
            continue
        meta_path = os.path.join(_dir(home), n, "meta.json")
        meta = loads_obj(fsio.read_bytes(meta_path, follow=False)) or {}
        try:
            used = os.stat(meta_path).st_mtime
        except OSError:
            used = None
        out.append({"key": n, "goal": meta.get("goal"), "task": meta.get("task"), "bytes": meta.get("bytes"),
                    "created": meta.get("created"), "last_used": now_iso(used) if used else None,
                    "usage": meta.get("usage")})
    return out


def gc(home: Home, older_than: float) -> dict:
    """Remove entries not used for `older_than` seconds, damaged ones, and leftovers of
    writers that died (temp folders older than an hour)."""
    now = time.time()
    removed, leftovers = [], 0
    try:
        names = os.listdir(_dir(home))
    except FileNotFoundError:
        return {"removed": [], "leftovers": 0}
    for n in names:
        p = os.path.join(_dir(home), n)
        if n.startswith("."):
            parts = n.split(".")
            writer = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
            try:        # a writer that died (its pid is gone), or anything older than an hour
                if (writer is not None and not proc.pid_alive(writer)) or now - os.lstat(p).st_mtime > TMP_MAX_AGE:
                    fsio.rmtree(p)
                    leftovers += 1
            except OSError:
                pass
            continue
        try:
            used = os.stat(os.path.join(p, "meta.json")).st_mtime
        except OSError:
            used = 0.0
        if now - used > older_than:
            try:
                if remove(home, n):
                    removed.append(n)
            except UsageError:
                fsio.rmtree(p)           # not a key: not ours
    return {"removed": sorted(removed), "leftovers": leftovers}


# ------------------------------------------------------------------ the engine's side
def lookup_for(home: Home, plan: Plan, task: Task) -> tuple[str, bytes, dict] | None:
    """(key, output, meta) when the task's result is cached, else None."""
    key = key_for(home, plan, task)
    if key is None:
        return None
    hit = lookup(home, key)
    return (key, *hit) if hit else None


def store_for(home: Home, plan: Plan, task: Task, body: dict) -> str | None:
    """After a done commit: keep the output under the task's key. Returns the key."""
    key = key_for(home, plan, task)
    if key is None:
        return None
    fsio._step(f"cache store {key}")
    store(home, key, home.output_path(plan.goal, task.id),
          {"goal": plan.goal, "task": task.id, "agent": task.agent, "usage": body.get("usage")})
    return key
