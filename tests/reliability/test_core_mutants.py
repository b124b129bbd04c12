"""The claim / commit / transition code's records, pinned field by field (issue 21, mutation
testing of claim.py, lifecycle.py, transitions.py; README.md "Mutation testing").

Each test drives the public functions of lifecycle / transitions / claim on a real home
under tmp_path (real files, real processes for holders) and checks what a user or another
process reads: the markers, attempts/<n>.json, the captures, events.jsonl. mutmut swaps
functions inside the test process, so these are the tests that see its mutants; the
survivors they kill are named in tests/reliability/mutants.md.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dagrun import claim as claims
from dagrun import events as ev
from dagrun import fanout
from dagrun import lifecycle as lc
from dagrun import transitions as tr
from dagrun.errors import FsError, Refused
from dagrun.proc import BOOT_ID, HOST, proc_start, self_start
from dagrun.scheduler import FairShare, Scheduler
from dagrun.store import Home, now_iso, parse_ts
from dagrun.usage import RAW_FILE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import break_lock_held, dead_pid, goal_events, read_json, submit_home  # noqa: E402


def _claim(home: Home, t: str, worker: str = "w1") -> lc.Claim:
    c = lc.claim_task(home, home.load_plan("g"), t, worker=worker, kind="external")
    assert c is not None and c.attempt >= 1
    return c


# ------------------------------------------------------------------ commit_done: the done marker
def test_the_done_marker_records_exactly_the_attempt(tmp_path):
    """Every field of `done`, from a claim that started at a known time: the captures of the
    claim (stdout, stderr, a preset's raw output) move into the task folder."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    c.started = 1_700_000_000.25
    cdir = home.claim_dir("g", "a")
    Path(cdir, "stdout").write_bytes(b"OUT\n")
    Path(cdir, "stderr").write_bytes(b"ERR\n")
    Path(cdir, RAW_FILE).write_bytes(b"RAW")
    body = lc.commit_done(home, plan, c, ended=1_700_000_012.3456789, exit_code=0)
    done = read_json(home.marker_path("g", "a", "done"))
    assert done == body
    assert done == {"attempt": 1, "worker": "w1", "started": now_iso(1_700_000_000.25),
                    "ended": now_iso(1_700_000_012.3456789), "duration": 12.096, "exit_code": 0,
                    "definition": plan.task("a").definition_digest(), "output_bytes": 4}
    assert done["started"] == "2023-11-14T22:13:20.250000Z"
    tdir = Path(home.task_dir("g", "a"))
    assert (tdir / "output").read_bytes() == b"OUT\n"
    assert (tdir / "stderr.log").read_bytes() == b"ERR\n"
    assert (tdir / RAW_FILE).read_bytes() == b"RAW"
    assert not os.path.exists(cdir) and not (tdir / "attempts").exists()


# ------------------------------------------------------------------ scheduler: the capacity rules


class _T:
    def __init__(self, id, deps=(), priority=0, soft=()):
        self.id, self.deps, self.soft_deps, self.priority = id, tuple(deps), tuple(soft), priority


def test_a_serial_group_starts_its_tasks_one_at_a_time_in_plan_order():
    s = Scheduler([_T("a"), _T("b"), _T("c"), _T("d")], serial={"a": "grp", "b": "grp", "d": "grp"})
    assert s.ready_ids() == ["a", "b", "c", "d"]
    assert (s.serial_wait("a"), s.serial_wait("b"), s.serial_wait("c"), s.serial_wait("d")) == (None, "a", None, "a")
    assert s.may_start() and s.take() == "a"
    assert s.take() == "c"                      # b and d wait for a; c is in no group
    assert s.take() is None and not s.may_start()
    assert s.serial_wait("b") == "a" and s.ready_ids() == ["b", "d"]
    s.finish("a", "failed")                     # ended, whatever the outcome
    assert (s.serial_wait("b"), s.serial_wait("d")) == (None, "b")
    assert s.may_start() and s.take() == "b" and s.take() is None
    s.finish("b", "done")
    assert s.take() == "d"
    assert Scheduler([_T("a")]).serial_wait("a") is None           # no groups: the rule is off


def test_resources_hold_a_task_until_its_units_are_free_and_give_them_back():
    s = Scheduler([_T("a", priority=2), _T("b", priority=1), _T("c")])
    s.set_resources({"a": {"gpu": 2}, "b": {"gpu": 1}, "c": {}}, {"gpu": 1})
    # a lacks a unit; b would fit but a (ranked above it) waits for the same pool: b does not jump it
    assert s.resource_held() == {"a": ["gpu"], "b": ["gpu"]}
    assert s.may_start() and s.take() == "c"
    assert s.take() is None and not s.may_start()
    s.set_resources(None, {"gpu": 2})           # None: the needs stay, the free units are re-read
    assert s.resource_held() == {}              # both units free: a fits, and so would b
    assert s.take() == "a"
    assert s.resource_held() == {"b": ["gpu"]} and s.take() is None   # a holds both units now
    s.retrying("a")                             # the attempt ended: its units come back
    assert s.resource_held() == {} and s.take() == "b"
    assert s.resource_held() == {} and s.take() is None
    s.requeue("a")
    assert s.resource_held() == {"a": ["gpu"]}  # b holds one of the two
    s.finish("b", "done")
    assert s.take() == "a"
    s.finish("a", "done")
    s.finish("c", "done")
    assert s.resource_held() == {} and s.is_finished()


def test_resources_of_several_pools_and_no_needs_at_all():
    s = Scheduler([_T("a", priority=1), _T("b")])
    s.set_resources({"a": {"gpu": 1, "disk": 1}, "b": {"disk": 1}}, {"gpu": 0, "disk": 1})
    assert s.resource_held() == {"a": ["gpu"], "b": ["disk"]}   # b waits for a's pool, not for gpu
    assert not s.may_start() and s.take() is None
    off = Scheduler([_T("a")])
    off.set_resources({"a": {}}, {"gpu": 3})                    # nobody needs any: the rule is off
    assert off.resource_held() == {} and off.take() == "a"


def test_budget_holds_what_does_not_fit_and_a_raise_lets_it_go():
    s = Scheduler([_T("a", priority=1), _T("b")], budget={"usd": 1.0}, estimates={"a": 2.0})
    assert s.budget_held() == ["a"] and not s.fits_budget("a") and s.fits_budget("b")
    assert not s.may_start() and s.take() is None               # b does not jump the held a
    s.set_budget({"usd": 5.0}, {"usd": 3.5})
    assert s.budget_held() == ["a"]                             # 3.5 + 2.0 > 5
    s.set_budget({"usd": 5.0}, {"usd": 3.0})
    assert s.budget_held() == [] and s.may_start() and s.take() == "a"
    s.set_budget({"usd": 5.0}, {"usd": 5.0})
    assert s.budget_held() == ["b"]                             # spent it all: even a free task waits
    s.set_budget({"tokens": 10}, {"tokens": 9})
    assert s.budget_held() == [] and s.fits_budget("b")
    s.set_budget({"tokens": 10}, {"tokens": 10})
    assert s.budget_held() == ["b"]
    s.set_budget(None, {"usd": 99.0})
    assert s.budget_held() == [] and s.take() == "b"


def test_would_block_lists_the_dependents_a_failure_would_block_without_changing_anything():
    s = Scheduler([_T("a"), _T("b", ["a"]), _T("c", ["b"]), _T("d", ["a"]), _T("e"), _T("f", soft=["a"])])
    assert sorted(s.would_block("a")) == ["b", "c", "d"]        # soft dependents are not blocked
    assert s.states()["b"] == "waiting" and s.would_block("e") == []
    s.take()
    s.finish("a", "done")
    s.finish(s.take(), "done")
    assert s.would_block("b") == ["c"]
    s.start("c")
    assert s.would_block("b") == []                             # running: not blocked by anything now
    diamond = Scheduler([_T("a"), _T("b", ["a"]), _T("c", ["a"]), _T("d", ["b", "c"]), _T("e", ["d"])])
    assert sorted(diamond.would_block("a")) == ["b", "c", "d", "e"]   # d (two paths) and below it once each
    assert diamond.would_block("a") and sorted(diamond.would_block("a")) == sorted(set(diamond.would_block("a")))


def test_a_ready_task_cancelled_is_never_handed_out():
    """Its heap entry goes stale (removed lazily): take() skips it, alone or before another."""
    s = Scheduler([_T("a")])
    s.finish("a", "cancelled")
    assert s.take() is None and not s.may_start()
    s = Scheduler([_T("a", priority=1), _T("b")])
    s.finish("a", "cancelled")
    assert s.take() == "b" and s.take() is None


def test_a_task_requeued_while_it_ran_gives_its_units_back():
    """A broken or released claim: the running task goes back to ready, and the units take()
    gave it come back at once (not at the next attempt's end)."""
    s = Scheduler([_T("a"), _T("b")])
    s.set_resources({"a": {"gpu": 1}, "b": {"gpu": 1}}, {"gpu": 1})
    assert s.take() == "a" and s.resource_held() == {"b": ["gpu"]}
    s.requeue("a")
    assert s.state_of("a") == "ready" and s.resource_held() == {}
    assert s.take() == "a"                     # a again (plan order), holding the unit again
    assert s.resource_held() == {"b": ["gpu"]} and s.take() is None


def test_an_approval_gate_waits_on_a_person_until_it_is_decided():
    s = Scheduler([_T("gate"), _T("after", ["gate"])])
    s.wait_approval("gate")
    assert s.state_of("gate") == "awaiting_approval" and s.awaiting() == ["gate"]
    assert not s.is_finished() and s.take() is None
    s.finish("gate", "done")
    assert s.awaiting() == [] and s.state_of("after") == "ready"
    s.wait_approval("gate")                                     # ended: no longer a gate
    assert s.state_of("gate") == "done"


def test_a_rebuilt_scheduler_keeps_a_waiting_class_s_wait():
    now = [0.0]
    tasks = [_T("hi", priority=2), _T("lo", priority=0)]
    old = Scheduler(tasks, aging=1.0, clock=lambda: now[0])
    now[0] = 5.0
    new = Scheduler(tasks, aging=1.0, clock=lambda: now[0])
    assert new.effective_priority(0) == 0
    new.keep_waits(old)
    assert new.effective_priority(0) == 5 and new.effective_priority(2) == 7
    assert new.effective_priority(0, now=2.5) == 2
    plain = Scheduler(tasks)
    plain.keep_waits(old)                                       # no aging: nothing kept
    assert plain.effective_priority(0) == 0 and plain.ready_ids() == ["hi", "lo"]


def test_fair_share_alternates_equal_goals_and_forgets():
    fs = FairShare()
    a, b = Scheduler([_T("a1"), _T("a2"), _T("a3")]), Scheduler([_T("b1"), _T("b2"), _T("b3")])
    got = [fs.take({"A": (a, 0, 1.0), "B": (b, 0, 1.0)}) for _ in range(4)]
    assert got == [("A", "a1"), ("B", "b1"), ("A", "a2"), ("B", "b2")]
    assert fs.pick({}) is None and fs.take({}) is None
    fs.forget("A")
    assert "A" not in fs.passes
    full = Scheduler([_T("x")], max_parallel=1)
    full.take()
    assert fs.take({"F": (full, 1, 1.0)}) is None                # may not start: not picked


def test_scheduler_rules_at_their_defaults_and_edges():
    FairShare().forget("never-seen")                              # nothing to forget: no error
    s = Scheduler([_T("a")])
    s.set_resources({"a": {"gpu": 1}}, {})                         # a pool the files say nothing about: 0 free
    assert s.resource_held() == {"a": ["gpu"]} and s.take() is None
    r = Scheduler([_T("free", priority=1), _T("b")])
    r.set_resources({"free": {}, "b": {"gpu": 1}}, {"gpu": 0})     # a task needing nothing does not end the list
    assert r.resource_held() == {"b": ["gpu"]}
    b = Scheduler([_T("a")], budget={"usd": 5.0}, estimates={"a": 4.5})
    b.set_budget({"usd": 5.0}, {})                                 # nothing spent yet
    assert b.fits_budget("a")
    b.set_budget({"usd": 5.0}, {"usd": 0.5})                       # 0.5 + 4.5 == 5: fits exactly
    assert b.fits_budget("a")
    b.set_budget({"tokens": 1}, {})
    assert b.fits_budget("a")


def test_keep_waits_only_for_classes_that_were_waiting():
    now = [0.0]
    clock = lambda: now[0]
    old = Scheduler([_T("hi", priority=2)], aging=1.0, clock=clock)
    now[0] = 3.0
    new = Scheduler([_T("hi", priority=2), _T("lo", priority=0)], aging=1.0, clock=clock)
    new.keep_waits(old)                                            # lo's class is new: no wait to keep
    assert new.effective_priority(0) == 0 and new.effective_priority(2) == 5
    now[0] = 0.0
    served = Scheduler([_T("x", priority=0)], aging=1.0, clock=clock)
    now[0] = 1.0
    assert served.take() == "x"                                    # its class served and now empty
    now[0] = 5.0
    again = Scheduler([_T("x", priority=0)], aging=1.0, clock=clock)
    again.keep_waits(served)
    assert again.effective_priority(0) == 0                        # the old class was not waiting


def test_aging_divides_the_wait_by_its_period_and_only_for_a_waiting_class():
    now = [0.0]
    s = Scheduler([_T("hi", priority=3), _T("lo", priority=0)], aging=2.0, clock=lambda: now[0])
    now[0] = 5.0
    assert s.effective_priority(0) == 2 and s.effective_priority(0, now=9.0) == 4
    assert s.effective_priority(7) == 7                   # no ready task of priority 7: no wait
    assert s.ready_ids() == ["hi", "lo"]                  # both classes age alike: 3 + 2 > 0 + 2


def test_a_held_template_is_ready_but_never_handed_out():
    s = Scheduler([_T("tpl"), _T("join", ["tpl"])], hold=["tpl"])
    assert s.state_of("tpl") == "ready" and s.expandable() == ["tpl"]
    assert s.ready_ids() == [] and s.peek() is None and s.take() is None and not s.may_start()
    s.finish("tpl", "done")
    assert s.expandable() == [] and s.take() == "join"


def test_a_requeued_task_is_listed_once():
    s = Scheduler([_T("a", priority=1), _T("b")])
    assert s.take() == "a"
    assert s.requeue("a") == [("a", "ready", None)]
    assert s.ready_ids() == ["a", "b"] and s.take() == "a" and s.take() == "b"


def test_requeue_of_a_task_whose_dependency_failed_meanwhile_blocks_it_and_what_is_below():
    s = Scheduler([_T("x"), _T("t", ["x"]), _T("u", ["t"])], {"x": "failed", "t": "running"})
    assert s.state_of("u") == "waiting"
    assert s.requeue("t") == [("t", "blocked", "x"), ("u", "blocked", "x")]
    assert s.blocked_by("u") == "x" and s.is_finished()


def test_fair_share_strides_by_weight_and_counts_running_tasks_per_weight():
    fs = FairShare()
    fs.served("A", 2.0)                                   # a goal never seen: from the current pass
    assert fs.passes == {"A": 0.5} and fs.vtime == 0.0
    fs.served("A", 2.0)
    assert fs.passes == {"A": 1.0} and fs.vtime == 0.5
    assert fs.pick({"A": (0, 2.0), "B": (0, 1.0)}) == "B"  # B joins at the current pass (0.5): below A's 1.0
    assert fs.passes["B"] == 0.5
    assert FairShare().pick({"A": (2, 4.0), "B": (1, 1.0)}) == "A"    # 2 running / weight 4 < 1 / 1
    assert FairShare().pick({"B": (0, 1.0), "A": (0, 1.0)}) == "A"    # a tie: the goal id
    fs2 = FairShare()
    a = Scheduler([_T(f"a{i}") for i in range(6)])
    b = Scheduler([_T(f"b{i}") for i in range(6)])
    got = [fs2.take({"A": (a, 0, 2.0), "B": (b, 0, 1.0)})[0] for _ in range(6)]
    assert got == ["A", "B", "A", "A", "B", "A"]


# ------------------------------------------------------------------ transitions without a test before
def _sched(home):
    return lc.build_scheduler(home, home.load_plan("g"))[0]


# ------------------------------------------------------------------ approval gates
def test_an_approval_gate_awaits_then_approve_commits_the_decision(tmp_path):
    home = submit_home(tmp_path, [{"id": "gate", "prompt": "x", "approval": {"prompt": "Merge?", "timeout": 3600}},
                                  {"id": "after", "prompt": "y", "agent": "true", "deps": ["gate"]}])
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "gate"
    c = lc.claim_task(home, plan, "gate", worker="w1", kind="engine")
    before = time.time()
    body = tr.await_approval(home, plan, sched, c, worker="w1")
    since = body["since"]
    assert body == {"prompt": "Merge?", "since": since, "worker": "w1", "timeout": 3600,
                    "timeout_at": body["timeout_at"]}
    assert before - 1 <= parse_ts(since) <= time.time() and parse_ts(body["timeout_at"]) == pytest.approx(parse_ts(since) + 3600, abs=1e-3)
    assert lc.awaiting_of(home, "g", "gate") == body
    assert not os.path.exists(home.claim_dir("g", "gate")) and sched.state_of("gate") == "awaiting_approval"
    aw = [e for e in goal_events(home, ev.TASK_STATUS) if e["status"] == "awaiting_approval"]
    assert len(aw) == 1 and aw[0]["prompt"] == "Merge?" and aw[0]["timeout_at"] == body["timeout_at"] and aw[0]["worker"] == "w1"
    # claimed again while it awaits (another engine): the same file, no second event, no claim left
    c2 = lc.claim_task(home, plan, "gate", worker="w2", kind="engine")
    assert tr.await_approval(home, plan, sched, c2, worker="w2") == body
    assert not os.path.exists(home.claim_dir("g", "gate"))
    assert len([e for e in goal_events(home, ev.TASK_STATUS) if e["status"] == "awaiting_approval"]) == 1
    with pytest.raises(Refused, match="not awaiting approval"):
        tr.decide(home, plan, sched, "after", approve=True, by="alice")
    assert not os.path.exists(home.claim_dir("g", "after"))
    fin = tr.decide(home, plan, sched, "gate", approve=True, by="alice", text="looks good")
    assert fin.outcome == "done" and fin.changes.ready == ["after"]
    assert Path(home.output_path("g", "gate")).read_bytes() == b"looks good\n"
    done = read_json(home.marker_path("g", "gate", "done"))
    assert done["approved"] is True and done["decided_by"] == "alice" and done["note"] == "looks good"
    assert done["approval_since"] == since and done["exit_code"] == 0 and done["worker"] == "alice"
    assert lc.awaiting_of(home, "g", "gate") is None and not os.path.exists(home.claim_dir("g", "gate"))
    last = [e for e in goal_events(home, ev.TASK_STATUS) if e["task"] == "gate"][-1]
    assert (last["status"], last["approved"], last["decided_by"], last["worker"]) == ("done", True, "alice", "alice")
    with pytest.raises(Refused, match="already done"):
        tr.decide(home, plan, sched, "gate", approve=False, by="bob")


def test_an_approval_note_ending_in_a_newline_is_the_output_as_it_is(tmp_path):
    home = submit_home(tmp_path, [{"id": "gate", "prompt": "x", "approval": {"prompt": "Merge?"}}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.await_approval(home, plan, sched, lc.claim_task(home, plan, "gate", worker="w1", kind="engine"), worker="w1")
    tr.decide(home, plan, sched, "gate", approve=True, by="alice", text="two\nlines \udcff\n")   # argv bytes, not UTF-8
    assert Path(home.output_path("g", "gate")).read_bytes() == b"two\nlines \xff\n"      # as given, no second newline
    assert read_json(home.marker_path("g", "gate", "done"))["note"] == "two\nlines \ufffd\n"   # JSON: U+FFFD in its place
    assert goal_events(home, ev.TASK_STATUS)[-1]["status"] == "done" and not os.path.exists(home.claim_dir("g", "gate"))


def test_a_rejection_whose_reason_is_not_utf8_is_recorded_not_crashed_on(tmp_path):
    home = submit_home(tmp_path, [{"id": "gate", "prompt": "x", "approval": {"prompt": "Merge?"}}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.await_approval(home, plan, sched, lc.claim_task(home, plan, "gate", worker="w1", kind="engine"), worker="w1")
    fin = tr.decide(home, plan, sched, "gate", approve=False, by="bob", text="no \udcff")
    assert fin.outcome == "failed" and read_json(home.marker_path("g", "gate", "failed"))["reason"] == "no \ufffd"
    assert goal_events(home, ev.TASK_STATUS)[-1]["reason"] == "no \ufffd" and not os.path.exists(home.claim_dir("g", "gate"))


def test_an_approval_gate_past_its_timeout_is_rejected_by_whoever_looks(tmp_path):
    home = submit_home(tmp_path, [{"id": "free", "prompt": "y", "agent": "true", "approval": {"prompt": "Other?"}},
                                  {"id": "gate", "prompt": "x", "approval": {"prompt": "Go?", "timeout": 5}},
                                  {"id": "after", "prompt": "y", "agent": "true", "deps": ["gate"]}])
    plan, sched = home.load_plan("g"), _sched(home)
    for _ in range(2):                 # `free`, a gate without a timeout, is first in plan order: the
        t = sched.take()               # gates after it are still looked at
        tr.await_approval(home, plan, sched, lc.claim_task(home, plan, t, worker="w1", kind="engine"), worker="w1")
    at = parse_ts(lc.awaiting_of(home, "g", "gate")["timeout_at"])
    assert lc.awaiting_of(home, "g", "free")["timeout_at"] is None
    assert tr.expire_approvals(home, plan, sched, worker="w2") == ([], at)           # now: not yet
    assert tr.expire_approvals(home, plan, sched, worker="w2", now=at - 1) == ([], at)
    assert tr.expire_approvals(home, plan, sched, worker="w2", now=at) == (["gate"], None)
    failed = read_json(home.marker_path("g", "gate", "failed"))
    assert failed["outcome"] == "approval_timeout" and failed["reason"] == "approval timed out: nobody decided within 5s"
    assert failed["approved"] is False and failed["decided_by"] == "w2"
    assert sched.state_of("after") == "blocked" and sched.awaiting() == ["free"]
    assert lc.awaiting_of(home, "g", "gate") is None
    fin = tr.decide(home, plan, sched, "free", approve=False, by="bob", text="no")
    assert fin.outcome == "failed" and read_json(home.marker_path("g", "free", "failed"))["outcome"] == "rejected"
    e = [x for x in goal_events(home, ev.TASK_STATUS) if x["task"] == "free"][-1]
    assert (e["status"], e["decided_by"], e["worker"], e["reason"]) == ("failed", "bob", "bob", "no")
    assert sched.is_finished()


def test_an_ended_attempt_gives_its_resource_units_back_before_anything_else(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "mutex": "db", "retries": 1, "retry_backoff": 0},
                                  {"id": "b", "prompt": "x", "agent": "true", "mutex": "db"}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    assert c.resources == {"db": 1} and c.owner["units"]
    tr.started(home, c, worker="w1")
    assert goal_events(home, ev.TASK_STATUS)[-1]["resources"] == {"db": 1}       # the running event names them
    from dagrun import resources as res
    with pytest.raises(res.Busy):                           # the one unit of db is held
        lc.claim_task(home, plan, "b", worker="w2", kind="external")
    tr.interrupted(home, None, c, outcome="interrupted", reason="stop", worker="w9")
    e = goal_events(home, ev.TASK_RESOURCES)
    assert len(e) == 1 and _strip(e[0]) == {"task": "a", "attempt": 1, "released": ["db"], "why": "interrupted",
                                           "worker": "w9"}
    assert [x["type"] for x in goal_events(home)][-2:] == [ev.TASK_RESOURCES, ev.TASK_STATUS]   # released first
    cb = lc.claim_task(home, plan, "b", worker="w2", kind="external")                      # the unit is free
    sched = _sched(home)
    tr.finish(home, plan, sched, cb, ok=False, worker="w2", reason="x")
    assert _strip(goal_events(home, ev.TASK_RESOURCES)[-1])["why"] == "failed"
    ca = _claim(home, "a")
    tr.finish(home, plan, sched, ca, ok=True, worker="w3", output_data=b"")
    last = _strip(goal_events(home, ev.TASK_RESOURCES)[-1])
    assert (last["task"], last["why"], last["worker"], last["attempt"]) == ("a", "done", "w3", 2)


def test_decided_at_is_the_decision_s_time_in_utc_whatever_the_local_zone(tmp_path, monkeypatch):
    home = submit_home(tmp_path, [{"id": "gate", "prompt": "x", "approval": {"prompt": "Go?"}}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.await_approval(home, plan, sched, lc.claim_task(home, plan, "gate", worker="w1", kind="engine"), worker="w1")
    monkeypatch.setenv("TZ", "Asia/Kolkata")               # +05:30: a local time would show
    time.tzset()
    try:
        tr.decide(home, plan, sched, "gate", approve=True, by="alice")      # no note
    finally:
        monkeypatch.undo()
        time.tzset()
    done = read_json(home.marker_path("g", "gate", "done"))
    assert done["decided_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(parse_ts(done["ended"])))
    assert "note" not in done and Path(home.output_path("g", "gate")).read_bytes() == b""


# ------------------------------------------------------------------ a false condition
def test_a_false_condition_skips_the_task_with_its_reason(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"],
                                   "when": {"output_of": "a", "contains": "YES"}},
                                  {"id": "c", "prompt": "z", "agent": "true", "deps": ["b"]}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    ca = _claim(home, "a")
    tr.finish(home, plan, sched, ca, ok=True, worker="w1", output_data=b"no\n")
    assert sched.take() == "b"
    cb = lc.claim_task(home, plan, "b", worker="w1", kind="external")
    assert cb.skip.startswith("condition false: ") and not os.path.exists(home.prompt_path("g", "b"))
    ch = tr.skip(home, plan, sched, cb, worker="w1")
    m = read_json(home.marker_path("g", "b", "skipped"))
    assert m["reason"] == cb.skip and m["worker"] == "w1" and m["when"] == {"output_of": "a", "contains": "YES"}
    assert abs(parse_ts(m["ts"]) - time.time()) < 60 and set(m) == {"reason", "worker", "ts", "when"}
    assert not os.path.exists(home.claim_dir("g", "b")) and lc.marker_of(home, "g", "b") == "skipped"
    assert ch.skipped == [("c", "b")]
    sk = [e for e in goal_events(home, ev.TASK_STATUS) if e["status"] == "skipped"]
    assert [(e["task"], e["reason"]) for e in sk] == [("b", cb.skip), ("c", "b was skipped")]
    assert sk[1]["skipped_by"] == "b" and sk[1]["derived"] is True and [e["worker"] for e in sk] == ["w1", "w1"]


def test_a_true_condition_runs_the_task(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"],
                                   "when": {"output_of": "a", "contains": "YES"}}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"YES\n")
    cb = lc.claim_task(home, plan, "b", worker="w1", kind="external")
    assert cb.skip is None and cb.attempt == 1 and "YES" in Path(home.prompt_path("g", "b")).read_text()


# ------------------------------------------------------------------ an attempt without a verdict
def test_an_interrupted_attempt_is_recorded_uncounted_and_the_task_is_ready_again(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    c = _claim(home, "a")
    cdir = home.claim_dir("g", "a")
    Path(cdir, "stdout").write_bytes(b"partial")
    Path(cdir, "stderr").write_bytes(b"oops")
    tr.interrupted(home, sched, c, outcome="interrupted", reason="engine stopped", worker="w9",
                   extra={"usage": {"usd": 0.5}})
    rec = read_json(home.attempt_path("g", "a", 1, "json"))
    assert rec == {"attempt": 1, "outcome": "interrupted", "reason": "engine stopped", "worker": "w9",
                   "started": c.owner["since"], "ended": rec["ended"], "counted": False, "failures": 0,
                   "retry_at": None, "final": False, "usage": {"usd": 0.5}}
    assert Path(home.attempt_path("g", "a", 1, "out")).read_bytes() == b"partial"
    assert Path(home.attempt_path("g", "a", 1, "err")).read_bytes() == b"oops"
    assert os.path.samefile(home.stderr_path("g", "a"), home.attempt_path("g", "a", 1, "err"))
    assert Path(home.attempt_path("g", "a", 1, "prompt.md")).read_text().startswith("x")
    assert not os.path.exists(cdir) and lc.marker_of(home, "g", "a") is None
    ready = goal_events(home, ev.TASK_STATUS)[-1]
    assert (ready["task"], ready["status"], ready["attempt"], ready["reason"], ready["usage"], ready["worker"]) == (
        "a", "ready", 2, "attempt 1: engine stopped", {"usd": 0.5}, "w9")
    assert sched.state_of("a") == "ready"
    c2 = _claim(home, "a")
    assert c2.attempt == 2          # the interrupted attempt used a number, not a retry
    n = len(goal_events(home))
    tr.interrupted(home, sched, c2, outcome="cancelled", reason="cancelled by me", worker="w9")
    assert len(goal_events(home)) == n and read_json(home.attempt_path("g", "a", 2, "json"))["outcome"] == "cancelled"
    quiet = _claim(home, "a")
    tr.interrupted(home, None, quiet, outcome="superseded", reason="plan edit", worker="w9", announce=False)
    assert len(goal_events(home)) == n and not os.path.exists(home.claim_dir("g", "a"))


# ------------------------------------------------------------------ events that change no file
def test_the_thin_transitions_append_exactly_their_event(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    c = _claim(home, "a")
    n = len(goal_events(home))
    tr.retry_due(home, "g", "a", attempt=3, worker="w1")
    tr.stalled(home, c, reason="no output for 5s", worker="w1")
    tr.reset(home, "g", "a", by="me", reason="retry", forced=True)
    tr.plan_replaced(home, "g", by="me", changed=["a"])
    tr.placed(home, c, worker="w1", node="n1")
    tr.budget_held(home, "g", "a", reason="over budget", worker="w1")
    tr.over_share(home, c, reason="past its share", share={"usd": 1}, worker="w1")
    tr.budget_raised(home, "g", by="me", added={"usd": 2}, pool={"usd": 3})
    tr.started(home, c, worker="w1", pid=42)
    strip = lambda e: {k: v for k, v in e.items() if k not in ("ts", "goal")}
    assert [strip(e) for e in goal_events(home)[n:]] == [
        {"type": ev.TASK_STATUS, "task": "a", "status": "ready", "attempt": 3, "worker": "w1", "reason": "retry backoff ended"},
        {"type": ev.TASK_BLOCKED, "task": "a", "reason": "no output for 5s", "attempt": 1, "worker": "w1"},
        {"type": ev.TASK_STATUS, "task": "a", "status": "reset", "worker": "me", "reason": "retry", "forced": True},
        {"type": ev.PLAN_REPLACED, "worker": "me", "changed": ["a"]},
        {"type": ev.TASK_PLACED, "task": "a", "attempt": 1, "worker": "w1", "node": "n1"},
        {"type": ev.TASK_BLOCKED, "task": "a", "reason": "over budget", "blocked_by": "budget", "worker": "w1"},
        {"type": ev.TASK_BUDGET, "task": "a", "attempt": 1, "reason": "past its share", "share": {"usd": 1}, "worker": "w1"},
        {"type": ev.GOAL_BUDGET, "worker": "me", "added": {"usd": 2}, "pool": {"usd": 3}},
        {"type": ev.TASK_STATUS, "task": "a", "status": "running", "attempt": 1, "worker": "w1", "pid": 42},
    ]
    os.makedirs(home.hooks_due_dir("g"))        # made by hooks.prepare when a hook is due
    tr.hook_failed(home, "g", hook="h1", error="exit 1")
    e = goal_events(home)[-1]
    assert e["type"] == ev.HOOK_FAILED and e["hook"] == "h1" and e["error"] == "exit 1"
    assert read_json(os.path.join(home.hooks_due_dir("g"), "last_failure.json")) == e


# ------------------------------------------------------------------ claim: take over, sweep
def test_take_over_reattaches_a_stale_claim_whose_attempt_lives(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    _claim(home, "a")
    dead = {**claims.read_owner(home, "g", "a"), "pid": dead_pid(), "handle": {"runner": "x", "id": 7},
            "run_id": "r1", "reattached": 1}
    claims.update_owner(home, "g", "a", dead)
    seen = []
    assert claims.take_over(home, "g", "a", "wrong-nonce", "w2", lease=60, adopt=lambda o: True) is None
    assert claims.take_over(home, "g", "a", dead["nonce"], "w2", lease=60, adopt=lambda o: seen.append(o) or False) is None
    assert seen == [dead] and claims.read_owner(home, "g", "a") == dead
    new = claims.take_over(home, "g", "a", dead["nonce"], "w2", lease=60, adopt=lambda o: True)
    assert claims.read_owner(home, "g", "a") == new
    assert new["worker"] == "w2" and new["pid"] == os.getpid() and new["nonce"] != dead["nonce"]
    assert (new["attempt"], new["handle"], new["run_id"], new["since"], new["reattached"]) == (
        1, {"runner": "x", "id": 7}, "r1", dead["since"], 2)
    assert claims.judge(home, "g", "a", new, lease=60) is None
    assert claims.take_over(home, "g", "a", new["nonce"], "w3", lease=60, adopt=lambda o: True) is None   # live


def test_take_over_waits_for_the_break_lock_and_judges_another_host_by_its_lease(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    assert claims.acquire(home, "g", "a")
    far = {**claims.new_owner("w1", 2, kind="engine"), "host": "elsewhere", "boot_id": "b", "pid": 1}
    claims.update_owner(home, "g", "a", far)
    assert claims.take_over(home, "g", "a", far["nonce"], "w2", lease=60, adopt=lambda o: True) is None   # fresh
    old = time.time() - 120
    os.utime(home.owner_path("g", "a"), (old, old))
    with break_lock_held(home):
        t0 = time.monotonic()
        new = claims.take_over(home, "g", "a", far["nonce"], "w2", lease=60, adopt=lambda o: True)
        assert time.monotonic() - t0 > 0.3                  # it waited for the other breaker
    assert new is not None and new["host"] == HOST and new["attempt"] == 2 and new["reattached"] == 1
    assert new["kind"] == "engine" and claims.read_owner(home, "g", "a") == new


def test_a_symlinked_owner_json_is_not_read_and_a_symlinked_claim_is_stale(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true"}])
    assert claims.acquire(home, "g", "a")
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps(claims.new_owner("intruder", 1, kind="engine")))
    os.symlink(fake, home.owner_path("g", "a"))
    assert claims.read_owner(home, "g", "a") is None            # never read through a link
    os.makedirs(home.task_dir("g", "b"), exist_ok=True)
    os.symlink(tmp_path, home.claim_dir("g", "b"))
    assert claims.read_owner(home, "g", "b") is None
    assert claims.judge(home, "g", "b", None, lease=60) == "the claim is a symbolic link (not made by dagrun)"


def test_a_claim_being_born_is_live_for_exactly_its_grace(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    assert claims.acquire(home, "g", "a")
    ctime = os.stat(home.claim_dir("g", "a")).st_ctime
    now = ctime + 10.0
    grace = now - ctime                                          # the age judge computes, to the bit
    assert claims.judge(home, "g", "a", None, lease=60, grace=grace, now=now) is None
    assert claims.judge(home, "g", "a", None, lease=60, grace=grace - 0.01, now=now) == \
        "half-created claim (no owner.json) for 10s"
    claims.release(home, "g", "a")
    assert claims.judge(home, "g", "a", None, lease=60, grace=0, now=now) is None   # gone: nothing to break


def test_sweep_leftovers_removes_only_claims_renamed_away(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    tdir = Path(home.task_dir("g", "a"))
    (tdir / ".claim.broken.ab12" / "x").mkdir(parents=True)
    (tdir / ".claim.released.cd34").mkdir()
    (tdir / "claimx").mkdir()
    claims.sweep_leftovers(home, "g", "a")
    assert sorted(os.listdir(tdir)) == ["claimx"]
    claims.sweep_leftovers(home, "g", "nosuch")


# ------------------------------------------------------------------ lifecycle: records, backoff, retry prompt, stale claims
T0 = 1_700_000_000.0


def test_failure_records_count_retries_back_off_and_end_in_the_failed_marker(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 2, "retry_backoff": 10}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    c.started = T0
    rec = lc.commit_failure(home, plan, c, outcome="failed", ended=T0 + 3.2104, exit_code=3, reason="boom",
                            extra={"usage": {"usd": 1}})
    assert 5.0 + T0 + 3.2104 <= rec["retry_at"] <= 15.0 + T0 + 3.2104
    assert rec == {"attempt": 1, "outcome": "failed", "exit_code": 3, "signal": None, "reason": "boom", "worker": "w1",
                   "started": now_iso(T0), "ended": now_iso(T0 + 3.2104), "duration": 3.21, "counted": True,
                   "failures": 1, "retry_at": rec["retry_at"], "final": False, "usage": {"usd": 1}}
    assert read_json(home.attempt_path("g", "a", 1, "json")) == rec
    assert lc.marker_of(home, "g", "a") is None and not os.path.exists(home.claim_dir("g", "a"))
    c = _claim(home, "a")
    rec = lc.commit_failure(home, plan, c, outcome="timeout", ended=T0 + 50, signal=15)
    assert (rec["failures"], rec["counted"], rec["final"], rec["signal"], rec["exit_code"]) == (2, True, False, 15, None)
    assert 10.0 + T0 + 50 <= rec["retry_at"] <= 30.0 + T0 + 50           # 10 * 2**(2-1), +-50 %
    c = _claim(home, "a")
    rec = lc.commit_failure(home, plan, c, outcome="interrupted", ended=T0 + 60)
    assert (rec["failures"], rec["counted"], rec["final"], rec["retry_at"]) == (2, False, False, None)
    c = _claim(home, "a")
    assert c.attempt == 4
    rec = lc.commit_failure(home, plan, c, outcome="failed", ended=T0 + 70, exit_code=1, reason="again",
                            forced_by="admin", held_by="w1 (pid 1)")
    assert (rec["failures"], rec["final"], rec["retry_at"], rec["forced_by"], rec["held_by"]) == (3, True, None, "admin", "w1 (pid 1)")
    failed = read_json(home.marker_path("g", "a", "failed"))
    assert failed == {k: rec[k] for k in ("attempt", "outcome", "exit_code", "signal", "reason", "worker", "started",
                                          "ended", "duration", "forced_by", "held_by")}
    assert lc.marker_of(home, "g", "a") == "failed"


def test_a_final_failure_can_be_forced_and_the_count_can_be_handed_in(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 5}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    rec = lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), prev_failures=7, final=True,
                            extra={"check": {"ok": False}})
    assert (rec["failures"], rec["final"], rec["retry_at"]) == (8, True, None)
    assert read_json(home.marker_path("g", "a", "failed"))["check"] == {"ok": False}


def test_backoff_doubles_per_failure_up_to_the_cap_with_jitter():
    class Tk:
        retry_backoff = 4.0
    samples = lambda n: [lc.backoff(Tk, n) for _ in range(300)]
    for n, base in ((0, 4.0), (1, 4.0), (2, 8.0), (3, 16.0)):
        s = samples(n)
        assert base * 0.5 <= min(s) and max(s) <= base * 1.5 and max(s) - min(s) > base * 0.5, n
    Tk.retry_backoff = 400.0
    s = samples(3)                                    # 1600 capped at 600
    assert 300.0 <= min(s) and max(s) <= 900.0 and max(s) > 700.0
    Tk.retry_backoff = 0.0
    assert lc.backoff(Tk, 3) == 0.0
    Tk.retry_backoff = -1.0
    assert lc.backoff(Tk, 3) == 0.0


def test_a_success_after_failures_is_kept_beside_them(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 2, "retry_backoff": 0}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    Path(home.claim_dir("g", "a"), "stderr").write_bytes(b"first err")
    lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=1)
    assert Path(home.stderr_path("g", "a")).read_bytes() == b"first err"
    c = _claim(home, "a")
    c.started = T0
    Path(home.claim_dir("g", "a"), "stdout").write_bytes(b"good\n")
    body = lc.commit_done(home, plan, c, ended=T0 + 2.5, exit_code=0, extra={"usage": {"usd": 0.25}, "node": "n7"})
    assert body["usage"] == {"usd": 0.25} and body["node"] == "n7"
    rec = read_json(home.attempt_path("g", "a", 2, "json"))
    assert rec == {"attempt": 2, "outcome": "done", "exit_code": 0, "signal": None, "reason": "", "worker": "w1",
                   "started": now_iso(T0), "ended": now_iso(T0 + 2.5), "duration": 2.5, "counted": False,
                   "failures": 1, "retry_at": None, "final": True, "usage": {"usd": 0.25}, "node": "n7"}
    assert os.path.samefile(home.output_path("g", "a"), home.attempt_path("g", "a", 2, "out"))
    assert os.path.samefile(home.prompt_path("g", "a"), home.attempt_path("g", "a", 2, "prompt.md"))
    assert not os.path.exists(home.stderr_path("g", "a"))          # no stderr this time: the old one goes
    assert not os.path.exists(home.attempt_path("g", "a", 2, "err"))
    assert Path(home.attempt_path("g", "a", 1, "err")).read_bytes() == b"first err"
    # again with a stderr: it is linked beside the attempt
    home2 = submit_home(tmp_path / "2", [{"id": "a", "prompt": "x", "agent": "true", "retries": 2, "retry_backoff": 0}])
    plan2 = home2.load_plan("g")
    lc.commit_failure(home2, plan2, _claim(home2, "a"), outcome="failed", ended=time.time())
    c = _claim(home2, "a")
    Path(home2.claim_dir("g", "a"), "stderr").write_bytes(b"second err")
    lc.commit_done(home2, plan2, c, ended=time.time())
    assert os.path.samefile(home2.stderr_path("g", "a"), home2.attempt_path("g", "a", 2, "err"))
    assert read_json(home2.attempt_path("g", "a", 2, "json"))["failures"] == 1
    assert "usage" not in read_json(home2.attempt_path("g", "a", 2, "json"))


def test_the_capture_s_size_is_the_one_look_at_it_and_a_dangling_link_is_no_capture(tmp_path):
    """commit_done looks at claim/stdout once (lstat: there? how big?) and the marker's
    output_bytes is that size, not a second look at `output`. A claim/stdout that is a
    symbolic link to nothing counts as no capture, as os.path.exists said: an empty output
    is published and the link is left in the claim (removed with it)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    Path(home.claim_dir("g", "a"), "stdout").write_bytes(b"seven b")
    body = lc.commit_done(home, plan, c, ended=time.time())
    assert body["output_bytes"] == 7 and Path(home.output_path("g", "a")).read_bytes() == b"seven b"
    c = _claim(home, "b")
    os.symlink(tmp_path / "nowhere", os.path.join(home.claim_dir("g", "b"), "stdout"))
    body = lc.commit_done(home, plan, c, ended=time.time())
    out = Path(home.output_path("g", "b"))
    assert not out.is_symlink() and out.read_bytes() == b"" and body["output_bytes"] == 0
    assert not os.path.lexists(home.claim_dir("g", "b"))


def test_done_from_a_file_or_bytes_and_forced(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true"},
                                  {"id": "c", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    src = tmp_path / "out.txt"
    src.write_bytes(b"from a file")
    body = lc.commit_done(home, plan, _claim(home, "a"), ended=time.time(), output_from=str(src),
                          forced_by="admin", held_by="w0 (pid 9)")
    assert not src.exists() and Path(home.output_path("g", "a")).read_bytes() == b"from a file"
    assert (body["forced_by"], body["held_by"], body["output_bytes"]) == ("admin", "w0 (pid 9)", 11)
    body = lc.commit_done(home, plan, _claim(home, "b"), ended=time.time(), output_data=b"data", exit_code=None)
    assert Path(home.output_path("g", "b")).read_bytes() == b"data" and body["exit_code"] is None
    assert "forced_by" not in body and "held_by" not in body
    body = lc.commit_done(home, plan, _claim(home, "c"), ended=time.time())     # nothing captured: empty output
    assert Path(home.output_path("g", "c")).read_bytes() == b"" and body["output_bytes"] == 0
    assert body["exit_code"] == 0 and read_json(home.marker_path("g", "c", "done"))["exit_code"] == 0   # the default
    assert not os.path.exists(home.stderr_path("g", "c"))


def test_the_retry_prompt_carries_the_last_lines_of_the_failed_attempts_stderr(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "do it", "agent": "true", "retries": 1, "retry_context": "error",
                                   "timeout": 30, "retry_backoff": 0}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    lines = [f"line {i:03d} " + "x" * 120 for i in range(40)]
    Path(home.claim_dir("g", "a"), "stderr").write_text("\n".join(lines) + "\n")
    lc.commit_failure(home, plan, c, outcome="timeout", ended=time.time(), signal=9)
    _claim(home, "a")
    text = Path(home.prompt_path("g", "a")).read_text()
    assert "# Previous attempt 1 failed" in text and "It was killed after its timeout of 30s." in text
    tail = text.split("```\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert tail == lines[-15:]        # the last 2000 bytes from their first whole line: 15 lines of 130 bytes
    home2 = submit_home(tmp_path / "2", [{"id": "a", "prompt": "do it", "agent": "true", "retries": 1, "retry_context": "error", "retry_backoff": 0}])
    plan2 = home2.load_plan("g")
    c = _claim(home2, "a")
    short = [f"e{i}" for i in range(30)]
    Path(home2.claim_dir("g", "a"), "stderr").write_text("\n".join(short) + "\n")
    lc.commit_failure(home2, plan2, c, outcome="failed", ended=time.time(), exit_code=4)
    _claim(home2, "a")
    text = Path(home2.prompt_path("g", "a")).read_text()
    assert "It exited with code 4." in text
    assert text.split("```\n", 1)[1].split("\n```", 1)[0].splitlines() == short[-20:]   # at most 20 lines


def test_a_join_over_a_fan_out_shares_its_context_budget_between_the_instances(tmp_path):
    home = submit_home(tmp_path, [{"id": "src", "prompt": "x", "agent": "true"},
                            {"id": "tpl", "for_each": {"from": "src"}, "prompt": "do {{item}}", "agent": "true"},
                            {"id": "join", "deps": ["tpl"], "prompt": "Summarise", "agent": "true", "context_limit": 90}])
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "src"
    tr.finish(home, plan, sched, _claim(home, "src"), ok=True, worker="w1", output_data=json.dumps(["a", "b", "c"]).encode())
    assert fanout.expand_one(home, "g", "tpl", "w1") is True
    plan = home.load_plan("g")
    sched = _sched(home)
    for k in range(3):
        t = f"tpl.{k}"
        c = lc.claim_task(home, plan, t, worker="w1", kind="external")
        assert Path(home.prompt_path("g", t)).read_text().startswith(f"do {'abc'[k]}")
        tr.finish(home, plan, sched, c, ok=True, worker="w1", output_data=(f"<{k}>" + "x" * 26 + "TAIL" * 5).encode())
    fanout.join(home, plan, sched, lc.claim_task(home, plan, "tpl", worker="w1", kind="engine"), "w1")
    assert lc.marker_of(home, "g", "tpl") == "done"
    c = lc.claim_task(home, plan, "join", worker="w1", kind="external")
    text = Path(home.prompt_path("g", "join")).read_text()
    for k in range(3):                   # 90 // 3 = 30 bytes of each instance's 49, each in its own section
        assert (f"## Output of tpl.{k}\n\n<{k}>" + "x" * 26 + "T\n[... truncated: the first 30 of 49 bytes are shown; "
                f"the whole output is in {home.output_path('g', f'tpl.{k}')}]\n") in text, text
    assert text.index("<0>") < text.index("<1>") < text.index("<2>")
    os.remove(home.output_path("g", "tpl.1"))        # an instance's output vanished (archived): stale view
    lc.commit_failure(home, plan, c, outcome="interrupted", ended=time.time())
    with pytest.raises(lc.Stale, match="g/tpl.1 is no longer done"):
        lc.claim_task(home, plan, "join", worker="w1", kind="external")
    assert not os.path.exists(home.claim_dir("g", "join"))


@pytest.mark.parametrize("items", [["a"], ["a", "b", "c"]])
def test_an_expanded_template_s_own_prompt_holds_its_deps_and_each_instance_s_output_once(tmp_path, items):
    """The join (the expanded template, claimed once its instances are done) writes prompt.md
    like any task: its own dependencies' outputs, then one section per instance -- each once,
    in item order, sharing one context budget -- for one instance as for several, then its
    soft dependencies'."""
    home = submit_home(tmp_path, [{"id": "src", "prompt": "x", "agent": "true"},
                                  {"id": "side", "prompt": "x", "agent": "true"},
                                  {"id": "tpl", "deps": ["src"], "soft_deps": ["side"], "for_each": {"from": "src"},
                                   "prompt": "do {{item}}", "agent": "true"}])
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "src"), ok=True, worker="w1", output_data=json.dumps(items).encode())
    tr.finish(home, plan, sched, _claim(home, "side"), ok=True, worker="w1", output_data=b"<side>")
    assert fanout.expand_one(home, "g", "tpl", "w1") is True
    plan, sched = home.load_plan("g"), _sched(home)
    for k in range(len(items)):
        tr.finish(home, plan, sched, _claim(home, f"tpl.{k}"), ok=True, worker="w1", output_data=f"<out {k}>".encode())
    lc.claim_task(home, plan, "tpl", worker="w1", kind="engine")
    text = Path(home.prompt_path("g", "tpl")).read_text()
    heads = [x for x in text.splitlines() if x.startswith("## Output of ")]
    assert heads == (["## Output of src"] + [f"## Output of tpl.{k}" for k in range(len(items))]
                     + ["## Output of side"]), text
    assert [text.count(f"<out {k}>") for k in range(len(items))] == [1] * len(items)


def test_a_task_after_a_fan_out_gets_every_dependency_s_section_whatever_their_order(tmp_path):
    """A dependency on an expanded template gives one section per instance; the task's other
    dependencies keep theirs, listed before or after the template."""
    home = submit_home(tmp_path, [{"id": "src", "prompt": "x", "agent": "true"},
                                  {"id": "tpl", "deps": ["src"], "for_each": {"from": "src"}, "prompt": "do {{item}}",
                                   "agent": "true"},
                                  {"id": "side", "prompt": "x", "agent": "true"},
                                  {"id": "after", "deps": ["side", "tpl", "src"], "prompt": "Summarise", "agent": "true"}])
    plan, sched = home.load_plan("g"), _sched(home)
    for t, out in (("src", json.dumps(["a", "b"])), ("side", "<side>")):
        tr.finish(home, plan, sched, _claim(home, t), ok=True, worker="w1", output_data=out.encode())
    assert fanout.expand_one(home, "g", "tpl", "w1") is True
    plan, sched = home.load_plan("g"), _sched(home)
    for k in range(2):
        tr.finish(home, plan, sched, _claim(home, f"tpl.{k}"), ok=True, worker="w1", output_data=f"<out {k}>".encode())
    fanout.join(home, plan, sched, lc.claim_task(home, plan, "tpl", worker="w1", kind="engine"), "w1")
    lc.claim_task(home, plan, "after", worker="w1", kind="external")
    text = Path(home.prompt_path("g", "after")).read_text()
    heads = [x for x in text.splitlines() if x.startswith("## Output of ")]
    assert heads == ["## Output of side", "## Output of tpl.0", "## Output of tpl.1", "## Output of src"], text


def test_an_upstream_output_of_exactly_the_context_limit_is_shown_whole(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "deps": ["a"], "prompt": "y", "agent": "true", "context_limit": 100}])
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x" * 99 + b"Z")
    _claim(home, "b")
    text = Path(home.prompt_path("g", "b")).read_text()
    assert "x" * 99 + "Z" in text and "truncated" not in text, text


def test_a_dependency_archived_after_the_caller_looked_is_stale_not_an_empty_input(tmp_path):
    """The caller's view says a is done, but a was archived since (a forced retry: output and
    marker gone): the claim is given up with Stale, never run on an empty input. A done
    dependency whose output file is missing but whose marker stands is an empty output."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "deps": ["a"], "prompt": "y", "agent": "true"}])
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"out")
    os.remove(home.output_path("g", "a"))
    c = lc.claim_task(home, plan, "b", worker="w1", kind="external", state_of=lambda t: "done")
    assert c is not None and "## Output of a" in Path(home.prompt_path("g", "b")).read_text()   # marker stands
    lc.commit_failure(home, plan, c, outcome="interrupted", ended=time.time())
    os.remove(home.marker_path("g", "a", "done"))
    with pytest.raises(lc.Stale, match="^g/a is no longer done$"):
        lc.claim_task(home, plan, "b", worker="w1", kind="external", state_of=lambda t: "done")
    assert not os.path.exists(home.claim_dir("g", "b"))


def _retry_prompt(tmp_path, sub: str, stderr: bytes | None, link_to: Path | None = None) -> str:
    home = submit_home(tmp_path / sub, [{"id": "a", "prompt": "do it", "agent": "true", "retries": 1, "retry_context": "error",
                                   "retry_backoff": 0}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    if stderr is not None:
        Path(home.claim_dir("g", "a"), "stderr").write_bytes(stderr)
    lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=3)
    if link_to is not None:              # the attempt's stderr replaced by a symbolic link
        err = home.attempt_path("g", "a", 1, "err")
        os.remove(err)
        os.symlink(link_to, err)
    _claim(home, "a")
    return Path(home.prompt_path("g", "a")).read_text()


def _tail_of(text: str) -> str:
    return text.split("```\n", 1)[1].split("\n```", 1)[0]


def test_the_stderr_tail_of_a_retry_prompt_at_its_edges(tmp_path):
    assert _tail_of(_retry_prompt(tmp_path, "short", b"e0\ne1\ne2\n")) == "e0\ne1\ne2"        # a short file whole
    text = _retry_prompt(tmp_path, "none", None)                                        # no stderr at all
    assert "It exited with code 3." in text and "stderr" not in text.split("# Previous attempt 1 failed", 1)[1]
    assert _tail_of(_retry_prompt(tmp_path, "bad", b"ok \xff\xfe end\n")) == "ok \ufffd\ufffd end"   # not UTF-8
    exact = b"first line\n" + b"y" * (2000 - 11 - 1) + b"\n"                              # exactly 2000 bytes
    assert _tail_of(_retry_prompt(tmp_path, "exact", exact)).startswith("first line\n")
    words = b"".join(b"w%03d " % i + b"ab " * 48 + b"\n" for i in range(60))           # 151-byte lines with spaces
    tail = _tail_of(_retry_prompt(tmp_path, "words", words)).splitlines()              # the cut line is dropped whole
    assert tail == words[-2000:].decode().split("\n", 1)[1].splitlines() and len(tail) == 13
    assert tail[0].startswith("w047 ") and tail[-1].startswith("w059 ")
    one = b"z" * 3000                                                                   # one long line, no newline
    assert _tail_of(_retry_prompt(tmp_path, "one", one)) == "z" * 2000
    secret = tmp_path / "secret"
    secret.write_text("SECRET\n")
    text = _retry_prompt(tmp_path, "link", b"e0\n", link_to=secret)                    # never read through a link
    assert "SECRET" not in text and "It exited with code 3." in text
    assert "stderr" not in text.split("# Previous attempt 1 failed", 1)[1]               # as with no stderr at all


def test_a_symlinked_awaiting_file_is_not_read(tmp_path):
    home = submit_home(tmp_path, [{"id": "gate", "prompt": "x", "approval": {"prompt": "Go?"}}])
    os.makedirs(home.task_dir("g", "gate"), exist_ok=True)
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps({"prompt": "forged", "since": "2020-01-01T00:00:00Z"}))
    os.symlink(fake, os.path.join(home.task_dir("g", "gate"), "awaiting"))
    assert lc.awaiting_of(home, "g", "gate") is None


def test_run_id_names_the_home_the_folder_and_the_attempt(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    _claim(home, "a")
    h = hashlib.sha1(home.root.encode()).hexdigest()[:8]
    ino = os.stat(home.task_dir("g", "a")).st_ino
    assert lc.run_id(home, "g", "a", 3) == f"{h}:g/a/{ino:x}/3"
    assert lc.run_id(home, "g", "nosuch", 1) == f"{h}:g/nosuch/0/1"
    assert claims.read_owner(home, "g", "a")["run_id"] == lc.run_id(home, "g", "a", 1)


def test_break_if_stale_reaps_the_orphan_by_its_handle_or_run_id_and_records_it_lost(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "kill_grace": 2.5},
                                  {"id": "b", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    _claim(home, "a")
    o = claims.read_owner(home, "g", "a")
    claims.update_owner(home, "g", "a", {**o, "pid": dead_pid()})
    Path(home.claim_dir("g", "a"), "stdout").write_bytes(b"half")
    reaped = []
    got = lc.break_if_stale(home, plan, "a", worker="w2", reap=lambda h, grace, run_id: reaped.append((h, grace, run_id)))
    assert got is not None and got[1:] == (1, None) and got[0].endswith("is gone")
    assert reaped == [({"runner": "process"}, 2.5, o["run_id"])]
    rec = read_json(home.attempt_path("g", "a", 1, "json"))
    assert (rec["outcome"], rec["reason"], rec["worker"], rec["started"], rec["counted"]) == ("lost", got[0], "w1", o["since"], False)
    assert Path(home.attempt_path("g", "a", 1, "out")).read_bytes() == b"half"
    assert not os.path.exists(home.claim_dir("g", "a"))
    assert [n for n in os.listdir(home.task_dir("g", "a")) if n.startswith(".claim")] == []
    # its handle, when published, is what the reaper gets; a claim that died after its marker: no record
    c = _claim(home, "b")
    lc.commit_done(home, plan, c, ended=time.time())
    os.mkdir(home.claim_dir("g", "b"))
    claims.update_owner(home, "g", "b", {**c.owner, "pid": dead_pid(), "handle": {"runner": "process", "pid": 1}})
    reaped.clear()
    n = len(goal_events(home))
    assert tr.break_stale(home, plan, "b", worker="w2", reap=lambda h, grace, run_id: reaped.append(h)).endswith("is gone")
    assert reaped == [{"runner": "process", "pid": 1}]
    assert not os.path.exists(home.attempt_path("g", "b", 1, "json")) and len(goal_events(home)) == n   # ended: no `ready`
    assert lc.break_if_stale(home, plan, "b", worker="w2") is None                                # nothing left


def test_mark_cancelled_names_the_cancel_and_never_covers_done(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    assert lc.mark_cancelled(home, "g", "a", by="me", reason="r", cancel_id="c1") is True
    m = read_json(home.marker_path("g", "a", "cancelled"))
    assert (m["by"], m["reason"], m["cancel_id"]) == ("me", "r", "c1")
    assert set(m) == {"by", "reason", "ts", "cancel_id"} and abs(parse_ts(m["ts"]) - time.time()) < 60
    assert lc.mark_cancelled(home, "g", "a", by="me", reason="again") is False
    lc.commit_done(home, plan, _claim(home, "b"), ended=time.time())
    assert lc.mark_cancelled(home, "g", "b", by="me", reason="r") is False and lc.marker_of(home, "g", "b") == "done"
    assert lc.mark_cancelled(home, "g", "new", by="me", reason="r") is True
    assert "cancel_id" not in read_json(home.marker_path("g", "new", "cancelled"))


def test_scheduler_for_hands_the_scheduler_every_rule_of_the_plan(tmp_path):
    """lifecycle.scheduler_for is the one place the plan's rules reach the scheduler (engine,
    claim, status): max_parallel, on_failure=stop, the files mutex, the budget pool and the usd
    estimates, serial groups, held fan-out templates, aging on the clock it is handed, the
    durations that rank the ready tasks."""
    from dagrun.plan import parse
    from dagrun.simrun import VirtualClock
    doc = {"goal": "g", "max_parallel": 2, "on_failure": "stop", "budget": {"usd": 5}, "aging": 7,
           "tasks": [{"id": "a", "prompt": "x", "agent": "true", "files": ["src/*"], "serial": "s",
                      "estimate": {"usd": 1.5, "seconds": 30}},
                     {"id": "b", "prompt": "x", "agent": "true", "serial": "s"},
                     {"id": "tpl", "for_each": {"from": "a"}, "prompt": "do {{item}}", "agent": "true"}]}
    plan = parse(json.dumps(doc).encode(), shown="dag.json", source=str(tmp_path / "dag.json"), default_goal="g",
                 home=str(tmp_path))
    clock = VirtualClock()
    s = lc.scheduler_for(plan, clock=clock)
    assert (s.max_parallel, s.stop_on_failure, s.budget, s.estimates) == (2, True, {"usd": 5}, {"a": 1.5})
    assert s.files == [("src/*",), (), ()] and s.serial_before == [(), (0,), ()]
    assert s.hold == frozenset({2}) and (s.aging, s.clock) == (7.0, clock)
    assert s.rank[0] >= 30 and s.rank[1] == 1.0           # the remaining path: the plan's estimates, else 1 s
    assert lc.scheduler_for(plan, durations={"b": 4}).rank[1] == 4.0   # the home's history, when handed
    assert lc.scheduler_for(plan).aging is None                          # no clock, no aging
    assert lc.scheduler_for(plan, hold_templates=False).hold == frozenset()   # the simulator's


def test_the_scheduler_read_from_the_files_holds_a_task_the_goal_s_spend_leaves_no_room_for(tmp_path):
    """build_scheduler (a script's claim, cancel, retry) hands the budget rule the pool and
    what the goal spent so far -- here a running attempt's usage file: $0.50 of $1 spent, so
    b's $0.60 estimate waits and c (no estimate) may start."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "x", "agent": "true", "priority": 1,
                                   "estimate": {"usd": 0.6}},
                                  {"id": "c", "prompt": "x", "agent": "true"}], budget={"usd": 1.0})
    _claim(home, "a")
    Path(home.claim_dir("g", "a"), "usage.jsonl").write_text('{"cost_usd": 0.5, "tokens_out": 7}\n')
    sched = _sched(home)
    assert sched.budget == {"usd": 1.0} and sched.spent == {"usd": 0.5, "tokens": 7}
    assert sched.budget_held() == ["b"] and sched.take() is None      # c does not jump the held b


def test_the_rescan_keeps_a_retry_in_its_backoff(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 2, "retry_backoff": 100},
                                  {"id": "b", "prompt": "x", "agent": "true", "retries": 2, "retry_backoff": 0}])
    plan = home.load_plan("g")
    lc.commit_failure(home, plan, _claim(home, "a"), outcome="failed", ended=time.time())
    lc.commit_failure(home, plan, _claim(home, "b"), outcome="failed", ended=time.time())   # no backoff
    sched, facts = lc.build_scheduler(home, plan)
    assert sched.states() == {"a": "retrying", "b": "ready"} and set(facts) == {"a", "b"}
    later = lc.build_scheduler(home, plan, now=time.time() + 1000)[0]
    assert later.states() == {"a": "ready", "b": "ready"}
    assert lc.claim_task(home, plan, "a", worker="w", kind="engine") is None           # still backing off
    assert not os.path.exists(home.claim_dir("g", "a"))


# ------------------------------------------------------------------ transitions.finish and the goal's end


def _strip(e):
    return {k: v for k, v in e.items() if k not in ("ts", "goal", "type")}


def test_finish_done_announces_exactly_the_marker_s_numbers(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]},
                            {"id": "c", "prompt": "x", "agent": "true"}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    c = _claim(home, "a")
    c.started = time.time() - 2
    fin = tr.finish(home, plan, sched, c, ok=True, worker="w5", output_data=b"12345", extra={"usage": {"usd": 0.1}},
                    fields={"first_byte": 0.5})
    assert fin.outcome == "done" and fin.record == read_json(home.marker_path("g", "a", "done"))
    assert fin.changes.ready == ["b"] and fin.changes.blocked == [] and not fin.changes.rebuild
    e = [x for x in goal_events(home, ev.TASK_STATUS) if x["task"] == "a"][-1]
    assert _strip(e) == {"task": "a", "status": "done", "attempt": 1, "worker": "w5", "duration": fin.record["duration"],
                         "exit_code": 0, "output_bytes": 5, "usage": {"usd": 0.1}, "first_byte": 0.5}
    assert [_strip(x) for x in goal_events(home, ev.TASK_STATUS)][-1] == {"task": "b", "status": "ready", "worker": "w5"}
    cb = _claim(home, "b")
    cb.started = c.started
    rec = tr.finish(home, plan, sched, cb, ok=True, worker="w5", output_data=b"", exit_code=3,
                    ended=c.started + 100.25, extra={"node": "n4"}).record
    assert (rec["exit_code"], rec["ended"], rec["duration"]) == (3, now_iso(c.started + 100.25), 100.25)   # `ended` as given
    e = goal_events(home, ev.TASK_STATUS)[-1]
    assert (e["task"], e["exit_code"], e["node"], e["duration"]) == ("b", 3, "n4", 100.25)
    # a cache hit: no exit code, `cached` in the marker and the event
    sched.take()
    fin = tr.finish(home, plan, sched, _claim(home, "c"), ok=True, worker="w5", output_data=b"hit", cached="k1",
                    exit_code=7)
    assert fin.record["cached"] is True and fin.record["cache_key"] == "k1" and fin.record["exit_code"] is None
    e = goal_events(home, ev.TASK_STATUS)[-1]
    assert e["cached"] is True and "exit_code" not in e and e["status"] == "done"


