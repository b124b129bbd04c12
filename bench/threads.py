#!/usr/bin/env python3
"""Per-thread CPU of one command (e.g. `dagrun run PLAN -j 8 -q`): samples
/proc/PID/task/*/stat and status every 5 ms and prints, for each thread (by thread id: the
engine's loop first, then the spawners in the order they
started), user / system seconds / voluntary context switches, plus the total.

    DAGRUN_HOME=$(mktemp -d) python3 bench/threads.py .venv/bin/dagrun run PLAN -j 8 -q

A thread that ends before the command does keeps its last sample. Linux only.
"""
import os
import subprocess
import sys
import time


def main() -> int:
    tick = os.sysconf("SC_CLK_TCK")
    p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
    last: dict[int, tuple[float, float, int]] = {}
    t0 = time.perf_counter()
    while p.poll() is None:
        try:
            tids = os.listdir(f"/proc/{p.pid}/task")
        except OSError:
            tids = []
        for tid in tids:
            try:
                with open(f"/proc/{p.pid}/task/{tid}/stat") as f:
                    s = f.read()
                with open(f"/proc/{p.pid}/task/{tid}/status") as f:
                    st = f.read()
            except OSError:
                continue
            fields = s[s.rfind(")") + 2:].split()
            vcs = int(st.split("voluntary_ctxt_switches:")[1].split()[0])
            last[int(tid)] = (int(fields[11]) / tick, int(fields[12]) / tick, vcs)
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    total = sum(u + s for u, s, _ in last.values())
    parts = " ".join(f"{u:.2f}/{s:.2f}/{v}" for _, (u, s, v) in sorted(last.items()))
    print(f"exit {p.returncode} wall {wall:.2f} s, cpu {total:.2f} s; threads user/sys/voluntary: {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
