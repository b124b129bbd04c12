"""The claim / lifecycle / transitions behaviours, driven in-process (issue 21, mutation testing).

Most tests of these modules run the installed `dagrun` binary, which mutmut's in-process
mutants never reach (its first run over claim.py, lifecycle.py and transitions.py found 2127
of 2895 mutants with no test at all). These tests call the same library functions the
protocol commands call -- commands.claim_external / complete / fail, control.cancel, the claim
primitives -- on a real home under tmp_path, with real processes for the holders, and check
the files and events a user sees: markers, attempt records, claims, prompts, summary.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dagrun import claim as claims
from dagrun import commands, control
from dagrun import transitions as tr
from dagrun.errors import ExitCode, Refused
from dagrun.lifecycle import build_scheduler, marker_of
from dagrun.store import Home

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import break_lock_held, dead_pid, goal_events, read_json, submit_home  # noqa: E402


def _status(home: Home, t: str) -> list[str]:
    return [e["status"] for e in goal_events(home, "agent.task.status.updated") if e.get("task") == t]


def _claim(home: Home, worker: str = "w1", pid: int | None = None) -> dict:
    code, info = commands.claim_external(home, "g", worker=worker, pid=pid)
    assert code == ExitCode.OK, code
    return info


def _complete(home: Home, t: str, out: bytes, tmp_path: Path, worker: str = "w1") -> dict:
    f = tmp_path / f"out-{t}"
    f.write_bytes(out)
    return commands.complete(home, "g", t, output=str(f), worker=worker, pid=None, force=False)


def test_claim_complete_unlocks_the_dependent_and_ends_the_goal(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "first", "agent": "true"},
                                  {"id": "b", "prompt": "second", "agent": "true", "deps": ["a"]}])
    a = _claim(home)
    assert (a["task"], a["attempt"], a["worker"]) == ("a", 1, "w1")
    assert os.path.isdir(home.claim_dir("g", "a"))
    owner = read_json(os.path.join(home.claim_dir("g", "a"), "owner.json"))
    assert owner["worker"] == "w1" and owner["attempt"] == 1 and owner["kind"] == "external"
    assert Path(home.prompt_path("g", "a")).read_text().startswith("first")
    assert commands.claim_external(home, "g", worker="w2")[0] == ExitCode.NOTHING_READY   # b waits for a
    body = _complete(home, "a", b"A-OUTPUT\n", tmp_path)
    assert body["attempt"] == 1 and body["output_bytes"] == 9 and body["exit_code"] == 0
    assert not os.path.exists(home.claim_dir("g", "a"))
    assert Path(home.output_path("g", "a")).read_bytes() == b"A-OUTPUT\n"
    done = read_json(home.marker_path("g", "a", "done"))
    assert done["attempt"] == 1 and done["worker"] == "w1"
    assert _status(home, "a") == ["ready", "running", "done"]
    assert _status(home, "b") == ["ready"]                   # announced once a is done
    assert not os.path.exists(home.summary_path("g"))
    b = _claim(home, "w2")
    assert b["task"] == "b" and "A-OUTPUT" in Path(home.prompt_path("g", "b")).read_text()
    _complete(home, "b", b"B\n", tmp_path, worker="w2")
    s = read_json(home.summary_path("g"))
    assert s["outcome"] == "done" and s["counts"] == {"done": 2}
    fin = goal_events(home, "agent.goal.finished")
    assert len(fin) == 1 and fin[0]["outcome"] == "done" and fin[0]["finish_id"] == s["finisher"]["nonce"]
    assert commands.claim_external(home, "g", worker="w3")[0] == ExitCode.GOAL_FAILED       # the goal ended
    assert len(goal_events(home, "agent.goal.finished")) == 1


def test_a_failure_is_retried_then_final_and_blocks_the_dependents(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 1, "retry_backoff": 0},
                                  {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]},
                                  {"id": "c", "prompt": "x", "agent": "true", "deps": ["b"]},
                                  {"id": "d", "prompt": "x", "agent": "true"}])
    assert _claim(home)["task"] == "a"
    rec = commands.fail(home, "g", "a", reason="boom", worker="w1", pid=None, force=False, exit_code=3)
    assert rec["final"] is False and rec["counted"] and rec["attempt"] == 1 and rec["exit_code"] == 3
    assert rec["reason"] == "boom" and rec["failures"] == 1
    assert marker_of(home, "g", "a") is None and not os.path.exists(home.claim_dir("g", "a"))
    assert read_json(home.attempt_path("g", "a", 1, "json"))["final"] is False
    assert _status(home, "a")[-2:] == ["retrying", "ready"]       # no backoff: ready at once
    again = _claim(home)
    assert (again["task"], again["attempt"]) == ("a", 2)
    rec = commands.fail(home, "g", "a", reason="boom again", worker="w1", pid=None, force=False)
    assert rec["final"] is True and rec["failures"] == 2 and rec["attempt"] == 2
    failed = read_json(home.marker_path("g", "a", "failed"))
    assert failed["attempt"] == 2 and failed["reason"] == "boom again"
    blocked = goal_events(home, "agent.task.blocked")
    assert sorted((e["task"], e["blocked_by"], e["reason"]) for e in blocked) == [
        ("b", "a", "failed dependency"), ("c", "a", "failed dependency")]
    assert not os.path.exists(home.summary_path("g"))          # d can still run
    assert _claim(home)["task"] == "d"
    _complete(home, "d", b"d\n", tmp_path)
    s = read_json(home.summary_path("g"))
    assert s["outcome"] == "failed" and s["failed_roots"] == ["a"]
    assert s["counts"] == {"done": 1, "failed": 1, "blocked": 2}


def test_only_the_holder_completes_and_force_records_who(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    _claim(home, "w1")
    with pytest.raises(Refused):
        commands.complete(home, "g", "a", output=None, worker="intruder", pid=os.getpid(), force=False)
    assert marker_of(home, "g", "a") is None and os.path.isdir(home.claim_dir("g", "a"))
    f = tmp_path / "o"
    f.write_bytes(b"forced\n")
    body = commands.complete(home, "g", "a", output=str(f), worker="admin", pid=os.getpid(), force=True)
    assert body["forced_by"] == "admin" and body["held_by"].startswith("w1 (pid ")
    assert goal_events(home, "agent.task.status.updated")[-1]["forced_by"] == "admin"


def test_a_dead_holders_claim_is_broken_and_its_attempt_recorded_lost(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0}])
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = _claim(home, "w1", pid=holder.pid)        # a script's claim names its shell's pid
    finally:
        holder.kill()
        holder.wait()
    assert first["attempt"] == 1 and read_json(os.path.join(home.claim_dir("g", "a"), "owner.json"))["pid"] == holder.pid
    second = _claim(home, "w2")                 # breaks the dead holder's claim, takes the task again
    assert (second["task"], second["attempt"]) == ("a", 2)
    lost = read_json(home.attempt_path("g", "a", 1, "json"))
    assert lost["outcome"] == "lost" and not lost.get("counted") and "is gone" in lost["reason"]
    assert read_json(os.path.join(home.claim_dir("g", "a"), "owner.json"))["worker"] == "w2"
    ready = [e for e in goal_events(home, "agent.task.status.updated") if e["status"] == "ready" and e.get("attempt") == 2]
    assert len(ready) == 1 and ready[0]["reason"].startswith("claim broken")
    _complete(home, "a", b"ok\n", tmp_path, worker="w2")          # retries: 0 -- a lost attempt is not counted
    assert read_json(home.marker_path("g", "a", "done"))["attempt"] == 2


def test_a_live_holders_claim_is_not_broken(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    _claim(home, "w1", pid=os.getpid())
    plan = home.load_plan("g")
    assert tr.break_stale(home, plan, "a", worker="w2") is None
    assert os.path.isdir(home.claim_dir("g", "a")) and not os.path.exists(home.attempt_path("g", "a", 1, "json"))
    assert commands.claim_external(home, "g", worker="w2")[0] == ExitCode.NOTHING_READY


def test_cancel_marks_blocks_and_a_second_cancel_changes_nothing(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]},
                                  {"id": "c", "prompt": "x", "agent": "true"}])
    control.cancel(home, "g", "a", by="me", reason="not needed", wait=0)
    m = read_json(home.marker_path("g", "a", "cancelled"))
    assert m["by"] == "me" and m["reason"] == "not needed"
    assert [(e["task"], e["blocked_by"], e["reason"]) for e in goal_events(home, "agent.task.blocked")] == [
        ("b", "a", "cancelled dependency")]
    n = len(goal_events(home))
    with pytest.raises(Refused, match="already cancelled"):
        control.cancel(home, "g", "a", by="me", reason="again", wait=0)
    assert read_json(home.marker_path("g", "a", "cancelled"))["reason"] == "not needed"
    assert len(goal_events(home)) == n
    assert _claim(home)["task"] == "c"
    _complete(home, "c", b"c\n", tmp_path)
    s = read_json(home.summary_path("g"))
    assert s["outcome"] != "done" and s["counts"] == {"done": 1, "cancelled": 1, "blocked": 1}


def test_on_failure_stop_cancels_what_has_not_started(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0, "priority": 1},
                                  {"id": "b", "prompt": "x", "agent": "true"},
                                  {"id": "c", "prompt": "x", "agent": "true"}], on_failure="stop")
    assert _claim(home)["task"] == "a"
    commands.fail(home, "g", "a", reason="x", worker="w1", pid=None, force=False)
    for t in ("b", "c"):
        assert marker_of(home, "g", t) == "cancelled"
        assert "a failed (on_failure=stop)" in read_json(home.marker_path("g", t, "cancelled"))["reason"]
    assert read_json(home.summary_path("g"))["counts"] == {"failed": 1, "cancelled": 2}
    assert commands.claim_external(home, "g", worker="w1")[0] == ExitCode.GOAL_FAILED


def _ended_without_its_event(tmp_path: Path) -> Home:
    """Goal g (one task) run to its end, then its agent.goal.finished line cut off the log:
    summary.json is written, the event is not (yet)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    _claim(home)
    _complete(home, "a", b"x\n", tmp_path)
    path = home.events_path("g")
    lines = Path(path).read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "agent.goal.finished"
    Path(path).write_bytes(b"".join(lines[:-1]))
    return home


