"""Acceptance checks: `check: [argv...]` decides whether an attempt that exited 0 is done."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from conftest import events, run, write_plan

PY = sys.executable

CHECK = """
import os, sys
got = open(os.environ["DAGRUN_OUTPUT"]).read()
print("checking", repr(got), "in", os.getcwd())
if got.strip() != "right":
    print("FAIL: expected right, got", got.strip())
    sys.exit(3)
"""
AGENT = 'cat >/dev/null; if [ "$DAGRUN_ATTEMPT" = 1 ]; then echo wrong; else echo right; fi\n'


def _task(home: Path, g: str, t: str) -> Path:
    return home / "goals" / g / "tasks" / t


@pytest.fixture
def plan_dir(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "check.py").write_text(CHECK)
    (d / "agent.sh").write_text(AGENT)
    return d


def test_failing_check_fails_the_attempt_and_its_output_reaches_the_retry(tmp_path, plan_dir):
    home = tmp_path / "home"
    plan = write_plan(plan_dir, [{"id": "a", "prompt": "say right"}], goal="ck",
                      defaults={"agent": "sh agent.sh", "retries": 1, "retry_backoff": 0,
                                "retry_context": "error", "check": [PY, "check.py"]})
    run("run", plan, home=home)
    tdir = _task(home, "ck", "a")
    rec = json.loads((tdir / "attempts" / "1.json").read_text())
    assert rec["outcome"] == "check_failed" and rec["counted"] is True
    assert rec["reason"] == f"check failed: exit code 3 (`{PY} check.py`)"
    assert rec["check"]["exit_code"] == 3 and "FAIL: expected right, got wrong" in rec["check"]["tail"]
    assert f"in {plan_dir}" in rec["check"]["tail"]                      # run in the task's workdir
    prompt2 = (tdir / "prompt.md").read_text()
    assert "failed the acceptance check" in prompt2 and "FAIL: expected right, got wrong" in prompt2
    assert (tdir / "output").read_text() == "right\n"
    done = json.loads((tdir / "done").read_text())
    assert done["check"]["passed"] is True and done["check"]["exit_code"] == 0
    retrying = [e for e in events(home, "ck") if e.get("status") == "retrying"]
    assert retrying[0]["outcome"] == "check_failed" and "check failed: exit code 3" in retrying[0]["reason"]
    s = json.loads((home / "goals/ck/summary.json").read_text())
    assert s["attempts_by_outcome"] == {"check_failed": 1, "done": 1}


def test_check_failure_for_good_shows_in_status_and_report(tmp_path, plan_dir):
    home = tmp_path / "home"
    (plan_dir / "bad.sh").write_text("cat >/dev/null; echo wrong\n")
    plan = write_plan(plan_dir, [{"id": "a", "prompt": "x", "agent": "sh bad.sh", "check": [PY, "check.py"]},
                                 {"id": "b", "prompt": "y", "deps": ["a"], "agent": "cat"}], goal="cf")
    p = run("run", plan, home=home, check=1)
    assert "outcome=check_failed" in p.stdout
    failed = json.loads((_task(home, "cf", "a") / "failed").read_text())
    assert failed["outcome"] == "check_failed" and "FAIL" in failed["check"]["tail"]
    assert not (_task(home, "cf", "a") / "output").exists()
    st = run("status", "cf", home=home).stdout
    assert "check failed: exit code 3" in st
    out = tmp_path / "r.html"
    run("report", "cf", "--out", out, home=home)
    assert "check failed: exit code 3" in out.read_text()


def test_check_timeout_kills_the_check(tmp_path, plan_dir):
    home = tmp_path / "home"
    plan = write_plan(plan_dir, [{"id": "a", "prompt": "x", "agent": "cat",
                                  "check": ["sh", "-c", "echo started; sleep 30"], "check_timeout": 0.5}], goal="ct")
    t0 = time.monotonic()
    run("run", plan, home=home, check=1)
    assert time.monotonic() - t0 < 15
    f = json.loads((_task(home, "ct", "a") / "failed").read_text())
    assert f["outcome"] == "check_failed" and f["reason"].startswith("check failed: timed out")
    assert f["check"]["timed_out"] is True and "started" in f["check"]["tail"]


def test_check_runs_only_after_the_agent_succeeded(tmp_path, plan_dir):
    home = tmp_path / "home"
    marker = tmp_path / "check-ran"
    plan = write_plan(plan_dir, [{"id": "a", "prompt": "x", "agent": "cat >/dev/null; exit 4",
                                  "check": ["touch", str(marker)]}], goal="cr")
    run("run", plan, home=home, check=1)
    f = json.loads((_task(home, "cr", "a") / "failed").read_text())
    assert f["outcome"] == "failed" and f["exit_code"] == 4 and f["reason"] == "exit code 4"
    assert not marker.exists()


def test_check_is_never_passed_through_a_shell(tmp_path, plan_dir):
    home = tmp_path / "home"
    evil = tmp_path / "evil"
    plan = write_plan(plan_dir, [{"id": "a", "prompt": "x", "agent": "cat",
                                  "check": ["echo", f"$(touch {evil})", "; touch", str(evil), "`id`"]}], goal="ns")
    run("run", plan, home=home)
    assert not evil.exists()
    assert (_task(home, "ns", "a") / "output").read_text().startswith("x")
    err = (_task(home, "ns", "a") / "stderr.log").read_text()
    assert f"$(touch {evil}) ; touch {evil} `id`" in err        # echoed literally


def test_check_sees_a_presets_answer(tmp_path, plan_dir):
    """With a preset, DAGRUN_OUTPUT holds the extracted answer (not the tool's JSON)."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "fake.py").write_text(
        'import json,sys; sys.stdin.read(); print(json.dumps({"type":"result","result":"right","is_error":False}))\n')
    (home / "presets.json").write_text(json.dumps({"claude": {"command": [PY, str(tmp_path / "fake.py")]}}))
    plan = write_plan(plan_dir, [{"id": "a", "prompt": "x", "agent": "@claude", "check": [PY, "check.py"]}], goal="pc")
    run("run", plan, home=home)
    assert (_task(home, "pc", "a") / "output").read_text() == "right\n"


