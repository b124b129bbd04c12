"""Status data for the views: one goal's overview, one goal's task table, a task's output and
log files (for `dagrun output`/`logs` and the MCP server alike)."""
from __future__ import annotations

import os
import time

import orjson

from . import bulk, fsio, statuscache
from . import states as S
from .store import Home, dumps, loads, now_iso, parse_ts

# What computing a status needs (the scheduler, lifecycle, budget, resources, summary, usage)
# is imported by the functions that compute one: `status GOAL --json` of a quiet goal prints
# its snapshot (statuscache.py) and pays none of those imports (~0.04 s of a ~0.12 s call at
# 10 000 tasks; ARCHITECTURE.md, "Plans of 100 000 tasks").


def goal_overview(home: Home, g: str) -> dict:
    """State and counts of goal g. An ended goal is read from its summary.json (written once
    when it ended; removed by whatever reopens it, and a task event appended after it makes
    it void), so the goal table of a home with a thousand finished goals does not read every
    task's files; other goals are computed from the files."""
    row = ended_overview(home, g)
    if row is not None:
        return row
    hit = statuscache.load(home, g)          # a quiet goal's status snapshot, when current
    if hit is not None:
        return hit[0]
    from .lifecycle import scheduler_from_facts
    plan = home.load_plan(g)
    sched = scheduler_from_facts(home, plan, home.snapshot(g, plan, view=True))
    counts = sched.counts()
    return {"goal": g, "state": _goal_state(sched, len(plan.tasks)), "tasks": len(plan.tasks), "counts": counts,
            "source": plan.source}


def ended_overview(home: Home, g: str) -> dict | None:
    """goal_overview from summary.json (summary.ended), or None when the goal has not ended."""
    from .summary import ended
    s = ended(home, g)
    if s is None or "source" not in s:
        return None
    counts, n = s["counts"], s["tasks"]
    state = S.DONE if counts.get(S.DONE, 0) == n else S.FAILED if counts.get(S.FAILED, 0) else S.CANCELLED
    return {"goal": g, "state": state, "tasks": n, "counts": counts, "source": s["source"]}


def _goal_state(sched, n: int) -> str:
    c = sched.counts()
    if sched.is_finished():
        if c.get(S.DONE, 0) + c.get(S.SKIPPED, 0) == n:
            return S.DONE               # skipped by a condition is part of a successful run
        return S.FAILED if c.get(S.FAILED, 0) else S.CANCELLED
    if c.get(S.RUNNING, 0):
        return S.RUNNING
    if c.get(S.RETRYING, 0):
        return S.RETRYING
    if c.get(S.AWAITING, 0) and not c.get(S.READY, 0):
        return S.AWAITING               # nothing moves until a person decides
    return S.READY


def _waiting(home: Home, plan, sched) -> dict[str, str]:
    """Ready tasks that cannot start yet, and why: "waiting for resource gpu (held by g/t)",
    "needs 3 units of gpu; its capacity is 2", "serial group s: a runs first"."""
    from . import resources as res
    out: dict[str, str] = {}
    if sched.serial_before is not None:
        for t in sched.ready_ids():
            w = sched.serial_wait(t)
            if w:
                out[t] = f"serial group {plan.task(t).serial}: {w} runs first"
    held = sched.resource_held()
    if held:
        pools = res.plan_pools(plan, res.limits(home))
        for t, keys in held.items():
            if t in out:
                continue
            why = []
            for p, n in pools.get(t, {}).items():
                if p.key not in keys:
                    continue
                if n > p.cap:
                    why.append(f"needs {n} units of {res.describe(p.key)}; its capacity is {p.cap}")
                else:
                    by = res.holders(home, p.key)
                    why.append(f"waiting for resource {res.describe(p.key)}" + (f" (held by {', '.join(by)})" if by else ""))
            if why:
                out[t] = "; ".join(why)
    return out


REMOTE_RUNNERS = ("slurm", "ray")     # handles that name a remote id: a Slurm job, a Ray task


def goal_detail(home: Home, g: str, fresh: statuscache.Fresh | None = None) -> dict:
    """Goal g's state, counts and one row per task (`dagrun status GOAL --json`). fresh: the
    snapshot this process just derived (refresh_snapshot), used while the goal's own files
    (plan, events, summary, ...) are still the ones it was derived with."""
    with bulk.paused():            # a big goal's rows are many small dicts that all survive
        if fresh is not None and fresh.unchanged():
            return orjson.loads(fresh.body)
        hit = statuscache.load(home, g)
        if hit is not None:
            return orjson.loads(hit[1])
        return _computed(home, g)[0]


