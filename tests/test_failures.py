"""Failure handling and control (issue 5): retries with fresh context, timeouts and stalls,
cascade, soft dependencies, cancel / retry, plan edits. Real processes through the installed
`dagrun` binary; agents are small shell scripts that count their runs in files."""
from __future__ import annotations

import json
import os

import pytest

from conftest import events, run, spawn, task_dir, wait_for, write_plan  # noqa: F401


def test_rmdir_refuses_a_folder_with_files(tmp_path):
    """Regression: releasing a claim that still held owner.json (cancel, superseded) once
    moved the whole folder away for reuse (the spare pool, removed 2026-12-06), and owner.json
    later showed up in a task's attempts/. fsio.rmdir refuses a folder with something in it."""
    from dagrun import fsio

    c = tmp_path / "claim"
    c.mkdir()
    (c / "owner.json").write_text("{}")
    with pytest.raises(OSError):
        fsio.rmdir(str(c))
    assert (c / "owner.json").exists()
    (c / "owner.json").unlink()
    assert fsio.rmdir(str(c)) and not c.exists()
    assert not fsio.rmdir(str(c))                    # gone already: False


# ------------------------------------------------------------------------------ timeouts
def _alive_with(marker: str) -> list[int]:
    import psutil
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_timeout_kills_a_term_ignoring_forking_agent_and_its_escapees(home, plans):
    """TERM to the group, kill_grace, KILL; children in the group, grandchildren, and a child
    that left the group with setsid -- all ignore TERM -- are all gone afterwards."""
    agent = ("trap '' TERM; echo started; "
             "(trap '' TERM; sleep 61.11) & "
             "(trap '' TERM; sleep 61.12 & wait) & "
             "setsid sh -c \"trap '' TERM; sleep 61.13\" & "
             "sleep 61.14; wait")
    p = write_plan(plans, [{"id": "hang", "prompt": "p", "timeout": 1, "kill_grace": 1}], goal="to",
                   defaults={"agent": agent})
    r = run("run", p, home=home, check=1)
    assert "failed: hang (timed out after 1s)" in r.stdout
    f = json.loads((task_dir(home, "to", "hang") / "failed").read_text())
    assert f["outcome"] == "timeout" and f["signal"] == 9     # the shell ignored TERM: KILL after the grace
    assert f["duration"] >= 1.9
    wait_for(lambda: not _alive_with("sleep 61.1"), 5, what="no sleep 61.1x left")
    # the attempt's stdout was kept
    assert (task_dir(home, "to", "hang") / "attempts" / "1.out").read_text() == "started\n"


def test_timeout_of_an_agent_that_dies_on_term_still_kills_its_escaped_children(home, plans):
    agent = "setsid sh -c \"trap '' TERM; sleep 61.21\" & sleep 61.22"
    p = write_plan(plans, [{"id": "t", "prompt": "p", "timeout": 0.5, "kill_grace": 5}], goal="to2",
                   defaults={"agent": agent})
    run("run", p, home=home, check=1)
    f = json.loads((task_dir(home, "to2", "t") / "failed").read_text())
    assert f["outcome"] == "timeout" and f["signal"] == 15
    wait_for(lambda: not _alive_with("sleep 61.2"), 5, what="no sleep 61.2x left")


# ------------------------------------------------------------------------------ helpers
# One agent for most tests, steered by files in a control folder `ctl`:
#   ctl/fail.<task>  N   the first N attempts fail (exit 3, "err <n>" on stderr)
#   ctl/hold.<task>      while it exists the agent waits (a long-running agent)
#   ctl/n.<task>         how many times the task's agent started (a run counter; replaced by
#                        rename: a reader polling it never finds it empty -- CI 2026-12-06)
#   ctl/starts, ctl/ends "<task> <DAGRUN_RUN_ID>" per start / per successful end
# Its output is "out-<task>-<n>": unique per run, so a downstream prompt shows which run
# of its upstream it was given.
CTL_AGENT = r'''#!/bin/sh
ctl="$1"
echo "$DAGRUN_TASK $DAGRUN_RUN_ID" >> "$ctl/starts"
n=$(cat "$ctl/n.$DAGRUN_TASK" 2>/dev/null || echo 0); n=$((n+1))
echo $n > "$ctl/.n.$$" && mv -f "$ctl/.n.$$" "$ctl/n.$DAGRUN_TASK"   # whole or not at all: runs() reads it
cat > /dev/null
while [ -e "$ctl/hold.$DAGRUN_TASK" ]; do sleep 0.05; done
fails=$(cat "$ctl/fail.$DAGRUN_TASK" 2>/dev/null || echo 0)
if [ "$n" -le "$fails" ]; then echo "out of attempt $n"; echo "err $n" >&2; exit 3; fi
echo "out-$DAGRUN_TASK-$n"
echo "$DAGRUN_TASK $DAGRUN_RUN_ID" >> "$ctl/ends"
'''


def ctl_agent(tmp_path) -> tuple[str, "os.PathLike"]:
    ctl = tmp_path / "ctl"
    ctl.mkdir(exist_ok=True)
    script = tmp_path / "agent.sh"
    script.write_text(CTL_AGENT)
    return f"sh {script} {ctl}", ctl


def runs(ctl, task: str) -> int:
    p = ctl / f"n.{task}"
    return int(p.read_text()) if p.exists() else 0


