"""Hooks: commands and webhooks run when a task or a goal changes state.

Where they come from, in this order: the plan's `hooks`, the task's `hooks`, then the home's
`$DAGRUN_HOME/hooks/<event>.d/*` (run-parts style: executable regular files, sorted by name).
An argv hook is started without a shell, the event's JSON line on stdin, `DAGRUN_*` variables
in its environment; at its timeout its whole process group is killed. A webhook is a POST of
the same JSON, retried with exponential backoff.

At least once. transitions.py announces a hooked event in three steps: `prepare()`
publishes a record `goals/<g>/hooks/due-<id>.json` by rename (the event, the hooks, which of
them already ran, and who runs them: host, boot id, pid + start time), then the event is
appended, then `start()` runs the hooks on the goal's hook thread, which removes the record
at the end. For a task's own outcome the record is published before the commit point
(`prepare_pending`, then `settle` once the event is known), so no crash loses it; `replay()`
(engine start-up, every rescan, `dagrun claim`) takes over a record whose runner is dead
under the goal's break lock and runs the hooks not marked done -- a pending one only if its
commit (marker / attempt record of its attempt) happened, else it is discarded. A hook can
therefore run twice (it was running when the process died). The same holds for the
transitions a commit point causes: before a `cancelled` marker (on_cancelled,
`prepare_cancel`), before a marker that blocks dependents (one on_blocked record per task
the scheduler's `would_block` names, `prepare_blocked`), before a marker that skips tasks (a
task's own `skipped` marker, or any marker after which a trigger rule skips dependents: one
on_skipped record per task the scheduler's `would_skip` names, `prepare_skipped`), before
summary.json (on_goal_finished, `prepare_goal`); each is settled just before its own event
is appended.

Never in the way: a failing hook (exit != 0, timeout, webhook error) is reported through the
callback transitions gives (an `agent.hook.failed` event, a line on stderr) and changes
nothing about the task. The hooks run on a thread per record, so a slow hook never stalls the
engine's loop; the threads are not daemons, so a short-lived `dagrun complete` waits for its
hooks before it exits. With no hook configured `prepare()` costs a dict lookup and one stat
(is there a `$DAGRUN_HOME/hooks`?).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

import orjson

from . import fsio, linesink
from . import events as ev
from .plan import DEFAULT_HOOK_TIMEOUT, Plan
from .proc import BOOT_ID, HOST, is_alive, self_start
from .store import Home, TurnMemo, loads

FOREIGN_GRACE = 300.0      # a record run by another host is taken over after this long


def event_name(e: dict) -> str | None:
    """The hook event an appended event triggers (on_done, ...), or None."""
    typ = e.get("type")
    if typ == ev.TASK_STATUS:
        st = e.get("status")
        if st in (ev.DONE, ev.FAILED, ev.RETRYING, ev.CANCELLED, ev.SKIPPED):
            return "on_" + st
        if st == ev.AWAITING:
            return "on_approval_needed"
        return None
    if typ == ev.TASK_BLOCKED:
        return "on_blocked" if e.get("blocked_by") else None     # not a stall warning
    if typ == ev.GOAL_FINISHED:
        return "on_goal_finished"
    return None


def hooks_for(home: Home, plan: Plan, name: str, task: str | None) -> list[dict]:
    """The hooks of one event: plan's, then the task's, then the home's run-parts folder."""
    if name not in plan.hook_events and not _home_hooks(home):
        return []          # neither the plan nor any task names it, no home hooks: the usual case
    out = []
    if plan.hooks:
        out += [{**h, "from": "plan"} for h in plan.hooks.get(name, ())]
    if task and plan.has(task):
        th = plan.task(task).hooks
        if th:
            out += [{**h, "from": "task"} for h in th.get(name, ())]
    if not _home_hooks(home):                   # no $DAGRUN_HOME/hooks: the usual case, one stat
        return out
    d = home.home_hooks_dir(name)
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for n in names:
        p = os.path.join(d, n)
        if n.startswith(".") or n.endswith("~") or not os.path.isfile(p) or not os.access(p, os.X_OK):
            continue
        out.append({"argv": [p], "timeout": DEFAULT_HOOK_TIMEOUT, "from": "home", "cwd": home.root})
    return out


# Whether $DAGRUN_HOME/hooks exists is one stat per look, and a task's commit looks three
# times (its pending record, its on_skipped check, its event): the engine's loop asks once
# per turn (store.TurnMemo; hold_turn/end_turn/release_turn), other threads every time.
_TURN = TurnMemo()
hold_turn, end_turn, release_turn = _TURN.hold, _TURN.end, _TURN.release


