#!/usr/bin/env python3
"""CPU of the run path's imports, in a fresh interpreter each time, source trees alternating.

    python bench/import_cpu.py --reps 30 "$PWD" /tmp/base      # /tmp/base: `git archive REV | tar -x -C /tmp/base`

Each tree is imported as bench/other_checkout.py runs it (the editable install's finder
removed, the tree first on sys.path); the child times, with time.process_time(), the modules
a `dagrun run PLAN -q` loads (entry, protocol, edit, agentcheck, engine, status, summary,
the watcher and watchdog's inotify binding) -- not the interpreter's own start. CPU time
grows less with other processes' load than wall time does; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CODE = """
import sys, time
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]
sys.path.insert(0, {root!r})
t = time.process_time()
import dagrun.entry, dagrun.protocol, dagrun.edit, dagrun.agentcheck, dagrun.engine, dagrun.status, dagrun.summary
import dagrun.watcher
from watchdog.observers import inotify_c
print(time.process_time() - t)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("roots", nargs="+", help="source trees holding a dagrun/ package")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}   # bytecode cached
    res: dict[str, list[float]] = {r: [] for r in a.roots}
    for i in range(a.reps + 1):                     # the first round: untimed (bytecode written)
        for r in (a.roots if i % 2 else a.roots[::-1]):
            p = subprocess.run([sys.executable, "-c", CODE.format(root=os.path.abspath(r))], capture_output=True,
                               text=True, env=env)
            if p.returncode != 0:
                print(f"{r}: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            if i:
                res[r].append(float(p.stdout) * 1000)
    print(f"CPU of the run path's imports, {a.reps} interpreters each, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| tree | median (ms) | lowest quartile (ms) | fastest (ms) |\n|---|---:|---:|---:|")
    for r, v in res.items():
        v.sort()
        print(f"| `{r}` | {statistics.median(v):.1f} | {v[len(v) // 4]:.1f} | {v[0]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
