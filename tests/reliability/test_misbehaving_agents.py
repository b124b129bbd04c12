"""Agents that misbehave: floods, binary output, stdin games, daemons, process-group tricks,
signals to dagrun, deleting their own task folder. dagrun must survive each (or, for a
signal aimed at it, stop the way it stops for a user), record what happened, and leave no
process it could have killed (the autouse fixture checks DAGRUN_RUN_ID processes; the tests
below also look right after dagrun exits)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import DAGRUN, events, run, spawn, task_dir, write_plan  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402


agents_of = H.agents_of


def states(home: Path, goal: str) -> dict[str, str]:
    return {r["task"]: r["state"] for r in json.loads(run("status", goal, "--json", home=home).stdout)["tasks"]}


class PeakRSS:
    """Samples the resident memory of a process (and nothing else) every 20 ms."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def _flood(home: Path, plans: Path, nbytes: int, cap: int | None):
    task = {"id": "flood", "prompt": "p", "agent": f"head -c {nbytes} /dev/zero | tr '\\0' y"}
    if cap:
        task["max_output"] = cap
    p = write_plan(plans, [task, {"id": "after", "prompt": "p", "deps": ["flood"], "agent": "wc -c"}], goal="flood")
    proc = spawn("run", p, "-q", home=home)
    rss = PeakRSS(proc.pid)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, rss.stop(), err


@pytest.mark.slow
def test_a_1gb_flood_is_streamed_to_disk_in_bounded_memory(home, plans):
    rc, peak, err = _flood(home, plans, 1_000_000_000, None)
    print(f"1 GB flood: dagrun peak RSS {peak / 2**20:.1f} MiB")
    assert rc == 0, err
    assert peak < 120 * 2**20, f"dagrun's RSS reached {peak / 2**20:.0f} MiB while streaming 1 GB"
    out = task_dir(home, "flood", "flood") / "output"
    assert out.stat().st_size == 1_000_000_000
    # the downstream prompt holds the first context_limit bytes and a pointer, not 1 GB
    prompt = (task_dir(home, "flood", "after") / "prompt.md").stat().st_size
    assert prompt < 70_000
    out.unlink()                      # do not keep a gigabyte in /tmp


def test_max_output_stops_a_flood_exactly(home, plans):
    rc, peak, err = _flood(home, plans, 10**12, 20_000_000)       # a terabyte of 'y', capped at 20 MB
    assert rc == 1, err
    assert peak < 120 * 2**20
    f = json.loads((task_dir(home, "flood", "flood") / "failed").read_text())
    assert f["outcome"] == "output_limit" and "max_output" in f["reason"]
    assert (task_dir(home, "flood", "flood") / "attempts" / "1.out").stat().st_size == 20_000_000
    assert states(home, "flood") == {"flood": "failed", "after": "blocked"}


def test_binary_and_invalid_utf8_output(home, plans):
    blob = "\\377\\376\\000\\001bin\\200\\n\\342\\202"            # NUL, lone continuation, a cut UTF-8 char
    p = write_plan(plans, [{"id": "bin", "prompt": "p", "agent": f"printf '{blob}'"},
                           {"id": "next", "prompt": "look:", "deps": ["bin"], "agent": "cat"}], goal="bin")
    run("run", p, home=home)
    raw = (task_dir(home, "bin", "bin") / "output").read_bytes()
    assert raw == b"\xff\xfe\x00\x01bin\x80\n\xe2\x82"
    out = subprocess.run([DAGRUN, f"--home={home}", "output", "bin", "bin"], capture_output=True).stdout
    assert out == raw                                     # `dagrun output` gives the exact bytes
    prompt = (task_dir(home, "bin", "next") / "prompt.md").read_bytes().decode("utf-8")   # valid UTF-8
    assert "## Output of bin" in prompt and "\ufffd" in prompt and "bin" in prompt
    assert (task_dir(home, "bin", "next") / "output").read_bytes().decode("utf-8") == prompt


