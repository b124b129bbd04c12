"""`dagrun run --runner ray` of no-op plans (bench/cluster.py's chain and fan-out), several
dagruns interleaved, more repeats than bench/cluster.py can afford: each run's steady time per
task (from its events, start-up left out) and the driver's CPU (user+sys of the whole `dagrun
run` process, all its threads: a measure the machine's load moves much less than wall time).

    RAY_ADDRESS=... REPS=5 SHAPES=chain:40,fanout:100 \
      DAGRUNS="base=.venv/bin/python bench/other_checkout.py /tmp/old;now=.venv/bin/dagrun" \
      .venv/bin/python bench/ray_e2e.py
"""
from __future__ import annotations

import os
import resource
import shlex
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402


def main() -> None:
    reps = int(os.environ.get("REPS") or 5)
    spec = os.environ.get("DAGRUNS") or f"now={' '.join(cluster.DAGRUN)}"
    exes = {k: shlex.split(v) for k, _, v in (x.partition("=") for x in spec.split(";"))}
    shapes = [(s, int(n)) for s, _, n in (x.partition(":") for x in (os.environ.get("SHAPES") or
                                                                      "chain:40,fanout:100").split(","))]
    load0 = os.getloadavg()[0]
    m: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-e2e-") as root:
        for _ in range(reps):
            for shape, n in shapes:
                for k, exe in exes.items():
                    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    _, st = cluster.dagrun(root, shape, n, "ray", exe)
                    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
                    m.setdefault((shape, k), []).append((st * 1000, cpu))
    print(f"medians of {reps} interleaved runs; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    for (shape, k), v in m.items():
        print(f"  {shape:7} {k:8} steady {statistics.median(x[0] for x in v):6.2f} ms a task "
              f"[{' '.join('%.1f' % x[0] for x in v)}], driver CPU {statistics.median(x[1] for x in v):.2f} s a run")


if __name__ == "__main__":
    main()
