"""The files of a task transition, in commit order: claiming (mkdir, prompt.md), committing
(output, stderr.log, attempt records, the marker), releasing, breaking a stale claim. Called
through transitions.py (which appends the events and advances the scheduler) by the engine
and by the protocol commands, so both write exactly the same files.

Success:  claim/stdout -> output (rename)  ->  [retried task: attempts/<n>.* links + record]
          ->  done (publish)  ->  claim removed  ->  events
Failure:  attempts/<n>.out|.err|.prompt.md, attempts/<n>.json (publish)  ->  failed (publish,
          only when no retry is left)  ->  claim removed  ->  events
Code workspaces add one step to each: the task's git worktree is prepared under the claim
before prompt.md, and what the agent changed is committed (patch, changes.json) before `done`.
A crash before the marker leaves a claim whose holder is dead: it is broken, the attempt is
recorded as lost and the task runs again. A crash after the marker: the marker wins, the
leftover claim is swept, and the task never runs again.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from stat import S_ISLNK
from collections.abc import Callable

from . import bulk
from . import claim as claims
from . import conditions
from . import executor
from . import fsio
from . import resources as res
from . import history
from . import states as S
from .digests import sha1
from .errors import DagrunError, Refused, os_error
from .plan import Plan, Task
from .proc import HOST
from .prompt import Upstream, failure_note, render
from .records import plain_methods
from .scheduler import READY, Scheduler
from .store import CLAIM, COUNTED, MARKERS, OWNER, Home, TaskFacts, as_int, dumps, loads_obj, now_iso, parse_ts
from .usage import RAW_FILE
from .wsrules import uses as uses_workspace

BACKOFF_CAP = 600.0


class Stale(Exception):
    """The caller's view of the goal is out of date: a dependency it believed done is not
    (a plan edit or a forced retry archived it). Rebuild from the files and try again."""


@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class Claim:
    """A claim this process holds on a task's attempt, and what it prepared for it."""
    goal: str
    task: str
    attempt: int
    owner: dict
    started: float            # wall clock
    workspace: object = None   # workspace.Prepared: the task's git worktree (code workspaces)
    conflict: str | None = None   # its prerequisites' commits do not merge: why (the caller
    #                               ends the attempt with transitions.finish, outcome CONFLICT)
    resources: dict | None = None   # the units it holds ({pool as shown: n}, resources.py)
    skip: str | None = None       # its `when` is false: why (the caller ends it: transitions.skip)
    kept: bool | None = None      # had the task an attempts/ folder at the claim? (claim_task's
    #                               listing says; None: not known, commit_done looks) -- under
    #                               the claim only its holder writes one, so False spares the
    #                               commit of a first attempt its lstat of attempts/
    held: "claims.Held | None" = None   # its owner.json, kept open by the engine (claim.holds)
    ino: int = 0                  # its claim folder's inode number, as claim_task's listing of
    #                               the task folder gave it (d_ino); 0: not known

    def __init__(self, goal, task, attempt, owner, started, workspace=None, conflict=None, resources=None,
                 skip=None, kept=None, held=None, ino=0):
        self.goal = goal
        self.task = task
        self.attempt = attempt
        self.owner = owner
        self.started = started
        self.workspace = workspace
        self.conflict = conflict
        self.resources = resources
        self.skip = skip
        self.kept = kept
        self.held = held
        self.ino = ino

    __repr__, __eq__ = plain_methods("goal", "task", "attempt", "owner", "started", "workspace", "conflict",
                                     "resources", "skip", "kept", "held", "ino")

    @property
    def nonce(self) -> str:
        return self.owner["nonce"]


def marker_of(home: Home, g: str, t: str) -> str | None:
    """The winning marker of a task (done > cancelled > failed), or None."""
    try:
        names = set(os.listdir(home.task_dir(g, t)))
    except (FileNotFoundError, NotADirectoryError):
        return None
    for m in MARKERS:
        if m in names:
            return m
    return None


def latest_attempt(home: Home, g: str, t: str) -> tuple[int, dict | None]:
    return home._latest_attempt(g, t, with_record=True)


# ---------------------------------------------------------------------------------- claiming
_MARKER_SET = frozenset(MARKERS)


