"""What the goal edit lock (claim.edit_lock) costs on the hot path.

Every task takes the lock twice (claim + render + spawn, and the commit), shared. This
measures one shared acquire+release in-process, and the wall time of a goal of N trivial
tasks through the installed `dagrun run` (compare with the same number on a build without
the lock: `git stash` or an older commit).

    .venv/bin/python bench/edit_lock.py [N] [JOBS]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from dagrun import claim
from dagrun.store import Home


def lock_cost(root: str, n: int = 20000) -> float:
    os.makedirs(os.path.join(root, "goals", "g"), exist_ok=True)
    h = Home(root)
    for _ in range(100):
        with claim.edit_lock(h, "g"):
            pass
    t = time.perf_counter()
    for _ in range(n):
        with claim.edit_lock(h, "g"):
            pass
    return (time.perf_counter() - t) / n


def goal_wall(root: str, n: int, jobs: int) -> float:
    plan = os.path.join(root, "dag.json")
    with open(plan, "w") as f:
        json.dump({"goal": "bench", "defaults": {"agent": "true"},
                   "tasks": [{"id": f"t{i}", "prompt": "p"} for i in range(n)]}, f)
    dagrun = os.path.join(os.path.dirname(sys.executable), "dagrun")
    t = time.perf_counter()
    subprocess.run([dagrun, f"--home={root}/home", "run", plan, "-j", str(jobs), "-q"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    with tempfile.TemporaryDirectory() as d:
        per = lock_cost(os.path.join(d, "lk"))
        wall = goal_wall(d, n, jobs)
    print(f"edit_lock: {per * 1e6:.1f} us per shared acquire+release ({2 * per * 1e6:.1f} us per task)")
    print(f"goal of {n} `true` tasks, -j {jobs}: {wall:.2f} s ({n / wall:.0f} tasks/s)")