def test_every_event_a_transition_appends_names_its_goal(tmp_path):
    """The line a reader filters on (`jq 'select(.goal == "g")'`, a hook's $DAGRUN_GOAL):
    every event transitions appends -- a task's end, the ready dependent, the goal's end --
    carries the goal's id (the other tests compare events without it)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]}])
    plan, sched = home.load_plan("g"), _sched(home)
    for t in ("a", "b"):
        assert sched.take() == t
        tr.finish(home, plan, sched, _claim(home, t), ok=True, worker="w5", output_data=b"x")
    tr.end_goal_if_finished(home, plan, sched, "w5")
    got = goal_events(home)
    assert {e["type"] for e in got} >= {ev.TASK_STATUS, ev.GOAL_FINISHED}
    assert [e for e in got if e.get("goal") != "g"] == []


def test_finish_failed_retrying_announces_the_retry_and_ready_when_asked(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 2, "retry_backoff": 0},
                                  {"id": "b", "prompt": "x", "agent": "true", "retries": 2, "retry_backoff": 100},
                                  {"id": "d", "prompt": "x", "agent": "true", "deps": ["a"]}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    c = _claim(home, "a")
    fin = tr.finish(home, plan, sched, c, ok=False, worker="w1", exit_code=2, signal=None, reason="bad",
                    announce_ready=True, extra={"usage": {"usd": 2}}, fields={"strays_killed": 1})
    assert fin.outcome == "retrying" and fin.changes == tr.Changes() and sched.state_of("a") == "retrying"
    r, ready = goal_events(home, ev.TASK_STATUS)[-2:]
    assert _strip(r) == {"task": "a", "status": "retrying", "attempt": 1, "worker": "w1", "duration": fin.record["duration"],
                         "exit_code": 2, "reason": "bad", "outcome": "failed", "usage": {"usd": 2},
                         "retry_at": fin.record["retry_at"], "strays_killed": 1}     # `fields` too
    assert _strip(ready) == {"task": "a", "status": "ready", "attempt": 2, "worker": "w1", "reason": "attempt 1: bad"}
    sched.take()
    n = len(goal_events(home))
    fin = tr.finish(home, plan, sched, _claim(home, "b"), ok=False, worker="w1", outcome="timeout", signal=9,
                    announce_ready=True)
    assert fin.outcome == "retrying" and len(goal_events(home)) == n + 1      # its backoff has not ended: no `ready`
    assert goal_events(home)[-1]["signal"] == 9 and goal_events(home)[-1]["outcome"] == "timeout"
    assert fin.record["reason"] == "" and goal_events(home)[-1]["reason"] == ""     # none given: empty
    sched.requeue("a")
    assert sched.take() == "a"
    fin = tr.finish(home, plan, sched, _claim(home, "a"), ok=False, worker="w1", reason="again")
    assert fin.outcome == "retrying" and goal_events(home)[-1]["status"] == "retrying"     # no `ready` unless asked
    sched.requeue("a")
    assert sched.take() == "a"
    n = len(goal_events(home))
    fin = tr.finish(home, plan, sched, _claim(home, "a"), ok=False, worker="w1", reason="conflict", final=True)
    assert fin.outcome == "failed" and fin.record["final"] and fin.changes.blocked == [("d", "a")]
    assert [(_strip(x).get("status"), x.get("task")) for x in goal_events(home)[n:]] == [("failed", "a"), (None, "d")]


def test_finish_a_final_failure_stops_the_goal_unless_already_handled(tmp_path):
    tasks = [{"id": "a", "prompt": "x", "agent": "true", "retries": 0, "priority": 1},
             {"id": "b", "prompt": "x", "agent": "true"}, {"id": "c", "prompt": "x", "agent": "true"}]
    home = submit_home(tmp_path, tasks, on_failure="stop")
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    fin = tr.finish(home, plan, sched, _claim(home, "a"), ok=False, worker="w1", reason="x")
    assert fin.outcome == "failed" and sorted(fin.changes.cancelled) == ["b", "c"]
    assert lc.marker_of(home, "g", "b") == "cancelled"
    assert read_json(home.marker_path("g", "b", "cancelled"))["reason"] == "goal stopped: a failed (on_failure=stop)"
    home2 = submit_home(tmp_path / "2", tasks, on_failure="stop")
    plan2, sched2 = home2.load_plan("g"), _sched(home2)
    sched2.take()
    fin = tr.finish(home2, plan2, sched2, _claim(home2, "a"), ok=False, worker="w1", reason="x", stop_handled=True)
    assert fin.changes.cancelled == [] and lc.marker_of(home2, "g", "b") is None


def test_the_goal_end_is_published_once_with_its_finisher(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan, sched = home.load_plan("g"), _sched(home)
    assert tr.end_goal_if_finished(home, plan, sched, "w1") is None          # not finished
    sched.take()
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x")
    size = os.stat(home.events_path("g")).st_size
    s = tr.end_goal_if_finished(home, plan, sched, "w1")
    assert s == read_json(home.summary_path("g")) and s["events_size"] == size and s["outcome"] == "done"
    fin = s["finisher"]
    assert set(fin) == {"worker", "host", "boot_id", "pid", "pid_start", "nonce"}
    assert (fin["worker"], fin["pid"], fin["host"]) == ("w1", os.getpid(), claims.HOST)
    e = goal_events(home, ev.GOAL_FINISHED)
    assert len(e) == 1 and _strip(e[0]) == {"worker": "w1", "outcome": "done", "counts": {"done": 1},
                                           "failed_roots": [], "finish_id": fin["nonce"]}
    assert tr.end_goal_if_finished(home, plan, sched, "w2") is None           # once
    assert len(goal_events(home, ev.GOAL_FINISHED)) == 1


def test_a_lost_goal_end_of_another_host_waits_a_minute(tmp_path):
    home = _ended_goal(tmp_path)
    s = _far_summary(home, "n1", 0)
    assert tr.announce_if_lost(home, "g", "w2") is False                     # written just now: give it a minute
    old = time.time() - 61
    os.utime(home.summary_path("g"), (old, old))
    assert tr.announce_if_lost(home, "g", "w2") is True
    e = goal_events(home, ev.GOAL_FINISHED)
    assert len(e) == 1 and _strip(e[0]) == {"worker": "w2", "outcome": "done", "counts": {"done": 1}, "failed_roots": [],
                                           "finish_id": "n1", "recovered": True}
    assert tr.announce_if_lost(home, "g", "w3") is False and len(goal_events(home, ev.GOAL_FINISHED)) == 1
    Path(home.summary_path("g")).write_text(json.dumps({**s, "finisher": {}}))
    assert tr.announce_if_lost(home, "g", "w3") is False


# ------------------------------------------------------------------ claim.py: the primitives


def test_env_seconds_takes_a_non_negative_number_or_the_default(monkeypatch):
    for raw, want in (("2.5", 2.5), ("0", 0.0), ("-1", 10.0), ("x", 10.0), ("", 10.0)):
        monkeypatch.setenv("DAGRUN_TEST_SECONDS", raw)
        assert claims._env_seconds("DAGRUN_TEST_SECONDS", 10.0) == want, raw
    monkeypatch.delenv("DAGRUN_TEST_SECONDS")
    assert claims._env_seconds("DAGRUN_TEST_SECONDS", 3.0) == 3.0


def test_new_owner_names_this_process_or_the_given_one():
    before = time.time()
    o = claims.new_owner("w1", 4, kind="external")
    assert set(o) == {"worker", "host", "boot_id", "pid", "pid_start", "attempt", "since", "kind", "nonce", "handle"}
    assert (o["worker"], o["host"], o["boot_id"], o["pid"], o["pid_start"], o["attempt"], o["kind"], o["handle"]) == (
        "w1", HOST, BOOT_ID, os.getpid(), self_start(), 4, "external", None)
    assert len(o["nonce"]) == 12 and int(o["nonce"], 16) >= 0 and o["nonce"] != claims.new_owner("w1", 4, kind="x")["nonce"]
    assert before - 1 <= parse_ts(o["since"]) <= time.time() + 1
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        o = claims.new_owner("w2", 1, kind="external", pid=child.pid)
        assert o["pid"] == child.pid and o["pid_start"] == proc_start(child.pid) and o["pid_start"] != self_start()
    finally:
        child.kill()
        child.wait()


def test_release_removes_a_claim_with_files_left_in_it(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    assert claims.acquire(home, "g", "a")
    Path(home.claim_dir("g", "a"), "stdout").write_bytes(b"x")
    claims.release(home, "g", "a")
    assert [n for n in os.listdir(home.task_dir("g", "a")) if "claim" in n] == []
    claims.release(home, "g", "a")                         # nothing to release: no error
    assert claims.acquire(home, "g", "a") and not claims.acquire(home, "g", "a")


def test_a_symlinked_task_folder_is_refused_and_a_missing_one_made(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    os.symlink(tmp_path, home.task_dir("g", "b"))
    with pytest.raises(FsError, match="symbolic link"):
        claims.acquire(home, "g", "b")
    assert not os.path.exists(tmp_path / "claim")
    assert claims.acquire(home, "g", "c") and os.path.isdir(home.claim_dir("g", "c"))


def test_holds_and_heartbeat_age(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    assert claims.heartbeat_age(home, "g", "a") is None and not claims.holds(home, "g", "a", "n")
    assert claims.acquire(home, "g", "a")
    o = claims.new_owner("w1", 1, kind="engine")
    claims.update_owner(home, "g", "a", o)
    assert claims.holds(home, "g", "a", o["nonce"]) and not claims.holds(home, "g", "a", "other")
    now = time.time()
    os.utime(home.owner_path("g", "a"), (now - 50, now - 50))
    assert claims.heartbeat_age(home, "g", "a", now) == pytest.approx(50, abs=0.01)
    Path(home.heartbeat_path("g", "a")).write_bytes(b"")
    os.utime(home.heartbeat_path("g", "a"), (now - 20, now - 20))
    assert claims.heartbeat_age(home, "g", "a", now) == pytest.approx(20, abs=0.01)     # the newest of the two
    os.utime(home.heartbeat_path("g", "a"), (now - 80, now - 80))
    assert claims.heartbeat_age(home, "g", "a", now) == pytest.approx(50, abs=0.01)
    assert 49 < claims.heartbeat_age(home, "g", "a") < 60


def _can_flock(path: str, mode: int) -> bool:
    """Whether another open file description could take `mode` (LOCK_SH/LOCK_EX) on path now."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_the_edit_lock_is_shared_or_exclusive(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    path = os.path.join(home.goal_dir("g"), ".edit.lock")
    with claims.edit_lock(home, "g"):
        assert _can_flock(path, fcntl.LOCK_SH) and not _can_flock(path, fcntl.LOCK_EX)
    with claims.edit_lock(home, "g", exclusive=True):
        assert not _can_flock(path, fcntl.LOCK_SH)
    assert _can_flock(path, fcntl.LOCK_EX)                 # released
    with claims.edit_lock(home, "nosuch"):                 # no goal: nothing to lock, nothing made
        pass
    assert not os.path.exists(home.goal_dir("nosuch"))