def goal_detail_json(home: Home, g: str) -> bytes:
    """goal_detail as the bytes `status GOAL --json` prints: a current status snapshot's as
    they are (nothing parsed), else computed from the files."""
    hit = statuscache.load(home, g)
    if hit is not None:
        return hit[1]
    with bulk.paused():
        return _computed(home, g)[1]


def refresh_snapshot(home: Home, g: str, plan=None, plan_stamp: tuple | None = None) -> statuscache.Fresh | None:
    """Derive goal g's status snapshot now (a worker, when a goal it served ended). plan: the
    caller's Plan, used only if plan_stamp (the plan.json it was read from) is still the
    file's. The snapshot when one was published (goal_detail(fresh=) takes it), else None."""
    with bulk.paused():
        return _computed(home, g, plan, plan_stamp)[2]


class EndRead:
    """A goal's files read once for both things its end derives (the engine, when a goal it
    serves ends): the status snapshot's stamps, taken first, and the task facts read after
    them. summary.json is built from the facts (summary.goal_run(facts=)); the snapshot is
    then derived from the same facts (snapshot_after_end) instead of reading every task
    folder a second time."""

    def __init__(self, stamps: statuscache.Stamps, plan, facts: dict, sched=None):
        self.stamps, self.plan, self.facts, self.sched = stamps, plan, facts, sched


def read_for_end(home: Home, g: str, plan, plan_stamp: tuple | None, sched=None) -> EndRead | None:
    """Stamp goal g's files, then read its task facts (view=True: what status reads). None
    when the caller's plan is not plan.json's any more (the ordinary path then reads it all).
    sched: the caller's scheduler of that plan, whose graph the snapshot's scheduler takes
    (lifecycle.scheduler_from_facts(like=))."""
    with bulk.paused():
        stamps = statuscache.Stamps(home, g)
        if plan is None or plan_stamp is None or list(plan_stamp) != stamps.files["plan"]:
            return None
        return EndRead(stamps, plan, home.snapshot(g, plan, detail=True, view=True, present=stamps.names()), sched)


def snapshot_after_end(home: Home, g: str, pre: EndRead) -> statuscache.Fresh | None:
    """The status snapshot from what read_for_end read, once summary.json and the goal's last
    event lines are out. Between the stamps and now this very process wrote two of the
    stamped files: summary.json (published by end_goal_if_finished) and events.jsonl (its
    lines). They are stamped again, before the detail reads summary.json -- events.jsonl only
    when every byte appended since its stamp is this thread's own (events.wrote_all):
    another process's line there is a transition the facts may not show, and then the old
    stamp stays and nothing is written (statuscache.write finds the file changed). Every
    other stamp (task folders, plan, limits, the hook failure) is the one taken before the
    facts were read, as always."""
    from . import events as ev

    st = pre.stamps
    path = home.events_path(g)
    old, now = st.files["events"], statuscache._stat(path)
    if old is not None and now is not None and old[0] == now[0] and ev.wrote_all(path, old[2], now[2]):
        st.files["events"] = now
    st.files["summary"] = statuscache._stat(home.summary_path(g))
    with bulk.paused():
        return _computed(home, g, pre.plan, None, stamps=st, facts=pre.facts, like=pre.sched)[2]


def _computed(home: Home, g: str, plan=None, plan_stamp=None, *, stamps: statuscache.Stamps | None = None,
              facts: dict | None = None, like=None) -> tuple[dict, bytes, statuscache.Fresh | None]:
    """(detail, its bytes, the snapshot if one was published). The stamps are taken before any file is
    read, so whatever changes while this runs makes the snapshot stale, never wrong. stamps and
    facts: taken and read by read_for_end (plan: the one the facts were read for)."""
    if stamps is None:
        stamps = statuscache.Stamps(home, g)
        if plan is not None and (plan_stamp is None or list(plan_stamp) != stamps.files["plan"]):
            plan = None                               # the caller's plan is not the file's now
    d, plan, facts = _goal_detail(home, g, plan, facts, like, present=stamps.names() if facts is None else None)
    body = dumps(d)
    wrote = None
    if _snapshottable(home, plan, d):
        again = [t for t, f in facts.items() if f.extra.get("attempts")]
        stamps.add_attempts(again)    # stamped after the read: the records are read again
        if all(home.task_facts(g, t, detail=True, view=True) == facts[t] for t in again):
            try:
                wrote = statuscache.write(stamps, {"goal": g, "state": d["state"], "tasks": len(plan.tasks),
                                                   "counts": d["counts"], "source": d["source"]}, body)
            except OSError:     # a read-only home (another user's), a full disk: status still answers
                wrote = None
    return d, body, wrote


