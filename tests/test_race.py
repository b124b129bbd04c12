"""The race: eight worker processes -- `dagrun worker` daemons, cron-style `--until-idle`
workers and contrib/lobster.sh loops under dash -- on one goal of 500 tasks. Every task must
run exactly once (each agent appends its task id to a shared log), nobody's live claim may
be broken, and the goal must finish. Once with inotify, once polling."""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import DAGRUN, REPO, events, run, spawn, task_dir, wait_for, write_plan

LOBSTER = REPO / "contrib" / "lobster.sh"
WIDTH, DEPTH = 50, 10


def plan_500(plans: Path, log: Path) -> Path:
    """10 layers of 50; each task needs two tasks of the layer above (so readiness arrives
    in waves, and every worker keeps finding freshly unlocked work)."""
    tasks = []
    for d in range(DEPTH):
        for i in range(WIDTH):
            deps = [] if d == 0 else sorted({f"l{d - 1}-{i}", f"l{d - 1}-{(i * 7 + 3) % WIDTH}"})
            tasks.append({"id": f"l{d}-{i}", "prompt": f"layer {d} item {i}", "deps": deps})
    return write_plan(plans, tasks, goal="race",
                      defaults={"agent": f'echo "$DAGRUN_TASK $DAGRUN_WORKER" >> {log}'})


def drain(pr: subprocess.Popen) -> threading.Thread:
    """Read the worker's stderr (and stdout) as it writes them, into pr.err. Left in the pipe,
    a daemon's log -- a line of ~78 bytes per event of its own, 28 KB in a typical run --
    fills it (64 KiB) when the daemon runs ~420 of the 500 tasks, as one did in each failing
    run; it then blocks in write(2) mid-turn, holding the claims it is starting: the stall
    that made a live holder's claim look half-born to its peers (tests/reliability/README.md,
    "The race")."""
    pr.err = b""

    def read() -> None:
        if pr.stdout is not None:
            threading.Thread(target=pr.stdout.read, daemon=True).start()
        pr.err = pr.stderr.read()

    th = threading.Thread(target=read, daemon=True)
    th.start()
    return th


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("dash"), reason="dash is not installed")
@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_eight_workers_500_tasks_exactly_once(home, plans, tmp_path, mode):
    log = tmp_path / "ran.log"
    p = plan_500(plans, log)
    run("submit", p, home=home)
    poll = ["--poll", "0.2"] if mode == "poll" else []
    env = {"DAGRUN_NO_INOTIFY": "1"} if mode == "poll" else {}
    procs: dict[str, subprocess.Popen] = {}
    readers: dict[str, threading.Thread] = {}
    lenv = dict(os.environ, DAGRUN_HOME=str(home), POLL="0.2", **env)
    lenv["PATH"] = str(Path(DAGRUN).parent) + os.pathsep + lenv["PATH"]
    try:
        for k in range(4):
            procs[f"lobster-{k}"] = subprocess.Popen(["dash", str(LOBSTER), "race"], env=lenv,
                                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                     start_new_session=True)
            readers[f"lobster-{k}"] = drain(procs[f"lobster-{k}"])
        for k in range(2):
            procs[f"daemon-{k}"] = spawn("worker", "-j", "3", "--name", f"daemon-{k}", *poll, home=home, env=env)
            readers[f"daemon-{k}"] = drain(procs[f"daemon-{k}"])
        time.sleep(0.5)     # the cron-style workers join a goal already in progress
        for k in range(2):
            procs[f"cron-{k}"] = spawn("worker", "--until-idle", "-j", "3", "--name", f"cron-{k}", *poll,
                                       home=home, env=env)
            readers[f"cron-{k}"] = drain(procs[f"cron-{k}"])
        summary = home / "goals" / "race" / "summary.json"
        wait_for(summary.exists, timeout=240, interval=0.2, what="the goal to finish")
        for name, pr in procs.items():
            if name.startswith(("lobster", "cron")):     # these leave on their own
                pr.wait(timeout=60)
                assert pr.returncode == 0, (name, pr.returncode)
    finally:
        for name, pr in procs.items():
            if pr.poll() is None:
                os.killpg(pr.pid, signal.SIGTERM)
            pr.wait(timeout=60)
            readers[name].join(timeout=60)
    lines = log.read_text().splitlines()
    ids = [line.split()[0] for line in lines]
    twice = [t for t, n in collections.Counter(ids).items() if n > 1]
    said = [f"{name}: {line}" for name, pr in procs.items() for line in pr.err.decode(errors="replace").splitlines()
            if any(f"/{t} " in line or f" {t}:" in line for t in twice)]
    assert not twice, f"tasks executed more than once: {twice}\n" + "\n".join(said)
    assert len(ids) == WIDTH * DEPTH
    assert json.loads(summary.read_text())["outcome"] == "done"
    tasks = home / "goals" / "race" / "tasks"
    assert len(list(tasks.glob("*/done"))) == WIDTH * DEPTH and not list(tasks.glob("*/claim"))
    for t in ("l0-0", "l9-49"):
        assert json.loads((task_dir(home, "race", t) / "done").read_text())["attempt"] == 1
    ev = events(home, "race")
    assert not [e for e in ev if "claim broken" in str(e.get("reason", ""))], "a live claim was broken"
    by = collections.Counter(line.split()[1] for line in lines)
    engines = {"daemon-0", "daemon-1", "cron-0", "cron-1"}
    lobster_runs = sum(n for w, n in by.items() if w not in engines)
    assert lobster_runs > 0 and len(lines) - lobster_runs > 0, by
    print(f"\n{mode}: runs per worker {dict(by)}")


@pytest.mark.slow
def test_a_run_and_a_worker_on_one_goal_never_wait_for_the_rescan(home, plans):
    """`dagrun run -j 4` and `dagrun worker --until-idle -j 4` share a fan-out of 200 no-op
    tasks; the last task needs all the others, so whichever engine starts it must have read
    the other's last `done` lines. Before the fix, 1 pair in ~8 took 10 s: the run's engine
    had read the worker's final lines (or taken their inotify event) in a turn whose dispatch
    had already run, then slept until its periodic rescan (engine.py `_loop_once`, events.py
    `Reader.read`). Eight pairs, each well under the 10 s rescan."""
    tasks = [{"id": "root", "prompt": "r"}]
    tasks += [{"id": f"t{i}", "prompt": "x", "deps": ["root"]} for i in range(198)]
    tasks.append({"id": "end", "prompt": "e", "deps": [f"t{i}" for i in range(198)]})
    took = []
    for k in range(8):
        p = write_plan(plans, tasks, name=f"p{k}.json", goal=f"pair{k}", defaults={"agent": "true"})
        run("submit", p, home=home)
        t0 = time.monotonic()
        w = spawn("worker", "--until-idle", "-j", "4", home=home)
        drain(w)
        r = spawn("run", f"pair{k}", "-j", "4", "-q", home=home)
        drain(r)
        try:
            assert r.wait(timeout=60) == 0
            assert w.wait(timeout=60) == 0
        finally:
            for pr in (r, w):
                if pr.poll() is None:
                    os.killpg(pr.pid, signal.SIGKILL)
        took.append(round(time.monotonic() - t0, 2))
        assert (task_dir(home, f"pair{k}", "end") / "done").exists()
    assert max(took) < 7.0, f"a pair waited for the rescan: {took}"
