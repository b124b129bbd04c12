#!/usr/bin/env python3
"""Where the CPU of `dagrun validate` and `dagrun submit` of a big plan goes, step by step,
in this process (CPU seconds, time.process_time; the cyclic GC off as the one-shot commands
run) -- and the CPU of whole cold commands of small plans, several builds alternating.

    python bench/submit_phases.py                      # 100 000-task layered plan (bench/scale.py's)
    python bench/submit_phases.py --tasks 10000 --reps 3
    python bench/submit_phases.py --cold --baseline /work/main/.venv/bin/dagrun   # small plan, whole commands

The steps: parsing the JSON, the validator (plan.parse minus the parse), validate's longest
path (scheduler.depth), plan.json's canonical bytes (Task.to_dict, then orjson), and the rest
of edit.submit (writing the goal folder, then the status snapshot: status.refresh_snapshot,
timed apart). --cold: `dagrun submit` and `dagrun validate` of a 10-task plan, each build
--runs times (alternating, a fresh home each time): min and median CPU (user+sys, wait4).
Nothing here asserts: the numbers are for reading (docs/performance.md).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402  (bench/scale.py: the same layered plan)


def phases(n: int, width: int, reps: int) -> None:
    from dagrun import edit, plan as pm, status
    from dagrun.store import Home
    try:
        from dagrun.scheduler import depth
    except ImportError:            # an older build (run with its own python): validate built a Scheduler
        from dagrun.scheduler import Scheduler

        def depth(tasks):
            return max(Scheduler(tasks).height, default=0)

    gc.disable()
    T = time.process_time
    scratch = tempfile.mkdtemp(prefix="dagrun-phases-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    try:
        path = os.path.join(scratch, "dag.json")
        with open(path, "w") as f:
            json.dump(scale.layered_plan(n, width), f)
        raw = open(path, "rb").read()
        rows: dict[str, list[float]] = {}

        def rec(name, t0):
            rows.setdefault(name, []).append(T() - t0)

        real_refresh = status.refresh_snapshot
        for r in range(reps):
            home = Home(os.path.join(scratch, f"home{r}"))
            home.ensure()
            t0 = T()
            text = raw.decode()
            doc = pm._parse_json(text, path)
            rec("parse the JSON", t0)
            t0 = T()
            p = pm._Validator(text, path, os.path.abspath(path), "dag").plan(doc)
            rec("validate (the validator)", t0)
            t0 = T()
            depth(p.tasks)
            rec("validate's longest path", t0)
            t0 = T()
            d = p.to_dict()
            rec("plan.json: to_dict", t0)
            t0 = T()
            p.canonical()
            rec("plan.json: to_dict + orjson", t0)
            del d
            snap = []

            def timed_refresh(*a, **k):
                s = T()
                try:
                    return real_refresh(*a, **k)
                finally:
                    snap.append(T() - s)
            status.refresh_snapshot = timed_refresh
            try:
                t0 = T()
                edit.submit(home, path, plan=p)
                total = T() - t0
            finally:
                status.refresh_snapshot = real_refresh
            rows.setdefault("submit: the goal folder", []).append(total - sum(snap))
            rows.setdefault("submit: the status snapshot", []).append(sum(snap))
        print(f"{n} tasks, CPU seconds, median of {reps}")
        print("| step | CPU s |\n|---|---:|")
        for k, v in rows.items():
            print(f"| {k} | {statistics.median(v):.3f} |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def cold(builds: list[str], runs: int) -> None:
    scratch = tempfile.mkdtemp(prefix="dagrun-cold-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    try:
        path = os.path.join(scratch, "dag.json")
        with open(path, "w") as f:
            json.dump(scale.layered_plan(10, 5), f)
        cpu: dict[tuple[str, str], list[float]] = {}
        for _ in range(runs):
            for b in builds:
                for cmd in ("submit", "validate"):
                    home = tempfile.mkdtemp(dir=scratch)
                    p = subprocess.Popen([b, cmd, path], env=dict(os.environ, DAGRUN_HOME=home),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    _, _, ru = os.wait4(p.pid, 0)
                    cpu.setdefault((b, cmd), []).append(ru.ru_utime + ru.ru_stime)
        print(f"10-task plan, whole commands, CPU ms (user+sys), {runs} runs each, builds alternating")
        print("| build | command | min | median |\n|---|---|---:|---:|")
        for (b, cmd), v in cpu.items():
            print(f"| {b} | {cmd} | {min(v) * 1000:.0f} | {statistics.median(v) * 1000:.0f} |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="whole cold commands of a 10-task plan instead")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--dagrun", default=shutil.which("dagrun") or os.path.join(os.path.dirname(sys.executable), "dagrun"))
    ap.add_argument("--baseline", action="append", default=[], metavar="DAGRUN")
    a = ap.parse_args()
    if a.cold:
        cold([a.dagrun, *a.baseline], a.runs)
    else:
        phases(a.tasks, a.width, a.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
