"""Crash safety of fan-out and `dagrun add` (issue 18): SIGKILL at a file-system step
(DAGRUN_CRASH_AT, see tests/reliability/README.md), then resume: the plan is the old one or
the new one, every instance exists once and runs exactly once (an attempt cut off by the
crash is recorded lost and repeated, as for any task), and the goal ends done.

The quick tests crash at every step of the expansion and of the join, and at every step of
`dagrun add` (run from inside an agent); the `slow` one crashes the engine at every gap of
the whole fan-out goal."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import DAGRUN, MUTMUT, crash_step, events

ITEMS = ["a", "b", "c", "d"]
TASKS = ["plan-files", "migrate", *(f"migrate.{k}" for k in range(len(ITEMS))), "join"]

pytestmark = pytest.mark.skipif(MUTMUT, reason="runs the installed dagrun, which mutmut does not mutate")


def _dagrun(args, home, env=None, timeout=60):
    e = dict(os.environ)
    for k in ("DAGRUN_HOME", "DAGRUN_CRASH_AT", "DAGRUN_CRASH_ON", "DAGRUN_CRASH_TRACE", "DAGRUN_STEP_TRACE", "DAGRUN_GOAL",
              "DAGRUN_TASK"):
        e.pop(k, None)
    e["DAGRUN_CLAIM_GRACE"] = "0"          # one engine at a time: a claim without owner.json is dead
    e.update(env or {})
    return subprocess.run([DAGRUN, f"--home={home}", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout)


def _plan(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    log = base / "ran.log"
    (base / "items").write_text(json.dumps(ITEMS))
    note = f'echo "$DAGRUN_TASK $DAGRUN_ATTEMPT" >> {log}'
    doc = {"goal": "g", "tasks": [
        {"id": "plan-files", "prompt": "l", "agent": f"cat {base / 'items'}; {note}"},
        {"id": "migrate", "for_each": {"from": "plan-files"}, "prompt": "{{item}}", "agent": f"head -1; {note}"},
        {"id": "join", "deps": ["migrate"], "prompt": "s", "agent": f"grep -c '^## Output of migrate' ; {note}"}]}
    p = base / "dag.json"
    p.write_text(json.dumps(doc))
    return p


def _check(home: Path, log: Path) -> list[str]:
    """The invariants after the goal ended; a list of problems."""
    bad = []
    g = home / "goals/g"
    pj = json.loads((g / "plan.json").read_text())
    ids = [t["id"] for t in pj["tasks"]]
    if sorted(ids) != sorted(TASKS) or len(ids) != len(set(ids)):
        bad.append(f"plan.json tasks {ids}")
    for t in TASKS:
        if not (g / "tasks" / t / "done").exists():
            bad.append(f"{t} not done")
    if bad:
        return bad
    outs = [(g / f"tasks/migrate.{k}/output").read_text() for k in range(len(ITEMS))]
    if outs != [f"{x}\n" for x in ITEMS]:
        bad.append(f"instance outputs {outs}")
    if json.loads((g / "tasks/migrate/output").read_text()) != outs:
        bad.append("the template's output is not its instances' outputs")
    if (g / "tasks/join/output").read_text() != f"{len(ITEMS)}\n":
        bad.append(f"join saw {(g / 'tasks/join/output').read_text()!r} instance outputs")
    ran: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        t, a = line.split()
        ran.setdefault(t, []).append(int(a))
    for t in TASKS:
        if t == "migrate":
            if t in ran:
                bad.append("the template ran an agent")
            continue
        done = json.loads((g / "tasks" / t / "done").read_text())["attempt"]
        if ran.get(t, []).count(done) != 1:
            bad.append(f"{t}: attempt {done} ran {ran.get(t, []).count(done)} times")
        for a in set(ran.get(t, [])) - {done}:
            rec = json.loads((g / "tasks" / t / "attempts" / f"{a}.json").read_text())
            if rec["outcome"] not in ("lost", "interrupted"):
                bad.append(f"{t}: attempt {a} ran and was recorded {rec['outcome']}")
    if sum(1 for e in events(home, "g") if e.get("edit") == "fanout") > 1:
        bad.append("expanded twice")
    for t in TASKS:
        if (g / "tasks" / t / "claim").exists():
            bad.append(f"{t}: claim left")
    return bad


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("fanout-ref")
    plan = _plan(base)
    trace = base / "steps"
    r = _dagrun(["run", plan, "-j", "2"], base / "home", {"DAGRUN_STEP_TRACE": str(trace)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert _check(base / "home", base / "ran.log") == []
    return _Labels([ln.split(" ", 1)[1] for ln in trace.read_text().splitlines()], base / "home")


class _Labels(list):
    """The step labels of the clean reference run, and its home (for crash_step)."""
    def __init__(self, labels: list[str], home: Path):
        super().__init__(labels)
        self.home = home


def _trial(base: Path, k: int, after: bool, ref: _Labels | None = None) -> tuple[str, list[str]]:
    """ref: crash at the step that was the k-th of the reference run, named by its label
    (crash_step); else at the k-th step of this run."""
    plan = _plan(base)
    home = base / "home"
    trace = base / "died"
    crash = {"DAGRUN_CRASH_AT": f"{k}:after" if after else str(k), "DAGRUN_CRASH_TRACE": str(trace)}
    if ref is not None:
        crash.update(crash_step(ref, k, ref.home, after))
    r = _dagrun(["run", plan, "-j", "2"], home, crash)
    where = trace.read_text().strip() if trace.exists() else "(no crash)"
    assert r.returncode in (0, -9), r.stdout + r.stderr
    for _ in range(3):
        r = _dagrun(["run", plan, "-j", "2"], home)
        if r.returncode == 0:
            break
    else:
        return where, [f"resume exited {r.returncode}: {r.stdout[-500:]} {r.stderr[-500:]}"]
    return where, _check(home, base / "ran.log")


def _walk(tmp_path, gaps, ref: _Labels | None = None):
    problems = []
    for k, after in gaps:
        where, bad = _trial(tmp_path / f"k{k}{'a' if after else ''}", k, after, ref)
        if bad:
            problems.append(f"crash {'after' if after else 'at'} step {k} ({where}): {'; '.join(bad)}")
    assert not problems, "\n".join(problems)


def test_crash_at_the_steps_of_the_expansion_and_the_join(tmp_path, reference):
    """The gaps that matter most: around the `from` task's done marker (expanded by the next
    engine), every step of the expansion (plan.json published, its event), the join's marker."""
    at = [i for i, lb in enumerate(reference, 1) if lb.endswith("tasks/plan-files/done")
          or lb.endswith("goals/g/plan.json") or lb.endswith("tasks/migrate/done")]
    # right before the step ahead of each, before it and after it -- each named by its label:
    # with two agents at a time the k-th step of another run is another one
    points = sorted({p for i in at for p in ((i - 1, False), (i, False), (i, True))})
    _walk(tmp_path, points, reference)


