"""The core, end to end through the installed `dagrun` binary, real processes, real signals."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, events, outputs, processes_with_env, run, spawn, task_dir, wait_for, write_plan

SIX = ["research-api", "research-auth", "design-schema", "implement", "test", "review"]
UPSTREAM = {"design-schema": ["research-api"], "implement": ["design-schema", "research-auth"],
            "test": ["implement"], "review": ["implement"]}


def test_example_goal_runs_end_to_end(home):
    r = run("run", EXAMPLES / "add-auth" / "dag.json", home=home, env={"FAKE_AGENT_SLEEP": "0.2"})
    assert r.stdout.strip().endswith("goal add-auth done: 6 done")
    for t in SIX:
        d = task_dir(home, "add-auth", t)
        assert (d / "done").exists() and (d / "output").exists() and (d / "prompt.md").exists()
        assert not (d / "claim").exists()
        assert f"Result of {t}" in (d / "output").read_text()
        done = json.loads((d / "done").read_text())
        assert done["attempt"] == 1 and done["exit_code"] == 0
    for t, ups in UPSTREAM.items():
        prompt = (task_dir(home, "add-auth", t) / "prompt.md").read_text()
        for u in ups:
            assert f"## Output of {u}" in prompt
            assert (task_dir(home, "add-auth", u) / "output").read_text().strip() in prompt
    # the four waves: implement starts only after both design-schema and research-auth are done
    ev = events(home, "add-auth")
    when = {(e.get("task"), e.get("status")): i for i, e in enumerate(ev)}
    assert when[("implement", "running")] > when[("design-schema", "done")]
    assert when[("implement", "running")] > when[("research-auth", "done")]
    assert ev[-1]["type"] == "agent.goal.finished" and ev[-1]["outcome"] == "done"
    # status, output, logs
    st = json.loads(run("status", "add-auth", "--json", home=home).stdout)
    assert st["state"] == "done" and {r["task"]: r["state"] for r in st["tasks"]} == dict.fromkeys(SIX, "done")
    assert "Result of review" in run("output", "add-auth", "review", home=home).stdout
    table = run("status", home=home).stdout
    assert "add-auth" in table and "done" in table and "6/6" in table
    # running again is a no-op that reports the same outcome
    r2 = run("run", "add-auth", home=home)
    assert "done: 6 done" in r2.stdout
    assert len(events(home, "add-auth")) == len(ev)


def test_parallelism_is_real(home, plans, tmp_path):
    """Four independent tasks with -j 4 run at the same time: each agent checks in and waits
    (up to 30 s) until all four have, so the goal is done only if the four ran at once. (It
    used to time the whole `dagrun run` against 1.9 s for four `sleep 0.5`, which a loaded
    machine's slow start-up of the command alone could exceed.)"""
    here = tmp_path / "here"
    here.mkdir()
    barrier = (f'touch "{here}/$DAGRUN_TASK"; i=0; while [ "$(ls "{here}" | wc -l)" -lt 4 ]; do '
               f'i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.05; done; echo all four')
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(4)],
                   defaults={"agent": barrier, "retries": 0})
    run("run", p, "-j", "4", home=home)
    assert outputs(home, "dag") == {f"t{i}": "all four\n" for i in range(4)}


def test_agent_environment_and_cwd(home, plans):
    agent = 'pwd; echo "$DAGRUN_GOAL $DAGRUN_TASK $DAGRUN_ATTEMPT"; echo "$DAGRUN_HOME"; cat "$DAGRUN_PROMPT_FILE" | head -1; echo "$DAGRUN_OUTPUT_FILE"; echo "$DAGRUN_TASK_DIR"'
    p = write_plan(plans, [{"id": "a", "prompt": "hello prompt"}], goal="envg", defaults={"agent": agent})
    run("run", p, home=home)
    lines = (task_dir(home, "envg", "a") / "output").read_text().splitlines()
    assert lines[0] == str(plans)
    assert lines[1] == "envg a 1"
    assert lines[2] == str(home.resolve())
    assert lines[3] == "hello prompt"
    assert lines[4] == str(task_dir(home, "envg", "a").resolve() / "output")
    assert lines[5] == str(task_dir(home, "envg", "a").resolve())


