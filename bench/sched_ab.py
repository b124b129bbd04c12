#!/usr/bin/env python3
"""Scheduler cost of two checkouts (e.g. main vs a branch): build a 20000-task layered DAG and
drain it through take()/finish(), interleaved, median of 5. Usage:
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

def bench(path, tasks):
    for m in [k for k in sys.modules if k.startswith("dagrun")]: del sys.modules[m]
    sys.path.insert(0, path); S = importlib.import_module("dagrun.scheduler").Scheduler; sys.path.pop(0)
    t0 = time.perf_counter(); s = S(tasks); t1 = time.perf_counter()
    while (t := s.take()) is not None:
        s.finish(t, "done")
    t2 = time.perf_counter()
    assert s.is_finished()
    return t1 - t0, t2 - t1

tasks = graph()
res = {"old": [], "new": []}
for rep in range(5):
    for name, path in (("old", sys.argv[1]), ("new", sys.argv[2])):
        res[name].append(bench(path, tasks))
for name, v in res.items():
    b = sorted(x[0] for x in v)[2]; d = sorted(x[1] for x in v)[2]
    print(f"{name}: build {b*1000:.1f} ms, drain {d*1000:.1f} ms (20000 tasks, median of 5)")
