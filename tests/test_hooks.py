"""Hooks and webhooks (issue 19): real processes, a real local HTTP server, real SIGKILLs."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import run, write_plan

RECORDER = r'''
import json, os, sys
data = sys.stdin.read()
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"label": sys.argv[2], "stdin": json.loads(data),
                        "env": {k: v for k, v in os.environ.items() if k.startswith("DAGRUN_")}}) + "\n")
'''


def _recorder(tmp: Path) -> tuple[Path, Path]:
    script = tmp / "rec.py"
    script.write_text(RECORDER)
    return script, tmp / "hooks.log"


def _hook(script: Path, log: Path, label: str) -> list[str]:
    return [sys.executable, str(script), str(log), label]


def _log(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(x) for x in log.read_text().splitlines()]


def _events(home: Path, g: str) -> list[dict]:
    return [json.loads(x) for x in (home / "goals" / g / "events.jsonl").read_text().splitlines()]


def _due(home: Path, g: str) -> list[str]:
    d = home / "goals" / g / "hooks"
    return sorted(p.name for p in d.glob("due-*.json")) if d.exists() else []


def test_hook_order_and_stdin_per_transition(tmp_path):
    script, log = _recorder(tmp_path)
    home = tmp_path / "home"
    hd = home / "hooks" / "on_goal_finished.d"
    hd.mkdir(parents=True)
    home_hook = hd / "10-notify"
    home_hook.write_text(f"#!{sys.executable}\n" + RECORDER.replace("sys.argv[1]", repr(str(log)))
                         .replace("sys.argv[2]", "'home-fin'"))
    home_hook.chmod(0o755)
    (hd / "20-not-executable").write_text("#!/bin/sh\nexit 1\n")
    plan = write_plan(tmp_path / "p", [
        {"id": "a", "prompt": "x", "agent": "echo hi",
         "hooks": {"on_done": [_hook(script, log, "task-done")]}},
        {"id": "b", "deps": ["a"], "prompt": "x", "agent": "exit 3"},
        {"id": "c", "deps": ["b"], "prompt": "x", "agent": "echo never"},
    ], goal="g", hooks={
        "on_done": [_hook(script, log, "plan-done")],
        "on_failed": [_hook(script, log, "plan-failed")],
        "on_blocked": [{"argv": _hook(script, log, "plan-blocked"), "timeout": 10}],
        "on_goal_finished": [_hook(script, log, "plan-fin")],
    })
    run("run", plan, home=home, check=1)
    got = _log(log)
    assert [x["label"] for x in got] == ["plan-done", "task-done", "plan-failed", "plan-blocked", "plan-fin",
                                         "home-fin"]
    by = {x["label"]: x for x in got}
    # stdin is exactly the event line that was appended
    evs = _events(home, "g")
    for label in ("plan-done", "plan-failed", "plan-blocked", "plan-fin"):
        assert by[label]["stdin"] in evs
    assert by["plan-done"]["stdin"]["status"] == "done" and by["plan-done"]["stdin"]["task"] == "a"
    assert by["plan-failed"]["stdin"]["status"] == "failed" and by["plan-failed"]["stdin"]["exit_code"] == 3
    assert by["plan-blocked"]["stdin"]["type"] == "agent.task.blocked" and by["plan-blocked"]["stdin"]["blocked_by"] == "b"
    assert by["plan-fin"]["stdin"]["type"] == "agent.goal.finished" and by["plan-fin"]["stdin"]["outcome"] == "failed"
    assert by["home-fin"]["stdin"] == by["plan-fin"]["stdin"]
    env = by["plan-done"]["env"]
    assert env["DAGRUN_GOAL"] == "g" and env["DAGRUN_TASK"] == "a" and env["DAGRUN_HOOK_EVENT"] == "on_done"
    assert env["DAGRUN_HOME"] == str(home) and env["DAGRUN_OUTPUT_FILE"].endswith("/tasks/a/output")
    assert "DAGRUN_TASK" not in by["plan-fin"]["env"]
    assert _due(home, "g") == []                       # every record removed once its hooks ran
    assert not any(e["type"] == "agent.hook.failed" for e in evs)


def test_failing_hook_changes_nothing_and_shows_in_status(tmp_path):
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"}], goal="g",
                      hooks={"on_done": [["sh", "-c", "echo boom >&2; exit 7"], ["/nonexistent/hook"]]})
    p = run("run", plan, home=home)
    assert "hook on_done of g/a (sh -c echo boom >&2; exit 7) failed: exit code 7: boom" in p.stderr
    assert (home / "goals/g/tasks/a/done").exists()
    fails = [e for e in _events(home, "g") if e["type"] == "agent.hook.failed"]
    assert [f["reason"] for f in fails] == ["exit code 7: boom", "cannot start /nonexistent/hook: No such file or directory"]
    st = json.loads(run("status", "g", "--json", home=home).stdout)
    assert st["state"] == "done"
    assert st["hook_failure"]["reason"].startswith("cannot start /nonexistent/hook")
    text = run("status", "g", home=home).stdout
    assert "hook" in text and "/nonexistent/hook" in text


def test_hanging_hook_is_killed_at_its_timeout_and_the_goal_ends(tmp_path):
    marker = f"dagrun-hang-{os.getpid()}-{time.time_ns()}"
    home = tmp_path / "home"
    # the hook and a child in its process group both hang; the timeout kills the group
    hang = ["sh", "-c", f"sleep 300 & exec sleep 301 # {marker}", marker]
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"},
                                       {"id": "b", "deps": ["a"], "prompt": "x", "agent": "echo ok"}], goal="g",
                      hooks={"on_done": [{"argv": hang, "timeout": 1}]})
    t0 = time.monotonic()
    run("run", plan, home=home, timeout=30)
    took = time.monotonic() - t0
    assert (home / "goals/g/tasks/b/done").exists() and (home / "goals/g/summary.json").exists()
    assert took < 15, took
    fails = [e for e in _events(home, "g") if e["type"] == "agent.hook.failed"]
    assert len(fails) == 2 and all("timed out after 1s" in f["reason"] for f in fails)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == []


def test_hook_due_at_a_crash_runs_after_restart(tmp_path):
    script, log = _recorder(tmp_path)
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"}], goal="g",
                      hooks={"on_done": [_hook(script, log, "done")]})
    # find the step that publishes the hooks-due record
    trace = tmp_path / "trace"
    run("run", plan, home=tmp_path / "h0", env={"DAGRUN_STEP_TRACE": str(trace)})
    k = next(int(line.split()[0]) for line in trace.read_text().splitlines()
             if line.split()[1] == "publish" and "/hooks/due-" in line)
    log.unlink()
    home = tmp_path / "home"
    p = run("run", plan, home=home, check=False, env={"DAGRUN_CRASH_AT": f"{k}:after"})
    assert p.returncode == -9, p.stderr
    assert (home / "goals/g/tasks/a/done").exists()
    assert len(_due(home, "g")) == 1 and _log(log) == []        # due, not run: the engine died
    run("run", "g", home=home)                                   # the restart replays it
    got = _log(log)
    assert [x["label"] for x in got] == ["done"]
    assert got[0]["stdin"]["status"] == "done" and got[0]["stdin"]["task"] == "a"
    assert _due(home, "g") == []
    run("run", "g", home=home)                                   # and never again
    assert len(_log(log)) == 1


def test_protocol_complete_runs_the_hooks_before_it_exits(tmp_path):
    script, log = _recorder(tmp_path)
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"}], goal="g",
                      hooks={"on_done": [_hook(script, log, "done")], "on_goal_finished": [_hook(script, log, "fin")]})
    run("submit", plan, home=home)
    sh = f"""set -e
