#!/usr/bin/env python3
"""bench/threads.py for several dagrun commands, interleaved (A B C, C B A, ...), on one of
bench/run.py's workloads: medians of the wall time, the engine process's CPU, its first
(loop) thread's CPU and voluntary context switches, and the sum over the other threads that
switched (the spawners). Voluntary switches and CPU survive a loaded machine better than wall.

    BENCH_SCRATCH=/mnt/j4 python3 bench/threads_ab.py --workload fanout --reps 9 \\
        /tmp/basee4.sh .venv/bin/dagrun "env DAGRUN_START_CLOCK=0 .venv/bin/dagrun"

A DAGRUN_HOME under BENCH_SCRATCH (default /tmp) per run; one untimed round first. Linux only.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import chain, fanout, layered, write_workload  # noqa: E402

WORKLOADS = {"fanout": lambda: fanout(500), "layered": lambda: layered(50, 20), "chain": lambda: chain(200)}
THREADS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "threads.py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("commands", nargs="+", help="dagrun commands (split on spaces)")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="fanout")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=8)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="dagrun-thab-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    ids, deps = WORKLOADS[a.workload]()
    write_workload(os.path.join(d, "w"), a.workload, ids, deps)
    plan = os.path.join(d, "w", "dag.json")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["DAGRUN_HOME"] = home = os.path.join(d, "home")
    res: dict[str, list] = {c: [] for c in a.commands}
    try:
        for r in range(a.reps + 1):
            for c in (a.commands if r % 2 == 0 else a.commands[::-1]):
                shutil.rmtree(home, ignore_errors=True)
                time.sleep(0.2)
                out = subprocess.run([sys.executable, THREADS] + c.split() + ["run", plan, "-j", str(a.jobs), "-q"],
                                     env=env, capture_output=True, text=True).stdout
                m = re.search(r"exit (\d+) wall ([\d.]+) s, cpu ([\d.]+) s; threads user/sys/voluntary: (.*)", out)
                if not m or m.group(1) != "0":
                    print(f"{c}: {out.strip() or 'no output'}", file=sys.stderr)
                    continue
                th = [tuple(map(float, t.split("/"))) for t in m.group(4).split()]
                loop, rest = th[0], [t for t in th[1:] if t[2] > 5]
                if r:
                    res[c].append((float(m.group(2)), float(m.group(3)), loop[0] + loop[1], loop[2],
                                   sum(t[0] + t[1] for t in rest), sum(t[2] for t in rest)))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"{a.workload}, -j {a.jobs}, {a.reps} reps, medians, load {os.getloadavg()[0]:.2f} at the end")
    print("| command | wall (s) | engine CPU (s) | loop CPU (s) | loop vol. switches | spawners CPU (s) | spawners vol. switches |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c in a.commands:
        v = res[c]
        if not v:
            continue
        med = [statistics.median(x[i] for x in v) for i in range(6)]
        print(f"| {c} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} | {med[3]:.0f} | {med[4]:.3f} | {med[5]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
