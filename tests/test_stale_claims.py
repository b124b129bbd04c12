"""Stale claims: a claim whose holder is provably gone is broken and its task runs again; a
live holder's claim never is. Real processes and signals; other hosts are simulated by
writing owner.json with another host name (the judge cannot tell the difference)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import agents_of, events, run, spawn, task_dir, wait_for, write_plan


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def fake_claim(home, goal, task, **owner) -> dict:
    """A claim as a worker would leave it: claim/ plus owner.json (published by rename)."""
    cdir = task_dir(home, goal, task) / "claim"
    cdir.mkdir(parents=True)
    body = {"worker": "ghost", "host": socket.gethostname(), "boot_id": boot_id(), "pid": 1, "pid_start": "1",
            "attempt": 1, "since": "2026-01-01T00:00:00.000000Z", "kind": "engine", "nonce": "feedface0001",
            "handle": None, **owner}
    tmp = cdir / ".owner.json.tmp"
    tmp.write_text(json.dumps(body))
    tmp.rename(cdir / "owner.json")
    return body


def stop(p: subprocess.Popen) -> str:
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    return p.communicate(timeout=30)[1].decode()


def recovered(home, goal, task) -> list[dict]:
    return [e for e in events(home, goal) if e.get("task") == task and e.get("status") == "ready"
            and str(e.get("reason", "")).startswith("claim broken: ")]


def test_sigkilled_worker_claims_are_recovered_by_another(home, plans, tmp_path):
    log = tmp_path / "ran.log"
    agent = (f'echo "$DAGRUN_TASK $DAGRUN_ATTEMPT $DAGRUN_WORKER" >> {log}; '
             'if [ "$DAGRUN_WORKER" = victim ]; then sleep 60; fi; echo "out $DAGRUN_TASK"')
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(4)] +
                   [{"id": "after", "prompt": "p", "deps": [f"t{i}" for i in range(4)]}],
                   goal="kill", defaults={"agent": agent})
    run("submit", p, home=home)
    a = spawn("worker", "-j", "4", "--name", "victim", home=home)
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 4, what="4 agents of the victim")
    first = agents_of(home)
    assert first
    b = spawn("worker", "-j", "2", "--name", "rescuer", home=home)
    try:
        time.sleep(1.5)                   # the rescuer leaves live claims alone
        assert not any(recovered(home, "kill", f"t{i}") for i in range(4))
        os.kill(a.pid, signal.SIGKILL)    # the worker only: its agents live on as orphans
        a.wait()
        wait_for(lambda: (task_dir(home, "kill", "after") / "done").exists(), timeout=30, what="recovery")
    finally:
        err = stop(b)
        a.communicate()
    rows = [line.split() for line in log.read_text().splitlines()]
    assert sorted(r[0] for r in rows if r[2] == "victim") == ["t0", "t1", "t2", "t3"]
    assert sorted((r[0], r[1]) for r in rows if r[2] == "rescuer") == \
        [("after", "1")] + [(f"t{i}", "2") for i in range(4)]
    for i in range(4):
        d = task_dir(home, "kill", f"t{i}")
        assert json.loads((d / "done").read_text())["attempt"] == 2
        lost = json.loads((d / "attempts" / "1.json").read_text())
        assert lost["outcome"] == "lost" and lost["counted"] is False and lost["worker"] == "victim"
        assert f"holder victim (pid {a.pid}) is gone" in lost["reason"]
        ev = recovered(home, "kill", f"t{i}")
        assert len(ev) == 1 and ev[0]["worker"] == "rescuer" and ev[0]["attempt"] == 2
        assert f"recovered kill/t{i}: holder victim (pid {a.pid}) is gone" in err
    # the victim's orphaned agents were stopped by the rescuer (not left sleeping)
    assert not set(first) & set(agents_of(home))


def test_pid_reuse_is_detected(home, plans):
    """owner.json names a live pid, but that process started at another time than the
    holder did: the pid was recycled. The claim is broken; the innocent process is not touched."""
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="reuse", defaults={"agent": "echo fresh"})
    run("submit", p, home=home)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        fake_claim(home, "reuse", "a", pid=other.pid, pid_start="12345")    # not sleep's start time
        r = run("worker", "--until-idle", "--name", "w", home=home, timeout=30)
        assert other.poll() is None, "the process now owning the pid must not be killed"
    finally:
        other.kill()
        other.wait()
    d = task_dir(home, "reuse", "a")
    assert json.loads((d / "done").read_text())["attempt"] == 2
    lost = json.loads((d / "attempts" / "1.json").read_text())
    assert lost["outcome"] == "lost" and f"pid {other.pid} of holder ghost now belongs to another process" in lost["reason"]
    assert recovered(home, "reuse", "a")[0]["worker"] == "w"
    assert "recovered reuse/a: pid" in r.stderr


def test_same_pid_same_start_time_is_alive(home, plans):
    """The control: the same claim with the right start time is left alone."""
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="alive", defaults={"agent": "true"})
    run("submit", p, home=home)
    holder = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        start = Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        fake_claim(home, "alive", "a", pid=holder.pid, pid_start=start)
        run("worker", "--until-idle", home=home, timeout=30)
        run("claim", "alive", home=home, check=3)
        assert (task_dir(home, "alive", "a") / "claim" / "owner.json").exists()
        assert not recovered(home, "alive", "a")
    finally:
        holder.kill()
        holder.wait()


def test_other_host_claim_lives_while_it_heartbeats_and_is_broken_after_the_lease(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="nfs", lease=1.5, defaults={"agent": "echo here"})
    run("submit", p, home=home)
    fake_claim(home, "nfs", "a", host="far-away", boot_id="another-boot", pid=os.getpid(), worker="remote-1")
    hb = task_dir(home, "nfs", "a") / "claim" / "heartbeat"
    w = spawn("worker", "--name", "local", home=home)
    try:
        t_end = time.monotonic() + 4.5               # three leases, heartbeating every 0.25 s
        while time.monotonic() < t_end:
            hb.touch()
            time.sleep(0.25)
        owner = json.loads((task_dir(home, "nfs", "a") / "claim" / "owner.json").read_text())
        assert owner["nonce"] == "feedface0001" and not recovered(home, "nfs", "a")
        stopped = time.monotonic()                   # the remote holder goes silent
        wait_for(lambda: (task_dir(home, "nfs", "a") / "done").exists(), timeout=20, what="lease expiry")
        assert time.monotonic() - stopped > 1.2      # not before the lease ran out
    finally:
        err = stop(w)
    ev = recovered(home, "nfs", "a")
    assert len(ev) == 1 and "no heartbeat from remote-1 on far-away for " in ev[0]["reason"]
    assert ev[0]["reason"].endswith("(lease 1.5s)")
    assert json.loads((task_dir(home, "nfs", "a") / "done").read_text())["attempt"] == 2
    assert "recovered nfs/a: no heartbeat from remote-1 on far-away" in err


def test_worker_lease_is_a_floor(home, plans):
    """`dagrun worker --lease 30` judges other hosts more patiently than a plan's lease 1."""
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="fl", lease=1, defaults={"agent": "true"})
    run("submit", p, home=home)
    fake_claim(home, "fl", "a", host="far-away", boot_id="x")
    old = time.time() - 10
    os.utime(task_dir(home, "fl", "a") / "claim" / "owner.json", (old, old))
    w = spawn("worker", "--lease", "30", home=home)
    try:
        time.sleep(2.5)
        assert not recovered(home, "fl", "a")
    finally:
        stop(w)
    run("worker", "--until-idle", home=home, timeout=30)     # the plan's lease: 10 s silent > 1 s
    assert recovered(home, "fl", "a") and (task_dir(home, "fl", "a") / "done").exists()