def agents_of(home) -> list[int]:
    """Live agent processes (and their children) started for this home."""
    from conftest import processes_with_env
    return sorted(set(processes_with_env("DAGRUN_RUN_ID")) &
                  set(processes_with_env("DAGRUN_HOME", os.path.abspath(home))))


def check_consistent(home, goal: str, ctl=None) -> dict:
    """What must hold after any crash and resume: events.jsonl parses line by line; no claim
    is left; every done task has its output, and no attempt of it started after the one that
    made it done; every done task's prompt holds the current output of each dependency it
    names (it ran on the inputs that are there now). Returns {task: state}."""
    from pathlib import Path
    gdir = Path(home) / "goals" / goal
    for line in (gdir / "events.jsonl").read_text().splitlines():
        json.loads(line)
    plan = json.loads((gdir / "plan.json").read_text())
    starts = (ctl / "starts").read_text().split("\n") if ctl is not None and (ctl / "starts").exists() else []
    states = {}
    for t in plan["tasks"]:
        d = gdir / "tasks" / t["id"]
        assert not (d / "claim").exists(), f"claim left on {t['id']}"
        st = next((m for m in ("done", "cancelled", "failed") if (d / m).exists()), None)
        states[t["id"]] = st
        if st != "done":
            continue
        marker = json.loads((d / "done").read_text())
        assert (d / "output").exists(), f"{t['id']} is done without output"
        if ctl is not None:
            ino = f"{os.stat(d).st_ino:x}"
            tried = [int(line.rsplit("/", 1)[1]) for line in starts
                     if line.startswith(t["id"] + " ") and f"/{t['id']}/{ino}/" in line]
            # (a home copied by the crash tests has new folder inodes: nothing started there yet)
            assert not tried or max(tried) == marker["attempt"], \
                f"{t['id']} done at attempt {marker['attempt']} but attempts {tried} started"
        prompt = (d / "prompt.md").read_text()
        for dep in t["deps"]:
            assert (gdir / "tasks" / dep / "done").exists(), f"{t['id']} is done but its dependency {dep} is not"
            out = (gdir / "tasks" / dep / "output").read_text().strip()
            assert out in prompt, f"{t['id']} is done on another output of {dep} than {out!r}"
    return states


# ------------------------------------------------------------------------------ retries
def test_flaky_agent_is_done_at_attempt_3_with_every_attempt_on_disk(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "fail.flaky").write_text("2")
    # each attempt also copies its owner.json (published right after the spawn) and env
    spy = (f'while [ ! -s "$DAGRUN_TASK_DIR/claim/owner.json" ]; do sleep 0.02; done; '
           f'cp "$DAGRUN_TASK_DIR/claim/owner.json" {ctl}/owner.$DAGRUN_ATTEMPT; '
           f'echo "$DAGRUN_ATTEMPT $$" >> {ctl}/env; ')
    p = write_plan(plans, [{"id": "up", "prompt": "p"},
                           {"id": "flaky", "prompt": "do the flaky thing", "deps": ["up"],
                            "agent": spy + agent, "retries": 2, "retry_backoff": 0.1,
                            "retry_context": "error"}],
                   goal="fl", defaults={"agent": agent})
    r = run("run", p, home=home)
    assert "goal fl done" in r.stdout
    d = task_dir(home, "fl", "flaky")
    done = json.loads((d / "done").read_text())
    assert done["attempt"] == 3 and runs(ctl, "flaky") == 3
    # fresh process per attempt, with its number in the environment and in owner.json
    env = [line.split() for line in (ctl / "env").read_text().splitlines()]
    assert [a for a, _ in env] == ["1", "2", "3"] and len({pid for _, pid in env}) == 3
    for n in (1, 2, 3):
        assert json.loads((ctl / f"owner.{n}").read_text())["attempt"] == n
    # every attempt's stdout, stderr, prompt and record, the successful one included
    a = d / "attempts"
    for n in (1, 2):
        assert (a / f"{n}.out").read_text() == f"out of attempt {n}\n"
        assert (a / f"{n}.err").read_text() == f"err {n}\n"
        rec = json.loads((a / f"{n}.json").read_text())
        assert rec["outcome"] == "failed" and rec["exit_code"] == 3 and rec["failures"] == n
        assert rec["retry_at"] is not None and not rec["final"]
    assert (a / "3.out").read_text() == "out-flaky-3\n" == (d / "output").read_text()
    assert not (a / "3.err").exists() and not (d / "stderr.log").exists()   # attempt 3 wrote none
    assert json.loads((a / "3.json").read_text())["outcome"] == "done"
    # prompt.md was rendered afresh for each attempt: upstream output + the previous failure
    up_out = (task_dir(home, "fl", "up") / "output").read_text().strip()
    p1, p2, p3 = ((a / f"{n}.prompt.md").read_text() for n in (1, 2, 3))
    assert all(up_out in x for x in (p1, p2, p3))
    assert "Previous attempt" not in p1
    assert "# Previous attempt 1 failed" in p2 and "exited with code 3" in p2 and "err 1" in p2
    assert "# Previous attempt 2 failed" in p3 and "err 2" in p3 and "err 1" not in p3
    assert p3 == (d / "prompt.md").read_text()
    # events and the read commands tell the same story
    ev = [e for e in events(home, "fl") if e.get("task") == "flaky"]
    assert [e["status"] for e in ev if e["type"].endswith("status.updated") and e["status"] != "ready"] == \
        ["running", "retrying", "running", "retrying", "running", "done"]
    assert run("logs", "fl", "flaky", "--attempt", "1", home=home).stdout == "err 1\n"
    assert run("logs", "fl", "flaky", "--attempt", "3", "--stdout", home=home).stdout == "out-flaky-3\n"
    row = [x for x in json.loads(run("status", "fl", "--json", home=home).stdout)["tasks"] if x["task"] == "flaky"][0]
    assert row["state"] == "done" and row["attempt"] == 3