def test_the_goal_end_lost_by_a_dead_finisher_is_announced_once(tmp_path):
    home = _ended_without_its_event(tmp_path)              # its finisher died before the event line ...
    s = read_json(home.summary_path("g"))
    s["finisher"]["pid"] = dead_pid()                       # ... and is gone
    Path(home.summary_path("g")).write_text(json.dumps(s))
    assert tr.announce_if_lost(home, "g", "w9") is True
    fin = goal_events(home, "agent.goal.finished")
    assert len(fin) == 1 and fin[0]["recovered"] is True and fin[0]["finish_id"] == s["finisher"]["nonce"]
    assert fin[0]["outcome"] == "done" and fin[0]["worker"] == "w9"
    assert tr.announce_if_lost(home, "g", "w9") is False
    plan = home.load_plan("g")
    sched, _ = build_scheduler(home, plan)
    assert tr.end_goal_if_finished(home, plan, sched, "w9") is None          # written already
    assert len(goal_events(home, "agent.goal.finished")) == 1


def test_a_live_finisher_is_left_to_announce_it_itself(tmp_path):
    home = _ended_without_its_event(tmp_path)        # between summary.json and its event; the finisher (us) lives
    assert tr.announce_if_lost(home, "g", "w9") is False
    assert goal_events(home, "agent.goal.finished") == []


