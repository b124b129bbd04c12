"""The claim / commit / transition code's records, pinned field by field (issue 21, mutation
testing of claim.py, lifecycle.py, transitions.py; README.md "Mutation testing").

Each test drives the public functions of lifecycle / transitions / claim on a real home
under tmp_path (real files, real processes for holders) and checks what a user or another
process reads: the markers, attempts/<n>.json, the captures, events.jsonl. mutmut swaps
functions inside the test process, so these are the tests that see its mutants; the
survivors they kill are named in tests/reliability/mutants.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dagrun import claim as claims
from dagrun import edit
from dagrun import lifecycle as lc
from dagrun import transitions as tr
from dagrun.store import Home, now_iso
from dagrun.usage import RAW_FILE


def _home(tmp_path: Path, tasks: list[dict], **top) -> Home:
    doc = {"goal": "g", **top, "tasks": tasks}
    p = tmp_path / "plan" / "dag.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc))
    home = Home(str(tmp_path / "home"))
    assert edit.submit(home, str(p)).goal == "g"
    return home


def _json(path: str) -> dict:
    with open(path, "rb") as f:
        return json.loads(f.read())


def _events(home: Home, kind: str | None = None) -> list[dict]:
    with open(home.events_path("g"), "rb") as f:
        out = [json.loads(x) for x in f.read().splitlines()]
    return [e for e in out if kind is None or e["type"] == kind]


def _claim(home: Home, t: str, worker: str = "w1") -> lc.Claim:
    c = lc.claim_task(home, home.load_plan("g"), t, worker=worker, kind="external")
    assert c is not None and c.attempt >= 1
    return c


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ commit_done: the done marker
def test_the_done_marker_records_exactly_the_attempt(tmp_path):
    """Every field of `done`, from a claim that started at a known time: the captures of the
    claim (stdout, stderr, a preset's raw output) move into the task folder."""
    home = _home(tmp_path, [{"id": "a", "prompt": "x", "agent": "true"}])
    plan = home.load_plan("g")
    c = _claim(home, "a")
    c.started = 1_700_000_000.25
    cdir = home.claim_dir("g", "a")
    Path(cdir, "stdout").write_bytes(b"OUT\n")
    Path(cdir, "stderr").write_bytes(b"ERR\n")
    Path(cdir, RAW_FILE).write_bytes(b"RAW")
    body = lc.commit_done(home, plan, c, ended=1_700_000_012.3456789, exit_code=0)
    done = _json(home.marker_path("g", "a", "done"))
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
from dagrun.scheduler import FairShare, Scheduler  # noqa: E402


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