# ------------------------------------------------------------------ hooks of a cascade, Changes, finishers of another boot


def _wait_files(d: Path, n: int, timeout: float = 15.0) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        names = sorted(x for x in os.listdir(d) if not x.startswith("."))
        if len(names) >= n:
            return names
        time.sleep(0.05)
    return sorted(x for x in os.listdir(d) if not x.startswith("."))


def _recorder(tmp_path: Path) -> tuple[Path, list[str]]:
    """A hook that saves its stdin (the event) as <folder>/<hook event>-<task>."""
    got = tmp_path / "hooks-ran"
    got.mkdir()
    name = '"$DAGRUN_HOOK_EVENT-$DAGRUN_TASK"'          # published by rename: never read half-written
    return got, ["sh", "-c", f'cat > "{got}"/.{name} && mv "{got}"/.{name} "{got}"/{name}']


def test_a_final_failure_under_stop_runs_the_failed_blocked_and_cancelled_hooks_once(tmp_path):
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0, "priority": 1},
                            {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]},
                            {"id": "c", "prompt": "x", "agent": "true"}],
                 on_failure="stop", hooks={"on_failed": [hook], "on_blocked": [hook], "on_cancelled": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    fin = tr.finish(home, plan, sched, _claim(home, "a"), ok=False, worker="w1", reason="bad")
    assert fin.changes.blocked == [("b", "a")] and fin.changes.cancelled == ["c"]
    assert _wait_files(got, 3) == ["on_blocked-b", "on_cancelled-c", "on_failed-a"]
    blocked = json.loads((got / "on_blocked-b").read_text())
    assert (blocked["type"], blocked["task"], blocked["blocked_by"], blocked["reason"]) == (
        ev.TASK_BLOCKED, "b", "a", "failed dependency")
    cancelled = json.loads((got / "on_cancelled-c").read_text())
    assert (cancelled["status"], cancelled["worker"], cancelled["reason"]) == (
        "cancelled", "w1", "goal stopped: a failed (on_failure=stop)")
    assert json.loads((got / "on_failed-a").read_text())["reason"] == "bad"
    assert read_json(home.marker_path("g", "c", "cancelled"))["by"] == "w1"
    end = time.monotonic() + 15
    while time.monotonic() < end and [n for n in os.listdir(home.hooks_due_dir("g")) if n.endswith(".json")]:
        time.sleep(0.05)
    assert [n for n in os.listdir(home.hooks_due_dir("g")) if n.endswith(".json")] == []   # all delivered
    time.sleep(0.2)
    assert len(os.listdir(got)) == 3                                                     # once each


def test_a_hook_that_fails_after_a_transition_is_reported_as_an_event(tmp_path):
    """The hooks a transition starts report a failure back: a `hook.failed` event naming the
    hook and the goal's last_failure.json (what `dagrun status` shows)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}],
                       hooks={"on_done": [["sh", "-c", "exit 1"]]})
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x")
    end = time.monotonic() + 15
    while time.monotonic() < end and not goal_events(home, ev.HOOK_FAILED, polling=True):
        time.sleep(0.05)
    e = goal_events(home, ev.HOOK_FAILED)
    assert [(x["task"], x["hook_event"], x["hook"]) for x in e] == [("a", "on_done", "sh -c exit 1")], e
    assert read_json(os.path.join(home.hooks_due_dir("g"), "last_failure.json")) == e[0]


def test_a_held_event_is_on_disk_before_the_hooks_it_starts_read_it(tmp_path):
    """In the engine's turn (events held in memory, written once per turn) an event with hooks
    is written out before its hooks start: a hook reading events.jsonl finds its own event."""
    got = tmp_path / "seen"
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}],
                       hooks={"on_done": [["sh", "-c", f'cp "$DAGRUN_HOME/goals/g/events.jsonl" {got}.tmp && mv {got}.tmp {got}']]})
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    ev.hold()
    try:
        tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x")
        end = time.monotonic() + 15
        while time.monotonic() < end and not got.exists():
            time.sleep(0.05)
        seen = [json.loads(x) for x in got.read_bytes().splitlines()]
    finally:
        ev.release()
    assert [(e["task"], e["status"]) for e in seen if e["type"] == ev.TASK_STATUS][-1] == ("a", "done")


def test_an_event_of_a_goal_whose_plan_cannot_be_read_is_appended_without_hooks(tmp_path):
    """A cancel handed no plan finds the event's hooks from the goal's plan.json; when that
    cannot be read (a goal being replaced or removed) the event is still appended, no hook."""
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}], hooks={"on_cancelled": [hook]})
    sched = _sched(home)
    Path(home.plan_path("g")).write_text("{not json")
    new, _ = tr.cancel(home, sched, "g", "a", by="me", reason="r")
    assert new and goal_events(home, ev.TASK_STATUS)[-1]["status"] == "cancelled"
    time.sleep(0.3)
    assert os.listdir(got) == [] and not os.path.isdir(home.hooks_due_dir("g"))


def test_changes_extend_concatenates_and_keeps_a_rebuild():
    a = tr.Changes(ready=["r1"], blocked=[("b1", "x")], cancelled=["c1"], skipped=[("s1", "y")])
    a.extend(tr.Changes(ready=["r2"], blocked=[("b2", "z")], cancelled=["c2"], skipped=[("s2", "w")], rebuild=True))
    assert a == tr.Changes(ready=["r1", "r2"], blocked=[("b1", "x"), ("b2", "z")], cancelled=["c1", "c2"],
                           skipped=[("s1", "y"), ("s2", "w")], rebuild=True)
    a.extend(tr.Changes())
    assert a.rebuild is True and a.ready == ["r1", "r2"]


def test_a_goal_end_of_a_finisher_before_a_reboot_or_with_a_reused_pid(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x")
    base = {"outcome": "done", "counts": {"done": 1}, "failed_roots": []}
    # this host, an earlier boot: judged like another host's (its summary is fresh: wait)
    Path(home.summary_path("g")).write_text(json.dumps({**base, "finisher": {
        "worker": "old", "host": HOST, "boot_id": "an-earlier-boot", "pid": dead_pid(), "pid_start": "1", "nonce": "n1"}}))
    assert tr.announce_if_lost(home, "g", "w2") is False
    # this host and boot, our pid with another start time: the finisher is dead, announce for it
    Path(home.summary_path("g")).write_text(json.dumps({**base, "finisher": {
        "worker": "old", "host": HOST, "boot_id": BOOT_ID, "pid": os.getpid(), "pid_start": "1", "nonce": "n2"}}))
    assert tr.announce_if_lost(home, "g", "w2") is True
    assert [e["finish_id"] for e in goal_events(home, ev.GOAL_FINISHED)] == ["n2"]


def _ended_goal(tmp_path, **top):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}], **top)
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x")
    return home


def _far_summary(home, nonce: str, age: float) -> dict:
    """Another host's summary.json for goal g, `age` seconds old; returned as written."""
    s = {"outcome": "done", "counts": {"done": 1}, "failed_roots": [],
         "finisher": {"worker": "far1", "host": "far", "boot_id": "b", "pid": 1, "pid_start": "1", "nonce": nonce}}
    Path(home.summary_path("g")).write_text(json.dumps(s))
    old = time.time() - age
    os.utime(home.summary_path("g"), (old, old))
    return s


def test_a_lost_goal_end_is_announced_after_exactly_a_minute_under_the_break_lock_without_hooks(tmp_path):
    got = tmp_path / "hooks-ran"
    got.mkdir()
    home = _ended_goal(tmp_path, hooks={"on_goal_finished": [["sh", "-c", f"cat > {got}/ran"]]})
    _far_summary(home, "n1", 60.5)
    with break_lock_held(home):
        t0 = time.monotonic()
        assert tr.announce_if_lost(home, "g", "w2") is True
        assert time.monotonic() - t0 > 0.3                       # it waited for the other process's lock
    assert [e["finish_id"] for e in goal_events(home, ev.GOAL_FINISHED)] == ["n1"]
    time.sleep(0.5)
    assert os.listdir(got) == []      # the hooks are the dead finisher's pending record's business


def test_a_goal_end_announced_long_ago_is_found_in_the_whole_file(tmp_path):
    home = _ended_goal(tmp_path)
    _far_summary(home, "n9", 120)
    assert tr.announce_if_lost(home, "g", "w2") is True
    for i in range(700):                                         # > 64 KiB of later events
        ev.emit(home, "g", ev.TASK_STATUS, task="a", status="note", pad="p" * 100, i=i)
    assert os.path.getsize(home.events_path("g")) > 70000
    assert tr.announce_if_lost(home, "g", "w3") is False         # beyond the tail: found under the lock
    assert [e["finish_id"] for e in goal_events(home, ev.GOAL_FINISHED)] == ["n9"]


def _due(home: Home) -> list[str]:
    d = home.hooks_due_dir("g")
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.startswith("due-") and n.endswith(".json"))


