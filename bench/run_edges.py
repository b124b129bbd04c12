#!/usr/bin/env python3
"""The two fixed edges of a `dagrun run PLAN -q -j 8`: from the process's start to its first
`running` event line (imports, submit, the engine's start, the first claim and spawn) and
from the goal's last `done` line to the process's exit (the goal's end: summary.json,
status.cache, the history, the engine's exit, the interpreter's). Builds alternate, a fresh
home each run.

    python bench/run_edges.py --reps 11 --plan fanout-500 ".venv/bin/python bench/other_checkout.py $PWD" /tmp/base.sh
    python bench/run_edges.py --plan one ...                 # a one-task plan

Each argument is a dagrun command (split on spaces). The times come from the event lines'
`ts` (written by the engine when the change happens) against the parent's clock before the
fork and after wait4, so the first edge includes the fork and exec of the interpreter. Rows:
medians of both edges, of the whole wall and of the child's CPU (user+sys). Nothing is
asserted: the machine may be shared.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as workloads  # noqa: E402


def _ts(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def edges(home: str, goal: str) -> tuple[float, float]:
    first = last = None
    with open(os.path.join(home, "goals", goal, "events.jsonl"), "rb") as f:
        for line in f:
            e = json.loads(line)
            if e.get("type") != "agent.task.status.updated":
                continue
            if e.get("status") == "running" and first is None:
                first = _ts(e["ts"])
            elif e.get("status") == "done":
                last = _ts(e["ts"])
    return first, last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--plan", default="fanout-500", help="one, fanout-N, layered-WxD (default fanout-500)")
    ap.add_argument("commands", nargs="+")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="dagrun-edges-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    ids, deps = workloads.by_name(a.plan)
    workloads.write_workload(os.path.join(d, "w"), "g", ids, deps)
    plan = os.path.join(d, "w", "dag.json")
    res: dict[str, list] = {c: [] for c in a.commands}
    try:
        for r, c, home, t0, t1, ru in workloads.alternating(a.commands, a.reps, plan, d):
            if r:
                first, last = edges(home, "g")
                res[c].append((first - t0, t1 - last, t1 - t0, ru.ru_utime + ru.ru_stime))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"`dagrun run {a.plan} -q -j 8`, {a.reps} runs each, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| command | start -> first running (ms) | last done -> exit (ms) | wall (ms) | CPU (ms) |\n"
          "|---|---:|---:|---:|---:|")
    for c, rows in res.items():
        if rows:
            m = [statistics.median(x[i] for x in rows) * 1000 for i in range(4)]
            print(f"| `{c}` | {m[0]:.0f} | {m[1]:.0f} | {m[2]:.0f} | {m[3]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
