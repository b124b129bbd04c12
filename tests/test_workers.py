"""`dagrun worker`: the daemon (systemd) and --until-idle (cron), polling mode, log lines."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import events, run, spawn, task_dir, wait_for, write_plan

LOG_LINE = re.compile(r"^dagrun: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \S+( \w+=(\S+|\"[^\"]*\"))*"
                      r"|worker \S+ .*|warning: .*|recovered .*)$")


def stop(p: subprocess.Popen, sig=signal.SIGTERM) -> tuple[str, str]:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    out, err = p.communicate(timeout=30)
    return out.decode(), err.decode()


def layered(plans: Path, goal: str, log: Path, *, width: int, depth: int, sleep: float = 0.0, **top) -> Path:
    """depth layers of width tasks; each task depends on two of the layer above."""
    agent = (f"sleep {sleep}; " if sleep else "") + f'echo "$DAGRUN_TASK $DAGRUN_WORKER" >> {log}'
    tasks = []
    for d in range(depth):
        for i in range(width):
            deps = [] if d == 0 else sorted({f"l{d - 1}-{i}", f"l{d - 1}-{(i * 7 + 3) % width}"})
            tasks.append({"id": f"l{d}-{i}", "prompt": f"task {d}/{i}", "deps": deps})
    return write_plan(plans, tasks, goal=goal, defaults={"agent": agent}, **top)


def ran(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


# ------------------------------------------------------------------------------ daemon
@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_daemon_picks_up_new_goals_quickly(home, plans, mode):
    args = ["--poll", "0.2"] if mode == "poll" else []
    w = spawn("worker", "--name", "d1", *args, home=home)
    try:
        wait_for(lambda: (home / "goals").is_dir(), what="home")
        time.sleep(0.5)                                # the worker is idle in poll()
        for k in range(3):
            p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]}],
                           name=f"g{k}.json", goal=f"g{k}", defaults={"agent": "echo hi"})
            t0 = time.monotonic()
            run("submit", p, home=home)
            wait_for(lambda: (task_dir(home, f"g{k}", "b") / "done").exists(), timeout=10, interval=0.005,
                     what=f"goal g{k} done")
            # generous bound (shared 2-core machine); bench/latency.py measures the real number
            assert time.monotonic() - t0 < 3.0
        assert w.poll() is None                        # a daemon keeps serving
    finally:
        out, err = stop(w)
    assert w.returncode == 143
    lines = err.splitlines()
    assert lines[0].startswith("dagrun: worker d1 serving ") and lines[-1] == "dagrun: worker d1 exiting: stopped by signal 15"
    assert all(LOG_LINE.match(line) for line in lines), [x for x in lines if not LOG_LINE.match(x)]
    assert sum(" running attempt=1 worker=d1" in line for line in lines) == 6
    assert sum("goal.finished" in line for line in lines) == 3


def test_worker_logs_one_line_per_event(home, plans):
    """Even a reason with newlines in it stays on one line (journald, grep, cron mail)."""
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "printf 'bad\\nthing\\n' >&2; exit 3"}], goal="lg")
    r = run("worker", "--until-idle", "--name", "wl", home=home, check=0)
    assert r.stderr == ""                     # nothing to do: an idle cron run says nothing
    r = run("worker", "--until-idle", "--name", "wl", "--verbose", home=home, check=0)
    assert r.stderr.splitlines()[-1] == "dagrun: worker wl exiting: idle"
    run("submit", p, home=home)
    r = run("worker", "--until-idle", "--name", "wl", home=home, check=0)
    lines = r.stderr.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    failed = [line for line in lines if " lg/a failed " in line]
    assert len(failed) == 1 and "attempt=1 worker=wl" in failed[0] and "exit_code=3" in failed[0]
    assert r.stdout == ""


# ------------------------------------------------------------------------------ --until-idle
def test_until_idle_exits_at_once_when_nothing_to_do(home, plans):
    t0 = time.monotonic()
    run("worker", "--until-idle", home=home)            # an empty (even missing) home
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="done1", defaults={"agent": "true"})
    run("run", p, home=home)
    run("worker", "--until-idle", home=home)            # only a finished goal
    assert time.monotonic() - t0 < 15


def test_until_idle_waits_for_what_it_started_and_what_that_unlocks(home, plans, tmp_path):
    log = tmp_path / "ran.log"
    p = layered(plans, "chain", log, width=2, depth=3, sleep=0.3)
    run("submit", p, home=home)
    t0 = time.monotonic()
    r = run("worker", "--until-idle", "-j", "2", home=home, timeout=60)
    assert time.monotonic() - t0 >= 0.9                 # three waves of 0.3 s
    assert sorted(ran(log)) == sorted(f"l{d}-{i}" for d in range(3) for i in range(2))
    assert json.loads(run("status", "chain", "--json", home=home).stdout)["state"] == "done"
    assert r.stderr.splitlines()[-1].endswith("exiting: idle")


def test_until_idle_waits_for_a_retry_due_soon(home, plans, tmp_path):
    flag = tmp_path / "failed-once"
    agent = f'if [ -e {flag} ]; then echo ok; else touch {flag}; exit 1; fi'
    p = write_plan(plans, [{"id": "a", "prompt": "p", "retries": 1, "retry_backoff": 1}], goal="rt",
                   defaults={"agent": agent})
    run("submit", p, home=home)
    run("worker", "--until-idle", home=home, timeout=60)
    done = json.loads((task_dir(home, "rt", "a") / "done").read_text())
    assert done["attempt"] == 2


def test_until_idle_leaves_tasks_held_by_a_live_holder(home, plans):
    """A task held by a live script: the cron worker cannot run it nor what waits for it; it
    exits 0 at once and never touches the live claim."""
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]}], goal="held",
                   defaults={"agent": "true"})
    run("submit", p, home=home)
    keeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        run("claim", "--pid", str(keeper.pid), "held", home=home)
        nonce = json.loads((task_dir(home, "held", "a") / "claim" / "owner.json").read_text())["nonce"]
        t0 = time.monotonic()
        run("worker", "--until-idle", home=home, timeout=30)
        assert time.monotonic() - t0 < 10
        assert json.loads((task_dir(home, "held", "a") / "claim" / "owner.json").read_text())["nonce"] == nonce
        assert not (task_dir(home, "held", "b") / "claim").exists()
        # the holder finishes; the next cron run does the rest
        run("complete", "--pid", str(keeper.pid), "held", "a", home=home)
    finally:
        keeper.kill()
        keeper.wait()
    run("worker", "--until-idle", home=home, timeout=30)
    assert (task_dir(home, "held", "b") / "done").exists()


def test_until_idle_never_exits_while_holding_claims(home, plans, tmp_path):
    """A cron worker with a long agent stays until it is done, even though nothing else is
    ready; a second cron run meanwhile finds nothing and leaves at once."""
    go = tmp_path / "go"            # the agent runs until the second cron run is over, however long that takes
    p = write_plan(plans, [{"id": "long", "prompt": "p",
                            "agent": f"while [ ! -e {go} ]; do sleep 0.05; done; echo finished"}], goal="lng")
    run("submit", p, home=home)
    w = spawn("worker", "--until-idle", "--name", "first", home=home)
    try:
        wait_for(lambda: (task_dir(home, "lng", "long") / "claim" / "owner.json").exists(), what="claim")
        r = run("worker", "--until-idle", "--name", "second", home=home, timeout=30)
        assert w.poll() is None
        assert r.returncode == 0 and r.stderr == ""           # found nothing, said nothing
    finally:
        go.touch()
    out, err = w.communicate(timeout=30)
    assert w.returncode == 0
    assert (task_dir(home, "lng", "long") / "output").read_text() == "finished\n"
    assert json.loads((task_dir(home, "lng", "long") / "done").read_text())["worker"] == "first"


def test_overlapping_cron_runs_finish_the_goal_without_duplicates(home, plans, tmp_path):
    """Cron starts a worker every minute; when runs overlap the claims decide: no task runs
    twice, the goal finishes, both exit 0."""
    log = tmp_path / "ran.log"
    # layer 0 takes 2 s a task: the first run holds three of its eight tasks (-j 3) while
    # the second starts, so both get work however slow the machine is today
    p = layered(plans, "cron", log, width=8, depth=5, sleep='$(case $DAGRUN_TASK in l0-*) echo 2;; *) echo 0.05;; esac)')
    run("submit", p, home=home)
    w1 = spawn("worker", "--until-idle", "-j", "3", "--name", "cron-1", home=home)
    wait_for(lambda: list((home / "goals" / "cron" / "tasks").glob("*/claim")), what="the first run's claims")
    w2 = spawn("worker", "--until-idle", "-j", "3", "--name", "cron-2", home=home)
    for w in (w1, w2):
        w.communicate(timeout=120)
        assert w.returncode == 0
    names = ran(log)
    assert len(names) == 40 and len(set(names)) == 40
    who = {line.split()[1] for line in log.read_text().splitlines()}
    assert who == {"cron-1", "cron-2"}          # both did work
    assert json.loads(run("status", "cron", "--json", home=home).stdout)["state"] == "done"
    assert not any("claim broken" in str(e.get("reason")) for e in events(home, "cron"))


# ------------------------------------------------------------------------------ polling
def test_no_inotify_falls_back_to_polling(home, plans):
    w = spawn("worker", "--name", "np", home=home, env={"DAGRUN_NO_INOTIFY": "1"})
    try:
        wait_for(lambda: (home / "goals").is_dir(), what="home")
        p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="np", defaults={"agent": "true"})
        run("submit", p, home=home)
        wait_for(lambda: (task_dir(home, "np", "a") / "done").exists(), timeout=10, what="done via polling")
    finally:
        out, err = stop(w)
    assert "dagrun: warning: inotify unavailable: disabled by DAGRUN_NO_INOTIFY; polling every 1s" in err


def test_network_file_systems_are_detected(tmp_path):
    """A home on NFS/CIFS/...: inotify would miss other hosts' writes, so the watcher polls."""
    from dagrun.watcher import Watcher, fs_type
    mi = tmp_path / "mountinfo"
    mi.write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                  "40 22 0:50 / /srv/shared\\040home rw,relatime shared:30 - nfs4 fs:/export rw,vers=4.2\n"
                  "41 22 0:51 / /srv/shared rw - cifs //fs/x rw\n")
    assert fs_type("/srv/shared home/.dagrun/goals", str(mi)) == "nfs4"
    assert fs_type("/srv/shared/x", str(mi)) == "cifs"
    assert fs_type("/srv/sharedfoo", str(mi)) == "ext4"
    assert fs_type("/anything", str(tmp_path / "missing")) is None
    w = Watcher(str(tmp_path))                     # this test's tmp is local: inotify
    try:
        assert not w.polling and w.fd is not None
    finally:
        w.close()


