"""Claims: `mkdir tasks/<t>/claim` is the lock, `claim/owner.json` says who holds it.

Liveness is proved, not guessed (like filelock / nq):
  * same host: the holder pid must exist *and* have the start time recorded in owner.json
    (a recycled pid has another start time) on the same boot (boot_id);
  * another host (a home shared over NFS): the newest of owner.json's and claim/heartbeat's
    mtimes must be younger than the lease;
  * a claim folder without owner.json is a claim being born. Its creator holds a shared
    flock(2) on the task folder from before the claim appears until owner.json is published
    (the birth lock): while that lock is held the claim is live, however long the birth takes
    (an engine spawning the agent on a loaded machine, a stopped process); once it is free
    (the creator died: the kernel dropped it; or a claim made by hand) it gets a grace period.
A stale claim is broken by renaming it away under a per-goal lock (fcntl, released by the
kernel if the breaker dies), after re-reading the owner inside the lock, so two breakers
never both win and a breaker never removes a claim that was re-taken in the meantime.

A claim renamed away (broken, or released with files in it) goes to the goal's tasks/
folder as `.claim.<task>.<why>.<hex>` and is deleted right after. A process killed between
the two leaves it there: in the one folder every rescan lists anyway (Home.task_folders),
and which the engine that ends the goal sweeps before summary.json (sweep_aside). Was: beside
the task's marker, in its own folder, where only a full rescan looked -- a goal could end
with it there for ever (tests/reliability/test_soak.py, 2026-12-06).
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager

from . import fsio
from .errors import FsError, os_error
from .proc import BOOT_ID, GONE, HOST, REBOOTED, my_pid, proc_start, self_start, why_dead
from .store import CLAIM, OWNER, Home, as_int, dumps, loads_obj, now_iso

def _env_seconds(name: str, default: float) -> float:
    try:
        v = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return v if v >= 0 else default


# A claim folder without owner.json: its creator is between mkdir and publishing owner.json
# (the engine spawns the agent in between), or died there. A creator that holds the birth
# lock proves it lives; a claim without it (its creator died, or it was made by hand or on a
# file system without flock) gets this long. DAGRUN_CLAIM_GRACE overrides it (the crash
# tests, which run one engine at a time, set 0; a slow NFS home may want more).
HALF_BORN_GRACE = _env_seconds("DAGRUN_CLAIM_GRACE", 10.0)

# The birth locks this process holds: claim folder -> fd of its task folder, flock'ed shared.
# Taken by acquire(hold=True) before the claim exists, dropped by born() -- owner.json is
# published (update_owner) or the claim is given up (release).
_BIRTHS: dict[str, int] = {}


def _lock_shared(path: str) -> int | None:
    """An fd of folder `path` holding a shared flock, or None if it cannot be had (then the
    claim is judged as before the birth lock: its grace)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    for _ in range(100):                    # only a judge's probe holds it (exclusive, for
        try:                                # microseconds): a judge stopped in there must
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)   # not stop us -- then no lock
            return fd
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            break
    os.close(fd)
    return None


def born(home: Home, g: str, t: str) -> None:
    """Our claim of g/t names its holder now (owner.json), or is gone: drop its birth lock."""
    _born_at(home.claim_dir(g, t))


def _born_at(cdir: str) -> None:
    """born() for a caller that has the claim folder's path at hand."""
    fd = _BIRTHS.pop(cdir, None)
    if fd is not None:
        os.close(fd)                        # closing the only fd of the lock releases it


def being_born(home: Home, g: str, t: str) -> bool:
    """Does a live process hold the birth lock of g/t's claim (its creator, before owner.json)?
    The probe is a non-blocking exclusive flock of the task folder (it conflicts with any
    shared holder, this process's own included); any error -- no folder, no flock on this
    file system -- says no."""
    try:
        fd = os.open(home.task_dir(g, t), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)                        # (and with it the probe's lock, if it got it)
    return False


