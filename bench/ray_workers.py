"""Why a whole `dagrun run --runner ray` fan-out's steady time swings: the new job's workers.
Each run is a fresh Ray job; Ray starts its workers at its first submission, and the steady
window (first `done` to last) holds what is left of the second worker's start. This runs a
no-op fan-out whose agent prints its Ray worker's pid (`echo $PPID`), several dagruns
interleaved, and prints per run: the first `done` (from the goal's creation), the first task's
own time (its `running` event to its `done`: the worker's start, its first attempt), when each worker's
first task was done (after the first `done`), the steady and the late-half time per task
(bench/cluster.py's), and the share of the tasks each worker ran; then medians per dagrun.

    RAY_ADDRESS=... REPS=5 N=100 \
      DAGRUNS="base=.venv/bin/python bench/other_checkout.py /tmp/old;now=.venv/bin/dagrun" \
      .venv/bin/python bench/ray_workers.py
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402


def one(root: str, exe: list[str], n: int) -> dict:
    home = tempfile.mkdtemp(dir=root, prefix="home-")
    plan = os.path.join(root, "fanpid.json")
    with open(plan, "w") as f:
        json.dump({"goal": "fanout", "defaults": {"agent": "echo $PPID"},
                   "tasks": [{"id": f"t{i}", "prompt": "p", "deps": []} for i in range(n)]}, f)
    subprocess.run([*exe, f"--home={home}", "run", "-q", "-j", str(n), "--runner", "ray", plan], check=True,
                   capture_output=True)
    g = os.path.join(home, "goals", "fanout")
    rows, t0, started, done_of = [], None, {}, None
    with open(os.path.join(g, "events.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            t = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
            t0 = t if t0 is None else t0
            if e.get("status") == "running":
                started[e["task"]] = t
            if e.get("status") == "done":
                if done_of is None:          # (events are appended in time order)
                    done_of = (e["task"], t)
                with open(os.path.join(g, "tasks", e["task"], "output")) as o:
                    rows.append((t, o.read().strip()))
    rows.sort()
    ts = [t for t, _ in rows]
    first_task = done_of[1] - started[done_of[0]]
    firsts: dict = {}
    for t, pid in rows:
        firsts.setdefault(pid, t)
    counts = {pid: sum(1 for _, p in rows if p == pid) for pid in firsts}
    return {"first": ts[0] - t0, "first_task": first_task, "workers": [firsts[p] - ts[0] for p in firsts], "share": [counts[p] for p in firsts],
            "steady": (ts[-1] - ts[0]) / (n - 1), "late": cluster._late(ts)}


def main() -> None:
    reps, n = int(os.environ.get("REPS") or 5), int(os.environ.get("N") or 100)
    spec = os.environ.get("DAGRUNS") or f"now={' '.join(cluster.DAGRUN)}"
    exes = {k: shlex.split(v) for k, _, v in (x.partition("=") for x in spec.split(";"))}
    print(f"fan-out of {n}, {reps} interleaved runs each; load average {os.getloadavg()[0]:.1f} at start")
    m: dict = {k: [] for k in exes}
    with tempfile.TemporaryDirectory(prefix="bench-ray-workers-") as root:
        for _ in range(reps):
            for k, exe in exes.items():
                r = one(root, exe, n)
                m[k].append(r)
                print(f"  {k:6} first done {r['first']:.2f} s (its task {r['first_task'] * 1000:.0f} ms); workers' first done +"
                      f"{' +'.join('%.0f' % (x * 1000) for x in r['workers'])} ms, tasks {r['share']}; "
                      f"steady {r['steady'] * 1000:.2f} ms, late half {r['late'] * 1000:.2f} ms a task")
    print(f"load average {os.getloadavg()[0]:.1f} at end; medians:")
    med = statistics.median
    for k, rs in m.items():
        last = [max(r["workers"]) for r in rs]
        print(f"  {k:6} first task {med(r['first_task'] for r in rs) * 1000:.0f} ms; "
              f"last worker's first done +{med(last) * 1000:.0f} ms after the first; steady "
              f"{med(r['steady'] for r in rs) * 1000:.2f} ms, late half {med(r['late'] for r in rs) * 1000:.2f} ms a task")


if __name__ == "__main__":
    main()