def test_retries_exhausted_fail_for_good_with_every_attempt_kept(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "fail.t").write_text("9")
    p = write_plan(plans, [{"id": "t", "prompt": "p", "retries": 1, "retry_backoff": 0}], goal="ex",
                   defaults={"agent": agent})
    r = run("run", p, home=home, check=1)
    assert "failed: t (exit code 3)" in r.stdout
    d = task_dir(home, "ex", "t")
    assert json.loads((d / "failed").read_text())["attempt"] == 2 and runs(ctl, "t") == 2
    recs = [json.loads((d / "attempts" / f"{n}.json").read_text()) for n in (1, 2)]
    assert [r["final"] for r in recs] == [False, True] and [r["failures"] for r in recs] == [1, 2]
    assert (d / "stderr.log").read_text() == "err 2\n"


def test_backoff_is_exponential_jittered_and_capped():
    from dagrun.lifecycle import BACKOFF_CAP, backoff
    from dagrun.plan import Plan

    plan = Plan.from_dict({"goal": "g", "source": "/x", "plan_dir": "/", "tasks": [
        {"id": "t", "deps": [], "soft_deps": [], "prompt": "p", "prompt_file": None, "agent": "true",
         "timeout": None, "retries": 9, "retry_backoff": 2.0, "retry_context": "none", "stall_timeout": None,
         "kill_grace": 1, "workdir": "/", "context_limit": 10, "max_output": None, "priority": 0}]})
    t = plan.task("t")
    for n in range(1, 12):
        base = min(BACKOFF_CAP, 2.0 * 2 ** (n - 1))
        xs = [backoff(t, n) for _ in range(200)]
        assert all(0.5 * base <= x <= 1.5 * base for x in xs)
        assert max(xs) - min(xs) > 0.3 * base          # jitter: no two workers in lock step
    assert max(backoff(t, 30) for _ in range(100)) <= 1.5 * BACKOFF_CAP


def test_many_failures_at_once_do_not_retry_in_lock_step(home, plans, tmp_path):
    """Twelve tasks fail together; their retries are spread over the jitter window and none
    starts before its retry_at."""
    agent, ctl = ctl_agent(tmp_path)
    for i in range(12):
        (ctl / f"fail.t{i}").write_text("1")
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(12)], goal="storm",
                   defaults={"agent": agent, "retries": 1, "retry_backoff": 1.0})
    run("run", p, "-j", "12", home=home)
    ev = events(home, "storm")
    retry_at = {e["task"]: e["retry_at"] for e in ev if e.get("status") == "retrying"}
    assert len(retry_at) == 12
    waits = []
    for e in ev:
        if e.get("status") == "retrying":
            rec = json.loads((task_dir(home, "storm", e["task"]) / "attempts" / "1.json").read_text())
            from dagrun.store import parse_iso
            waits.append(rec["retry_at"] - parse_iso(rec["ended"]))
    assert all(0.5 <= w <= 1.5 for w in waits)
    assert max(waits) - min(waits) > 0.2
    from dagrun.store import parse_iso
    for e in ev:
        if e.get("status") == "running" and e.get("attempt") == 2:
            assert parse_iso(e["ts"]) >= retry_at[e["task"]] - 0.01


# ------------------------------------------------------------------------------ stalls
def test_stalled_agent_is_reported_killed_and_retried(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "hold.s").touch()          # attempt 1 prints nothing and waits for ever
    first = f'if [ ! -e {ctl}/n.s ]; then echo started; fi; '   # one byte of output, then silence
    # attempt 2 must not hold: the agent removes the hold when it sees attempt 2
    unhold = f'[ "$DAGRUN_ATTEMPT" -ge 2 ] && rm -f {ctl}/hold.s; '
    p = write_plan(plans, [{"id": "s", "prompt": "p", "stall_timeout": 1, "retries": 1,
                            "retry_backoff": 0, "kill_grace": 0.5, "agent": first + unhold + agent}],
                   goal="st", defaults={"agent": agent})
    run("run", p, home=home)
    d = task_dir(home, "st", "s")
    assert json.loads((d / "done").read_text())["attempt"] == 2
    rec = json.loads((d / "attempts" / "1.json").read_text())
    assert rec["outcome"] == "stalled" and rec["counted"] and "no output and no heartbeat for 1s" in rec["reason"]
    assert (d / "attempts" / "1.out").read_text() == "started\n"
    blocked = [e for e in events(home, "st") if e["type"] == "agent.task.blocked"]
    assert len(blocked) == 1 and blocked[0]["task"] == "s" and blocked[0]["attempt"] == 1
    assert blocked[0]["reason"].startswith("stalled")
    assert not agents_of(home)


