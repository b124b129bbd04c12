"""Issue 18: approval gates -- awaiting_approval, `dagrun approve` / `dagrun reject`, timeouts,
crash safety of a decision (docs/conditions.md)."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from conftest import events, kill_group, processes_with_env, run, spawn, task_dir, wait_for, write_plan


def _plan(tmp_path, timeout=None, hook=True):
    gate = {"id": "merge", "deps": ["build"], "prompt": "Merge the build below?",
            "agent": f"touch {tmp_path}/GATE-AGENT-RAN; echo no", "approval": {"prompt": "Merge the migration?"}}
    if timeout is not None:
        gate["approval"]["timeout"] = timeout
    top = {}
    if hook:
        top["hooks"] = {"on_approval_needed": [["sh", "-c", f"cat >> {tmp_path}/needed.jsonl"]]}
    return write_plan(tmp_path / "p", [
        {"id": "build", "prompt": "x", "agent": "echo built-ok"},
        gate,
        {"id": "deploy", "deps": ["merge"], "prompt": "Deploy.", "agent": "cat"},
    ], goal="rel", **top)


def _state(home, t):
    rows = json.loads(run("status", "rel", "--json", home=home).stdout)["tasks"]
    return next(r for r in rows if r["task"] == t)


def _first_line(path) -> str | None:
    """The file's first whole line, None before it has one: the hook's `cat >>` makes the file
    before cat writes, so a poll that waits for it to exist can read it empty."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text.partition("\n")[0] if "\n" in text else None


def test_gate_waits_without_an_agent_and_approve_lets_dependents_run(tmp_path):
    home = tmp_path / "home"
    p = _plan(tmp_path)
    proc = spawn("run", p, home=home)          # `dagrun run` waits for the decision
    try:
        wait_for(lambda: (task_dir(home, "rel", "merge") / "awaiting").exists(), what="the gate to wait")
        time.sleep(0.3)
        assert proc.poll() is None
        assert not (tmp_path / "GATE-AGENT-RAN").exists()                 # no agent, no prompt sent
        assert processes_with_env("DAGRUN_TASK", "merge") == []
        row = _state(home, "merge")
        assert row["state"] == "awaiting_approval" and row["reason"] == "Merge the migration?"
        st = json.loads(run("status", "rel", "--json", home=home).stdout)
        assert st["state"] == "awaiting_approval" and st["counts"]["awaiting_approval"] == 1
        shown = run("show", "rel", "merge", home=home).stdout
        assert "awaiting_approval -- Merge the migration?" in shown and "built-ok" in shown   # upstream output
        assert "dagrun approve rel merge" in shown
        hook_ev = json.loads(wait_for(lambda: _first_line(tmp_path / "needed.jsonl"),
                                      what="the on_approval_needed hook's line"))
        assert hook_ev["status"] == "awaiting_approval" and hook_ev["prompt"] == "Merge the migration?"
        r = run("approve", "rel", "merge", "--note", "checked; go", home=home)
        assert "rel/merge approved by" in r.stderr
        assert proc.wait(timeout=30) == 0
    finally:
        kill_group(proc)
    done = json.loads((task_dir(home, "rel", "merge") / "done").read_text())
    assert done["approved"] is True and done["note"] == "checked; go" and "@" in done["decided_by"]
    assert done["decided_at"] and done["approval_since"]
    assert (task_dir(home, "rel", "merge") / "output").read_text() == "checked; go\n"
    assert not (task_dir(home, "rel", "merge") / "awaiting").exists()
    assert "checked; go" in (task_dir(home, "rel", "deploy") / "output").read_text()   # the note flows down
    assert not (tmp_path / "GATE-AGENT-RAN").exists()
    ev = [e for e in events(home, "rel") if e.get("task") == "merge"]
    assert [e.get("status") for e in ev] == ["ready", "awaiting_approval", "done"]
    assert ev[-1]["decided_by"] == done["decided_by"]


