#!/usr/bin/env python3
"""A no-op layered run cut into its phases: the start, the steady state, the goal's end.

    python3 bench/phases.py --tasks 100000 --scratch /mnt/x [--jobs 16] [--keep]

Writes bench/scale.py's layered plan of N tasks, `dagrun submit`s it into a fresh DAGRUN_HOME
under SCRATCH (then `sync`), and runs `dagrun worker --until-idle -j N` of this checkout in
a child whose engine methods are wrapped with timers (the wrapping costs a few microseconds
a call; the methods timed run once per rescan or once per goal): the worker's start up to
its first claim, every periodic rescan (`Reconciler._rescan`, `_resync`), and the goal's end
(`Engine._read_for_end`, `transitions.end_goal_if_finished`, `Engine._snapshot_status`,
`claim.sweep_aside`). The steady state's rate is read from events.jsonl afterwards: the
`done` lines between 10 % and 90 % of the tasks. Prints one JSON object. Nothing here
asserts: what grows faster than the goal is what to look at (docs/performance.md, fifteenth
session).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import layered_plan  # noqa: E402
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dagrun.store import parse_iso  # noqa: E402  (the event lines' "ts": now_iso's form)

# The child: wraps the methods, then runs the CLI. Each line it prints on stderr starting
# with "PHASE " is a JSON record.
CHILD = r'''
import json, sys, time
T0 = time.perf_counter()
def rec(**kw):
    kw["at"] = round(time.perf_counter() - T0, 4)
    sys.stderr.write("PHASE " + json.dumps(kw) + "\n")
from dagrun import claim, engine, lifecycle, reconcile, transitions
def wrap(owner, name):
    f = getattr(owner, name)
    def w(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return f(*a, **k)
        finally:
            rec(phase=name, wall=round(time.perf_counter() - t, 4), cpu=round(time.process_time() - c, 4))
    setattr(owner, name, w)
for owner, name in ((reconcile.Reconciler, "_rescan"), (reconcile.Reconciler, "_resync"),
                    (engine.Engine, "_read_for_end"), (engine.Engine, "_snapshot_status"),
                    (transitions, "end_goal_if_finished"), (claim, "sweep_aside")):
    wrap(owner, name)
first = lifecycle.claim_task
def claim_task(*a, **k):
    if not getattr(claim_task, "seen", False):
        claim_task.seen = True
        rec(phase="first_claim")
    return first(*a, **k)
lifecycle.claim_task = claim_task
engine.claim_task = claim_task
rec(phase="imported")
from dagrun.entry import main
sys.argv = ["dagrun"] + sys.argv[1:]
try:
    main()
finally:
    rec(phase="exit")
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=100000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--scratch", default=os.environ.get("BENCH_SCRATCH", "/tmp"))
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="dagrun-phases-", dir=a.scratch)
    try:
        plan = os.path.join(root, "dag.json")
        with open(plan, "w") as f:
            json.dump(layered_plan(a.tasks, a.width), f)
        env = dict(os.environ, DAGRUN_HOME=os.path.join(root, "home"))
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
        subprocess.run([sys.executable, "-m", "dagrun", "submit", plan], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        os.sync()
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, "worker", "--until-idle", "-j", str(a.jobs)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        recs = [json.loads(line[6:]) for line in p.stderr.splitlines() if line.startswith("PHASE ")]
        dones = []
        with open(os.path.join(root, "home", "goals", f"scale-{a.tasks}", "events.jsonl"), "rb") as f:
            for line in f:
                e = json.loads(line)
                if e.get("status") == "done":
                    dones.append(parse_iso(e["ts"]))
        dones.sort()
        lo, hi = dones[len(dones) // 10], dones[(len(dones) * 9) // 10]
        at = {r["phase"]: r["at"] for r in recs if r["phase"] in ("imported", "first_claim", "exit")}
        sums: dict = {}
        for r in recs:
            if "wall" in r:
                s = sums.setdefault(r["phase"], {"calls": 0, "wall": 0.0, "cpu": 0.0})
                s["calls"] += 1
                s["wall"] = round(s["wall"] + r["wall"], 4)
                s["cpu"] = round(s["cpu"] + r["cpu"], 4)
        out = {"tasks": a.tasks, "jobs": a.jobs, "exit_code": p.returncode, "wall_s": round(wall, 3),
               "tasks_per_s": round(a.tasks / wall, 1),
               "start_to_first_claim_s": round(at.get("first_claim", 0) - at.get("imported", 0), 3),
               "steady_tasks_per_s": round((len(dones) * 8 // 10) / (hi - lo), 1) if hi > lo else None,
               "end_s": round(sum(sums.get(k, {}).get("wall", 0.0) for k in
                                  ("_read_for_end", "end_goal_if_finished", "_snapshot_status")), 3),
               "phases": sums, "load": round(os.getloadavg()[0], 1)}
        print(json.dumps(out))
        return 0 if p.returncode == 0 else 1
    finally:
        if a.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
