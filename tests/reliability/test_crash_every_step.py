"""Crash at every step (see harness.py for the goal and the invariants I1-I5).

`DAGRUN_CRASH_AT=k` SIGKILLs dagrun right before its k-th file-system mutation (`k:after`:
right after it). For each k the goal is restarted without the crash until it ends and the
files are checked. Trials are independent (own home, own run log) and run three at a time.

- quick (default suite): one trial per *kind* of step (labels with task ids and pids
  normalised), crashing `dagrun run` before the step, or after it for every other kind;
- slow: every k from 1 to the number of steps of a clean run, for `dagrun run` and for
  `dagrun worker --until-idle`, before and after the step (see test_crash_at_every_step for
  how CI covers that in one pass; DAGRUN_CRASH_FULL=1 runs the whole matrix);
- slow: crash the *recovery*: crash once where the most is left to repair, then crash the
  restart at its steps (every 4th in CI, every one with DAGRUN_CRASH_FULL=1), then restart
  cleanly.
"""
from __future__ import annotations

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

POOL = 3


def _kind(label: str) -> str:
    s = re.sub(r"/[^ ]*/goals/", "", label)                          # the home
    s = re.sub(r"\.new-crash\.[0-9a-f]+\.\d+\.[0-9a-f]+", ".new-G", s)
    s = re.sub(r"\.\d+\.tmp", ".PID.tmp", s)
    s = re.sub(r"tasks/[A-Za-z0-9]+", "tasks/T", s)
    s = re.sub(r"crash/[A-Za-z0-9]+$", "crash/T", s)
    return s


def _trials(tmp: Path, ref: H.Reference, plan: list[tuple[int, bool]], mode: str, **kw) -> list[H.Trial]:
    def one(i_k_after):
        i, (k, after) = i_k_after
        return H.crash_trial(tmp / f"t{i}", ref, k, after, mode, **kw)
    with ThreadPoolExecutor(POOL) as pool:
        return list(pool.map(one, enumerate(plan)))


def _report(trials: list[H.Trial]) -> str:
    bad = [t for t in trials if t.problems]
    lines = [f"k={t.k}{':after' if t.after else ''} died at {t.where!r}: " + "; ".join(t.problems) for t in bad]
    return f"{len(bad)} of {len(trials)} crash points broke an invariant:\n" + "\n".join(lines[:40])


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory):
    return H.reference_run(tmp_path_factory.mktemp("ref-run"), "run")


@pytest.fixture(scope="module")
def ref_worker(tmp_path_factory):
    return H.reference_run(tmp_path_factory.mktemp("ref-worker"), "worker")


def test_crash_at_each_kind_of_step(tmp_path, ref_run):
    where: dict[str, list[int]] = {}
    for k, label in enumerate(ref_run.labels, 1):
        where.setdefault(_kind(label), []).append(k)
    # one k per kind, taken from different tasks (a, then b, c, d, k0 ...) for variety
    plan = [(ks[i % len(ks)], i % 2 == 1) for i, ks in enumerate(where.values())]
    trials = _trials(tmp_path, ref_run, plan, "run")
    assert sum(t.crashed for t in trials) >= len(plan) - 2
    assert not any(t.problems for t in trials), _report(trials)


COMBOS = [("run", False), ("worker", True), ("run", True), ("worker", False)]


@pytest.mark.slow
def test_crash_at_every_step(tmp_path, ref_run, ref_worker):
    """Every k from 1 to the steps of a clean run is crashed. By default each k once, the
    (mode, variant) cycling with k: run/before, worker/after, run/after, worker/before -- so
    every step, both variants and both modes are covered in one pass; DAGRUN_CRASH_FULL=1
    crashes every k in all four combinations."""
    full = os.environ.get("DAGRUN_CRASH_FULL") not in (None, "", "0")
    n = max(ref_run.steps, ref_worker.steps) + 2    # a little past the end: the count varies with timing
    plan = [(k, c) for k in range(1, n + 1) for c in (COMBOS if full else [COMBOS[k % 4]])]

    def one(i_plan):
        i, (k, (mode, after)) = i_plan
        return H.crash_trial(tmp_path / f"t{i}", ref_run if mode == "run" else ref_worker, k, after, mode)
    with ThreadPoolExecutor(POOL) as pool:
        trials = list(pool.map(one, enumerate(plan)))
    crashed = [t for t in trials if t.crashed]
    print(f"crash at every step: {len(plan)} trials, {len(crashed)} crashed, k = 1..{n}, "
          f"{sum(bool(t.problems) for t in trials)} broke an invariant")
    assert len(crashed) >= len(plan) * 0.9 - 8, "the crash hook did not fire at most steps"
    assert not any(t.problems for t in trials), _report(trials)


@pytest.mark.slow
def test_crash_during_recovery(tmp_path, ref_run):
    """Crash where a lot is left to repair -- right after d's agent was started while the
    join's inputs are done, i.e. an orphaned agent, a claim of a dead engine -- and then crash
    the restart at each of its steps (breaking the claim, recording the lost attempt, sweeping,
    re-running), and restart cleanly."""
    k = next(i for i, lab in enumerate(ref_run.labels, 1) if lab.startswith("spawn crash/d"))
    trace = tmp_path / "restart-steps"
    probe = H.crash_trial(tmp_path / "probe", ref_run, k, True, "run", restart_env={"DAGRUN_STEP_TRACE": str(trace)})
    assert probe.crashed and not probe.problems, probe.problems
    n = len(trace.read_text().splitlines())
    assert n > 20
    full = os.environ.get("DAGRUN_CRASH_FULL") not in (None, "", "0")
    plan = [(j, a) for j in range(1, n + 3) for a in ((False, True) if full else (j % 2 == 0,))
            if full or j % 4 == 1]

    def one(arg):
        i, (j, after) = arg
        env = {"DAGRUN_CRASH_AT": f"{j}:after" if after else str(j)}
        return H.crash_trial(tmp_path / f"r{i}", ref_run, k, True, "run", restart_env=env)
    with ThreadPoolExecutor(POOL) as pool:
        trials = list(pool.map(one, enumerate(plan)))
    print(f"crash during recovery: {len(plan)} trials over the {n} steps of the restart, "
          f"{sum(bool(t.problems) for t in trials)} broke an invariant")
    assert not any(t.problems for t in trials), _report(trials)
    assert sum(t.restarts >= 2 for t in trials) >= len(plan) * 0.9 - 2, "the restarts did not crash"
