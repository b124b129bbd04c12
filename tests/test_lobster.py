"""contrib/lobster.sh: the POSIX-sh worker loop over the bash protocol, run with dash."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DAGRUN, REPO, agents_of, events, run, spawn, task_dir, wait_for, write_plan

LOBSTER = REPO / "contrib" / "lobster.sh"
pytestmark = pytest.mark.skipif(not shutil.which("dash"), reason="dash is not installed")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""                         # gone meanwhile


def sleeping(home) -> list[int]:
    """`sleep` processes of agents working for this test's home."""
    return [p for p in agents_of(home) if cmdline(p).startswith(b"sleep")]


def lobster(home, goal: str, **env) -> subprocess.Popen:
    e = dict(os.environ)
    e.update({"DAGRUN_HOME": str(home), "PATH": str(Path(DAGRUN).parent) + os.pathsep + e["PATH"], "POLL": "0.1"})
    e.update(env)
    return subprocess.Popen(["dash", str(LOBSTER), goal], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_lobster_runs_a_goal(home, plans):
    p = write_plan(plans, [
        {"id": "a", "prompt": "alpha"},
        {"id": "b", "prompt": "beta", "deps": ["a"]},
        {"id": "bad", "prompt": "p", "agent": "echo partial; echo oops >&2; exit 3", "retries": 1, "retry_backoff": 0},
        {"id": "c", "prompt": "p", "deps": ["bad"]},
        {"id": "wd", "prompt": "p", "agent": "pwd", "workdir": "sub"},
    ], goal="lob", defaults={"agent": 'echo "got: $(head -1)"; echo "note from $DAGRUN_TASK" >&2'})
    (plans / "sub").mkdir()
    run("submit", p, home=home)
    lb = lobster(home, "lob")
    out, err = lb.communicate(timeout=60)
    assert lb.returncode == 0, err
    assert out == ""
    assert err.splitlines()[-1] == f"lobster[{lb.pid}]: goal lob has ended"
    a, b = task_dir(home, "lob", "a"), task_dir(home, "lob", "b")
    assert (a / "output").read_text() == "got: alpha\n" and (a / "stderr.log").read_text() == "note from a\n"
    assert (b / "output").read_text() == "got: beta\n"
    assert "## Output of a" in (b / "prompt.md").read_text()
    assert (task_dir(home, "lob", "wd") / "output").read_text() == f"{plans / 'sub'}\n"
    bad = task_dir(home, "lob", "bad")
    failed = json.loads((bad / "failed").read_text())
    assert failed["attempt"] == 2 and failed["exit_code"] == 3 and failed["reason"] == "agent exited with code 3"
    assert (bad / "attempts" / "1.out").read_text() == "partial\n"
    assert (bad / "attempts" / "2.err").read_text() == "oops\n"
    st = {r["task"]: r["state"] for r in json.loads(run("status", "lob", "--json", home=home).stdout)["tasks"]}
    assert st == {"a": "done", "b": "done", "bad": "failed", "c": "blocked", "wd": "done"}
    done = json.loads((a / "done").read_text())
    assert done["worker"] == f"{os.uname().nodename}-{lb.pid}"


def test_agent_override_and_max_tasks(home, plans):
    p = write_plan(plans, [{"id": f"t{i}", "prompt": f"n{i}"} for i in range(3)], goal="ov",
                   defaults={"agent": "exit 9"})
    run("submit", p, home=home)
    lb = lobster(home, "ov", AGENT="tr n N", MAX_TASKS="2")
    lb.communicate(timeout=60)
    assert lb.returncode == 0
    outs = sorted((task_dir(home, "ov", f"t{i}") / "output").read_text() for i in range(3)
                  if (task_dir(home, "ov", f"t{i}") / "output").exists())
    assert len(outs) == 2 and all(o.startswith("N") for o in outs)


def test_cancel_reaches_the_agent_through_the_heartbeat(home, plans):
    """lease 3 -> heartbeat every second; a refused heartbeat stops the agent (and its
    children: the agent runs in its own process group)."""
    p = write_plan(plans, [{"id": "slow", "prompt": "p", "agent": "sleep 50 & sleep 51; wait"}],
                   goal="cx", lease=3)
    run("submit", p, home=home)
    lb = lobster(home, "cx")
    try:
        wait_for(lambda: len(sleeping(home)) >= 2, what="the agent")
        t0 = time.monotonic()
        run("cancel", "cx", "slow", home=home)
        wait_for(lambda: not sleeping(home), timeout=10, what="the agent to be stopped")
        assert time.monotonic() - t0 < 6
        out, err = lb.communicate(timeout=20)
    finally:
        if lb.poll() is None:
            os.killpg(lb.pid, signal.SIGKILL)
            lb.wait()
    assert lb.returncode == 0
    assert "slow: heartbeat refused (cancelled or claim lost): stopping the agent" in err
    assert (task_dir(home, "cx", "slow") / "cancelled").exists()


def test_sigterm_stops_the_agent_and_the_task_is_taken_again(home, plans):
    p = write_plan(plans, [{"id": "t", "prompt": "p"}], goal="term",
                   defaults={"agent": 'if [ "$DAGRUN_ATTEMPT" = 1 ]; then sleep 50 & sleep 51; wait; fi; echo second'})
    run("submit", p, home=home)
    lb = lobster(home, "term")
    wait_for(lambda: len(sleeping(home)) >= 2, what="the agent")
    os.kill(lb.pid, signal.SIGTERM)
    lb.communicate(timeout=20)
    assert lb.returncode == 143
    wait_for(lambda: not sleeping(home), timeout=10, what="the agent to be stopped")
    # the claim died with the script: the next worker takes the task (attempt 1 was lost)
    r = run("worker", "--until-idle", home=home, timeout=30)
    assert (task_dir(home, "term", "t") / "output").read_text() == "second\n"
    assert json.loads((task_dir(home, "term", "t") / "attempts" / "1.json").read_text())["outcome"] == "lost"
    assert "recovered term/t: holder" in r.stderr


def test_sigkilled_lobster_orphan_agent_is_reaped(home, plans):
    """SIGKILL leaves the agent running without its script. A worker proves the script dead,
    breaks the claim, finds the orphan by DAGRUN_RUN_ID and stops it, then runs the task."""
    p = write_plan(plans, [{"id": "t", "prompt": "p"}], goal="orph",
                   defaults={"agent": 'if [ "$DAGRUN_ATTEMPT" = 1 ]; then exec sleep 60; fi; echo fine'})
    run("submit", p, home=home)
    lb = lobster(home, "orph")
    orphans = wait_for(lambda: sleeping(home), what="the agent")
    os.kill(lb.pid, signal.SIGKILL)
    lb.wait()
    assert all(Path(f"/proc/{p}").exists() for p in orphans)     # still running: nobody told it
    w = spawn("worker", "--name", "sweeper", home=home)
    try:
        wait_for(lambda: (task_dir(home, "orph", "t") / "done").exists(), timeout=20, what="recovery")
    finally:
        os.killpg(w.pid, signal.SIGTERM)
        w.communicate(timeout=20)
    assert (task_dir(home, "orph", "t") / "output").read_text() == "fine\n"
    wait_for(lambda: not any(cmdline(p).startswith(b"sleep") for p in orphans), timeout=10,
             what="the orphan to be stopped")
    assert any(e.get("reason", "").startswith("claim broken: holder") for e in events(home, "orph"))


def test_heartbeats_while_the_agent_runs_and_timeout_is_enforced(home, plans):
    p = write_plan(plans, [{"id": "hb", "prompt": "p", "agent": "sleep 3; echo ok"},
                           {"id": "slow", "prompt": "p", "agent": "sleep 40 & sleep 41; wait", "timeout": 2,
                            "deps": ["hb"]}], goal="hbt", lease=3)
    run("submit", p, home=home)
    lb = lobster(home, "hbt")
    try:
        beat = task_dir(home, "hbt", "hb") / "claim" / "heartbeat"
        wait_for(beat.exists, timeout=10, what="a heartbeat (every lease/3 = 1 s)")
        m0 = beat.stat().st_mtime
        wait_for(lambda: not beat.exists() or beat.stat().st_mtime > m0, timeout=10, what="the next heartbeat")
        out, err = lb.communicate(timeout=30)
    finally:
        if lb.poll() is None:
            os.killpg(lb.pid, signal.SIGKILL)
            lb.wait()
    assert (task_dir(home, "hbt", "hb") / "output").read_text() == "ok\n"
    failed = json.loads((task_dir(home, "hbt", "slow") / "failed").read_text())
    assert failed["reason"] == "timed out after 2s" and failed["exit_code"] == 143
    assert "slow: timed out after 2s: stopping the agent" in err
    assert not sleeping(home)