def test_half_created_claim_gets_a_grace_period(home, plans):
    """claim/ without owner.json: a claim being born (or a holder that died between mkdir and
    publishing owner.json). Left alone for the grace (10 s by default; 3 s here through
    DAGRUN_CLAIM_GRACE, so the test waits 3 s rather than 10), then recovered."""
    from dagrun import claim
    assert claim.HALF_BORN_GRACE == 10.0 or "DAGRUN_CLAIM_GRACE" in os.environ     # the default
    grace = 3.0
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="half", defaults={"agent": "true"})
    run("submit", p, home=home)
    (task_dir(home, "half", "a") / "claim").mkdir(parents=True)
    t0 = time.monotonic()
    w = spawn("worker", "--name", "w", home=home, env={"DAGRUN_CLAIM_GRACE": str(grace)})
    try:
        time.sleep(grace / 2)
        assert (task_dir(home, "half", "a") / "claim").is_dir() and not recovered(home, "half", "a")
        wait_for(lambda: (task_dir(home, "half", "a") / "done").exists(), timeout=20, what="grace to expire")
        assert time.monotonic() - t0 > grace - 0.5     # (the claim's ctime is a little before t0)
    finally:
        stop(w)
    ev = recovered(home, "half", "a")
    assert len(ev) == 1 and "half-created claim (no owner.json)" in ev[0]["reason"]
    assert json.loads((task_dir(home, "half", "a") / "attempts" / "1.json").read_text())["outcome"] == "lost"