@pytest.mark.slow
def test_crash_at_every_step_of_the_expansion_and_the_join(tmp_path, reference):
    """Every step from the template's `from` task's commit to the join's, before and after."""
    first = next(i for i, lb in enumerate(reference, 1) if "plan-files/done" in lb)
    expand = max(i for i, lb in enumerate(reference, 1) if lb.endswith("goals/g/plan.json"))
    join = [i for i, lb in enumerate(reference, 1) if "/tasks/migrate/" in lb]
    steps = sorted(set(range(first, expand + 3)) | set(join))
    _walk(tmp_path, [(k, False) for k in steps] + [(expand, True)])


@pytest.mark.slow
def test_crash_at_every_gap_of_a_fan_out_goal(tmp_path, reference):
    _walk(tmp_path, [(k, False) for k in range(1, len(reference) + 1)] + [(len(reference), True)])


# ---------------------------------------------------------------------------------- add
def _add_plan(base: Path, crash: str | None) -> Path:
    """`boss` adds three sub-goals from inside its run; its `dagrun add` may be crashed."""
    base.mkdir(parents=True, exist_ok=True)
    log = base / "ran.log"
    note = f'echo "$DAGRUN_TASK $DAGRUN_ATTEMPT" >> {log}'
    frag = base / "frag.json"
    frag.write_text(json.dumps({"defaults": {"agent": f"head -1; {note}"}, "tasks": [
        {"id": f"sub{i}", "deps": ["boss"], "prompt": f"sub-goal {i}"} for i in range(3)]}))
    env = f'[ "$DAGRUN_ATTEMPT" = 1 ] && export DAGRUN_CRASH_AT={crash}; ' if crash else ""
    doc = {"goal": "g", "tasks": [
        # the first attempt's add is killed at step `crash` (exit 137): the agent fails, its
        # retry adds again -- or finds them added (refused: they exist) and goes on
        {"id": "boss", "retries": 2, "retry_backoff": 0, "prompt": "x",
         "agent": f"{env}{DAGRUN} add {frag} >/dev/null 2>&1 || grep -q '^ *.id.: .sub0.' $DAGRUN_HOME/goals/g/plan.json "
                  f"|| exit 1; echo planned; {note}"},
        {"id": "side", "prompt": "x", "agent": f"echo side; {note}"}]}
    p = base / "dag.json"
    p.write_text(json.dumps(doc))
    return p


def test_crash_at_every_step_of_add(tmp_path):
    """`dagrun add` killed at each of its steps: plan.json is the old or the new plan (never
    a part), nothing is added twice, and once the goal resumes every sub-goal runs once."""
    ref = tmp_path / "ref"
    r = _dagrun(["run", _add_plan(ref, None)], ref / "home")
    assert r.returncode == 0, r.stdout + r.stderr
    # the add's own steps: count them by running one add with a step trace
    probe = tmp_path / "probe"
    _dagrun(["submit", _add_plan(probe, None)], probe / "home")
    trace = probe / "steps"
    r = _dagrun(["add", "g", probe / "frag.json"], probe / "home", {"DAGRUN_STEP_TRACE": str(trace)})
    assert r.returncode == 0, r.stderr
    n = len(trace.read_text().splitlines())
    assert 3 <= n <= 12, trace.read_text()
    problems = []
    for k in range(1, n + 2):
        base = tmp_path / f"k{k}"
        home = base / "home"
        _dagrun(["submit", _add_plan(base, str(k))], home)
        for _ in range(3):
            r = _dagrun(["run", "g"], home)
            if r.returncode == 0:
                break
        g = home / "goals/g"
        ids = [t["id"] for t in json.loads((g / "plan.json").read_text())["tasks"]]
        if ids != ["boss", "side", "sub0", "sub1", "sub2"]:
            problems.append(f"step {k}: plan {ids}")
            continue
        ran = [ln.split()[0] for ln in (base / "ran.log").read_text().splitlines()]
        for t in ids:
            if ran.count(t) != 1 or not (g / "tasks" / t / "done").exists():   # boss logs only when it got through
                problems.append(f"step {k}: {t} ran {ran.count(t)} times")
        if sum(1 for e in events(home, "g") if e.get("edit") == "add") > 1:
            problems.append(f"step {k}: added twice")
    assert not problems, "\n".join(problems)
