#!/usr/bin/env python3
"""The file-system work of N no-op tasks, without the engine: what it costs per task, tenth by tenth.

    python3 bench/fs_tasks.py --parent /mnt/x -n 100000 [--layout topdir|plain] [--keep]

In a fresh goal-like folder under PARENT (its tasks/ marked `chattr +T` as edit._create_goal
does, or not with --layout plain) this thread does, per task, the metadata operations a
worker's loop thread does for a no-op task (strace of `dagrun worker` on main 182f097):
mkdir tasks/T, mkdir tasks/T/claim, create prompt.md (111 bytes), create
claim/.owner.json.PID.tmp (524 bytes) and rename it to claim/owner.json, create output (empty),
rename claim/owner.json to T/.done.PID.tmp and write it (225 bytes), rename that to T/done,
rmdir claim; plus one events.jsonl line of 150 bytes per transition (three). No agent, no
Python engine: the rate and the thread's own system CPU per task are the file system's. Prints
per tenth: tasks/s, user and system ms per task of this thread, and the thread's time off the
CPU per task (blocked: wall - on CPU - runqueue wait, from /proc/self/task/TID/schedstat).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dagrun.fsio import mark_top_dir  # noqa: E402


def sched() -> tuple[float, float]:
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        a, b, _ = f.read().split()
    return int(a) / 1e9, int(b) / 1e9


def write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)


def one(tasks: str, name: str, ev: int, pid: int) -> None:
    t = f"{tasks}/{name}"
    line = b'{"ts":"2026-12-06T16:17:33.635198Z","type":"agent.task.status.updated","goal":"g","task":"' \
        + name.encode() + b'","status":"running","worker":"w"}\n'
    os.mkdir(t)
    os.mkdir(f"{t}/claim")
    write_new(f"{t}/prompt.md", b"p" * 111)
    os.write(ev, line)
    write_new(f"{t}/claim/.owner.json.{pid}.tmp", b"o" * 524)
    os.rename(f"{t}/claim/.owner.json.{pid}.tmp", f"{t}/claim/owner.json")
    write_new(f"{t}/output", b"")
    os.write(ev, line)
    os.rename(f"{t}/claim/owner.json", f"{t}/.done.{pid}.tmp")
    fd = os.open(f"{t}/.done.{pid}.tmp", os.O_WRONLY)
    os.write(fd, b"d" * 225)
    os.ftruncate(fd, 225)
    os.close(fd)
    os.rename(f"{t}/.done.{pid}.tmp", f"{t}/done")
    os.rmdir(f"{t}/claim")
    os.write(ev, line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parent", default=tempfile.gettempdir())
    ap.add_argument("-n", type=int, default=100000)
    ap.add_argument("--layout", choices=("topdir", "plain"), default="topdir")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="fs-tasks-", dir=a.parent)
    tasks = os.path.join(root, "tasks")
    os.mkdir(tasks)
    marked = a.layout == "topdir" and mark_top_dir(tasks)
    ev = os.open(os.path.join(root, "events.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.getpid()
    print(f"{a.n} tasks under {a.parent}, layout {a.layout} (+T {'set' if marked else 'not set'}); load "
          f"{os.getloadavg()[0]:.1f}")
    print("| tenth | tasks/s | user / system ms per task | on CPU / runqueue / blocked ms per task |")
    print("|---|---:|---:|---:|")
    tenth = a.n // 10
    tot = [0.0] * 5
    try:
        i = 0
        for k in range(10):
            r0, s0, w0 = os.times(), sched(), time.perf_counter()
            for i in range(i, i + tenth):
                one(tasks, f"t{i:06d}", ev, pid)
            i += 1
            r1, s1, w1 = os.times(), sched(), time.perf_counter()
            wall, u, s = w1 - w0, r1.user - r0.user, r1.system - r0.system
            cpu, runq = s1[0] - s0[0], s1[1] - s0[1]
            f = 1000 / tenth
            for j, v in enumerate((wall, u, s, cpu, runq)):
                tot[j] += v
            print(f"| {k + 1} | {tenth / wall:.0f} | {u * f:.3f} / {s * f:.3f} | {cpu * f:.3f} / {runq * f:.3f} / "
                  f"{(wall - cpu - runq) * f:.3f} |", flush=True)
        f = 1000 / (tenth * 10)
        print(f"| all | {tenth * 10 / tot[0]:.0f} | {tot[1] * f:.3f} / {tot[2] * f:.3f} | {tot[3] * f:.3f} / "
              f"{tot[4] * f:.3f} / {(tot[0] - tot[3] - tot[4]) * f:.3f} |  load {os.getloadavg()[0]:.1f}")
    finally:
        os.close(ev)
        if a.keep:
            print(f"kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
