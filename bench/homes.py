#!/usr/bin/env python3
"""Long-lived homes and submit cost, measured with the installed `dagrun`.

    .venv/bin/python bench/homes.py                       # both parts, default sizes
    .venv/bin/python bench/homes.py --only home --goals 1000 --tasks 10
    .venv/bin/python bench/homes.py --only submit --plans 100 --plan-tasks 100

home    A home that has served GOALS finished goals of TASKS tasks each: one goal is run for
        real (`dagrun run`, agent `cat`), then its folder is copied under GOALS-1 other ids
        (the goal id rewritten in every file), as months of a worker would leave it. Timed
        (median of --reps): `dagrun status` (the goal table), `status --json`, `events --all`
        (to /dev/null), `worker --until-idle` (start-up: discovery of every goal, nothing to
        run) and `gc --dry-run --keep 0`.
submit  PLANS plans of PLAN_TASKS tasks (a layered DAG): `dagrun submit` once per plan from a
        bash loop (each a cold process, as a script pays it), then all of them by one
        `dagrun submit a.json b.json ...`, each in a fresh home. Also the wall time of one
        `dagrun submit` of a 3-task plan (median of 20), and the same with
        DAGRUN_NO_FAST_PATH=1 (the typer path).

Each time is "wall (CPU)": the median wall time and the user+system CPU seconds the command
used, which a machine shared with other work inflates much less than wall time. Nothing here
asserts: the numbers are for reading.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "dagrun"
DAGRUN = str(BIN) if BIN.exists() else "dagrun"      # --dagrun CMD: another build (e.g. a checkout's)
TEMPLATE = "goal-zzzzz"           # as long as the ids below: offsets stay true


def env_for(home: Path, **extra) -> dict:
    e = dict(os.environ, DAGRUN_HOME=str(home))
    e.update(extra)
    return e


def cpu() -> float:
    """user + system CPU seconds of the finished child processes so far (what a command
    costs, much less sensitive than wall time to a machine shared with other work)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict, reps: int) -> str:
    """'median wall s (median CPU s)' over reps runs."""
    xs, cs = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), cpu()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        xs.append(time.perf_counter() - t0)
        cs.append(cpu() - c0)
    return f"{statistics.median(xs):.3f} ({statistics.median(cs):.3f} cpu)"


def make_home(root: Path, goals: int, tasks: int) -> Path:
    home = root / "home"
    plan = {"goal": TEMPLATE, "defaults": {"agent": "cat"},
            "tasks": [{"id": f"t{i:03d}", "prompt": f"step {i}", "deps": [f"t{i - 1:03d}"] if i else []}
                      for i in range(tasks)]}
    (root / "dag.json").write_text(json.dumps(plan))
    subprocess.run([DAGRUN, "run", str(root / "dag.json"), "-j", "4"], env=env_for(home), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    src = home / "goals" / TEMPLATE
    files = [p for p in src.rglob("*") if p.is_file()]
    for n in range(goals):
        g = f"goal-{n:05d}"
        dst = home / "goals" / g
        for p in files:
            q = dst / p.relative_to(src)
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(p.read_bytes().replace(TEMPLATE.encode(), g.encode()))
        # dirs without files (e.g. an empty hooks/) are recreated too
        for d in src.rglob("*"):
            if d.is_dir():
                (dst / d.relative_to(src)).mkdir(parents=True, exist_ok=True)
        old = time.time() - 86400 * (60 - n * 59 / max(1, goals))   # ended 60 .. 1 days ago
        os.utime(dst / "summary.json", (old, old))
    shutil.rmtree(src)
    return home


def bench_home(args) -> dict:
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        t0 = time.perf_counter()
        home = make_home(Path(d), args.goals, args.tasks)
        made = time.perf_counter() - t0
        env = env_for(home)
        r = {"goals": args.goals, "tasks_per_goal": args.tasks, "generate_s": round(made, 2)}
        for name, cmd in [("status", [DAGRUN, "status"]), ("status_json", [DAGRUN, "status", "--json"]),
                          ("events_all", [DAGRUN, "events", "--all"]),
                          ("worker_until_idle", [DAGRUN, "worker", "--until-idle", "-j", "4"]),
                          ("gc_dry_run_keep0", [DAGRUN, "gc", "--dry-run", "--keep", "0"])]:
            r[name + "_s"] = timed(cmd, env, args.reps)
        return r


def layered_plan(g: str, n: int, width: int = 10) -> dict:
    tasks = []
    for i in range(n):
        deps = [f"t{i - width:04d}"] if i >= width else []
        tasks.append({"id": f"t{i:04d}", "prompt": f"step {i}", "deps": deps})
    return {"goal": g, "defaults": {"agent": "true"}, "tasks": tasks}


def bench_submit(args) -> dict:
    r: dict = {"plans": args.plans, "tasks_per_plan": args.plan_tasks}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        root = Path(d)
        paths = []
        for i in range(args.plans):
            p = root / f"p{i:04d}.json"
            p.write_text(json.dumps(layered_plan(f"g{i:04d}", args.plan_tasks)))
            paths.append(str(p))
        small = root / "small.json"
        small.write_text(json.dumps(layered_plan("small", 3, width=1)))
        for label, extra in (("fast", {}), ("typer", {"DAGRUN_NO_FAST_PATH": "1"})):
            xs, cs = [], []
            for k in range(args.reps * 7):
                home = root / f"h-small-{label}-{k}"
                t0, c0 = time.perf_counter(), cpu()
                subprocess.run([DAGRUN, "submit", str(small)], env=env_for(home, **extra), check=True,
                               stdout=subprocess.DEVNULL)
                xs.append(time.perf_counter() - t0)
                cs.append(cpu() - c0)
            r[f"submit_small_{label}_median_s"] = f"{statistics.median(xs):.4f} ({statistics.median(cs):.4f} cpu)"
        loop = 'for f in "$@"; do "$DAGRUN" submit "$f" >/dev/null || exit 1; done'
        for label, extra in (("fast", {}), ("typer", {"DAGRUN_NO_FAST_PATH": "1"})):
            home = root / f"h-loop-{label}"
            t0, c0 = time.perf_counter(), cpu()
            subprocess.run(["bash", "-c", loop, "loop", *paths], env=env_for(home, DAGRUN=DAGRUN, **extra),
                           check=True)
            r[f"bash_loop_{label}_s"] = f"{time.perf_counter() - t0:.2f} ({cpu() - c0:.2f} cpu)"
        home = root / "h-multi"
        t0, c0 = time.perf_counter(), cpu()
        p = subprocess.run([DAGRUN, "submit", *paths], env=env_for(home), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        r["one_multi_submit_s"] = f"{time.perf_counter() - t0:.2f} ({cpu() - c0:.2f} cpu)" if p.returncode == 0 \
            else "unsupported"
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["home", "submit"])
    ap.add_argument("--goals", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--plans", type=int, default=100)
    ap.add_argument("--plan-tasks", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the temporary homes go (default: $TMPDIR)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dagrun", help="the dagrun command to time (default: the one beside this python), e.g. "
                                     "a wrapper script that runs another checkout")
    args = ap.parse_args()
    if args.dagrun:
        global DAGRUN
        DAGRUN = args.dagrun
    out = {}
    if args.only in (None, "home"):
        out["home"] = bench_home(args)
    if args.only in (None, "submit"):
        out["submit"] = bench_submit(args)
    if args.json:
        print(json.dumps(out))
        return
    for part, r in out.items():
        print(f"[{part}]")
        for k, v in r.items():
            print(f"  {k:28} {v}")


if __name__ == "__main__":
    main()