def none_for(home: Home, plan: Plan) -> bool:
    """Can no event of this plan have a hook -- none in the plan or its tasks, and no
    $DAGRUN_HOME/hooks folder (the turn's look)? hooks_for then says [] for every event, so
    a transition may skip every prepare (transitions.finish: a commit's three looks)."""
    return not plan.hook_events and not _home_hooks(home)


def _hooks_folder(home: Home) -> bool:
    return os.path.isdir(home.hooks_root())


def _home_hooks(home: Home) -> bool:
    """Does $DAGRUN_HOME/hooks exist (is a folder)?"""
    return _TURN.get(home, _hooks_folder)


# ---------------------------------------------------------------------------------- firing
_threads: list[threading.Thread] = []
_queues: dict[str, list] = {}          # goal -> records waiting for its hook thread
_workers: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def prepare(home: Home, plan: Plan, e: dict):
    """Before the event is appended: publish the record of the hooks it triggers. Returns
    what `start` needs, or None when no hook is configured (the usual case, no I/O but one
    stat)."""
    name = event_name(e)
    if name is None:
        return None
    hooks = hooks_for(home, plan, name, e.get("task"))
    if not hooks:
        return None
    g = plan.goal
    rec = {"id": time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(6).hex(), "name": name,
           "event": e, "hooks": hooks, "done": [], "plan_dir": plan.plan_dir, "owner": _me()}
    d = home.hooks_due_dir(g)
    path = os.path.join(d, "due-" + rec["id"] + ".json")
    try:
        fsio.makedirs(d)
        fsio.write_atomic(path, orjson.dumps(rec))
    except OSError as err:       # a hook is never the transition's problem: run it unrecorded
        _log(f"cannot record hooks due in {d}: {err.strerror}; running them without a record")
        path = None
    return (home, g, path, rec)


def prepare_pending(home: Home, plan: Plan, g: str, t: str, attempt: int, names: tuple[str, ...]):
    """Before a task's own commit point (its `done`/`failed` marker, its attempt record):
    publish a *pending* record of the hooks the coming event may trigger (`names`: on_done,
    or on_failed and on_retrying -- which one is known only after the commit). `settle()`
    turns it into an ordinary record once the event is known; a replay runs a pending record
    only if the commit it belongs to happened (the task's marker or attempt record for this
    attempt exists) and discards it otherwise. So no crash between the agent's exit and the
    event loses the hooks. None when none of `names` has a hook (no I/O but the stat)."""
    cands = {n: h for n in names if (h := hooks_for(home, plan, n, t))}
    if not cands:
        return None
    return _publish_pending(home, plan, g, {"kind": "outcome", "task": t, "attempt": attempt, "candidates": cands},
                            {"type": ev.TASK_STATUS, "goal": g, "task": t, "attempt": attempt})


def prepare_cancel(home: Home, plan: Plan, g: str, t: str, cancel_id: str):
    """Before a `cancelled` marker is written: the pending record of the task's on_cancelled
    hooks (run by a replay if the marker exists and names `cancel_id`)."""
    hooks = hooks_for(home, plan, "on_cancelled", t)
    if not hooks:
        return None
    return _publish_pending(home, plan, g, {"kind": "cancelled", "task": t, "cancel_id": cancel_id,
                                            "candidates": {"on_cancelled": hooks}},
                            {"type": ev.TASK_STATUS, "goal": g, "task": t})


def prepare_blocked(home: Home, plan: Plan, g: str, root: str, attempt: int | None, cancel_id: str | None,
                    dependents) -> dict:
    """Before the marker of `root` that blocks `dependents()` (its final `failed` marker of
    `attempt`, or its `cancelled` marker naming `cancel_id`; the scheduler's would_block
    says who): one pending record per dependent with an on_blocked hook, {dependent: record}.
    A replay runs one if that marker exists. {} without any on_blocked hook (one stat)."""
    if not any_hook(home, plan, "on_blocked"):
        return {}
    out = {}
    for d in dependents():
        hooks = hooks_for(home, plan, "on_blocked", d)
        if hooks:
            out[d] = _publish_pending(home, plan, g, {"kind": "blocked", "task": d, "root": root,
                                                      "root_attempt": attempt, "cancel_id": cancel_id,
                                                      "candidates": {"on_blocked": hooks}},
                                      {"type": ev.TASK_BLOCKED, "goal": g, "task": d, "blocked_by": root})
    return out