t=$({run.__globals__['DAGRUN']} --home {home} claim g)
echo out | {run.__globals__['DAGRUN']} --home {home} complete g "$t" --output -
"""
    subprocess.run(["sh", "-c", sh], check=True, timeout=60)
    assert [x["label"] for x in _log(log)] == ["done", "fin"]
    assert _log(log)[0]["env"]["DAGRUN_TASK"] == "a"


# ---------------------------------------------------------------------------------- webhooks
class _Server:
    """A local HTTP server on 127.0.0.1 that fails the first `fail` POSTs with 500."""

    def __init__(self, fail: int):
        self.fail, self.requests = fail, []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((dict(self.headers), body, time.monotonic()))
                code = 500 if len(outer.requests) <= outer.fail else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(fail=2)
    yield s
    s.close()


def test_webhook_retries_with_backoff_and_secrets_stay_out_of_the_home(tmp_path, server):
    token = "s3cr3t-token-" + os.urandom(8).hex()
    key = "hmac-key-" + os.urandom(8).hex()
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"}], goal="g",
                      hooks={"on_goal_finished": [{"url": server.url, "headers": {"X-Team": "infra"},
                                                   "headers_env": {"Authorization": "HOOK_TOKEN"},
                                                   "secret_env": "HOOK_KEY", "retries": 3, "timeout": 5}]})
    run("run", plan, home=home, env={"HOOK_TOKEN": token, "HOOK_KEY": key})
    assert len(server.requests) == 3                   # 500, 500, 200
    times = [r[2] for r in server.requests]
    assert times[1] - times[0] >= 0.4 and times[2] - times[1] >= 0.9     # 0.5 s, then 1 s
    headers, body, _ = server.requests[-1]
    assert headers["Authorization"] == token and headers["X-Team"] == "infra"
    assert headers["X-Dagrun-Event"] == "on_goal_finished"
    assert headers["X-Dagrun-Signature"] == "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    e = json.loads(body)
    assert e["type"] == "agent.goal.finished" and e in _events(home, "g")
    assert not any(x["type"] == "agent.hook.failed" for x in _events(home, "g"))
    for root, _dirs, files in os.walk(home):
        for f in files:
            data = Path(root, f).read_bytes()
            assert token.encode() not in data and key.encode() not in data, f"secret written to {root}/{f}"


def test_webhook_that_keeps_failing_is_reported(tmp_path):
    s = _Server(fail=100)
    try:
        home = tmp_path / "home"
        plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"}], goal="g",
                          hooks={"on_done": [{"url": s.url, "retries": 1, "timeout": 5}]})
        run("run", plan, home=home)
        fails = [e for e in _events(home, "g") if e["type"] == "agent.hook.failed"]
        assert len(s.requests) == 2 and len(fails) == 1
        assert fails[0]["reason"] == f"HTTP 500 from {s.url} (after 2 attempts)"
    finally:
        s.close()


@pytest.mark.parametrize("hooks, msg", [
    ({"on_done": "notify"}, "hooks.on_done: expected an array of hooks"),
    ({"on_finish": []}, "unknown hook event \"on_finish\""),
    ({"on_done": [[]]}, "expected a non-empty array of non-empty strings"),
    ({"on_done": [{"url": "ftp://x"}]}, "expected an http:// or https:// URL"),
    ({"on_done": [{"url": "http://x", "headers_env": {"A": "not a var"}}]}, "environment variable names"),
    ({"on_done": [{"argv": ["x"], "timeout": 0}]}, "must be a number of seconds"),
])
def test_bad_hooks_are_plan_errors(tmp_path, hooks, msg):
    plan = write_plan(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}], hooks=hooks)
    p = run("validate", plan, check=2)
    assert msg in p.stderr and "Traceback" not in p.stderr


def test_engine_killed_while_a_hook_runs_reruns_it_after_restart(tmp_path):
    import signal

    from conftest import spawn, wait_for

    log = tmp_path / "slow.log"
    slow = tmp_path / "slow.py"
    slow.write_text("import sys, time\n"
                    f"open({str(log)!r}, 'a').write('start\\n')\n"
                    "time.sleep(1.5)\n"
                    f"open({str(log)!r}, 'a').write('end\\n')\n")
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"}], goal="g",
                      hooks={"on_done": [[sys.executable, str(slow)]]})
    eng = spawn("run", plan, home=home)
    wait_for(lambda: log.exists() and "start" in log.read_text(), what="the hook to start")
    os.kill(eng.pid, signal.SIGKILL)
    eng.wait()
    assert len(_due(home, "g")) == 1                   # the dead engine's record is still due
    run("run", "g", home=home)                         # replays it: the hook runs again
    wait_for(lambda: log.read_text().count("end") == 2, what="both runs of the hook to end")
    assert log.read_text().count("start") == 2 and _due(home, "g") == []
