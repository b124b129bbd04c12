#!/usr/bin/env python3
"""A/B two dagrun binaries on the same no-op DAG, interleaved (A B A B ...), so a busy
shared machine hits both alike: median wall time and median CPU time (user+sys of the
dagrun process and its agents, from wait4). Nothing asserts; the numbers are for reading.

    python3 bench/ab.py --a /tmp/dagrun-base --b .venv/bin/dagrun --reps 7 --home-on /dev/shm
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import layered, write_workload  # noqa: E402


def once(dagrun: str, plan: str, home_root: str, jobs: int) -> tuple[float, float]:
    home = tempfile.mkdtemp(dir=home_root)
    env = {**os.environ, "DAGRUN_HOME": home}
    time.sleep(0.3)
    t0 = time.perf_counter()
    p = subprocess.Popen([dagrun, "run", plan, "-j", str(jobs), "-q"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{dagrun} failed: {p.stderr.read().decode()[-500:]}")
    shutil.rmtree(home, ignore_errors=True)
    return wall, ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--home-on", default=None)
    a = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="dagrun-ab-")
    ids, deps = layered(50, 20)
    src = os.path.join(scratch, "layered")
    write_workload(src, "layered", ids, deps)
    plan = os.path.join(src, "dag.json")
    res = {"A": [], "B": []}
    for _ in range(a.reps):
        for k, exe in (("A", a.a), ("B", a.b)):
            res[k].append(once(os.path.abspath(exe), plan, a.home_on or scratch, a.jobs))
    print(f"layered-1000, -j {a.jobs}, {a.reps} interleaved reps, home on {a.home_on or 'the same disk'}")
    print("| | binary | wall median (s) | CPU median (s) | wall min (s) |")
    print("|---|---|---:|---:|---:|")
    for k, exe in (("A", a.a), ("B", a.b)):
        w = [x[0] for x in res[k]]
        c = [x[1] for x in res[k]]
        print(f"| {k} | {exe} | {statistics.median(w):.3f} | {statistics.median(c):.3f} | {min(w):.3f} |")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
