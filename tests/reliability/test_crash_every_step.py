"""Crash at every step (see harness.py for the goal and the invariants I1-I5).

`DAGRUN_CRASH_AT=k` SIGKILLs dagrun right before its k-th file-system mutation (`k:after`:
right after it). For each k the goal is restarted without the crash until it ends and the
files are checked. Trials are independent (own home, own run log) and run three at a time.

- quick (default suite): one trial per *kind* of step (labels with task ids and pids
  normalised), crashing `dagrun run` before the step, or after it for every other kind;
- slow: every gap between two steps of a clean run (before step 1, ..., after the last), for
  `dagrun run` and for `dagrun worker --until-idle`: "after step k" and "before step k+1" are
  the same files, so each gap is crashed once and the union is asserted complete
  (DAGRUN_CRASH_FULL=1 crashes after every step as well);
- slow: crash the *recovery*: crash once where the most is left to repair, then crash the
  restart at every gap of its steps, then restart cleanly.
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
from conftest import crash_step  # noqa: E402

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
    # one k per kind, taken from different tasks (a, then b, c, d, k0 ...) for variety; each
    # crash at that step named by its label (the k-th step of another run is another one) --
    # the first step with that label: how many came before a later one (lease renewals,
    # status snapshots) depends on timing
    def first_of_its_label(k: int) -> bool:
        return crash_step(ref_run.labels, k, ref_run.home)["DAGRUN_CRASH_AT"] == "1"
    plan = []
    for i, ks in enumerate(where.values()):
        firsts = [k for k in ks if first_of_its_label(k)] or ks[:1]
        plan.append((firsts[i % len(firsts)], i % 2 == 1))
    trials = _trials(tmp_path, ref_run, plan, "run", by_label=True)
    missed = [crash_step(ref_run.labels, k, ref_run.home, after) for (k, after), t in zip(plan, trials) if not t.crashed]
    assert len(missed) <= 2, missed
    assert not any(t.problems for t in trials), _report(trials)


def gap_plan(steps: int) -> list[tuple[int, bool]]:
    """The crash points that cover every gap between file-system steps once. "After step k"
    and "before step k+1" leave the same files (no mutation of this process happens in
    between), so a gap is named by the number of steps done when the process died: before
    step k is gap k-1. Crash before each step 1..steps+2 and after the last few steps (the
    count of a run varies a little with timing: the last gap must be hit whatever it is)."""
    return [(k, False) for k in range(1, steps + 3)] + [(k, True) for k in range(max(1, steps - 3), steps + 3)]


def gaps_hit(trials: list[H.Trial]) -> set[int]:
    """The gaps crashed: how many steps had completed when each crashed trial died."""
    return {t.k if t.after else t.k - 1 for t in trials if t.crashed}


def gap_coverage(mode: str, ref: H.Reference, trials: list[H.Trial]) -> tuple[str, list[int]]:
    hit = gaps_hit(trials)
    missing = [g for g in range(0, ref.steps) if g not in hit]
    last = max(hit, default=-1)
    line = (f"crash at every gap, {mode}: {len(trials)} trials, {sum(t.crashed for t in trials)} crashed, "
            f"gaps 0..{last} hit ({len(hit)} distinct; the clean run has {ref.steps} steps, "
            f"so {ref.steps + 1} gaps), {sum(bool(t.problems) for t in trials)} broke an invariant")
    return line, missing


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["run", "worker"])
def test_crash_at_every_step(tmp_path, ref_run, ref_worker, mode):
    """Every gap between two file-system steps of a clean `dagrun run` / `dagrun worker
    --until-idle` is crashed once (gap_plan), in CI too; the union of the gaps hit is asserted
    complete. DAGRUN_CRASH_FULL=1 also crashes after every step (the same gaps again -- a check
    of the dedupe)."""
    ref = ref_run if mode == "run" else ref_worker
    full = os.environ.get("DAGRUN_CRASH_FULL") not in (None, "", "0")
    plan = gap_plan(ref.steps)
    if full:
        plan += [(k, True) for k in range(1, ref.steps + 3)]
    trials = _trials(tmp_path, ref, plan, mode)
    line, missing = gap_coverage(mode, ref, trials)
    print(line)
    _record(f"crash-{mode}", line)
    assert not any(t.problems for t in trials), _report(trials)
    assert not missing, f"gaps never crashed: {missing}"
    assert last_gap_hit(ref.steps, trials), "the gap after the last step was not crashed"


def last_gap_hit(steps: int, trials: list[H.Trial]) -> bool:
    """The gap after a run's last step was crashed. A clean run's count varies by a step with
    timing (179 or 180 here, run to run: how many lease renewals fit), so the reference's count
    may be one more than the trials' runs made: then the trial "after step `steps`" ran out
    without crashing -- its run had fewer steps -- and the last gap of such a run, one step
    earlier, must be hit instead (CI: reference 180 steps, gaps 0..179 hit)."""
    hit = gaps_hit(trials)
    if steps in hit:
        return True
    ran_out = any(t.k == steps and t.after and not t.crashed for t in trials)
    return ran_out and steps - 1 in hit


def _record(name: str, line: str) -> None:
    """Append a coverage line to $DAGRUN_RELIABILITY_REPORT (CI collects them)."""
    out = os.environ.get("DAGRUN_RELIABILITY_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(f"{name}: {line}\n")


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
    plan = gap_plan(n) + ([(j, True) for j in range(1, n + 3)] if full else [])

    def one(arg):
        i, (j, after) = arg
        env = {"DAGRUN_CRASH_AT": f"{j}:after" if after else str(j)}
        return H.crash_trial(tmp_path / f"r{i}", ref_run, k, True, "run", restart_env=env)
    with ThreadPoolExecutor(POOL) as pool:
        trials = list(pool.map(one, enumerate(plan)))
    line = (f"crash during recovery: {len(plan)} trials over the {n} steps of the restart, "
            f"{sum(t.restarts >= 2 for t in trials)} restarts crashed, "
            f"{sum(bool(t.problems) for t in trials)} broke an invariant")
    print(line)
    _record("crash-recovery", line)
    assert not any(t.problems for t in trials), _report(trials)
    # the restart's step count varies a little with timing: the last few may not be reached
    assert sum(t.restarts >= 2 for t in trials) >= n - 2, "the restarts did not crash at every gap"


def test_a_crash_after_step_k_happens_even_if_another_thread_counted_meanwhile(tmp_path):
    """DAGRUN_CRASH_AT=k:after dies right after step k in the thread that took it, though
    another thread (spares, the spawner) took step k+1 while k's operation ran (a git call
    is long): the workspace crash walk once ran through such a step without crashing."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import threading
        from dagrun import fsio
        fsio._step("one")                        # step 1
        fsio._step("k")                          # step 2: the crash point, "after"
        t = threading.Thread(target=fsio._step, args=("other thread",))
        t.start(); t.join()                      # step 3, while step 2's operation "runs"
        fsio._done_step("k")
        print("survived")
    """)
    trace = tmp_path / "trace"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "DAGRUN_CRASH_AT": "2:after", "DAGRUN_CRASH_TRACE": str(trace)})
    assert r.returncode == -9 and "survived" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert trace.read_text().split("\n")[0].endswith(" k")
