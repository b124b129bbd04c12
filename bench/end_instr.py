#!/usr/bin/env python3
"""Instructions (callgrind) of one goal's end in the engine, as `dagrun run` meets it right
after its last task: Engine._check_ended -- summary.json, agent.goal.finished, the status
snapshot -- and the closing line's status read (run_goal's goal_detail), for one or more
source trees (A/B; instruction counts survive a loaded machine, wall times do not).

    python bench/end_instr.py [--plan fanout-500] [--reps 2] DIR [DIR ...]
    python bench/end_instr.py --cpu --reps 5 DIR [DIR ...]   # CPU time instead (syscalls too)
    python bench/end_instr.py --cpu --home H --goal G --out OUT DIR [DIR ...]   # an existing home

--home/--goal: end that goal of a finished home (made once, e.g. `bench/scale.py --sizes
100000 --keep`) instead of running a plan. --out: each tree's summary.json and status.cache
of its last end are kept as OUT/<n>/ (n: the tree's position), to compare the trees' files
byte for byte (cmp; summary.json's "finished" is the time of the end itself).

Each DIR is a source tree (`.` for this checkout, /tmp/basee4 for main). A goal of the plan
(bench/run.py's workloads, agent `true`) is run to its end once with this venv's dagrun;
then for each tree, `valgrind --tool=callgrind` runs a small driver twice: once that only
builds an Engine on the goal (imports, plan, scheduler), once that also ends the goal
--reps times (summary.json and status.cache taken away before each end, every task folder's
mtime moved forward by the time since the run's last change: each folder as recent as it
was at the run's real end). The difference / reps is one end. In a tree whose engine counts
the event lines as its reader reads them (summary.EventTally), the driver hands the engine
that count of the lines after the submit's, as the run's reader would have left it (both
drivers: it is not in the difference). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as workloads  # noqa: E402

DRIVER = r'''
import os, sys, time
root, home, g, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
out = sys.argv[5] if len(sys.argv) > 5 else None
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, root)
from dagrun import events as ev, statuscache
from dagrun.engine import Engine
from dagrun.status import goal_detail
from dagrun.store import Home
h = Home(home)
tdir = h.tasks_dir(g)

orig = {n: os.stat(os.path.join(tdir, n)).st_mtime_ns for n in os.listdir(tdir)}
last = max(orig.values())

def reopen():
    for p in (h.summary_path(g), statuscache.path(h, g)):
        try:
            os.remove(p)
        except FileNotFoundError:
            pass
    shift = time.time_ns() - last      # every folder as recent as it was when the run ended
    for n, m in orig.items():
        os.utime(os.path.join(tdir, n), ns=(m + shift, m + shift))

reopen()
eng = Engine(h, goal=g, jobs=8)
ev.hold()
eng._discover()           # the goal's end happens here already (no summary.json): rep 0
ev.flush()
gs = eng.goals[g]
import gc
gc.freeze()       # what a worker's engine does after its first discovery (bulk.settled)
from dagrun import summary
if hasattr(summary, "EventTally"):
    # what the engine's reader counted during the run (Reconciler._feed): every line after
    # the submit's (the reader started where they end); the ends then read only the rest
    path = h.events_path(g)
    head = 0
    with open(path, "rb") as f:
        for line in f:
            if b'"worker":"submit"' not in line:
                break
            head += len(line)
    size = os.path.getsize(path)
    gs.tally = summary.EventTally()
    gs.tally.add(list(ev.iter_all(path, start=head, stop=size)), head, size)
cpu = []
for _ in range(reps):
    reopen()
    gs.finished = False
    t0 = time.thread_time()
    eng._check_ended(gs)
    ev.flush()
    goal_detail(h, g, fresh=eng.fresh.get(g))
    cpu.append(time.thread_time() - t0)
ev.release()
if out:
    import shutil
    os.makedirs(out, exist_ok=True)
    for p in (h.summary_path(g), statuscache.path(h, g)):
        if os.path.exists(p):
            shutil.copy(p, out)
print(" ".join(f"{x:.6f}" for x in cpu))
'''


def driver() -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(DRIVER)
    return f.name


def cpu(roots: list[str], home: str, g: str, reps: int, keep_in: str | None = None) -> dict[str, list[float]]:
    """--cpu: the thread's CPU of each end (time.thread_time, syscalls included), the trees
    alternating, `reps` ends per driver run."""
    name = driver()
    out: dict[str, list[float]] = {r: [] for r in roots}
    try:
        for rnd in range(5):
            for root in (roots if rnd % 2 == 0 else roots[::-1]):
                keep = [os.path.join(keep_in, str(roots.index(root)))] if keep_in else []
                p = subprocess.run([sys.executable, name, os.path.abspath(root), home, g, str(reps), *keep],
                                   capture_output=True, text=True, check=True)
                out[root] += [float(x) for x in p.stdout.split()]
    finally:
        os.remove(name)
    return out


def instructions(root: str, home: str, g: str, reps: int) -> int:
    name = driver()
    try:
        p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                            sys.executable, name, os.path.abspath(root), home, g, str(reps)],
                           capture_output=True, text=True)
    finally:
        os.remove(name)
    m = re.search(r"Collected : (\d+)", p.stderr)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"{root}: driver failed:\n{p.stderr[-2000:]}")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", default="fanout-500", help="fanout-N or layered-WxD")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="CPU time per end (no valgrind): 5 rounds of --reps ends")
    ap.add_argument("--home", help="a finished home to end a goal of (no plan is run)")
    ap.add_argument("--goal", help="with --home: the goal")
    ap.add_argument("--out", help="--cpu: keep each tree's summary.json and status.cache in OUT/<n>")
    ap.add_argument("roots", nargs="+")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="dagrun-end-instr-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    try:
        if a.home:
            if not a.goal:
                raise SystemExit("--home needs --goal")
            home, g = os.path.abspath(a.home), a.goal
            with open(os.path.join(home, "goals", g, "plan.json"), "rb") as f:
                ids = json.loads(f.read())["tasks"]
            a.plan = f"{home}:{g}"
        else:
            ids, deps = workloads.by_name(a.plan)
            workloads.write_workload(os.path.join(d, "w"), "g", ids, deps)
            home, g = os.path.join(d, "home"), "g"
            subprocess.run([os.path.join(os.path.dirname(sys.executable), "dagrun"), "run",
                            os.path.join(d, "w", "dag.json"), "-j", "8", "-q"], check=True,
                           env={**os.environ, "DAGRUN_HOME": home}, stdout=subprocess.DEVNULL)
        if a.cpu:
            res = cpu(a.roots, home, g, a.reps, a.out)
            print(f"goal end of {a.plan} ({len(ids)} tasks): CPU of one end (time.thread_time), median of "
                  f"{5 * a.reps}, trees alternating; load average {os.getloadavg()[0]:.1f} at the end\n")
            print("| tree | one end (ms CPU) |\n|---|---:|")
            for root, xs in res.items():
                print(f"| `{root}` | {statistics.median(xs) * 1000:.1f} |")
            return 0
        print(f"goal end of {a.plan} ({len(ids)} tasks): instructions (callgrind) of one end, "
              f"the difference of {a.reps} ends and none, divided by {a.reps}\n")
        print("| tree | one end (M instr) | per task (k instr) |\n|---|---:|---:|")
        for root in a.roots:
            base = instructions(root, home, g, 0)
            more = instructions(root, home, g, a.reps)
            one = (more - base) / a.reps
            print(f"| `{root}` | {one / 1e6:.1f} | {one / len(ids) / 1e3:.1f} |", flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
