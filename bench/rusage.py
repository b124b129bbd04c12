#!/usr/bin/env python3
"""One `dagrun run PLAN -j N` in a fresh DAGRUN_HOME, with what wait4(2) says about it.

    python3 bench/rusage.py PLAN [-j 8] [--dagrun CMD] [--reps 3]

Prints, per repetition: wall seconds, user and system CPU seconds (the engine and its agents),
peak RSS, and the voluntary / involuntary context switches of the engine process -- the
number that shows how often the loop's thread gave up the CPU (a sleep in vfork, a lock, the
GIL handed to a spawner thread). Generate a plan with bench/run.py or bench/scale.py.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("plan")
    ap.add_argument("-j", "--jobs", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dagrun", default=shutil.which("dagrun") or os.path.join(os.path.dirname(sys.executable), "dagrun"))
    a = ap.parse_args()
    for rep in range(a.reps):
        home = tempfile.mkdtemp(prefix="dagrun-rusage-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
        env = dict(os.environ, DAGRUN_HOME=home)
        t0 = time.perf_counter()
        p = subprocess.Popen([a.dagrun, "run", a.plan, "-j", str(a.jobs), "-q"], env=env, stdout=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        shutil.rmtree(home, ignore_errors=True)
        print(f"rep {rep + 1}: exit {os.waitstatus_to_exitcode(status)} wall {wall:.3f} s user {ru.ru_utime:.3f} s "
              f"sys {ru.ru_stime:.3f} s maxrss {ru.ru_maxrss / 1024:.0f} MB "
              f"voluntary switches {ru.ru_nvcsw} involuntary {ru.ru_nivcsw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