def _skip_b(tmp_path: Path, hook: list[str]):
    """a done with "no"; b's `when` wants "yes" (claimed: skip set); c below b."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                            {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"],
                             "when": {"output_of": "a", "contains": "yes"}},
                            {"id": "c", "prompt": "z", "agent": "true", "deps": ["b"]}],
                 hooks={"on_skipped": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"no\n")
    assert sched.take() == "b"
    cb = lc.claim_task(home, plan, "b", worker="w1", kind="external")
    assert cb.skip
    return home, plan, sched, cb


def test_a_skip_runs_the_on_skipped_hooks_of_the_task_and_of_those_its_rule_skips(tmp_path):
    got, hook = _recorder(tmp_path)
    home, plan, sched, cb = _skip_b(tmp_path, hook)
    ch = tr.skip(home, plan, sched, cb, worker="w1")
    assert ch.skipped == [("c", "b")]
    sid = read_json(home.marker_path("g", "b", "skipped"))["skip_id"]     # the marker names the skip (hooks)
    assert isinstance(sid, str) and len(sid) == 16
    assert _wait_files(got, 2) == ["on_skipped-b", "on_skipped-c"]
    b, c = (json.loads((got / n).read_text()) for n in ("on_skipped-b", "on_skipped-c"))
    assert (b["task"], b["status"], b["reason"], b["worker"]) == ("b", "skipped", cb.skip, "w1")
    assert (c["task"], c["status"], c["reason"], c["skipped_by"], c["derived"]) == ("c", "skipped", "b was skipped", "b", True)
    end = time.monotonic() + 15
    while time.monotonic() < end and _due(home):
        time.sleep(0.05)
    assert _due(home) == []              # both records published before b's marker were settled and delivered


def _cut_off_then_replayed(home: Home, monkeypatch, commit, records: int, where: str = "_status",
                           status: str | None = None) -> None:
    """commit() dies between its marker (the commit point) and its event (an exception where
    the event's append would be; status: only at the event of that status); its pending hook
    records, published before the marker, are left as by a dead process and the next process
    replays them."""
    real = getattr(tr, where)

    def dies(*a, **k):
        if status is not None and a[4] != status:
            return real(*a, **k)
        raise SystemExit("killed between the marker and the event")
    monkeypatch.setattr(tr, where, dies)
    with pytest.raises(SystemExit):
        commit()
    monkeypatch.undo()
    assert len(_due(home)) == records
    dead = dead_pid()
    for path in _due(home):
        rec = read_json(path)
        assert rec["pending"] is True
        rec["owner"]["pid"] = dead
        Path(path).write_bytes(json.dumps(rec).encode())
    assert tr.replay_hooks(home, "g", "w2") == records


def test_on_skipped_hooks_of_a_skip_cut_off_before_its_event_run_from_their_records(tmp_path, monkeypatch):
    """b's own record and c's (skipped by its trigger rule) run with the events the dead
    process was going to append."""
    got, hook = _recorder(tmp_path)
    home, plan, sched, cb = _skip_b(tmp_path, hook)
    _cut_off_then_replayed(home, monkeypatch, lambda: tr.skip(home, plan, sched, cb, worker="w1"), 2)
    assert lc.marker_of(home, "g", "b") == "skipped"
    assert _wait_files(got, 2) == ["on_skipped-b", "on_skipped-c"]
    b, c = (json.loads((got / n).read_text()) for n in ("on_skipped-b", "on_skipped-c"))
    assert (b["task"], b["status"], b["reason"]) == ("b", "skipped", cb.skip)
    assert (c["task"], c["status"], c["reason"], c["skipped_by"], c["derived"]) == ("c", "skipped", "b was skipped", "b", True)


def test_hooks_of_a_cancel_cut_off_before_its_event_run_from_their_records(tmp_path, monkeypatch):
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                            {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]}],
                 hooks={"on_cancelled": [hook], "on_blocked": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    _cut_off_then_replayed(home, monkeypatch,
                           lambda: tr.cancel(home, sched, "g", "a", by="me", reason="r", plan=plan), 2)
    assert lc.marker_of(home, "g", "a") == "cancelled"
    assert _wait_files(got, 2) == ["on_blocked-b", "on_cancelled-a"]
    a, b = (json.loads((got / n).read_text()) for n in ("on_cancelled-a", "on_blocked-b"))
    assert (a["task"], a["status"]) == ("a", "cancelled")
    assert (b["type"], b["task"], b["blocked_by"]) == (ev.TASK_BLOCKED, "b", "a")


@pytest.mark.parametrize("hook_on, named, ran", [("on_cancelled", True, ["on_cancelled-a"]),
                                                 ("on_blocked", True, ["on_blocked-b", "on_blocked-c"]),
                                                 ("on_skipped", False, []), (None, False, [])])
def test_a_cancel_names_itself_in_its_marker_when_hooks_are_due_for_it(tmp_path, hook_on, named, ran):
    """The hooks a cancel causes (its own on_cancelled, its dependents' on_blocked) have their
    records published before the marker, which names the cancel (a replay runs them only for
    it); with none due the marker names nothing. A cancel never skips a task (every trigger
    rule counts a cancelled dependency as failed), so an on_skipped hook alone is not due."""
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                            {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]},
                            {"id": "c", "prompt": "x", "agent": "true", "deps": ["a"], "trigger": "one_success"}],
                 **({"hooks": {hook_on: [hook]}} if hook_on else {}))
    plan, sched = home.load_plan("g"), _sched(home)
    new, ch = tr.cancel(home, sched, "g", "a", by="me", reason="not needed", plan=plan)
    assert new and ch.blocked == [("b", "a"), ("c", "a")] and ch.skipped == []
    m = read_json(home.marker_path("g", "a", "cancelled"))
    assert (m["by"], m["reason"]) == ("me", "not needed")
    assert ("cancel_id" in m) is named and (not named or len(m["cancel_id"]) == 16)
    assert _wait_files(got, len(ran)) == ran
    assert [(e["task"], e["worker"]) for e in goal_events(home, ev.TASK_BLOCKED)] == [("b", "me"), ("c", "me")]
    n = len(goal_events(home))
    assert tr.cancel(home, sched, "g", "a", by="me", reason="again", plan=plan)[0] is False   # no repeat unless asked
    assert len(goal_events(home)) == n and read_json(home.marker_path("g", "a", "cancelled"))["reason"] == "not needed"
    end = time.monotonic() + 15
    while time.monotonic() < end and os.path.isdir(home.hooks_due_dir("g")) and _due(home):
        time.sleep(0.05)
    assert not os.path.isdir(home.hooks_due_dir("g")) or _due(home) == []   # every record settled and delivered
    time.sleep(0.3)
    assert sorted(os.listdir(got)) == ran


def test_a_cancel_without_the_plan_marks_and_announces_it(tmp_path):
    """cancel's plan is optional: without it nothing is published before the marker (which
    names no cancel); the event's hooks are found from the goal's plan after it."""
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true"}],
                 hooks={"on_cancelled": [hook]})
    sched = _sched(home)
    new, ch = tr.cancel(home, sched, "g", "a", by="me", reason="r")
    assert new and ch == tr.Changes() and "cancel_id" not in read_json(home.marker_path("g", "a", "cancelled"))
    assert _wait_files(got, 1) == ["on_cancelled-a"]
    assert tr.cancel(home, sched, "g", "a", by="me", reason="r", repeat=True)[0] is False
    e = goal_events(home, ev.TASK_STATUS)[-1]
    assert (e["task"], e["status"], e["repeated"], e["worker"], e["reason"]) == ("a", "cancelled", True, "me", "r")


def _unpublishable(home: Home, t: str, marker: str) -> None:
    """t's `marker` cannot be published: a folder stands where its temporary file goes."""
    from dagrun import fsio
    os.makedirs(os.path.join(fsio.tmp_name(home.marker_path("g", t, marker)), "x"))


@pytest.mark.parametrize("which", ["skip", "finish", "fail", "cancel"])
def test_hook_records_published_for_a_commit_that_fails_are_withdrawn(tmp_path, which):
    """The pending records published before a commit point (on_skipped of the task and of
    those its rule would skip, on_done, on_cancelled / on_blocked) go when the marker cannot
    be written: nothing is due, nothing runs."""
    got, hook = _recorder(tmp_path)
    hooks = {"on_skipped": [hook], "on_done": [hook], "on_cancelled": [hook], "on_blocked": [hook], "on_failed": [hook]}
    if which == "skip":
        home, plan, sched, cb = _skip_b(tmp_path, hook)
        _unpublishable(home, "b", "skipped")
        n = len(_due(home)) if os.path.isdir(home.hooks_due_dir("g")) else 0
        with pytest.raises(FsError):
            tr.skip(home, plan, sched, cb, worker="w1")
    else:
        home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                {"id": "d", "prompt": "x", "agent": "true", "deps": ["a"], "trigger": "one_failed"},
                                {"id": "e", "prompt": "x", "agent": "true", "deps": ["a"]}], hooks=hooks)
        plan, sched = home.load_plan("g"), _sched(home)
        n = 0
        if which in ("finish", "fail"):
            sched.take()
            c = _claim(home, "a")
            _unpublishable(home, "a", "done" if which == "finish" else "failed")
            with pytest.raises(FsError):
                tr.finish(home, plan, sched, c, ok=which == "finish", worker="w1", output_data=b"x", final=True)
            assert lc.marker_of(home, "g", "a") is None and os.path.exists(home.owner_path("g", "a"))
        else:
            _unpublishable(home, "a", "cancelled")
            with pytest.raises(FsError):
                tr.cancel(home, sched, "g", "a", by="me", reason="r", plan=plan)
            assert lc.marker_of(home, "g", "a") is None
    assert os.path.isdir(home.hooks_due_dir("g"))         # records were published, then withdrawn
    assert len(_due(home)) == n
    time.sleep(0.3)
    assert os.listdir(got) == []