def test_heartbeat_keeps_a_silent_agent_from_stalling(home, plans):
    from conftest import DAGRUN
    # silent for 6 x (0.4 s + a heartbeat call) > stall_timeout, never without a beat for as long
    beat = (f'for i in 1 2 3 4 5 6; do sleep 0.4; '
            f'{DAGRUN} heartbeat "$DAGRUN_GOAL" "$DAGRUN_TASK" --worker "$DAGRUN_WORKER" || exit 9; done; echo ok')
    p = write_plan(plans, [{"id": "quiet", "prompt": "p", "stall_timeout": 2, "agent": beat}], goal="hb")
    run("run", p, home=home)
    done = json.loads((task_dir(home, "hb", "quiet") / "done").read_text())
    assert done["attempt"] == 1 and done["duration"] > 2
    assert not [e for e in events(home, "hb") if e["type"] == "agent.task.blocked"]


# ------------------------------------------------------------------------------ cascade
DIAMOND = [  # a -> (b, c) -> d -> e ; c -> f ; g alone
    {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]},
    {"id": "c", "prompt": "p", "deps": ["a"]}, {"id": "d", "prompt": "p", "deps": ["b", "c"]},
    {"id": "e", "prompt": "p", "deps": ["d"]}, {"id": "f", "prompt": "p", "deps": ["c"]},
    {"id": "g", "prompt": "p"},
]


def test_failure_in_one_branch_of_a_diamond(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "fail.b").write_text("1")
    slow_c = f"sleep 0.8; {agent}"           # c is still running when b fails
    tasks = [dict(t, agent=slow_c) if t["id"] == "c" else t for t in DIAMOND]
    p = write_plan(plans, tasks, goal="dia", defaults={"agent": agent})
    r = run("run", p, "-j", "3", home=home, check=1)
    assert "goal dia failed" in r.stdout
    assert "  failed: b (exit code 3)" in r.stdout and "  blocked by b: d e" in r.stdout
    states = check_consistent(home, "dia", ctl)
    assert states == {"a": "done", "b": "failed", "c": "done", "d": None, "e": None, "f": "done", "g": "done"}, \
        [(task_dir(home, "dia", t) / "failed").read_text() for t in "cf" if (task_dir(home, "dia", t) / "failed").exists()]
    assert states == {"a": "done", "b": "failed", "c": "done", "d": None, "e": None, "f": "done", "g": "done"}
    assert runs(ctl, "d") == runs(ctl, "e") == 0
    # the other branch went on after the failure
    ev = events(home, "dia")
    pos = {(e.get("task"), e.get("status") or e["type"]): i for i, e in enumerate(ev)}
    assert pos[("f", "done")] > pos[("b", "failed")] and pos[("c", "done")] > pos[("b", "failed")]
    blocked = {e["task"]: e["blocked_by"] for e in ev if e["type"] == "agent.task.blocked"}
    assert blocked == {"d": "b", "e": "b"}
    fin = ev[-1]
    assert fin["type"] == "agent.goal.finished" and fin["outcome"] == "failed" and fin["failed_roots"] == ["b"]
    s = json.loads((home / "goals" / "dia" / "summary.json").read_text())
    assert s["outcome"] == "failed" and s["failed_roots"] == ["b"]
    assert s["blocked"] == [{"task": "d", "blocked_by": "b"}, {"task": "e", "blocked_by": "b"}]
    assert s["counts"] == {"done": 4, "failed": 1, "blocked": 2}
    table = run("status", "dia", home=home).stdout
    assert [ln.split()[1:4] for ln in table.splitlines() if ln.startswith(("d ", "e "))] == \
        [["blocked", "by", "b"], ["blocked", "by", "b"]]


def test_on_failure_stop_starts_nothing_new(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "fail.bad").write_text("1")
    p = write_plan(plans, [{"id": "long", "prompt": "p", "agent": f"sleep 1; {agent}", "priority": 9},
                           {"id": "bad", "prompt": "p", "priority": 5},
                           {"id": "later", "prompt": "p"}, {"id": "child", "prompt": "p", "deps": ["long"]}],
                   goal="stop", on_failure="stop", defaults={"agent": agent})
    r = run("run", p, "-j", "2", home=home, check=1)
    states = check_consistent(home, "stop", ctl)
    # the running task finished; nothing was started after the failure
    assert states == {"long": "done", "bad": "failed", "later": "cancelled", "child": "cancelled"}
    assert runs(ctl, "later") == runs(ctl, "child") == 0
    why = json.loads((task_dir(home, "stop", "later") / "cancelled").read_text())["reason"]
    assert why == "goal stopped: bad failed (on_failure=stop)"
    assert "failed: bad" in r.stdout and "cancelled: later (goal stopped: bad failed" in r.stdout
    # retrying the whole goal (every failed and cancelled task) finishes it
    assert run("retry", "stop", home=home).stdout.split() == ["bad", "later", "child"]
    run("run", "stop", home=home)
    assert set(check_consistent(home, "stop", ctl).values()) == {"done"}