def test_failing_agent_writes_failed_marker_and_exit_1(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "echo oops >&2; exit 3"},
                           {"id": "b", "prompt": "p", "deps": ["a"]}, {"id": "c", "prompt": "p"}],
                   goal="f", defaults={"agent": "true"})
    r = run("run", p, home=home, check=1)
    assert "failed: a (exit code 3)" in r.stdout and "blocked by a: b" in r.stdout
    failed = json.loads((task_dir(home, "f", "a") / "failed").read_text())
    assert failed["exit_code"] == 3 and failed["outcome"] == "failed"
    assert (task_dir(home, "f", "a") / "stderr.log").read_text() == "oops\n"
    assert (task_dir(home, "f", "c") / "done").exists()
    st = json.loads(run("status", "f", "--json", home=home).stdout)
    rows = {r["task"]: r for r in st["tasks"]}
    assert rows["b"]["state"] == "blocked" and rows["b"]["blocked_by"] == "a"
    assert "blocked by a" in run("status", "f", home=home).stdout


def test_timeout_kills_the_process_group(home, plans):
    p = write_plan(plans, [{"id": "slow", "prompt": "p", "timeout": 0.5, "kill_grace": 0.3}], goal="to",
                   defaults={"agent": "sleep 30 & sleep 30; wait"})
    t0 = time.monotonic()
    run("run", p, home=home, check=1)
    assert time.monotonic() - t0 < 5
    f = json.loads((task_dir(home, "to", "slow") / "failed").read_text())
    assert f["outcome"] == "timeout" and "timed out after 0.5s" in f["reason"]
    # the autouse fixture asserts no agent process (sleep) survived


@pytest.mark.parametrize("evil", ["$(touch pwned)", "`touch pwned`", "; touch pwned", "' ; touch pwned; '",
                                  '" && touch pwned && "', "\n touch pwned \n", "$(rm -rf /)"])
def test_prompts_and_outputs_are_never_shell(home, plans, evil):
    """The prompt and upstream outputs reach the agent on stdin only."""
    p = write_plan(plans, [{"id": "a", "prompt": f"do {evil}"},
                           {"id": "b", "prompt": f"then {evil}", "deps": ["a"]}],
                   goal="inj", defaults={"agent": "cat"})
    run("run", p, home=home)
    assert not (plans / "pwned").exists() and not Path("pwned").exists()
    out_a = (task_dir(home, "inj", "a") / "output").read_text()
    assert evil in out_a
    assert out_a in (task_dir(home, "inj", "b") / "prompt.md").read_text()


def test_large_upstream_output_is_truncated_with_a_pointer(home, plans):
    p = write_plan(plans, [{"id": "big", "prompt": "p", "agent": "head -c 200000 /dev/zero | tr '\\0' x"},
                           {"id": "small", "prompt": "p", "deps": ["big"], "context_limit": 1000}],
                   goal="trunc", defaults={"agent": "cat"})
    run("run", p, home=home)
    prompt = (task_dir(home, "trunc", "small") / "prompt.md").read_text()
    assert "x" * 1000 in prompt and "x" * 1001 not in prompt
    assert "truncated: the first 1000 of 200000 bytes" in prompt
    assert str(task_dir(home, "trunc", "big").resolve() / "output") in prompt


def test_submit_is_idempotent_and_refuses_another_plan(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="g1", defaults={"agent": "true"})
    assert run("submit", p, home=home).stdout.strip() == "g1"
    assert run("submit", p, home=home).stdout.strip() == "g1"
    assert sum(e["type"] == "agent.plan.created" for e in events(home, "g1")) == 1
    write_plan(plans, [{"id": "a", "prompt": "changed"}], goal="g1", defaults={"agent": "true"})
    r = run("submit", p, home=home, check=4)
    assert "already exists with a different plan" in r.stderr and "--replace" in r.stderr
    assert run("submit", "--replace", p, home=home).stdout.strip() == "g1"
    assert json.loads((home / "goals" / "g1" / "plan.json").read_text())["tasks"][0]["prompt"] == "changed"


def test_unknown_goal_and_bad_ids_are_usage_errors(home):
    r = run("status", "nope", home=home, check=2)
    assert "no goal 'nope'" in r.stderr
    r = run("output", "../etc", "passwd", home=home, check=2)
    assert "invalid goal id" in r.stderr
    r = run("run", "missing.json", home=home, check=2)
    assert "no plan file missing.json" in r.stderr
    r = run("frobnicate", home=home, check=2)
    assert r.stderr.startswith("dagrun: ") and "Traceback" not in r.stderr


def _agent_log_plan(plans: Path, log: Path, n_chain: int = 6, sleep: float = 0.3):
    """A diamond plus a chain; each agent appends its id to `log` when it finishes."""
    agent = f'sleep {sleep}; echo "$DAGRUN_TASK" >> {log}; echo out-$DAGRUN_TASK'
    tasks = [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]},
             {"id": "c", "prompt": "p", "deps": ["a"]}, {"id": "d", "prompt": "p", "deps": ["b", "c"]}]
    prev = "d"
    for i in range(n_chain):
        tasks.append({"id": f"k{i}", "prompt": "p", "deps": [prev]})
        prev = f"k{i}"
    return write_plan(plans, tasks, goal="crash", defaults={"agent": agent})


