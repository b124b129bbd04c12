"""Crash-at-every-step harness: run a goal with `DAGRUN_CRASH_AT=k`, restart without it, and
check that the files tell the truth.

The goal is a diamond (a -> b, c -> d) followed by a chain k0..k5: ten tasks. Every agent
reads its prompt from stdin, appends "<task> <attempt>" to a run log when it has finished its
work, and prints "<task> <cksum of its prompt>": so an output is right only if the whole chain
of prompts above it was rendered right, and comparing outputs with a clean reference run
checks every prompt of the goal.

The invariants checked after every crash + restart (`check_home`):

  I1  the restart exits 0 and every task is done: `done` marker, `output`, `prompt.md`, all
      byte-identical to the clean reference run;
  I2  exactly once: each task's run log has exactly one line for the attempt its `done`
      marker names. Any other line must be an earlier attempt that was cut off before its
      `done` marker was written -- it has attempts/<n>.json with outcome "lost" (its engine
      died) or "interrupted" (its engine stopped, e.g. on a disk error), which do not use up
      retries -- and a task whose `done` marker existed when the engine died never runs again;
  I3  no claim is left (no claim/, no .claim.* folder), no `.new-*` goal under construction,
      no `.spare` folder (the spare pool, removed 2026-12-06);
  I4  nothing is half-written: every JSON file parses, every line of events.jsonl parses,
      and the only other names allowed are temp files `.<name>.<pid>.tmp` of the process
      that was killed (swept later by age);
  I5  events.jsonl ends with exactly one agent.goal.finished (outcome done) per run to the end.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import DAGRUN, crash_step, write_plan  # noqa: E402

GOAL = "crash"
TASKS = ["a", "b", "c", "d"] + [f"k{i}" for i in range(6)]
TMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$")
LEASE = 1.5
JSON_NAMES = {"done", "failed", "cancelled", "plan.json", "summary.json", "owner.json"}


def agent(log: Path) -> str:
    # c waits (at most 1 + 3 s) for its owner.json, then until its engine has renewed the lease
    # once -- owner.json's mtime changes -- so that b and c overlap, a crash can orphan a running agent, and every run
    # has exactly one `utime` step (the renewal comes every LEASE/3 = 0.5 s; the other agents
    # end long before theirs)
    return (f'sum=$(cksum); if [ "$DAGRUN_TASK" = c ]; then o="$DAGRUN_TASK_DIR/claim/owner.json"; '
            f'i=0; while [ $i -lt 100 ] && [ ! -e "$o" ]; do sleep 0.01; i=$((i+1)); done; '
            f'm0=$(stat -c %y "$o" 2>/dev/null); i=0; while [ $i -lt 300 ] && '
            f'[ "$(stat -c %y "$o" 2>/dev/null)" = "$m0" ]; do sleep 0.01; i=$((i+1)); done; fi; '
            f'echo "$DAGRUN_TASK $DAGRUN_ATTEMPT" >> {log}; echo "$DAGRUN_TASK $sum"')


def make_plan(folder: Path, log: Path) -> Path:
    tasks = [{"id": "a", "prompt": "start"}, {"id": "b", "prompt": "left", "deps": ["a"]},
             {"id": "c", "prompt": "right", "deps": ["a"]}, {"id": "d", "prompt": "join", "deps": ["b", "c"]}]
    prev = "d"
    for i in range(6):
        tasks.append({"id": f"k{i}", "prompt": f"step {i}", "deps": [prev]})
        prev = f"k{i}"
    # lease 1.5 s: the engine renews its claims' lease (utime of owner.json) every 0.5 s, and
    # c waits for that renewal: the `utime` step is crashed like every other step
    return write_plan(folder, tasks, goal=GOAL, defaults={"agent": agent(log)}, lease=LEASE)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str
    pid: int


def dagrun(args: list, home: Path, env: dict | None = None, timeout: float = 60) -> Done:
    e = dict(os.environ)
    for k in ("DAGRUN_HOME", "DAGRUN_CRASH_AT", "DAGRUN_CRASH_ON", "DAGRUN_CRASH_TRACE", "DAGRUN_STEP_TRACE"):
        e.pop(k, None)
    e["DAGRUN_CLAIM_GRACE"] = "0"     # one engine at a time: a claim without owner.json is dead
    e.update(env or {})
    p = subprocess.Popen([DAGRUN, f"--home={home}", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=e)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return Done(p.returncode, out, err, p.pid)


@dataclass
class Reference:
    outputs: dict[str, bytes]
    prompts: dict[str, bytes]
    steps: int
    labels: list[str]
    home: Path | None = None         # of the clean run (its labels name paths under it)


def reference_run(base: Path, mode: str = "run") -> Reference:
    """A clean run, counting its file-system steps."""
    base.mkdir(parents=True, exist_ok=True)
    log = base / "ran.log"
    plan = make_plan(base / "plan", log)
    home = base / "home"
    trace = base / "steps"
    r = drive(mode, plan, home, {"DAGRUN_STEP_TRACE": str(trace)})
    assert r.returncode == 0, r.stderr
    tdir = home / "goals" / GOAL / "tasks"
    labels = [ln.split(" ", 1)[1] for ln in trace.read_text().splitlines()]
    assert any(lab.startswith("utime ") for lab in labels), "no lease renewal in the clean run"
    return Reference(outputs={t: (tdir / t / "output").read_bytes() for t in TASKS},
                     prompts={t: (tdir / t / "prompt.md").read_bytes() for t in TASKS},
                     steps=len(labels), labels=labels, home=home)


def drive(mode: str, plan, home: Path, env: dict):
    """`dagrun run PLAN`, or (mode "worker") `submit` then `worker --until-idle`."""
    if mode == "worker":
        r = dagrun(["submit", plan], home)
        assert r.returncode == 0, r.stderr
        return dagrun(["worker", "--until-idle"], home, env)
    return dagrun(["run", plan], home, env)


@dataclass
class Trial:
    k: int
    after: bool
    crashed: bool = False
    where: str = ""                        # the step it died at
    done_before: set = field(default_factory=set)
    restarts: int = 0
    problems: list[str] = field(default_factory=list)


def crash_trial(base: Path, ref: Reference, k: int, after: bool, mode: str = "run",
                restart_env: dict | None = None, by_label: bool = False) -> Trial:
    """Crash at step k (before it, or after it), restart until the goal ends, check.
    restart_env: extra environment of the first restart (e.g. DAGRUN_CRASH_AT to crash the
    recovery too; later restarts are clean). by_label: at the step that was the k-th of the
    reference run, named by its label (conftest.crash_step), not the k-th of this run."""
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    log = base / "ran.log"
    plan = make_plan(base / "plan", log)
    home = base / "home"
    trace = base / "trace"
    tr = Trial(k, after)
    crash = {"DAGRUN_CRASH_AT": f"{k}:after" if after else str(k), "DAGRUN_CRASH_TRACE": str(trace)}
    if by_label:
        crash.update(crash_step(ref.labels, k, ref.home, after))
    first = drive(mode, plan, home, crash)
    tr.crashed = first.returncode == -9
    if not tr.crashed:
        if first.returncode != 0:
            tr.problems.append(f"uncrashed run exited {first.returncode}: {first.stderr.strip()[-300:]} "
                               f"{diagnose(home)}")
        return tr
    tr.where = trace.read_text().strip().split(" ", 1)[-1] if trace.exists() else "?"
    dead_pids = {first.pid}
    tdir = home / "goals" / GOAL / "tasks"
    tr.done_before = {t for t in TASKS if (tdir / t / "done").exists()}
    log_before = _log_lines(log)
    restart_envs = [{}] * 3
    if restart_env:
        restart_envs = [restart_env] + [{}] * 3
    last = None
    for env in restart_envs:
        tr.restarts += 1
        if mode == "worker":
            last = dagrun(["worker", "--until-idle"], home, env)
        else:
            last = dagrun(["run", plan], home, env)
        if last.returncode == -9:
            dead_pids.add(last.pid)
            continue
        if mode == "run" or all((tdir / t / "done").exists() for t in TASKS):
            break
    if last is None or last.returncode != 0:
        tr.problems.append(f"restart exited {last.returncode if last else None}: "
                           f"{(last.stderr if last else '').strip()[-400:]} {diagnose(home)}")
        return tr
    tr.problems += check_home(home, ref, log, log_before, tr.done_before, dead_pids=dead_pids)
    temps = [p for p in home.rglob(".*.tmp") if TMP_RE.match(p.name)]
    if temps and not tr.problems:
        # leftovers of the killed writer are swept once old: age them and start an engine
        for p in temps:
            os.utime(p, (p.stat().st_atime - 1000, p.stat().st_mtime - 1000))
        again = dagrun(["run", GOAL], home)
        left = [str(p.relative_to(home)) for p in temps if p.exists()]
        if again.returncode != 0 or left:
            tr.problems.append(f"old temp files not swept by the next engine: {left} (exit {again.returncode})")
    return tr


def agents_of(home: Path) -> list[int]:
    """Live agent processes (DAGRUN_RUN_ID) of this home."""
    from conftest import processes_with_env
    out = []
    for p in processes_with_env("DAGRUN_RUN_ID"):
        try:
            if f"DAGRUN_HOME={home}".encode() in Path(f"/proc/{p}/environ").read_bytes():
                out.append(p)
        except OSError:
            pass
    return out


def diagnose(home: Path) -> str:
    """What the files say about the tasks that did not end done (for failure reports)."""
    out = []
    tdir = home / "goals" / GOAL / "tasks"
    for t in TASKS:
        d = tdir / t
        if (d / "done").exists():
            continue
        facts = [p.name for p in d.iterdir()] if d.is_dir() else []
        for name in ("failed", "cancelled"):
            if (d / name).exists():
                facts.append(f"{name}={(d / name).read_text()[:300]}")
        for rec in sorted((d / "attempts").glob("*.json")) if (d / "attempts").is_dir() else []:
            facts.append(f"{rec.name}={rec.read_text()[:300]}")
        out.append(f"[{t}: {' '.join(facts)}]")
    return " ".join(out)


def _log_lines(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    out = []
    for ln in log.read_text().splitlines():
        t, _, n = ln.partition(" ")
        out.append((t, int(n)))
    return out


def check_home(home: Path, ref: Reference, log: Path, log_before: list, done_before: set,
               dead_pids: set = frozenset()) -> list[str]:
    """The invariants I1-I5 (see the module docstring). Returns the problems found."""
    bad: list[str] = []
    gdir = home / "goals" / GOAL
    tdir = gdir / "tasks"
    runs = _log_lines(log)
    new_runs = runs[len(log_before):]
    # I1 every task done, byte-identical to the reference
    for t in TASKS:
        d = tdir / t
        if not (d / "done").is_file():
            bad.append(f"{t}: no done marker")
            continue
        if (d / "output").read_bytes() != ref.outputs[t] if (d / "output").is_file() else True:
            bad.append(f"{t}: output missing or differs from the reference")
        if not (d / "prompt.md").is_file() or (d / "prompt.md").read_bytes() != ref.prompts[t]:
            bad.append(f"{t}: prompt.md missing or differs from the reference")
    # I2 exactly once
    for t in TASKS:
        try:
            done = json.loads((tdir / t / "done").read_text())
        except (OSError, ValueError):
            continue
        n = int(done.get("attempt", 0))
        mine = [a for (x, a) in runs if x == t]
        if mine.count(n) != 1:
            bad.append(f"{t}: committed attempt {n} appears {mine.count(n)} times in the run log {mine}")
        for a in set(mine) - {n}:
            if a > n or mine.count(a) != 1:
                bad.append(f"{t}: attempt {a} in the run log {mine} but attempt {n} is the committed one")
                continue
            rec = tdir / t / "attempts" / f"{a}.json"
            try:
                outcome = json.loads(rec.read_text()).get("outcome")
            except (OSError, ValueError):
                outcome = None
            if outcome not in ("lost", "interrupted"):
                bad.append(f"{t}: attempt {a} ran to the end but is recorded as {outcome!r}, "
                           f"not lost/interrupted")
        if t in done_before and any(x == t for (x, _a) in new_runs):
            bad.append(f"{t}: ran again after the restart although its done marker existed")
    # I3 nothing left held or under construction
    for p in tdir.glob("*/claim"):
        bad.append(f"claim left: {p.relative_to(home)}")
    for p in [*tdir.glob("*/.claim.*"), *tdir.glob(".claim.*")]:
        bad.append(f"broken/released claim folder left: {p.relative_to(home)}")
    for p in (home / "goals").glob(".new-*"):
        bad.append(f"half-built goal folder left: {p.relative_to(home)}")
    if os.path.lexists(home / ".spare"):                  # (the spare pool's, before 2026-12-06)
        bad.append("a .spare folder was made: dagrun keeps no spare pool")
    # I4 nothing half-written
    for root, dirs, files in os.walk(home):
        for name in files:
            p = Path(root) / name
            rel = p.relative_to(home)
            m = TMP_RE.match(name)
            if m:
                if int(m.group(1)) not in dead_pids:
                    bad.append(f"temp file of a process that was not killed: {rel}")
                continue
            if name.startswith(".") and name not in (".break.lock", ".edit.lock"):   # flock files
                bad.append(f"unexpected dot-file: {rel}")
                continue
            if name in JSON_NAMES or name.endswith(".json"):
                try:
                    json.loads(p.read_bytes())
                except ValueError:
                    bad.append(f"half-written JSON: {rel}")
            elif name == "events.jsonl":
                for i, line in enumerate(p.read_bytes().split(b"\n")[:-1]):
                    try:
                        json.loads(line)
                    except ValueError:
                        bad.append(f"events.jsonl line {i + 1} does not parse: {line[:80]!r}")
                if not p.read_bytes().endswith(b"\n"):
                    bad.append("events.jsonl ends with a partial line")
    # I5 the goal's end is announced once
    try:
        evs = [json.loads(x) for x in (gdir / "events.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        evs = []
    fin = [e for e in evs if e.get("type") == "agent.goal.finished"]
    if len(fin) != 1 or fin[0].get("outcome") != "done":
        bad.append(f"expected one agent.goal.finished (done), found {[e.get('outcome') for e in fin]}")
    if not (gdir / "summary.json").is_file():
        bad.append("no summary.json")
    return bad
