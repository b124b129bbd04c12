#!/usr/bin/env python3
"""The loop thread's side of a run's first spawns: run as the `dagrun` command itself
(`python -P bench/first_spawn.py --home H run PLAN -q -j 8`, PYTHONPATH the tree to measure),
it wraps ProcessRunner.submit and spawned with time.thread_time / perf_counter and prints, at
the exit, one line to stderr:

    first-spawn <first submit's loop CPU ms> <first submit's return -> first spawn collected, wall ms>
                <CPU ms of submits 2-9 (a fan-out's first wave)> <wave's first submit -> its first spawn collected, wall ms>

docs/performance.md "2026-12-06 (12)". Alternate the trees and take medians: a single run
moves by milliseconds with the machine's load.
"""
import atexit
import sys
import time

from dagrun import executor as ex

marks: list = []


def _wrap(name: str) -> None:
    f = getattr(ex.ProcessRunner, name)

    def w(*a, **k):
        t, c = time.perf_counter(), time.thread_time()
        r = f(*a, **k)
        marks.append((name, t, time.perf_counter(), time.thread_time() - c, bool(r) if name == "spawned" else True))
        return r
    setattr(ex.ProcessRunner, name, w)


def _show() -> None:
    sub = [m for m in marks if m[0] == "submit"]
    got = [m for m in marks if m[0] == "spawned" and m[4]]
    if len(sub) < 2 or not got:
        print("first-spawn: fewer than two submits (a plan of one task?)", file=sys.stderr)
        return
    first, wave = sub[0], sub[1]
    later = [m for m in got if m[1] > wave[1]]
    print(f"first-spawn {first[3] * 1000:.3f} {(got[0][2] - first[2]) * 1000:.3f} "
          f"{sum(m[3] for m in sub[1:9]) * 1000:.3f} {(later[0][2] - wave[1]) * 1000 if later else float('nan'):.3f}",
          file=sys.stderr)


_wrap("submit")
_wrap("spawned")
atexit.register(_show)
from dagrun.entry import main  # noqa: E402

main(sys.argv[1:])
