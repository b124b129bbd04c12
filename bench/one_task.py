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
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("commands", nargs="+", help="dagrun commands to compare")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="dagrun-one-task-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    plan = os.path.join(d, "one.json")
    with open(plan, "w") as f:
        json.dump({"goal": "one", "defaults": {"agent": "true"}, "tasks": [{"id": "t1", "prompt": "x"}]}, f)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}   # bytecode cached
    res: dict[str, list] = {c: [] for c in a.commands}
    try:
        for r in range(a.reps + 1):                 # the first round: untimed (bytecode written)
            for c in (a.commands if r % 2 == 0 else a.commands[::-1]):
                home = os.path.join(d, "home")
                shutil.rmtree(home, ignore_errors=True)
                env["DAGRUN_HOME"] = home
                t = time.perf_counter()
                p = subprocess.Popen(c.split() + ["run", plan, "-j", "8", "-q"], env=env, stdout=subprocess.DEVNULL)
                _, status, ru = os.wait4(p.pid, 0)
                wall = time.perf_counter() - t
                if os.waitstatus_to_exitcode(status) != 0:
                    print(f"{c}: exit {os.waitstatus_to_exitcode(status)}", file=sys.stderr)
                elif r:
                    res[c].append((wall, ru.ru_utime + ru.ru_stime))
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
