"""The state vocabulary, in one place at the bottom layer.

A task is `pending` on disk until a marker says otherwise (`done` > `skipped` > `cancelled` >
`failed`, in that precedence); `running` while a claim stands; `awaiting_approval` while an
`awaiting` file (an approval gate, docs/conditions.md) stands and nothing else does. The scheduler refines `pending` into
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
SKIPPED = "skipped"                 # its `when` was false, or its trigger rule skips it (docs/conditions.md)
AWAITING = "awaiting_approval"      # an approval gate waits for `dagrun approve` / `dagrun reject`
AWAITING_FILE = "awaiting"          # the gate's file (not a terminal marker)

MARKERS = (DONE, SKIPPED, CANCELLED, FAILED)          # the marker files, in precedence order
ENDED = frozenset((DONE, FAILED, CANCELLED, BLOCKED, SKIPPED))   # nothing more will happen without a retry
ROOTS = frozenset((FAILED, CANCELLED))       # what blocks its dependents

TRIGGERS = ("all_success", "all_done", "one_success", "one_failed", "none_failed")   # a task's `trigger`
