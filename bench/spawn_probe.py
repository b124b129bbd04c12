#!/usr/bin/env python3
"""subprocess.Popen against os.posix_spawn for one agent start: 300 spawns of /usr/bin/true with
the runner's stdio (a pipe), own session and SIGPIPE/SIGXFSZ at default, each waited for, 7
alternating rounds; medians per spawn of the children's CPU, the spawning thread's CPU and the
wall time. (Popen has the runner's cwd and close_fds; Python 3.11's posix_spawn has neither.)

    python3 bench/spawn_probe.py            # the table
    strace -f -o OUT python3 bench/spawn_probe.py popen|pspawn    # one spawn, for its syscalls

docs/performance.md, "ninth round".
"""
import os
import resource
import signal
import statistics
import subprocess
import sys
import time

ENV = dict(os.environ)
N = 300


def popen() -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    p = subprocess.Popen(["/usr/bin/true"], cwd="/tmp", env=ENV, stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                         start_new_session=True, close_fds=True)
    os.close(w)
    p.wait()
    os.close(r)


def pspawn() -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.posix_spawn("/usr/bin/true", ["true"], ENV,
                         file_actions=[(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)],
                         setsid=True, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    os.close(w)
    os.waitpid(pid, 0)
    os.close(r)


def one_round(f) -> tuple[float, float, float]:
    c0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(N):
        f()
    t = time.perf_counter() - t0
    c1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return ((c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / N * 1e6,
            (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime) / N * 1e6, t / N * 1e6)


def main() -> int:
    ways = {"popen": popen, "pspawn": pspawn}
    if len(sys.argv) > 1:
        ways[sys.argv[1]]()
        return 0
    res: dict[str, list] = {k: [] for k in ways}
    for _ in range(7):
        for k, f in ways.items():
            res[k].append(one_round(f))
    print(f"load {os.getloadavg()[0]:.2f}")
    for k, v in res.items():
        med = [statistics.median(x[i] for x in v) for i in range(3)]
        print(f"{k:7s} child CPU {med[0]:5.0f} us  spawning thread CPU {med[1]:5.0f} us  wall {med[2]:5.0f} us (per spawn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
