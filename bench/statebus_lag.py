#!/usr/bin/env python3
"""How long does an event take to reach another worker? (dagrun_statebus_lag_ms)

Worker A (`dagrun worker --metrics`) watches the home; `dagrun run` (worker B, another process)
runs N tasks of a goal whose agents exit at once, so the log is appended as fast as B can go.
A records, for every line B wrote, (time A's engine read it) - (the line's ts). Prints the
mean and bucket-estimated quantiles from A's textfile, and the latency of `dagrun events -f`
(line printed - line's ts).

    .venv/bin/python bench/statebus_lag.py [N_TASKS]
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dagrun.store import parse_iso

DAGRUN = str(Path(sys.executable).parent / "dagrun") if (Path(sys.executable).parent / "dagrun").exists() \
    else shutil.which("dagrun")


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    total = buckets[-1][1]
    want = q * total
    for le, c in buckets:
        if c >= want:
            return le
    return float("inf")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    base = Path(tempfile.mkdtemp(prefix="dagrun-lag-"))
    home = base / "home"
    plan = base / "dag.json"
    plan.write_text(json.dumps({"goal": "lag", "defaults": {"agent": "true"},
                                "tasks": [{"id": f"t{i}", "prompt": "p"} for i in range(n)]}))
    env = dict(os.environ, DAGRUN_HOME=str(home))
    subprocess.run([DAGRUN, "submit", str(plan)], env=env, check=True, capture_output=True)
    prom = base / "a.prom"
    a = subprocess.Popen([DAGRUN, "worker", "-j", "1", "--name", "A", "--metrics", str(prom), "--metrics-every", "0.2"],
                         env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    fol = subprocess.Popen([DAGRUN, "events", "lag", "-f"], env=env, stdout=subprocess.PIPE, start_new_session=True)
    seen: list[float] = []

    def tail():
        for line in fol.stdout:
            now = time.time()
            seen.append((now - parse_iso(json.loads(line)["ts"])) * 1000)
    th = threading.Thread(target=tail, daemon=True)
    th.start()
    try:
        while not prom.exists():
            time.sleep(0.05)
        t0 = time.monotonic()
        subprocess.run([DAGRUN, "run", "lag", "-j", "4", "--worker", "B", "-q"], env=env, check=True,
                       capture_output=True)
        took = time.monotonic() - t0
        time.sleep(1.0)
        os.killpg(a.pid, signal.SIGTERM)
        a.wait(30)
        os.killpg(fol.pid, signal.SIGTERM)
        fol.wait(10)
    finally:
        for p in (a, fol):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    lag = fams["dagrun_statebus_lag_ms"]
    buckets = sorted(((float(s.labels["le"]), s.value) for s in lag.samples if s.name.endswith("_bucket")))
    count = next(s.value for s in lag.samples if s.name.endswith("_count"))
    total = next(s.value for s in lag.samples if s.name.endswith("_sum"))
    by_b = sum(1 for line in (home / "goals" / "lag" / "events.jsonl").read_text().splitlines()
               if json.loads(line).get("worker") == "B")
    print(f"{n} tasks run by A (-j 1) and B (-j 4) in {took:.2f}s; A observed {int(count)} events, B wrote {by_b}")
    print(f"statebus lag (ms): mean {total / max(count, 1):.2f}, p50 <= {quantile(buckets, 0.5):g}, "
          f"p90 <= {quantile(buckets, 0.9):g}, p99 <= {quantile(buckets, 0.99):g}")
    live = sorted(seen[1 + n:])          # the history printed at start-up is not a latency
    if live:
        print(f"`dagrun events -f` ({len(live)} lines): p50 {live[len(live) // 2]:.2f} ms, "
              f"p90 {live[int(len(live) * 0.9)]:.2f} ms, max {live[-1]:.2f} ms")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
