#!/usr/bin/env python3
"""What a goal's rescans and the cyclic collector cost a dagrun process.

    # a dagrun command in-process (any build: PYTHONPATH), its rescans and collections timed;
    # a worker writes DIR/worker.<pid>.json at exit -- a launcher for bench/scale.py:
    exec env RESCANS_DIR=/tmp/out python3 -P bench/rescans.py worker --until-idle -j 16

    # a goal already in DAGRUN_HOME: the CPU of one start-up, full and (if the build has it)
    # light rescan of an engine holding it, best of 5 (no agents run)
    DAGRUN_HOME=H python3 -P bench/rescans.py --cost [GOAL]

The JSON: for each of Reconciler._resync (the full rescan) and _rescan (the periodic one,
light unless a full one is due) a list of [seconds into the run, wall s, CPU s] per call (a
light rescan that turned full appears in both); "gc": per generation [collections, seconds]
(gc.callbacks); "cpu": the process's user and system seconds; "wall". Nothing asserts.
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time


def cost(goal: str | None) -> None:
    from dagrun.engine import Engine
    from dagrun.store import Home
    home = Home()
    g = goal or home.goals()[0]
    eng = Engine(home, goal=g, worker="w-rescans")
    t = time.process_time()
    eng._discover()
    out = {"goal": g, "start-up": round(time.process_time() - t, 3)}
    gs = eng.goals[g]

    def best(f, n=5):
        b = 1e9
        for _ in range(n):
            t = time.process_time()
            f()
            b = min(b, time.process_time() - t)
        return round(b, 3)
    out["full"] = best(lambda: eng._resync(gs))
    if hasattr(eng, "_rescan"):
        def light():
            gs.next_full = time.monotonic() + 3600
            n = gs.fulls
            eng._rescan(gs)
            if gs.fulls != n:
                raise SystemExit("the light rescan rebuilt: the goal changed under it")
        out["light"] = best(light)
    print(json.dumps(out))


def timed(argv: list[str]) -> None:
    from dagrun import reconcile
    log: dict = {"argv": argv, "gc": {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}}
    t0 = time.monotonic()

    def wrap(name):
        orig = getattr(reconcile.Reconciler, name)
        rec = log.setdefault(name, [])

        def f(self, gs):
            t, c = time.monotonic(), time.process_time()
            try:
                return orig(self, gs)
            finally:
                rec.append((round(t - t0, 3), round(time.monotonic() - t, 4), round(time.process_time() - c, 4)))
        setattr(reconcile.Reconciler, name, f)
    for n in ("_resync", "_rescan"):
        if hasattr(reconcile.Reconciler, n):
            wrap(n)
    began = [0.0]

    def cb(phase, info):
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            g = log["gc"][info["generation"]]
            g[0] += 1
            g[1] += time.perf_counter() - began[0]
    gc.callbacks.append(cb)

    def dump():
        log["cpu"] = os.times()[:2]
        log["wall"] = time.monotonic() - t0
        d = os.environ.get("RESCANS_DIR", ".")
        with open(os.path.join(d, f"{argv[0]}.{os.getpid()}.json"), "w") as f:
            json.dump(log, f)
    if argv and argv[0] == "worker":
        atexit.register(dump)
    sys.argv = ["dagrun"] + argv
    from dagrun.entry import main
    main()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cost"]:
        cost(sys.argv[2] if len(sys.argv) > 2 else None)
    else:
        timed(sys.argv[1:])
