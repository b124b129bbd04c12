"""A fresh Ray worker's first attempt, without Ray: `rayrun.run_agent` of `true` in a process
whose guard is not started yet (as in a new job's worker, whose first attempt starts it), for
two versions of `rayrun.py`, interleaved; wall time per first attempt (medians, quartiles), and
the CPU its guard has used 0.1 s later, while the worker lives (utime + stime of the process
holding the pipe's read end: what a worker's guard costs a job that runs, not one that dies).
Then the "worker" closes its end of the guard's pipe (as its death would), and its guard sweeps
and exits.

    RUNNER=/tmp/old/dagrun/rayrun.py,- .venv/bin/python bench/ray_first_attempt.py [N]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ray_runner import load_runner  # noqa: E402


def guard_cpu(w: int) -> float:
    """ms of CPU used so far by the process (other than this one) holding the read end of the pipe
    whose write end is this process's fd w."""
    pipe = os.readlink(f"/proc/self/fd/{w}")
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(d) != os.getpid() and any(
                    os.readlink(f"/proc/{d}/fd/{fd}") == pipe for fd in os.listdir(f"/proc/{d}/fd")):
                with open(f"/proc/{d}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()
                return (int(st[11]) + int(st[12])) * 1000 / tick
        except OSError:
            pass
    return float("nan")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    paths = (os.environ.get("RUNNER") or "-").split(",")
    mods = [load_runner(p, i) for i, p in enumerate(paths)]
    env = {**os.environ, "DAGRUN_RUN_ID": f"first-attempt-{os.getpid()}"}
    res: list[list[float]] = [[] for _ in mods]
    cpu: list[list[float]] = [[] for _ in mods]
    for _ in range(n):
        for mod, r, c in zip(mods, res, cpu):
            sys.modules.pop("_dagrun_ray_guard_v3", None)       # no guard yet: a fresh worker
            t = time.perf_counter()
            assert mod.run_agent("true", "/tmp", env, b"p", None, 1.0)["code"] == 0
            r.append((time.perf_counter() - t) * 1000)
            time.sleep(0.1)
            c.append(guard_cpu(sys.modules["_dagrun_ray_guard_v3"].w))
            os.close(sys.modules["_dagrun_ray_guard_v3"].w)     # the "worker" goes: its guard exits
            time.sleep(0.05)
    print(f"{n} first attempts each, interleaved; load average {os.getloadavg()[0]:.1f}")
    for p, mod, r, c in zip(paths, mods, res, cpu):
        r.sort()
        print(f"  {mod.__file__}: median {statistics.median(r):.1f} ms, quartiles {r[len(r) // 4]:.1f}-"
              f"{r[3 * len(r) // 4]:.1f} ms; its guard's CPU while the worker lives {statistics.median(c):.1f} ms")


if __name__ == "__main__":
    main()