_LIVE = (S.RUNNING, S.RETRYING)


def _snapshottable(home: Home, plan, d: dict) -> bool:
    """Rows that stay true until a file changes: no running attempt (its duration grows, its
    holder may die), no retry timer, no budget, no resource pool (other goals hold units)."""
    from . import resources as res
    if plan.budget or any(r["state"] in _LIVE for r in d["tasks"]):
        return False
    return not res.plan_pools(plan, res.limits(home))


def _goal_detail(home: Home, g: str, plan=None, facts: dict | None = None, like=None,
                 present: set | None = None) -> tuple[dict, object, dict]:
    from . import budget
    from .lifecycle import scheduler_from_facts
    from .scheduler import NAMES, skip_reason
    from .summary import usage_by_task
    from .usage import add as add_usage

    plan = plan if plan is not None else home.load_plan(g)
    if facts is None:
        facts = home.snapshot(g, plan, detail=True, view=True, present=present)   # one read of every task folder
    sched = scheduler_from_facts(home, plan, facts, like=like)
    now = time.time()
    held = set(sched.budget_held())
    waits = _waiting(home, plan, sched)
    rows = []
    RUNNING, RETRYING, AWAITING, SKIPPED, BLOCKED, READY = S.RUNNING, S.RETRYING, S.AWAITING, S.SKIPPED, \
        S.BLOCKED, S.READY
    # the scheduler's ids are the plan's, in order: its states by position (no lookup per task)
    for t, task, st in zip(sched.ids, plan.tasks, map(NAMES.__getitem__, sched.state)):
        f = facts[t]
        marker = f.marker
        row = {"task": t, "state": st, "attempt": f.attempt, "worker": None, "started": None,
               "duration": None}
        if st == RUNNING and f.owner:
            row["worker"] = f.owner.get("worker")
            h = f.owner.get("handle")
            if isinstance(h, dict) and h.get("node"):      # a cluster runner's node, once placed
                row["node"] = h["node"]
            if isinstance(h, dict) and h.get("runner") in REMOTE_RUNNERS:   # ... its runner and remote id
                row["runner"] = h["runner"]
                row.update({k: h[k] for k in ("job", "task_id") if h.get(k)})
            row["started"] = f.owner.get("since")
            since = parse_ts(f.owner.get("since"))
            if since:
                row["duration"] = round(now - since, 3)
        elif marker:
            row["worker"] = marker.get("worker") or marker.get("by")
            row["started"] = marker.get("started")
            row["duration"] = marker.get("duration")
            if marker.get("reason"):
                row["reason"] = marker["reason"]
            if marker.get("node"):
                row["node"] = marker["node"]
            if marker.get("cached") is True:
                row["cached"] = True
            if marker.get("exit_code") is not None and st == S.FAILED:
                row["exit_code"] = marker["exit_code"]
        elif st == RETRYING and f.record:
            row["retry_at"] = now_iso(f.retry_at)
            row["reason"] = f.record.get("reason")
        if st == AWAITING:              # an approval gate: what it asks, since when, until when
            gate = f.extra.get("awaiting") or {}
            row["started"] = gate.get("since")
            row["reason"] = gate.get("prompt")
            if gate.get("timeout_at"):
                row["timeout_at"] = gate["timeout_at"]
        if marker and marker.get("decided_by"):
            row["decided_by"] = marker["decided_by"]
            row["decided_at"] = marker.get("decided_at")
        if st == SKIPPED and not marker:        # skipped by its trigger rule (derived)
            root = sched.blocked_by(t)
            if root is not None:
                row["skipped_by"] = root
            row["reason"] = skip_reason(root)
        if task.for_each:            # fan-out: a template (its instances once expanded)
            row["template"] = {"from": task.for_each["from"], "instances": task.fanout}
        elif task.origin:
            edit = task.origin.get("edit")
            if edit == "fanout":
                row["instance_of"] = task.origin.get("of")
            elif edit == "add":
                row["added_by"] = task.origin.get("by")
        if st == BLOCKED:
            row["blocked_by"] = sched.blocked_by(t)
        elif st == READY:
            if t in held:       # the budget pool keeps it from starting
                row["state"], row["blocked_by"] = BLOCKED, "budget"
                row["reason"] = f"budget: spent {budget.fmt(sched.spent, sched.budget)} of {budget.fmt(sched.budget)}"
            elif t in waits:      # resources or its serial group keep it from starting
                row["waiting_for"] = row["reason"] = waits[t]
        rows.append(row)
    summary = loads(fsio.read_bytes(home.summary_path(g)))
    per = usage_by_task(home, g, facts)                   # usage: every attempt's, failed ones too
    total = None
    for row in rows:
        if row["task"] in per:
            row["usage"] = per[row["task"]]
            total = add_usage(total, per[row["task"]])
    # the goal's last failed hook (hooks never change a task's state, so it shows here)
    hook_failure = loads(fsio.read_bytes(os.path.join(home.hooks_due_dir(g), "last_failure.json")))
    return {"goal": g, "state": _goal_state(sched, len(plan.tasks)), "counts": sched.counts(),
            "tasks": rows, "summary": summary, "source": plan.source, "usage": total,
            "hook_failure": hook_failure,
            **({"budget": {"pool": sched.budget, "spent": sched.spent, "held": sorted(held)}} if plan.budget else {})}, \
        plan, facts