def test_a_goal_end_lost_by_its_finisher_is_announced_by_the_next_to_look(tmp_path):
    home = _ended_goal(tmp_path)
    _far_summary(home, "n7", 61)
    plan = home.load_plan("g")
    sched = _sched(home)
    assert sched.is_finished()
    assert tr.end_goal_if_finished(home, plan, sched, "w7") is None        # written already: not again
    e = goal_events(home, ev.GOAL_FINISHED)
    assert [(x["finish_id"], x["worker"], x["outcome"]) for x in e] == [("n7", "w7", "done")]


def test_a_goal_end_without_events_jsonl_has_no_events_size(tmp_path):
    """events.jsonl is the change feed, not the truth: removed, the summary is still written
    (without the size it had when the summary was built) and the file starts again."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x")
    os.remove(home.events_path("g"))
    s = tr.end_goal_if_finished(home, plan, sched, "w1")
    assert s["outcome"] == "done" and "events_size" not in s and "events_size" not in read_json(home.summary_path("g"))
    assert [e["type"] for e in goal_events(home)] == [ev.GOAL_FINISHED]


def _finished_but_not_ended(tmp_path: Path, **top):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}], **top)
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x")
    assert sched.is_finished() and not os.path.exists(home.summary_path("g"))
    return home, plan, sched


def test_the_goal_end_of_a_finisher_cut_off_before_its_event_runs_its_hooks_from_their_record(tmp_path, monkeypatch):
    got, hook = _recorder(tmp_path)
    home, plan, sched = _finished_but_not_ended(tmp_path, hooks={"on_goal_finished": [hook]})
    _cut_off_then_replayed(home, monkeypatch, lambda: tr.end_goal_if_finished(home, plan, sched, "w1"), 1, "_emit")
    nonce = read_json(home.summary_path("g"))["finisher"]["nonce"]
    assert _wait_files(got, 1) == ["on_goal_finished-"]
    e = json.loads((got / "on_goal_finished-").read_text())
    assert (e["type"], e["finish_id"]) == (ev.GOAL_FINISHED, nonce)


def test_a_finisher_that_loses_the_race_for_summary_json_leaves_the_winner_s(tmp_path, monkeypatch):
    """Two processes find the goal ended at once: the summary is published exclusively (link),
    so the one that comes second keeps the first's -- and announces it for the first, which died --
    and withdraws the on_goal_finished record it had published before trying."""
    got, hook = _recorder(tmp_path)
    home, plan, sched = _finished_but_not_ended(tmp_path, hooks={"on_goal_finished": [hook]})
    from dagrun import fsio, summary
    build = summary.build_summary
    theirs = {"outcome": "done", "counts": {"done": 1}, "failed_roots": [],       # a finisher that died at once
              "finisher": {"worker": "w0", "host": HOST, "boot_id": BOOT_ID, "pid": dead_pid(), "pid_start": "1",
                           "nonce": "n1"}}

    def meanwhile(*a, **k):            # the other finisher publishes while this one builds its own
        out = build(*a, **k)
        fsio.write_atomic(home.summary_path("g"), json.dumps(theirs).encode())
        return out
    monkeypatch.setattr(summary, "build_summary", meanwhile)
    s = tr.end_goal_if_finished(home, plan, sched, "w1")
    assert s["finisher"]["worker"] == "w1" and read_json(home.summary_path("g")) == theirs
    e = goal_events(home, ev.GOAL_FINISHED)                   # announced once, for the dead winner
    assert [(x["finish_id"], x["worker"]) for x in e] == [("n1", "w1")]
    assert _due(home) == []                                   # the loser's own record withdrawn


def test_a_summary_that_cannot_be_written_is_one_line_and_withdraws_its_hook_record(tmp_path):
    got, hook = _recorder(tmp_path)
    home, plan, sched = _finished_but_not_ended(tmp_path, hooks={"on_goal_finished": [hook]})
    from dagrun import fsio
    os.makedirs(os.path.join(fsio.tmp_name(home.summary_path("g")), "x"))
    with pytest.raises(FsError) as e:
        tr.end_goal_if_finished(home, plan, sched, "w1")
    assert str(e.value).startswith(f"cannot write {home.summary_path('g')}: ") and "\n" not in str(e.value)
    assert not os.path.exists(home.summary_path("g")) and _due(home) == [] and goal_events(home, ev.GOAL_FINISHED) == []
    time.sleep(0.3)
    assert os.listdir(got) == []


def test_hooks_of_a_final_failure_cut_off_before_its_event_run_from_their_records(tmp_path, monkeypatch):
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0},
                            {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]}],
                 hooks={"on_failed": [hook], "on_blocked": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    c = _claim(home, "a")
    _cut_off_then_replayed(home, monkeypatch,
                           lambda: tr.finish(home, plan, sched, c, ok=False, worker="w1", reason="bad"), 2)
    assert _wait_files(got, 2) == ["on_blocked-b", "on_failed-a"]
    b = json.loads((got / "on_blocked-b").read_text())
    assert (b["type"], b["task"], b["blocked_by"]) == (ev.TASK_BLOCKED, "b", "a")


def test_hooks_of_a_stop_s_cancel_cut_off_before_its_event_run_from_their_records(tmp_path, monkeypatch):
    """on_failure=stop: the cancels of the tasks not started publish their on_cancelled
    records before their markers too (stop_goal hands cancel the plan)."""
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0, "priority": 1},
                            {"id": "c", "prompt": "x", "agent": "true"}],
                 on_failure="stop", hooks={"on_cancelled": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    c = _claim(home, "a")
    _cut_off_then_replayed(home, monkeypatch,
                           lambda: tr.finish(home, plan, sched, c, ok=False, worker="w1", reason="bad"), 1,
                           status="cancelled")
    assert lc.marker_of(home, "g", "c") == "cancelled"
    assert _wait_files(got, 1) == ["on_cancelled-c"]


def test_break_stale_judges_another_host_by_the_lease_it_is_given_and_announces_the_task_ready(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])       # the plan's lease: 60 s
    plan = home.load_plan("g")
    c = _claim(home, "a")
    claims.update_owner(home, "g", "a", {**c.owner, "host": "elsewhere", "boot_id": "b", "pid": 1})
    old = time.time() - 5
    os.utime(home.owner_path("g", "a"), (old, old))
    assert tr.break_stale(home, plan, "a", worker="w2") is None                 # 5 s < the plan's 60 s
    n = len(goal_events(home))
    why = tr.break_stale(home, plan, "a", worker="w2", lease=2.0)              # 5 s > the lease given
    assert why is not None and not os.path.exists(home.claim_dir("g", "a"))
    assert read_json(home.attempt_path("g", "a", 1, "json"))["outcome"] == "lost"
    e = goal_events(home)[n:]
    assert [_strip(x) for x in e] == [{"task": "a", "status": "ready", "attempt": 2, "worker": "w2",
                                       "reason": f"claim broken: {why}"}]


@pytest.mark.parametrize("conflict", [False, True])
def test_the_finisher_integrates_a_code_workspace_goal_that_ended_done(tmp_path, conflict):
    """workspace.integrate: the task branches merged once every task is done -- the event
    names the branch, its head and what was merged, or the conflict; a failed goal is not
    integrated."""
    from test_workspace import git, make_repo
    repo = make_repo(tmp_path / "plan" / "repo")
    home = submit_home(tmp_path, [{"id": "A", "prompt": "x", "agent": "true"}, {"id": "B", "prompt": "x", "agent": "true"}],
                 workspace={"repo": "repo", "integrate": True})
    plan, sched = home.load_plan("g"), _sched(home)
    for t in ("A", "B"):
        assert sched.take() == t
        c = _claim(home, t)
        Path(c.workspace.path, "a.txt" if conflict else f"{t}.txt").write_text(t + "\n")
        tr.finish(home, plan, sched, c, ok=True, worker="w1", output_data=b"")
    s = tr.end_goal_if_finished(home, plan, sched, "w9")
    assert s["outcome"] == "done"
    e = goal_events(home, ev.GOAL_INTEGRATED)
    assert len(e) == 1 and e[0]["worker"] == "w9"
    if conflict:
        assert "error" in e[0] and "B" in e[0]["error"] and "branch" not in e[0]
    else:
        assert e[0]["branch"] == "dagrun/g/_integrated" and e[0]["merged"] == ["A", "B"]
        assert e[0]["head"] == git(repo, "rev-parse", "dagrun/g/_integrated")
        assert git(repo, "show", "dagrun/g/_integrated:B.txt") == "B"
        # a finisher that died before announcing: whoever announces for it integrates too
        _far_summary(home, "n5", 61)
        assert tr.announce_if_lost(home, "g", "w2") is True
        e = goal_events(home, ev.GOAL_INTEGRATED)
        assert len(e) == 2 and e[1]["worker"] == "w2" and e[1]["branch"] == "dagrun/g/_integrated"
    # a goal that did not end done: nothing integrated
    make_repo(tmp_path / "2" / "plan" / "repo")
    home2 = submit_home(tmp_path / "2", [{"id": "A", "prompt": "x", "agent": "true", "retries": 0}],
                  workspace={"repo": "repo", "integrate": True})
    plan2, sched2 = home2.load_plan("g"), _sched(home2)
    sched2.take()
    tr.finish(home2, plan2, sched2, _claim(home2, "A"), ok=False, worker="w1", reason="x")
    assert tr.end_goal_if_finished(home2, plan2, sched2, "w9")["outcome"] != "done"
    assert goal_events(home2, ev.GOAL_INTEGRATED) == []


def test_the_goal_end_runs_its_hooks_once_from_the_record_published_before_the_summary(tmp_path):
    got, hook = _recorder(tmp_path)
    home, plan, sched = _finished_but_not_ended(tmp_path, hooks={"on_goal_finished": [hook]})
    s = tr.end_goal_if_finished(home, plan, sched, "w1")
    assert _wait_files(got, 1) == ["on_goal_finished-"]
    assert json.loads((got / "on_goal_finished-").read_text())["finish_id"] == s["finisher"]["nonce"]
    end = time.monotonic() + 15
    while time.monotonic() < end and _due(home):
        time.sleep(0.05)
    assert _due(home) == []              # the record published before the summary was settled, run, removed
    time.sleep(0.3)
    assert os.listdir(got) == ["on_goal_finished-"]


def test_hooks_of_a_success_cut_off_before_its_event_run_from_their_records(tmp_path, monkeypatch):
    """a's done marker skips d (one_failed: none failed): a's on_done record and d's on_skipped
    record, both published before the marker, run after the cut-off."""
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                            {"id": "d", "prompt": "x", "agent": "true", "deps": ["a"], "trigger": "one_failed"}],
                 hooks={"on_done": [hook], "on_skipped": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    c = _claim(home, "a")
    _cut_off_then_replayed(home, monkeypatch,
                           lambda: tr.finish(home, plan, sched, c, ok=True, worker="w1", output_data=b"x"), 2)
    assert _wait_files(got, 2) == ["on_done-a", "on_skipped-d"]
    d = json.loads((got / "on_skipped-d").read_text())
    assert (d["task"], d["status"], d["derived"]) == ("d", "skipped", True)
    # no dependency was skipped: no skipped_by (not itself), its rule is the reason (scheduler.skip_reason)
    assert "skipped_by" not in d and d["reason"] == "trigger one_failed: no dependency failed"


def test_a_success_runs_the_on_skipped_hooks_of_what_it_skips_once_from_their_records(tmp_path):
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                            {"id": "d", "prompt": "x", "agent": "true", "deps": ["a"], "trigger": "one_failed"}],
                 hooks={"on_skipped": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    fin = tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x")
    assert fin.changes.skipped == [("d", None)]
    assert _wait_files(got, 1) == ["on_skipped-d"]
    end = time.monotonic() + 15
    while time.monotonic() < end and _due(home):
        time.sleep(0.05)
    assert _due(home) == []              # the record published before a's marker was settled, run, removed
    time.sleep(0.3)
    assert os.listdir(got) == ["on_skipped-d"]


def test_a_forced_failure_records_who_forced_it_and_its_event_names_the_node(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0}])
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    fin = tr.finish(home, plan, sched, _claim(home, "a"), ok=False, worker="me", reason="stuck",
                    forced={"forced_by": "me", "held_by": "w1"}, extra={"node": "n4"})
    m = read_json(home.marker_path("g", "a", "failed"))
    assert (fin.record["forced_by"], fin.record["held_by"]) == ("me", "w1") == (m["forced_by"], m["held_by"])
    e = goal_events(home, ev.TASK_STATUS)[-1]
    assert (e["status"], e["node"], e["forced_by"], e["held_by"]) == ("failed", "n4", "me", "w1")


def test_the_on_retrying_hook_of_a_retry_cut_off_before_its_event_runs_from_its_record(tmp_path, monkeypatch):
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 1, "retry_backoff": 0}],
                 hooks={"on_retrying": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    c = _claim(home, "a")
    _cut_off_then_replayed(home, monkeypatch,
                           lambda: tr.finish(home, plan, sched, c, ok=False, worker="w1", reason="bad"), 1)
    assert _wait_files(got, 1) == ["on_retrying-a"]
    assert json.loads((got / "on_retrying-a").read_text())["task"] == "a"


# ------------------------------------------------------------------ break_if_stale: which attempt was lost
class _ClockAhead:
    """claim.py's `time`, 30 s ahead: a claim made just now is past its half-born grace (10 s)."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.time() + 30.0


def test_break_if_stale_numbers_the_lost_attempt_and_gives_its_units_back(tmp_path, monkeypatch):
    """The attempt recorded `lost` is the holder's own (a breaker that died after its record
    leaves it there: it is rewritten, not followed by a phantom next one); a claim that died
    before owner.json is the attempt after the last recorded one; the reaper gets the run id
    the owner published (else the derived one) and the task's runner; the units come back at
    once; a symlinked claim's files are never taken as the attempt's output."""
    from dagrun import resources as res
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "kill_grace": 1.5, "mutex": "db"},
                                  {"id": "b", "prompt": "x", "agent": "true"},
                                  {"id": "c", "prompt": "x", "agent": "true", "kill_grace": 4},
                                  {"id": "d", "prompt": "x", "agent": "true"},
                                  {"id": "e", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    plan._index["c"] = plan.task("c").replace(runner="slurm")      # (submit would ask a Slurm controller)
    reaped = []

    def reap(h, grace, run_id):
        reaped.append((h, grace, run_id))

    c = _claim(home, "a")
    units = c.owner["units"]
    assert units and all(os.path.isdir(res.unit_path(home, u)) for u in units)
    claims.update_owner(home, "g", "a", {**c.owner, "pid": dead_pid()})
    lc.record_unfinished(home, "g", "a", 1, outcome="lost", reason="earlier", worker="w0")
    got = lc.break_if_stale(home, plan, "a", worker="w2", reap=reap)
    assert got is not None and got[1:] == (1, None)
    assert reaped == [({"runner": "process"}, 1.5, c.owner["run_id"])]
    rec = read_json(home.attempt_path("g", "a", 1, "json"))
    assert (rec["reason"], rec["worker"], rec["started"]) == (got[0], "w1", c.owner["since"])
    assert not os.path.exists(home.attempt_path("g", "a", 2, "json"))
    assert not any(os.path.exists(res.unit_path(home, u)) for u in units)        # given back

    cb = _claim(home, "b")                       # the owner's own run id, whatever its handle
    claims.update_owner(home, "g", "b", {**cb.owner, "pid": dead_pid(), "run_id": "elsewhere:g/b/1", "handle": "junk"})
    reaped.clear()
    assert lc.break_if_stale(home, plan, "b", worker="w2", reap=reap)[1] == 1
    assert reaped == [({"runner": "process"}, plan.task("b").kill_grace, "elsewhere:g/b/1")]

    monkeypatch.setattr(claims, "time", _ClockAhead())
    assert claims.acquire(home, "g", "c")       # died between mkdir and owner.json, after attempts 1, 2
    for n in (1, 2):
        lc.record_unfinished(home, "g", "c", n, outcome="lost", reason="earlier", worker="w0")
    reaped.clear()
    got = lc.break_if_stale(home, plan, "c", worker="w2", reap=reap)
    assert got is not None and got[0].startswith("half-created claim") and got[1:] == (3, None)
    assert reaped == [({"runner": "slurm"}, 4, lc.run_id(home, "g", "c", 3))]
    rec = read_json(home.attempt_path("g", "c", 3, "json"))
    assert (rec["outcome"], rec["worker"], rec["started"]) == ("lost", None, None)

    assert claims.acquire(home, "g", "d")       # the same with no attempt recorded yet: the first
    reaped.clear()
    assert lc.break_if_stale(home, plan, "d", worker="w2", reap=reap)[1:] == (1, None)
    assert reaped == [({"runner": "process"}, plan.task("d").kill_grace, lc.run_id(home, "g", "d", 1))]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "stdout").write_bytes(b"not ours")
    os.makedirs(home.task_dir("g", "e"), exist_ok=True)
    os.symlink(elsewhere, home.claim_dir("g", "e"))
    got = lc.break_if_stale(home, plan, "e", worker="w2")
    assert got is not None and got[0] == "the claim is a symbolic link (not made by dagrun)" and got[1] == 1
    assert not os.path.exists(home.attempt_path("g", "e", 1, "out"))
    assert (elsewhere / "stdout").read_bytes() == b"not ours" and not os.path.lexists(home.claim_dir("g", "e"))


# ------------------------------------------------------------------ Scheduler.load: the trigger counters
class _R(_T):
    def __init__(self, id, deps=(), trigger=None):
        super().__init__(id, deps)
        self.trigger = trigger


def test_counters_loaded_from_the_files_add_up_with_the_outcomes_that_follow():
    """A task's trigger counters start from its dependencies' states on disk (load) and go on
    counting the outcomes that follow: one failed dependency loaded + one failing later is two,
    not zero (one_failed is met), likewise for done (one_success) and skipped (all_success)."""
    s = Scheduler([_R("f1"), _R("r1"), _R("x", ["f1", "r1"], "one_failed"),
                   _R("d1"), _R("r2"), _R("y", ["d1", "r2"], "one_success"),
                   _R("s1"), _R("r3"), _R("z", ["s1", "r3"], "all_success")],
                  {"f1": "failed", "r1": "running", "d1": "done", "r2": "running", "s1": "skipped", "r3": "running"})
    assert [s.state_of(t) for t in "xyz"] == ["waiting"] * 3
    assert s.finish("r1", "failed")[1:] == [("x", "ready", None)]
    assert s.finish("r2", "done")[1:] == [("y", "ready", None)]
    assert s.finish("r3", "skipped")[1:] == [("z", "skipped", "s1")]


