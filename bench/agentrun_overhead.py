"""Cold-start cost of the preset adapter (`python -I -m dagrun.agentrun NAME`) over running the
tool directly. The tool here is `cat` (a preset in a scratch home), so what is measured is the
adapter alone: interpreter start, the preset table, the pipe tee, the parser.

    .venv/bin/python bench/agentrun_overhead.py [N]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv, env, stdin_path) -> float:
    with open(stdin_path, "rb") as f:
        t = time.perf_counter()
        subprocess.run(argv, stdin=f, stdout=subprocess.DEVNULL, env=env, check=True)
        return time.perf_counter() - t


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as home:
        with open(os.path.join(home, "presets.json"), "w") as f:
            json.dump({"cat": {"command": ["cat"]}}, f)
        prompt = os.path.join(home, "prompt.md")
        with open(prompt, "w") as f:
            f.write("hello\n" * 100)
        env = dict(os.environ, DAGRUN_HOME=home, DAGRUN_USAGE_FILE=os.path.join(home, "u"),
                   DAGRUN_RAW_FILE=os.path.join(home, "raw"))
        direct = [timed(["cat"], env, prompt) for _ in range(n)]
        adapted = [timed([sys.executable, "-I", "-m", "dagrun.agentrun", "cat"], env, prompt) for _ in range(n)]
    md, ma = statistics.median(direct), statistics.median(adapted)
    print(f"n={n}  direct cat: median {md * 1000:.1f} ms   via the adapter: median {ma * 1000:.1f} ms "
          f"(p90 {sorted(adapted)[int(0.9 * n)] * 1000:.1f} ms)   overhead {(ma - md) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
