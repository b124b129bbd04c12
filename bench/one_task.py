#!/usr/bin/env python3
"""The fixed cost of a run: wall and CPU of `dagrun run PLAN -q -j 8` on a one-task plan
(agent `true`), a fresh home each time, builds alternating.

    python bench/one_task.py --reps 21 .venv/bin/dagrun "python bench/other_checkout.py /tmp/base"

Each argument is a dagrun command (split on spaces); rows are the median wall, the median CPU
of the child (user+sys from wait4's rusage, which grows less with other processes' load than
wall does) and the fastest wall. Nothing is asserted: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as workloads  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("commands", nargs="+", help="dagrun commands to compare")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="dagrun-one-task-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    plan = os.path.join(d, "one.json")
    with open(plan, "w") as f:
        json.dump({"goal": "one", "defaults": {"agent": "true"}, "tasks": [{"id": "t1", "prompt": "x"}]}, f)
    res: dict[str, list] = {c: [] for c in a.commands}
    try:
        for r, c, _home, t0, t1, ru in workloads.alternating(a.commands, a.reps, plan, d):
            if r:
                res[c].append((t1 - t0, ru.ru_utime + ru.ru_stime))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"one-task `dagrun run -q -j 8`, {a.reps} runs each, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| command | wall, median (ms) | CPU, median (ms) | wall, fastest (ms) |\n|---|---:|---:|---:|")
    for c, rows in res.items():
        if rows:
            print(f"| `{c}` | {statistics.median(x[0] for x in rows) * 1000:.0f} | "
                  f"{statistics.median(x[1] for x in rows) * 1000:.0f} | {min(x[0] for x in rows) * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