def prepare_skipped(home: Home, plan: Plan, g: str, cause: dict, skips) -> dict:
    """Before the marker that skips tasks (`cause`: {"marker": done|failed|skipped|cancelled,
    "task", "attempt" of a done/failed marker, "id": the skip_id/cancel_id it names}): one
    pending record per task in `skips()` -- [(task, its coming skipped event's fields)]: the
    task's own skip (its `when` was false) and those its trigger rule skips, as the
    scheduler's would_skip says -- with an on_skipped hook, {task: record}. A replay runs one if
    that marker exists. {} without any on_skipped hook (one stat)."""
    if not any_hook(home, plan, "on_skipped"):
        return {}
    out = {}
    for t, fields in skips():
        hooks = hooks_for(home, plan, "on_skipped", t)
        if hooks:
            out[t] = _publish_pending(home, plan, g, {"kind": "skipped", "task": t, "cause": cause,
                                                      "candidates": {"on_skipped": hooks}},
                                      {"type": ev.TASK_STATUS, "goal": g, "task": t, "status": ev.SKIPPED, **fields})
    return out


def prepare_goal(home: Home, plan: Plan, finish_id: str):
    """Before summary.json is published (the goal's commit point): the pending record of the
    on_goal_finished hooks, run by a replay if the summary names this finisher."""
    hooks = hooks_for(home, plan, "on_goal_finished", None)
    if not hooks:
        return None
    return _publish_pending(home, plan, plan.goal, {"kind": "goal", "finish_id": finish_id,
                                                    "candidates": {"on_goal_finished": hooks}},
                            {"type": ev.GOAL_FINISHED, "goal": plan.goal, "finish_id": finish_id})


def any_hook(home: Home, plan: Plan, *names: str) -> bool:
    """Has any task of the plan a hook for one of `names` (plan, task or home level)? No I/O
    but a stat when there is none."""
    if any(n in plan.hook_events for n in names):
        return True
    if not _home_hooks(home):
        return False
    return any(hooks_for(home, plan, n, None) for n in names)


_PENDING_KEYS = ("pending", "candidates", "kind", "task", "attempt", "root", "root_attempt", "cancel_id",
                 "finish_id", "cause")


def _publish_pending(home: Home, plan: Plan, g: str, what: dict, event: dict):
    rec = {"id": time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(6).hex(),
           "pending": True, **what, "event": event,
           "name": "", "hooks": [], "done": [], "plan_dir": plan.plan_dir, "owner": _me()}
    d = home.hooks_due_dir(g)
    path = os.path.join(d, "due-" + rec["id"] + ".json")
    try:
        fsio.makedirs(d)
        fsio.write_atomic(path, orjson.dumps(rec))
    except OSError as err:
        _log(f"cannot record hooks due in {d}: {err.strerror}; running them without a record")
        path = None
    return (home, g, path, rec)


def abandon(pending) -> None:
    """The commit a pending record was published for did not happen (an error raised)."""
    if pending is not None and pending[2] is not None:
        try:
            fsio.remove(pending[2])
        except OSError:
            pass


def settle(pending, e: dict):
    """After the commit, before the event is appended: the pending record becomes the
    ordinary record of `e` (rewritten in place), or goes when `e` has no hook."""
    if pending is None:
        return None
    home, g, path, rec = pending
    name = event_name(e)
    hooks = rec["candidates"].get(name) if name else None
    if not hooks:
        abandon(pending)
        return None
    rec = {k: v for k, v in rec.items() if k not in _PENDING_KEYS}
    rec.update(name=name, event=e, hooks=hooks)
    if path is not None:
        try:
            fsio.write_atomic(path, orjson.dumps(rec))
        except OSError:
            pass       # the pending record stays: a replay runs it (its marker exists)
    return (home, g, path, rec)


def start(due, report) -> None:
    """After the event is appended: run the prepared hooks on the goal's hook thread.
    `report(home, g, **fields)` appends the failure event."""
    if due is not None:
        _start(*due, report)


def _start(home: Home, g: str, path: str | None, rec: dict, report) -> None:
    """Queue a record on its goal's hook thread (started if none runs): the hooks of one goal
    run one at a time in the order of their events; goals do not wait for each other."""
    with _lock:
        q = _queues.setdefault(g, [])
        q.append((home, g, path, rec, report))
        if g in _workers:
            return
        t = threading.Thread(target=_drain, args=(g,), name=f"dagrun-hooks-{g}")
        _workers[g] = t
        _threads[:] = [x for x in _threads if x.is_alive()] + [t]
    t.start()


