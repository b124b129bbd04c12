#!/usr/bin/env python3
"""Latency of the worker protocol, measured end to end with the installed `dagrun`.

  .venv/bin/python bench/latency.py                 # everything, 3 repetitions
  .venv/bin/python bench/latency.py --only external --pairs 200 --reps 5

external   A bash script calls `dagrun complete` on task A (claimed earlier by the script);
           a `dagrun worker` that is already running must start A's dependent B. Latency =
           B's `running` event minus A's `done` event (both wall-clock stamps in events.jsonl,
           written by the two processes), and B's agent's first `date` minus A's `done`.
           With inotify (target p50 < 20 ms, p99 < 50 ms) and with --poll 0.5 (p99 < 1 s).
submit     `dagrun submit` of a new goal while a daemon worker idles: plan.created -> the
           first task running.
cold       wall time of `dagrun submit` of a new 3-task goal (target < 100 ms), `dagrun claim`
           (a real claim) and `dagrun complete` (a real commit) as a bash loop pays it:
           process start, imports, work (target < 150 ms). Measured
           with dagrun's bytecode cache in place (what pip installs leave) and without it
           (an editable install under PYTHONDONTWRITEBYTECODE=1). Note: this writes and
           removes dagrun/__pycache__ in the checkout.

Each repetition uses a fresh home; the report shows each repetition's p50/p99 and the median
over repetitions. Nothing here is asserted: the machine may be shared and noisy.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

BIN = Path(sys.executable).parent / "dagrun"
DAGRUN = str(BIN) if BIN.exists() else "dagrun"
REPO = Path(__file__).resolve().parent.parent


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]


def env_for(home: Path, **extra) -> dict:
    e = dict(os.environ, DAGRUN_HOME=str(home))
    e["PATH"] = str(Path(DAGRUN).parent) + os.pathsep + e.get("PATH", "")
    e.update(extra)
    return e


def dagrun(home: Path, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([DAGRUN, *args], env=env_for(home), capture_output=True, text=True, check=True, **kw)


def write_plan(folder: Path, goal: str, tasks: list[dict], **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{goal}.json"
    p.write_text(json.dumps({"goal": goal, **top, "tasks": tasks}))
    return p


def events(home: Path, goal: str) -> list[dict]:
    p = home / "goals" / goal / "events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def wait(pred, timeout: float = 30.0, step: float = 0.001):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(step)
    raise TimeoutError("timed out")


def start_worker(home: Path, *args) -> subprocess.Popen:
    p = subprocess.Popen([DAGRUN, "worker", "-j", "4", "--name", "bench", *args], env=env_for(home),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    wait(lambda: (home / "goals").is_dir())
    time.sleep(0.5)
    return p


def stop_worker(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGTERM)
    p.communicate(timeout=30)


# ------------------------------------------------------------------------------ external complete -> B
def external(pairs: int, poll: float | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="dagrun-bench-") as tmp:
        tmp = Path(tmp)
        home, stamps = tmp / "home", tmp / "stamps"
        stamps.mkdir()
        tasks = []
        for i in range(pairs):
            tasks.append({"id": f"a{i}", "prompt": "claimed by the script"})
            tasks.append({"id": f"b{i}", "prompt": "run by the worker", "deps": [f"a{i}"],
                          "agent": f"date +%s.%N > {stamps}/$DAGRUN_TASK"})
        dagrun(home, "submit", str(write_plan(tmp / "plan", "lat", tasks, defaults={"agent": "true"})))
        # the "script" holds every a_i: claims belong to this process (--pid)
        for _ in range(pairs):
            dagrun(home, "claim", "--pid", str(os.getpid()), "lat")
        w = start_worker(home, *(["--poll", str(poll)] if poll else []))
        try:
            for i in range(pairs):
                subprocess.run(["bash", "-c", f'dagrun complete --pid {os.getpid()} lat a{i}'],
                               env=env_for(home), check=True)
                wait(lambda: (stamps / f"b{i}").exists(), timeout=10)
                time.sleep(0.02 + (i % 7) * 0.01)        # desynchronise from any periodic timer
        finally:
            stop_worker(w)
        ev = events(home, "lat")
        done = {e["task"]: ts(e["ts"]) for e in ev if e.get("status") == "done" and e["task"].startswith("a")}
        running = {e["task"]: ts(e["ts"]) for e in ev if e.get("status") == "running" and e["task"].startswith("b")}
        ev_lat = [(running[f"b{i}"] - done[f"a{i}"]) * 1000 for i in range(pairs)]
        ag_lat = [(float((stamps / f"b{i}").read_text()) - done[f"a{i}"]) * 1000 for i in range(pairs)]
        return {"event": ev_lat, "agent": ag_lat}


# ------------------------------------------------------------------------------ submit -> first running
def submit(goals: int, poll: float | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="dagrun-bench-") as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        (home / "goals").mkdir(parents=True)
        w = start_worker(home, *(["--poll", str(poll)] if poll else []))
        lat = []
        try:
            for k in range(goals):
                p = write_plan(tmp / "plan", f"s{k}", [{"id": "t", "prompt": "p"}], defaults={"agent": "true"})
                dagrun(home, "submit", str(p))
                wait(lambda: (home / "goals" / f"s{k}" / "tasks" / "t" / "done").exists(), timeout=10)
                ev = events(home, f"s{k}")
                t0 = ts(next(e["ts"] for e in ev if e["type"] == "agent.plan.created"))
                t1 = ts(next(e["ts"] for e in ev if e.get("status") == "running"))
                lat.append((t1 - t0) * 1000)
                time.sleep(0.03 + (k % 5) * 0.01)
        finally:
            stop_worker(w)
        return {"event": lat}


# ------------------------------------------------------------------------------ cold start
def cold(n: int, bytecode: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="dagrun-bench-") as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        plan = write_plan(tmp / "plan", "cold", [{"id": f"t{i}", "prompt": "p"} for i in range(n)],
                          defaults={"agent": "true"})
        dagrun(home, "submit", str(plan))
        e = env_for(home)
        if not bytecode:                 # dagrun's own modules compiled from source every time
            e["PYTHONDONTWRITEBYTECODE"] = "1"
            for d in (REPO / "dagrun").rglob("__pycache__"):
                shutil.rmtree(d)
        else:                            # what a pip install leaves behind
            compileall.compile_dir(str(REPO / "dagrun"), quiet=1)
        out = {"submit": [], "claim": [], "complete": []}
        me = str(os.getpid())
        for k in range(n):              # a new 3-task goal each time, as a bash loop submits them
            small = write_plan(tmp / "small", f"small{k}", [{"id": f"s{i}", "prompt": "p"} for i in range(3)],
                               defaults={"agent": "true"})
            t0 = time.perf_counter()
            subprocess.run([DAGRUN, "submit", str(small)], env=e, check=True, stdout=subprocess.DEVNULL)
            out["submit"].append((time.perf_counter() - t0) * 1000)
        for _ in range(n):
            t0 = time.perf_counter()
            r = subprocess.run([DAGRUN, "claim", "--pid", me, "cold"], env=e, capture_output=True, text=True)
            out["claim"].append((time.perf_counter() - t0) * 1000)
            task = r.stdout.strip()
            t0 = time.perf_counter()
            subprocess.run([DAGRUN, "complete", "--pid", me, "cold", task], env=e, check=True)
            out["complete"].append((time.perf_counter() - t0) * 1000)
        return out


def show(title: str, reps: list[dict]) -> None:
    print(f"\n{title}")
    for key in reps[0]:
        p50s = [statistics.median(r[key]) for r in reps]
        p99s = [pct(r[key], 99) for r in reps]
        runs = "  ".join(f"{a:7.1f}/{b:7.1f}" for a, b in zip(p50s, p99s))
        print(f"  {key:9s} p50/p99 ms per rep: {runs}   median p50 {statistics.median(p50s):7.1f}  "
              f"median p99 {statistics.median(p99s):7.1f}  (n={len(reps[0][key])} per rep)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=100, help="samples per repetition (external)")
    ap.add_argument("--goals", type=int, default=30, help="samples per repetition (submit)")
    ap.add_argument("--calls", type=int, default=30, help="samples per repetition (cold)")
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--only", choices=["external", "submit", "cold"])
    a = ap.parse_args()
    print(f"dagrun: {DAGRUN}  python {sys.version.split()[0]}  cpus {os.cpu_count()}  "
          f"load {os.getloadavg()[0]:.2f}")
    if a.only in (None, "cold"):
        show("cold start, bytecode cached", [cold(a.calls, True) for _ in range(a.reps)])
        show("cold start, dagrun's modules compiled every time (PYTHONDONTWRITEBYTECODE, no __pycache__)",
             [cold(a.calls, False) for _ in range(a.reps)])
    if a.only in (None, "external"):
        show("external complete(A) -> worker starts B, inotify",
             [external(a.pairs, None) for _ in range(a.reps)])
        show(f"external complete(A) -> worker starts B, --poll {a.poll:g}",
             [external(a.pairs, a.poll) for _ in range(a.reps)])
    if a.only in (None, "submit"):
        show("submit -> daemon starts the first task, inotify", [submit(a.goals, None) for _ in range(a.reps)])
        show(f"submit -> daemon starts the first task, --poll {a.poll:g}",
             [submit(a.goals, a.poll) for _ in range(a.reps)])
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
