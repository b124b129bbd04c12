"""The suite's xdist schedule (tests/xdist_schedule.py) on a synthetic suite run by a real
`pytest -n 3 --dist loadgroup`: the tests of one outside service never overlap in time and
start before the others, the recorded long tests start before the unrecorded ones, and a run
of one service's tests alone (its chain on one worker) ends."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SYNTHETIC = '''
import json, os, time
import pytest

def _rec(name, secs=0.2):
    t0 = time.time()
    time.sleep(secs)
    with open(os.environ["SCHED_LOG"], "a") as f:
        f.write(json.dumps([name, os.environ["PYTEST_XDIST_WORKER"], t0, time.time()]) + "\\n")

@pytest.mark.parametrize("i", range(10))
def test_plain(i):
    _rec(f"plain{i}")

@pytest.mark.slurm
@pytest.mark.parametrize("i", range(4))
def test_s(i):
    _rec(f"slurm{i}")

@pytest.mark.ray
@pytest.mark.parametrize("i", range(3))
def test_r(i):
    _rec(f"ray{i}")
'''


def _run(tmp_path: Path, *args: str, workers: int = 3) -> list[list]:
    log = tmp_path / "log.jsonl"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "DAGRUN_SUITE_TIMELINE")}
    # only the plugins the schedule needs: the installed ones' imports (anyio's, hypothesis's)
    # cost ~0.5 s of CPU in each of the run's four pytest processes
    env.update({"PYTHONPATH": str(TESTS), "SCHED_LOG": str(log), "DAGRUN_TEST_DURATIONS": str(tmp_path / "durations.txt"),
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "xdist.plugin", "-p", "xdist_schedule", "-p", "no:cacheprovider",
                        "-n", str(workers), "--dist", "loadgroup", "-W", "ignore::pytest.PytestUnknownMarkWarning",
                        "test_synthetic.py", *args],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_service_tests_run_one_at_a_time_first_and_long_tests_before_short(tmp_path):
    (tmp_path / "test_synthetic.py").write_text(SYNTHETIC)
    (tmp_path / "durations.txt").write_text("# s node-id\n9.0 test_synthetic.py::test_plain[7]\n")
    recs = _run(tmp_path)
    assert sorted(r[0] for r in recs) == sorted([f"plain{i}" for i in range(10)] + [f"slurm{i}" for i in range(4)]
                                                + [f"ray{i}" for i in range(3)])
    for service in ("slurm", "ray"):
        spans = sorted((r[2], r[3]) for r in recs if r[0].startswith(service))
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (service, spans)   # never two at once
    # the first test each worker ran: the two services' first and the longest recorded test
    first = {}
    for name, worker, t0, _t1 in sorted(recs, key=lambda r: r[2]):
        first.setdefault(worker, name)
    assert sorted(first.values()) == ["plain7", "ray0", "slurm0"], recs


def test_one_services_tests_alone_end(tmp_path):
    (tmp_path / "test_synthetic.py").write_text(SYNTHETIC)
    recs = _run(tmp_path, "-m", "slurm", workers=2)
    assert sorted(r[0] for r in recs) == [f"slurm{i}" for i in range(4)]
    assert len({r[1] for r in recs}) == 1          # one worker: the chain's next test is queued behind


def test_auto_workers_add_one_for_a_configured_slurm_cluster(tmp_path, monkeypatch):
    """`-n auto`: 1.5 workers per core, and one more when the Slurm tests will run (their
    worker mostly waits for the cluster), one more when the Ray tests will (the same);
    PYTEST_XDIST_AUTO_NUM_WORKERS overrides them."""
    import importlib.util

    import conftest
    cores = len(os.sched_getaffinity(0))
    plain = cores + (cores + 1) // 2
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    (tmp_path / "slurm.conf").write_text("ClusterName=x\n")
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if importlib.util.find_spec("ray") is not None:
        monkeypatch.setenv("SLURM_CONF", str(tmp_path / "none.conf"))
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")                # a head named: its tests run
        assert conftest.pytest_xdist_auto_num_workers(None) == plain + 1
        monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
        monkeypatch.setenv("PATH", str(tmp_path / "bin"))
        assert conftest.pytest_xdist_auto_num_workers(None) == plain + 2   # both services
        monkeypatch.setenv("RAY_ADDRESS", "")
    elif os.environ.get("CI") == "true":
        pytest.fail("the ray package is missing (CI installs .[ray])")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    assert conftest.pytest_xdist_auto_num_workers(None) == plain + 1
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "none.conf"))       # no cluster configured
    assert conftest.pytest_xdist_auto_num_workers(None) == plain
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    monkeypatch.setenv("PATH", str(tmp_path))                          # no sbatch
    assert conftest.pytest_xdist_auto_num_workers(None) == plain
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "5")
    assert conftest.pytest_xdist_auto_num_workers(None) == 5