def _drain(g: str) -> None:
    while True:
        with _lock:
            q = _queues.get(g)
            if not q:
                _queues.pop(g, None)
                _workers.pop(g, None)
                return
            item = q.pop(0)
        _run_record(*item)


def wait(timeout: float | None = None) -> bool:
    """Wait for the hooks this process queued (tests; an embedding program). True if none is
    left. (A process's exit waits for them anyway: the threads are not daemons.)"""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _lock:
            ts = [t for t in _threads if t.is_alive()]
        if not ts:
            return True
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        ts[0].join(left)


def _run_record(home: Home, g: str, path: str | None, rec: dict, report) -> None:
    hooks = rec["hooks"]
    done = list(rec.get("done") or [])
    for i, h in enumerate(hooks):
        if i in done:
            continue
        try:
            err = _run_one(home, g, rec, h)
        except Exception as x:          # noqa: BLE001 -- a hook never takes its runner down
            err = f"{type(x).__name__}: {x}"
        if err is not None:
            what = " ".join(h["argv"]) if "argv" in h else h["url"]
            _log(f"hook {rec['name']} of {g}{'/' + rec['event']['task'] if rec['event'].get('task') else ''} "
                 f"({what}) failed: {err}")
            try:
                report(home, g, hook_event=rec["name"], task=rec["event"].get("task"), hook=what,
                       source=h.get("from"), reason=err, record=rec["id"])
            except Exception as x:      # noqa: BLE001 -- a full disk: the line above said it
                _log(f"cannot record the hook failure: {x}")
        done.append(i)
        if path is not None and len(done) < len(hooks):
            try:
                fsio.write_atomic(path, orjson.dumps({**rec, "done": done}))
            except OSError:
                pass             # a replay runs this hook again: at least once
    if path is not None:
        try:
            fsio.remove(path)
        except OSError:
            pass


def _env(home: Home, g: str, rec: dict) -> dict:
    e = rec["event"]
    env = dict(os.environ)
    env.pop("DAGRUN_RUN_ID", None)     # a hook is no agent's process: never reaped as one's stray
    env.pop("DAGRUN_OUTPUT_FILE", None)
    env.update({"DAGRUN_HOME": home.root, "DAGRUN_GOAL": g, "DAGRUN_HOOK_EVENT": rec["name"],
                "DAGRUN_EVENT_TYPE": e.get("type", ""), "DAGRUN_HOOK_RECORD": rec["id"]})
    for k, var in (("task", "DAGRUN_TASK"), ("status", "DAGRUN_STATUS"), ("attempt", "DAGRUN_ATTEMPT"),
                   ("outcome", "DAGRUN_OUTCOME"), ("blocked_by", "DAGRUN_BLOCKED_BY")):
        if e.get(k) is not None:
            env[var] = str(e[k])
        else:
            env.pop(var, None)
    if e.get("task"):
        env["DAGRUN_OUTPUT_FILE"] = home.output_path(g, e["task"])
    return env


def _run_one(home: Home, g: str, rec: dict, h: dict) -> str | None:
    """Run one hook; None when it succeeded, else the reason."""
    body = orjson.dumps(rec["event"]) + b"\n"
    if "argv" in h:
        from .executor import run_command     # lazily: subprocess is not on the fast path
        cwd = h.get("cwd") or rec.get("plan_dir") or home.root
        if not os.path.isdir(cwd):
            cwd = home.root
        try:
            code, timed_out, err = run_command(h["argv"], stdin=body, env=_env(home, g, rec), cwd=cwd,
                                               timeout=float(h.get("timeout") or DEFAULT_HOOK_TIMEOUT))
        except OSError as x:
            return f"cannot start {h['argv'][0]}: {x.strerror}"
        if timed_out:
            return f"timed out after {h.get('timeout'):g}s (process group killed)"
        if code != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()
            how = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
            return how + (f": {tail[-1][:200]}" if tail else "")
        return None
    return post(h, body, rec)


