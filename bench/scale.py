#!/usr/bin/env python3
"""dagrun at scale: a layered plan of N no-op tasks, timed command by command.

    python3 bench/scale.py                       # 10 000 and 100 000 tasks, -j 16
    python3 bench/scale.py --sizes 10000 --jobs 16 --json /tmp/scale.json
    python3 bench/scale.py --sizes 100000 --no-run   # validate, submit, status only
    python3 bench/scale.py --sizes 10000 --baseline /work/main/.venv/bin/dagrun   # two builds, same run

For every size, in a fresh DAGRUN_HOME (under $BENCH_SCRATCH, default /tmp): write dag.json
(layers of --width tasks, each depending on 2 random tasks of the layer above, agent `true`),
then time `dagrun validate`, `dagrun submit`, `dagrun status GOAL --json` (before the run),
`dagrun worker --until-idle -j N` (the no-op run: wall, tasks/s, the worker's CPU seconds and
peak RSS: its own, `worker_hwm_mb`, /proc's VmHWM sampled every 20 ms, and wait4(2)'s
ru_maxrss, `worker_rss_mb`, an upper bound -- it starts from this driver's RSS at the fork,
which the kernel carries across exec; `sync` before it, untimed, and after it, timed: `sync_after_s`,
and `tasks_per_s_synced` counts the write-back of the files the run made, which a run shorter
than the kernel's dirty_expire_centisecs -- 30 s -- leaves until after it exits, and a longer
one pays while it runs; `machine_cpu_s`, the whole machine's busy CPU while it ran, and
`other_cpu_s`, that beyond the worker's: kernel threads, anything else running), and `status
GOAL --json` again after the run (every task done). Each command
also records the 1-minute load average before it ran (the machine may be shared: CPU seconds
are the figures to compare then). `status GOAL --json` is timed twice each time: the first
call, and a second one (`status_before2`, `status_after2`), which finds what the first left
(the status snapshot of statuscache.py). --baseline DAGRUN (repeatable) runs the same
sequence with other dagrun builds, one size at a time, builds alternating, so both are
measured at the same moment of a shared machine. Prints one JSON object per size and build
and a table. Nothing here asserts: the numbers are for reading.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time


def layered_plan(n: int, width: int, k: int = 2, seed: int = 1) -> dict:
    rng = random.Random(seed)
    tasks, prev = [], []
    for start in range(0, n, width):
        layer = [f"t{i:06d}" for i in range(start, min(n, start + width))]
        for t in layer:
            tasks.append({"id": t, "deps": sorted(rng.sample(prev, min(k, len(prev)))), "prompt": f"no-op {t}"})
        prev = layer
    return {"goal": f"scale-{n}", "defaults": {"agent": "true"}, "tasks": tasks}


HWM: dict[str, int] = {}            # the last command's own peak RSS in kB (VmHWM, sampled every 20 ms), by name
CPU: dict[str, float] = {}          # the last command's user+sys seconds (wait4), by name
LOAD: dict[str, float] = {}         # the 1-minute load average when it started, by name


def timed(argv: list[str], env: dict) -> tuple[float, int, int, bytes]:
    """wall seconds, exit code, peak RSS in kB (of the child and its waited-for children), stdout.
    The CPU seconds (user+sys, children included) land in CPU[argv[1]]: on a shared machine
    they vary far less than wall time."""
    load = round(os.getloadavg()[0], 1)
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:   # files: a chatty worker never blocks
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, env=env, stdout=fo, stderr=fe)
        hwm = 0
        while True:                        # the child's own peak: /proc's VmHWM, sampled (below)
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            hwm = max(hwm, _vm_hwm_kb(p.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    CPU[argv[1]] = ru.ru_utime + ru.ru_stime
    LOAD[argv[1]] = load
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.stderr.write(f"{' '.join(argv[:3])}: exit {p.returncode}: {err.decode()[-400:]}\n")
    HWM[argv[1]] = hwm
    return wall, p.returncode, ru.ru_maxrss, out


def _vm_hwm_kb(pid: int) -> int:
    """The peak RSS of pid's own address space (VmHWM), 0 if it cannot be read. wait4's
    ru_maxrss is not that: a child forked (or vforked) by this driver starts with the driver's
    RSS at that moment as its floor -- the kernel carries the old address space's peak into
    signal->maxrss at exec -- so after a 100 000-task plan was written here, a 10 000-task
    worker's ru_maxrss read 145 MB against its own ~60 MB."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _machine_busy_s() -> float:
    """CPU seconds the machine has been busy since boot (all CPUs: /proc/stat's first line,
    everything but idle and iowait; 0 where there is no /proc)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def one(n: int, a, scratch: str, dagrun: str, build: str) -> dict:
    folder = os.path.join(scratch, f"scale-{n}-{build}")
    os.makedirs(folder)
    plan_path = os.path.join(folder, "dag.json")
    with open(plan_path, "w") as f:
        json.dump(layered_plan(n, a.width), f)
    env = dict(os.environ, DAGRUN_HOME=os.path.join(folder, "home"))
    goal = f"scale-{n}"
    r: dict = {"build": build, "tasks": n, "width": a.width, "jobs": a.jobs}
    r["validate_s"], rc, _, _ = timed([dagrun, "validate", plan_path], env)
    r["submit_s"], rc, _, _ = timed([dagrun, "submit", plan_path], env)
    r["validate_cpu_s"] = round(CPU["validate"], 3)
    r["submit_cpu_s"] = round(CPU["submit"], 3)
    r["validate_load"], r["submit_load"] = LOAD["validate"], LOAD["submit"]
    r["status_before_s"], rc, _, _ = timed([dagrun, "status", goal, "--json"], env)
    r["status_before_cpu_s"] = round(CPU["status"], 3)
    r["status_before_load"] = LOAD["status"]
    r["status_before2_s"], rc, _, _ = timed([dagrun, "status", goal, "--json"], env)
    r["status_before2_cpu_s"] = round(CPU["status"], 3)
    if a.no_run:
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
    os.sync()                   # what validate/submit (or the last run) left dirty is written now,
    #                             not by the kernel's flusher inside the timed run (untimed)
    busy0 = _machine_busy_s()
    wall, rc, rss, _ = timed([dagrun, "worker", "--until-idle", "-j", str(a.jobs)], env)
    busy = _machine_busy_s() - busy0
    t0 = time.perf_counter()
    os.sync()                   # the run's own files, still dirty when it exited: written now, timed
    r["sync_after_s"] = round(time.perf_counter() - t0, 3)
    r["run_s"], r["run_ok"], r["worker_rss_mb"] = round(wall, 3), rc == 0, round(rss / 1024, 1)
    # the rate counting the write-back of what the run wrote (a short run exits before the
    # kernel's flusher starts on its files -- dirty_expire_centisecs, 30 s by default -- a
    # long one pays for it while it runs: the fair comparison of a 10 000- and a 100 000-task
    # run, docs/performance.md, fifteenth session)
    r["tasks_per_s_synced"] = round(n / (wall + r["sync_after_s"]), 1)
    # CPU the whole machine spent while the run lasted beyond the worker's and its agents'
    # (kernel threads -- the flusher, jbd2 -- and anything else running): /proc/stat
    r["machine_cpu_s"] = round(busy, 3)
    r["worker_hwm_mb"] = round(HWM["worker"] / 1024, 1)     # its own peak (sampled VmHWM); rss is wait4's bound
    r["tasks_per_s"] = round(n / wall, 1)
    r["run_cpu_s"] = round(CPU["worker"], 3)
    r["other_cpu_s"] = round(busy - CPU["worker"], 3)
    r["run_load"] = LOAD["worker"]
    r["run_load_after"] = round(os.getloadavg()[0], 1)
    r["status_after_s"], rc, _, out = timed([dagrun, "status", goal, "--json"], env)
    r["status_after_cpu_s"] = round(CPU["status"], 3)
    r["status_after_load"] = LOAD["status"]
    r["status_after2_s"], rc, _, _ = timed([dagrun, "status", goal, "--json"], env)
    r["status_after2_cpu_s"] = round(CPU["status"], 3)
    try:
        counts = json.loads(out).get("counts", {})
    except ValueError:
        counts = {}
    r["done"] = counts.get("done", 0)
    for key in ("validate_s", "submit_s", "status_before_s", "status_after_s", "status_before2_s", "status_after2_s"):
        r[key] = round(r[key], 3)
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--width", type=int, default=100, help="tasks per layer")
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--dagrun", default=shutil.which("dagrun") or os.path.join(os.path.dirname(sys.executable), "dagrun"))
    ap.add_argument("--baseline", action="append", default=[], metavar="DAGRUN",
                    help="another dagrun build to measure in the same run (repeatable)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the homes (printed)")
    ap.add_argument("--no-run", action="store_true", help="validate, submit and status only (no worker run)")
    a = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="dagrun-scale-", dir=os.environ.get("BENCH_SCRATCH", "/tmp"))
    rows = []
    try:
        builds = [("this", a.dagrun)] + [(f"baseline{i + 1}", b) for i, b in enumerate(a.baseline)]
        for n in (int(s) for s in a.sizes.split(",")):
            for build, dagrun in builds:
                r = one(n, a, scratch, dagrun, build)
                rows.append(r)
                print(json.dumps(r), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"homes kept under {scratch}", file=sys.stderr)
    print("\nwall seconds (CPU seconds, user+sys, in brackets; the 1-minute load average before each command in the JSON)")
    if a.baseline:
        print("builds: this = %s; %s" % (a.dagrun, "; ".join(f"baseline{i + 1} = {b}" for i, b in enumerate(a.baseline))))
    print("\n| build | tasks | validate | submit | status before | again | run -j %d | tasks/s | then sync | tasks/s with it "
          "| worker RSS (MB): own peak, wait4's | status after | again | done |" % a.jobs)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        r = {"run_s": "-", "tasks_per_s": "-", "sync_after_s": "-", "tasks_per_s_synced": "-", "worker_rss_mb": "-", "worker_hwm_mb": "-", "status_after_s": "-", "status_after2_s": "-",
             "done": "-", **r}

        def c(k):
            return f"{r[k + '_s']} ({r[k + '_cpu_s']})" if k + "_cpu_s" in r else f"{r[k + '_s']}"
        print(f"| {r['build']} | {r['tasks']} | {c('validate')} | {c('submit')} | {c('status_before')} | "
              f"{c('status_before2')} | {c('run')} | {r['tasks_per_s']} | {r['sync_after_s']} | {r['tasks_per_s_synced']} | {r['worker_hwm_mb']}, {r['worker_rss_mb']} | {c('status_after')} | "
              f"{c('status_after2')} | {r['done']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