@pytest.mark.parametrize("agent", [
    "exec 0<&-; echo closed-stdin",                              # closes stdin at once
    "head -c 1 >/dev/null; echo read-one-byte",                  # reads one byte of a big prompt
    "echo never-reads",                                          # never reads it
    "exec 0</dev/null 1>&- 2>&-; sleep 0.1",                     # closes every stream
])
def test_stdin_and_stream_games(home, plans, agent):
    big = "x" * 300_000                                          # more than a pipe buffer
    p = write_plan(plans, [{"id": "a", "prompt": big, "agent": agent}], goal="io")
    r = run("run", p, home=home, timeout=30)
    assert "io done: 1 done" in r.stdout


def test_daemonised_grandchild_is_killed_when_the_agent_ends(home, plans, tmp_path):
    """setsid + double fork: the grandchild leaves the agent's session and process group and
    is re-parented; dagrun (a child subreaper) adopts it and kills it when the attempt ends."""
    pidfile = tmp_path / "daemon.pid"
    # the pid is published by rename and the agent ends once it is there: a fixed `sleep 0.2`
    # let a loaded machine end the attempt (and kill the grandchild) before its `>` had written
    agent = (f"(setsid sh -c 'echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; exec sleep 300' &); "
             f"until [ -e {pidfile} ]; do sleep 0.01; done; echo parent-done")
    p = write_plan(plans, [{"id": "d", "prompt": "p", "agent": agent}, {"id": "e", "prompt": "p", "deps": ["d"],
                                                                         "agent": "sleep 0.3; echo later"}], goal="daemon")
    r = run("run", p, home=home)
    assert "daemon done: 2 done" in r.stdout
    daemon = int(pidfile.read_text())
    assert not psutil.pid_exists(daemon) or psutil.Process(daemon).status() == psutil.STATUS_ZOMBIE
    done = [e for e in events(home, "daemon") if e.get("task") == "d" and e.get("status") == "done"]
    assert done[0].get("strays_killed") == 1
    assert "killed 1 process(es)" in r.stderr
    assert not agents_of(home)


def test_daemon_of_a_running_worker_is_killed_when_its_attempt_ends(home, plans, tmp_path):
    """The stray of one attempt is not killed while that attempt runs (it may be a helper),
    and is killed when it ends, also under a long-running worker."""
    pidfile = tmp_path / "helper.pid"
    # (the pid published by rename, waited for: `sleep 1` alone let a loaded machine's agent
    # read a pidfile not yet written, or written to by the helper's `>` so far as to be empty)
    agent = (f"(setsid sh -c 'echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; exec sleep 300' &); "
             f"until [ -e {pidfile} ]; do sleep 0.01; done; sleep 1; kill -0 $(cat {pidfile}) && echo helper-alive")
    p = write_plan(plans, [{"id": "h", "prompt": "p", "agent": agent}], goal="helper")
    run("submit", p, home=home)
    run("worker", "--until-idle", home=home)
    assert (task_dir(home, "helper", "h") / "output").read_text() == "helper-alive\n"
    assert not agents_of(home)


def test_agent_that_changes_its_process_group_is_still_stopped_on_timeout(home, plans):
    py = sys.executable
    agent = f"{py} -c 'import os,time; os.setpgid(0,0); time.sleep(300)'; echo unreachable"
    p = write_plan(plans, [{"id": "pg", "prompt": "p", "agent": agent, "timeout": 1, "kill_grace": 0.5}], goal="pg")
    t0 = time.monotonic()
    run("run", p, home=home, check=1, timeout=60)
    assert time.monotonic() - t0 < 20
    f = json.loads((task_dir(home, "pg", "pg") / "failed").read_text())
    assert f["outcome"] == "timeout"
    assert not agents_of(home)


def test_agent_that_ignores_sigterm_is_killed_after_the_grace(home, plans):
    agent = "trap '' TERM; sleep 300 & trap '' TERM; wait; wait"
    p = write_plan(plans, [{"id": "stub", "prompt": "p", "agent": agent, "timeout": 0.5, "kill_grace": 0.5}], goal="stub")
    run("run", p, home=home, check=1, timeout=60)
    assert json.loads((task_dir(home, "stub", "stub") / "failed").read_text())["outcome"] == "timeout"
    assert not agents_of(home)


