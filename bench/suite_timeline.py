"""The test suite's schedule: which xdist worker ran which test, from when to when.

A pytest plugin (measurement only) that writes one JSON line per test to
$DAGRUN_SUITE_TIMELINE -- worker, xdist group, start and end (wall clock), setup/call/
teardown seconds, outcome, CPU seconds (the worker's own and its reaped children's: the
`dagrun` processes and agents the test ran) -- and a report that reads such a log: the wall
time each worker was busy, when each worker finished, the groups' spans, the longest tests,
the tests and files that took the most CPU (on 2 cores the suite is CPU-bound: its wall is
about its CPU over 2), and what ran at the end of the run (the tail that decides the wall).

    PYTHONPATH=bench DAGRUN_SUITE_TIMELINE=/tmp/tl.jsonl .venv/bin/python -m pytest -q -p suite_timeline
    .venv/bin/python bench/suite_timeline.py /tmp/tl.jsonl [--top 20]
    .venv/bin/python bench/suite_timeline.py --write tests/durations.txt /tmp/tl.jsonl [more logs]

--write keeps, for every test of the logs that took >= 1 s (passed; the longest of its runs),
`seconds node-id` in that file: the order in which tests/xdist_schedule.py starts the tests.
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

_LOG = os.environ.get("DAGRUN_SUITE_TIMELINE")


def _group(item) -> str:
    """The outside service a test shares (tests/xdist_schedule.py's markers), else its
    xdist_group mark, else ""."""
    for name in ("slurm", "ray", "realagents"):
        if item.get_closest_marker(name) is not None:
            return name
    m = item.get_closest_marker("xdist_group")
    if m is None:
        return ""
    return m.args[0] if m.args else m.kwargs.get("name", "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _LOG:
        yield
        return
    phases: dict[str, float] = {}
    outcome = {"v": "passed"}
    item._suite_timeline = (phases, outcome)
    c0 = os.times()
    t0 = time.time()
    yield
    t1 = time.time()
    c1 = os.times()
    # CPU seconds: the worker's own, and its children's that it reaped during the test (the
    # `dagrun` processes it ran, with their agents; not a daemon that double-forked away)
    cpu = round(c1.user + c1.system - c0.user - c0.system, 3)
    child = round(c1.children_user + c1.children_system - c0.children_user - c0.children_system, 3)
    rec = {"test": item.nodeid.split("@")[0], "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
           "group": _group(item), "start": t0, "end": t1, "outcome": outcome["v"], "cpu": cpu,
           "child_cpu": child, **phases}
    with open(_LOG, "a") as f:
        f.write(json.dumps(rec) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    res = yield
    rep = res.get_result()
    st = getattr(item, "_suite_timeline", None)
    if st is None:
        return
    st[0][call.when] = round(call.stop - call.start, 3)
    if rep.failed:
        st[1]["v"] = "failed"
    elif rep.skipped and st[1]["v"] == "passed":
        st[1]["v"] = "skipped"


def report(path: str, top: int = 20) -> None:
    recs = [json.loads(x) for x in open(path) if x.strip()]
    if not recs:
        print("no tests logged")
        return
    t0 = min(r["start"] for r in recs)
    t1 = max(r["end"] for r in recs)
    print(f"{len(recs)} tests, first start to last end {t1 - t0:.1f} s")
    by_worker: dict[str, list] = {}
    for r in recs:
        by_worker.setdefault(r["worker"], []).append(r)
    print("\nworker  tests  busy s  first start  last end   (seconds from the first start)")
    for w in sorted(by_worker):
        rs = by_worker[w]
        busy = sum(r["end"] - r["start"] for r in rs)
        print(f"{w:7} {len(rs):5} {busy:7.1f} {min(r['start'] for r in rs) - t0:11.1f} "
              f"{max(r['end'] for r in rs) - t0:9.1f}")
    groups: dict[str, list] = {}
    for r in recs:
        if r["group"]:
            groups.setdefault(r["group"], []).append(r)
    if groups:
        print("\ngroup       tests  sum s  start   end  worker")
        for g, rs in sorted(groups.items()):
            print(f"{g:11} {len(rs):5} {sum(r['end'] - r['start'] for r in rs):6.1f} "
                  f"{min(r['start'] for r in rs) - t0:6.1f} {max(r['end'] for r in rs) - t0:5.1f}  "
                  f"{','.join(sorted({r['worker'] for r in rs}))}")
    print(f"\nthe {top} longest tests (setup / call / teardown s, start..end from the first start)")
    for r in sorted(recs, key=lambda r: r["start"] - r["end"])[:top]:
        print(f"{r['end'] - r['start']:6.1f}  {r.get('setup', 0):5.1f} {r.get('call', 0):6.1f} "
              f"{r.get('teardown', 0):5.1f}  {r['start'] - t0:6.1f}..{r['end'] - t0:6.1f} {r['worker']:5} "
              f"{r['group'] or '-':10} {r['test']}")
    if any("cpu" in r for r in recs):
        cpu = sum(r.get("cpu", 0) + r.get("child_cpu", 0) for r in recs)
        print(f"\nCPU of the tests (worker + reaped children): {cpu:.1f} s; the {top} that took the most "
              f"(own / children s, wall s)")
        for r in sorted(recs, key=lambda r: -(r.get("cpu", 0) + r.get("child_cpu", 0)))[:top]:
            print(f"{r.get('cpu', 0) + r.get('child_cpu', 0):6.1f}  {r.get('cpu', 0):5.1f} {r.get('child_cpu', 0):6.1f} "
                  f"{r['end'] - r['start']:6.1f}  {r['group'] or '-':10} {r['test']}")
        files: dict[str, float] = {}
        for r in recs:
            f = r["test"].split("::")[0]
            files[f] = files.get(f, 0.0) + r.get("cpu", 0) + r.get("child_cpu", 0)
        print(f"\nCPU by file (the {top} most)")
        for f, c in sorted(files.items(), key=lambda x: -x[1])[:top]:
            print(f"{c:7.1f}  {f}")
    print("\nthe last 60 s of the run: what each worker ran")
    for w in sorted(by_worker):
        tail = [r for r in by_worker[w] if r["end"] > t1 - 60]
        print(f"{w}: " + ", ".join(f"{r['test'].split('::')[-1]} ({r['end'] - r['start']:.1f} s)"
                                    for r in sorted(tail, key=lambda r: r["start"])))


def write_durations(out: str, logs: list[str], floor: float = 1.0) -> None:
    best: dict[str, float] = {}
    for path in logs:
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                if r["outcome"] == "passed":
                    best[r["test"]] = max(best.get(r["test"], 0.0), r["end"] - r["start"])
    keep = sorted(((s, t) for t, s in best.items() if s >= floor), reverse=True)
    with open(out, "w") as f:
        f.write("# seconds node-id: the tests that took >= 1 s in a measured run (bench/suite_timeline.py\n"
                "# --write); tests/xdist_schedule.py starts them longest first. Only the order depends on it.\n")
        for s, t in keep:
            f.write(f"{s:.1f} {t}\n")
    print(f"{len(keep)} tests >= {floor} s written to {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--write":
        write_durations(args[1], args[2:])
        sys.exit(0)
    n = 20
    if "--top" in args:
        i = args.index("--top")
        n = int(args[i + 1])
        del args[i:i + 2]
    report(args[0], n)