def test_a_late_watcher_looks_at_the_goal_once_its_watches_are_placed(tmp_path, monkeypatch):
    """`dagrun run` polls for its first seconds (Engine(watch_after=), watcher.EARLY_POLL) and
    brings inotify up only if it is still going then (Watcher.start_late). What another
    process wrote before a watch existed raised no event: the engine looks at every goal once
    the watches are placed. Here the polls are made too rare to see anything (EARLY_POLL
    100 s), and another process cancels the running task just before the watches are placed
    (inside start_late, before the real one): the engine acts on it at once -- not when the
    agent ends (8 s) or the rescan (60 s)."""
    from conftest import submit_home
    from dagrun import watcher
    from dagrun.engine import Engine

    monkeypatch.setattr(watcher, "EARLY_POLL", 100.0)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "sleep 8", "kill_grace": 1}])
    late = []
    real = watcher.Watcher.start_late

    def start_late(self, goals):
        assert self.fd is None                                  # no watch yet
        subprocess.run([sys.executable, "-c", "import sys\nfrom dagrun.control import cancel\n"
                        "from dagrun.store import Home\ncancel(Home(sys.argv[1]), 'g', 'a', by='test', wait=0)",
                        home.root], check=True, timeout=30)      # (typer's `dagrun cancel` starts slower)
        up = real(self, goals)
        late.append((up, self.fd is not None))
        return up
    monkeypatch.setattr(watcher.Watcher, "start_late", start_late)
    t0 = time.monotonic()
    eng = Engine(home, goal="g", jobs=1, watch_after=0.3, rescan_every=60.0)
    rc = eng.run()
    took = time.monotonic() - t0
    assert late == [(True, True)]                               # inotify came up, late, once
    assert rc == 1 and took < 6.0, took
    assert os.path.exists(os.path.join(home.task_dir("g", "a"), "cancelled"))