def task_detail(home: Home, g: str, t: str) -> dict:
    """One task for `dagrun show`: its state row, its plan fields (deps, trigger, when,
    approval), its dependencies' states, and the rendered prompt.md if there is one (for an
    approval gate: the upstream outputs a person decides on)."""
    from .errors import NotFound

    plan = check_task(home, g, t)
    if not plan.has(t):
        raise NotFound(f"goal {g!r} has no task {t!r} (any more)")
    d = goal_detail(home, g)
    row = next(r for r in d["tasks"] if r["task"] == t)
    states = {r["task"]: r["state"] for r in d["tasks"]}
    task = plan.task(t)
    prompt = home.read_task_file(home.prompt_path(g, t), 1 << 20)
    out = {"goal": g, **row, "deps": {x: states.get(x) for x in task.deps},
           "soft_deps": {x: states.get(x) for x in task.soft_deps}, "trigger": task.trigger,
           "when": task.when, "approval": task.approval,
           "prompt_md": prompt.decode("utf-8", "replace") if prompt is not None else None}
    if row["state"] == S.AWAITING:
        out["commands"] = [f"dagrun approve {g} {t} --note TEXT", f"dagrun reject {g} {t} --reason TEXT"]
    return out


def check_task(home: Home, g: str, t: str):
    """Ids checked; the goal's plan has t (or its folder exists). Raises NotFound."""
    from .errors import NotFound
    from .plan import check_id

    check_id("goal", g)
    check_id("task", t)
    plan = home.load_plan(g)
    if not plan.has(t) and not os.path.isdir(home.task_dir(g, t)):
        raise NotFound(f"goal {g!r} has no task {t!r}")
    return plan


def task_output(home: Home, g: str, t: str) -> bytes:
    """A done task's output; NotFound (with its state) when it has none."""
    from .errors import NotFound
    from .lifecycle import marker_of

    check_task(home, g, t)
    m = marker_of(home, g, t)
    if m != S.DONE:
        state = m or ("running" if os.path.isdir(home.claim_dir(g, t)) else "not done")
        raise NotFound(f"{g}/{t} has no output: it is {state}")
    return home.read_task_file(home.output_path(g, t)) or b""


def log_paths(home: Home, g: str, t: str, *, attempt: int | None = None,
              stdout: bool = False) -> tuple[list[str], int, str]:
    """Where an attempt's stderr (or stdout) is, best first: the running claim's capture, the
    attempt record's copy, the task's stderr.log/output. (paths, attempt number, "stderr"|"stdout")."""
    from .errors import NotFound

    check_task(home, g, t)
    row = next((r for r in goal_detail(home, g)["tasks"] if r["task"] == t), None)
    running = os.path.isdir(home.claim_dir(g, t))
    latest = int((row or {}).get("attempt") or 0)
    if not latest:
        raise NotFound(f"{g}/{t} has not started yet: no logs")
    n = attempt or latest
    if n > latest:
        raise NotFound(f"{g}/{t} has {latest} attempt{'s' if latest != 1 else ''}: no attempt {n}")
    ext, name = ("out", "stdout") if stdout else ("err", "stderr")
    paths = []
    if n == latest and running:
        paths.append(os.path.join(home.claim_dir(g, t), name))
    paths.append(home.attempt_path(g, t, n, ext))
    if n == latest and not running:
        paths.append(home.output_path(g, t) if stdout else home.stderr_path(g, t))
    return paths, n, name
