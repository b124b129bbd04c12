"""The state bus: every state change is one whole JSON line in events.jsonl, with the fields a
consumer needs; `dagrun events` prints, filters and follows it (one goal or the whole home)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from conftest import EXAMPLES, events, kill_group, run, spawn, task_dir, wait_for, write_plan

SIX = ["research-api", "research-auth", "design-schema", "implement", "test", "review"]
DEPS = {"research-api": [], "research-auth": [], "design-schema": ["research-api"],
        "implement": ["design-schema", "research-auth"], "test": ["implement"], "review": ["implement"]}


def _lines(home, goal) -> list[dict]:
    """Every line of the log parsed on its own: a torn or merged line fails here."""
    raw = (home / "goals" / goal / "events.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw[:-1].split(b"\n")]


def test_example_goal_event_stream_is_exactly_the_expected_sequence(home):
    run("run", EXAMPLES / "add-auth" / "dag.json", home=home, env={"FAKE_AGENT_SLEEP": "0.1"})
    evs = _lines(home, "add-auth")
    assert all({"ts", "type", "goal"} <= e.keys() and e["goal"] == "add-auth" for e in evs)
    assert [e["ts"] for e in evs] == sorted(e["ts"] for e in evs)
    assert evs[0]["type"] == "agent.plan.created" and evs[0]["tasks"] == 6
    assert evs[-1]["type"] == "agent.goal.finished"
    assert evs[-1]["outcome"] == "done" and evs[-1]["counts"] == {"done": 6} and evs[-1]["failed_roots"] == []
    assert len(evs) == 1 + 6 * 3 + 1          # plan.created, ready/running/done per task, goal.finished
    for t in SIX:
        mine = [e for e in evs if e.get("task") == t]
        assert [e["type"] for e in mine] == ["agent.task.status.updated"] * 3
        assert [e["status"] for e in mine] == ["ready", "running", "done"], t
        ready, running, done = mine
        assert ready["worker"] == ("submit" if not DEPS[t] else running["worker"])
        assert running["attempt"] == 1 and running["worker"]
        assert done["attempt"] == 1 and done["worker"] == running["worker"] and done["exit_code"] == 0
        assert 0.05 < done["duration"] < 30 and done["output_bytes"] > 0
        assert 0 < done["first_byte"] <= done["duration"] + 0.05
        # a task is announced ready only after all of its dependencies are done
        for d in DEPS[t]:
            assert evs.index(ready) > evs.index(next(e for e in evs if e.get("task") == d and e["status"] == "done"))


def test_failure_retry_stall_and_cancel_sequences(home, plans):
    p = write_plan(plans, [
        {"id": "a", "prompt": "p", "agent": "echo boom >&2; exit 3", "retries": 1, "retry_backoff": 0.05},
        {"id": "b", "prompt": "p", "deps": ["a"]},
        {"id": "c", "prompt": "p", "deps": ["b"]},
        {"id": "s", "prompt": "p", "agent": "sleep 30", "stall_timeout": 0.5},
        {"id": "x", "prompt": "p", "agent": "sleep 30"},
        {"id": "y", "prompt": "p", "deps": ["x"]},
    ], goal="seq", defaults={"agent": "true"})
    proc = spawn("run", p, "-j", "4", home=home)
    try:
        wait_for(lambda: any(e.get("task") == "x" and e.get("status") == "running" for e in events(home, "seq", polling=True)),
                 what="x to run")
        run("cancel", "seq", "x", home=home)
        assert proc.wait(timeout=60) == 1
    finally:
        kill_group(proc)
    evs = _lines(home, "seq")

    def seq(t):
        return [e.get("status") or e["type"].removeprefix("agent.") for e in evs if e.get("task") == t]
    assert seq("a") == ["ready", "running", "retrying", "ready", "running", "failed"]
    a = [e for e in evs if e.get("task") == "a"]
    assert a[2]["attempt"] == 1 and a[2]["exit_code"] == 3 and a[2]["outcome"] == "failed" and a[2]["retry_at"]
    assert a[3]["attempt"] == 2 and a[3]["reason"] == "retry backoff ended"
    assert a[5]["attempt"] == 2 and a[5]["exit_code"] == 3 and a[5]["duration"] >= 0 and a[5]["worker"]
    for t in ("b", "c"):
        assert seq(t) == ["task.blocked"]
        blk = next(e for e in evs if e.get("task") == t)
        assert blk["reason"] == "failed dependency" and blk["blocked_by"] == "a"
    assert seq("s") == ["ready", "running", "task.blocked", "failed"]
    stall = next(e for e in evs if e.get("task") == "s" and e["type"] == "agent.task.blocked")
    assert stall["reason"].startswith("stalled") and stall["attempt"] == 1
    s_failed = [e for e in evs if e.get("task") == "s"][-1]
    assert s_failed["outcome"] == "stalled" and s_failed["signal"] == signal.SIGTERM
    assert seq("x") == ["ready", "running", "cancelled"]
    assert seq("y") == ["task.blocked"]
    y = next(e for e in evs if e.get("task") == "y")
    assert y["reason"] == "cancelled dependency" and y["blocked_by"] == "x"
    fin = [e for e in evs if e["type"] == "agent.goal.finished"]
    assert len(fin) == 1 and fin[0]["outcome"] == "failed"
    assert sorted(fin[0]["failed_roots"]) == ["a", "s", "x"]


def _writer(home: str, k: int, n: int) -> None:
    from dagrun import events as ev
    from dagrun.store import Home
    h = Home(home)
    for i in range(n):
        # sizes from ~100 bytes to ~3.5 KB: many lines are larger than a small write buffer
        body = chr(ord("a") + k) * ((i * 37 + k * 101) % 3400)
        ev.emit(h, "bus", ev.TASK_STATUS, task=f"w{k}", status="running", attempt=i, worker=f"writer-{k}",
                detail=body, n=len(body))


def test_8_concurrent_writers_append_10k_whole_lines(home):
    goal_dir = home / "goals" / "bus"
    goal_dir.mkdir(parents=True)
    ctx = mp.get_context("fork")
    per = 1250
    procs = [ctx.Process(target=_writer, args=(str(home), k, per)) for k in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    evs = _lines(home, "bus")              # every line parses on its own
    assert len(evs) == 8 * per
    for k in range(8):
        mine = [e for e in evs if e["worker"] == f"writer-{k}"]
        assert [e["attempt"] for e in mine] == list(range(per))     # in order, none lost
        for e in mine:
            assert len(e["detail"]) == e["n"] and set(e["detail"]) <= {chr(ord("a") + k)}


def test_events_filters_and_errors(home, plans):
    run("run", EXAMPLES / "add-auth" / "dag.json", home=home, env={"FAKE_AGENT_SLEEP": "0.05"})
    p = write_plan(plans, [{"id": "z", "prompt": "p", "agent": "exit 1"}, {"id": "w", "prompt": "p", "deps": ["z"]}],
                   goal="other", defaults={"agent": "true"})
    run("run", p, home=home, check=1)
    out = run("events", "add-auth", home=home).stdout.splitlines()
    assert len(out) == 20 and all(json.loads(line)["goal"] == "add-auth" for line in out)
    only = [json.loads(x) for x in run("events", "other", "--type", "task.blocked", home=home).stdout.splitlines()]
    assert [(e["task"], e["blocked_by"]) for e in only] == [("w", "z")]
    fin = run("events", "add-auth", "--type", "goal.finished", "--type", "plan.created", home=home).stdout.splitlines()
    assert [json.loads(x)["type"] for x in fin] == ["agent.plan.created", "agent.goal.finished"]
    # --since: ISO time or an age
    evs = events(home, "add-auth")
    cut = evs[10]["ts"]
    later = run("events", "add-auth", "--since", cut, home=home).stdout.splitlines()
    assert [json.loads(x)["ts"] for x in later] == [e["ts"] for e in evs if e["ts"] >= cut]
    assert run("events", "add-auth", "--since", "1h", home=home).stdout.count("\n") == 20
    assert run("events", "add-auth", "--since", "2099-01-01", home=home).stdout == ""
    # --all: both goals, merged by time
    both = [json.loads(x) for x in run("events", "--all", home=home).stdout.splitlines()]
    assert {e["goal"] for e in both} == {"add-auth", "other"} and len(both) == 20 + len(events(home, "other"))
    assert [e["ts"] for e in both] == sorted(e["ts"] for e in both)
    for args, msg in ((["events"], "give a GOAL"), (["events", "add-auth", "--all"], "not both"),
                      (["events", "nope"], "no goal 'nope'"), (["events", "add-auth", "--since", "soon"], "--since")):
        r = run(*args, home=home, check=2)
        assert r.stderr.startswith("dagrun: ") and msg in r.stderr and len(r.stderr.splitlines()) == 1


def _cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])          # utime + stime


def _read_json_lines(proc, n: int, timeout: float = 20.0) -> list[dict]:
    out = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while len(out) < n and time.monotonic() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            out += [json.loads(x) for x in lines if x]
        else:
            time.sleep(0.02)
    return out


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_events_all_follow_sees_goals_submitted_later(home, plans, mode):
    env = {"DAGRUN_NO_INOTIFY": "1"} if mode == "polling" else None
    first = write_plan(plans, [{"id": "a", "prompt": "p"}], name="g1.json", goal="g1", defaults={"agent": "true"})
    run("submit", first, home=home)
    fol = spawn("events", "--all", "--follow", "--poll", "0.1", home=home, env=env) if mode == "polling" else \
        spawn("events", "--all", "-f", home=home, env=env)
    try:
        got = _read_json_lines(fol, 2)          # g1's history: plan.created, a ready
        assert [e["type"] for e in got] == ["agent.plan.created", "agent.task.status.updated"]
        later = write_plan(plans, [{"id": "b", "prompt": "p"}], name="g2.json", goal="g2", defaults={"agent": "true"})
        run("run", later, home=home)
        got = _read_json_lines(fol, 5)          # g2: created, b ready, running, done, finished
        assert [e["goal"] for e in got] == ["g2"] * 5
        assert [e.get("status") or e["type"] for e in got] == [
            "agent.plan.created", "ready", "running", "done", "agent.goal.finished"]
        run("run", "g1", home=home)             # the first goal keeps being followed too
        got = _read_json_lines(fol, 3)
        assert [(e["goal"], e.get("status") or e["type"]) for e in got] == [
            ("g1", "running"), ("g1", "done"), ("g1", "agent.goal.finished")]
    finally:
        kill_group(fol, signal.SIGTERM)
        fol.wait(10)


def test_events_follow_one_goal_ends_only_when_stopped(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]}], goal="fg",
                   defaults={"agent": "sleep 0.2"})
    run("submit", p, home=home)
    fol = spawn("events", "fg", "-f", "--type", "status.updated", home=home)
    try:
        assert [e["task"] for e in _read_json_lines(fol, 1)] == ["a"]
        run("run", "fg", home=home)
        got = _read_json_lines(fol, 5)
        assert [(e["task"], e["status"]) for e in got] == [
            ("a", "running"), ("a", "done"), ("b", "ready"), ("b", "running"), ("b", "done")]
        assert fol.poll() is None                # following goes on after the goal ends
        # and costs nothing while nothing is appended: it sleeps on inotify, not on a timer
        before = _cpu_ticks(fol.pid)
        time.sleep(2.0)
        assert _cpu_ticks(fol.pid) - before <= 2
    finally:
        kill_group(fol, signal.SIGINT)
        assert fol.wait(10) == 130
    assert not (task_dir(home, "fg", "a") / "claim").exists()


def test_events_follow_ends_on_sigint_even_when_started_with_sigint_ignored(home, plans):
    """`dagrun events -f ... &` from a script (or a test suite run with nohup/&) inherits
    SIGINT ignored; a SIGINT must still end it with 130 rather than leave it following."""
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="ig", defaults={"agent": "true"})
    run("submit", p, home=home)
    fol = spawn("events", "ig", "-f", home=home,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert _read_json_lines(fol, 1)            # following, asleep on inotify
        kill_group(fol, signal.SIGINT)
        assert fol.wait(10) == 130
    finally:
        kill_group(fol)
        fol.wait(10)


def test_reading_an_empty_home_creates_nothing(tmp_path):
    home = tmp_path / "nothing-here"
    assert run("events", "--all", home=home).stdout == ""
    assert run("watch", home=home).stdout == f"no goals under {home}\n"
    assert "dagrun_running_tasks 0" in run("metrics", home=home).stdout
    assert not home.exists()


def test_one_ready_line_after_a_backoff_however_many_workers(home, plans):
    flag = plans / "failed-once"
    p = write_plan(plans, [{"id": "f", "prompt": "p", "agent": f"test -e {flag} || {{ touch {flag}; exit 1; }}",
                            "retries": 1, "retry_backoff": 0.3}] +
                   [{"id": f"n{i}", "prompt": "p", "deps": ["f"]} for i in range(3)],
                   goal="two", defaults={"agent": "true"})
    run("submit", p, home=home)
    workers = [spawn("worker", "--until-idle", "--name", f"w{k}", home=home) for k in range(3)]
    for w in workers:
        assert w.wait(60) == 0
    f = [e for e in _lines(home, "two") if e.get("task") == "f"]
    assert [e["status"] for e in f] == ["ready", "running", "retrying", "ready", "running", "done"]
    assert f[3]["worker"] == f[2]["worker"] and f[3]["attempt"] == 2      # announced by who recorded the retry


def test_a_scripts_fail_without_backoff_announces_ready(home, plans):
    p = write_plan(plans, [{"id": "s", "prompt": "p", "retries": 2, "retry_backoff": 0},
                           {"id": "b", "prompt": "p", "retries": 1, "retry_backoff": 30}],
                   goal="sf", defaults={"agent": "true"})
    run("submit", p, home=home)
    for t in ("s", "b"):
        assert run("claim", "sf", "--worker", "bash1", home=home).stdout.strip() in ("s", "b")
    for t in ("s", "b"):
        run("fail", "sf", t, "--worker", "bash1", "--reason", "agent said no", home=home)
    s = [e for e in _lines(home, "sf") if e.get("task") == "s"]
    assert [e["status"] for e in s] == ["ready", "running", "retrying", "ready"]
    assert s[3]["attempt"] == 2 and s[3]["worker"] == "bash1" and "agent said no" in s[3]["reason"]
    b = [e for e in _lines(home, "sf") if e.get("task") == "b"]
    assert [e["status"] for e in b] == ["ready", "running", "retrying"]   # ready comes when the backoff ends
    assert run("claim", "sf", "--worker", "bash1", home=home).stdout.strip() == "s"


def test_a_scripts_retry_with_a_backoff_starts_at_its_retry_at_under_an_engine(home, plans):
    """A bash script's `fail` leaves a retry with a backoff; nobody announces its `ready`. An
    engine serving the goal must start it at retry_at: it waited FOREIGN_RETRY_GRACE (1 s)
    longer, the grace meant for an engine that would announce it (README.md #33: 1.01-1.04 s
    late in 4 of 4 runs before, 0.03-0.05 s after)."""
    from datetime import datetime
    p = write_plan(plans, [{"id": "t", "prompt": "p", "retries": 1, "retry_backoff": 0.6},
                           {"id": "w", "prompt": "p"}], goal="sb", defaults={"agent": "true"})
    run("submit", p, home=home)
    assert run("claim", "sb", "--worker", "bash1", home=home).stdout.strip() == "t"
    eng = spawn("run", "sb", "-q", home=home)
    try:
        wait_for(lambda: any(e.get("task") == "w" and e.get("status") == "done" for e in events(home, "sb", polling=True)),
                 what="the engine's own task")
        run("fail", "sb", "t", "--worker", "bash1", home=home)
        assert eng.wait(30) == 0
    finally:
        if eng.poll() is None:
            os.killpg(eng.pid, signal.SIGKILL)
    t = [e for e in _lines(home, "sb") if e.get("task") == "t"]
    assert [e["status"] for e in t] == ["ready", "running", "retrying", "running", "done"]
    assert t[2]["announced"] is False and t[3]["worker"] != "bash1"
    late = datetime.fromisoformat(t[3]["ts"].replace("Z", "+00:00")).timestamp() - t[2]["retry_at"]
    assert -0.05 < late < 0.7, f"the retry started {late:.2f}s after its retry_at"


def test_a_retry_whose_engine_stopped_during_the_backoff_starts_at_its_retry_at(home, plans):
    """`dagrun run` records a retry with a backoff and is stopped (Ctrl-C) before it ends; a
    worker that serves the goal must start the retry at retry_at: it waited a grace (1 s)
    more for the `ready` line of an engine that was gone (README.md #34: 1.01-1.02 s late in
    3 of 4 runs before, 0.02-0.04 s after)."""
    from datetime import datetime
    flag = plans / "failed-once"
    p = write_plan(plans, [{"id": "t", "prompt": "p", "agent": f"test -e {flag} || {{ touch {flag}; exit 3; }}",
                            "retries": 1, "retry_backoff": 4}], goal="gone", defaults={"agent": "true"})
    run("submit", p, home=home)
    first = spawn("run", "gone", "-q", home=home)
    other = None
    try:
        wait_for(lambda: any(e.get("status") == "retrying" for e in events(home, "gone", polling=True)), what="the retry")
        other = spawn("worker", "--name", "other", home=home)
        assert b"serving" in other.stderr.readline()          # it has read the goal's files
        first.send_signal(signal.SIGINT)
        assert first.wait(20) == 130
        stopped = time.time()
        wait_for(lambda: any(e.get("status") == "done" for e in events(home, "gone", polling=True)), what="the retry's end")
    finally:
        for pr in (first, other):
            if pr is not None and pr.poll() is None:
                os.killpg(pr.pid, signal.SIGKILL)
    t = [e for e in _lines(home, "gone") if e.get("task") == "t"]
    retry_at = next(e for e in t if e.get("status") == "retrying")["retry_at"]
    assert stopped < retry_at, "the run was stopped after the backoff: nothing to test"
    second = next(e for e in t if e.get("status") == "running" and e.get("attempt") == 2)
    assert second["worker"] == "other"
    late = datetime.fromisoformat(second["ts"].replace("Z", "+00:00")).timestamp() - retry_at
    assert -0.05 < late < 0.7, f"the retry started {late:.2f}s after its retry_at"


def test_a_holding_thread_writes_its_lines_at_flush_in_order_one_write_per_goal(tmp_path):
    """events.hold (the engine's loop, one turn): lines wait in memory and go out whole and in
    order at flush(), one write(2) per goal; a reader in the same thread flushes first; another
    thread's appends are not held."""
    import threading

    from dagrun import events as ev
    from dagrun import fsio
    from dagrun.store import Home

    h = Home(str(tmp_path / "home"))
    for g in ("a", "b"):
        os.makedirs(h.goal_dir(g))
    path_a = h.events_path("a")
    writes = []
    real = fsio.append_line
    try:
        fsio.append_line = lambda p, data, lines=1: (writes.append((p, lines)), real(p, data, lines=lines))[1]
        ev.hold()
        for i in range(3):
            ev.emit(h, "a", ev.TASK_STATUS, task=f"t{i}", status="ready")
        ev.emit(h, "b", ev.TASK_STATUS, task="x", status="ready")
        assert not os.path.exists(path_a)                 # held: nothing on disk yet
        other = threading.Thread(target=lambda: ev.emit(h, "b", ev.TASK_STATUS, task="y", status="done"))
        other.start()
        other.join()
        assert [json.loads(x)["task"] for x in open(h.events_path("b"), "rb")] == ["y"]   # not held
        got = ev.Reader(path_a).read()                    # the holder reads: its lines first
        assert [e["task"] for e in got] == ["t0", "t1", "t2"]
        assert writes[-2:] == [(path_a, 3), (h.events_path("b"), 1)]     # every goal's held lines
        ev.emit(h, "a", ev.TASK_STATUS, task="t3", status="ready")
        ev.release()                                      # flushes, then stops holding
        ev.emit(h, "a", ev.TASK_STATUS, task="t4", status="ready")
        assert writes[-2:] == [(path_a, 1), (path_a, 1)]
    finally:
        fsio.append_line = real
        ev.release()
    raw = open(path_a, "rb").read()
    assert [json.loads(x)["task"] for x in raw.splitlines()] == ["t0", "t1", "t2", "t3", "t4"]


def test_a_holding_threads_reader_takes_its_own_lines_from_memory_and_others_from_the_file(tmp_path, monkeypatch):
    """The engine reads its own lines back without opening events.jsonl (they start where its
    Reader stands); a line another process appended in between, before or after them, is
    read from the file, in file order, and nothing is seen twice or skipped."""
    import builtins

    from dagrun import events as ev
    from dagrun import fsio
    from dagrun.store import Home

    h = Home(str(tmp_path / "home"))
    os.makedirs(h.goal_dir("a"))
    path = h.events_path("a")
    opens = []
    real_open = builtins.open
    monkeypatch.setattr(ev, "open", lambda p, *a, **k: (opens.append(p), real_open(p, *a, **k))[1], raising=False)

    def foreign(task):            # another process's append: never held, never remembered
        fsio.append_line(path, ev.encode(ev.make(ev.TASK_STATUS, "a", task=task, status="done")))

    ev.hold()
    try:
        r = ev.Reader(path)
        ev.emit(h, "a", ev.TASK_STATUS, task="m1", status="ready")
        ev.emit(h, "a", ev.TASK_STATUS, task="m2", status="ready")
        assert [e["task"] for e in r.read()] == ["m1", "m2"]
        assert opens == []                                   # ours: from memory
        assert r.read() == [] and opens == []                # nothing new: a stat, no open
        foreign("f1")                                        # before our next lines
        ev.emit(h, "a", ev.TASK_STATUS, task="m3", status="ready")
        assert [e["task"] for e in r.read()] == ["f1", "m3"]
        assert opens == [path]                               # the gap: read from the file
        ev.emit(h, "a", ev.TASK_STATUS, task="m4", status="ready")
        ev.flush()
        foreign("f2")                                        # after ours
        # ours from memory and f2 from the file, in the same read: its inotify event may be
        # the one that woke this read, and nothing else would ring for it (the engine slept
        # until its rescan, 10 s, 1 run in 8 of a `dagrun run` beside a worker)
        assert [e["task"] for e in r.read()] == ["m4", "f2"]
        assert len(opens) == 2
        assert r.read() == [] and len(opens) == 2
        ev.emit(h, "a", ev.TASK_STATUS, task="m5", status="ready")
        assert [e["task"] for e in r.read()] == ["m5"] and len(opens) == 2
    finally:
        ev.release()
    raw = open(path, "rb").read()
    assert [json.loads(x)["task"] for x in raw.splitlines()] == ["m1", "m2", "f1", "m3", "m4", "f2", "m5"]
    assert r.offset == len(raw)


def test_a_held_flush_that_fails_raises_the_one_line_error_and_keeps_other_goals(tmp_path):
    from dagrun import events as ev
    from dagrun.errors import FsError
    from dagrun.store import Home

    h = Home(str(tmp_path / "home"))
    os.makedirs(h.goal_dir("b"))          # goal a has no folder: its append fails
    ev.hold()
    try:
        ev.emit(h, "a", ev.TASK_STATUS, task="t", status="ready")
        ev.emit(h, "b", ev.TASK_STATUS, task="u", status="ready")
        with pytest.raises(FsError, match="append to .*events.jsonl"):
            ev.flush()
        assert [json.loads(x)["task"] for x in open(h.events_path("b"), "rb")] == ["u"]
        ev.flush()                        # the failed lines are not retried forever
    finally:
        ev.release()