# Claim nonces (owner.json's "nonce": 6 random bytes, 12 hex digits) are cut from random
# bytes drawn 64 nonces at a time -- one getrandom(2) per 64 claims, not one per claim. They
# are handed out by list.pop() (one C call: two threads never get the same one) and thrown
# away in a forked child (the list is the process's, by pid: proc.my_pid), which draws its own.
_NONCES: list[str] = []
_NONCE_PID = [0]
_NONCE_DRAW = 64


def _nonce(me: int) -> str:
    if _NONCE_PID[0] != me:
        _NONCES.clear()
        _NONCE_PID[0] = me
    try:
        return _NONCES.pop()
    except IndexError:
        h = os.urandom(6 * _NONCE_DRAW).hex()
        _NONCES.extend([h[i:i + 12] for i in range(12, len(h), 12)])
        return h[:12]


def new_owner(worker: str, attempt: int, *, kind: str, pid: int | None = None) -> dict:
    me = my_pid()
    pid = me if pid is None else pid
    start = self_start() if pid == me else proc_start(pid)
    return {
        "worker": worker, "host": HOST, "boot_id": BOOT_ID, "pid": pid, "pid_start": start,
        "attempt": attempt, "since": now_iso(), "kind": kind, "nonce": _nonce(me),
        "handle": None,
    }


def acquire(home: Home, g: str, t: str, *, hold: bool = False) -> bool:
    """mkdir the claim: True, or False if somebody holds it. (Whether the task's folder was
    made by this call says nothing about what is in it: another worker may have claimed, run
    and released in it between the two mkdirs -- lifecycle.claim_task lists it always.) The caller publishes owner.json next (until then the claim
    is "being born"). hold: take the birth lock first -- the task folder flock'ed shared
    before the claim appears, kept until owner.json is published or the claim released
    (born()) -- so that nobody breaks the claim while we live, however long the birth
    takes. Without it (or when flock fails) others give it a grace period.

    System calls (a first claim: mkdir, open + flock, mkdir; a retry's: the same, the first
    mkdir failing with EEXIST): the task folder is made without looking first, and a folder
    that was there already is checked for a symbolic link only when the birth lock's
    open(O_NOFOLLOW) did not prove it a folder (docs/performance.md, 2026-12-06)."""
    tdir = home.task_dir(g, t)
    cdir = f"{tdir}/{CLAIM}"              # (os.path.join, inlined: the ids are checked)
    try:
        fresh = fsio.mkdir(tdir)          # False: it was there (a retry, a claim held)
    except FileNotFoundError:             # no tasks/ folder yet
        fsio.makedirs(tdir)
        fresh = False
    fd = _lock_shared(tdir) if hold else None
    try:
        if not fresh and fd is None and os.path.islink(tdir):
            raise FsError(f"refusing to use {tdir}: it is a symbolic link (task folders are made by dagrun; "
                          f"remove it)")
        got = fsio.mkdir(cdir)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    if got:
        _born_at(cdir)                    # a lock left from an earlier claim of ours (taken away since)
        if fd is not None:
            _BIRTHS[cdir] = fd
        return True
    if fd is not None:
        os.close(fd)
    return False


class Held:
    """The owner.json this process published for its claim, kept open (update_owner(hold=True)):
    while the fd is open its inode cannot be freed, so no other file can get its number, and
    one lstat of claim/owner.json showing this device and inode proves the claim still holds
    the very file we published -- with our nonce in it (owner.json is only ever replaced by
    rename, never rewritten in place, while it has that name) -- instead of reading and parsing
    it (holds). Closed by the engine when the attempt ends, else when dropped."""
    __slots__ = ("fd", "dev", "ino")

    def __init__(self, fd: int, dev: int, ino: int) -> None:
        self.fd, self.dev, self.ino = fd, dev, ino

    def close(self, _close=os.close) -> None:    # (bound now: __del__ may run at interpreter exit)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _close(fd)

    def __del__(self) -> None:
        self.close()