def test_reject_blocks_dependents_and_until_idle_leaves_the_gate(tmp_path):
    home = tmp_path / "home"
    run("submit", _plan(tmp_path, hook=False), home=home)
    t0 = time.monotonic()
    r = run("worker", "--until-idle", home=home)        # exits, leaving the gate to a person
    assert time.monotonic() - t0 < 20 and "idle" in r.stderr
    assert _state(home, "merge")["state"] == "awaiting_approval"
    run("approve", "rel", "deploy", home=home, check=4)                 # not a gate
    r = run("reject", "rel", "merge", "--reason", "tests are red", home=home)
    assert "rejected" in r.stderr
    failed = json.loads((task_dir(home, "rel", "merge") / "failed").read_text())
    assert failed["outcome"] == "rejected" and failed["reason"] == "tests are red" and failed["decided_by"]
    assert _state(home, "deploy")["state"] == "blocked" and _state(home, "deploy")["blocked_by"] == "merge"
    r = run("approve", "rel", "merge", home=home, check=4)
    assert "already failed" in r.stderr and len(r.stderr.splitlines()) == 1
    run("reject", "rel", "merge", home=home, check=2)                  # --reason is required
    assert json.loads(run("status", "rel", "--json", home=home).stdout)["state"] == "failed"
    # a retry asks again, afresh
    run("retry", "rel", "merge", home=home)
    run("worker", "--until-idle", home=home)
    assert _state(home, "merge")["state"] == "awaiting_approval"
    run("approve", "rel", "merge", home=home)
    run("worker", "--until-idle", home=home)
    assert _state(home, "deploy")["state"] == "done"
    assert not (tmp_path / "GATE-AGENT-RAN").exists()


def test_approving_a_gate_that_does_not_wait_yet_is_refused(tmp_path):
    home = tmp_path / "home"
    run("submit", _plan(tmp_path, hook=False), home=home)
    r = run("approve", "rel", "merge", home=home, check=4)
    assert "not awaiting approval" in r.stderr
    assert not (task_dir(home, "rel", "merge") / "done").exists()


def test_timeout_rejects_in_a_running_engine_and_at_approve(tmp_path):
    home = tmp_path / "home"
    p = _plan(tmp_path, timeout=1, hook=False)
    r = run("run", p, home=home, check=1, timeout=30)      # the engine's timer rejects it
    failed = json.loads((task_dir(home, "rel", "merge") / "failed").read_text())
    assert failed["outcome"] == "approval_timeout" and "timed out" in failed["reason"]
    assert _state(home, "deploy")["state"] == "blocked"
    assert "approval timed out" in r.stdout + r.stderr
    # no engine around: `approve` past the deadline rejects instead
    home2 = tmp_path / "home2"
    run("submit", p, home=home2)
    run("worker", "--until-idle", home=home2)
    assert (task_dir(home2, "rel", "merge") / "awaiting").exists()
    time.sleep(1.2)
    r = run("approve", "rel", "merge", home=home2, check=4)
    assert "timed out" in r.stderr
    assert json.loads((task_dir(home2, "rel", "merge") / "failed").read_text())["outcome"] == "approval_timeout"


def test_bash_protocol_never_hands_out_a_gate(tmp_path):
    home = tmp_path / "home"
    run("submit", _plan(tmp_path, hook=False), home=home)
    assert run("claim", "rel", "--worker", "w", home=home).stdout.strip() == "build"
    run("complete", "rel", "build", "--worker", "w", home=home)
    run("claim", "rel", "--worker", "w", home=home, check=3)          # nothing ready: the gate waits
    assert _state(home, "merge")["state"] == "awaiting_approval"
    run("approve", "rel", "merge", "--note", "fine", home=home)       # the fast path (no typer)
    assert run("claim", "rel", "--worker", "w", home=home).stdout.strip() == "deploy"


@pytest.mark.slow
def test_crash_at_every_step_of_approve_never_loses_the_decision(tmp_path):
    base = tmp_path / "base"
    run("submit", _plan(tmp_path, hook=False), home=base)
    run("worker", "--until-idle", home=base)
    assert (task_dir(base, "rel", "merge") / "awaiting").exists()
    k, crashed = 1, 0
    while True:
        home = tmp_path / f"h{k}"
        shutil.copytree(base, home, symlinks=True)
        r = run("approve", "rel", "merge", "--note", "yes", home=home, check=False,
                env={"DAGRUN_CRASH_AT": str(k)})
        if r.returncode == 0:
            break                                  # past the last step: a clean decision
        crashed += 1
        tdir = task_dir(home, "rel", "merge")
        if not (tdir / "done").exists():
            # not decided: the gate still waits (after its dead decider's claim is broken)
            run("approve", "rel", "merge", "--note", "yes", home=home, env={"DAGRUN_CLAIM_GRACE": "0.3"})
        run("worker", "--until-idle", home=home, env={"DAGRUN_CLAIM_GRACE": "0.3"})
        assert json.loads((tdir / "done").read_text())["approved"] is True, k
        assert (tdir / "output").read_text() == "yes\n", k
        assert (task_dir(home, "rel", "deploy") / "done").exists(), k
        assert not (tdir / "claim").exists(), k
        shutil.rmtree(home)
        k += 1
    assert crashed >= 5