def test_live_worker_claim_survives_past_the_lease(home, plans):
    """A worker's agent that runs for several leases keeps its claim: another worker checks
    it every second and leaves it alone; the attempt completes as attempt 1."""
    p = write_plan(plans, [{"id": "long", "prompt": "p", "agent": "sleep 3.5; echo mine"}], goal="keep", lease=1)
    run("submit", p, home=home)
    a = spawn("worker", "--until-idle", "--name", "owner", home=home)
    wait_for(lambda: (task_dir(home, "keep", "long") / "claim" / "owner.json").exists(), what="claim")
    b = spawn("worker", "--name", "other", home=home)
    try:
        a.communicate(timeout=30)
        assert a.returncode == 0
    finally:
        stop(b)
    done = json.loads((task_dir(home, "keep", "long") / "done").read_text())
    assert done["attempt"] == 1 and done["worker"] == "owner"
    assert not recovered(home, "keep", "long")


# A holder stopped between mkdir claim/ and owner.json: sitecustomize (on the holder's
# PYTHONPATH only) makes the holder SIGSTOP itself once its prompt is rendered -- the claim
# exists, owner.json does not yet (an engine that far has not spawned the agent either).
STALL_HOOK = '''
import os, signal
import dagrun.lifecycle as _lc
_render = _lc.render_prompt
def render_prompt(*a, **kw):
    text = _render(*a, **kw)
    os.kill(os.getpid(), signal.SIGSTOP)      # stalled here until the test sends SIGCONT
    return text
_lc.render_prompt = render_prompt
'''


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("holder", ["claim", "worker"])
def test_a_live_holder_stalled_before_owner_json_keeps_its_claim_past_the_grace(home, plans, tmp_path, holder):
    """The race test's double run (tests/reliability/README.md, "The race"): a holder --
    `dagrun claim` of a script, or an engine -- is stopped between creating claim/ and
    publishing owner.json for longer than the half-born grace. Its claim used to be judged
    half-born and broken ("half-created claim"), and the task ran a second time. Its creator
    holds the birth lock (a shared flock on the task folder) until owner.json, so a peer sees
    a live creator: it neither breaks the claim nor runs the task. Resumed, the holder finishes
    it as attempt 1."""
    log = tmp_path / "ran.log"
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="stall",
                   defaults={"agent": f'echo "$DAGRUN_WORKER" >> {log}'})
    run("submit", p, home=home)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STALL_HOOK)
    hook = {"PYTHONPATH": str(site)}
    script = subprocess.Popen(["sleep", "60"], start_new_session=True)    # the claim's holder (a script)
    if holder == "claim":
        h = spawn("claim", "--pid", script.pid, "stall", home=home, env=hook)
    else:
        h = spawn("worker", "--until-idle", "--name", "holder", home=home, env=hook)
    cdir = task_dir(home, "stall", "a") / "claim"
    try:
        wait_for(lambda: proc_state(h.pid) == "T", timeout=30, what="the holder to stop itself")
        assert cdir.is_dir() and not (cdir / "owner.json").exists()
        time.sleep(0.6)                        # past the grace the peers are given below
        grace = {"DAGRUN_CLAIM_GRACE": "0.5"}
        r = run("worker", "--until-idle", "--name", "peer", home=home, env=grace, timeout=30)
        assert not recovered(home, "stall", "a"), r.stderr     # "claim broken: half-created claim"
        assert not log.exists() and cdir.is_dir() and not (task_dir(home, "stall", "a") / "attempts").exists()
        if holder == "worker":                 # a script's claim judges it too (once: it is slow)
            other = subprocess.Popen(["sleep", "60"], start_new_session=True)
            try:
                run("claim", "--pid", other.pid, "stall", home=home, env=grace, check=3)   # nothing ready
            finally:
                other.kill()
                other.wait()
            assert not recovered(home, "stall", "a") and cdir.is_dir()
    finally:
        os.kill(h.pid, signal.SIGCONT)
    out, err = h.communicate(timeout=30)
    assert h.returncode == 0, err
    try:
        if holder == "claim":                  # the script runs the agent and completes it
            assert out.decode().strip() == "a"
            subprocess.run(f'echo script >> {log}', shell=True, check=True)
            run("complete", "--pid", script.pid, "stall", "a", home=home)
    finally:
        script.kill()
        script.wait()
    assert log.read_text().split() == ["script" if holder == "claim" else "holder"]
    done = json.loads((task_dir(home, "stall", "a") / "done").read_text())
    assert done["attempt"] == 1 and not recovered(home, "stall", "a")


