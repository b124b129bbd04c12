#!/usr/bin/env python3
"""CPU and wall of one `dagrun` call that goes through the typer app (not the protocol fast
path): process start, imports, building the command, parsing, the (tiny) work, exit.

  .venv/bin/python bench/startup.py                  # every command below, 15 calls each
  .venv/bin/python bench/startup.py --reps 30 --dagrun /path/to/other/checkout/.venv/bin/dagrun

Each row: the median of --reps calls of CPU (user+sys of the child, from wait4's rusage,
which does not grow with other processes' load the way wall does) and of wall. The home is a
fresh one with one finished 3-task goal. Nothing is asserted: the machine may be shared.
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
from pathlib import Path

BIN = Path(sys.executable).parent / "dagrun"

CASES = [
    ("status", ["status"]),
    ("status GOAL", ["status", "g"]),
    ("show GOAL TASK", ["show", "g", "b"]),
    ("events GOAL", ["events", "g"]),
    ("output GOAL TASK", ["output", "g", "a"]),
    ("validate PLAN", ["validate", "{plan}"]),
    ("run GOAL (ended)", ["run", "g", "-q"]),
    ("run GOAL -j 2 (ended)", ["run", "g", "-q", "-j", "2"]),
    ("resources", ["resources"]),
    ("--version", ["--version"]),
    ("run --help", ["run", "--help"]),
    ("--help", ["--help"]),
    ("claim GOAL (fast path)", ["claim", "g"]),
]


def one(argv: list[str], env: dict) -> tuple[float, float, int]:
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime, wall, p.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dagrun", default=str(BIN), help="the dagrun command to measure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        plan = Path(tmp) / "dag.json"
        plan.write_text(json.dumps({"goal": "g", "tasks": [
            {"id": "a", "prompt": "a", "agent": "true"},
            {"id": "b", "prompt": "b", "agent": "true", "deps": ["a"]},
            {"id": "c", "prompt": "c", "agent": "true", "deps": ["b"]}]}))
        env = dict(os.environ, DAGRUN_HOME=str(home))
        subprocess.run([args.dagrun, "run", str(plan), "-q"], env=env, check=True, capture_output=True)
        rows = []
        for label, argv in CASES:
            argv = [args.dagrun] + [a.replace("{plan}", str(plan)) for a in argv]
            one(argv, env)                                      # warm the page cache
            cpu, wall, rcs = [], [], set()
            for _ in range(args.reps):
                c, w, rc = one(argv, env)
                cpu.append(c)
                wall.append(w)
                rcs.add(rc)
            rows.append({"command": label, "cpu_ms": round(statistics.median(cpu) * 1000, 1),
                         "wall_ms": round(statistics.median(wall) * 1000, 1), "exit": sorted(rcs)})
    if args.json:
        print(json.dumps({"dagrun": args.dagrun, "reps": args.reps, "load": os.getloadavg()[0], "rows": rows}))
        return
    print(f"{args.dagrun}: median of {args.reps} calls, load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<26} {'cpu ms':>8} {'wall ms':>8}  exit")
    for r in rows:
        print(f"{r['command']:<26} {r['cpu_ms']:>8} {r['wall_ms']:>8}  {r['exit']}")


if __name__ == "__main__":
    main()
