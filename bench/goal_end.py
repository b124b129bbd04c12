#!/usr/bin/env python3
"""The CPU of a goal's end in the engine: summary.json and the status snapshot, each reading
the task folders (the old way), against one read shared by both (status.read_for_end,
summary.goal_run(facts=), status.snapshot_after_end).

    python bench/goal_end.py [--tasks 1000] [--reps 9]

Runs a no-op layered goal of --tasks tasks to its end once (`dagrun run`), then, in this
process and alternating the two ways, takes its end away (summary.json, status.cache) and
derives it again exactly as Engine._check_ended does, with the event lines held as in the
engine's turn. Prints the median CPU (this thread's user+sys) and the Python calls of one
end (per task), and checks that both ways publish the same summary and snapshot.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as workloads  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000, help="a multiple of 50 (50 tasks per layer)")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--dagrun", default=os.path.join(os.path.dirname(sys.executable), "dagrun"))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="dagrun-goal-end-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    try:
        return _bench(a, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _bench(a, d: str) -> int:
    from dagrun import events as ev
    from dagrun import statuscache, status, transitions as tr
    from dagrun.lifecycle import build_scheduler
    from dagrun.store import Home

    g = f"end-{a.tasks}"
    workloads.write_workload(os.path.join(d, "w"), g, *workloads.layered(50, max(1, a.tasks // 50)))
    home = os.path.join(d, "home")
    subprocess.run([a.dagrun, "run", os.path.join(d, "w", "dag.json"), "-j", "8", "-q"], check=True,
                   env={**os.environ, "DAGRUN_HOME": home}, stdout=subprocess.DEVNULL)
    h = Home(home)
    plan = h.load_plan(g)
    n = len(plan.tasks)

    def reopen():
        for p in (h.summary_path(g), statuscache.path(h, g)):
            os.remove(p)

    def old():
        tr.end_goal_if_finished(h, plan, sched, "bench")
        ev.flush()
        return status.refresh_snapshot(h, g, plan, h.plan_stamp(g))

    def new():
        ev.flush()
        pre = status.read_for_end(h, g, plan, h.plan_stamp(g))
        tr.end_goal_if_finished(h, plan, sched, "bench", facts=pre.facts)
        ev.flush()
        return status.snapshot_after_end(h, g, pre)

    def calls(fn) -> int:
        k = [0]

        def prof(frame, event, arg):
            if event in ("call", "c_call"):
                k[0] += 1
        reopen()
        sys.setprofile(prof)
        try:
            fn()
        finally:
            sys.setprofile(None)
        return k[0]

    def same(x: bytes, y: bytes) -> bool:
        """The same status, but for the summary's own time, size and finisher (each end
        publishes a new summary.json)."""
        dx, dy = orjson.loads(x), orjson.loads(y)
        for dd in (dx, dy):
            for k in ("finished", "events_size", "finisher"):
                dd["summary"].pop(k, None)
        return dx == dy

    sched = build_scheduler(h, plan)[0]
    ev.hold()
    try:
        cpu: dict[str, list[float]] = {"old": [], "new": []}
        bodies = {}
        for rep in range(a.reps):
            for name, fn in (("old", old), ("new", new)) if rep % 2 == 0 else (("new", new), ("old", old)):
                reopen()
                t0 = time.thread_time()
                fresh = fn()
                t1 = time.thread_time()
                cpu[name].append(t1 - t0)
                assert fresh is not None, f"{name}: no snapshot written"
                bodies[name] = fresh.body
        assert same(bodies["old"], bodies["new"]), "the two ways disagree"
        ncalls = {name: calls(fn) for name, fn in (("old", old), ("new", new))}
    finally:
        ev.release()
    print(f"goal end of {n} tasks, median of {a.reps} (CPU: this thread's user+sys, time.thread_time), "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| way | CPU per end | per task | Python calls per task |")
    print("|---|---:|---:|---:|")
    for name in ("old", "new"):
        m = statistics.median(cpu[name])
        print(f"| {name} | {m * 1000:.1f} ms | {m / n * 1e6:.1f} us | {ncalls[name] / n:.1f} |")
    return 0


if __name__ == "__main__":
    t = time.time()
    rc = main()
    sys.exit(rc)