def claim_task(home: Home, plan: Plan, t: str, *, worker: str, kind: str, pid: int | None = None,
               state_of: Callable[[str], str] | None = None, publish_owner: bool = True,
               owner_extra: dict | None = None) -> Claim | None:
    """Claim task t and render its prompt.md. None if it is held, already ended, or waiting
    out a retry backoff.

    `state_of` (the scheduler's view) says which soft dependencies ended without output;
    when it is None that is judged from their markers. The engine passes
    publish_owner=False and publishes owner.json itself once the agent runs, with the
    runner's handle in it (one file instead of two: inode creation is the costly part).
    `owner_extra`: more fields for owner.json (a script's claim records the definition).

    Code workspaces: the task's git worktree is prepared (workspace.prepare) between the
    history check and the prompt, which says where it is. If its prerequisites' commits do
    not merge, the claim comes back held with `conflict` set and no prompt: the caller ends
    the attempt (transitions.finish, outcome workspace.CONFLICT, final)."""
    g = plan.goal
    tdir = home.task_dir(g, t)
    got = claims.acquire(home, g, t, hold=True)     # held by us until owner.json (claim.born)
    if not got:
        return None
    # Under the claim nobody else changes this task: read its history now (one listdir).
    # Also when our acquire made the task's folder: between that mkdir and the claim's,
    # another worker can claim, run and commit the task in it and release its claim, so the
    # folder may hold a marker by now (bug 34: the task ran twice when this was skipped)
    # (the listing also gives our claim folder's inode number: Claim.ino)
    try:
        names, ino = claims.listing(tdir, CLAIM)
    except OSError as e:
        claims.release(home, g, t)
        raise os_error("list", tdir, e) from None
    if not _MARKER_SET.isdisjoint(names):      # it ended between our look and our mkdir
        claims.release(home, g, t)
        return None
    if len(names) > 1:                          # (a fresh folder holds only claim/)
        claims.sweep_leftovers(home, g, t, names)   # a breaker or releaser died half-way
    task = plan.task(t)
    if task.when is not None and S.AWAITING_FILE not in names:
        # its condition, over the dependencies' outcomes and outputs (all ended: the scheduler
        # made it ready); false: the claim comes back held with `skip` set, nothing rendered
        ok, why = conditions.evaluate(task.when, condition_facts(home, plan, state_of))
        if not ok:
            c = Claim(g, t, 0, claims.new_owner(worker, 0, kind=kind, pid=pid), time.time())
            c.skip = f"condition false: {why}"
            return c
    attempt, record = latest_attempt(home, g, t) if "attempts" in names else (0, None)
    if record and not record.get("final") and float(record.get("retry_at") or 0.0) > time.time() + 0.05:
        claims.release(home, g, t)     # its retry backoff has not ended (a peer's scheduler was stale)
        return None
    attempt += 1
    owner = claims.new_owner(worker, attempt, kind=kind, pid=pid)
    owner["run_id"] = run_id(home, g, t, attempt)
    owner.update(owner_extra or {})
    c = Claim(g, t, attempt, owner, time.time(), kept="attempts" in names)
    c.ino = ino or 0

    def give_up() -> None:          # units first, then the claim they live under
        res.release_attempt(home, g, t, owner)
        claims.release(home, g, t)

    # resources: every unit the task needs, or none (Busy) -- taken under the claim, so a
    # crash from here on leaves units whose claim's holder is dead: both are stale
    try:
        pools = res.claim_pools(home, plan, task)
        if pools:
            owner["units"] = res.acquire(home, g, t, pools, owner, plan.lease)
            c.resources = res.names_of(pools)
    except res.Busy:
        claims.release(home, g, t)
        raise
    except OSError as e:
        claims.release(home, g, t)
        raise os_error("take the resources of", tdir, e) from None
    if _uses_workspace(plan, t):
        wsp = _wsp()
        try:
            # the code workspace: a git worktree with the prerequisites' commits merged in
            c.workspace = wsp.prepare(home, plan, t)
        except wsp.Conflict as e:   # never starts from a wrong snapshot: the caller fails it
            c.conflict = str(e)     # for good (claim held, no prompt rendered)
            return c
        except DagrunError:
            give_up()
            raise
        except OSError as e:
            give_up()
            raise os_error("prepare the workspace of", tdir, e) from None
    try:
        text = render_prompt(home, plan, task, record, state_of, c.workspace).encode("utf-8", "surrogateescape")
        # no agent reads it before we start one: a first prompt.md (the listing under the
        # claim says there is none) is written under its own name, without a temporary one
        (fsio.write_fresh if "prompt.md" not in names else fsio.write_atomic)(tdir + "/prompt.md", text)
    except OSError as e:
        give_up()
        raise os_error("prepare", tdir, e) from None
    except Stale:
        give_up()
        raise
    if publish_owner:
        try:
            claims.update_owner(home, g, t, owner)
        except OSError as e:
            give_up()
            raise os_error("publish", home.owner_path(g, t), e) from None
    return c


CONDITION_READ_LIMIT = 4 << 20      # bytes of an output a condition looks at


def condition_facts(home: Home, plan: Plan, state_of: Callable[[str], str] | None) -> conditions.Facts:
    """What a `when` sees: each dependency's outcome (the scheduler's view, else its marker)
    and its output (no symlink followed; the first CONDITION_READ_LIMIT bytes)."""
    g = plan.goal

    def outcome(dep: str) -> str:
        return (state_of(dep) if state_of else None) or marker_of(home, g, dep) or S.BLOCKED

    def output(dep: str) -> bytes | None:
        if marker_of(home, g, dep) != S.DONE:
            return None
        return home.read_task_file(home.output_path(g, dep), CONDITION_READ_LIMIT)

    return conditions.Facts(outcome, output)


def commit_skipped(home: Home, plan: Plan, c: Claim, *, worker: str, skip_id: str | None = None) -> dict:
    """A false condition: publish the `skipped` marker (the commit point), drop the claim.
    skip_id: names this skip in the marker (the hooks' pending records check it after a crash)."""
    g, t = c.goal, c.task
    body = {"reason": c.skip, "worker": worker, "ts": now_iso(), "when": plan.task(t).when}
    if skip_id is not None:
        body["skip_id"] = skip_id
    try:
        home.write_marker(g, t, S.SKIPPED, body)
    finally:
        claims.release(home, g, t)
    return body