# ------------------------------------------------------------------------- the claim primitives
def test_acquire_is_exclusive_until_release(tmp_path):
    home = Home(str(tmp_path / "home"))
    assert claims.acquire(home, "g", "t") is True
    assert claims.acquire(home, "g", "t") is False
    o = claims.new_owner("w", 3, kind="engine")
    assert (o["worker"], o["attempt"], o["kind"], o["pid"]) == ("w", 3, "engine", os.getpid())
    assert o["pid_start"] and len(o["nonce"]) == 12
    claims.update_owner(home, "g", "t", o)
    assert claims.read_owner(home, "g", "t") == o
    assert claims.holds(home, "g", "t", o["nonce"]) and not claims.holds(home, "g", "t", "other")
    claims.release(home, "g", "t")
    assert not os.path.exists(home.claim_dir("g", "t")) and not claims.holds(home, "g", "t", o["nonce"])
    assert claims.acquire(home, "g", "t") is True


def test_judge_and_break_a_dead_holders_claim(tmp_path):
    home = Home(str(tmp_path / "home"))
    assert claims.acquire(home, "g", "t")
    live = claims.new_owner("w", 1, kind="engine")
    claims.update_owner(home, "g", "t", live)
    assert claims.judge(home, "g", "t", live, lease=60) is None                # we are alive
    assert claims.break_claim(home, "g", "t", live["nonce"], lease=60, grace=0.0) is None
    dead = {**live, "pid": dead_pid(), "nonce": "deadbeef0000"}
    claims.update_owner(home, "g", "t", dead)
    assert claims.judge(home, "g", "t", dead, lease=60) is not None
    assert claims.break_claim(home, "g", "t", "somebody-else", lease=60, grace=0.0) is None   # re-taken: kept
    assert os.path.isdir(home.claim_dir("g", "t"))
    res = claims.break_claim(home, "g", "t", "deadbeef0000", lease=60, grace=0.0)
    assert res is not None and not os.path.exists(home.claim_dir("g", "t"))
    assert claims.acquire(home, "g", "t")


