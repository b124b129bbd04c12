"""The state vocabulary, in one place at the bottom layer.

A task is `pending` on disk until a marker says otherwise (`done` > `cancelled` > `failed`,
in that precedence); `running` while a claim stands. The scheduler refines `pending` into
`waiting` / `ready` / `blocked` and adds `retrying` (a backoff): those are derived from the
markers of the dependencies, never stored. Event names live in events.py; the `status`
values of task events are these same words.
"""
from __future__ import annotations

PENDING = "pending"
WAITING = "waiting"
READY = "ready"
RUNNING = "running"
RETRYING = "retrying"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
BLOCKED = "blocked"

MARKERS = (DONE, CANCELLED, FAILED)          # the marker files, in precedence order
ENDED = frozenset((DONE, FAILED, CANCELLED, BLOCKED))   # nothing more will happen without a retry
ROOTS = frozenset((FAILED, CANCELLED))       # what blocks its dependents
