#!/usr/bin/env python3
"""What ranking by the home's history costs per call -- why `run --dry-run` does it and a
script's `dagrun claim` (one call per task) does not: the scheduler built from a goal's files as before (lifecycle.build_scheduler, durations from
the plan's estimates only) against lifecycle.ranked_scheduler (the engine's order: durations
from the history too, one read of every done marker under the home).

    .venv/bin/python bench/claim_ranking.py                     # 10 goals x 500 done tasks
    .venv/bin/python bench/claim_ranking.py --goals 40 --tasks 500 --reps 9

The home: GOALS goals of TASKS tasks submitted with `dagrun submit`, each task given a `done`
marker with a duration (written directly: as if they had run), and one goal `wide` of 200
independent ready tasks, the one a script claims from. Each row: the median CPU (user+sys of
this process) of --reps builds, interleaved. Nothing is asserted: the numbers are for reading.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dagrun import lifecycle  # noqa: E402
from dagrun.store import Home  # noqa: E402

BIN = os.path.join(os.path.dirname(sys.executable), "dagrun")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--goals", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--reps", type=int, default=9)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "home")
        env = dict(os.environ, DAGRUN_HOME=root)
        for g in [f"g{i}" for i in range(a.goals)] + ["wide"]:
            n = 200 if g == "wide" else a.tasks
            p = os.path.join(d, f"{g}.json")
            with open(p, "w") as f:
                json.dump({"goal": g, "tasks": [{"id": f"t{i}", "prompt": "x", "agent": "echo a"} for i in range(n)]}, f)
            subprocess.run([BIN, "submit", p], env=env, check=True, capture_output=True)
            if g == "wide":
                continue
            for i in range(n):
                td = os.path.join(root, "goals", g, "tasks", f"t{i}")
                os.makedirs(td, exist_ok=True)
                with open(os.path.join(td, "done"), "w") as f:
                    json.dump({"duration": 1.0 + i % 7, "attempt": 1}, f)
        home = Home(root)
        plan = home.load_plan("wide")
        cpu: dict[str, list[float]] = {"build_scheduler (before)": [], "ranked_scheduler (after)": []}
        for _ in range(a.reps):
            for name, fn in (("build_scheduler (before)", lifecycle.build_scheduler),
                             ("ranked_scheduler (after)", lifecycle.ranked_scheduler)):
                t = time.process_time()
                fn(home, plan)
                cpu[name].append(time.process_time() - t)
        print(f"home: {a.goals} goals x {a.tasks} done tasks; goal `wide`: 200 ready tasks")
        for name, xs in cpu.items():
            print(f"  {name:26s} median CPU {statistics.median(xs) * 1000:7.1f} ms  (min {min(xs) * 1000:.1f})")


if __name__ == "__main__":
    main()