# ------------------------------------------------------------------------------ soft deps
def test_soft_deps_wait_for_every_ending_and_run_either_way(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "fail.bad").write_text("5")
    p = write_plan(plans, [
        {"id": "ok", "prompt": "p"},
        {"id": "bad", "prompt": "p", "retries": 1, "retry_backoff": 0},
        {"id": "under", "prompt": "p", "deps": ["bad"]},          # blocked by bad
        {"id": "slow", "prompt": "p", "agent": f"sleep 1; {agent}"},
        {"id": "t", "prompt": "summarise what you got", "soft_deps": ["ok", "bad", "under", "slow"]},
    ], goal="soft", defaults={"agent": agent})
    r = run("run", p, home=home, check=1)
    states = check_consistent(home, "soft", ctl)
    assert states == {"ok": "done", "bad": "failed", "under": None, "slow": "done", "t": "done"}
    assert "blocked by bad: under" in r.stdout
    prompt = (task_dir(home, "soft", "t") / "prompt.md").read_text()
    assert "## Output of ok\n\nout-ok-1" in prompt
    assert "## Output of slow\n\nout-slow-1" in prompt             # it waited for the slow one
    assert "## Output of bad (unavailable: it failed)" in prompt
    assert "## Output of under (unavailable: it was blocked by a failed dependency)" in prompt
    ev = events(home, "soft")
    pos = {(e.get("task"), e.get("status")): i for i, e in enumerate(ev)}
    assert pos[("t", "running")] > max(pos[("slow", "done")], pos[("bad", "failed")])


def test_soft_dep_cancelled_is_named_unavailable(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "hold.long").touch()
    p = write_plan(plans, [{"id": "long", "prompt": "p"}, {"id": "t", "prompt": "p", "soft_deps": ["long"]}],
                   goal="sc", defaults={"agent": agent, "kill_grace": 1})
    eng = spawn("run", p, home=home)
    try:
        wait_for(lambda: (task_dir(home, "sc", "long") / "claim" / "owner.json").exists(), what="long running")
        assert run("cancel", "sc", "long", home=home).stdout.split() == ["long"]
        assert eng.wait(timeout=30) == 1
    finally:
        if eng.poll() is None:
            eng.kill()
    assert check_consistent(home, "sc", ctl) == {"long": "cancelled", "t": "done"}
    assert "## Output of long (unavailable: it cancelled)" in (task_dir(home, "sc", "t") / "prompt.md").read_text()


# ------------------------------------------------------------------------------ cancel / retry
def _running(home, goal, *tasks):
    return all((task_dir(home, goal, t) / "claim" / "owner.json").exists() for t in tasks)


def test_cancel_mid_run_leaves_nothing_running_then_retry_finishes_the_goal(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "hold.a").touch()
    (ctl / "hold.b").touch()
    # a ignores TERM and forks a child that does too: KILL after kill_grace
    stubborn = f"trap '' TERM; (trap '' TERM; sleep 60) & {agent}"
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": stubborn}, {"id": "b", "prompt": "p"},
                           {"id": "c", "prompt": "p", "deps": ["a"]}, {"id": "quick", "prompt": "p"}],
                   goal="cx", defaults={"agent": agent, "kill_grace": 1})
    eng = spawn("run", p, home=home)
    try:
        wait_for(lambda: _running(home, "cx", "a", "b") and (task_dir(home, "cx", "quick") / "done").exists(),
                 what="a and b running")
        assert len(agents_of(home)) >= 3
        r = run("cancel", "cx", home=home)
        # the command returns when the agents are gone, not before
        assert agents_of(home) == []
        assert sorted(r.stdout.split()) == ["a", "b", "c"]
        assert eng.wait(timeout=30) == 1
        out = eng.stdout.read().decode()
    finally:
        if eng.poll() is None:
            eng.kill()
    assert "goal cx cancelled" in out or "goal cx failed" in out
    states = check_consistent(home, "cx", ctl)
    assert states == {"a": "cancelled", "b": "cancelled", "c": "cancelled", "quick": "done"}
    for t in "ab":
        rec = json.loads((task_dir(home, "cx", t) / "attempts" / "1.json").read_text())
        assert rec["outcome"] == "cancelled" and not rec["counted"]
        assert not list((task_dir(home, "cx", t) / "attempts").glob("owner.json"))
    ev = events(home, "cx")
    assert {e["task"] for e in ev if e.get("status") == "cancelled"} == {"a", "b", "c"}
    assert ev[-1]["type"] == "agent.goal.finished" and ev[-1]["outcome"] == "failed"
    st = json.loads(run("status", "cx", "--json", home=home).stdout)
    assert st["state"] == "cancelled"
    # retry after cancel: every cancelled task runs again, the done one does not
    (ctl / "hold.a").unlink()
    (ctl / "hold.b").unlink()
    assert sorted(run("retry", "cx", home=home).stdout.split()) == ["a", "b", "c"]
    run("run", "cx", home=home)
    assert set(check_consistent(home, "cx", ctl).values()) == {"done"}
    assert (runs(ctl, "a"), runs(ctl, "b"), runs(ctl, "c"), runs(ctl, "quick")) == (2, 2, 1, 1)
    assert json.loads((task_dir(home, "cx", "a") / "done").read_text())["attempt"] == 2