def test_a_claim_being_born_gets_its_grace(tmp_path):
    home = Home(str(tmp_path / "home"))
    assert claims.acquire(home, "g", "t")                    # no owner.json yet
    assert claims.break_claim(home, "g", "t", None, lease=60, grace=30.0) is None
    assert os.path.isdir(home.claim_dir("g", "t"))
    time.sleep(0.05)                                         # (its age is the folder's ctime)
    assert claims.break_claim(home, "g", "t", None, lease=60, grace=0.01) is not None
    assert not os.path.exists(home.claim_dir("g", "t"))


def test_another_hosts_claim_lives_by_its_heartbeat(tmp_path):
    home = Home(str(tmp_path / "home"))
    assert claims.acquire(home, "g", "t")
    far = {**claims.new_owner("w", 1, kind="engine"), "host": "elsewhere", "boot_id": "other-boot", "pid": 1}
    claims.update_owner(home, "g", "t", far)
    assert claims.judge(home, "g", "t", far, lease=60) is None                 # fresh
    assert claims.heartbeat_age(home, "g", "t") < 5
    old = time.time() - 120
    os.utime(os.path.join(home.claim_dir("g", "t"), "owner.json"), (old, old))
    assert claims.heartbeat_age(home, "g", "t") > 100
    assert claims.judge(home, "g", "t", far, lease=60) is not None             # past the lease
    assert claims.judge(home, "g", "t", far, lease=600) is None


def test_complete_takes_the_scripts_captures_and_keeps_every_attempt(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 1, "retry_backoff": 0}])
    first = _claim(home)
    Path(first["stdout_file"]).write_bytes(b"partial\n")
    Path(first["stderr_file"]).write_bytes(b"err of attempt 1\n")
    commands.fail(home, "g", "a", reason="bad", worker="w1", pid=None, force=False, exit_code=2)
    assert Path(home.attempt_path("g", "a", 1, "err")).read_bytes() == b"err of attempt 1\n"
    assert Path(home.attempt_path("g", "a", 1, "out")).read_bytes() == b"partial\n"
    assert not os.path.exists(home.output_path("g", "a"))
    second = _claim(home)
    assert second["attempt"] == 2
    Path(second["stdout_file"]).write_bytes(b"OUT2")          # and no stderr this time
    t0 = time.time()
    body = commands.complete(home, "g", "a", output=None, worker="w1", pid=None, force=False)
    assert Path(home.output_path("g", "a")).read_bytes() == b"OUT2" and body["output_bytes"] == 4
    assert body["exit_code"] == 0 and 0 <= body["duration"] < time.time() - t0 + 60
    assert body["definition"] == home.load_plan("g").task("a").definition_digest()
    assert not os.path.exists(home.stderr_path("g", "a"))    # attempt 1's stderr is not shown as the result's
    out2 = home.attempt_path("g", "a", 2, "out")
    assert os.stat(out2).st_ino == os.stat(home.output_path("g", "a")).st_ino      # a link, not a copy
    assert os.path.exists(home.attempt_path("g", "a", 2, "prompt.md"))
    rec = read_json(home.attempt_path("g", "a", 2, "json"))
    assert (rec["outcome"], rec["failures"], rec["counted"], rec["final"], rec["exit_code"]) == ("done", 1, False,
                                                                                               True, 0)
    assert read_json(home.attempt_path("g", "a", 1, "json"))["outcome"] == "failed"


