"""Building big, long-lived object graphs (a 100 000-task plan, its scheduler, a goal's
facts) with Python's cyclic garbage collector paused.

Such a build allocates millions of containers that all survive; each young-generation
collection on the way walks them again and each full collection walks everything built so
far, which at 100 000 tasks was half the CPU time of loading a plan and building its
scheduler (bench/scale.py; ARCHITECTURE.md, "Plans of 100 000 tasks"). Nothing built here
forms a reference cycle, so reference counting frees it all the same; the collector runs
again as soon as the outermost build ends. Nested and concurrent builds are fine: only the
build that paused the collector resumes it."""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def one_shot() -> None:
    """For a command whose process ends when it returns (status, submit, validate): the cyclic
    collector stays off for good. Pausing it only defers the walk -- the first young
    collection after paused() ends walks every container allocated during the pause, once:
    0.5 s of a 100 000-task submit's CPU -- and the few cycles such a command makes are
    freed when it exits. Never for a worker, `run`, `watch` or the MCP server."""
    gc.disable()