def test_a_run_shorter_than_its_polling_start_never_starts_inotify(tmp_path, monkeypatch):
    """A run that ends within watch_after never starts its watcher: no inotify fd, no watch,
    none of watchdog's binding's work (the CLI's `dagrun run`: WATCH_AFTER)."""
    from conftest import submit_home
    from dagrun import watcher
    from dagrun.engine import WATCH_AFTER, Engine

    starts = []
    real = watcher.Watcher._start
    monkeypatch.setattr(watcher.Watcher, "_start", lambda self: (starts.append(1), real(self))[1])
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"]}])
    eng = Engine(home, goal="g", jobs=2, watch_after=WATCH_AFTER)
    assert eng.run() == 0 and starts == [] and eng.watcher.fd is None
    assert eng.watcher.reason == "the engine is ending"         # released: it never starts now
    eng = Engine(home, goal="g", jobs=2)                        # watch_after None: from the start
    assert eng.run() == 0 and starts == [1]


def test_a_run_removes_its_watches_when_its_goal_ends_so_the_exit_does_not_wait_for_the_kernel(tmp_path):
    """close(2) of an inotify fd waits for an SRCU grace period while the kernel frees the
    watches' marks (15-25 ms, and the process's exit waits for that close); watches removed
    before are freed by a kernel worker meanwhile. `dagrun run`'s engine removes its watches
    as soon as its only goal ends (Watcher.release), before the goal's end work: at the
    close, the fd has no watch left (/proc/self/fdinfo lists one `inotify wd:` line per watch).
    A worker serving every goal keeps its watches to the end."""
    from conftest import submit_home
    from dagrun.engine import Engine
    from dagrun.watcher import Watcher

    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"]}])
    at_close = []
    real = Watcher.close

    def close(self):
        if self.fd is not None:
            with open(f"/proc/self/fdinfo/{self.fd}") as f:
                at_close.append(sum(1 for line in f if line.startswith("inotify wd:")))
        real(self)
    Watcher.close = close
    try:
        eng = Engine(home, goal="g", jobs=2)
        assert eng.run() == 0
        assert at_close == [0] and eng.watcher.reason == "the engine is ending"
        eng = Engine(home, until_idle=True)            # a worker (no goal of its own): watches kept
        assert eng.run() == 0
        assert at_close[1] >= 1
    finally:
        Watcher.close = real