def awaiting_of(home: Home, g: str, t: str) -> dict | None:
    """The approval gate's `awaiting` file (prompt, since, timeout_at), or None."""
    return loads_obj(fsio.read_bytes(os.path.join(home.task_dir(g, t), S.AWAITING_FILE), follow=False))


def gate_body(plan: Plan, t: str, worker: str, now: float | None = None) -> dict:
    a = plan.task(t).approval or {}
    now = time.time() if now is None else now
    timeout = a.get("timeout")
    return {"prompt": a.get("prompt"), "since": now_iso(now), "worker": worker, "timeout": timeout,
            "timeout_at": now_iso(now + timeout) if timeout else None}


def publish_awaiting(home: Home, g: str, t: str, body: dict) -> None:
    """The gate waits on a person: publish `awaiting` (by rename), then drop the claim."""
    try:
        fsio.write_atomic(os.path.join(home.task_dir(g, t), S.AWAITING_FILE), dumps(body))
    except OSError as e:
        raise os_error("publish", os.path.join(home.task_dir(g, t), S.AWAITING_FILE), e) from None
    finally:
        claims.release(home, g, t)


def claim_gate(home: Home, plan: Plan, t: str, *, by: str, wait: float | None = None) -> Claim:
    """Hold an awaiting approval gate for deciding it (approve / reject): its claim (mkdir,
    waiting up to `wait` s while another process holds it for a moment), with owner.json
    naming this process -- a decider killed half-way is proved dead and its claim broken."""
    g = plan.goal
    # long enough for a claim left half-born by a decider that died to be judged stale
    deadline = time.monotonic() + (claims.HALF_BORN_GRACE + 1.0 if wait is None else wait)
    while not claims.acquire(home, g, t, hold=True):
        if break_if_stale(home, plan, t, worker=by) is not None:
            continue                # a decider (or claimer) killed half-way: its claim is broken
        if time.monotonic() > deadline:
            raise Refused(f"cannot decide {g}/{t}: it is held by another process right now; try again")
        time.sleep(0.02)
    m = marker_of(home, g, t)
    gate = awaiting_of(home, g, t)
    if m is not None or gate is None:
        claims.release(home, g, t)
        raise Refused(f"cannot decide {g}/{t}: it is already {m}" if m else
                      f"cannot decide {g}/{t}: it is not awaiting approval (its dependencies have not all ended)")
    attempt = latest_attempt(home, g, t)[0] + 1
    owner = claims.new_owner(by, attempt, kind="approval")
    owner["run_id"] = run_id(home, g, t, attempt)
    try:
        claims.update_owner(home, g, t, owner)
    except OSError as e:
        claims.release(home, g, t)
        raise os_error("publish", home.owner_path(g, t), e) from None
    return Claim(g, t, attempt, owner, parse_ts(gate.get("since")) or time.time())


def drop_awaiting(home: Home, g: str, t: str) -> None:
    """After the decision's marker: the gate's file goes (a later retry asks again, afresh)."""
    try:
        fsio.remove(os.path.join(home.task_dir(g, t), S.AWAITING_FILE))
    except OSError:
        pass            # the marker wins over it anyway


@functools.lru_cache(maxsize=16)
def _root_tag(root: str) -> str:
    return sha1(root.encode()).hexdigest()[:8]


def run_id(home: Home, g: str, t: str, attempt: int, ino: int | None = None) -> str:
    """Identifies one attempt's processes (DAGRUN_RUN_ID): derivable from the files, so even a
    claim whose owner.json was never written can have its orphaned agent found and stopped.
    The task folder's inode is part of it: after a plan edit or a forced retry archived the
    folder, attempt numbers start again at 1 in a new folder, and stopping an old attempt's
    strays must not hit the new attempt's processes."""
    h = _root_tag(home.root)
    if ino is None:                      # (given: the folder's inode, known without a stat)
        try:
            ino = os.stat(home.task_dir(g, t)).st_ino
        except OSError:
            ino = 0
    return f"{h}:{g}/{t}/{ino:x}/{attempt}"


