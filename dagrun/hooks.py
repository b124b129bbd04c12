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
at the end. The record comes after the transition's commit point (its marker) and before
its event, so a crash anywhere after the commit leaves either a record whose runner is dead
or hooks that are running; `replay()` (engine start-up, every rescan, `dagrun claim`) takes
such a record over under the goal's break lock and runs the hooks not marked done. A hook
can therefore run twice (it was running when the process died). The one gap: a crash
between the commit point (marker, claim removed) and the record loses that transition's hooks.

Never in the way: a failing hook (exit != 0, timeout, webhook error) is reported through the
callback transitions gives (an `agent.hook.failed` event, a line on stderr) and changes
nothing about the task. The hooks run on a thread per record, so a slow hook never stalls the
engine's loop; the threads are not daemons, so a short-lived `dagrun complete` waits for its
hooks before it exits. With no hook configured `prepare()` costs a dict lookup and one stat
(is there a `$DAGRUN_HOME/hooks`?).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import sys
import threading
import time

import orjson

from . import fsio
from . import events as ev
from .plan import DEFAULT_HOOK_TIMEOUT, Plan
from .proc import BOOT_ID, HOST, is_alive, self_start
from .store import Home, loads

FOREIGN_GRACE = 300.0      # a record run by another host is taken over after this long


def event_name(e: dict) -> str | None:
    """The hook event an appended event triggers (on_done, ...), or None."""
    typ = e.get("type")
    if typ == ev.TASK_STATUS:
        st = e.get("status")
        if st in (ev.DONE, ev.FAILED, ev.RETRYING, ev.CANCELLED):
            return "on_" + st
        return None
    if typ == ev.TASK_BLOCKED:
        return "on_blocked" if e.get("blocked_by") else None     # not a stall warning
    if typ == ev.GOAL_FINISHED:
        return "on_goal_finished"
    return None


def hooks_for(home: Home, plan: Plan, name: str, task: str | None) -> list[dict]:
    """The hooks of one event: plan's, then the task's, then the home's run-parts folder."""
    out = []
    if plan.hooks:
        out += [{**h, "from": "plan"} for h in plan.hooks.get(name, ())]
    if task and plan.has(task):
        th = plan.task(task).hooks
        if th:
            out += [{**h, "from": "task"} for h in th.get(name, ())]
    d = home.home_hooks_dir(name)
    if not os.path.isdir(os.path.dirname(d)):     # no $DAGRUN_HOME/hooks: the usual case, one stat
        return out
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
        from filelock import FileLock
        with FileLock(os.path.join(home.goal_dir(g), ".break.lock")):
            again = loads(fsio.read_bytes(path, follow=False))
            if not _well_formed(again) or again.get("owner") != rec.get("owner"):
                continue              # another process took it (or it ran) meanwhile
            rec = {**again, "owner": _me(), "replayed_by": worker}
            try:
                fsio.write_atomic(path, orjson.dumps(rec))
            except OSError:
                continue
        taken += 1
        _log(f"running hooks {rec.get('name')} of {g} left due by a process that died ({n})")
        _start(home, g, path, rec, report)
    return taken


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
    try:
        sys.stderr.write(f"dagrun: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
