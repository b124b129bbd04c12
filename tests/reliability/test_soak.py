"""Randomised soak: four `dagrun worker` daemons serve rounds of a 100-task random DAG while a
chaos loop SIGKILLs a random worker at random moments (sometimes two at once) and starts it
again -- 200 kills by default (DAGRUN_SOAK_KILLS, seed DAGRUN_SOAK_SEED). Then the killing
stops, the goals finish, and every goal is checked like a crash trial: every task done
exactly once (a second run only for an attempt recorded lost/interrupted, attempt numbers
never reused), outputs and prompts byte-identical to a clean run, no claim left, events
parse, one agent.goal.finished per goal."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import DAGRUN, run, write_plan  # noqa: E402

N_TASKS = 100
WORKERS = 4


def make_dag(rng: random.Random) -> list[dict]:
    tasks = []
    for i in range(N_TASKS):
        k = rng.choice([0, 1, 1, 2, 2, 3]) if i else 0
        deps = sorted(rng.sample([f"t{j}" for j in range(max(0, i - 20), i)], min(k, i)))
        tasks.append({"id": f"t{i}", "prompt": f"task {i}", "deps": deps})
    return tasks


def agent(log: Path) -> str:
    # outputs depend on the prompt (cksum), so a wrong prompt anywhere shows in every output below it
    return (f'sum=$(cksum); sleep 0.$((RANDOM % 25)); '
            f'echo "$DAGRUN_GOAL $DAGRUN_TASK $DAGRUN_ATTEMPT" >> {log}; echo "$DAGRUN_TASK $sum"')


class Workers:
    def __init__(self, home: Path, logdir: Path):
        self.home, self.logdir = home, logdir
        self.procs: dict[int, subprocess.Popen] = {}
        self.kills = 0
        self.starts = 0
        self.dead: set[int] = set()

    def start(self, slot: int) -> None:
        e = dict(os.environ)
        e.pop("DAGRUN_HOME", None)
        e["DAGRUN_CLAIM_GRACE"] = "2"
        self.starts += 1
        err = open(self.logdir / f"w{slot}.log", "ab")
        self.procs[slot] = subprocess.Popen([DAGRUN, f"--home={self.home}", "worker", "-j", "2", "--name", f"w{slot}-{self.starts}",
                                             "--rescan", "2"], stdout=subprocess.DEVNULL, stderr=err, env=e,
                                            start_new_session=True)
        err.close()

    def kill(self, slot: int) -> None:
        p = self.procs[slot]
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        self.dead.add(p.pid)
        self.kills += 1

    def crashed(self) -> list[str]:
        """Workers that exited on their own (they must not: only our SIGKILLs end them)."""
        out = []
        for slot, p in self.procs.items():
            if p.poll() is not None and p.pid not in self.dead:
                out.append(f"w{slot} exited {p.returncode}: {(self.logdir / f'w{slot}.log').read_text()[-600:]}")
        return out

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def check_goal(home: Path, goal: str, ref_out: dict, ref_prompt: dict, lines: list[tuple[str, int]]) -> list[str]:
    bad = []
    gdir = home / "goals" / goal
    tdir = gdir / "tasks"
    for t in ref_out:
        d = tdir / t
        try:
            done = json.loads((d / "done").read_text())
        except (OSError, ValueError):
            bad.append(f"{goal}/{t}: not done")
            continue
        if (d / "output").read_bytes() != ref_out[t]:
            bad.append(f"{goal}/{t}: output differs from the clean run")
        if (d / "prompt.md").read_bytes() != ref_prompt[t]:
            bad.append(f"{goal}/{t}: prompt differs from the clean run")
        runs = [a for (x, a) in lines if x == t]
        n = int(done["attempt"])
        if runs.count(n) != 1:
            bad.append(f"{goal}/{t}: committed attempt {n} ran {runs.count(n)} times (run log {runs})")
        for a in set(runs) - {n}:
            if runs.count(a) != 1 or a > n:
                bad.append(f"{goal}/{t}: attempt {a} ran {runs.count(a)} times (committed {n}; log {runs})")
                continue
            try:
                rec = json.loads((d / "attempts" / f"{a}.json").read_text())
            except (OSError, ValueError):
                rec = {}
            if rec.get("outcome") not in ("lost", "interrupted"):
                bad.append(f"{goal}/{t}: attempt {a} ran to its end, recorded as {rec.get('outcome')!r}")
        if (d / "claim").exists() or list(d.glob(".claim.*")):
            bad.append(f"{goal}/{t}: a claim is left")
    for p in tdir.glob(".claim.*"):         # renamed away (claim.aside), never deleted
        bad.append(f"{goal}: a claim renamed away is left: {p.name}")
    evs = []
    for i, line in enumerate((gdir / "events.jsonl").read_bytes().split(b"\n")[:-1]):
        try:
            evs.append(json.loads(line))
        except ValueError:
            bad.append(f"{goal}: events.jsonl line {i + 1} does not parse")
    fin = [e for e in evs if e.get("type") == "agent.goal.finished"]
    if len(fin) != 1 or fin[0].get("outcome") != "done":
        bad.append(f"{goal}: {len(fin)} agent.goal.finished events")
    return bad


# One fixed seed (the same run every time: a failure reproduces) plus one from the clock (new
# ground every run; the seed is printed and in the failure message). DAGRUN_SOAK_SEED=n runs
# only seed n.
FIXED_SEED = 1
SEEDS = ([int(os.environ["DAGRUN_SOAK_SEED"])] if os.environ.get("DAGRUN_SOAK_SEED")
         else [FIXED_SEED, int(time.time())])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: "fixed" if s == FIXED_SEED else "clock")
def test_soak_random_kills_of_four_workers(tmp_path, seed):
    kills_wanted = int(os.environ.get("DAGRUN_SOAK_KILLS", "200"))
    rng = random.Random(seed)
    log = tmp_path / "ran.log"
    tasks = make_dag(random.Random(seed))
    plans = tmp_path / "plans"
    ref_plan = write_plan(plans, tasks, name="ref.json", goal="ref", defaults={"agent": agent(tmp_path / "ref.log")})
    ref_home = tmp_path / "ref-home"
    run("run", ref_plan, "-j", "8", "-q", home=ref_home, timeout=300)
    rt = ref_home / "goals" / "ref" / "tasks"
    ref_out = {t["id"]: (rt / t["id"] / "output").read_bytes() for t in tasks}
    ref_prompt = {t["id"]: (rt / t["id"] / "prompt.md").read_bytes() for t in tasks}

    home = tmp_path / "home"
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    w = Workers(home, logs)
    goals: list[str] = []

    def submit_round():
        g = f"soak{len(goals)}"
        p = write_plan(plans, tasks, name=f"{g}.json", goal=g, defaults={"agent": agent(log)})
        run("submit", p, home=home)
        goals.append(g)

    def finished(g):
        return (home / "goals" / g / "summary.json").exists()

    submit_round()
    submit_round()
    for slot in range(WORKERS):
        w.start(slot)
    t0 = time.monotonic()
    try:
        while w.kills < kills_wanted and time.monotonic() - t0 < 600:
            time.sleep(rng.uniform(0.02, 0.25))
            victims = rng.sample(range(WORKERS), 2 if rng.random() < 0.1 else 1)
            for v in victims:
                w.kill(v)
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0, 0.3))     # sometimes nobody replaces it for a while
            for v in victims:
                w.start(v)
            if all(finished(g) for g in goals[-2:]):
                submit_round()
            assert not w.crashed(), w.crashed()
        deadline = time.monotonic() + 120
        while not all(finished(g) for g in goals) and time.monotonic() < deadline:
            assert not w.crashed(), w.crashed()
            time.sleep(0.2)
    finally:
        w.stop()
    assert w.kills >= kills_wanted, f"only {w.kills} kills in 600 s"
    unfinished = [g for g in goals if not finished(g)]
    assert not unfinished, (f"goals not finished 120 s after the last kill: {unfinished} (seed {seed})\n"
                            + run("status", unfinished[0], home=home, check=False).stdout[-3000:])
    lines = [ln.split() for ln in log.read_text().splitlines()]
    bad = []
    for g in goals:
        bad += check_goal(home, g, ref_out, ref_prompt, [(t, int(a)) for (gg, t, a) in lines if gg == g])
    assert not bad, f"seed {seed}, {w.kills} kills, {len(goals)} goals:\n" + "\n".join(bad[:40])
    line = (f"soak: seed {seed}, {w.kills} kills, {len(goals)} goals of {N_TASKS} tasks, "
            f"{len(lines)} agent runs for {len(goals) * N_TASKS} tasks, {time.monotonic() - t0:.0f}s")
    print(line)
    out = os.environ.get("DAGRUN_RELIABILITY_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
