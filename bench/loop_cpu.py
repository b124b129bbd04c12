#!/usr/bin/env python3
"""The loop thread's CPU of one `dagrun ARGS` run in this process: user + system seconds of
the main thread (where the engine's loop runs) by time.thread_time() -- CLOCK_THREAD_CPUTIME_ID,
the scheduler's own count, not clock ticks as /proc/PID/task/TID/stat's -- taken when the
run exits (dagrun leaves by os._exit, which is wrapped here), and the wall time.

    DAGRUN_HOME=$(mktemp -d) python bench/loop_cpu.py [--checkout DIR] run PLAN -j 8 -q

prints `loop_cpu SECONDS wall SECONDS` on stderr. --checkout DIR runs another source tree's
dagrun with this venv's packages (as bench/loop_calls.py). Run it from outside a checkout.
"""
from __future__ import annotations

import os
import sys
import time


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--checkout"]:
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, os.path.abspath(args[1]))
        args = args[2:]
    w0 = time.perf_counter()
    real_exit = os._exit

    def report() -> None:
        print(f"loop_cpu {time.thread_time():.4f} wall {time.perf_counter() - w0:.4f}", file=sys.stderr, flush=True)

    def _exit(code: int) -> None:
        report()
        real_exit(code)

    os._exit = _exit
    from dagrun.entry import main as dagrun_main
    sys.argv = ["dagrun"] + args
    try:
        dagrun_main()
    except SystemExit:
        pass
    report()


if __name__ == "__main__":
    main()