def test_a_done_task_has_no_attempts_folder(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    info = _claim(home)
    Path(info["stderr_file"]).write_bytes(b"warn\n")
    commands.complete(home, "g", "a", output="-", worker="w1", pid=None, force=False, stdin=_Bytes(b"via stdin"))
    assert Path(home.output_path("g", "a")).read_bytes() == b"via stdin"
    assert Path(home.stderr_path("g", "a")).read_bytes() == b"warn\n"
    assert not os.path.exists(home.attempts_dir("g", "a"))


class _Bytes:
    def __init__(self, data: bytes):
        self.data = data

    def read(self) -> bytes:
        return self.data


def _dead_claim(home: Home, g: str = "g", t: str = "t", **over) -> dict:
    assert claims.acquire(home, g, t)
    owner = {**claims.new_owner("w", 1, kind="engine"), "pid": dead_pid(), **over}
    claims.update_owner(home, g, t, owner)
    return owner


def test_break_claim_moves_the_claim_aside_into_tasks_and_settles_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = Home(str(tmp_path / "home"))
    owner = _dead_claim(home)
    seen = []

    def settle(o, reason):
        seen.append((o, reason, os.path.isdir(home.claim_dir("g", "t"))))

    o, reason, folder = claims.break_claim(home, "g", "t", owner["nonce"], lease=60, grace=0.0, settle=settle)
    assert o == owner and "is gone" in reason
    assert seen == [(owner, reason, True)]                  # settled while the claim still stood
    # aside into tasks/, where every rescan and the goal's end sweep it (claim.aside)
    assert os.path.dirname(folder) == home.tasks_dir("g") and os.path.basename(folder).startswith(".claim.t.broken.")
    assert read_json(os.path.join(folder, "owner.json")) == owner
    assert os.path.exists(os.path.join(home.goal_dir("g"), ".break.lock"))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())       # nothing in the cwd


def test_break_claim_waits_for_another_breaker(tmp_path):
    """Breakers exclude each other with goals/<g>/.break.lock (another process holding it)."""
    home = Home(str(tmp_path / "home"))
    owner = _dead_claim(home)
    with break_lock_held(home, 1.5):
        t0 = time.monotonic()
        assert claims.break_claim(home, "g", "t", owner["nonce"], lease=60, grace=0.0) is not None
        assert time.monotonic() - t0 > 0.5


def test_break_claim_of_another_host_uses_the_lease(tmp_path):
    home = Home(str(tmp_path / "home"))
    owner = _dead_claim(home, host="elsewhere", boot_id="b", pid=1)
    old = time.time() - 120
    os.utime(home.owner_path("g", "t"), (old, old))
    assert claims.break_claim(home, "g", "t", owner["nonce"], lease=600, grace=0.0) is None
    res = claims.break_claim(home, "g", "t", owner["nonce"], lease=60, grace=0.0)
    assert res is not None and "no heartbeat from w on elsewhere" in res[1] and "lease 60s" in res[1]


def test_a_commit_that_cannot_publish_says_so_in_one_line_and_keeps_the_claim(tmp_path):
    from dagrun.errors import FsError

    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    info = _claim(home)
    Path(info["stdout_file"]).write_bytes(b"result")
    os.mkdir(home.output_path("g", "a"))            # `output` cannot be replaced: the commit fails
    os.mkdir(os.path.join(home.output_path("g", "a"), "x"))
    with pytest.raises(FsError) as e:
        commands.complete(home, "g", "a", output=None, worker="w1", pid=None, force=False)
    msg = str(e.value)
    assert msg.startswith(f"cannot commit {home.task_dir('g', 'a')}: ") and "\n" not in msg
    assert marker_of(home, "g", "a") is None                     # nothing committed
    assert os.path.exists(os.path.join(home.claim_dir("g", "a"), "owner.json"))
    assert Path(info["stdout_file"]).read_bytes() == b"result"


def test_judge_names_why_a_holder_is_dead(tmp_path):
    """The reason of a broken claim says which holder and why: gone, a reused pid, a reboot."""
    home = Home(str(tmp_path / "home"))
    assert claims.acquire(home, "g", "t")
    me = claims.new_owner("w7", 1, kind="engine")
    assert claims.judge(home, "g", "t", me, lease=60) is None
    gone = {**me, "pid": dead_pid()}
    assert claims.judge(home, "g", "t", gone, lease=60) == f"holder w7 (pid {gone['pid']}) is gone"
    reused = {**me, "pid_start": "1"}                       # our pid, another process's start time
    assert claims.judge(home, "g", "t", reused, lease=60) == f"pid {os.getpid()} of holder w7 now belongs to another process"
    rebooted = {**me, "boot_id": "an-earlier-boot"}
    assert claims.judge(home, "g", "t", rebooted, lease=60) == "holder w7 ran before a reboot"
    far = {**me, "host": "far", "boot_id": "x"}
    old = time.time() - 100
    claims.update_owner(home, "g", "t", far)
    os.utime(home.owner_path("g", "t"), (old, old))
    assert claims.judge(home, "g", "t", far, lease=60) == "no heartbeat from w7 on far for 100s (lease 60s)"
    assert claims.judge(home, "g", "t", far, lease=60, now=old + 60) is None             # exactly the lease: live
    assert claims.judge(home, "g", "t", far, lease=60, now=old + 61) is not None