def test_would_block_undoes_the_loaded_outcome_of_an_ended_task():
    """would_block of a task that is done already: as if it had failed instead -- a one_success
    task with another done dependency stays ready, one with none would be blocked."""
    s = Scheduler([_R("d1"), _R("d2"), _R("p", ["d1", "d2"], "one_success"), _R("d3"), _R("q", ["d3"], "one_success")],
                  {"d1": "done", "d2": "done", "d3": "done"})
    assert s.state_of("p") == "ready" and s.state_of("q") == "ready"
    assert s.would_block("d1") == [] and s.would_block("d3") == ["q"]


def test_a_done_marker_that_cannot_be_renamed_into_place_puts_the_holder_s_owner_json_back(tmp_path):
    """owner.json was renamed out and rewritten as the marker, then the last rename failed (a
    folder stands at `done`): owner.json comes back with the holder's own record -- not the
    marker's body, which would name no live holder -- so the claim stays provably held."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    before = Path(home.owner_path("g", "a")).read_bytes()
    os.makedirs(os.path.join(home.marker_path("g", "a", "done"), "x"))
    with pytest.raises(FsError):
        lc.commit_done(home, plan, c, ended=time.time(), output_data=b"out")
    assert read_json(home.owner_path("g", "a")) == c.owner == json.loads(before)
    assert claims.judge(home, "g", "a", claims.read_owner(home, "g", "a"), lease=60) is None    # still held, by us


# ------------------------------------------------------------------ claim_task: what it gives back, what it cleans
def test_claim_task_sweeps_a_dead_breaker_s_leftovers_and_never_claims_an_ended_task(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    lc.commit_done(home, plan, _claim(home, "a"), ended=time.time())
    # it ended between the caller's look and its mkdir: the claim it made goes again
    assert lc.claim_task(home, plan, "a", worker="w2", kind="external") is None
    assert not os.path.lexists(home.claim_dir("g", "a")) and lc.marker_of(home, "g", "a") == "done"
    os.makedirs(home.task_dir("g", "b"))
    for n in (".claim.broken.1a2b", ".claim.gone.3c4d"):     # a breaker / releaser killed half-way
        os.makedirs(os.path.join(home.task_dir("g", "b"), n, "sub"))
        Path(home.task_dir("g", "b"), n, "owner.json").write_text("{}")
    Path(home.task_dir("g", "b"), ".claimed-by-hand").write_text("kept")
    c = lc.claim_task(home, plan, "b", worker="w2", kind="external")
    assert c is not None and c.attempt == 1
    assert sorted(os.listdir(home.task_dir("g", "b"))) == [".claimed-by-hand", "claim", "prompt.md"]


class _ListdirFails:
    """lifecycle's (and claim's) `os` with listdir and scandir failing on one path (EIO: as
    root, no permission stops it)."""

    def __init__(self, path: str):
        self.path = path

    def __getattr__(self, name):
        return getattr(os, name)

    def listdir(self, p):
        if p == self.path:
            raise OSError(5, "Input/output error")
        return os.listdir(p)

    def scandir(self, p):                          # (claim.listing: the claim's own listing)
        if p == self.path:
            raise OSError(5, "Input/output error")
        return os.scandir(p)


def test_claim_task_that_cannot_list_the_task_folder_releases_the_claim_with_one_line(tmp_path, monkeypatch):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    os.makedirs(home.task_dir("g", "a"))           # a retry's folder (a first claim's is not listed)
    monkeypatch.setattr(lc, "os", _ListdirFails(home.task_dir("g", "a")))
    monkeypatch.setattr(claims, "os", _ListdirFails(home.task_dir("g", "a")))
    with pytest.raises(FsError) as e:
        lc.claim_task(home, plan, "a", worker="w1", kind="external")
    assert str(e.value) == f"cannot list {home.task_dir('g', 'a')}: Input/output error"
    monkeypatch.undo()
    assert not os.path.lexists(home.claim_dir("g", "a"))
    assert lc.claim_task(home, plan, "a", worker="w1", kind="external").attempt == 1


def test_a_condition_sees_the_scheduler_s_view_and_a_skip_claim_is_attempt_zero_of_its_holder(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"], "trigger": "all_done",
                                   "when": {"outcome_of": "a", "is": "cancelled"}}])
    plan = home.load_plan("g")
    # the scheduler says a was cancelled (its marker not read): the condition holds
    c = lc.claim_task(home, plan, "b", worker="w1", kind="external", state_of={"a": "cancelled"}.get)
    assert c.skip is None and c.attempt == 1
    claims.release(home, "g", "b")
    pid = dead_pid()
    before = time.time()
    c = lc.claim_task(home, plan, "b", worker="w3", kind="external", pid=pid)    # by the markers: a never ended
    assert c.skip == "condition false: a ended blocked (not cancelled)"
    assert c.attempt == 0 and isinstance(c.started, float) and before <= c.started <= time.time()
    assert (c.owner["worker"], c.owner["attempt"], c.owner["pid"], c.owner["kind"]) == ("w3", 0, pid, "external")


def test_claim_task_waits_out_a_retry_backoff_recorded_by_a_peer(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    os.makedirs(home.task_dir("g", "a"))
    lc.record_unfinished(home, "g", "a", 1, outcome="failed", reason="r", worker="w0",
                         extra={"retry_at": time.time() + 0.6})
    assert lc.claim_task(home, plan, "a", worker="w1", kind="external") is None
    assert not os.path.lexists(home.claim_dir("g", "a"))
    time.sleep(0.7)
    assert lc.claim_task(home, plan, "a", worker="w1", kind="external").attempt == 2


def test_a_unit_names_the_attempt_that_holds_it(tmp_path):
    from dagrun import resources as res
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"], "mutex": "db"}],
                       lease=42)
    plan = home.load_plan("g")
    lc.commit_done(home, plan, _claim(home, "a"), ended=time.time())
    c = _claim(home, "b", worker="w7")
    [unit] = c.owner["units"]
    rec = res.read_unit(res.unit_path(home, unit))
    assert (rec["goal"], rec["task"], rec["run_id"], rec["attempt"], rec["worker"], rec["lease"]) == \
        ("g", "b", c.owner["run_id"], 1, "w7", 42)


def test_a_claim_whose_prompt_or_units_cannot_be_written_gives_everything_back_with_one_line(tmp_path):
    from dagrun import resources as res
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "mutex": "db"},
                                  {"id": "b", "prompt": "x", "agent": "true", "mutex": "db"}])
    plan = home.load_plan("g")
    os.makedirs(os.path.join(home.prompt_path("g", "a"), "x"))      # prompt.md cannot be renamed into place
    with pytest.raises(FsError) as e:
        lc.claim_task(home, plan, "a", worker="w1", kind="external")
    assert str(e.value).startswith(f"cannot prepare {home.task_dir('g', 'a')}: ")
    assert not os.path.lexists(home.claim_dir("g", "a"))
    pools = os.path.join(res.root(home), "pools")
    assert [n for _r, _d, files in os.walk(pools) for n in files if n != ".lock"] == []     # the unit came back
    shutil.rmtree(pools)
    Path(pools).write_text("")                                        # no pool can be made
    with pytest.raises(FsError) as e:
        lc.claim_task(home, plan, "b", worker="w1", kind="external")
    assert str(e.value).startswith(f"cannot take the resources of {home.task_dir('g', 'b')}: ")
    assert not os.path.lexists(home.claim_dir("g", "b"))


def test_a_retry_withdraws_the_on_blocked_records_of_its_dependents_and_its_event_names_who_forced_it(tmp_path):
    """The on_blocked records published before the commit (the failure might have been final)
    go when it turns out a retry: nothing is left due that a later replay would run; the
    on_retrying hook runs once; a forced retry's event says who forced it."""
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 1, "retry_backoff": 0},
                                  {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]}],
                       hooks={"on_blocked": [hook], "on_retrying": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take()
    c = _claim(home, "a")
    f = tr.finish(home, plan, sched, c, ok=False, worker="w1", reason="bad",
                  forced={"forced_by": "admin", "held_by": "w0 (pid 9)"})
    assert f.outcome == "retrying"
    e = goal_events(home, ev.TASK_STATUS)[-1]
    assert (e["status"], e["forced_by"], e["held_by"]) == ("retrying", "admin", "w0 (pid 9)")
    assert _wait_files(got, 1) == ["on_retrying-a"]
    end = time.monotonic() + 10
    while _due(home) and time.monotonic() < end:
        time.sleep(0.05)
    assert _due(home) == []
    assert tr.replay_hooks(home, "g", "w2") == 0
    time.sleep(0.3)
    assert sorted(os.listdir(got)) == ["on_retrying-a"]


def test_the_prompt_names_a_soft_dependency_s_outcome_as_the_scheduler_sees_it(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "y", "agent": "true", "soft_deps": ["a"]}])
    plan = home.load_plan("g")
    lc.claim_task(home, plan, "b", worker="w1", kind="external", state_of={"a": "cancelled"}.get)
    seen = Path(home.prompt_path("g", "b")).read_text()
    claims.release(home, "g", "b")
    lc.claim_task(home, plan, "b", worker="w1", kind="external")          # by the markers: a never ended
    assert "cancelled" in seen and "blocked" not in seen
    assert "blocked" in Path(home.prompt_path("g", "b")).read_text()


def test_a_success_settles_its_on_done_record_and_a_final_failure_s_blocked_events_name_its_worker(tmp_path):
    got, hook = _recorder(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true"},
                                  {"id": "c", "prompt": "x", "agent": "true", "deps": ["b"]}],
                       hooks={"on_done": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    sched.take(), sched.take()
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"")
    assert _wait_files(got, 1) == ["on_done-a"]
    end = time.monotonic() + 10
    while _due(home) and time.monotonic() < end:
        time.sleep(0.05)
    assert _due(home) == [] and tr.replay_hooks(home, "g", "w2") == 0
    tr.finish(home, plan, sched, _claim(home, "b"), ok=False, worker="w5", reason="bad", final=True)
    assert [(e["task"], e["worker"], e["blocked_by"]) for e in goal_events(home, ev.TASK_BLOCKED)] == [("c", "w5", "b")]
    time.sleep(0.3)
    assert sorted(os.listdir(got)) == ["on_done-a"]


# ------------------------------------------------------------------ the record before an attempt (fifth session)
def _after_a_first_failure(tmp_path: Path, first: bytes | None):
    """Task a failed once (attempts/1.json), that record then replaced by `first` (a hand-edited
    or older file), and claimed again: attempt 2's claim."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 5, "retry_backoff": 0}])
    plan = home.load_plan("g")
    lc.commit_failure(home, plan, _claim(home, "a"), outcome="failed", ended=time.time(), exit_code=1, reason="r")
    if first == b"symlink":
        (tmp_path / "elsewhere.json").write_bytes(b'{"attempt": 1, "failures": 3}')
        os.unlink(home.attempt_path("g", "a", 1, "json"))
        os.symlink(tmp_path / "elsewhere.json", home.attempt_path("g", "a", 1, "json"))
    elif first is not None:
        Path(home.attempt_path("g", "a", 1, "json")).write_bytes(first)
    c = _claim(home, "a")
    assert c.attempt == 2
    return home, plan, c


# (record 1 as found, the failures it counts): garbage and a JSON value that is not an object
# count nothing (before the fifth session the commit crashed on `[1, 2]`: AttributeError after
# the done marker, claim left behind), so does a symlinked record; one of an older dagrun
# without "failures" counts 0
_RECORDS = [(None, 1), (b'{"attempt": 1, "outcome": "failed", "failures": 3}', 3), (b"not json", 0),
            (b'{"attempt": 1, "outcome": "lost"}', 0), (b"[1, 2]", 0), (b'"failed"', 0), (b"symlink", 0)]


@pytest.mark.parametrize("first,failures", _RECORDS)
def test_every_record_of_an_attempt_carries_on_the_count_of_the_record_before_it(tmp_path, first, failures):
    """A success, a failure and an attempt that ended without a verdict each write `failures`
    from the record of the attempt before (a failure adds one); a record that cannot be read
    as an object counts as none -- never a crash of the commit."""
    home, plan, c = _after_a_first_failure(tmp_path / "done", first)
    lc.commit_done(home, plan, c, ended=time.time(), output_data=b"ok")
    assert read_json(home.attempt_path("g", "a", 2, "json"))["failures"] == failures
    home, plan, c = _after_a_first_failure(tmp_path / "failed", first)
    rec = lc.commit_failure(home, plan, c, outcome="failed", ended=time.time())
    assert rec["failures"] == failures + 1 and rec["reason"] == ""        # no reason given: none recorded
    assert read_json(home.attempt_path("g", "a", 2, "json")) == rec
    home, plan, c = _after_a_first_failure(tmp_path / "lost", first)
    rec = lc.record_unfinished(home, "g", "a", 2, outcome="lost", reason="gone", worker="w9")
    assert (rec["failures"], rec["counted"], rec["final"]) == (failures, False, False)
    assert read_json(home.attempt_path("g", "a", 2, "json")) == rec


def test_a_failed_attempt_keeps_a_preset_s_raw_output_beside_its_captures(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 1, "retry_backoff": 0}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    Path(home.claim_dir("g", "a"), RAW_FILE).write_bytes(b"RAW 1")
    Path(home.claim_dir("g", "a"), "stdout").write_bytes(b"OUT 1")
    lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=1)
    assert Path(home.attempt_path("g", "a", 1, RAW_FILE)).read_bytes() == b"RAW 1"
    assert Path(home.attempt_path("g", "a", 1, "out")).read_bytes() == b"OUT 1"
    assert not os.path.exists(home.claim_dir("g", "a")) and not os.path.exists(os.path.join(home.task_dir("g", "a"), RAW_FILE))
    c = _claim(home, "a")                                   # an attempt without raw output leaves none
    lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=1)
    assert not os.path.exists(home.attempt_path("g", "a", 2, RAW_FILE))


@pytest.mark.parametrize("final", [False, True])
def test_a_commit_whose_owner_json_is_gone_still_publishes_its_marker(tmp_path, final):
    """claim/owner.json cannot be recycled into the marker (it is gone): the marker is written
    as a new file, with the same body."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    os.unlink(home.owner_path("g", "a"))
    if final:
        rec = lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=4, reason="no")
        assert rec["final"]
        assert read_json(home.marker_path("g", "a", "failed")) == {k: rec[k] for k in (
            "attempt", "outcome", "exit_code", "signal", "reason", "worker", "started", "ended", "duration")}
        assert lc.marker_of(home, "g", "a") == "failed"
    else:
        body = lc.commit_done(home, plan, c, ended=time.time(), output_data=b"out")
        assert read_json(home.marker_path("g", "a", "done")) == body and lc.marker_of(home, "g", "a") == "done"
    assert not os.path.exists(home.claim_dir("g", "a"))
    assert not [n for n in os.listdir(home.task_dir("g", "a")) if n.endswith(".tmp")]


def test_a_failed_marker_that_cannot_be_renamed_into_place_puts_the_holder_s_owner_json_back(tmp_path):
    """Like the done marker's: a folder stands at `failed`; the commit fails with one line naming
    the task folder, owner.json is the holder's record again and the claim stays held."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    before = Path(home.owner_path("g", "a")).read_bytes()
    os.makedirs(os.path.join(home.marker_path("g", "a", "failed"), "x"))
    with pytest.raises(FsError) as e:
        lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=1)
    assert str(e.value).startswith(f"cannot commit {home.task_dir('g', 'a')}: ")
    assert read_json(home.owner_path("g", "a")) == c.owner == json.loads(before)
    assert claims.judge(home, "g", "a", claims.read_owner(home, "g", "a"), lease=60) is None    # still held, by us


def test_release_resources_gives_the_units_back_while_the_claim_still_stands(tmp_path):
    """The units go back before the commit: another task can take them while the ended
    attempt's claim is still there (its commit has not run yet)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "mutex": "db"},
                                  {"id": "b", "prompt": "x", "agent": "true", "mutex": "db"}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    from dagrun import resources as res
    with pytest.raises(res.Busy):
        lc.claim_task(home, plan, "b", worker="w2", kind="external")
    tr.release_resources(home, c, worker="w1", why="failed")
    assert os.path.exists(home.claim_dir("g", "a"))
    cb = lc.claim_task(home, plan, "b", worker="w2", kind="external")        # a's unit is free
    assert cb is not None and cb.owner["units"] == c.owner["units"]
    e = goal_events(home, ev.TASK_RESOURCES)
    assert [_strip(x) for x in e] == [{"task": "a", "attempt": 1, "released": ["db"], "why": "failed", "worker": "w1"}]
    tr.release_resources(home, lc.Claim("g", "a", 1, {}, time.time()), worker="w1", why="x")   # no units: no event
    assert len(goal_events(home, ev.TASK_RESOURCES)) == 1


def test_the_holder_check_refuses_with_the_whole_line_naming_the_holder():
    """`complete`/`fail`/`heartbeat` by someone else: the one line names the holder's worker,
    pid and host, and what the caller can give instead."""
    owner = {"worker": "w1", "pid": 4242, "pid_start": "77", "host": HOST}
    with pytest.raises(Refused) as e:
        lc.check_holder(owner, worker="w2", caller=[(4243, "77"), (4242, "78")], force=False, what="fail", g="g", t="a")
    assert str(e.value) == (f"cannot fail g/a: it is held by worker w1 (pid 4242 on {HOST}), not by you; "
                            "give the --worker or --pid used to claim it, or --force")
    with pytest.raises(Refused) as e:
        lc.check_holder(None, worker="w1", caller=[], force=True, what="heartbeat", g="g", t="b")
    assert str(e.value) == "cannot heartbeat g/b: it is not claimed (claim it first: dagrun claim g)"
    assert lc.check_holder(owner, worker=None, caller=[(4242, "77")], force=False, what="fail", g="g", t="a") is False
    assert lc.check_holder(owner, worker="w2", caller=[(4242, "78")], force=True, what="fail", g="g", t="a") is True


