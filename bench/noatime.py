#!/usr/bin/env python3
"""What an atime update costs a read of a freshly written file (why dagrun reads with O_NOATIME).

    python3 bench/noatime.py --scratch /mnt/x [-n 100000]

Writes N small files twice in each of two folders under SCRATCH (the second write puts
mtime after atime: under `relatime` the next read then updates the atime, as a goal's end
reading every `done` marker did), `sync`s, then reads every file of one folder plainly and
every file of the other with O_NOATIME, through a dir fd, and times each: wall, CPU, and the
`sync` right after (the write-back the reads left). Prints two lines. Nothing here asserts
(docs/performance.md, "100 000-task goals: where the last few percent go").
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time


def _write(d: str, n: int) -> None:
    os.makedirs(d)
    for body in (b"x" * 200, b"y" * 220):
        for i in range(n):
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(body)
        time.sleep(0.02)


def _read_all(d: str, n: int, flags: int) -> tuple[float, float, float]:
    t, c = time.perf_counter(), time.process_time()
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            fd = os.open(f"f{i}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | flags, dir_fd=dfd)
            os.read(fd, 65536)
            os.close(fd)
    finally:
        os.close(dfd)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    os.sync()
    return round(wall, 3), round(cpu, 3), round(time.perf_counter() - t, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scratch", default=os.environ.get("BENCH_SCRATCH", "/tmp"))
    ap.add_argument("-n", type=int, default=100000)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="dagrun-noatime-", dir=a.scratch)
    try:
        _write(os.path.join(root, "plain"), a.n)
        _write(os.path.join(root, "noatime"), a.n)
        os.sync()
        for name, flags in (("plain", 0), ("noatime", getattr(os, "O_NOATIME", 0))):
            wall, cpu, sync = _read_all(os.path.join(root, name), a.n, flags)
            print(f"{name:8s} {a.n} files: read {wall} s wall, {cpu} s CPU; the sync after {sync} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
