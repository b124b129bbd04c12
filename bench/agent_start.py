#!/usr/bin/env python3
"""The cost of starting an agent, alone: N agents (default `true`) spawned one after the
other by executor._spawn -- the spawner thread's work -- each waited for, alternating direct
exec and `sh -c` in rounds of N. Prints per mode the medians over the rounds of: the agents'
CPU (getrusage RUSAGE_CHILDREN), this process's CPU (the spawning side) and the wall time,
each per agent in microseconds.

    python3 bench/agent_start.py [--agent true] [-n 200] [--rounds 7]

Linux only (the ProcessRunner's spawn). docs/performance.md, "ninth round".
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dagrun import executor  # noqa: E402
from dagrun.executor import Launch  # noqa: E402


def one_round(launch: Launch, n: int, direct: bool) -> tuple[float, float, float]:
    executor.DIRECT_EXEC = direct
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(n):
        sp = executor._spawn(launch, False)
        assert not isinstance(sp, executor.StartError), sp
        sp.popen.wait()
        os.close(sp.r_out)
        os.close(sp.r_err)
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    kids = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    me = (s1.ru_utime + s1.ru_stime) - (s0.ru_utime + s0.ru_stime)
    return kids / n * 1e6, me / n * 1e6, wall / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", default="true")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="agent-start-")
    prompt = os.path.join(d, "prompt.md")
    with open(prompt, "w") as f:
        f.write("p\n")
    launch = Launch(agent=a.agent, cwd=d, env=dict(os.environ), stdin_path=prompt,
                    stdout_path=os.path.join(d, "out"), stderr_path=os.path.join(d, "err"), run_id="bench")
    res: dict[str, list] = {"direct": [], "sh -c": []}
    for _ in range(a.rounds):
        for mode in res:
            res[mode].append(one_round(launch, a.n, mode == "direct"))
    print(f"agent {a.agent!r}, {a.n} spawns x {a.rounds} rounds, load {os.getloadavg()[0]:.2f}")
    for mode, rows in res.items():
        med = [statistics.median(r[i] for r in rows) for i in range(3)]
        print(f"  {mode:7s} agent CPU {med[0]:6.0f} us   spawner CPU {med[1]:6.0f} us   wall {med[2]:6.0f} us  (per agent)")
    os.remove(prompt)
    os.rmdir(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