def test_the_engine_s_shared_edit_lock_is_held_until_its_fd_is_closed(tmp_path):
    """claims.lock_shared: the goal's .edit.lock taken shared for a loop's turn (others may
    share it, an edit waits) until the caller closes the fd; no goal: None, nothing made; a
    lock that cannot be opened: one line naming it."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    path = os.path.join(home.goal_dir("g"), ".edit.lock")
    fd = claims.lock_shared(home, "g")
    assert isinstance(fd, int)
    try:
        assert _can_flock(path, fcntl.LOCK_SH) and not _can_flock(path, fcntl.LOCK_EX)
    finally:
        os.close(fd)
    assert _can_flock(path, fcntl.LOCK_EX)
    assert claims.lock_shared(home, "nosuch") is None and not os.path.exists(home.goal_dir("nosuch"))
    os.unlink(path)
    os.mkdir(path)                                       # .edit.lock cannot be opened for writing
    with pytest.raises(FsError) as e:
        claims.lock_shared(home, "g")
    assert str(e.value).startswith(f"cannot lock {path}: ")


def _awaiting_gate(tmp_path: Path):
    home = submit_home(tmp_path, [{"id": "gate", "prompt": "x", "approval": {"prompt": "Merge?", "timeout": 3600}}])
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "gate"
    tr.await_approval(home, plan, sched, lc.claim_task(home, plan, "gate", worker="w1", kind="engine"), worker="w1")
    return home, plan


def test_a_gate_held_by_another_live_decider_is_refused_after_the_wait_and_a_dead_one_s_claim_is_broken(tmp_path):
    """claim_gate: another process holds the gate's claim (a decider in the middle of its
    decision): wait up to `wait` s, then one line; once that decider is dead its claim is
    broken (its attempt recorded lost) and the gate is claimed for this decider."""
    home, plan = _awaiting_gate(tmp_path)
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert claims.acquire(home, "g", "gate")
        claims.update_owner(home, "g", "gate", claims.new_owner("bob", 1, kind="approval", pid=other.pid))
        t0 = time.monotonic()
        with pytest.raises(Refused) as e:
            lc.claim_gate(home, plan, "gate", by="alice", wait=0.4)
        assert str(e.value) == "cannot decide g/gate: it is held by another process right now; try again"
        assert 0.4 <= time.monotonic() - t0 < 5
        assert read_json(home.owner_path("g", "gate"))["worker"] == "bob"        # not broken: bob lives
    finally:
        other.kill()
        other.wait()
    t0 = time.monotonic()
    c = lc.claim_gate(home, plan, "gate", by="alice", wait=0.0)     # bob is dead: broken at once, no wait
    assert time.monotonic() - t0 < 5
    assert (c.goal, c.task, c.attempt) == ("g", "gate", 2)
    assert read_json(home.attempt_path("g", "gate", 1, "json"))["outcome"] == "lost"
    owner = read_json(home.owner_path("g", "gate"))
    assert owner == c.owner and (owner["worker"], owner["kind"], owner["attempt"]) == ("alice", "approval", 2)
    assert owner["run_id"] == lc.run_id(home, "g", "gate", 2)
    assert c.started == parse_ts(lc.awaiting_of(home, "g", "gate")["since"])     # the gate's wait began then


def test_a_shared_edit_lock_interrupted_while_it_waits_closes_its_fd_and_raises_the_interrupt(tmp_path):
    """An edit holds the lock exclusively; the engine's lock_shared waits in flock and is
    interrupted (SIGTERM's handler raising, here SIGALRM's): the interrupt comes out as it
    was, and the fd it opened is closed, not leaked."""
    import signal

    class Stop(Exception):
        pass
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    held = os.open(os.path.join(home.goal_dir("g"), ".edit.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)

    def stop(*_):
        raise Stop()
    old = signal.signal(signal.SIGALRM, stop)
    try:
        before = len(os.listdir("/proc/self/fd"))
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Stop):
            claims.lock_shared(home, "g")
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(held)


def test_a_condition_looks_at_the_first_4_mib_of_an_output_only(tmp_path):
    """`contains` sees the first CONDITION_READ_LIMIT (4 MiB) bytes of the output: a needle
    ending exactly there is found, one just past it is not."""
    for n, runs in ((lc.CONDITION_READ_LIMIT - 3, True), (lc.CONDITION_READ_LIMIT - 2, False)):
        home = submit_home(tmp_path / str(n), [{"id": "a", "prompt": "x", "agent": "true"},
                                               {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"],
                                                "when": {"output_of": "a", "contains": "YES"}}])
        plan, sched = home.load_plan("g"), _sched(home)
        sched.take()
        tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"x" * n + b"YES")
        cb = lc.claim_task(home, plan, "b", worker="w1", kind="external")
        assert (cb.skip is None) is runs, n


def test_a_backoff_of_a_second_or_less_still_waits():
    class Tk:
        retry_backoff = 1.0
    for b in (1.0, 0.5):
        Tk.retry_backoff = b
        s = [lc.backoff(Tk, 1) for _ in range(50)]
        assert b * 0.5 <= min(s) and max(s) <= b * 1.5, b


def test_would_block_undoes_a_loaded_skip_or_failure_from_its_own_counter():
    """would_block of a task that ended skipped (or failed): its outcome is taken off the
    skipped (failed) count, not the done count -- a one_success task with a done dependency
    beside it stays ready."""
    s = Scheduler([_R("s1"), _R("d4"), _R("p", ["s1", "d4"], "one_success"),
                   _R("f1"), _R("d5"), _R("q", ["f1", "d5"], "one_success")],
                  {"s1": "skipped", "d4": "done", "f1": "failed", "d5": "done"})
    assert s.state_of("p") == "ready" and s.state_of("q") == "ready"
    assert s.would_block("s1") == [] and s.would_block("f1") == []
    assert s.state_of("p") == "ready" and s.state_of("q") == "ready"       # nothing changed
    # a done task as if failed, and the cascade below it: r's one pending dependency (q) is
    # blocked, not a done one undone
    s = Scheduler([_R("d3"), _R("q", ["d3"], "one_success"), _R("r", ["q"], "one_success")], {"d3": "done"})
    assert s.would_block("d3") == ["q", "r"]


def test_the_engine_ranks_ready_tasks_by_the_home_s_history_unless_every_task_has_an_estimate(tmp_path):
    """lifecycle.ranked_scheduler (the engine's rescans, `run --dry-run`): a task's seconds are
    its estimate, else its median in the home's done runs (ranking_history: read only when a
    task has no estimate); the longest remaining path starts first."""
    from dagrun import edit, history
    tasks = [{"id": "quick", "prompt": "x", "agent": "true"}, {"id": "slow", "prompt": "x", "agent": "true"}]
    home = submit_home(tmp_path, tasks)
    plan = home.load_plan("g")
    for t, secs in (("quick", 0.05), ("slow", 5.0)):
        c = _claim(home, t)
        c.started = T0
        lc.commit_done(home, plan, c, ended=T0 + secs, output_data=b"")

    def submit(goal, ts):
        p = tmp_path / goal / "dag.json"
        p.parent.mkdir()
        p.write_text(json.dumps({"goal": goal, "tasks": ts}))
        edit.submit(home, str(p))
        return home.load_plan(goal)
    again = submit("again", tasks)
    hist = lc.ranking_history(home, again)
    assert hist is not None and [s for s, _ in hist.by_task[("slow", "true")]] == [5.0]
    sched, facts = lc.ranked_scheduler(home, again)
    assert [sched.take(), sched.take()] == ["slow", "quick"] and set(facts) == {"quick", "slow"}
    clock = lambda: 1234.5                                               # noqa: E731  (aging's clock)
    sched, _ = lc.ranked_scheduler(home, again, history.History(), clock=clock)   # a history given: not read again
    assert [sched.take(), sched.take()] == ["quick", "slow"]           # nothing known: plan order
    assert sched.clock is clock
    est = submit("est", [dict(tasks[0], estimate={"seconds": 9}), dict(tasks[1], estimate={"seconds": 1})])
    assert lc.ranking_history(home, est) is None                       # every task has an estimate
    sched, _ = lc.ranked_scheduler(home, est)
    assert [sched.take(), sched.take()] == ["quick", "slow"]


def test_the_record_before_is_the_latest_readable_one_counting_down(tmp_path):
    """Attempts 1 and 2 failed (failures 1, 2), attempt 3's record is unreadable: attempt 4
    carries on from attempt 2's count, the latest readable record below it."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 9, "retry_backoff": 0}])
    plan = home.load_plan("g")
    for _ in range(3):
        lc.commit_failure(home, plan, _claim(home, "a"), outcome="failed", ended=time.time(), exit_code=1)
    assert read_json(home.attempt_path("g", "a", 2, "json"))["failures"] == 2
    Path(home.attempt_path("g", "a", 3, "json")).write_bytes(b"{torn")
    c = _claim(home, "a")
    assert c.attempt == 4
    assert lc.record_unfinished(home, "g", "a", 4, outcome="lost", reason="gone", worker="w9")["failures"] == 2


# ------------------------------------------------------------------ mut8: the core's survivors of the sweep
def test_a_release_cut_off_after_its_rename_leaves_the_claim_in_tasks_for_the_sweep(tmp_path, monkeypatch):
    """release() renames a claim with files in it away, then deletes it: a death in between
    leaves a `.claim.<task>.released.*` folder in the goal's tasks/, where sweep_aside finds it."""
    from dagrun import fsio
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    assert claims.acquire(home, "g", "a")
    Path(home.claim_dir("g", "a"), "stdout").write_bytes(b"x")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def die(path, *a, **kw):
        raise KeyboardInterrupt("died between the rename and the delete")
    monkeypatch.setattr(fsio, "rmtree", die)
    with pytest.raises(KeyboardInterrupt):
        claims.release(home, "g", "a")
    monkeypatch.undo()
    assert [n for n in os.listdir(home.task_dir("g", "a")) if "claim" in n] == []
    left = [n for n in os.listdir(home.tasks_dir("g")) if "claim" in n]
    assert len(left) == 1 and left[0].startswith(".claim.a.released.")
    assert os.listdir(os.path.join(home.tasks_dir("g"), left[0])) == ["stdout"]
    assert os.listdir(elsewhere) == []
    assert claims.sweep_aside(home, "g") == 1
    assert sorted(os.listdir(home.tasks_dir("g"))) == ["a"]


def test_a_workspace_that_does_not_merge_or_cannot_be_made_ends_the_claim_the_right_way(tmp_path, monkeypatch):
    """claim_task's two workspace failures, injected at workspace.prepare (the tests of real
    code workspaces run the binary): prerequisites that do not merge come back as a claim still
    held, `conflict` saying why and no prompt (the caller fails the task for good); an OS error
    gives the claim and its units back and says in one line what could not be done where."""
    import errno

    from dagrun import resources as res
    from dagrun import workspace as wsp
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "mutex": "db"}])
    plan = home.load_plan("g")
    pools = os.path.join(res.root(home), "pools")
    units = lambda: [n for _r, _d, files in os.walk(pools) for n in files if n != ".lock"]

    def conflict(*a):
        raise wsp.Conflict(["b: CONFLICT (content): f.txt", "c: x"])
    monkeypatch.setattr(wsp, "prepare", conflict)
    monkeypatch.setattr(lc, "_uses_workspace", lambda plan, t: True)   # (as if task a had a code workspace)
    c = lc.claim_task(home, plan, "a", worker="w1", kind="external")
    assert c is not None and c.conflict == "b: CONFLICT (content): f.txt; c: x" and c.attempt == 1
    assert os.path.isdir(home.claim_dir("g", "a")) and not os.path.exists(home.prompt_path("g", "a"))
    assert len(units()) == 1
    res.release_attempt(home, "g", "a", c.owner)
    claims.release(home, "g", "a")

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(wsp, "prepare", full)
    with pytest.raises(FsError) as e:
        lc.claim_task(home, plan, "a", worker="w1", kind="external")
    assert str(e.value) == f"cannot prepare the workspace of {home.task_dir('g', 'a')}: No space left on device"
    assert not os.path.lexists(home.claim_dir("g", "a")) and units() == []


def test_a_commit_the_scheduler_cannot_take_incrementally_asks_for_a_rebuild_and_announces_nothing_more(tmp_path):
    """The scheduler already holds another end for the task (a cancel it took before our commit
    landed): finish() still commits and announces the task's own end, but its changes say
    `rebuild` (the engine rebuilds the goal from the files) and unlock nobody."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]}])
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    c = _claim(home, "a")
    assert sched.finish("a", "cancelled") is not None
    f = tr.finish(home, plan, sched, c, ok=True, worker="w1")
    assert f.outcome == "done" and os.path.exists(home.marker_path("g", "a", "done"))
    assert f.changes.rebuild is True and f.changes.ready == [] and f.changes.blocked == []
    assert [e for e in goal_events(home, ev.TASK_STATUS) if e.get("task") == "b" and e.get("status") == ev.READY] == []
    plan, sched = home.load_plan("g"), _sched(home)             # a normal end: no rebuild
    assert sched.take() == "b"
    f = tr.finish(home, plan, sched, _claim(home, "b"), ok=True, worker="w1")
    assert f.changes.rebuild is False


def _counting_hook(tmp_path: Path) -> tuple[Path, list[str]]:
    """A hook that leaves one file per run, <folder>/<hook event>-<task>.<random>: runs counted."""
    got = tmp_path / "hook-runs"
    got.mkdir()
    return got, ["sh", "-c", f'f=$(mktemp "{got}/$DAGRUN_HOOK_EVENT-$DAGRUN_TASK.XXXXXX") && cat > "$f"']


def _runs(got: Path) -> list[str]:
    from dagrun import hooks as hk
    assert hk.wait(15)
    return sorted(n.rpartition(".")[0] for n in os.listdir(got))


def test_a_skip_that_dies_after_its_events_leaves_no_record_a_replay_would_run_again(tmp_path, monkeypatch):
    """The on_skipped record published before the marker is settled into the event's own
    record (not left beside a second one): when the process dies after the skipped events were
    appended -- no `finally` of it runs -- the next process's replay finds nothing more to run,
    and each on_skipped hook ran once."""
    from dagrun import hooks as hk
    got, hook = _counting_hook(tmp_path)
    home, plan, sched, cb = _skip_b(tmp_path, hook)
    real = tr._status

    def dies_after(*a, **k):
        e = real(*a, **k)
        if a[3] == "c" and a[4] == ev.SKIPPED:
            raise SystemExit("killed right after c's skipped event")
        return e
    monkeypatch.setattr(tr, "_status", dies_after)
    monkeypatch.setattr(hk, "abandon", lambda pending: None)        # a dead process cleans nothing up
    with pytest.raises(SystemExit):
        tr.skip(home, plan, sched, cb, worker="w1")
    monkeypatch.undo()
    assert _runs(got) == ["on_skipped-b", "on_skipped-c"]
    dead = dead_pid()
    for path in _due(home):
        rec = read_json(path)
        rec["owner"]["pid"] = dead
        Path(path).write_bytes(json.dumps(rec).encode())
    tr.replay_hooks(home, "g", "w2")
    assert _runs(got) == ["on_skipped-b", "on_skipped-c"]
    assert _due(home) == []


def test_a_commit_that_asks_for_a_rebuild_withdraws_the_skip_records_it_published(tmp_path, monkeypatch):
    """Before a's marker the on_skipped record of c (one_failed: skipped when a succeeds) is
    published; the scheduler then cannot take a's end incrementally (finish() returns None:
    rebuild): the record is withdrawn -- the rebuild decides c -- and no hook runs for it."""
    got, hook = _counting_hook(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "c", "prompt": "x", "agent": "true", "deps": ["a"], "trigger": "one_failed"}],
                       hooks={"on_skipped": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    c = _claim(home, "a")
    seen = []
    real = Scheduler.finish

    def outside_the_rules(self, t, outcome):
        if self is not sched:                   # would_skip's shadow copy: the real rules
            return real(self, t, outcome)
        seen.append((t, outcome, [read_json(p)["task"] for p in _due(home)]))
        return None
    monkeypatch.setattr(Scheduler, "finish", outside_the_rules)
    f = tr.finish(home, plan, sched, c, ok=True, worker="w1")
    assert seen == [("a", "done", ["c"])]                           # c's record was out before the marker
    assert f.changes.rebuild is True and f.changes.skipped == []
    assert _runs(got) == [] and _due(home) == []


def test_a_failure_that_dies_after_the_blocked_events_leaves_no_record_a_replay_would_run_again(tmp_path, monkeypatch):
    """As for a skip: the on_blocked record of b, published before a's failed marker, becomes
    the record of b's blocked event; a death right after that event (no `finally` runs) leaves
    nothing a replay would run a second time."""
    from dagrun import hooks as hk
    got, hook = _counting_hook(tmp_path)
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0},
                                  {"id": "b", "prompt": "x", "agent": "true", "deps": ["a"]}],
                       hooks={"on_blocked": [hook]})
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    c = _claim(home, "a")
    real = tr._emit

    def dies_after(*a, **k):
        e = real(*a, **k)
        if a[3] == ev.TASK_BLOCKED and k.get("task") == "b":
            raise SystemExit("killed right after b's blocked event")
        return e
    monkeypatch.setattr(tr, "_emit", dies_after)
    monkeypatch.setattr(hk, "abandon", lambda pending: None)        # a dead process cleans nothing up
    with pytest.raises(SystemExit):
        tr.finish(home, plan, sched, c, ok=False, worker="w1", reason="bad")
    monkeypatch.undo()
    assert _runs(got) == ["on_blocked-b"]
    dead = dead_pid()
    for path in _due(home):
        rec = read_json(path)
        rec["owner"]["pid"] = dead
        Path(path).write_bytes(json.dumps(rec).encode())
    tr.replay_hooks(home, "g", "w2")
    assert _runs(got) == ["on_blocked-b"] and _due(home) == []


def test_a_claim_whose_owner_json_cannot_be_published_gives_everything_back_with_one_line(tmp_path, monkeypatch):
    import errno

    from dagrun import resources as res
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "mutex": "db"}])
    plan = home.load_plan("g")
    pools = os.path.join(res.root(home), "pools")

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(claims, "update_owner", full)
    with pytest.raises(FsError) as e:
        lc.claim_task(home, plan, "a", worker="w1", kind="external")
    assert str(e.value) == f"cannot publish {home.owner_path('g', 'a')}: No space left on device"
    assert not os.path.lexists(home.claim_dir("g", "a"))
    assert [n for _r, _d, files in os.walk(pools) for n in files if n != ".lock"] == []     # the unit came back


def test_a_gate_whose_awaiting_file_cannot_be_published_says_so_in_one_line_and_drops_its_claim(tmp_path, monkeypatch):
    import errno

    from dagrun import fsio
    home = submit_home(tmp_path, [{"id": "gate", "prompt": "x", "approval": {"prompt": "Merge?", "timeout": 3600}}])
    assert claims.acquire(home, "g", "gate")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fsio, "write_atomic", full)
    with pytest.raises(FsError) as e:
        lc.publish_awaiting(home, "g", "gate", {"prompt": "Merge?"})
    monkeypatch.undo()
    awaiting = os.path.join(home.task_dir("g", "gate"), "awaiting")
    assert str(e.value) == f"cannot publish {awaiting}: No space left on device"
    assert not os.path.lexists(home.claim_dir("g", "gate")) and not os.path.lexists(awaiting)


def test_the_prompt_of_a_task_in_a_code_workspace_says_where_its_worktree_is(tmp_path, monkeypatch):
    """claim_task hands the workspace it prepared to the prompt (the tests of real git
    worktrees run the binary; here workspace.prepare is stood in for): prompt.md carries the
    workspace's note, and the claim carries the workspace."""
    from dagrun import workspace as wsp
    home = submit_home(tmp_path, [{"id": "a", "prompt": "do it", "agent": "true"}])
    plan = home.load_plan("g")
    ws = wsp.Prepared(path=str(tmp_path / "wt"), branch="dagrun/g/a", base="main", base_commit="1" * 40,
                      snapshot="2" * 40, merged=[], cwd=str(tmp_path / "wt"), plan_dir=str(tmp_path / "plan"))
    asked = []

    def prepare(h, p, t):
        asked.append((h, p, t))
        return ws
    monkeypatch.setattr(wsp, "prepare", prepare)
    monkeypatch.setattr(lc, "_uses_workspace", lambda plan, t: True)   # (as if task a had a code workspace)
    c = lc.claim_task(home, plan, "a", worker="w1", kind="external")
    assert asked == [(home, plan, "a")] and asked[0][0] is home and c.workspace is ws
    note = wsp.prompt_note(ws)
    assert str(tmp_path / "wt") in note
    assert Path(home.prompt_path("g", "a")).read_text() == "do it\n\n---\n\n" + note.rstrip("\n") + "\n"


def test_a_worktree_path_that_is_not_utf8_reaches_the_prompt_byte_for_byte(tmp_path, monkeypatch):
    """A path is bytes: one that is not UTF-8 (decoded by Python with surrogateescape) is
    written into prompt.md as the same bytes, not refused (nor replaced)."""
    from dagrun import workspace as wsp
    home = submit_home(tmp_path, [{"id": "a", "prompt": "do it", "agent": "true"}])
    plan = home.load_plan("g")
    wt = os.fsdecode(os.fsencode(str(tmp_path)) + b"/wt-caf\xe9")
    ws = wsp.Prepared(path=wt, branch="dagrun/g/a", base="main", base_commit="1" * 40, snapshot="2" * 40,
                      merged=[], cwd=wt, plan_dir=str(tmp_path / "plan"))
    monkeypatch.setattr(wsp, "prepare", lambda h, p, t: ws)
    monkeypatch.setattr(lc, "_uses_workspace", lambda plan, t: True)   # (as if task a had a code workspace)
    lc.claim_task(home, plan, "a", worker="w1", kind="external")
    assert os.fsencode(str(tmp_path)) + b"/wt-caf\xe9" in Path(home.prompt_path("g", "a")).read_bytes()


@pytest.mark.parametrize("exit_code", [None, 3])
def test_a_success_whose_workspace_cannot_be_committed_fails_with_git_s_reason(tmp_path, monkeypatch, exit_code):
    """ok, but the worktree's commit fails (lifecycle.capture_workspace returns why; stood in
    for here, the tests of real worktrees run the binary): the attempt fails with that reason,
    its exit code kept (0 when the agent's was not given), and no `done` appears."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 0}])
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    monkeypatch.setattr(tr, "capture_workspace", lambda h, p, c: "cannot commit the workspace: git says no")
    f = tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", exit_code=exit_code,
                  output_data=b"out\n")
    assert f.outcome == "failed" and not os.path.exists(home.marker_path("g", "a", "done"))
    rec = read_json(home.attempt_path("g", "a", 1, "json"))
    assert (rec["outcome"], rec["reason"], rec["exit_code"], rec["final"]) == \
        ("failed", "cannot commit the workspace: git says no", 0 if exit_code is None else exit_code, True)


def test_a_replayed_hook_that_fails_is_reported_like_any_hook(tmp_path, monkeypatch):
    """The hooks a replay runs for a dead process report their failure as the engine's own do:
    an agent.hook.failed event and the goal's last_failure.json."""
    from dagrun import hooks as hk
    home, plan, sched, cb = _skip_b(tmp_path, ["sh", "-c", "cat >/dev/null; exit 3"])
    _cut_off_then_replayed(home, monkeypatch, lambda: tr.skip(home, plan, sched, cb, worker="w1"), 2)
    assert hk.wait(15)
    failed = goal_events(home, ev.HOOK_FAILED)
    assert sorted((e["hook_event"], e["task"]) for e in failed) == [("on_skipped", "b"), ("on_skipped", "c")]
    last = read_json(os.path.join(home.hooks_due_dir("g"), "last_failure.json"))
    assert last["type"] == ev.HOOK_FAILED and last["hook_event"] == "on_skipped"


def test_under_a_serial_group_the_best_startable_task_must_fit_the_budget_with_its_own_estimate():
    """may_start's slow path (files, serial groups, resources) asks the budget about the task it
    would start: its estimate counts."""
    s = Scheduler([_T("a"), _T("b")], serial={"a": "grp"}, budget={"usd": 1.0}, estimates={"a": 2.0, "b": 0.5})
    assert s.ready_ids() == ["a", "b"] and s.may_start() is False         # a first, and it does not fit
    s = Scheduler([_T("a"), _T("b")], serial={"a": "grp"}, budget={"usd": 1.0}, estimates={"a": 0.5})
    assert s.may_start() is True


def test_an_approval_gate_s_awaiting_body_is_dated_by_the_time_given(tmp_path):
    home = submit_home(tmp_path, [{"id": "gate", "prompt": "x", "approval": {"prompt": "Merge?", "timeout": 60}}])
    plan = home.load_plan("g")
    assert lc.gate_body(plan, "gate", "w1", now=1_700_000_000.5) == {
        "prompt": "Merge?", "since": now_iso(1_700_000_000.5), "worker": "w1", "timeout": 60,
        "timeout_at": now_iso(1_700_000_060.5)}


def test_a_done_marker_whose_rewrite_fails_half_way_puts_the_holder_s_owner_json_back(tmp_path, monkeypatch):
    """The marker is written over owner.json's inode; the disk fills up half-way through that
    write: owner.json goes back holding the holder's record -- whole, not half marker and half
    owner -- so the claim keeps a provable holder (released by the caller, or broken as soon as
    it is gone) instead of looking half-born or foreign."""
    import errno

    from dagrun import fsio
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    holder = claims.read_owner(home, "g", "a")
    Path(home.claim_dir("g", "a"), "stdout").write_bytes(b"OUT\n")
    real, calls = fsio._write_whole, []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)
    monkeypatch.setattr(fsio, "_write_whole", half_then_full)
    with pytest.raises(FsError):
        lc.commit_done(home, plan, c, ended=time.time())
    monkeypatch.undo()
    assert not os.path.exists(home.marker_path("g", "a", "done"))
    assert claims.read_owner(home, "g", "a") == holder


