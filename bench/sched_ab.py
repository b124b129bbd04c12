#!/usr/bin/env python3
"""Scheduler cost of two checkouts (e.g. main vs a branch): build a 20000-task layered DAG and
drain it through take()/finish(), interleaved, median of 5; then would_end(t, "done"),
would_end(t, "failed") and would_block(t) (asked before a commit point when the plan has
on_skipped / on_blocked hooks) for 200 tasks taken half-way through the drain, per call. Usage:
    mkdir -p /tmp/old/dagrun && for f in __init__ states wsrules scheduler; do
        git show main:dagrun/$f.py > /tmp/old/dagrun/$f.py; done
    python3 bench/sched_ab.py /tmp/old .
"""
import importlib
import random
import sys
import time
from dataclasses import dataclass

@dataclass
class T:
    id: str; deps: tuple; soft_deps: tuple = (); priority: int = 0

def graph(n=20000, width=200, fan=3, seed=1):
    r = random.Random(seed); tasks = []
    for i in range(n):
        layer = i // width
        deps = tuple(sorted({f"t{r.randrange((layer-1)*width, layer*width)}" for _ in range(fan)})) if layer else ()
        tasks.append(T(f"t{i}", deps))
    return tasks

def load(path):
    for m in [k for k in sys.modules if k.startswith("dagrun")]: del sys.modules[m]
    sys.path.insert(0, path); S = importlib.import_module("dagrun.scheduler").Scheduler; sys.path.pop(0)
    return S

def bench(path, tasks):
    S = load(path)
    t0 = time.perf_counter(); s = S(tasks); t1 = time.perf_counter()
    while (t := s.take()) is not None:
        s.finish(t, "done")
    t2 = time.perf_counter()
    assert s.is_finished()
    return t1 - t0, t2 - t1

def would(path, tasks, k=200):
    s = load(path)(tasks)
    for _ in range(len(tasks) // 2):
        s.finish(s.take(), "done")
    running = [s.take() for _ in range(k)]
    t0 = time.perf_counter()
    ends = [s.would_end(t, "done") for t in running]
    t1 = time.perf_counter()
    fails = [s.would_end(t, "failed") for t in running]
    t2 = time.perf_counter()
    blocks = [s.would_block(t) for t in running]
    t3 = time.perf_counter()
    return (t1 - t0) / k, (t2 - t1) / k, (t3 - t2) / k, sum(map(len, ends)) + sum(map(len, fails)), sum(map(len, blocks))

tasks = graph()
res = {"old": [], "new": []}
for rep in range(5):
    for name, path in (("old", sys.argv[1]), ("new", sys.argv[2])):
        res[name].append(bench(path, tasks))
for name, v in res.items():
    b = sorted(x[0] for x in v)[2]; d = sorted(x[1] for x in v)[2]
    print(f"{name}: build {b*1000:.1f} ms, drain {d*1000:.1f} ms (20000 tasks, median of 5)")
res = {"old": [], "new": []}
for rep in range(5):
    for name, path in (("old", sys.argv[1]), ("new", sys.argv[2])):
        res[name].append(would(path, tasks))
for name, v in res.items():
    e, f, b = (sorted(x[i] for x in v)[2] * 1e6 for i in range(3))
    print(f"{name}: would_end(done) {e:.0f} us, would_end(failed) {f:.0f} us, would_block {b:.0f} us per call "
          f"(200 running tasks half-way, median of 5; {v[0][3]} changes, {v[0][4]} blocked in all)")
