"""Building big, long-lived object graphs (a 100 000-task plan, its scheduler, a goal's
facts) with Python's cyclic garbage collector paused.

Such a build allocates millions of containers that all survive; each young-generation
collection on the way walks them again and each full collection walks everything built so
far, which at 100 000 tasks was half the CPU time of loading a plan and building its
scheduler (bench/scale.py; ARCHITECTURE.md, "Plans of 100 000 tasks"). Nothing built here
forms a reference cycle, so reference counting frees it all the same; the collector runs
again as soon as the outermost build ends. Nested and concurrent builds are fine: only the
build that paused the collector resumes it.

A command's start is such a build too: its imports make ~80 000 containers (modules,
classes, functions, the dataclasses' generated methods) that live as long as the process,
and ~30 collections walked them on the way -- 10-25 ms of a `dagrun run`'s start
(docs/performance.md, "2026-12-06: start-up and exit"). entry.main() calls start_up() before
any import; a command that ends when it returns leaves the collector off (as one_shot()), a
long-lived one calls settled() once its start is built."""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_starting = False              # start_up() turned the collector off; settled() not yet called
_owned = False                 # start_up() ran: the process is a dagrun command's (its collector ours)


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


def start_up() -> None:
    """entry.main(), before it imports anything else: the collector off for the start."""
    global _starting, _owned
    if gc.isenabled():
        gc.disable()
        _starting = _owned = True


def settled() -> None:
    """A long-lived process has built what it keeps for its lifetime (`dagrun run`'s engine
    after its first discovery, the MCP server, the typer path before its imports): move
    all of it into the collector's permanent generation (gc.freeze: never walked again,
    freed by reference counting as always) and turn the collector back on. Called again
    once more is built -- `dagrun worker`'s engine after its first discovery, the typer path
    having settled its imports: the goals' plans and schedulers, which every full collection
    walked otherwise (four to five of them, 1.2-1.4 s, in a 100 000-task run; docs/
    performance.md, "2026-12-06 (9)") -- it freezes that too. Does nothing unless start_up()
    turned the collector off: an engine run in a library or a test is left alone."""
    global _starting
    if _starting:
        _starting = False
        gc.freeze()
        gc.enable()
    elif _owned and gc.isenabled():
        gc.freeze()