def test_the_birth_lock_in_process(tmp_path):
    """claim.acquire(hold=True) (the task folder exists: a retry, or mkdir):
    the birth lock is held from the mkdir until owner.json or the release; a half-born claim past
    its grace is live while it is held, stale once it is dropped. A judge stopped in its probe
    (the task folder held exclusive) does not stop a claimer: it claims without the lock."""
    import fcntl

    from dagrun import claim as claims
    from dagrun.store import Home
    home = Home(str(tmp_path / "home"))
    os.makedirs(home.task_dir("g", "t"))
    assert claims.acquire(home, "g", "t", hold=True) and claims.being_born(home, "g", "t")
    later = time.time() + 60                               # far past any grace
    assert claims.judge(home, "g", "t", None, lease=60, grace=1, now=later) is None
    assert claims.break_claim(home, "g", "t", None, lease=60, grace=0) is None
    claims.born(home, "g", "t")                            # as if its creator had died
    assert not claims.being_born(home, "g", "t")
    assert claims.judge(home, "g", "t", None, lease=60, grace=1, now=later).startswith("half-created claim")
    claims.release(home, "g", "t")
    assert claims.acquire(home, "g", "t", hold=True) and claims.being_born(home, "g", "t")
    claims.release(home, "g", "t")                         # released: the lock goes with it
    assert not claims.being_born(home, "g", "t")
    fd = os.open(home.task_dir("g", "t"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)                     # a judge stopped mid-probe
        t0 = time.monotonic()
        assert claims.acquire(home, "g", "t", hold=True)
        assert time.monotonic() - t0 < 5 and home.claim_dir("g", "t") not in claims._BIRTHS
    finally:
        os.close(fd)
    assert not claims.being_born(home, "g", "t")


def test_a_claim_renamed_away_beside_a_marker_is_swept_by_the_next_engine(tmp_path):
    """The next engine breaks a claim left beside a marker by renaming it to .claim.broken.*
    and then deleting it. A crash between the two left the dot-folder for ever -- the task
    is ended, nobody claims it again, and only claim_task swept `.claim.*` -- which the crash
    harness's I3 caught (test_crash_during_recovery, k=63:after; bug 33 in
    tests/reliability/README.md). A rescan now sweeps it."""
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome
    from dagrun.store import Home

    h = Home(str(tmp_path / "home"))
    tasks = [{"id": "a", "prompt": "x"}] + [{"id": f"m{i:02d}", "prompt": "x", "deps": ["a"]} for i in range(2)]
    run("submit", write_plan(tmp_path / "p", tasks, goal="fo", defaults={"agent": "true"}), home=h.root)
    assert Engine(h, goal="fo", jobs=2, runner=FakeRunner(lambda launch: Outcome())).run() == 0
    left = task_dir(h.root, "fo", "m00") / ".claim.broken.0badc0de"
    left.mkdir()
    (left / "stdout").write_bytes(b"x")
    again = Engine(h, goal="fo", jobs=2, runner=FakeRunner(lambda launch: Outcome()))
    assert again.run() == 0
    assert not left.exists()


def test_a_claim_renamed_away_is_swept_before_the_goal_ends(tmp_path):
    """A claim renamed away (broken, or released with files in it) goes to tasks/ as
    `.claim.<task>.<why>.<hex>` and is deleted right after. A process killed in between left
    it -- and before, when it sat beside the task's marker where only a full rescan looked, a
    goal could end with it there for ever (tests/reliability/test_soak.py: "soak5/t38: a claim
    is left", CI of 2026-12-06). One appearing in the middle of a run (here: while the last
    task runs, as a breaker killed half-way leaves it) is gone by the time summary.json is."""
    from dagrun import claim as claims
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome
    from dagrun.store import Home

    h = Home(str(tmp_path / "home"))
    tasks = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "x", "deps": ["a"]}]
    run("submit", write_plan(tmp_path / "p", tasks, goal="g", defaults={"agent": "true"}), home=h.root)
    left = []

    def decide(launch):
        if launch.env.get("DAGRUN_TASK") == "b":      # a is done: its claim "broken" by a dead breaker
            p = Path(claims.aside(h, "g", "a", "broken"))
            p.mkdir()
            (p / "stdout").write_bytes(b"x")
            left.append(p)
        return Outcome()

    assert Engine(h, goal="g", jobs=2, runner=FakeRunner(decide)).run() == 0
    assert left and left[0].parent == Path(h.tasks_dir("g")) and left[0].name.startswith(".claim.a.broken.")
    assert (Path(h.goal_dir("g")) / "summary.json").exists()
    assert not left[0].exists()
    assert not list(Path(h.tasks_dir("g")).glob(".claim.*"))


