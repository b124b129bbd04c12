#!/usr/bin/env python3
"""Python function calls (Python and C functions, as sys.setprofile sees them) of one
`dagrun run PLAN -j N -q`, in this process, per task and by where they were made: the phase
of the engine's turn (Engine._loop_once -> _reap, _dispatch, _collect_spawns, _feed, ...),
the rest of the engine's loop (Engine.run), and what is outside it (start-up, the closing
line). A deterministic proxy for the loop thread's Python CPU; the count still moves a
little with how the tasks fall into turns (more turns, more per-turn calls).

    python bench/loop_calls.py PLAN [-j 8] [--depth 2] [--checkout DIR]

--checkout DIR counts another source tree's dagrun (e.g. `git archive main | tar -x -C DIR`)
with this venv's packages, as bench/other_checkout.py runs it. Run it from outside a
checkout (python -c and scripts put their own folder first on sys.path). DAGRUN_HOME: a
fresh temporary folder unless set.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("plan")
    ap.add_argument("-j", "--jobs", type=int, default=8)
    ap.add_argument("--depth", type=int, default=2, help="levels below _loop_once to group by")
    ap.add_argument("--checkout", default=None, help="another source tree's dagrun")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    if a.checkout:
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, os.path.abspath(a.checkout))
    own_home = "DAGRUN_HOME" not in os.environ
    if own_home:
        os.environ["DAGRUN_HOME"] = tempfile.mkdtemp(prefix="dagrun-calls-")
    import orjson
    with open(a.plan, "rb") as f:
        n = len(orjson.loads(f.read())["tasks"])
    from dagrun.entry import main as dagrun_main

    stack: list[str] = []
    counts: collections.Counter = collections.Counter()

    def prof(frame, event, arg):
        if event == "call" or event == "c_call":
            stack.append(frame.f_code.co_name if event == "call" else getattr(arg, "__name__", "?"))
            try:
                i = len(stack) - 1 - stack[::-1].index("_loop_once")
                counts[("turn",) + tuple(stack[i + 1:i + 1 + a.depth])] += 1
            except ValueError:
                counts[("loop",) if "run" in stack and "run_goal" in stack else ("outside",)] += 1
        elif stack:
            stack.pop()

    sys.argv = ["dagrun", "run", a.plan, "-j", str(a.jobs), "-q"]
    sys.setprofile(prof)
    try:
        dagrun_main()
    except SystemExit:
        pass
    finally:
        sys.setprofile(None)
        if own_home:
            shutil.rmtree(os.environ["DAGRUN_HOME"], ignore_errors=True)
    total = sum(counts.values())
    print(f"{a.plan}: {n} tasks, {total} calls, {total / n:.1f} per task")
    by_top: collections.Counter = collections.Counter()
    for k, v in counts.items():
        by_top[k[:2]] += v
    print("| where | calls per task |\n|---|---:|")
    for k, v in by_top.most_common(a.top):
        print(f"| {'/'.join(k)} | {v / n:.1f} |")
    if a.depth > 1:
        print("\n| turn phase (deeper) | calls per task |\n|---|---:|")
        for k, v in counts.most_common(a.top):
            if k[0] == "turn" and len(k) > 2:
                print(f"| {'/'.join(k[1:])} | {v / n:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