def test_cancel_one_task_under_a_worker_then_retry_without_restart(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "hold.a").touch()
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]},
                           {"id": "c", "prompt": "p", "deps": ["b"]},
                           {"id": "x", "prompt": "p", "agent": f"sleep 1; {agent}"},
                           {"id": "y", "prompt": "p", "deps": ["x"]}],
                   goal="w1", defaults={"agent": agent, "kill_grace": 1})
    run("submit", p, home=home)
    w = spawn("worker", "-j", "4", home=home)
    try:
        wait_for(lambda: _running(home, "w1", "a"), what="a running")
        assert run("cancel", "w1", "a", home=home).stdout.split() == ["a"]
        assert not [pid for pid in agents_of(home) if f"/w1/a/" in _run_id(pid)]
        # a's dependents are blocked by it; the other branch goes on and finishes
        wait_for(lambda: (task_dir(home, "w1", "y") / "done").exists(), what="the other branch")
        rows = {r["task"]: r for r in json.loads(run("status", "w1", "--json", home=home).stdout)["tasks"]}
        assert rows["a"]["state"] == "cancelled"
        assert rows["b"]["state"] == rows["c"]["state"] == "blocked"
        assert rows["b"]["blocked_by"] == rows["c"]["blocked_by"] == "a"
        wait_for(lambda: (home / "goals" / "w1" / "summary.json").exists(), what="the goal to end")
        # retry names a blocked task: the root that blocks it is cleared; the worker picks it up
        (ctl / "hold.a").unlink()
        r = run("retry", "w1", "c", home=home)
        assert r.stdout.split() == ["a"]
        wait_for(lambda: (task_dir(home, "w1", "c") / "done").exists(), timeout=30, what="c done")
        assert w.poll() is None
    finally:
        w.terminate()
        w.wait(timeout=30)
    assert set(check_consistent(home, "w1", ctl).values()) == {"done"}
    assert json.loads((home / "goals" / "w1" / "summary.json").read_text())["outcome"] == "done"


def _run_id(pid: int) -> str:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return ""
    return next((e.decode()[len("DAGRUN_RUN_ID="):] for e in env if e.startswith(b"DAGRUN_RUN_ID=")), "")


def test_retry_cascade_and_refusals(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "fail.a").write_text("1")
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]},
                           {"id": "c", "prompt": "p", "deps": ["b"]}, {"id": "z", "prompt": "p"}],
                   goal="rc", defaults={"agent": agent})
    run("run", p, home=home, check=1)
    run("cancel", "rc", "c", home=home)                      # c: blocked -> cancelled
    r = run("retry", "rc", "z", home=home, check=4)
    assert r.stderr.startswith("dagrun: ") and "is done" in r.stderr and "--force" in r.stderr
    r = run("retry", "rc", "nope", home=home, check=2)
    # without --cascade only a: c stays cancelled (a cancel is a decision, not a consequence)
    assert run("retry", "rc", "a", home=home).stdout.split() == ["a"]
    run("run", "rc", home=home, check=1)
    assert check_consistent(home, "rc", ctl) == {"a": "done", "b": "done", "c": "cancelled", "z": "done"}
    r = run("retry", "rc", "b", home=home, check=4)          # done
    assert run("retry", "rc", "c", "--cascade", home=home).stdout.split() == ["c"]
    run("run", "rc", home=home)
    assert set(check_consistent(home, "rc", ctl).values()) == {"done"}
    assert [runs(ctl, t) for t in "abcz"] == [2, 1, 1, 1]


def test_retry_cascade_resets_failed_and_cancelled_below(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "hold.a").touch()
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]},
                           {"id": "c", "prompt": "p", "deps": ["b"]}], goal="cas",
                   defaults={"agent": agent, "kill_grace": 1})
    eng = spawn("run", p, home=home)
    try:
        wait_for(lambda: _running(home, "cas", "a"), what="a running")
        run("cancel", "cas", home=home)
        assert eng.wait(timeout=30) == 1
    finally:
        if eng.poll() is None:
            eng.kill()
    (ctl / "hold.a").unlink()
    assert run("retry", "cas", "a", "--cascade", home=home).stdout.split() == ["a", "b", "c"]
    run("run", "cas", home=home)
    assert set(check_consistent(home, "cas", ctl).values()) == {"done"}


def test_forced_retry_of_a_done_task_redoes_it_and_its_downstream(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]},
                           {"id": "c", "prompt": "p", "deps": ["b"]}, {"id": "s", "prompt": "p", "soft_deps": ["b"]},
                           {"id": "x", "prompt": "p"}], goal="fr", defaults={"agent": agent})
    run("run", p, home=home)
    old_c = (task_dir(home, "fr", "c") / "output").read_text()
    r = run("retry", "fr", "b", "--force", home=home)
    assert r.stdout.split() == ["b", "c", "s"]
    archived = list((home / "goals" / "fr" / "archive").glob("*/*"))
    assert sorted(a.name for a in archived) == ["b", "c", "s"]
    assert any((a / "output").read_text() == old_c for a in archived if a.name == "c")
    resets = [e for e in events(home, "fr") if e.get("status") == "reset"]
    assert sorted(e["task"] for e in resets) == ["b", "c", "s"] and all("forced" in e["reason"] for e in resets)
    run("run", "fr", home=home)
    check_consistent(home, "fr", ctl)
    assert [runs(ctl, t) for t in ("a", "b", "c", "s", "x")] == [1, 2, 2, 2, 1]
    assert "out-b-2" in (task_dir(home, "fr", "c") / "prompt.md").read_text()


# ------------------------------------------------------------------------------ plan edits
EDIT = [  # a -> m -> (d1, d2) -> z ; i alone ; r (removed later)
    {"id": "a", "prompt": "first"}, {"id": "m", "prompt": "middle v1", "deps": ["a"]},
    {"id": "d1", "prompt": "left", "deps": ["m"]}, {"id": "d2", "prompt": "right", "deps": ["m"]},
    {"id": "z", "prompt": "last", "deps": ["d1", "d2"]}, {"id": "i", "prompt": "alone"},
    {"id": "r", "prompt": "to be removed"},
]


