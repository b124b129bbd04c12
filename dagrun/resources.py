"""Resources: named pools of units that tasks hold while they run (a GPU, a repository, an
API quota, an agent limit), shared by every goal, worker and script of a home.

Capacities come from three scopes, each a pool of its own; a task takes a unit in every pool
that limits a resource it needs:
  home      `dagrun resources set NAME N`             resources/limits.json "home"
  tenant    `dagrun resources set --tenant T NAME N`  resources/limits.json "tenants" (the goals
            whose plan says "tenant": T, together)
  goal      the plan's "resources" and "agent_limits"  (the goal's tasks together)
A mutex with no home capacity has a home capacity of 1. A resource without any capacity is
not counted.

A unit is a folder `resources/pools/<scope>/<name>/<k>` (k < capacity) holding unit.json (the
goal, task and run id of the attempt that holds it). It is born whole: unit.json is written
in a private `.new.*` folder that is then renamed to the slot with RENAME_NOREPLACE (or
rename(2): a slot is never an empty folder, and renaming onto a non-empty one fails), so the
kernel decides who gets slot k exactly as mkdir decides who gets a claim, and no unit is ever
seen without its holder.

A unit lives as long as its attempt's claim (claim.py judges the claim: the holder's pid and
start time on this host, the lease from another host, the grace of a claim being born), and
no longer: a unit whose task has no claim any more, or a claim of another attempt (run id),
is stale. Anyone who finds a pool full judges its units and breaks the stale ones under the
pool's lock (fcntl, dropped by the kernel if the breaker dies): re-read, re-judge, rename
away, then delete -- the claim-breaking pattern. So a SIGKILL anywhere leaks nothing for
longer than it takes the next process that wants the unit to look.

Order: units are taken right after the claim's mkdir (lifecycle.claim_task), before the
workspace, the prompt and the agent; a crash in between leaves units under a claim whose
holder is dead: both are stale. They are given back in the transition path when the attempt
has ended (transitions.finish / interrupted / break_stale), before its commit, so the next
task can have them at once.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from . import claim as claims
from . import fsio
from .digests import sha1
from .records import frozen_methods, plain_methods
from .errors import UsageError, os_error
from .plan import AGENT_RES, MAX_UNITS, Plan, Task, check_id
from .proc import BOOT_ID, HOST, is_alive, self_start
from .store import Home, TurnMemo, dumps, loads_obj, now_iso

UNIT = "unit.json"
_HOST_KEY = sha1(HOST.encode()).hexdigest()[:8]
BORN_GRACE = 60.0        # s: a `.new.*` folder of a dead or slow creator is swept after this


class Busy(Exception):
    """A pool lacks the units a task needs (another worker or script was faster)."""

    def __init__(self, pool: str, held_by: list[str]):
        self.pool, self.held_by = pool, held_by
        super().__init__(f"waiting for resource {describe(pool)}" +
                         (f" (held by {', '.join(held_by[:3])}{' ...' if len(held_by) > 3 else ''})" if held_by else ""))


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Pool:
    """A resource pool a task draws units from: its scope, name and capacity."""
    key: str          # "<scope>/<name>": the scheduler's name for it
    scope: str        # home | tenant.<T> | goal.<g>
    name: str
    cap: int

    def __init__(self, key, scope, name, cap):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "scope", scope)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "cap", cap)

    __repr__, __eq__ = plain_methods("key", "scope", "name", "cap")
    __setattr__, __delattr__, __hash__ = frozen_methods("key", "scope", "name", "cap")


def describe(key: str) -> str:
    """A pool key as people read it: `gpu`, `gpu (tenant acme)`, `gpu (goal g)`."""
    scope, _, name = key.partition("/")
    kind, _, who = scope.partition(".")
    return name if kind == "home" else f"{name} ({kind} {who})"


# ---------------------------------------------------------------------------------- capacities
def root(home: Home) -> str:
    return os.path.join(home.root, "resources")


def limits_path(home: Home) -> str:
    """resources/limits.json (looked up at every claim: a concatenation, no os.path.join)."""
    return home.root + "/resources/limits.json"


# limits.json was read at every claim (an openat, ENOENT in most homes): the engine's loop
# reads it once per turn (store.TurnMemo, as hooks.py does for the hooks folder; a capacity
# never revokes the claims made before it), other threads (`dagrun claim` from a script,
# `dagrun resources`, tests) every time.
_TURN = TurnMemo()
hold_turn, end_turn, release_turn = _TURN.hold, _TURN.end, _TURN.release


def limits(home: Home) -> dict:
    """{"home": {name: n}, "tenants": {tenant: {name: n}}} (empty when never set)."""
    got = _TURN.get(home, _read_limits)
    return {"home": dict(got["home"]), "tenants": {k: dict(v) for k, v in got["tenants"].items()}}


def claim_pools(home: Home, plan: Plan, task: Task) -> dict[Pool, int]:
    """pools_for(plan, task, limits(home)) for a claim, without limits()'s copy of the
    capacities (pools_for only reads them)."""
    return pools_for(plan, task, _TURN.get(home, _read_limits))


def _read_limits(home: Home) -> dict:
    raw = fsio.read_bytes(limits_path(home))
    if raw is None:                 # never set (most homes): read at every claim, nothing to parse
        return {"home": {}, "tenants": {}}
    d = loads_obj(raw) or {}
    return {"home": dict(d.get("home") or {}), "tenants": {k: dict(v) for k, v in (d.get("tenants") or {}).items()}}


def set_capacity(home: Home, name: str, n: int | None, tenant: str | None = None) -> dict:
    """`dagrun resources set NAME N [--tenant T]` (n None: unset). Read-modify-write under
    resources/.lock, published by rename. Units held above a lowered capacity stay until their
    attempts end; nothing new is taken beyond it."""
    check_id("resource", name)
    if tenant is not None:
        check_id("tenant", tenant)
    if n is not None and not 0 <= n <= MAX_UNITS:
        raise UsageError(f"capacity {n}: give 0 to {MAX_UNITS}")
    home.ensure()
    with _lock(os.path.join(root(home), ".lock")):
        cur = limits(home)
        where = cur["home"] if tenant is None else cur["tenants"].setdefault(tenant, {})
        if n is None:
            where.pop(name, None)
        else:
            where[name] = n
        cur["tenants"] = {k: v for k, v in cur["tenants"].items() if v}
        try:
            fsio.write_atomic(limits_path(home), dumps(cur))
        except OSError as e:
            raise os_error("write", limits_path(home), e) from None
    return cur


def pools_for(plan: Plan, task: Task, lim: dict) -> dict[Pool, int]:
    """The pools a task takes units in, with how many: for each resource it needs, every
    scope that sets a capacity of it."""
    out: dict[Pool, int] = {}
    goal_caps = plan.goal_capacities()
    tenant_caps = lim["tenants"].get(plan.tenant, {}) if plan.tenant else {}
    if not lim["home"] and not tenant_caps and not goal_caps and not task.mutex:
        return out             # no capacity anywhere (most plans): nothing to count, per claim
    for name, n in task.needs().items():
        home_cap = lim["home"].get(name)
        if home_cap is None and name == task.mutex:
            home_cap = 1
        for scope, cap in (("home", home_cap), (f"tenant.{plan.tenant}", tenant_caps.get(name)),
                           (f"goal.{plan.goal}", goal_caps.get(name))):
            if cap is not None:
                out[Pool(f"{scope}/{name}", scope, name, int(cap))] = n
    return out


def plan_pools(plan: Plan, lim: dict) -> dict[str, dict[Pool, int]]:
    """task -> pools_for(task), for the tasks that take units somewhere. Worked out once per
    (agent, mutex) for the tasks without `resources` (all of them, in most plans): the same
    pools, shared."""
    if not lim["home"] and not (plan.tenant and lim["tenants"].get(plan.tenant)) and not plan.goal_capacities() \
            and not plan.has_mutex:
        return {}                  # no capacity anywhere: nothing is counted
    out, memo = {}, {}
    for t in plan.tasks:
        if t.resources:
            p = pools_for(plan, t, lim)
        else:
            key = (t.agent, t.mutex)
            p = memo.get(key)
            if p is None:
                p = memo[key] = pools_for(plan, t, lim)
        if p:
            out[t.id] = p
    return out


def too_big(plan: Plan, lim: dict) -> list[str]:
    """Tasks that ask for more than a home or tenant capacity (the plan's own capacities are
    checked by the validator): one line each."""
    out = []
    for tid, pools in plan_pools(plan, lim).items():
        for p, n in pools.items():
            if n > p.cap and not p.scope.startswith("goal."):
                out.append(f"task {tid!r} asks for {n} unit{'s' if n > 1 else ''} of {describe(p.key)} but its "
                           f"capacity is {p.cap}")
    return out


def _stamp(home: Home) -> tuple:
    try:
        st = os.stat(limits_path(home))
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def apply(home: Home, plan: Plan, sched) -> dict[str, dict[Pool, int]]:
    """Hand the scheduler what each task needs and what is free now (read from the files;
    stale units of full pools are broken on the way). The needs are worked out again only
    when limits.json changed (one stat): the engine calls this before every dispatch."""
    stamp = _stamp(home)
    cached = getattr(sched, "_resources_of", None)       # (stamp, plan, need) of the last call
    if cached is not None and cached[0] == stamp and cached[1] is plan:
        need = cached[2]
        if need:
            sched.set_resources(None, free(home, {p for ps in need.values() for p in ps}))
        return need
    lim = _read_limits(home)          # read after the stamp, never from the turn's memory
    _TURN.put(home, lim)              # (the claims of the turn then use what this read)
    need = plan_pools(plan, lim)
    sched._resources_of = (stamp, plan, need)
    if not need and sched.needs is None:
        return need
    pools = {p for ps in need.values() for p in ps}
    sched.set_resources({t: {p.key: n for p, n in ps.items()} for t, ps in need.items()}, free(home, pools))
    return need


# ---------------------------------------------------------------------------------- the units
def pool_dir(home: Home, p: Pool) -> str:
    return os.path.join(root(home), "pools", p.scope, p.name)


def _slots(d: str) -> list[str]:
    try:
        return [n for n in os.listdir(d) if n.isdigit()]
    except FileNotFoundError:
        return []


def free(home: Home, pools) -> dict[str, int]:
    """Units free in each pool: capacity minus the live units. A pool that looks full has its
    units judged and the stale ones broken first (a dead holder's units come back here)."""
    out = {}
    for p in pools:
        d = pool_dir(home, p)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            names = []
        if any(n.startswith((".new.", ".gone.")) for n in names):
            _sweep_born(d)               # what a creator or releaser killed half-way left
        used = sum(1 for n in names if n.isdigit())
        if used >= p.cap and used:
            reclaim(home, d)
            used = len(_slots(d))
        out[p.key] = max(0, p.cap - used)
    return out


def read_unit(path: str) -> dict | None:
    return loads_obj(fsio.read_bytes(os.path.join(path, UNIT), follow=False))


def judge(home: Home, path: str, rec: dict | None, now: float | None = None) -> str | None:
    """None when the unit is live (its attempt's claim is); else why it is stale."""
    now = time.time() if now is None else now
    if os.path.islink(path):
        return "the unit is a symbolic link (not made by dagrun)"
    if not rec or not isinstance(rec.get("goal"), str) or not isinstance(rec.get("task"), str):
        try:
            age = now - os.lstat(path).st_mtime
        except FileNotFoundError:
            return None
        return f"unreadable unit.json for {age:.0f}s" if age > claims.HALF_BORN_GRACE else None
    g, t = rec["goal"], rec["task"]
    try:
        check_id("goal", g)
        check_id("task", t)
    except UsageError:
        return "names no valid task"
    cdir = home.claim_dir(g, t)
    owner = claims.read_owner(home, g, t)
    if owner is None and not os.path.isdir(cdir):
        return f"the attempt of {g}/{t} ended (no claim)"
    if owner is not None and owner.get("run_id") != rec.get("run_id"):
        return f"the attempt of {g}/{t} ended (another attempt holds the claim)"
    why = claims.judge(home, g, t, owner, lease=float(rec.get("lease") or 60.0))
    return None if why is None else f"the claim of {g}/{t} is stale: {why}"


def reclaim(home: Home, d: str) -> int:
    """Break the stale units of one pool folder; returns how many."""
    n = 0
    for k in _slots(d):
        path = os.path.join(d, k)
        rec = read_unit(path)
        if judge(home, path, rec) is None:
            continue
        with _lock(os.path.join(d, ".lock")):
            again = read_unit(path)
            if again != rec or judge(home, path, again) is None:
                continue                      # released, re-taken or alive after all
            gone = os.path.join(d, f".gone.{os.urandom(4).hex()}")
            try:
                fsio.rename(path, gone)
            except FileNotFoundError:
                continue
        fsio.rmtree(gone)
        n += 1
    _sweep_born(d)
    return n


def _sweep_born(d: str) -> None:
    """`.new.*` folders of creators that died between writing unit.json and the rename;
    `.gone.*` of releasers that died before deleting."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return
    now = time.time()
    for n in names:
        if n.startswith((".new.", ".gone.")):
            p = os.path.join(d, n)
            try:
                old = now - os.lstat(p).st_mtime > BORN_GRACE
            except FileNotFoundError:
                continue
            if n.startswith(".gone.") or old or _creator_dead(n):
                fsio.rmtree(p)


def _new_name() -> str:
    """`.new.<host key>.<pid>.<start>.<random>`: whoever finds it can tell its creator died."""
    return f".new.{_HOST_KEY}.{os.getpid()}.{self_start() or 0}.{os.urandom(4).hex()}"


def _creator_dead(name: str) -> bool:
    parts = name.split(".")
    if len(parts) != 6 or parts[2] != _HOST_KEY or not parts[3].isdigit() or parts[4] in ("0", ""):
        return False                      # another host's (or an old name): its age decides
    return not is_alive(HOST, BOOT_ID, int(parts[3]), parts[4])


def holders(home: Home, key: str) -> list[str]:
    """g/t of the units held in a pool (for `status`: what a task waits for)."""
    scope, _, name = key.partition("/")
    d = os.path.join(root(home), "pools", scope, name)
    out = []
    for k in sorted(_slots(d), key=int):
        rec = read_unit(os.path.join(d, k)) or {}
        out.append(f"{rec.get('goal', '?')}/{rec.get('task', '?')}")
    return list(dict.fromkeys(out))


def acquire(home: Home, g: str, t: str, pools: dict[Pool, int], owner: dict, lease: float) -> list[str]:
    """Take the task's units for the attempt `owner` (its claim's owner record): every unit
    or none. Raises Busy naming the first pool short of units (what was taken is given back).
    Returns the units (`<scope>/<name>/<k>`, into owner.json: `units`)."""
    rec = {"goal": g, "task": t, "run_id": owner.get("run_id"), "attempt": owner.get("attempt"),
           "worker": owner.get("worker"), "host": HOST, "pid": owner.get("pid"), "since": now_iso(),
           "lease": lease}
    body = dumps(rec)
    got: list[str] = []
    try:
        for p in sorted(pools, key=lambda p: p.key):
            n = pools[p]
            d = pool_dir(home, p)
            fsio.makedirs(d)
            have = _take(d, p.cap, n, body, got)
            if have < n and reclaim(home, d):
                have += _take(d, p.cap, n - have, body, got)
            if have < n:
                raise Busy(p.key, holders(home, p.key))
    except BaseException:
        release(home, got, rec["run_id"])
        raise
    return got


def _take(d: str, cap: int, n: int, body: bytes, got: list[str]) -> int:
    """Rename prepared units into free slots k < cap; how many were taken."""
    if n <= 0:
        return 0
    taken = 0
    new = None
    try:
        for k in range(cap):
            slot = os.path.join(d, str(k))
            if os.path.lexists(slot):
                continue
            if new is None:
                new = os.path.join(d, _new_name())
                fsio.makedirs(new)
                fsio.write_atomic(os.path.join(new, UNIT), body)
            try:
                _rename_noreplace(new, slot)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    continue                        # somebody else was faster for slot k
                raise
            got.append(f"{os.path.basename(os.path.dirname(d))}/{os.path.basename(d)}/{k}")
            new = None
            taken += 1
            if taken == n:
                break
    finally:
        if new is not None:
            fsio.rmtree(new)
    return taken


_NOREPLACE = None


def _rename_noreplace(src: str, dst: str) -> None:
    global _NOREPLACE
    if _NOREPLACE is None:
        _NOREPLACE = fsio._renameat2() or False
    if _NOREPLACE:
        fsio._step(f"renameat2 {src} -> {dst}")      # a crash-injection point like every mutation
        try:
            _NOREPLACE(src, dst)
            fsio._done_step(f"renameat2 {src} -> {dst}")
            return
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
    fsio.rename(src, dst)        # exclusive too: a slot is never an empty folder


def release(home: Home, units, run_id: str | None) -> int:
    """Give back units of the attempt run_id (a unit re-taken by another attempt is left
    alone). Under each pool's lock: re-read, rename away, then delete. Returns how many."""
    n = 0
    for unit in units or ():
        path = unit_path(home, unit)
        if path is None:
            continue                     # owner.json is not trusted to name a path elsewhere
        d = os.path.dirname(path)
        try:
            with _lock(os.path.join(d, ".lock")):
                rec = read_unit(path)
                if not rec or rec.get("run_id") != run_id:
                    continue
                gone = os.path.join(d, f".gone.{os.urandom(4).hex()}")
                fsio.rename(path, gone)
        except FileNotFoundError:
            continue
        fsio.rmtree(gone)
        n += 1
    return n


