#!/usr/bin/env python3
"""Where the test suite's CPU goes: every `dagrun` process the tests start, logged.

  .venv/bin/python bench/suite_profile.py install      # a .pth hook in this venv (measurement only)
  DAGRUN_ARGV_LOG=/tmp/calls.jsonl /usr/bin/time -f "WALL %e USER %U SYS %S" .venv/bin/python -m pytest -q
  .venv/bin/python bench/suite_profile.py report /tmp/calls.jsonl
  .venv/bin/python bench/suite_profile.py uninstall

The hook is a `.pth` line in the venv's site-packages: every Python process of the venv
imports a few lines that, when DAGRUN_ARGV_LOG is set, append one JSON line at exit if the
process is the `dagrun` console script: its argv, whether it took the protocol fast path
(dagrun.cli never imported), whether pydantic was imported, its CPU seconds (user+sys) and the
test that started it (PYTEST_CURRENT_TEST is inherited). Without the variable it costs an
import of `os`. Nothing in dagrun changes.
"""
from __future__ import annotations

import collections
import json
import site
import sys
from pathlib import Path

HOOK = '''# bench/suite_profile.py: measurement only; logs `dagrun` processes to $DAGRUN_ARGV_LOG
import os
if os.environ.get("DAGRUN_ARGV_LOG"):
    import atexit, time
    _t0 = time.monotonic()
    def _done():
        import sys, json
        if not sys.argv or not sys.argv[0].endswith("/dagrun"):
            return
        t = os.times()
        rec = {"argv": sys.argv[1:], "fast": "dagrun.cli" not in sys.modules, "pydantic": "pydantic" in sys.modules,
               "cpu": round(t.user + t.system, 4), "wall": round(time.monotonic() - _t0, 4),
               "test": os.environ.get("PYTEST_CURRENT_TEST", "")}
        fd = os.open(os.environ["DAGRUN_ARGV_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (json.dumps(rec) + "\\n").encode()); os.close(fd)
    atexit.register(_done)
'''


def _command(argv: list[str]) -> str:
    i = 0
    while i < len(argv) and argv[i].split("=", 1)[0] in ("--home", "--color"):
        i += 1 if "=" in argv[i] else 2
    return argv[i] if i < len(argv) else "(none)"


def report(path: str, top: int = 20) -> None:
    recs = [json.loads(line) for line in open(path) if line.strip()]
    cpu = sum(r["cpu"] for r in recs)
    fast = [r for r in recs if r["fast"]]
    print(f"{len(recs)} dagrun processes, {cpu:.1f} CPU s; fast path {len(fast)} "
          f"({sum(r['cpu'] for r in fast):.1f} s), typer {len(recs) - len(fast)} "
          f"({cpu - sum(r['cpu'] for r in fast):.1f} s); pydantic imported in {sum(r.get('pydantic', False) for r in recs)}")
    by: dict = collections.defaultdict(lambda: [0, 0.0])
    for r in recs:
        k = (_command(r["argv"]), "fast" if r["fast"] else "typer")
        by[k][0] += 1
        by[k][1] += r["cpu"]
    print(f"\n{'command':<14} {'path':<6} {'calls':>6} {'cpu s':>7} {'ms/call':>8}")
    for (c, p), (n, s) in sorted(by.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{c:<14} {p:<6} {n:>6} {s:>7.1f} {1000 * s / n:>8.0f}")
    per_file: dict = collections.defaultdict(lambda: [0, 0.0])
    for r in recs:
        f = r["test"].split("::")[0] or "(outside a test)"
        per_file[f][0] += 1
        per_file[f][1] += r["cpu"]
    print(f"\n{'test file':<48} {'calls':>6} {'cpu s':>7}")
    for f, (n, s) in sorted(per_file.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{f:<48} {n:>6} {s:>7.1f}")


def main() -> None:
    target = Path(site.getsitepackages()[0])
    if len(sys.argv) >= 2 and sys.argv[1] == "install":
        (target / "_dagrun_suite_profile.py").write_text(HOOK)
        (target / "_dagrun_suite_profile.pth").write_text("import _dagrun_suite_profile\n")
        print(f"hook installed in {target}; set DAGRUN_ARGV_LOG to log")
    elif len(sys.argv) >= 2 and sys.argv[1] == "uninstall":
        for name in ("_dagrun_suite_profile.pth", "_dagrun_suite_profile.py"):
            (target / name).unlink(missing_ok=True)
        print(f"hook removed from {target}")
    elif len(sys.argv) >= 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