def _edited(tasks, **changes):
    out = []
    for t in tasks:
        if t["id"] in changes:
            if changes[t["id"]] is None:
                continue
            t = {**t, **changes[t["id"]]}
        out.append(t)
    return out


def test_plan_edit_reruns_only_the_changed_task_and_its_descendants(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    p = write_plan(plans, EDIT, goal="ed", defaults={"agent": agent})
    run("run", p, home=home)
    assert all(runs(ctl, t["id"]) == 1 for t in EDIT)
    # knobs that do not change a result (timeout, retries, priority) re-run nothing
    write_plan(plans, _edited(EDIT, m={"timeout": 99, "retries": 3, "priority": 4}), goal="ed", defaults={"agent": agent})
    assert run("diff", p, home=home).stdout.splitlines() == ["kept       7 done task(s) keep their output"]
    run("submit", p, "--replace", home=home)
    assert not (home / "goals" / "ed" / "archive").exists()
    # change m's prompt and drop r
    write_plan(plans, _edited(EDIT, m={"prompt": "middle v2"}, r=None), goal="ed", defaults={"agent": agent})
    shown = run("diff", p, home=home).stdout.splitlines()
    assert shown == ["changed    m", "downstream d1 d2 z", "removed    r", "kept       2 done task(s) keep their output"]
    d = json.loads(run("submit", p, "--dry-run", "--json", home=home).stdout)
    assert d["action"] == "would-replace" and d["diff"]["changed"] == ["m"]
    assert d["diff"]["downstream"] == ["d1", "d2", "z"] and d["diff"]["kept_done"] == ["a", "i"]
    assert json.loads((home / "goals" / "ed" / "plan.json").read_text())["tasks"][1]["prompt"] == "middle v1"
    r = run("submit", p, home=home, check=4)                 # not without --replace
    assert "dagrun diff" in r.stderr
    run("submit", p, "--replace", home=home)
    arch = list((home / "goals" / "ed" / "archive").glob("*"))
    assert len(arch) == 1 and sorted(x.name for x in arch[0].iterdir()) == ["d1", "d2", "m", "r", "z"]
    assert (arch[0] / "r" / "output").read_text() == "out-r-1\n"      # archived, not deleted
    rep = [e for e in events(home, "ed") if e["type"] == "agent.plan.replaced"][-1]
    assert rep["changed"] == ["m"] and rep["removed"] == ["r"] and sorted(rep["archived"]) == ["d1", "d2", "m", "r", "z"]
    run("run", "ed", home=home)
    check_consistent(home, "ed", ctl)
    assert {t["id"]: runs(ctl, t["id"]) for t in EDIT} == {"a": 1, "m": 2, "d1": 2, "d2": 2, "z": 2, "i": 1, "r": 1}
    assert "middle v2" in (task_dir(home, "ed", "m") / "prompt.md").read_text()
    assert "out-m-2" in (task_dir(home, "ed", "d1") / "prompt.md").read_text()
    st = json.loads(run("status", "ed", "--json", home=home).stdout)
    assert [r["task"] for r in st["tasks"]] == ["a", "m", "d1", "d2", "z", "i"] and st["state"] == "done"


def test_plan_edit_changing_deps_or_agent_reruns_and_added_tasks_run(home, plans, tmp_path):
    agent, ctl = ctl_agent(tmp_path)
    p = write_plan(plans, EDIT, goal="ed2", defaults={"agent": agent})
    run("run", p, home=home)
    tasks = _edited(EDIT, d2={"deps": ["m", "i"]}, i={"agent": f"true; {agent}"})
    tasks.append({"id": "new", "prompt": "added", "deps": ["a"]})
    write_plan(plans, tasks, goal="ed2", defaults={"agent": agent})
    d = json.loads(run("diff", p, "--json", home=home).stdout)["diff"]
    assert d["changed"] == ["d2", "i"] and d["downstream"] == ["z"] and d["added"] == ["new"]
    run("submit", p, "--replace", home=home)
    run("run", "ed2", home=home)
    check_consistent(home, "ed2", ctl)
    assert {t: runs(ctl, t) for t in ("a", "m", "d1", "d2", "z", "i", "r", "new")} == \
        {"a": 1, "m": 1, "d1": 1, "d2": 2, "z": 2, "i": 2, "r": 1, "new": 1}


@pytest.mark.parametrize("how", ["run", "worker"])
def test_running_goal_picks_up_a_plan_edit_without_restart(home, plans, tmp_path, how):
    """m is running (and ignores TERM) when its prompt is edited: the engine stops it, runs the
    new m, then its descendants; a and i are not run again."""
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "hold.m").touch()
    stubborn = f"trap '' TERM; {agent}"
    base = _edited(EDIT, m={"agent": stubborn}, r=None)
    p = write_plan(plans, base, goal="live", defaults={"agent": agent, "kill_grace": 1})
    if how == "run":
        eng = spawn("run", p, home=home)
    else:
        run("submit", p, home=home)
        eng = spawn("worker", home=home)
    try:
        wait_for(lambda: _running(home, "live", "m") and (task_dir(home, "live", "i") / "done").exists(),
                 what="m running")
        write_plan(plans, _edited(base, m={"prompt": "middle v2"}), goal="live",
                   defaults={"agent": agent, "kill_grace": 1})
        run("submit", p, "--replace", home=home)
        # the old m is stopped (KILL after kill_grace) and the new one starts
        wait_for(lambda: runs(ctl, "m") == 2 and _running(home, "live", "m"), what="the new m running")
        (ctl / "hold.m").unlink()
        if how == "run":
            assert eng.wait(timeout=30) == 0
        else:
            wait_for(lambda: (home / "goals" / "live" / "summary.json").exists(), timeout=30, what="the goal to end")
            assert eng.poll() is None
    finally:
        if eng.poll() is None:
            eng.terminate()
            eng.wait(timeout=30)
    states = check_consistent(home, "live", ctl)
    assert set(states.values()) == {"done"}
    assert {t: runs(ctl, t) for t in states} == {"a": 1, "m": 2, "d1": 1, "d2": 1, "z": 1, "i": 1}
    assert "middle v2" in (task_dir(home, "live", "m") / "prompt.md").read_text()
    assert (task_dir(home, "live", "m") / "output").read_text() == "out-m-2\n"
    arch = list((home / "goals" / "live" / "archive").glob("*/m"))
    assert len(arch) == 1 and not (arch[0] / "done").exists()     # the old attempt, cut off


