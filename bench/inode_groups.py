#!/usr/bin/env python3
"""What a new inode costs next to recently deleted ones, with and without `chattr +T` on the
parent (fsio.mark_top_dir: what the engine gives each goal's tasks/ folder).

    python3 bench/inode_groups.py [--parent /tmp] [-n 2000] [--reps 3]

Each repetition: make N files in a fresh folder under PARENT and delete them (the churn a
test suite or a benchmark's `rm -rf` of its last home leaves), then time N creates
(open O_CREAT|O_EXCL + close) in another fresh folder under PARENT ("plain"), and the same
under a folder of PARENT marked +T ("topdir"). Prints wall and system time per create and
the block group of the first new inode (inode number / inodes per group, 8192 assumed).
Without a journal ext4 skips every inode freed in the last minute when it allocates one
(find_inode_bit -> recently_deleted): the "plain" creates pay for the churn, the "topdir"
ones land in a group Orlov picked. On a file system without the flag both lines are alike.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dagrun.fsio import mark_top_dir  # noqa: E402


def creates(folder: str, n: int) -> tuple[float, float, int]:
    os.mkdir(folder)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(n):
        os.close(os.open(f"{folder}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return (t1 - t0) / n * 1e6, (r1.ru_stime - r0.ru_stime) / n * 1e6, os.stat(f"{folder}/f0").st_ino


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parent", default=tempfile.gettempdir())
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="inode-groups-", dir=a.parent)
    top = os.path.join(root, "top")
    os.mkdir(top)
    marked = mark_top_dir(top)
    print(f"parent {a.parent}: +T {'set' if marked else 'not supported here'}")
    try:
        for rep in range(a.reps):
            churn = os.path.join(root, f"churn{rep}")
            creates(churn, a.n)
            shutil.rmtree(churn)
            for kind, parent in (("plain", root), ("topdir", top)):
                wall, sys_, ino = creates(os.path.join(parent, f"{kind}{rep}"), a.n)
                print(f"rep {rep + 1} {kind:6}: {wall:7.1f} us wall, {sys_:7.1f} us system per create; "
                      f"block group {ino // 8192}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