def test_a_broken_claim_goes_aside_into_tasks(tmp_path):
    """break_claim and release rename the claim into tasks/ (claim.aside), not beside the
    task's marker; sweep_aside deletes exactly those names."""
    from dagrun import claim as claims
    from dagrun.store import Home

    h = Home(str(tmp_path / "home"))
    assert claims.acquire(h, "g", "t")
    claims.update_owner(h, "g", "t", {"pid": 2 ** 22 + 7, "host": "elsewhere", "nonce": "n1"})
    (Path(h.claim_dir("g", "t")) / "stdout").write_bytes(b"x")
    os.utime(h.owner_path("g", "t"), (1, 1))
    broke = claims.break_claim(h, "g", "t", "n1", lease=1.0)
    assert broke is not None
    gone = Path(broke[2])
    assert gone.parent == Path(h.tasks_dir("g")) and gone.name.startswith(".claim.t.broken.")
    assert (gone / "stdout").read_bytes() == b"x" and not Path(h.claim_dir("g", "t")).exists()
    (Path(h.tasks_dir("g")) / "u").mkdir()
    assert claims.sweep_aside(h, "g") == 1
    assert sorted(os.listdir(h.tasks_dir("g"))) == ["t", "u"]


def test_a_task_another_worker_ran_between_our_folder_and_our_claim_is_not_run_again(tmp_path, monkeypatch):
    """A first claim makes the task's folder (mkdir), then its claim (mkdir claim/). Between
    the two another worker can make its own claim in that folder, run the task, publish
    `done` and release: our claim then succeeds in a folder holding a marker. The claim must
    look at the folder's names even though it made the folder -- when it did not (the
    claim took "we made the folder" for "it holds only our claim"), the task ran twice:
    test_race.py::test_eight_workers_500_tasks_exactly_once, 1 run in 3-4 under load (a cron
    worker's done 44 ms before a daemon's `running attempt=1` of the same task)."""
    from dagrun import claim as claims
    from dagrun.lifecycle import claim_task
    from dagrun.store import Home

    home = tmp_path / "home"
    run("submit", write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"}], goal="g"), home=home)
    h = Home(str(home))
    plan = h.load_plan("g")
    tdir = task_dir(home, "g", "a")
    assert not tdir.exists()            # a task's folder comes with its first claim
    real = claims._lock_shared

    def the_other_worker_runs_it_here(path):
        # between our mkdir of the task's folder and our mkdir of its claim: another worker's
        # whole attempt (its claim made and released around a published `done`)
        (tdir / "claim").mkdir()
        (tdir / "output").write_text("")
        (tdir / "done").write_text(json.dumps({"attempt": 1, "worker": "other"}))
        (tdir / "claim").rmdir()
        return real(path)
    monkeypatch.setattr(claims, "_lock_shared", the_other_worker_runs_it_here)
    assert claim_task(h, plan, "a", worker="w", kind="engine", state_of=lambda t: "done") is None
    assert sorted(os.listdir(tdir)) == ["done", "output"]     # no claim left, nothing rendered