def test_a_check_changes_the_definition_but_older_digests_hold(tmp_path, plan_dir):
    from dagrun import plan as planmod
    a = planmod.load(str(write_plan(plan_dir, [{"id": "a", "prompt": "x", "agent": "cat"}], name="a.json")))
    b = planmod.load(str(write_plan(plan_dir, [{"id": "a", "prompt": "x", "agent": "cat", "check": ["true"]}],
                                    name="b.json")))
    assert a.task("a").definition_digest() != b.task("a").definition_digest()
    assert b"\"check" not in a.canonical()        # plan.json of plans without checks is unchanged


@pytest.mark.parametrize("check,msg", [
    ('"pytest -q"', "tasks[0].check: expected an array of strings (a program and its arguments; no shell), got a string"),
    ("[]", "tasks[0].check: must name a program"),
    ('["pytest", 1]', "tasks[0].check[1]: expected a string, got a number"),
    ('[""]', "tasks[0].check[0]: the program name must not be empty"),
    ('{"argv": ["x"]}', "expected an array of strings"),
])
def test_bad_check_is_a_one_line_plan_error(tmp_path, check, msg):
    p = tmp_path / "dag.json"
    p.write_text('{"goal": "b", "tasks": [{"id": "a", "prompt": "x", "agent": "cat", "check": %s}]}' % check)
    r = run("validate", p, home=tmp_path / "home", check=2)
    assert msg in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_bad_check_timeout_is_a_plan_error(tmp_path):
    p = tmp_path / "dag.json"
    p.write_text('{"goal": "b", "defaults": {"check_timeout": 0}, "tasks": [{"id": "a", "prompt": "x", "agent": "cat"}]}')
    r = run("validate", p, home=tmp_path / "home", check=2)
    assert "defaults.check_timeout: must be greater than 0" in r.stderr