# Held fds stay under this (one per running attempt beside its pidfd and two pipes): past it
# owner.json is closed as before and holds() reads it. Half the RLIMIT_NOFILE soft limit
# (sysconf's OPEN_MAX is that limit; the resource module would cost a shared library's load).
try:
    HOLD_FD_MAX = max(64, os.sysconf("SC_OPEN_MAX") // 2)
except (OSError, ValueError):
    HOLD_FD_MAX = 64


def update_owner(home: Home, g: str, t: str, owner: dict, *, hold: bool = False) -> Held | None:
    """Publish owner.json (whole or not at all: by rename, as every file a peer or a script
    may read -- one that waits for the name and reads it must never find it empty); hold:
    keep it open and return it (Held), for holds() to prove by one lstat that the claim is
    still ours."""
    cdir = home.claim_dir(g, t)
    path = f"{cdir}/{OWNER}"
    if not hold:
        fsio.write_atomic(path, dumps(owner))
        born(home, g, t)              # owner.json proves the holder now: the birth lock goes
        return None
    fd, dev, ino = fsio.publish_held(path, dumps(owner))
    _born_at(cdir)                    # owner.json proves the holder now: the birth lock goes
    if fd >= HOLD_FD_MAX:             # a very wide run: do not spend its descriptors on this
        os.close(fd)
        return None
    return Held(fd, dev, ino)


def read_owner(home: Home, g: str, t: str) -> dict | None:
    path = home.owner_path(g, t)
    if os.path.islink(os.path.dirname(path)):
        return None                      # a symlinked claim is never read through (judge: stale)
    return loads_obj(fsio.read_bytes(path, follow=False))


def holds(home: Home, g: str, t: str, nonce: str, held: Held | None = None) -> bool:
    """Is claim/owner.json ours (our nonce)? held: the owner.json we published and keep open --
    claim/owner.json still being that inode proves it with one lstat; anything else (another
    file there, none, a claim re-published by rename) is read as before."""
    if held is not None and held.fd >= 0:
        try:
            st = os.lstat(home.owner_path(g, t))
            if st.st_ino == held.ino and st.st_dev == held.dev:
                return True
        except OSError:
            pass
        held.close()          # it names owner.json no more: the commit must not write through it
    o = read_owner(home, g, t)
    return bool(o) and o.get("nonce") == nonce


def listing(folder: str, name: str) -> tuple[set, int | None]:
    """The names in `folder` and the inode number of the one called `name` (None: not there),
    from one listing -- getdents gives each entry's inode (d_ino) with its name, no stat.
    (An OSError of the listing is the caller's.)"""
    ino = None
    names = set()
    with os.scandir(folder) as it:
        for e in it:
            n = e.name
            names.add(n)
            if n == name:
                ino = e.inode()
    return names, ino


def holds_listed(home: Home, g: str, t: str, nonce: str, held: Held | None, cdir: str) -> tuple[bool, set | None]:
    """holds() and the claim folder's names (None: it cannot be listed) from one listing:
    the listing's entry for owner.json carries its inode number (getdents' d_ino), and
    that being the inode of the owner.json we keep open (held) proves the claim ours as
    holds()'s lstat did -- the inode cannot be freed while we hold it, so no other file has
    its number. Anything else (no such entry, another inode, no Held) is holds() as before."""
    try:
        names, ino = listing(cdir, OWNER)
    except OSError:
        names, ino = None, None
    if ino is not None and held is not None and held.fd >= 0 and ino == held.ino:
        return True, names
    return holds(home, g, t, nonce, held), names


def heartbeat_age(home: Home, g: str, t: str, now: float | None = None) -> float | None:
    now = time.time() if now is None else now
    newest = 0.0
    for p in (home.owner_path(g, t), home.heartbeat_path(g, t)):
        try:
            newest = max(newest, os.stat(p).st_mtime)
        except FileNotFoundError:
            pass
    return None if newest == 0.0 else now - newest


def judge(home: Home, g: str, t: str, owner: dict | None, *, lease: float,
          grace: float = HALF_BORN_GRACE, now: float | None = None) -> str | None:
    """None when the claim is live; otherwise the reason it is stale (one short phrase)."""
    now = time.time() if now is None else now
    if os.path.islink(home.claim_dir(g, t)):
        return "the claim is a symbolic link (not made by dagrun)"
    if owner is None:
        # How long it has been born: the claim folder's ctime (its mkdir; anything made in it
        # since only makes it younger). Judging a live claim of an engine between mkdir and
        # owner.json stale would run the task twice (tests/test_race.py); the birth lock
        # (being_born) covers a birth longer than the grace.
        try:
            birth = os.stat(home.claim_dir(g, t)).st_ctime
        except FileNotFoundError:
            return None  # gone already
        age = now - birth
        if age <= grace or being_born(home, g, t):
            return None              # within its grace, or its creator lives (birth lock held)
        return f"half-created claim (no owner.json) for {age:.0f}s"
    if owner.get("host") == HOST:
        pid = as_int(owner.get("pid"))
        why = why_dead(owner.get("boot_id"), pid, owner.get("pid_start"))
        if why == REBOOTED:
            return f"holder {owner.get('worker')} ran before a reboot"
        if why == GONE:
            return f"holder {owner.get('worker')} (pid {pid}) is gone"
        if why is not None:
            return f"pid {pid} of holder {owner.get('worker')} now belongs to another process"
        return None
    age = heartbeat_age(home, g, t, now)
    if age is not None and age > lease:
        return f"no heartbeat from {owner.get('worker')} on {owner.get('host')} for {age:.0f}s (lease {lease:g}s)"
    return None


def break_claim(home: Home, g: str, t: str, expect_nonce: str | None, *, lease: float,
                grace: float = HALF_BORN_GRACE, settle=None) -> tuple[dict | None, str, str] | None:
    """Break the claim if (re-judged under the lock) it is still the stale one we looked at.

    settle(owner, reason) runs first, under the lock and while the claim still stands: it
    stops the orphaned agent and records the lost attempt. Only then is the claim renamed
    away -- if it were renamed first, another worker could claim the task in between, before
    the record exists, and run it again under the same attempt number (and run id: the reap
    would then kill the new attempt's agent). Found by the soak test.

    Returns (owner, reason, folder) -- the claim renamed to a private folder, which the
    caller removes -- or None if nothing was broken."""
    from filelock import FileLock  # imported here: only needed on this rare path

    lock = FileLock(os.path.join(home.goal_dir(g), ".break.lock"))
    with lock:
        owner = read_owner(home, g, t)
        if (owner.get("nonce") if owner else None) != expect_nonce:
            return None   # someone else broke it (and maybe re-claimed) in the meantime
        reason = judge(home, g, t, owner, lease=lease, grace=grace)
        if reason is None:
            return None
        if settle is not None:
            settle(owner, reason)
        gone = aside(home, g, t, "broken")
        try:
            fsio.rename(home.claim_dir(g, t), gone)
        except FileNotFoundError:
            return None
    return owner, reason, gone


def take_over(home: Home, g: str, t: str, expect_nonce: str | None, worker: str, *, lease: float,
              adopt) -> dict | None:
    """Reattach: a stale claim whose attempt still runs elsewhere (a cluster job) becomes ours
    instead of being broken. Under the break lock, if it is still the stale claim we looked at
    and adopt(owner) says its attempt lives, owner.json is rewritten with us as the holder
    (same attempt, run id, handle and start; a new nonce). Returns the new owner, or None."""
    from filelock import FileLock

    with FileLock(os.path.join(home.goal_dir(g), ".break.lock")):
        owner = read_owner(home, g, t)
        if not owner or owner.get("nonce") != expect_nonce or judge(home, g, t, owner, lease=lease) is None:
            return None
        if not adopt(owner):
            return None
        new = dict(owner)
        fresh = new_owner(worker, as_int(owner.get("attempt")), kind="engine")
        for k in ("worker", "host", "boot_id", "pid", "pid_start", "nonce"):
            new[k] = fresh[k]
        new["reattached"] = (owner.get("reattached") or 0) + 1
        update_owner(home, g, t, new)
        return new


def release(home: Home, g: str, t: str, *, cdir: str | None = None) -> None:
    """Drop our claim. Usually the folder is empty by now (owner.json became the marker) and
    one rmdir(2) does it; otherwise rename it away in one step, then delete it -- a crash in
    between leaves only a dot-folder that the next claim of the task sweeps. cdir:
    home.claim_dir(g, t), when the caller has it."""
    if cdir is None:
        cdir = home.claim_dir(g, t)
    try:
        try:
            fsio.rmdir(cdir)
            return
        except OSError:
            pass
        gone = aside(home, g, t, "released")
        try:
            fsio.rename(cdir, gone)
        except FileNotFoundError:
            return
    finally:
        _born_at(cdir)                # after the claim is gone (a half-born one never looks free)
    fsio.rmtree(gone)


ASIDE = ".claim."    # the names a claim renamed away gets (in tasks/; task ids never start with ".")


def aside(home: Home, g: str, t: str, why: str) -> str:
    """Where g/t's claim goes when it is renamed away before being deleted: tasks/ itself,
    under a name no task id can have (see the module doc)."""
    return f"{home.tasks_dir(g)}/{ASIDE}{t}.{why}.{os.urandom(4).hex()}"


def sweep_aside(home: Home, g: str, names=None) -> int:
    """Delete the claims renamed away into g's tasks/ by processes that died before deleting
    them (aside). names: tasks/'s listing, when the caller has it (else it is listed here).
    Returns how many were found. Whatever is there is dead: a claim is renamed away only
    after its attempt was settled (break_claim) or ended (release)."""
    if names is None:
        try:
            names = os.listdir(home.tasks_dir(g))
        except OSError:          # none yet, or unreadable: nothing this sweep can do
            return 0
    n = 0
    for name in names:
        if name.startswith(ASIDE):
            fsio.rmtree(f"{home.tasks_dir(g)}/{name}")
            n += 1
    return n


def sweep_leftovers(home: Home, g: str, t: str, names=None) -> None:
    """Remove claim folders renamed away into the task's own folder by a process that died
    before deleting them (where dagrun before 2026-12-06 put them; now: aside). names: the
    task folder's listing, when the caller has it (else it is listed here)."""
    tdir = home.task_dir(g, t)
    if names is None:
        try:
            names = os.listdir(tdir)
        except FileNotFoundError:
            return
    for n in names:
        if n.startswith(".claim."):
            fsio.rmtree(os.path.join(tdir, n))


@contextmanager
def edit_lock(home: Home, g: str, *, exclusive: bool = False):
    """The goal's edit lock (flock on goals/<g>/.edit.lock; the kernel drops it if we die).

    Claiming (claim + prompt render + spawn) and committing take it shared, so any number of
    engines and scripts do that at once; the operations that archive task folders (plan
    replace, forced retry) take it exclusive. Without it a downstream task could read an
    upstream output that is being archived, or a commit could land in a folder that an
    archive just replaced, leaving a `done` built on an output that no longer exists."""
    path = os.path.join(home.goal_dir(g), ".edit.lock")
    try:
        fd = fsio.open_lock(path)    # creating it is a counted step (crash/fault harnesses)
    except FileNotFoundError:        # no such goal (any more): nothing to protect
        yield
        return
    except OSError as e:             # disk full (the lock file is new): one clear line, exit 5
        raise os_error("lock", path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)                 # closing the only fd of the lock releases it


def lock_shared(home: Home, g: str) -> int | None:
    """The goal's edit lock taken shared (as edit_lock), left to the caller to drop by closing
    the fd it returns -- the engine holds it for the rest of its loop's turn, so the claims,
    spawns and commits of a turn take it once. None: no such goal (nothing to protect)."""
    path = os.path.join(home.goal_dir(g), ".edit.lock")
    try:
        fd = fsio.open_lock(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error("lock", path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd
