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

from conftest import crash_step, events, run, write_plan

RECORDER = r'''
import json, os, sys
data = sys.stdin.read()
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"label": sys.argv[2], "stdin": json.loads(data),
                        "env": {k: v for k, v in os.environ.items() if k.startswith("DAGRUN_")}}) + "\n")
'''


class _Recorder:
    """A hook program (RECORDER) and the log it appends one line to per run."""

    def __init__(self, tmp: Path):
        self.script, self.path = tmp / "rec.py", tmp / "hooks.log"
        self.script.write_text(RECORDER)

    def hook(self, label: str) -> list[str]:
        """The argv of a hook that records its runs under `label`."""
        return [sys.executable, str(self.script), str(self.path), label]

    def runs(self, label: str | None = None) -> list[dict]:
        """{"label", "stdin", "env"} of every run so far (of `label`), in order."""
        if not self.path.exists():
            return []
        got = [json.loads(x) for x in self.path.read_text().splitlines()]
        return [x for x in got if label is None or x["label"] == label]

    def labels(self) -> list[str]:
        return [x["label"] for x in self.runs()]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def rec(tmp_path) -> _Recorder:
    return _Recorder(tmp_path)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def _due(home: Path, g: str) -> list[str]:
    d = home / "goals" / g / "hooks"
    return sorted(p.name for p in d.glob("due-*.json")) if d.exists() else []


def test_hook_order_and_stdin_per_transition(tmp_path, rec, home):
    hd = home / "hooks" / "on_goal_finished.d"
    hd.mkdir(parents=True)
    home_hook = hd / "10-notify"
    home_hook.write_text(f"#!{sys.executable}\n" + RECORDER.replace("sys.argv[1]", repr(str(rec.path)))
                         .replace("sys.argv[2]", "'home-fin'"))
    home_hook.chmod(0o755)
    (hd / "20-not-executable").write_text("#!/bin/sh\nexit 1\n")
    plan = write_plan(tmp_path / "p", [
        {"id": "a", "prompt": "x", "agent": "echo hi",
         "hooks": {"on_done": [rec.hook("task-done")]}},
        {"id": "b", "deps": ["a"], "prompt": "x", "agent": "exit 3"},
        {"id": "c", "deps": ["b"], "prompt": "x", "agent": "echo never"},
    ], goal="g", hooks={
        "on_done": [rec.hook("plan-done")],
        "on_failed": [rec.hook("plan-failed")],
        "on_blocked": [{"argv": rec.hook("plan-blocked"), "timeout": 10}],
        "on_goal_finished": [rec.hook("plan-fin")],
    })
    run("run", plan, home=home, check=1)
    got = rec.runs()
    assert [x["label"] for x in got] == ["plan-done", "task-done", "plan-failed", "plan-blocked", "plan-fin",
                                         "home-fin"]
    by = {x["label"]: x for x in got}
    # stdin is exactly the event line that was appended
    evs = events(home, "g")
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


def test_failing_hook_changes_nothing_and_shows_in_status(tmp_path, home):
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"}], goal="g",
                      hooks={"on_done": [["sh", "-c", "echo boom >&2; exit 7"], ["/nonexistent/hook"]]})
    p = run("run", plan, home=home)
    assert "hook on_done of g/a (sh -c echo boom >&2; exit 7) failed: exit code 7: boom" in p.stderr
    assert (home / "goals/g/tasks/a/done").exists()
    fails = [e for e in events(home, "g") if e["type"] == "agent.hook.failed"]
    assert [f["reason"] for f in fails] == ["exit code 7: boom", "cannot start /nonexistent/hook: No such file or directory"]
    st = json.loads(run("status", "g", "--json", home=home).stdout)
    assert st["state"] == "done"
    assert st["hook_failure"]["reason"].startswith("cannot start /nonexistent/hook")
    text = run("status", "g", home=home).stdout
    assert "hook" in text and "/nonexistent/hook" in text


def test_hanging_hook_is_killed_at_its_timeout_and_the_goal_ends(tmp_path, home):
    marker = f"dagrun-hang-{os.getpid()}-{time.time_ns()}"
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
    fails = [e for e in events(home, "g") if e["type"] == "agent.hook.failed"]
    assert len(fails) == 2 and all("timed out after 1s" in f["reason"] for f in fails)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == []


def _steps(trace: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in trace.read_text().splitlines():
        k, label, *rest = line.split(" ", 2)
        out.append((int(k), label, rest[0] if rest else ""))
    return out


def _crash_points(trace: Path, h0: Path, first: int, last: int) -> list[dict]:
    """Crash before each step first..last of the clean run traced in `trace` (home h0) and
    after the last -- each named by its label and rank among such steps (crash_step), so it is
    the same step in every run."""
    labels = [label + (" " + what if what else "") for _k, label, what in _steps(trace)]
    return [crash_step(labels, k, h0) for k in range(first, last + 1)] + [crash_step(labels, last, h0, after=True)]


def _crash_at_each_step(tmp_path: Path, plan: Path, points: list[dict], rec: _Recorder, label: str, check) -> None:
    """For every crash point (the environment of crash_step): a run of `plan` SIGKILLed there
    (before any hook ran), then a restart, after which `check(at, runs of label)` holds and no
    hooks record is left; a further run repeats none of those hooks. The restarts run with
    DAGRUN_CLAIM_GRACE=0, as the other crash walks do (tests/reliability/harness.py): one
    engine at a time, so a claim folder without owner.json -- the dead engine's, when it died
    between moving owner.json into the done marker and removing the folder -- is dead at once,
    not after the 10 s that a live creator gets (tests/test_stale_claims.py checks that)."""
    grace0 = {"DAGRUN_CLAIM_GRACE": "0"}
    for i, crash in enumerate(points):
        rec.clear()
        at = f"{crash['DAGRUN_CRASH_AT']} of {crash['DAGRUN_CRASH_ON']!r}"
        home = tmp_path / f"home-{i}"
        p = run("run", plan, home=home, check=False, env=crash)
        assert p.returncode == -9, (at, p.stderr)
        # the engine died before the hook -- of the event the crash precedes; an earlier event
        # whose line went out in an earlier turn may have had its hook run already (a hook runs
        # once its line is appended: an idle moment between two turns is enough)
        appended = events(home, "g")
        early = [x for x in rec.runs() if x["stdin"] not in appended]
        assert early == [], at
        run("run", "g", home=home, check=False, env=grace0)          # the restart
        got = rec.runs(label)
        check(at, got)
        assert _due(home, "g") == [], at
        run("run", "g", home=home, check=False, env=grace0)          # and never again
        assert len(rec.runs(label)) == len(got), at


@pytest.mark.parametrize("agent,event,status", [("echo ok", "on_done", "done"), ("false", "on_failed", "failed")])
def test_hook_due_at_a_crash_runs_after_restart(tmp_path, rec, agent, event, status):
    """SIGKILL before and after every file-system step from the agent's exit to the task's
    status event: after a restart the hook has run at least once (and no record is left)."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": agent, "retries": 0}], goal="g",
                      hooks={event: [rec.hook(status)]})
    trace = tmp_path / "trace"
    run("run", plan, home=tmp_path / "h0", check=False, env={"DAGRUN_STEP_TRACE": str(trace)})
    assert rec.labels() == [status]                              # a clean run: exactly once
    steps = _steps(trace)
    owner = next(k for k, label, what in steps if label == "publish" and what.endswith("/claim/owner.json"))
    first = owner + 1      # the agent runs (its `running` line may go out with the turn's others: events.hold)
    marker = next(k for k, label, what in steps if label == "rename" and what.endswith("/tasks/a/" + status))
    # the step of the task's status line: each line of a batched append is a step of its own
    appends = [k for k, label, what in steps if label == "append" and what.endswith("/g/events.jsonl")]
    lines = events(tmp_path / "h0", "g")
    lines = lines[len(lines) - len(appends):]        # the first ones came with the goal (by rename)
    last = appends[next(i for i, e in enumerate(lines) if e.get("task") == "a" and e.get("status") == status)]
    assert last > marker
    due = [k for k, label, what in steps if label == "publish" and "/hooks/due-" in what]
    assert due and due[0] < marker                # the record is durable before the commit point
    points = _crash_points(trace, tmp_path / "h0", first, last)
    assert len(points) >= 8

    def check(at, got):
        assert len(got) >= 1, at
        assert got[0]["stdin"]["status"] == status and got[0]["stdin"]["task"] == "a", at
    _crash_at_each_step(tmp_path, plan, points, rec, status, check)


def test_no_hook_no_hook_file(tmp_path, home):
    """The hot path: with no hook configured a run writes nothing under goals/<g>/hooks."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"},
                                       {"id": "b", "prompt": "x", "agent": "false", "retries": 1,
                                        "retry_backoff": 0}], goal="g")
    trace = tmp_path / "trace"
    run("run", plan, home=home, check=False, env={"DAGRUN_STEP_TRACE": str(trace)})
    assert [line for line in trace.read_text().splitlines() if "/hooks" in line] == []
    assert not (home / "goals/g/hooks").exists()


def test_pending_record_of_a_commit_that_never_happened_is_discarded(tmp_path, rec, home):
    """A crash after the pending record but before the marker: the restart reruns the task
    (its hook runs once, for the attempt that committed), the stale record is dropped."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"}], goal="g",
                      hooks={"on_done": [rec.hook("done")]})
    # right after the first hooks record is published, counted among such steps only
    # (DAGRUN_CRASH_ON): the n-th step of the whole run is a different one from run to run
    trace = tmp_path / "died"
    p = run("run", plan, home=home, check=False, env={"DAGRUN_CRASH_AT": "1:after", "DAGRUN_CRASH_TRACE": str(trace),
                                                      "DAGRUN_CRASH_ON": "publish */goals/g/hooks/due-*"})
    assert p.returncode == -9, p.stderr
    assert "/goals/g/hooks/due-" in trace.read_text()
    assert not (home / "goals/g/tasks/a/done").exists() and len(_due(home, "g")) == 1
    run("run", "g", home=home)
    got = rec.runs()
    assert [x["label"] for x in got] == ["done"] and got[0]["stdin"]["attempt"] == 2
    assert _due(home, "g") == []


def test_protocol_complete_runs_the_hooks_before_it_exits(tmp_path, rec, home):
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"}], goal="g",
                      hooks={"on_done": [rec.hook("done")], "on_goal_finished": [rec.hook("fin")]})
    run("submit", plan, home=home)
    sh = f"""set -e
t=$({run.__globals__['DAGRUN']} --home {home} claim g)
echo out | {run.__globals__['DAGRUN']} --home {home} complete g "$t" --output -
"""
    subprocess.run(["sh", "-c", sh], check=True, timeout=60)
    assert rec.labels() == ["done", "fin"]
    assert rec.runs()[0]["env"]["DAGRUN_TASK"] == "a"
    assert _due(home, "g") == []


def test_a_quiet_run_runs_the_goals_hooks_before_it_exits(tmp_path, rec, home):
    """`dagrun run -q` (the fast path, which ends with os._exit) waits for the hooks of the
    goal's end -- on_goal_finished runs on a hook thread after the last task -- before it
    exits: when it returns they have run and their records are gone."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"}], goal="g",
                      hooks={"on_done": [rec.hook("done")], "on_goal_finished": [rec.hook("fin")]})
    p = run("run", "-q", plan, home=home)
    assert p.stdout == "goal g done: 1 done\n"
    assert rec.labels() == ["done", "fin"]
    assert _due(home, "g") == []


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
    """server(fail): a _Server failing its first `fail` POSTs, closed after the test."""
    made = []

    def make(fail: int) -> _Server:
        made.append(_Server(fail))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_webhook_retries_with_backoff_and_secrets_stay_out_of_the_home(tmp_path, home, server):
    server = server(fail=2)
    token = "s3cr3t-token-" + os.urandom(8).hex()
    key = "hmac-key-" + os.urandom(8).hex()
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
    assert e["type"] == "agent.goal.finished" and e in events(home, "g")
    assert not any(x["type"] == "agent.hook.failed" for x in events(home, "g"))
    for root, _dirs, files in os.walk(home):
        for f in files:
            data = Path(root, f).read_bytes()
            assert token.encode() not in data and key.encode() not in data, f"secret written to {root}/{f}"


def test_webhook_that_keeps_failing_is_reported(tmp_path, home, server):
    s = server(fail=100)
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo ok"}], goal="g",
                      hooks={"on_done": [{"url": s.url, "retries": 1, "timeout": 5}]})
    run("run", plan, home=home)
    fails = [e for e in events(home, "g") if e["type"] == "agent.hook.failed"]
    assert len(s.requests) == 2 and len(fails) == 1
    assert fails[0]["reason"] == f"HTTP 500 from {s.url} (after 2 attempts)"


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


def test_engine_killed_while_a_hook_runs_reruns_it_after_restart(tmp_path, home):
    import signal

    from conftest import spawn, wait_for

    log = tmp_path / "slow.log"
    slow = tmp_path / "slow.py"
    slow.write_text("import sys, time\n"
                    f"open({str(log)!r}, 'a').write('start\\n')\n"
                    "time.sleep(1.5)\n"
                    f"open({str(log)!r}, 'a').write('end\\n')\n")
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


