"""What a fan-out costs: the expansion (read the items, publish plan.json under the edit
lock) for N items, in-process, and a whole goal planner -> N instances -> join through the
installed `dagrun run` (trivial agents), against the same N tasks written out in the plan.

    .venv/bin/python bench/fanout.py [N] [JOBS]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from dagrun import fanout
from dagrun.edit import submit
from dagrun.store import Home

DAGRUN = os.path.join(os.path.dirname(sys.executable), "dagrun")


def plan_doc(folder: str, n: int, fan: bool) -> str:
    items = os.path.join(folder, "items.json")
    with open(items, "w") as f:
        json.dump([{"path": f"src/m{i}.py"} for i in range(n)], f)
    tasks = [{"id": "plan-files", "prompt": "list", "agent": f"cat {items}"}]
    if fan:
        tasks.append({"id": "port", "for_each": {"from": "plan-files", "max": n},
                      "prompt": "Port {{item.path}}", "agent": "head -c 20"})
        tasks.append({"id": "join", "deps": ["port"], "prompt": "s", "agent": "wc -c"})
    else:
        tasks += [{"id": f"port.{i}", "deps": ["plan-files"], "prompt": f"Port src/m{i}.py", "agent": "head -c 20"}
                  for i in range(n)]
        tasks.append({"id": "join", "deps": [f"port.{i}" for i in range(n)], "prompt": "s", "agent": "wc -c"})
    p = os.path.join(folder, "dag.json")
    with open(p, "w") as f:
        json.dump({"goal": "g", "max_tasks": n + 10, "tasks": tasks}, f)
    return p


def expansion(n: int) -> float:
    """Seconds for fanout.expand_one of a template over n items (plan-files done by hand)."""
    with tempfile.TemporaryDirectory() as d:
        home = Home(os.path.join(d, "home"))
        submit(home, plan_doc(d, n, True))
        tdir = home.task_dir("g", "plan-files")
        os.makedirs(tdir)
        with open(os.path.join(d, "items.json"), "rb") as f, open(home.output_path("g", "plan-files"), "wb") as o:
            o.write(f.read())
        with open(home.marker_path("g", "plan-files", "done"), "w") as m:
            m.write("{}")
        t = time.perf_counter()
        assert fanout.expand_one(home, "g", "port", "bench")
        return time.perf_counter() - t


def whole(n: int, jobs: int, fan: bool) -> float:
    with tempfile.TemporaryDirectory() as d:
        p = plan_doc(d, n, fan)
        t = time.perf_counter()
        subprocess.run([DAGRUN, f"--home={d}/home", "run", p, "-j", str(jobs)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    for k in (n // 10, n, n * 10):
        print(f"expand {k:>6} items: {expansion(k) * 1000:8.1f} ms (median of 3: "
              f"{sorted(expansion(k) for _ in range(3))[1] * 1000:.1f} ms)")
    print(f"dagrun run, {n} instances via for_each, -j {jobs}: {whole(n, jobs, True):.2f} s")
    print(f"dagrun run, the same {n} tasks written out,   -j {jobs}: {whole(n, jobs, False):.2f} s")