def release_attempt(home: Home, g: str, t: str, owner: dict | None) -> list[str]:
    """The attempt's units (listed in its owner record) given back; returns the pools'
    names as events show them."""
    if not owner or not owner.get("units"):
        return []
    units = [u for u in owner["units"] if isinstance(u, str)]
    release(home, units, owner.get("run_id"))
    return sorted({describe(key_of(home, u)) for u in units})


def unit_name(home: Home, path: str) -> str:
    """How owner.json names a unit: `<scope>/<name>/<k>`, relative to the pools (a home
    reached by another path, a symlink or an NFS mount, still finds it)."""
    return os.path.relpath(path, os.path.join(root(home), "pools"))


def unit_path(home: Home, unit) -> str | None:
    """The folder of a unit named in owner.json; None unless it is <scope>/<name>/<k>."""
    if not isinstance(unit, str):
        return None
    parts = unit.split("/")
    if len(parts) != 3 or not parts[2].isdigit() or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    return os.path.join(root(home), "pools", *parts)


def key_of(home: Home, unit: str) -> str:
    """The pool key of a unit named in owner.json."""
    return unit.rsplit("/", 1)[0]


def names_of(pools: dict[Pool, int]) -> dict[str, int]:
    """{pool as people read it: units} for the running event."""
    return {describe(p.key): n for p, n in sorted(pools.items(), key=lambda x: x[0].key)}


