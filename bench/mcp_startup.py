"""Start-up of `dagrun mcp`: from spawning `dagrun --home H mcp` until it answers the MCP
`initialize` request, and until it answers `tools/list` (what an agent CLI waits for before
its first model request when the server is required). Beside it, the floor: the interpreter
importing the `mcp` SDK's server module and nothing else. Runs are interleaved, so a change
in the machine's load hits every column alike; the load average is printed with the numbers.

    .venv/bin/python bench/mcp_startup.py [N] [DAGRUN_EXE ...]

With no DAGRUN_EXE, the `dagrun` beside this interpreter. Give two (e.g. main's and a
worktree's) to compare before/after.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "bench", "version": "0"}}}


def _send(p: subprocess.Popen, obj: dict) -> None:
    p.stdin.write((json.dumps(obj) + "\n").encode())
    p.stdin.flush()


def serve_once(exe: str, home: str) -> tuple[float, float]:
    """(seconds to the initialize answer, seconds to the tools/list answer)."""
    t = time.perf_counter()
    p = subprocess.Popen([exe, "--home", home, "mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    _send(p, INIT)
    line = p.stdout.readline()
    t_init = time.perf_counter() - t
    if b'"result"' not in line:
        raise SystemExit(f"{exe}: no answer to initialize: {line[:200]!r}")
    _send(p, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    _send(p, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    line = p.stdout.readline()
    t_tools = time.perf_counter() - t
    if b'"tools"' not in line:
        raise SystemExit(f"{exe}: no answer to tools/list: {line[:200]!r}")
    p.stdin.close()
    p.wait()
    return t_init, t_tools


def import_floor(python: str) -> float:
    t = time.perf_counter()
    subprocess.run([python, "-c", "import mcp.server.mcpserver"], check=True)
    return time.perf_counter() - t


def ms(xs: list[float]) -> str:
    return (f"median {statistics.median(xs) * 1000:6.0f} ms  min {min(xs) * 1000:6.0f}  "
            f"max {max(xs) * 1000:6.0f}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    exes = sys.argv[2:] or [os.path.join(os.path.dirname(sys.executable), "dagrun")]
    res: dict[str, list[tuple[float, float]]] = {e: [] for e in exes}
    floor: list[float] = []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as home:
        for _ in range(n):
            for e in exes:
                res[e].append(serve_once(e, home))
            floor.append(import_floor(sys.executable))
    print(f"n={n}, {os.cpu_count()} cores, 1-min load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")
    for e in exes:
        print(f"{e}\n  initialize  {ms([a for a, _ in res[e]])}\n  tools/list  {ms([b for _, b in res[e]])}")
    print(f"floor: {sys.executable} -c 'import mcp.server.mcpserver'\n              {ms(floor)}")


if __name__ == "__main__":
    main()
