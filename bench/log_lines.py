#!/usr/bin/env python3
"""CPU per log line of the worker's log (cli.common.LogLine), as 9fe0146 wrote it (print to
sys.stderr, flush) and through dagrun.linesink (this tree), on each kind of stderr: a regular
file, /dev/null (a character device: the tty path), and a pipe that `cat` reads. Interleaved
A/B rounds in one process; the median of the rounds, in microseconds of CPU (process_time)
per line. Lines go in batches of BATCH (the pipe: then the bench waits until cat has read
them), so the pipe case is a reader that keeps up: nothing waits in linesink's buffer.

    python bench/log_lines.py [--lines 20000] [--rounds 7]

Run from the checkout (it imports this tree's dagrun). Each round points fd 2 at the target.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import sys
import termios
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dagrun import linesink  # noqa: E402

BATCH = 400              # lines (~40 KB): fits a pipe's 64 KiB, so nothing waits or is dropped
LINE = "2026-12-06 05:24:22 big/t000 done attempt=1 worker=vm-18500 duration=0.0s exit_code=0"


def old(n: int) -> None:
    for _ in range(n):
        try:
            print(f"dagrun: {LINE}", file=sys.stderr, flush=True)
        except OSError:
            pass


def new(n: int) -> None:
    for _ in range(n):
        linesink.err(f"dagrun: {LINE}")


def target(kind: str, tmp: str):
    """(fd to put on 2, cleanup)"""
    if kind == "file":
        fd = os.open(os.path.join(tmp, "log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        return fd, lambda: None
    if kind == "devnull":
        return os.open(os.devnull, os.O_WRONLY), lambda: None
    out = os.path.join(tmp, "cat")
    with open(out, "wb") as f:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
    fd = os.dup(cat.stdin.fileno())
    cat.stdin.close()

    def done():
        cat.wait()
        with open(out, "rb") as f:
            got = f.read().count(b"\n")
        if got != n_lines[0]:
            print(f"pipe: {got} lines of {n_lines[0]} reached cat (the rest dropped)")
    return fd, done


n_lines = [0]


def one(kind: str, fn, n: int, tmp: str) -> float:
    n_lines[0] = n
    saved = os.dup(2)
    fd, done = target(kind, tmp)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        cpu = 0.0
        for _ in range(n // BATCH):        # a batch fits the pipe; then wait until cat read it
            t0 = time.process_time()
            fn(BATCH)
            cpu += time.process_time() - t0
            if kind == "pipe":
                while fcntl.ioctl(2, termios.FIONREAD, b"\0\0\0\0") != b"\0\0\0\0":
                    time.sleep(0.001)
        linesink.finish()
        return cpu / (n // BATCH * BATCH) * 1e6
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        done()


def main() -> int:
    import tempfile
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("file", "devnull", "pipe"):
            res: dict[str, list[float]] = {"9fe0146 print": [], "linesink": []}
            for _ in range(a.rounds):
                res["9fe0146 print"].append(one(kind, old, a.lines, tmp))
                res["linesink"].append(one(kind, new, a.lines, tmp))
            print(f"{kind:8} " + "  ".join(f"{k}: {statistics.median(v):.2f} us/line" for k, v in res.items()))
    print(f"load: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
