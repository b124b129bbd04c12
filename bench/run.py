#!/usr/bin/env python3
"""dagrun's own benchmark: dispatch overhead against make (and ninja) on the same no-op DAGs.

    python3 bench/run.py                      # chain-200 and layered-1000 (50 wide x 20 deep), -j 8, 5 reps
    python3 bench/run.py --reps 3 --jobs 8 --only layered --peers make,ninja
    python3 bench/run.py --home-on /dev/shm   # put DAGRUN_HOME on tmpfs: dagrun's CPU cost alone

Every run happens in a fresh folder. The peers build one stamp file per task
(`stamps/<id>`, recipe `true && touch $@`); dagrun runs `dag.json` with agent `true` and a
fresh DAGRUN_HOME. Reported: median wall time, dagrun / peer ratio measured in the same run,
and on the chain the per-edge gap = (last completion - first completion) / (N - 1), taken from
the mtimes of the stamp / `done` files (so start-up is excluded). The disk's inode-creation
latency is sampled during the run and printed, because it dominates the variance on virtual
disks (see ARCHITECTURE.md, Performance). Nothing here asserts: the numbers are for reading.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def chain(n: int):
    ids = [f"t{i:04d}" for i in range(1, n + 1)]
    return ids, {t: ([ids[i - 1]] if i else []) for i, t in enumerate(ids)}


def layered(width: int, depth: int, k: int = 2, seed: int = 1):
    rng = random.Random(seed)
    ids, deps, prev = [], {}, []
    for level in range(depth):
        layer = [f"t{level * width + i + 1:04d}" for i in range(width)]
        for t in layer:
            deps[t] = sorted(rng.sample(prev, k)) if prev else []
        ids += layer
        prev = layer
    return ids, deps


def fanout(n: int):
    """1 -> n -> 1: a source, n independent tasks, a sink that depends on all of them."""
    src, sink = "t0000", f"t{n + 1:04d}"
    mids = [f"t{i:04d}" for i in range(1, n + 1)]
    deps = {src: [], sink: list(mids)}
    deps.update({m: [src] for m in mids})
    return [src] + mids + [sink], deps


def by_name(name: str):
    """ids, deps of a workload named on a command line: one, fanout-N or layered-WxD."""
    if name == "one":
        return ["t1"], {"t1": []}
    if name.startswith("fanout-"):
        return fanout(int(name.split("-")[1]))
    w, depth = name.split("-")[1].split("x")
    return layered(int(w), int(depth))


def write_workload(folder: str, goal: str, ids, deps) -> None:
    os.makedirs(folder)
    plan = {"goal": goal, "defaults": {"agent": "true"},
            "tasks": [{"id": t, "deps": deps[t], "prompt": f"no-op task {t}"} for t in ids]}
    with open(os.path.join(folder, "dag.json"), "w") as f:
        json.dump(plan, f)
    with open(os.path.join(folder, "Makefile"), "w") as f:
        f.write("MAKEFLAGS += --no-builtin-rules\n.SUFFIXES:\nall: " + " ".join(f"stamps/{t}" for t in ids) + "\n")
        f.write("stamps:\n\tmkdir -p stamps\n")
        for t in ids:
            f.write(f"stamps/{t}: {' '.join('stamps/' + d for d in deps[t])} | stamps\n\ttrue && touch $@\n")
    with open(os.path.join(folder, "build.ninja"), "w") as f:
        f.write("rule noop\n  command = true && touch $out\n")
        for t in ids:
            f.write(f"build stamps/{t}: noop {' '.join('stamps/' + d for d in deps[t])}\n")
    with open(os.path.join(folder, "dodo.py"), "w") as f:
        f.write("import os\nos.makedirs('stamps', exist_ok=True)\n"
                "DOIT_CONFIG = {'verbosity': 0, 'default_tasks': ['t']}\n"
                f"TASKS = {[(t, deps[t]) for t in ids]!r}\n\n"
                "def task_t():\n"
                "    for tid, deps in TASKS:\n"
                "        yield {'name': tid, 'actions': ['true && touch stamps/' + tid],\n"
                "               'file_dep': ['stamps/' + d for d in deps], 'targets': ['stamps/' + tid]}\n")


def inode_probe(folder: str, n: int = 50) -> float:
    """Median microseconds to create a file right now (the disk's mood)."""
    d = tempfile.mkdtemp(dir=folder)
    times = []
    for i in range(n):
        t = time.perf_counter()
        os.close(os.open(os.path.join(d, f"p{i}"), os.O_CREAT | os.O_WRONLY, 0o644))
        times.append((time.perf_counter() - t) * 1e6)
    shutil.rmtree(d, ignore_errors=True)
    return statistics.median(times)


def _doit() -> str:
    """doit: $DOIT, else the one installed beside the running Python (a venv with
    `pip install -e '.[bench]'` need not be activated), else doit on PATH."""
    if os.environ.get("DOIT"):
        return os.environ["DOIT"]
    here = os.path.join(os.path.dirname(sys.executable), "doit")
    return here if os.access(here, os.X_OK) else "doit"


PEERS = {"make": "make", "ninja": "ninja", "doit": _doit()}
BASELINE: list[str] = []            # --baseline: the dagrun command of the build to compare with


def one(runner: str, src: str, scratch: str, jobs: int, dagrun: str, home_on: str | None, goal: str, n: int):
    work = os.path.join(scratch, f"{os.path.basename(src)}-{runner}")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    env = dict(os.environ)
    if runner == "make":
        argv, marks = ["make", "-s", "-j", str(jobs)], "stamps/*"
    elif runner == "ninja":
        argv, marks = ["ninja", "--quiet", "-j", str(jobs)], "stamps/*"
    elif runner == "doit":
        argv, marks = [PEERS["doit"], "-n", str(jobs), "-P", "process"], "stamps/*"
    else:                           # dagrun, or dagrun-base (--baseline: another build, same run)
        if runner.startswith("dagrun-base"):      # dagrun-base, dagrun-base2, ...
            dagrun = BASELINE[int(runner[len("dagrun-base"):] or 1) - 1]
        home = os.path.join(home_on or work, f".dagrun-{os.getpid()}")
        shutil.rmtree(home, ignore_errors=True)
        env["DAGRUN_HOME"] = home
        env.pop("PYTHONDONTWRITEBYTECODE", None)    # bytecode cached, as a pip install leaves it
        argv = [dagrun, "run", os.path.join(work, "dag.json"), "-j", str(jobs), "-q"]
        marks = os.path.join(home, "goals", goal, "tasks", "*", "done")
    os.sync()                       # the previous run's dirty pages: written back now, not
    time.sleep(0.3)                 # during this run (whoever ran after dagrun paid its 5 000 inodes)
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    pattern = marks if os.path.isabs(marks) else os.path.join(work, marks)
    mt = sorted(os.stat(m).st_mtime_ns for m in glob.glob(pattern))
    ok = p.returncode == 0 and len(mt) == n
    gap = (mt[-1] - mt[0]) / 1e6 / (len(mt) - 1) if len(mt) > 2 else None
    if runner.startswith("dagrun"):
        shutil.rmtree(env["DAGRUN_HOME"], ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    if not ok:
        sys.stderr.write(f"{runner} failed (rc {p.returncode}, {len(mt)}/{n} done): {p.stderr.decode()[-500:]}\n")
    return wall, gap, ok


def alternating(commands: list[str], reps: int, plan: str, scratch: str):
    """`CMD run PLAN -q -j 8` for each dagrun command (split on spaces) in reps + 1 rounds, the
    first untimed (bytecode written), the order reversed every other round, a fresh
    DAGRUN_HOME under scratch each run. Yields (round, command, home, t0, t1, rusage) of each
    run that exited 0 -- t0/t1 the wall clock (time.time) before the fork and after wait4 --
    and names the others on stderr (bench/one_task.py, bench/run_edges.py)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}   # bytecode cached
    home = os.path.join(scratch, "home")
    for r in range(reps + 1):
        for c in (commands if r % 2 == 0 else commands[::-1]):
            shutil.rmtree(home, ignore_errors=True)
            env["DAGRUN_HOME"] = home
            t0 = time.time()
            p = subprocess.Popen(c.split() + ["run", plan, "-j", "8", "-q"], env=env, stdout=subprocess.DEVNULL)
            _, status, ru = os.wait4(p.pid, 0)
            t1 = time.time()
            if os.waitstatus_to_exitcode(status) != 0:
                print(f"{c}: exit {os.waitstatus_to_exitcode(status)}", file=sys.stderr)
                continue
            yield r, c, home, t0, t1, ru


def warm_up(dagrun: str, scratch: str) -> None:
    """One untimed run of a one-task plan, so the build's bytecode is cached (pip compiles it
    at install; an editable install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile
    ~50 modules at every start, ~0.3-0.6 s that doit, also Python, does not pay)."""
    d = tempfile.mkdtemp(dir=scratch)
    write_workload(os.path.join(d, "w"), "warm-up", ["t1"], {"t1": []})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["DAGRUN_HOME"] = os.path.join(d, "home")
    subprocess.run([dagrun, "run", os.path.join(d, "w", "dag.json"), "-q"], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--only", default="chain,layered,fanout")
    ap.add_argument("--peers", default="make,ninja,doit",
                    help="peers to time beside dagrun, those installed (doit: $DOIT, beside this python, or on PATH; pip install -e '.[bench]')")
    ap.add_argument("--home-on", default=None, help="folder for DAGRUN_HOME (e.g. /dev/shm)")
    ap.add_argument("--dagrun", default=shutil.which("dagrun") or os.path.join(os.path.dirname(sys.executable), "dagrun"))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--baseline", action="append", default=[], metavar="CMD",
                    help="another dagrun command (e.g. an older checkout) timed in the same run as dagrun-base "
                         "(repeat: dagrun-base2, ...)")
    a = ap.parse_args()
    BASELINE.extend(a.baseline)

    scratch = tempfile.mkdtemp(prefix="dagrun-bench-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    workloads = {}
    if "chain" in a.only:
        workloads["chain-200"] = chain(200)
    if "layered" in a.only:
        workloads["layered-1000"] = layered(50, 20)
    if "fanout" in a.only:
        workloads["fan-out-500"] = fanout(498)
    runners = [p for p in a.peers.split(",") if p in PEERS and shutil.which(PEERS[p])] + ["dagrun"]
    for p in a.peers.split(","):
        if p and p not in runners:
            print(f"bench: peer {p} left out: " + (f"{PEERS[p]} not found" if p in PEERS else "unknown"), file=sys.stderr)
    runners += ["dagrun-base" + (str(i + 1) if i else "") for i in range(len(BASELINE))]
    results = {}
    probes = []
    for cmd in [a.dagrun] + BASELINE:
        warm_up(cmd, scratch)
    try:
        for name, (ids, deps) in workloads.items():
            src = os.path.join(scratch, "src", name)
            write_workload(src, name, ids, deps)
            for rep in range(a.reps):
                order = runners[:] if rep % 2 == 0 else runners[::-1]   # alternate to spread drift
                for r in order:
                    probes.append(inode_probe(scratch))
                    wall, gap, ok = one(r, src, scratch, a.jobs, a.dagrun, a.home_on, name, len(ids))
                    results.setdefault((name, r), []).append((wall, gap, ok))
                    print(f"  {name:13s} {r:7s} rep {rep + 1}: {wall:6.3f} s" +
                          (f"  gap {gap:5.2f} ms" if gap and name.startswith("chain") else ""), file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\ndagrun bench: -j {a.jobs}, {a.reps} reps, medians; DAGRUN_HOME on {a.home_on or 'the same disk'}; "
          f"inode creation during the run: median {statistics.median(probes):.0f} us "
          f"(min {min(probes):.0f}, max {max(probes):.0f})\n")
    print("| workload | runner | wall (s) | dagrun/runner | chain gap (ms) | gap ratio | ok |")
    print("|---|---|---:|---:|---:|---:|---:|")
    out = {}
    for name in workloads:
        med = {}
        for r in runners:
            rows = results.get((name, r), [])
            good = [x for x in rows if x[2]]
            if not good:
                print(f"| {name} | {r} | failed | | | | 0/{len(rows)} |")
                continue
            wall = statistics.median(x[0] for x in good)
            gap = statistics.median(x[1] for x in good) if name.startswith("chain") else None
            med[r] = (wall, gap)
            out[f"{name}/{r}"] = {"wall_s": wall, "gap_ms": gap, "ok": len(good), "reps": len(rows)}
        for r, (wall, gap) in med.items():
            ratio = med["dagrun"][0] / wall if "dagrun" in med and r != "dagrun" else None
            gratio = med["dagrun"][1] / gap if gap and "dagrun" in med and r != "dagrun" else None
            print(f"| {name} | {r} | {wall:.3f} | {f'{ratio:.2f}x' if ratio else ''} | "
                  f"{f'{gap:.2f}' if gap else ''} | {f'{gratio:.2f}x' if gratio else ''} | "
                  f"{out[f'{name}/{r}']['ok']}/{out[f'{name}/{r}']['reps']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"jobs": a.jobs, "reps": a.reps, "home_on": a.home_on, "inode_us": probes, "results": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
