"""Cost of resource units: take + give back one unit (rename-born slot, pool flock, rmtree),
and one read of a pool's free units, on the home's file system.

    .venv/bin/python bench/resources.py [N]      # N rounds (default 2000), home in a temp dir
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from dagrun import claim as claims
from dagrun import resources as res
from dagrun.store import Home


def main(n: int) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        home = Home(os.path.join(d, "home"))
        home.ensure()
        pool = res.Pool("home/gpu", "home", "gpu", 4)
        owner = claims.new_owner("bench", 1, kind="bench")
        owner["run_id"] = "bench:1"
        take, give, look = [], [], []
        for _ in range(n):
            t0 = time.perf_counter()
            units = res.acquire(home, "g", "t", {pool: 1}, owner, 60.0)
            t1 = time.perf_counter()
            res.release(home, units, owner["run_id"])
            t2 = time.perf_counter()
            res.free(home, [pool])
            t3 = time.perf_counter()
            take.append(t1 - t0)
            give.append(t2 - t1)
            look.append(t3 - t2)
        for name, xs in (("take 1 unit", take), ("give it back", give), ("read free units", look)):
            xs.sort()
            print(f"{name:16} median {statistics.median(xs) * 1e6:7.0f} us   p99 {xs[int(len(xs) * 0.99)] * 1e6:7.0f} us")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