def test_forced_retry_while_a_downstream_task_runs(home, plans, tmp_path):
    """c is running when `retry --force a` archives a, b and c (c's claim with it): the engine
    stops the old c, then runs a, b and c again in order."""
    agent, ctl = ctl_agent(tmp_path)
    (ctl / "hold.c").touch()
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]},
                           {"id": "c", "prompt": "p", "deps": ["b"]}, {"id": "x", "prompt": "p"}],
                   goal="frr", defaults={"agent": agent, "kill_grace": 1})
    eng = spawn("run", p, home=home)
    try:
        wait_for(lambda: _running(home, "frr", "c"), what="c running")
        assert run("retry", "frr", "a", "--force", home=home).stdout.split() == ["a", "b", "c"]
        wait_for(lambda: runs(ctl, "c") == 2, what="the new c")
        (ctl / "hold.c").unlink()
        assert eng.wait(timeout=30) == 0
    finally:
        if eng.poll() is None:
            eng.kill()
    check_consistent(home, "frr", ctl)
    assert [runs(ctl, t) for t in "abcx"] == [2, 2, 2, 1]
    assert "out-b-2" in (task_dir(home, "frr", "c") / "prompt.md").read_text()


def test_a_claim_on_an_archived_input_is_refused(home, plans):
    """The engine's view can lag behind an archive: rendering finds the input gone and the
    claim is given back (Stale), instead of running on an empty input."""
    import shutil as sh

    from dagrun.lifecycle import Stale, claim_task
    from dagrun.store import Home
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]}],
                   goal="st", defaults={"agent": "echo A"})
    run("run", p, home=home)
    h = Home(str(home))
    plan = h.load_plan("st")
    sh.rmtree(task_dir(home, "st", "b"))
    (home / "goals" / "st" / "archive").mkdir()
    os.rename(task_dir(home, "st", "a"), home / "goals" / "st" / "archive" / "a")
    try:
        claim_task(h, plan, "b", worker="w", kind="engine", state_of=lambda t: "done")
        raise AssertionError("claimed b on a vanished input")
    except Stale:
        pass
    assert not (task_dir(home, "st", "b") / "claim").exists()


def test_archiving_waits_for_claims_in_flight_and_blocks_new_ones(home, plans):
    """`dagrun claim` takes the goal's edit lock shared: while a plan replace or forced retry
    holds it exclusive, the claim waits."""
    import subprocess
    import time

    from conftest import DAGRUN
    from dagrun import claim
    from dagrun.store import Home
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="lk", defaults={"agent": "true"})
    run("submit", p, home=home)
    with claim.edit_lock(Home(str(home)), "lk", exclusive=True):
        c = subprocess.Popen([DAGRUN, f"--home={home}", "claim", "lk", "--worker", "w"],
                             stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert c.poll() is None, "claimed while the goal was being edited"
    assert c.wait(timeout=30) == 0 and c.stdout.read().strip() == "a"
    run("fail", "lk", "a", "--worker", "w", home=home)


def test_cancel_of_a_task_held_by_a_script(home, plans):
    """A bash worker's agent cannot be killed from here: cancel says so at once, the script's
    next heartbeat is refused (exit 4) and so is its complete."""
    import time
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]}],
                   goal="ext", defaults={"agent": "true"})
    run("submit", p, home=home)
    assert run("claim", "ext", "--worker", "lobster", home=home).stdout.strip() == "a"
    t0 = time.monotonic()
    r = run("cancel", "ext", "a", home=home)
    assert time.monotonic() - t0 < 5
    assert r.stdout.split() == ["a"] and "held by a script" in r.stderr
    hb = run("heartbeat", "ext", "a", "--worker", "lobster", home=home, check=4)
    assert "cancelled" in hb.stderr
    run("complete", "ext", "a", "--worker", "lobster", home=home, check=4)
    st = {r["task"]: r for r in json.loads(run("status", "ext", "--json", home=home).stdout)["tasks"]}
    assert st["a"]["state"] == "cancelled" and st["b"]["state"] == "blocked" and st["b"]["blocked_by"] == "a"