# ---------------------------------------------------------------------------------- listing
def overview(home: Home) -> list[dict]:
    """Every pool with a capacity or a unit: scope, name, capacity, holders (stale units
    of full pools are broken first). For `dagrun resources`."""
    lim = limits(home)
    caps: dict[tuple[str, str], int | None] = {}
    for name, n in lim["home"].items():
        caps[("home", name)] = n
    for tenant, d in lim["tenants"].items():
        for name, n in d.items():
            caps[(f"tenant.{tenant}", name)] = n
    for g in home.goals():
        try:
            plan = home.load_plan(g)
        except Exception:        # noqa: BLE001 -- a goal being replaced: skip it
            continue
        for name, n in plan.goal_capacities().items():
            caps[(f"goal.{g}", name)] = n
        for t in plan.tasks:
            if t.mutex and t.mutex not in lim["home"]:
                caps[("home", t.mutex)] = 1
    base = os.path.join(root(home), "pools")
    try:
        for scope in os.listdir(base):
            for name in os.listdir(os.path.join(base, scope)):
                caps.setdefault((scope, name), None)
    except FileNotFoundError:
        pass
    rows = []
    for (scope, name), cap in sorted(caps.items()):
        d = os.path.join(base, scope, name)
        if cap is not None and len(_slots(d)) >= cap:
            reclaim(home, d)
        else:
            _sweep_born(d)
        held = []
        for k in sorted(_slots(d), key=int):
            rec = read_unit(os.path.join(d, k)) or {}
            held.append({"unit": int(k), "goal": rec.get("goal"), "task": rec.get("task"),
                         "attempt": rec.get("attempt"), "worker": rec.get("worker"), "since": rec.get("since")})
        kind, _, who = scope.partition(".")
        rows.append({"name": name, "scope": kind, **({kind: who} if who else {}), "capacity": cap,
                     "held": len(held), "holders": held})
    return rows


@contextmanager
def _lock(path: str):
    try:
        fd = fsio.open_lock(path)
    except FileNotFoundError:
        fsio.makedirs(os.path.dirname(path))
        fd = fsio.open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


__all__ = ["AGENT_RES", "Busy", "Pool", "acquire", "apply", "free", "holders", "judge", "limits", "overview",
           "pools_for", "reclaim", "release", "release_attempt", "set_capacity", "too_big"]