def test_agent_that_sends_sigterm_to_dagrun(home, plans, tmp_path):
    """`kill -TERM $PPID` reaches dagrun like a user's SIGTERM: it stops cleanly (exit 143),
    records the attempt as interrupted (no retry used up), and the next run finishes."""
    log = tmp_path / "ran.log"
    agent = f'if [ "$DAGRUN_ATTEMPT" = 1 ]; then kill -TERM $PPID; sleep 5; fi; echo "$DAGRUN_TASK" >> {log}; echo ok'
    p = write_plan(plans, [{"id": "rude", "prompt": "p", "agent": agent}, {"id": "b", "prompt": "p", "deps": ["rude"],
                                                                            "agent": "echo fine"}], goal="sig")
    r = run("run", p, home=home, check=143, timeout=60)
    assert "interrupted" in r.stderr
    assert not agents_of(home)
    rec = json.loads((task_dir(home, "sig", "rude") / "attempts" / "1.json").read_text())
    assert rec["outcome"] == "interrupted" and rec["counted"] is False
    r = run("run", p, home=home, timeout=60)
    assert "sig done: 2 done" in r.stdout and log.read_text() == "rude\n"


def test_agent_that_stops_and_continues_dagrun(home, plans):
    """SIGSTOP cannot be caught: dagrun is frozen until SIGCONT, then carries on."""
    agent = "kill -STOP $PPID; sleep 0.5; kill -CONT $PPID; echo resumed"
    p = write_plan(plans, [{"id": "s", "prompt": "p", "agent": agent}, {"id": "t", "prompt": "p", "deps": ["s"],
                                                                         "agent": "echo next"}], goal="stop")
    r = run("run", p, home=home, timeout=60)
    assert "stop done: 2 done" in r.stdout


def test_agent_that_deletes_its_own_task_folder(home, plans):
    """The claim, prompt and capture files vanish under dagrun: the attempt fails (counted,
    with the reason), the next attempt runs, nothing crashes."""
    agent = 'if [ "$DAGRUN_ATTEMPT" = 1 ]; then rm -rf "$DAGRUN_TASK_DIR"; echo gone; exit 0; fi; echo second'
    p = write_plan(plans, [{"id": "rm", "prompt": "p", "agent": agent, "retries": 1, "retry_backoff": 0},
                           {"id": "after", "prompt": "p", "deps": ["rm"], "agent": "cat"}], goal="rmself")
    r = run("run", p, home=home, timeout=60)
    assert "rmself done: 2 done" in r.stdout, r.stdout + r.stderr
    rec = json.loads((task_dir(home, "rmself", "rm") / "attempts" / "1.json").read_text())
    assert rec["outcome"] == "failed" and rec["counted"] and "task folder was deleted" in rec["reason"]
    assert (task_dir(home, "rmself", "rm") / "output").read_text() == "second\n"
    # an agent that always does it ends failed instead of looping
    agent2 = 'rm -rf "$DAGRUN_TASK_DIR"; echo gone'
    p2 = write_plan(plans / "two", [{"id": "rm", "prompt": "p", "agent": agent2}], goal="rmalways")
    r = run("run", p2, home=home, check=1, timeout=60)
    assert "task folder was deleted" in r.stdout
    assert not agents_of(home)


def test_agent_that_deletes_its_claim_folder_only(home, plans):
    agent = 'rm -rf "$DAGRUN_TASK_DIR/claim"; sleep 0.1; echo x'
    p = write_plan(plans, [{"id": "c", "prompt": "p", "agent": agent}], goal="rmclaim")
    r = run("run", p, home=home, check=1, timeout=60)
    f = json.loads((task_dir(home, "rmclaim", "c") / "failed").read_text())
    assert "task folder was deleted" in f["reason"]