# ------------------------------------------------------------------ ninth pass: claim_gate, decide, render_prompt
def test_a_gate_whose_owner_json_cannot_be_published_drops_its_claim_with_one_line(tmp_path, monkeypatch):
    """claim_gate holds the gate's claim, then owner.json cannot be written (disk full): the
    claim goes (nobody is left holding a gate no process owns) and one line names the file;
    the gate still awaits."""
    import errno
    home, plan = _awaiting_gate(tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(claims, "update_owner", full)
    with pytest.raises(FsError) as e:
        lc.claim_gate(home, plan, "gate", by="alice", wait=0.0)
    monkeypatch.undo()
    assert str(e.value) == f"cannot publish {home.owner_path('g', 'gate')}: No space left on device"
    assert not os.path.lexists(home.claim_dir("g", "gate"))
    assert lc.awaiting_of(home, "g", "gate")["prompt"] == "Merge?"


class _Clock:
    """A stand-in for a module's `time`: time() is `first` at the first call, 5 s later after
    it; the rest is the real module's."""
    def __init__(self, first: float):
        self.first, self.calls, self.slept = first, 0, []

    def time(self) -> float:
        self.calls += 1
        return self.first if self.calls == 1 else self.first + 5.0

    def __getattr__(self, name):
        return getattr(time, name)


def test_a_gate_held_for_a_moment_is_tried_again_every_20_ms(tmp_path, monkeypatch):
    """A live decider holds the gate: claim_gate polls (0.02 s between tries), and takes the
    gate as soon as that decider lets go."""
    home, plan = _awaiting_gate(tmp_path)
    assert claims.acquire(home, "g", "gate")
    claims.update_owner(home, "g", "gate", claims.new_owner("bob", 1, kind="approval"))      # this live process
    clock = _Clock(time.time())

    def sleep(s):
        clock.slept.append(s)
        claims.release(home, "g", "gate")          # bob is done with it
    clock.sleep = sleep
    monkeypatch.setattr(lc, "time", clock)
    c = lc.claim_gate(home, plan, "gate", by="alice", wait=30)
    monkeypatch.undo()
    assert clock.slept == [0.02]
    assert read_json(home.owner_path("g", "gate"))["worker"] == "alice" and c.attempt == 1


@pytest.mark.parametrize("approve", [True, False])
def test_a_decision_is_dated_by_one_reading_of_the_clock(tmp_path, monkeypatch, approve):
    """approve / reject read the clock once: the marker's `ended` and its `decided_at` are that
    instant (a later reading -- here 5 s on -- dates nothing)."""
    home, plan = _awaiting_gate(tmp_path)
    sched = _sched(home)
    t0 = 1_700_000_000.25
    monkeypatch.setattr(tr, "time", _Clock(t0))
    tr.decide(home, plan, sched, "gate", approve=approve, by="alice", text="why")
    monkeypatch.undo()
    marker = read_json(home.marker_path("g", "gate", "done" if approve else "failed"))
    assert marker["decided_at"] == "2023-11-14T22:13:20Z" and marker["ended"] == now_iso(t0), marker
    if not approve:
        rec = read_json(home.attempt_path("g", "gate", 1, "json"))
        assert (rec["outcome"], rec["ended"], rec["decided_at"]) == ("rejected", now_iso(t0), "2023-11-14T22:13:20Z")


def _render(home: Home, plan, t: str, record=None, state_of=None) -> str:
    return lc.render_prompt(home, plan, plan.task(t), record, state_of)


def test_a_dependency_s_section_names_it_and_points_at_its_whole_output_past_the_limit(tmp_path):
    """A done dependency past context_limit: its head, then where the whole output is; one that
    did not end well: its id and why it is unavailable."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "f", "prompt": "x", "agent": "true"},
                                  {"id": "b", "deps": ["a"], "soft_deps": ["f"], "prompt": "y", "agent": "true",
                                   "context_limit": 10}])
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"0123456789ABCDEF")
    text = _render(home, plan, "b", state_of={"a": "done", "f": "failed"}.get)
    assert text == ("y\n\n---\n\n# Outputs of the tasks this one depends on\n\n## Output of a\n\n0123456789\n"
                    f"[... truncated: the first 10 of 16 bytes are shown; the whole output is in {home.output_path('g', 'a')}]\n\n"
                    "## Output of f (unavailable: it failed)\n"), text


@pytest.mark.parametrize("limit", [0, 5])
def test_a_done_dependency_whose_output_file_is_gone_shows_an_empty_section(tmp_path, limit):
    """Its `done` marker stands, its output file was removed: an empty section (no claim on a
    vanished input is refused while the marker says done), with no truncation note."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"},
                                  {"id": "b", "deps": ["a"], "prompt": "y", "agent": "true", "context_limit": limit}])
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "a"), ok=True, worker="w1", output_data=b"out")
    os.remove(home.output_path("g", "a"))
    assert _render(home, plan, "b") == "y\n\n---\n\n# Outputs of the tasks this one depends on\n\n## Output of a\n\n\n"


def test_the_files_a_workspace_dependency_changed_are_listed_under_its_output(tmp_path, monkeypatch):
    """In a plan with a code workspace, each done dependency's section -- a plain one, and each
    instance of an expanded template -- lists the files it changed (workspace.diffstat of
    that task, stood in for here: the tests of real worktrees run the binary)."""
    import dataclasses

    from dagrun import workspace as wsp
    home = submit_home(tmp_path, [{"id": "src", "prompt": "x", "agent": "true"},
                                  {"id": "tpl", "for_each": {"from": "src"}, "prompt": "do {{item}}", "agent": "true"},
                                  {"id": "join", "deps": ["src", "tpl"], "prompt": "Summarise", "agent": "true"}])
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "src"), ok=True, worker="w1", output_data=b'["a"]')
    assert fanout.expand_one(home, "g", "tpl", "w1") is True
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "tpl.0"), ok=True, worker="w1", output_data=b"<0>")
    fanout.join(home, plan, sched, lc.claim_task(home, plan, "tpl", worker="w1", kind="engine"), "w1")
    asked = []

    def diffstat(h, g, t):
        asked.append((h, g, t))
        return f" {t}.py | 1 +", f"/patches/{t}"
    monkeypatch.setattr(wsp, "diffstat", diffstat)
    wplan = dataclasses.replace(plan, workspace={"repo": str(tmp_path), "base": "main"})
    text = _render(home, wplan, "join")
    assert asked == [(home, "g", "src"), (home, "g", "tpl.0")] and asked[0][0] is home
    for t, out in (("src", '["a"]'), ("tpl.0", "<0>")):
        assert (f"## Output of {t}\n\n{out}\n\nFiles {t} changed in the workspace (the whole patch is in "
                f"/patches/{t}):\n\n```\n {t}.py | 1 +\n```\n") in text, text
    assert "changed in the workspace" not in _render(home, plan, "join")      # no workspace: not asked


def test_a_join_over_a_single_instance_gives_it_the_whole_context_limit(tmp_path):
    home = submit_home(tmp_path, [{"id": "src", "prompt": "x", "agent": "true"},
                                  {"id": "tpl", "for_each": {"from": "src"}, "prompt": "do {{item}}", "agent": "true"},
                                  {"id": "join", "deps": ["tpl"], "prompt": "S", "agent": "true", "context_limit": 40}])
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "src"), ok=True, worker="w1", output_data=b'["a"]')
    assert fanout.expand_one(home, "g", "tpl", "w1") is True
    plan, sched = home.load_plan("g"), _sched(home)
    tr.finish(home, plan, sched, _claim(home, "tpl.0"), ok=True, worker="w1", output_data=b"x" * 30)
    fanout.join(home, plan, sched, lc.claim_task(home, plan, "tpl", worker="w1", kind="engine"), "w1")
    text = _render(home, plan, "join")
    assert "x" * 30 + "\n" in text and "truncated" not in text, text


def test_a_failed_acceptance_check_s_own_output_and_command_go_into_the_retry_s_prompt(tmp_path):
    """retry_context "error" after a check_failed attempt: the note names the check's command
    (every argument) and shows the check's output tail from the record -- not the agent's
    stderr; a record whose `check` is not an object is ignored (the stderr tail instead)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "do it", "agent": "true", "retry_context": "error",
                                   "check": ["pytest", "-q", "tests"]}])
    plan = home.load_plan("g")
    os.makedirs(os.path.dirname(home.attempt_path("g", "a", 1, "err")), exist_ok=True)
    Path(home.attempt_path("g", "a", 1, "err")).write_bytes(b"AGENT STDERR\n")
    rec = {"attempt": 1, "outcome": "check_failed", "exit_code": 1,
           "check": {"passed": False, "argv": ["pytest", "-q", "tests"], "exit_code": 1, "tail": "CHECK SAYS NO"}}
    text = _render(home, plan, "a", record=rec)
    assert text.endswith("# Previous attempt 1 failed\n\nIt finished, but its result failed the acceptance check "
                         "`pytest -q tests`.\nThe last lines of the check's output:\n\n```\nCHECK SAYS NO\n```\n"), text
    text = _render(home, plan, "a", record={**rec, "check": "not an object"})
    assert "`check`" in text and "AGENT STDERR" in text and "CHECK SAYS NO" not in text, text


def test_a_stderr_tail_that_cannot_be_read_is_left_out_of_the_retry_s_note(tmp_path, monkeypatch):
    """retry_context "error": the previous attempt's stderr opened but could not be read (an
    I/O error): the note says how the attempt ended and shows no tail, rather than failing."""
    import errno
    home = submit_home(tmp_path, [{"id": "a", "prompt": "do it", "agent": "true", "retry_context": "error"}])
    plan = home.load_plan("g")
    os.makedirs(os.path.dirname(home.attempt_path("g", "a", 1, "err")), exist_ok=True)
    Path(home.attempt_path("g", "a", 1, "err")).write_bytes(b"AGENT STDERR\n")
    rec = {"attempt": 1, "outcome": "failed", "exit_code": 3}
    assert "AGENT STDERR" in _render(home, plan, "a", record=rec)

    def eio(*a, **k):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(lc.os, "fdopen", eio)
    text = _render(home, plan, "a", record=rec)
    monkeypatch.undo()
    assert text.endswith("# Previous attempt 1 failed\n\nIt exited with code 3.\n"), text


def test_a_lost_goal_end_whose_summary_vanishes_before_its_age_is_read_is_not_announced(tmp_path, monkeypatch):
    """Another host's summary.json, read, then gone before its age could be read (the goal was
    archived meanwhile): nothing is appended and announce_if_lost says so (False)."""
    home = _ended_goal(tmp_path)
    _far_summary(home, "n1", 0)
    real = os.stat

    def stat(path, *a, **k):
        if path == home.summary_path("g"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real(path, *a, **k)
    monkeypatch.setattr(tr.os, "stat", stat)
    got = tr.announce_if_lost(home, "g", "w2")
    monkeypatch.undo()
    assert got is False and goal_events(home, ev.GOAL_FINISHED) == []


def test_the_critical_path_in_seconds_counts_a_task_s_own_duration_and_the_longest_soft_chain_below():
    """Ranking by the remaining path in seconds (HEFT's upward rank), with durations handed in
    for some tasks (1 s for the others): a task with a soft dependent counts its own seconds
    plus that dependent's path -- x (1 s) before y (2.5 s) outranks the lone z (3 s), which
    outranks w (no duration: 1 s)."""
    tasks = [_T("w"), _T("x"), _T("y", soft=["x"]), _T("z")]
    s = Scheduler(tasks, durations={"x": 1.0, "y": 2.5, "z": 3.0})
    assert s.rank == [1.0, 3.5, 2.5, 3.0]
    assert s.ready_ids() == ["x", "z", "w"], s.ready_ids()
    s = Scheduler([_T("w"), _T("v")], durations={"v": 1.5})
    assert s.ready_ids() == ["v", "w"]                # w's unknown duration counts 1 s, not more


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_birth_lock_is_seen_while_held_and_never_through_a_symlinked_task_folder(tmp_path):
    """being_born: True while a claim's creator holds the birth lock (acquire(hold=True) until
    owner.json), False after; a task folder that is a symbolic link -- even to a folder whose
    claim is being born -- is not followed: False."""
    home = Home(str(tmp_path / "home"))
    os.makedirs(home.task_dir("g", "t"))
    assert claims.acquire(home, "g", "t", hold=True) is True
    assert claims.being_born(home, "g", "t") is True
    os.symlink(home.task_dir("g", "t"), home.task_dir("g", "u"))
    assert claims.being_born(home, "g", "u") is False
    claims.update_owner(home, "g", "t", claims.new_owner("w1", 1, kind="external"))
    assert claims.being_born(home, "g", "t") is False


def test_a_claim_that_cannot_be_made_under_the_birth_lock_lets_the_lock_go(tmp_path, monkeypatch):
    """acquire(hold=True): the task folder is locked, then mkdir of claim/ fails (disk full):
    the error comes out as it was, and the lock's fd is closed (not leaked, not held)."""
    import errno

    from dagrun import fsio
    home = Home(str(tmp_path / "home"))
    os.makedirs(home.task_dir("g", "t"))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fsio, "mkdir", full)
    before = _fds()
    with pytest.raises(OSError) as e:
        claims.acquire(home, "g", "t", hold=True)
    assert e.value.errno == errno.ENOSPC and _fds() == before
    monkeypatch.undo()
    assert not claims.being_born(home, "g", "t")


def test_a_task_folder_that_was_there_is_checked_and_its_lock_kept_or_closed(tmp_path, monkeypatch):
    """acquire() makes the task folder without looking first. One that was there already (a
    retry) is checked: a symbolic link is refused in one line (no fd left), an ordinary one
    gets its claim (True, not NEW) under its birth lock. A folder made now says NEW, locked
    only if asked; a claim held by another is False with no fd left."""
    home = Home(str(tmp_path / "home"))
    os.makedirs(home.task_dir("g", "t"))
    os.makedirs(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", home.task_dir("g", "s"))
    before = _fds()
    for hold in (True, False):
        with pytest.raises(FsError) as e:
            claims.acquire(home, "g", "s", hold=hold)
        assert str(e.value).startswith(f"refusing to use {home.task_dir('g', 's')}: it is a symbolic link")
        assert _fds() == before and os.listdir(tmp_path / "elsewhere") == []
    assert claims.acquire(home, "g", "t", hold=True) is True
    assert _fds() == before + 1                                   # the folder's own lock
    assert claims.being_born(home, "g", "t")
    assert claims.acquire(home, "g", "t", hold=True) is False and _fds() == before + 1
    claims.release(home, "g", "t")
    assert _fds() == before
    assert claims.acquire(home, "g", "n", hold=True) is True
    assert claims.being_born(home, "g", "n")
    claims.update_owner(home, "g", "n", claims.new_owner("w1", 1, kind="external"))
    assert not claims.being_born(home, "g", "n") and _fds() == before
    assert claims.acquire(home, "g", "m") is True
    assert not claims.being_born(home, "g", "m") and _fds() == before        # not asked: no lock


def test_a_claim_task_or_gate_holds_the_birth_lock_until_its_owner_json_is_published(tmp_path, monkeypatch):
    """claim_task and claim_gate take their claim with the birth lock (acquire(hold=True)): at
    the moment owner.json is written a live creator's half-born claim cannot be judged stale;
    right after, the lock is gone."""
    home, plan = _awaiting_gate(tmp_path)
    seen = []
    real = claims.update_owner

    def spy(h, g, t, owner):
        seen.append((t, claims.being_born(h, g, t)))
        real(h, g, t, owner)
        seen.append((t, claims.being_born(h, g, t)))
    monkeypatch.setattr(claims, "update_owner", spy)
    lc.claim_gate(home, plan, "gate", by="alice", wait=0.0)
    home2 = submit_home(tmp_path / "2", [{"id": "a", "prompt": "x", "agent": "true"}])
    lc.claim_task(home2, home2.load_plan("g"), "a", worker="w1", kind="external")
    assert seen == [("gate", True), ("gate", False), ("a", True), ("a", False)]


def test_the_workspace_of_a_claim_whose_task_left_the_plan_is_not_captured(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    gone = lc.Claim("g", "b", 1, dict(c.owner), c.started)          # b is not (or no longer) in the plan
    assert lc.capture_workspace(home, plan, gone) is None and lc.capture_workspace(home, plan, c) is None


def test_the_units_of_a_timed_out_attempt_are_given_back_naming_its_outcome(tmp_path):
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "mutex": "db", "retries": 0}])
    plan, sched = home.load_plan("g"), _sched(home)
    assert sched.take() == "a"
    tr.finish(home, plan, sched, _claim(home, "a"), ok=False, worker="w1", outcome="timeout", reason="too slow")
    rel = [e for e in goal_events(home, ev.TASK_RESOURCES) if e.get("released")]
    assert [(e["task"], e["why"]) for e in rel] == [("a", "timeout")], rel


def test_a_claimer_does_not_wait_on_a_judge_stopped_in_its_probe(tmp_path):
    """The task folder is held exclusive (a judge stopped between its probe's flock and close):
    acquire(hold=True) tries the shared lock for ~0.1 s, then claims without it (the grace
    applies), its fd closed."""
    home = Home(str(tmp_path / "home"))
    os.makedirs(home.task_dir("g", "t"))
    fd = os.open(home.task_dir("g", "t"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = _fds()
        t0 = time.monotonic()
        assert claims.acquire(home, "g", "t", hold=True) is True
        assert time.monotonic() - t0 < 5 and _fds() == before
        assert home.claim_dir("g", "t") not in claims._BIRTHS
    finally:
        os.close(fd)


def test_a_gate_held_by_a_live_decider_is_waited_for_the_half_born_grace_and_a_second_by_default(tmp_path, monkeypatch):
    """claim_gate without `wait`: long enough for a decider that died half-born to be judged
    stale (HALF_BORN_GRACE), and one second more; then one line (the clock is stood in for)."""
    home, plan = _awaiting_gate(tmp_path)
    assert claims.acquire(home, "g", "gate")
    claims.update_owner(home, "g", "gate", claims.new_owner("bob", 1, kind="approval"))      # this live process
    grace = claims.HALF_BORN_GRACE
    readings = iter([100.0, 100.0 + grace + 0.5, 100.0 + grace + 1.5, 100.0 + grace + 2.5])
    clock = _Clock(time.time())
    clock.monotonic = lambda: next(readings)
    clock.sleep = clock.slept.append
    monkeypatch.setattr(lc, "time", clock)
    with pytest.raises(Refused, match="held by another process right now"):
        lc.claim_gate(home, plan, "gate", by="alice")
    monkeypatch.undo()
    assert clock.slept == [0.02]          # refused at the first reading past grace + 1 s


def test_without_flock_a_claim_is_born_without_its_lock_and_no_probe_says_it_is_being_born(tmp_path, monkeypatch):
    """A file system where flock fails (ENOLCK): acquire(hold=True) claims without the birth
    lock (the grace applies), leaving no fd; being_born says no."""
    import errno
    home = Home(str(tmp_path / "home"))
    os.makedirs(home.task_dir("g", "t"))

    def nolock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(claims.fcntl, "flock", nolock)
    before = _fds()
    assert claims.acquire(home, "g", "t", hold=True) is True
    assert _fds() == before and home.claim_dir("g", "t") not in claims._BIRTHS
    assert claims.being_born(home, "g", "t") is False and _fds() == before


def test_a_failure_recorded_before_its_holder_died_is_kept_when_the_claim_is_broken(tmp_path, monkeypatch):
    """A holder that wrote a failed attempt's record (a retry to come: failures 1, retry_at
    after the backoff) and died before releasing its claim: breaking the stale claim keeps
    that record. It used to be written over as "lost" (failures 0, no retry_at): the task got a
    retry more than `retries`, at once instead of after the backoff, and the reason was gone
    (found by mutation testing: lifecycle.x__record_before_7)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 2, "retry_backoff": 60}])
    plan = home.load_plan("g")
    c = _claim(home, "a")

    def die(*a, **k):
        raise SystemExit("died before the release")
    monkeypatch.setattr(claims, "release", die)
    with pytest.raises(SystemExit):
        lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=3, reason="exit code 3")
    monkeypatch.undo()
    rec = read_json(home.attempt_path("g", "a", 1, "json"))
    assert rec["failures"] == 1 and rec["retry_at"] is not None and not rec["final"]
    owner = claims.read_owner(home, "g", "a")
    owner["pid"] = dead_pid()
    claims.update_owner(home, "g", "a", owner)
    broke = lc.break_if_stale(home, plan, "a", worker="w2")
    assert broke is not None and broke[1] == 1 and broke[2] is None
    assert read_json(home.attempt_path("g", "a", 1, "json")) == rec       # the holder's verdict stands
    assert not os.path.exists(home.claim_dir("g", "a"))
    assert lc.claim_task(home, plan, "a", worker="w3", kind="external") is None   # backing off, as recorded


def test_a_symlinked_failure_record_is_not_taken_for_the_attempt_s_own_when_its_claim_is_broken(tmp_path):
    """The record kept when a stale claim is broken must be the attempt's own file: a symlink
    at attempts/1.json to a counted failure record elsewhere is replaced by the lost record,
    and its target is left alone (found by mutation testing: lifecycle.x__own_verdict_7/_9/_20)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 2}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    elsewhere = tmp_path / "elsewhere.json"
    body = json.dumps({"attempt": 1, "outcome": "failed", "counted": True, "final": False, "failures": 1,
                       "retry_at": time.time() + 600, "reason": "not mine"})
    elsewhere.write_text(body)
    os.makedirs(home.attempts_dir("g", "a"), exist_ok=True)
    os.symlink(elsewhere, home.attempt_path("g", "a", 1, "json"))
    claims.update_owner(home, "g", "a", {**c.owner, "pid": dead_pid()})
    broke = lc.break_if_stale(home, plan, "a", worker="w2")
    assert broke is not None and broke[1] == 1
    path = home.attempt_path("g", "a", 1, "json")
    assert not os.path.islink(path) and read_json(path)["outcome"] == "lost"
    assert elsewhere.read_text() == body


def test_a_final_failure_whose_marker_was_never_published_is_recorded_lost_with_the_count_before_it(tmp_path, monkeypatch):
    """A holder that wrote its attempt's final failure record and died before publishing the
    `failed` marker left no verdict (the marker is the commit point): breaking the claim
    records the attempt as lost, counting the failures of the records *before* it -- not the
    unpublished record's own (lifecycle.x__record_before_7 read it first)."""
    home = submit_home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true", "retries": 1}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    assert not lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=3, reason="one")["final"]
    rec1 = read_json(home.attempt_path("g", "a", 1, "json"))
    Path(home.attempt_path("g", "a", 1, "json")).write_text(json.dumps({**rec1, "retry_at": time.time() - 1}))  # backoff over
    c = _claim(home, "a")
    assert c.attempt == 2

    def die(*a, **k):
        raise SystemExit("died before the failed marker")
    monkeypatch.setattr(lc, "_publish_from_owner", die)
    with pytest.raises(SystemExit):
        lc.commit_failure(home, plan, c, outcome="failed", ended=time.time(), exit_code=3, reason="two")
    monkeypatch.undo()
    assert read_json(home.attempt_path("g", "a", 2, "json"))["final"] is True and lc.marker_of(home, "g", "a") is None
    claims.update_owner(home, "g", "a", {**claims.read_owner(home, "g", "a"), "pid": dead_pid()})
    broke = lc.break_if_stale(home, plan, "a", worker="w2")
    assert broke is not None and broke[1:] == (2, None)
    rec2 = read_json(home.attempt_path("g", "a", 2, "json"))
    assert (rec2["outcome"], rec2["counted"], rec2["failures"], rec2["final"]) == ("lost", False, 1, False)