def render_prompt(home: Home, plan: Plan, task: Task, record: dict | None,
                  state_of: Callable[[str], str] | None, workspace: object = None) -> str:   # workspace: a workspace.Prepared
    g = plan.goal
    ups = []
    mine = set(task.instances)
    for dep, soft in [(d, False) for d in task.deps] + [(d, True) for d in task.soft_deps]:
        if dep in mine:             # an expanded template's own prompt (its join, no agent reads
            if dep == task.instances[0]:      # it): its instances share one budget, as below it
                ups += _instance_outputs(home, plan, task, task.context_limit, False)
            continue
        out = home.output_path(g, dep)
        state = (state_of(dep) if state_of else None) or marker_of(home, g, dep) or S.BLOCKED
        if state == S.DONE and plan.has(dep) and plan.task(dep).fanout is not None:
            # an expanded template: every instance's output, sharing the dependency's budget
            ups += _instance_outputs(home, plan, plan.task(dep), task.context_limit, soft)
            continue
        if state == S.DONE:
            got = home.read_output(out, task.context_limit + 1)
            if got is None and marker_of(home, g, dep) != S.DONE:
                # a done task always has an output file; without one it was archived (plan
                # edit, forced retry) after the caller looked: never run on a vanished input
                raise Stale(f"{g}/{dep} is no longer done")
            data, size = got or (b"", 0)
            ups.append(Upstream(dep, S.DONE, data, size, out, soft,
                                _wsp().diffstat(home, g, dep) if plan.workspace else None))
        else:
            ups.append(Upstream(dep, state, None, 0, out, soft))
    note = None
    if task.retry_context == "error" and record and record.get("outcome") in COUNTED:
        n = as_int(record.get("attempt", 0))
        tail = _tail(home, home.attempt_path(g, task.id, n, "err"), 2000)
        chk = record.get("check") if isinstance(record.get("check"), dict) else None
        if chk and isinstance(chk.get("tail"), str):     # a failed acceptance check: its own output
            tail = chk["tail"]
        note = failure_note(n, record["outcome"], record.get("exit_code"), tail, task.timeout,
                            check=" ".join(task.check) if task.check and chk else None)
    return render(task.prompt, ups, task.context_limit, note,
                  _wsp().prompt_note(workspace) if workspace is not None else None)


def _instance_outputs(home: Home, plan: Plan, tpl: Task, limit: int, soft: bool) -> list[Upstream]:
    """A dependency on a fan-out template: one section per instance, each given an equal
    share of the dependency's context_limit (the whole outputs stay in their files)."""
    g = plan.goal
    ids = tpl.instances
    share = limit // max(1, len(ids))
    out = []
    for iid in ids:
        path = home.output_path(g, iid)
        got = home.read_output(path, share + 1)
        if got is None:
            raise Stale(f"{g}/{iid} is no longer done")
        data, size = got
        out.append(Upstream(iid, S.DONE, data, size, path, soft, _wsp().diffstat(home, g, iid) if plan.workspace else None,
                            limit=share))
    return out


