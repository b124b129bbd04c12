#!/usr/bin/env python3
"""A no-op layered run tenth by tenth: where a big goal's rate goes on disk.

    python3 bench/tenths.py --tasks 100000 --scratch /mnt/x [--jobs 16] [--dagrun D] [--keep]

Writes bench/scale.py's layered plan of N tasks, `dagrun submit`s it into a fresh
DAGRUN_HOME under SCRATCH, runs `dagrun worker --until-idle -j N` and samples every 0.5 s
meanwhile: the worker's threads (/proc/PID/task/*/stat: the loop thread is PID itself), the
machine's CPU split (/proc/stat: user, system, iowait), dirty and writeback memory
(/proc/vmstat), the load average, and the CPU of the kernel threads that do a file
system's deferred work (jbd2/*, kworker/*, loop*: the journal, writeback and a loop device's
I/O). After the run it cuts the run into tenths by the `done` events of events.jsonl (the
first `running` to the last `done`) and prints, per tenth: tasks/s, the loop thread's user
and system CPU per task, the whole machine's system and iowait CPU per task, the kernel
threads' CPU per task, and dirty/writeback MB at the tenth's end. Nothing here asserts.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import layered_plan  # noqa: E402
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dagrun.store import parse_iso  # noqa: E402  (the event lines' "ts": now_iso's form)

TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: str) -> tuple[float, float] | None:
    try:
        with open(path) as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rfind(")") + 2:].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def _children(pid: int) -> float:
    """CPU seconds of the worker's waited-for children (its agents)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0.0
    fields = s[s.rfind(")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) / TICK


SKIP = ("__schedule", "schedule", "io_schedule", "bit_wait", "__wait_on_bit", "out_of_line_wait_on_bit",
        "rwsem_down", "down_read", "down_write", "mutex_lock", "__mutex_lock", "wait_on_", "__wait_", "folio_wait",
        "jbd2_log_wait_commit", "__lock_buffer", "__bh_read", "bh_read", "__cond_resched", "entry_SYSCALL",
        "do_syscall_64", "x64_sys_call")


def blocked(pid: int, stop: threading.Event, out: list) -> None:
    """Every 10 ms: is the loop thread in uninterruptible sleep (D), and in which kernel function
    (the first frame of /proc/.../stack that is not a generic wait)? out gets (time, where)."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/task/{pid}/stat") as f:
                s = f.read()
            state = s[s.rfind(")") + 2]
            if state == "D":
                with open(f"/proc/{pid}/task/{pid}/stack") as f:
                    frames = [ln.split()[1].split("+")[0] for ln in f if ln.strip()]
                where = next((fr for fr in frames if not fr.startswith(SKIP)), "?")
                syscall = next((fr for fr in reversed(frames) if fr.startswith("__x64_sys_")), "?")
                out.append((time.time(), f"{syscall[10:]}:{where}"))
            else:
                out.append((time.time(), state))
        except (OSError, IndexError):
            pass
        time.sleep(0.01)


_KT: dict[str, float] = {}          # kernel thread pid -> its CPU seconds at the last look
_KT_TOTAL = [0.0, False]            # their CPU since the first look; whether there was one


def _kernel_threads() -> float:
    """CPU seconds the kernel threads whose names say file-system work (jbd2/*, kworker/*, loop*,
    ext4*) used since the first call: per thread, what it added since the last look (a
    kworker that exits takes its past with it, and must not count negative)."""
    first = not _KT_TOTAL[1]
    _KT_TOTAL[1] = True
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.find("(") + 1:s.rfind(")")]
        if comm.startswith(("jbd2/", "kworker/", "loop", "ext4")):
            fields = s[s.rfind(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            if not first:
                _KT_TOTAL[0] += max(0.0, cpu - _KT.get(pid, 0.0))
            _KT[pid] = cpu
    return _KT_TOTAL[0]


def _machine() -> tuple[float, float, float, float]:
    with open("/proc/stat") as f:
        v = [int(x) / TICK for x in f.readline().split()[1:]]
    return v[0] + v[1], v[2] + v[5] + v[6], v[4], v[3]        # user, system (+irq, softirq), iowait, idle


def _vm() -> tuple[float, float]:
    d = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k in ("nr_dirty", "nr_writeback"):
                d[k] = int(v) * 4096 / 2**20
    return d["nr_dirty"], d["nr_writeback"]


def sample(pid: int) -> dict:
    loop = _stat_cpu(f"/proc/{pid}/task/{pid}/stat") or (0.0, 0.0)
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            oncpu, runq, _ = (int(x) / 1e9 for x in f.read().split())
    except (OSError, ValueError):
        oncpu = runq = 0.0
    others = [0.0, 0.0]
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        if int(tid) != pid:
            c = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
            if c:
                others[0] += c[0]
                others[1] += c[1]
    mu, ms, mio, midle = _machine()
    dirty, wb = _vm()
    return {"t": time.time(), "loop_u": loop[0], "loop_s": loop[1], "loop_cpu": oncpu, "loop_runq": runq, "thr_u": others[0], "thr_s": others[1],
            "m_user": mu, "m_sys": ms, "m_io": mio, "m_idle": midle, "kthreads": _kernel_threads(), "children": _children(pid),
            "dirty": dirty, "wb": wb, "load": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=100000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--scratch", default=os.environ.get("BENCH_SCRATCH", "/tmp"))
    ap.add_argument("--dagrun", default=os.path.join(os.path.dirname(sys.executable), "dagrun"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None, help="also write the samples and tenths here")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="tenths-", dir=a.scratch)
    home = os.path.join(root, "home")
    env = dict(os.environ, DAGRUN_HOME=home)
    plan = os.path.join(root, "dag.json")
    with open(plan, "w") as f:
        json.dump(layered_plan(a.tasks, a.width), f)
    subprocess.run([a.dagrun, "submit", plan], env=env, check=True, stdout=subprocess.DEVNULL)
    samples = []
    with tempfile.TemporaryFile() as err:
        t0 = time.time()
        p = subprocess.Popen([a.dagrun, "worker", "--until-idle", "-j", str(a.jobs)], env=env,
                             stdout=subprocess.DEVNULL, stderr=err)
        states: list = []
        stop = threading.Event()
        th = threading.Thread(target=blocked, args=(p.pid, stop, states), daemon=True)
        th.start()
        while p.poll() is None:
            samples.append(sample(p.pid))
            time.sleep(0.5)
        wall = time.time() - t0
        stop.set()
        th.join()
    goal = f"scale-{a.tasks}"
    done = []
    first = None
    with open(os.path.join(home, "goals", goal, "events.jsonl"), "rb") as f:
        for line in f:
            if b'"status":"done"' in line:
                done.append(parse_iso(json.loads(line)["ts"]))
            elif first is None and b'"status":"running"' in line:
                first = parse_iso(json.loads(line)["ts"])
    done.sort()
    n = len(done)
    print(f"{a.tasks} tasks on {a.scratch}: worker exit {p.returncode}, wall {wall:.1f} s, {n} done, "
          f"first running -> last done {done[-1] - first:.1f} s = {n / (done[-1] - first):.0f} tasks/s; "
          f"load {samples[0]['load']:.1f} -> {samples[-1]['load']:.1f}")
    ts = [s["t"] for s in samples]

    def at(t: float, k: str) -> float:            # the sampled series, linearly between samples
        i = bisect.bisect_left(ts, t)
        if i <= 0:
            return samples[0][k]
        if i >= len(ts):
            return samples[-1][k]
        s0, s1 = samples[i - 1], samples[i]
        w = (t - s0["t"]) / (s1["t"] - s0["t"])
        return s0[k] + w * (s1[k] - s0[k])

    print("| tenth | tasks/s | loop user/sys ms/task | loop on CPU / runqueue / off ms/task | other threads ms/task | machine sys / iowait / idle ms/task "
          "| kernel threads ms/task | agents ms/task | dirty / writeback MB at end | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    tenths = []
    edges = [first] + [done[min(n - 1, (k * n) // 10 - 1)] for k in range(1, 11)]
    for k in range(10):
        t_a, t_b = edges[k], edges[k + 1]
        m = (k + 1) * n // 10 - k * n // 10
        dt = max(t_b - t_a, 1e-9)

        def d(key: str) -> float:
            return (at(t_b, key) - at(t_a, key)) / m * 1000
        row = {"tenth": k + 1, "rate": m / dt, "loop_u": d("loop_u"), "loop_s": d("loop_s"),
               "loop_cpu": d("loop_cpu"), "loop_runq": d("loop_runq"),
               "loop_off": dt / m * 1000 - d("loop_cpu") - d("loop_runq"),
               "thr": d("thr_u") + d("thr_s"), "m_sys": d("m_sys"), "m_io": d("m_io"), "m_idle": d("m_idle"),
               "kthreads": d("kthreads"), "children": d("children"), "dirty": at(t_b, "dirty"), "wb": at(t_b, "wb"), "load": at(t_b, "load")}
        tenths.append(row)
        print(f"| {k + 1} | {row['rate']:.0f} | {row['loop_u']:.3f} / {row['loop_s']:.3f} | "
              f"{row['loop_cpu']:.3f} / {row['loop_runq']:.3f} / {row['loop_off']:.3f} | {row['thr']:.3f} | "
              f"{row['m_sys']:.3f} / {row['m_io']:.3f} / {row['m_idle']:.3f} | {row['kthreads']:.3f} | {row['children']:.3f} | "
              f"{row['dirty']:.0f} / {row['wb']:.0f} | {row['load']:.1f} |")
    print("\nthe loop thread's state every 10 ms, by tenth: samples in D (uninterruptible: syscall:where), "
          "R (running or runnable), S (sleeping)")
    import collections
    for k in range(10):
        c = collections.Counter(w for t, w in states if edges[k] <= t < edges[k + 1])
        total = sum(c.values()) or 1
        dl = sorted(((v, w) for w, v in c.items() if ":" in w), reverse=True)[:4]
        print(f"tenth {k + 1}: {total} samples, R {c['R'] * 100 // total} %, S {c['S'] * 100 // total} %, "
              f"D {sum(v for v, _ in dl) * 100 // total}+ %: " + ", ".join(f"{w} {v}" for v, w in dl))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"tasks": a.tasks, "scratch": a.scratch, "wall": wall, "tenths": tenths, "samples": samples, "states": states}, f)
    me = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\nthe samplers' own CPU: {me.ru_utime + me.ru_stime:.1f} s over the {wall:.1f} s run "
          f"(submit and the plan's writing included)")
    if a.keep:
        print(f"home kept: {home}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
