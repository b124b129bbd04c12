"""The node side of the Ray runner without Ray: rayrun.run_agent (a plain function) of no-op
attempts (`sh -c true`, a one-byte prompt), run in this process as a Ray worker would, for one
or more versions of rayrun.py interleaved (an A/B in one run); medians of REPS runs of N
attempts: wall time, this process's CPU (the "worker") and the CPU of the guard processes
(rayrun.GUARD; told of each attempt through a pipe in older versions, never woken in newer
ones) per attempt.

    .venv/bin/python bench/ray_guard.py [N] [REPS]          RUNNER=/old/dagrun/rayrun.py,- for an A/B

The first arm, "floor", is the honest Ray floor's remote function run the same way (the
command, workdir, environment and prompt in; `subprocess.run` of `sh -c` with the prompt on a
pipe, stdout and stderr captured; exit code and both outputs back): what run_agent is to be
compared with.
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ray_runner import load_runner  # noqa: E402


def self_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def guards_cpu() -> float:
    """CPU seconds of this user's Ray-worker guards alive now (their environment is exactly
    the PATH rayrun gives them)."""
    tot = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if b"DAGRUN_RUN_ID=" not in f.read():
                    continue
            with open(f"/proc/{d}/environ", "rb") as f:
                if f.read() != b"PATH=/usr/bin:/bin\0":
                    continue
            with open(f"/proc/{d}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            tot += int(st[11]) + int(st[12])
        except OSError:
            pass
    return tot / os.sysconf("SC_CLK_TCK")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    paths = (os.environ.get("RUNNER") or "-").split(",")
    mods = [load_runner(p, i) for i, p in enumerate(paths)]
    env = dict(os.environ)
    cwd = tempfile.gettempdir()

    class Floor:
        __file__ = "floor (subprocess.run, pipes)"

        @staticmethod
        def run_agent(cmd, cwd, env, prompt, *_):
            p = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, input=prompt, capture_output=True)
            return {"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr}

    mods.insert(0, Floor)

    def attempt(mod, rid):
        r = mod.run_agent("true", cwd, dict(env, DAGRUN_RUN_ID=rid), b"p", None, 5.0, 0.1)
        if not isinstance(r, dict):          # a streaming version: a generator of items
            r = list(r)[-1]
        assert r["code"] == 0, r

    for i, mod in enumerate(mods):
        attempt(mod, f"warm{i}-{os.getpid()}")          # its guard started
    m: dict[int, list] = {}
    for rep in range(reps):
        for i, mod in enumerate(mods):
            t, c, g = time.perf_counter(), self_cpu(), guards_cpu()
            for k in range(n):
                attempt(mod, f"b{os.getpid()}-{rep}-{i}-{k}")
            m.setdefault(i, []).append(((time.perf_counter() - t) / n, (self_cpu() - c) / n, (guards_cpu() - g) / n))
    print(f"{n} attempts, medians of {reps} interleaved runs, ms per attempt; load average {os.getloadavg()[0]:.1f}")
    for i, mod in enumerate(mods):
        v = m[i]
        print(f"  {mod.__file__}: wall {statistics.median(x[0] for x in v) * 1000:.3f}, worker CPU "
              f"{statistics.median(x[1] for x in v) * 1000:.3f}, guard CPU {statistics.median(x[2] for x in v) * 1000:.3f}")


if __name__ == "__main__":
    main()