# The transitions a commit point causes (issue 19 follow-up): their hooks' records are published
# before that commit point too. (hook event, tasks, plan-level fields, the label's expected stdin)
_CAUSED = {
    "on_retrying": ([{"id": "a", "prompt": "x", "agent": "false", "retries": 1, "retry_backoff": 0}], {},
                    {"type": "agent.task.status.updated", "task": "a", "status": "retrying"}),
    "on_blocked": ([{"id": "a", "prompt": "x", "agent": "false", "retries": 0},
                    {"id": "b", "prompt": "x", "agent": "echo ok", "deps": ["a"]}], {},
                   {"type": "agent.task.blocked", "task": "b", "blocked_by": "a"}),
    "on_cancelled": ([{"id": "a", "prompt": "x", "agent": "false", "retries": 0, "priority": 1},
                      {"id": "c", "prompt": "x", "agent": "echo ok"}], {"on_failure": "stop", "max_parallel": 1},
                     {"type": "agent.task.status.updated", "task": "c", "status": "cancelled"}),
    "on_goal_finished": ([{"id": "a", "prompt": "x", "agent": "echo ok"}], {},
                         {"type": "agent.goal.finished", "outcome": "done"}),
    # b's `when` is false (its own skipped marker), c is skipped by its rule after it: the crash
    # points run from b's record (before b's marker) to c's event line
    "on_skipped": ([{"id": "a", "prompt": "x", "agent": "echo no"},
                    {"id": "b", "prompt": "x", "agent": "echo never", "deps": ["a"],
                     "when": {"output_of": "a", "contains": "yes"}},
                    {"id": "c", "prompt": "x", "agent": "echo never", "deps": ["b"]}], {},
                   {"type": "agent.task.status.updated", "task": "c", "status": "skipped", "skipped_by": "b"}),
    # skipped by its trigger rule when a is *done* (one_failed: none failed): the record comes
    # before a's done marker
    "on_skipped:by_done": ([{"id": "a", "prompt": "x", "agent": "echo ok"},
                            {"id": "d", "prompt": "x", "agent": "echo never", "deps": ["a"],
                             "trigger": "one_failed"}], {},
                           {"type": "agent.task.status.updated", "task": "d", "status": "skipped"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("event", sorted(_CAUSED))
def test_caused_hooks_due_at_a_crash_run_after_restart(tmp_path, rec, event):
    """on_retrying, on_blocked, on_cancelled, on_skipped (a task's own skip and one by a trigger
    rule), on_goal_finished: SIGKILL before and after every file-system step from the first
    hooks record to the event's line; after a restart the hook has run at least once, with the
    event on stdin, and never again after that."""
    tasks, top, want = _CAUSED[event]
    event = event.partition(":")[0]
    plan = write_plan(tmp_path / "p", tasks, goal="g", hooks={event: [rec.hook(event)]}, **top)
    trace = tmp_path / "trace"
    h0 = tmp_path / "h0"
    run("run", plan, home=h0, check=False, env={"DAGRUN_STEP_TRACE": str(trace)})

    def ran(entries) -> list[tuple]:
        return sorted((x["stdin"].get("task"), x["stdin"]["type"]) for x in entries if x["label"] == event)
    clean = ran(rec.runs())
    assert rec.labels() == [event] * len(clean)                         # a clean run: once per event
    assert len(set(clean)) == len(clean) >= 1, clean
    steps = _steps(trace)
    appends = [k for k, label, what in steps if label == "append" and what.endswith("/g/events.jsonl")]
    lines = events(h0, "g")
    lines = lines[len(lines) - len(appends):]        # the first ones came with the goal (by rename)
    assert lines[0]["status"] == "running"
    nth = next(i for i, e in enumerate(lines) if all(e.get(k) == v for k, v in want.items()))
    last = appends[nth]                                                  # the event's own line
    # from the first hooks record published after the last agent started (its owner.json: the
    # `running` line itself may go out later, with its turn's other lines) to the event's line
    dues = [k for k, label, what in steps if k < last and label == "publish" and "/hooks/due-" in what]
    started = max(k for k, label, what in steps if label == "publish" and what.endswith("/claim/owner.json")
                  and any(k < d for d in dues))
    first = min(d for d in dues if d > started)
    assert first < last
    points = _crash_points(trace, h0, first, last)

    def check(at, got):
        assert set(ran(got)) == set(clean), (at, ran(got))               # each at least once
        wanted = [x for x in got if all(x["stdin"].get(k) == v for k, v in want.items())]
        assert wanted, (at, [x["stdin"] for x in got])
        assert all(x["env"]["DAGRUN_HOOK_EVENT"] == event for x in got), at
    _crash_at_each_step(tmp_path, plan, points, rec, event, check)