def post(h: dict, body: bytes, rec: dict) -> str | None:
    """POST the event to a webhook: retries (h["retries"]) with exponential backoff (0.5 s,
    1 s, 2 s, ... at most 30 s) on connection errors, timeouts, 429 and 5xx; a 4xx answer
    is final. Secrets come from the environment at the moment of the call, never from a
    file: header values named by `headers_env`, an HMAC-SHA256 of the body keyed by
    `secret_env` in X-Dagrun-Signature."""
    headers = {"Content-Type": "application/json", "User-Agent": "dagrun-hook",
               "X-Dagrun-Event": rec["name"], "X-Dagrun-Delivery": rec["id"]}
    headers.update(h.get("headers") or {})
    for name, var in (h.get("headers_env") or {}).items():
        if var not in os.environ:
            return f"environment variable {var} (for header {name}) is not set"
        headers[name] = os.environ[var]
    if h.get("secret_env"):
        key = os.environ.get(h["secret_env"])
        if key is None:
            return f"environment variable {h['secret_env']} (secret_env) is not set"
        import hashlib             # lazily (with hmac): OpenSSL's load is not every start's
        import hmac
        headers["X-Dagrun-Signature"] = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    import urllib.error            # lazily: the protocol fast path imports this module
    import urllib.request

    tries = int(h.get("retries", 3)) + 1
    timeout = float(h.get("timeout") or DEFAULT_HOOK_TIMEOUT)
    err = "?"
    for k in range(tries):
        if k:
            time.sleep(min(30.0, 0.5 * 2 ** (k - 1)))
        req = urllib.request.Request(h["url"], data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read(65536)
            return None
        except urllib.error.HTTPError as x:
            err = f"HTTP {x.code} from {h['url']}"
            if 400 <= x.code < 500 and x.code not in (408, 429):
                return err
        except (urllib.error.URLError, OSError) as x:
            reason = getattr(x, "reason", x)
            err = f"{h['url']}: {reason}"
    return f"{err} (after {tries} attempts)"


# ---------------------------------------------------------------------------------- replay
def replay(home: Home, g: str, report, worker: str) -> int:
    """Run the hooks of records whose runner died (a crash while they were due); returns how
    many records were taken over. Called at engine start-up and on every rescan."""
    d = home.hooks_due_dir(g)
    try:
        names = [n for n in os.listdir(d) if n.startswith("due-") and n.endswith(".json")]
    except OSError:
        return 0
    taken = 0
    for n in sorted(names):
        path = os.path.join(d, n)
        rec = loads(fsio.read_bytes(path, follow=False))
        if not _well_formed(rec) or not _orphaned(rec, path):
            continue
        if rec.get("pending"):
            rec = _resolve_pending(home, g, rec)
            if rec is None:                  # its commit never happened: nothing was due
                with contextlib.suppress(OSError):
                    fsio.remove(path)
                continue
        from filelock import FileLock
        with FileLock(os.path.join(home.goal_dir(g), ".break.lock")):
            again = loads(fsio.read_bytes(path, follow=False))
            if not _well_formed(again) or again.get("owner") != rec.get("owner"):
                continue              # another process took it (or it ran) meanwhile
            if again.get("pending"):
                again = rec           # resolved above, from the same owner's record
            rec = {**again, "owner": _me(), "replayed_by": worker}
            try:
                fsio.write_atomic(path, orjson.dumps(rec))
            except OSError:
                continue
        taken += 1
        _log(f"running hooks {rec.get('name')} of {g} left due by a process that died ({n})")
        _start(home, g, path, rec, report)
    return taken


def _resolve_pending(home: Home, g: str, rec: dict) -> dict | None:
    """A pending record whose writer died: the ordinary record of the event its commit
    made, or None if the commit never happened (no marker/attempt record of its attempt, no
    `cancelled` marker, no summary.json of this finisher)."""
    cands, kind = rec.get("candidates"), rec.get("kind", "outcome")
    if not isinstance(cands, dict) or not isinstance(rec.get("event"), dict):
        return None
    t = rec.get("task")
    if (kind == "cancelled" or (kind == "blocked" and rec.get("root_attempt") is None)) \
            and not isinstance(rec.get("cancel_id"), str):
        return None                      # a cancel's record names its cancel
    if kind == "outcome":
        n = rec.get("attempt")
        if not isinstance(t, str) or not isinstance(n, int):
            return None
        status = None
        for k in ("done", "failed"):
            if _marker_attempt(home, g, t, k) == n:
                status = k
                break
        if status is None:
            a = loads(fsio.read_bytes(home.attempt_path(g, t, n, "json"), follow=False))
            if isinstance(a, dict) and a.get("counted") and not a.get("final"):
                status = ev.RETRYING
        name = "on_" + status if status else None
        e = {**rec["event"], "status": status}
    elif kind == "cancelled":
        if not isinstance(t, str) or _cancel_id(home, g, t) != rec.get("cancel_id"):
            return None
        name, e = "on_cancelled", {**rec["event"], "status": ev.CANCELLED}
    elif kind == "blocked":
        root, n = rec.get("root"), rec.get("root_attempt")
        if not isinstance(t, str) or not isinstance(root, str):
            return None
        if n is None:
            cause = "cancelled" if _cancel_id(home, g, root) == rec.get("cancel_id") else None
        else:
            cause = "failed" if _marker_attempt(home, g, root, "failed") == n else None
        if cause is None:
            return None
        name, e = "on_blocked", {**rec["event"], "reason": f"{cause} dependency"}
    elif kind == "skipped":
        if not isinstance(t, str) or not _caused(home, g, rec.get("cause")):
            return None
        name, e = "on_skipped", rec["event"]
    elif kind == "goal":
        s = loads(fsio.read_bytes(home.summary_path(g), follow=False))
        if not isinstance(s, dict) or (s.get("finisher") or {}).get("nonce") != rec.get("finish_id"):
            return None
        name = "on_goal_finished"
        e = {**rec["event"], "outcome": s.get("outcome"), "counts": s.get("counts"),
             "failed_roots": s.get("failed_roots")}
    else:
        return None
    hooks = cands.get(name) if name else None
    if not hooks:
        return None
    rec = {k: v for k, v in rec.items() if k not in _PENDING_KEYS}
    return {**rec, "name": name, "event": {**e, "replayed": True}, "hooks": hooks}


def _caused(home: Home, g: str, cause) -> bool:
    """Did the commit a `prepare_skipped` record names happen: the marker of that attempt, or
    the skipped/cancelled marker naming that skip/cancel?"""
    if not isinstance(cause, dict) or not isinstance(cause.get("task"), str):
        return False
    t, marker = cause["task"], cause.get("marker")
    if marker in ("done", "failed"):
        return isinstance(cause.get("attempt"), int) and _marker_attempt(home, g, t, marker) == cause["attempt"]
    if marker == "cancelled":
        return isinstance(cause.get("id"), str) and _cancel_id(home, g, t) == cause["id"]
    if marker == "skipped":
        m = loads(fsio.read_bytes(home.marker_path(g, t, "skipped"), follow=False))
        return isinstance(cause.get("id"), str) and isinstance(m, dict) and m.get("skip_id") == cause["id"]
    return False


def _cancel_id(home: Home, g: str, t: str) -> str | None:
    """The cancel_id of t's `cancelled` marker (None: no marker, or one without an id)."""
    m = loads(fsio.read_bytes(home.marker_path(g, t, "cancelled"), follow=False))
    c = m.get("cancel_id") if isinstance(m, dict) else None
    return c if isinstance(c, str) else None


def _marker_attempt(home: Home, g: str, t: str, kind: str):
    m = loads(fsio.read_bytes(home.marker_path(g, t, kind), follow=False))
    return m.get("attempt") if isinstance(m, dict) else None


def _well_formed(rec) -> bool:
    """A record this module wrote (garbage is left alone, never run)."""
    return (isinstance(rec, dict) and isinstance(rec.get("event"), dict) and isinstance(rec.get("id"), str)
            and isinstance(rec.get("name"), str) and isinstance(rec.get("done", []), list)
            and isinstance(rec.get("hooks"), list)
            and all(isinstance(h, dict) and (isinstance(h.get("argv"), list) or isinstance(h.get("url"), str))
                    for h in rec["hooks"]))


def _orphaned(rec: dict, path: str) -> bool:
    o = rec.get("owner") or {}
    if not isinstance(o, dict):
        return True
    if o.get("host") == HOST and o.get("boot_id") == BOOT_ID:
        try:
            return not is_alive(HOST, BOOT_ID, int(o.get("pid") or 0), o.get("pid_start") or "?")
        except (TypeError, ValueError):
            return True
    try:
        return time.time() - os.stat(path).st_mtime > FOREIGN_GRACE
    except OSError:
        return False


def _me() -> dict:
    return {"host": HOST, "boot_id": BOOT_ID, "pid": os.getpid(), "pid_start": self_start()}


def _log(msg: str) -> None:
    linesink.err(f"dagrun: {msg}")     # on the engine's path: never blocks on a pipe nobody reads