def _tail(home: Home, path: str, nbytes: int) -> str:
    try:
        fd = home.open_task_file(path)     # no symlink followed: this text goes into a prompt
    except DagrunError:
        return ""
    if fd is None:
        return ""
    try:
        with os.fdopen(fd, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    if size > nbytes:
        text = text.split("\n", 1)[-1]
    return "\n".join(text.splitlines()[-20:])


# ---------------------------------------------------------------------------------- ending
def capture_workspace(home: Home, plan: Plan, c: Claim) -> str | None:
    """Before the done marker (transitions.finish): commit what the agent changed in its
    worktree and publish `patch` and changes.json (workspace.capture). Returns why that
    failed (the attempt then fails instead), or None."""
    if not plan.has(c.task) or not _uses_workspace(plan, c.task):
        return None
    try:
        _wsp().capture(home, plan, c.task)
    except DagrunError as e:
        return f"could not commit the workspace: {e}"
    return None


def commit_done(home: Home, plan: Plan, c: Claim, *, ended: float, exit_code: int | None = 0,
                output_from: str | None = None, output_data: bytes | None = None,
                forced_by: str | None = None, held_by: str | None = None, extra: dict | None = None,
                listing: frozenset | set | None = None) -> dict:
    """Publish output, stderr.log and the done marker, then drop the claim.

    The output is the capture file claim/stdout (renamed), or `output_from` / `output_data`;
    the done marker is claim/owner.json renamed out of the claim and rewritten under a
    temporary name, then renamed to `done` -- no new inode for it. `extra`: more fields for
    the marker (the attempt's `usage`). `listing`: the claim folder's names, listed by the
    caller after the agent ended (the engine: one listing instead of a look per capture
    file, and an absent name is not looked for again); None: each is looked for."""
    g, t = c.goal, c.task
    tdir, cdir, _, out = home.task_paths(g, t)      # (concatenations: the ids are checked)
    try:
        captured = cdir + "/stdout"
        size: int | None = None         # the output's size, when known without a look
        if output_from is not None:
            fsio.rename(output_from, out)
        elif output_data is not None:
            fsio.write_atomic(out, output_data)
            size = len(output_data)
        else:
            if listing is None or "stdout" in listing:
                try:                    # one look says whether it is there and its size
                    st = os.lstat(captured)
                    size = None if S_ISLNK(st.st_mode) and not os.path.exists(captured) else st.st_size
                except FileNotFoundError:
                    size = None
            if size is None:            # nobody reads it before `done`: made under its own name
                fsio.write_fresh(out, b"")
                home.made_empty(out)    # (remembered for the dependents' prompts, no look)
                size = -1
            else:
                fsio.rename(captured, out)
        err = cdir + "/stderr"
        have_err = (listing is None or "stderr" in listing) and os.path.exists(err)
        if have_err:
            fsio.rename(err, home.stderr_path(g, t))
        if listing is None or RAW_FILE in listing:
            raw = f"{cdir}/{RAW_FILE}"            # a preset's raw tool output, beside `output`
            if os.path.exists(raw):
                fsio.rename(raw, f"{tdir}/{RAW_FILE}")
        # an empty output is looked at once more (file_size): remembered for the dependents'
        # prompts, which then read it with one stat instead of the safe walk's six calls (one
        # made here empty, size -1, is remembered without that look: Home.made_empty)
        body = {
            "attempt": c.attempt, "worker": c.owner.get("worker"), "started": now_iso(c.started),
            "ended": now_iso(ended), "duration": round(ended - c.started, 3), "exit_code": exit_code,
            "definition": plan.task(t).definition_digest(),
            "output_bytes": 0 if size == -1 else (size if size else home.file_size(out)),
        }
        if forced_by:
            body["forced_by"] = forced_by
            body["held_by"] = held_by
        body.update(extra or {})
        _publish_from_owner(home, g, t, S.DONE, body, c.owner, c.held, tdir=tdir)
        if c.kept is not False and home.has_attempts(g, t):
            # earlier attempts are kept under attempts/: keep this one beside them (links, no
            # copies). A task that succeeds at once has no attempts/ and pays nothing here
            # (not even the look, when its claim listed the folder: Claim.kept).
            # After the done marker, not before: a crash in between must not leave a record
            # saying "done" for an attempt that never committed (found by the crash tests).
            _keep_success(home, g, t, c.attempt, body, have_err)
    except OSError as e:
        raise os_error("commit", tdir, e) from None
    claims.release(home, g, t, cdir=cdir)
    return body


def _keep_success(home: Home, g: str, t: str, n: int, body: dict, have_err: bool) -> None:
    _link_over(home.output_path(g, t), home.attempt_path(g, t, n, "out"))
    if have_err:
        _link_over(home.stderr_path(g, t), home.attempt_path(g, t, n, "err"))
    else:          # stderr.log must not go on showing a failed attempt's stderr
        fsio.remove(home.stderr_path(g, t))
    if os.path.exists(home.prompt_path(g, t)):
        _link_over(home.prompt_path(g, t), home.attempt_path(g, t, n, "prompt.md"))
    prev = _record_before(home, g, t, n)
    rec = {"attempt": n, "outcome": S.DONE, "exit_code": body.get("exit_code"), "signal": None, "reason": "",
           "worker": body.get("worker"), "started": body.get("started"), "ended": body.get("ended"),
           "duration": body.get("duration"), "counted": False,
           "failures": as_int(prev.get("failures", 0)) if prev else 0, "retry_at": None, "final": True}
    for k in ("usage", "node"):
        if body.get(k):
            rec[k] = body[k]
    fsio.write_atomic(home.attempt_path(g, t, n, "json"), dumps(rec))


def _link_over(src: str, dst: str) -> None:
    """dst becomes another name of src's inode (replacing whatever dst was), in one rename."""
    try:
        if os.path.samefile(src, dst):
            return     # already: and rename(2) of a link onto another link of the same inode
    except OSError:    # does nothing at all, which would leave the temp name behind for good
        pass
    tmp = fsio.tmp_name(dst)
    fsio.remove(tmp)
    fsio.link(src, tmp)
    fsio.rename(tmp, dst)


def _publish_from_owner(home: Home, g: str, t: str, kind: str, body: dict, holder: dict | None = None,
                        held: "claims.Held | None" = None, tdir: str | None = None) -> None:
    """Publish a marker by recycling claim/owner.json's inode (rename out, rewrite, rename).
    held: that owner.json kept open by the engine, its identity proven by the caller's last
    claim.holds (which lets go of a Held that no longer names owner.json): rewritten through
    that fd, not opened again by its new name. tdir: home.task_dir(g, t), when the caller has it.

    Why two renames and not one: the marker's bytes must be whole before its name exists
    (status, summary and peers read `done`; a crash must not leave a part), and owner.json
    must never be rewritten in place while it has that name (peers judge the claim by it;
    claim.holds proves it by its inode). So the inode is rewritten under a private name in
    between -- where no reader looks, and which a crash leaves to the sweeps."""
    if tdir is None:
        tdir = home.task_dir(g, t)
    owner = f"{tdir}/{CLAIM}/{OWNER}"            # (home.owner_path, home.marker_path: concatenations)
    marker = f"{tdir}/{kind}"
    tmp = fsio.tmp_name(marker)
    try:
        fsio.rename(owner, tmp)
    except FileNotFoundError:
        home.write_marker(g, t, kind, body)
        return
    fd = held.fd if held is not None else -1
    try:
        fsio.rewrite(tmp, dumps(body), fd=fd)
        fsio.rename(tmp, marker)
    except OSError:
        # disk full / I/O error half-way: put owner.json back (with the holder's record again:
        # a rewrite that failed half-way has overwritten part of it -- mutation testing found
        # the flag that restored it only after a whole rewrite) so the claim keeps a provable
        # holder -- released now, or broken as soon as we are gone -- instead of looking
        # half-born (grace) or like another host's claim (lease)
        if holder is not None:
            try:
                fsio.rewrite(tmp, dumps(holder), fd=fd)
            except OSError:
                pass
        try:
            fsio.rename(tmp, owner)
        except OSError:
            pass
        raise


def backoff(task: Task, failures: int) -> float:
    if task.retry_backoff <= 0:
        return 0.0
    base = min(BACKOFF_CAP, task.retry_backoff * (2 ** max(0, failures - 1)))
    import random               # (here: a run without retry back-off never loads it, ~2.7 M instructions)
    return base * random.uniform(0.5, 1.5)


def commit_failure(home: Home, plan: Plan, c: Claim, *, outcome: str, ended: float,
                   exit_code: int | None = None, signal: int | None = None, reason: str = "",
                   prev_failures: int | None = None, forced_by: str | None = None,
                   held_by: str | None = None, extra: dict | None = None, final: bool | None = None,
                   announcer: dict | bool | None = None) -> dict:
    """Record a failed attempt; write `failed` when no retry is left. Returns the record
    (record["final"] tells which). `extra`: more fields for the record and the marker
    (the attempt's `usage`). `announcer`, for a retry: the engine process that will
    announce its `ready` (host, boot_id, pid, pid_start), or False when nobody will (a
    script's `fail`): other engines requeue at retry_at when it is gone (reconcile)."""
    g, t = c.goal, c.task
    task = plan.task(t)
    if prev_failures is None:
        prev = _record_before(home, g, t, c.attempt)
        prev_failures = as_int(prev.get("failures", 0)) if prev else 0
    counted = outcome in COUNTED
    failures = prev_failures + (1 if counted else 0)
    final = counted and failures > task.retries if final is None else final
    rec = {
        "attempt": c.attempt, "outcome": outcome, "exit_code": exit_code, "signal": signal,
        "reason": reason, "worker": c.owner.get("worker"), "started": now_iso(c.started),
        "ended": now_iso(ended), "duration": round(ended - c.started, 3), "counted": counted,
        "failures": failures, "retry_at": None if final or not counted else ended + backoff(task, failures),
        "final": final,
    }
    if forced_by:
        rec["forced_by"] = forced_by
        rec["held_by"] = held_by
    if rec["retry_at"] is not None and announcer is not None:
        rec["announcer" if announcer else "announced"] = announcer
    rec.update(extra or {})
    try:
        keep_captures(home, g, t, home.claim_dir(g, t), c.attempt)
        fsio.write_atomic(home.attempt_path(g, t, c.attempt, "json"), dumps(rec))
        if final:
            _publish_from_owner(home, g, t, S.FAILED, {k: rec[k] for k in (
                "attempt", "outcome", "exit_code", "signal", "reason", "worker", "started", "ended", "duration",
                *(("forced_by", "held_by") if forced_by else ()), *(extra or {}))}, c.owner)
    except OSError as e:
        raise os_error("commit", home.task_dir(g, t), e) from None
    claims.release(home, g, t)
    return rec


def record_unfinished(home: Home, g: str, t: str, attempt: int, *, outcome: str, reason: str,
                      worker: str | None, started: str | None = None, captures_from: str | None = None,
                      extra: dict | None = None) -> dict:
    """An attempt that ended without a verdict (lost holder, interrupt, cancel): it does not
    use up a retry."""
    prev = _record_before(home, g, t, attempt)
    rec = {"attempt": attempt, "outcome": outcome, "reason": reason, "worker": worker,
           "started": started, "ended": now_iso(), "counted": False,
           "failures": as_int(prev.get("failures", 0)) if prev else 0, "retry_at": None, "final": False}
    rec.update(extra or {})       # what the attempt spent before it was stopped (usage)
    if os.path.isdir(home.task_dir(g, t)):
        if captures_from:
            keep_captures(home, g, t, captures_from, attempt)
        fsio.makedirs(home.attempts_dir(g, t))
        fsio.write_atomic(home.attempt_path(g, t, attempt, "json"), dumps(rec))
    return rec


def _own_verdict(home: Home, g: str, t: str, attempt: int) -> bool:
    """Has attempt `attempt` of g/t a counted failure record of its own that leaves a retry
    (commit_failure writes it before it releases the claim)? A final one is not enough (its
    `failed` marker may not have been published), nor an uncounted one (a "lost" record of a
    breaker that died after writing it is rewritten): those are recorded as lost, as before.
    A symlinked record is none (as everywhere records are read)."""
    r = home.attempt_record(g, t, attempt)
    return (r is not None and as_int(r.get("attempt")) == attempt and r.get("counted") is True
            and r.get("final") is False)


def _record_before(home: Home, g: str, t: str, attempt: int) -> dict | None:
    """The latest readable record before `attempt`: a JSON object (a hand-edited `[1]` or a
    symlinked record counts as none, as in Home._latest_attempt -- never a crash of the commit)."""
    for n in range(attempt - 1, 0, -1):
        r = home.attempt_record(g, t, n)
        if r is not None:
            return r
    return None


def keep_captures(home: Home, g: str, t: str, cdir: str, attempt: int) -> None:
    """Move an unsuccessful attempt's stdout/stderr into attempts/<n>.out|.err (kept for
    good); stderr.log becomes a hard link to the latest one."""
    out, err = os.path.join(cdir, "stdout"), os.path.join(cdir, "stderr")
    have_out, have_err = os.path.exists(out), os.path.exists(err)
    fsio.makedirs(home.attempts_dir(g, t))
    if have_out:
        fsio.rename(out, home.attempt_path(g, t, attempt, "out"))
    if have_err:
        dst = home.attempt_path(g, t, attempt, "err")
        fsio.rename(err, dst)
        _link_over(dst, home.stderr_path(g, t))
    raw = os.path.join(cdir, RAW_FILE)
    if os.path.exists(raw):
        fsio.rename(raw, home.attempt_path(g, t, attempt, RAW_FILE))
    if os.path.exists(home.prompt_path(g, t)):    # the next attempt re-renders prompt.md
        _link_over(home.prompt_path(g, t), home.attempt_path(g, t, attempt, "prompt.md"))


# ---------------------------------------------------------------------------------- stale claims
def break_if_stale(home: Home, plan: Plan, t: str, *, worker: str, lease: float | None = None,
                   reap=None) -> tuple[str, int, str | None] | None:
    """Break t's claim if its holder is provably gone; stop the orphaned agent if it still
    runs here (`reap`, the runner's reap_orphan), keep the attempt's output and record it as
    lost. Returns (reason, the attempt, the task's marker if it had ended), or None if the
    claim is live (or gone). transitions.break_stale announces it."""
    g = plan.goal
    owner = claims.read_owner(home, g, t)
    lease = plan.lease if lease is None else lease
    if claims.judge(home, g, t, owner, lease=lease) is None:
        return None
    attempt = 0
    ended = None

    def settle(owner, reason):           # under the break lock, before the claim goes away
        nonlocal attempt, ended
        attempt = as_int(owner.get("attempt")) if owner else 0
        if attempt == 0:                  # a claim that died before owner.json was written:
            _n, rec = latest_attempt(home, g, t)      # the attempt after the last *recorded*
            attempt = (as_int(rec.get("attempt")) if rec else 0) + 1   # one (a breaker that died
            #                               half-way may have left files of this one, no record)
        if reap is not None:              # an orphaned agent must not keep going
            handle = owner.get("handle") if owner else None
            if not isinstance(handle, dict) and plan.has(t):
                # died before the handle was published: the task's runner started it, and
                # finds it by the run id (a Slurm job by its --comment)
                handle = {"runner": executor.PLAN_RUNNERS.get(plan.task(t).runner, "process")}
            reap(handle if isinstance(handle, dict) else None, plan.task(t).kill_grace,
                 run_id=(owner or {}).get("run_id") or run_id(home, g, t, attempt))
        res.release_attempt(home, g, t, owner)     # its units come back at once
        ended = marker_of(home, g, t)
        if ended is None and _own_verdict(home, g, t, attempt):
            pass    # its holder recorded the attempt's failure (a retry to come) and died before
            #         releasing: that record, with its count and retry_at, stands -- a "lost"
            #         one written over it gave the task a retry more, at once, without its reason
        elif ended is None:
            cdir = home.claim_dir(g, t)
            record_unfinished(home, g, t, attempt, outcome="lost", reason=reason,
                              worker=owner.get("worker") if owner else None,
                              started=owner.get("since") if owner else None,
                              captures_from=None if os.path.islink(cdir) else cdir)

    broke = claims.break_claim(home, g, t, owner.get("nonce") if owner else None, lease=lease, settle=settle)
    if broke is None:
        return None
    _owner, reason, gone = broke
    fsio.rmtree(gone)
    return reason, attempt, ended


def build_scheduler(home: Home, plan: Plan, now: float | None = None, *, durations: dict[str, float] | None = None,
                    clock=None, like: Scheduler | None = None, present: set | None = None) -> tuple[Scheduler, dict[str, TaskFacts]]:
    """A scheduler that reflects the files right now (the rescan). durations/clock: see
    scheduler_for; like: see scheduler_from_facts; present: tasks/ as the caller just listed
    it (Home.snapshot)."""
    facts = home.snapshot(plan.goal, plan, present=present)
    return scheduler_from_facts(home, plan, facts, now, durations=durations, clock=clock, like=like), facts


def ranked_scheduler(home: Home, plan: Plan, hist: "history.History | None" = None, *,
                     clock=None, like: Scheduler | None = None, present: set | None = None) -> tuple[Scheduler, dict[str, TaskFacts]]:
    """build_scheduler ranking the ready tasks as every driver does -- the engine's rescans
    and a script's `dagrun claim` alike: each task's duration from its estimate, else the
    home's history (hist: already read, ranking_history; None: read now if needed). like:
    the engine's periodic rescan (build_scheduler); present: see build_scheduler."""
    if hist is None:
        hist = ranking_history(home, plan)
    return build_scheduler(home, plan, durations=history.durations(plan, hist), clock=clock, like=like,
                           present=present)


def ranking_history(home: Home, plan: Plan) -> "history.History | None":
    """The home's history of done runs, if the plan's ranking needs it (a task without an
    estimate of its seconds): one read of the done markers of every goal under the home."""
    if all(t.estimate_seconds is not None for t in plan.tasks):
        return None
    return history.read_history(home, costs=False)


def initial_states(facts: dict[str, TaskFacts], now: float) -> dict[str, str]:
    """The scheduler's initial states (Scheduler.load) that the facts give: pending is its
    default, so only the others (a fresh goal: none) -- a pending task whose latest attempt
    failed with a retry due after `now` is retrying."""
    initial = {}
    PENDING = S.PENDING
    for tid, f in facts.items():
        if f.state != PENDING:
            initial[tid] = f.state
        elif f.record and f.record.get("retry_at") and not f.record.get("final") and f.retry_at > now:
            initial[tid] = S.RETRYING
    return initial


def scheduler_from_facts(home: Home, plan: Plan, facts: dict[str, TaskFacts], now: float | None = None, *,
                         durations: dict[str, float] | None = None, clock=None,
                         like: Scheduler | None = None) -> Scheduler:
    """The scheduler for facts already read (home.snapshot): a caller that needs both reads
    every task folder once, not twice. like: a scheduler the caller holds for this very plan
    (the engine's, at a goal's end): its graph is taken instead of built again (Scheduler.again)
    -- unless the facts leave a task ready, whose place in the ready order would come from
    like's ranks instead of the defaults -- or it was built from other tasks. With durations
    (the engine's rescan) the graph is taken and the ranks worked out again from them, if like
    was built on the same clock."""
    now = time.time() if now is None else now
    initial = initial_states(facts, now)
    sched = None
    if like is not None and like.tasks is plan.tasks and durations is None and clock is None:
        sched = like.again(initial, plan.budget)
        if sched.n(READY):
            sched = None
    elif like is not None and like.tasks is plan.tasks and durations is not None and like.clock is clock:
        sched = like.again(initial, plan.budget, durations=durations, clock=clock)
    if sched is None:
        sched = scheduler_for(plan, initial, durations=durations, clock=clock)
    if plan.budget:
        from . import budget        # the pool as raised and the spend so far, from the files
        budget.apply(home, plan, sched)
    res.apply(home, plan, sched)    # resources: what each task needs, what is free now
    return sched


def scheduler_for(plan: Plan, initial: dict[str, str] | None = None, *, durations: dict[str, float] | None = None,
                  clock=None, hold_templates: bool = True) -> Scheduler:
    """The plan's scheduler with the plan's rules for what may start (max_parallel,
    on_failure=stop, the files mutex of code workspaces, the budget pool and the tasks' usd
    estimates; the pool's raises and the spend are set from the files by budget.apply) and
    its ready order (priorities, `aging`, the remaining path in seconds): the one place that
    hands plan fields to the scheduler. durations: task -> seconds (history.durations; default:
    the plan's estimates, else 1 s each); clock: a monotonic clock for aging (none: no aging).
    hold_templates=False (the simulator): a fan-out template runs as one task of its own
    duration -- its items are unknown before its `from` task has run."""
    with bulk.paused():
        return _scheduler_for(plan, initial, durations=durations, clock=clock, hold_templates=hold_templates)


def _scheduler_for(plan: Plan, initial, *, durations, clock, hold_templates) -> Scheduler:
    return Scheduler(plan.tasks, initial, max_parallel=plan.max_parallel,
                     stop_on_failure=plan.on_failure == "stop", files=plan.files_of, budget=plan.budget,
                     estimates={t.id: t.estimate_usd for t in plan.tasks if t.estimate_usd},
                     serial=plan.serial_of, hold=plan.unexpanded if hold_templates else (),
                     durations=durations if durations is not None else history.durations(plan),
                     aging=plan.aging, clock=clock)


def mark_cancelled(home: Home, g: str, t: str, *, by: str, reason: str, cancel_id: str | None = None) -> bool:
    """Write the `cancelled` marker unless the task is done or cancelled already. cancel_id:
    names this cancel in the marker (the hooks' pending records check it after a crash)."""
    if marker_of(home, g, t) in (S.DONE, S.CANCELLED):
        return False
    fsio.makedirs(home.task_dir(g, t))
    body = {"by": by, "reason": reason, "ts": now_iso()}
    if cancel_id is not None:
        body["cancel_id"] = cancel_id
    home.write_marker(g, t, S.CANCELLED, body)
    return True


def check_holder(owner: dict | None, *, worker: str | None, caller: list[tuple[int, str | None]],
                 force: bool, what: str, g: str, t: str) -> bool:
    """Only the holder may complete/fail/heartbeat an external claim: the caller names the
    claim's worker (--worker), or the claim's pid is the caller or one of its ancestors on
    this host with the same start time (the script that claimed, or --pid). Returns True when
    only --force let it through (the caller logs that)."""
    if owner is None:
        raise Refused(f"cannot {what} {g}/{t}: it is not claimed (claim it first: dagrun claim {g})")
    if worker is not None and owner.get("worker") == worker:
        return False
    if owner.get("host") == HOST:
        for pid, start in caller:
            if pid == owner.get("pid") and (not owner.get("pid_start") or start == owner["pid_start"]):
                return False
    if force:
        return True
    raise Refused(f"cannot {what} {g}/{t}: it is held by worker {owner.get('worker')} (pid {owner.get('pid')} "
                  f"on {owner.get('host')}), not by you; give the --worker or --pid used to claim it, or --force")


# ------------------------------------------------------------------------ code workspaces
# workspace.py (git's side: ~2.5 M instructions to import) is loaded by the first task that
# has a code workspace: a plan without one never imports it (tests/test_cli_startup.py)
def _wsp():
    from . import workspace
    return workspace


def _uses_workspace(plan: Plan, t: str) -> bool:
    """wsrules.uses for task t (wsrules: the run path names it without importing workspace.py)."""
    return uses_workspace(plan, plan.task(t))