def test_sigkill_mid_goal_then_resume_never_reruns_done_work(home, plans, tmp_path):
    log = tmp_path / "ran.log"
    p = _agent_log_plan(plans, log)
    kills = (0.5, 1.3)
    for kill_after in kills:
        proc = spawn("run", p, "-j", "2", home=home)
        wait_for(lambda: log.exists() and len(log.read_text().split()) >= (1 if kill_after < 1 else 3),
                 timeout=20, what="some tasks to finish")
        time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    r = run("run", p, "-j", "2", home=home, timeout=60)
    assert "done: 10 done" in r.stdout
    ran = log.read_text().split()
    done_by_markers = {t for t in "abcd"} | {f"k{i}" for i in range(6)}
    assert set(ran) == done_by_markers
    # An agent whose engine was SIGKILLed keeps running until it writes to its dead stdout pipe
    # (SIGPIPE) or a restarted engine stops it, so an uncommitted task can run once per kill
    # plus once more; a task whose done marker was written never runs again (next test).
    for t in done_by_markers:
        assert 1 <= ran.count(t) <= 1 + len(kills)
    assert not list((home / "goals" / "crash" / "tasks").glob("*/claim"))


def test_sigkill_resume_exactly_once_for_committed_tasks(home, plans, tmp_path):
    """Kill right after some done markers appear; every task whose marker existed before the
    kill must not run again."""
    log = tmp_path / "ran.log"
    p = _agent_log_plan(plans, log, sleep=0.2)
    proc = spawn("run", p, "-j", "2", home=home)
    tasks_dir = home / "goals" / "crash" / "tasks"
    wait_for(lambda: len(list(tasks_dir.glob("*/done"))) >= 3, timeout=20, what="3 done markers")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = {d.parent.name for d in tasks_dir.glob("*/done")}
    before = log.read_text().split()
    run("run", p, "-j", "2", home=home, timeout=60)
    after = log.read_text().split()[len(before):]
    assert not committed & set(after), f"committed tasks ran again: {committed & set(after)}"
    assert len(list(tasks_dir.glob("*/done"))) == 10


def test_sigint_exits_130_and_leaves_no_agents(home, plans):
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(3)], goal="intr",
                   defaults={"agent": "sleep 60 & sleep 60; wait"})
    proc = spawn("run", p, "-j", "3", home=home)
    wait_for(lambda: len(processes_with_env("DAGRUN_GOAL", "intr")) >= 3, what="agents to start")
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    wait_for(lambda: not processes_with_env("DAGRUN_GOAL", "intr"), timeout=5, what="agents to be gone")
    tasks_dir = home / "goals" / "intr" / "tasks"
    assert not list(tasks_dir.glob("*/claim")), "claims must be released"
    assert not list(tasks_dir.glob("*/done"))
    recs = list(tasks_dir.glob("*/attempts/1.json"))
    assert len(recs) == 3 and all(json.loads(r.read_text())["outcome"] == "interrupted" for r in recs)
    # resumable: the interrupted attempts did not use up retries
    st = json.loads(run("status", "intr", "--json", home=home).stdout)
    assert {r["state"] for r in st["tasks"]} == {"ready"}


def test_sigterm_exits_143(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="term", defaults={"agent": "sleep 60"})
    proc = spawn("run", p, home=home)
    wait_for(lambda: processes_with_env("DAGRUN_GOAL", "term"), what="agent to start")
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 143


def test_idle_engine_uses_no_cpu(home, plans):
    """While one long agent runs, the engine sleeps in poll(): (nearly) no CPU time."""
    import psutil
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="idle", defaults={"agent": "sleep 3"})
    proc = spawn("run", p, home=home)
    wait_for(lambda: processes_with_env("DAGRUN_GOAL", "idle"), what="agent to start")
    ps = psutil.Process(proc.pid)
    c0 = sum(ps.cpu_times()[:2])
    time.sleep(2)
    c1 = sum(ps.cpu_times()[:2])
    proc.communicate(timeout=20)
    assert c1 - c0 < 0.1, f"engine used {c1 - c0:.3f}s CPU in 2s while idle"


def test_home_is_private(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="perm", defaults={"agent": "true"})
    run("run", p, home=home)
    assert (home.stat().st_mode & 0o777) == 0o700


def test_version_and_help():
    assert run("--version").stdout.startswith("dagrun ")
    h = run("--help").stdout
    for cmd in ("validate", "schema", "submit", "run", "status", "output", "logs", "worker", "claim", "complete"):
        assert cmd in h
