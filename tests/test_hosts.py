"""Several hosts on one shared home, without a cluster engine: two workers, each in its own
PID and UTS namespace (`unshare --pid --uts --fork --mount-proc`, host names hostA and hostB)
share one home (here the same local folder: what an NFS home gives every host). A whole host
is killed mid-goal (its namespace's init gets SIGKILL: every process in it dies at once, as in
a power cut). Its claims are taken over only once the lease has run out, nothing runs twice,
and the goal finishes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import DAGRUN, task_dir, wait_for, write_plan

LEASE = 3.0
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
TASKS = [f"t{i}" for i in range(6)]


@pytest.fixture
def namespaces() -> None:
    ok = shutil.which("unshare") and os.geteuid() == 0 and subprocess.run(
        ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail("unshare --pid --uts needs root (CI runs as root)")
        pytest.skip("needs root and unshare(1) for PID/UTS namespaces")


@pytest.fixture
def hosts(namespaces):
    """start(name, home, env): a worker on host `name` (its own PID and UTS namespace). Every
    host still up when the test ends is stopped (SIGTERM, then SIGKILL)."""
    started: list[subprocess.Popen] = []

    def start(name: str, home, env) -> subprocess.Popen:
        cmd = f"hostname {name} && exec {DAGRUN} --home={home} worker -j 3 --name w-{name}"
        p = subprocess.Popen(["unshare", "--pid", "--uts", "--fork", "--mount-proc", "sh", "-c", cmd], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        started.append(p)
        return p
    yield start
    for x in started:
        if x.poll() is None:
            os.killpg(x.pid, signal.SIGTERM)
            try:
                x.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(x.pid, signal.SIGKILL)


def _submit(tmp_path, lease: float, agent_sleep: float):
    """Six tasks sharing one home; each agent logs `start|end TASK ATTEMPT HOST TIME` around
    its sleep. (home, log, env for the workers)."""
    log = tmp_path / "runs.log"
    agent = (f"echo \"start $DAGRUN_TASK $DAGRUN_ATTEMPT $(hostname) $(date +%s.%N)\" >> {log}; sleep {agent_sleep:g}; "
             f"echo \"end $DAGRUN_TASK $DAGRUN_ATTEMPT $(hostname) $(date +%s.%N)\" >> {log}; printf %s \"$DAGRUN_TASK\"")
    p = write_plan(tmp_path / "plans", [{"id": t, "prompt": "p"} for t in TASKS], goal="g", lease=lease,
                   defaults={"agent": agent})
    home = tmp_path / "home"
    subprocess.run([DAGRUN, f"--home={home}", "submit", str(p)], check=True, capture_output=True)
    return home, log, {k: v for k, v in os.environ.items() if k != "DAGRUN_HOME"}


def _ns_init(p: subprocess.Popen) -> int:
    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
        return int(f.read().split()[0])


def _owner_host(home, t: str) -> str | None:
    try:
        return json.loads((task_dir(home, "g", t) / "claim" / "owner.json").read_text()).get("host")
    except (OSError, ValueError):
        return None


def _three_each(home, start, env_a, env_b):
    """hostA takes 3 tasks, then hostB the other 3: (a, b, the tasks on hostA)."""
    a = start("hostA", home, env_a)
    wait_for(lambda: sum(_owner_host(home, t) == "hostA" for t in TASKS) == 3, timeout=30,
             what="hostA running 3 tasks")
    b = start("hostB", home, env_b)
    wait_for(lambda: sum(_owner_host(home, t) == "hostB" for t in TASKS) == 3, timeout=30,
             what="hostB running the other 3")
    return a, b, [t for t in TASKS if _owner_host(home, t) == "hostA"]


def _all_done(home, timeout: float) -> None:
    wait_for(lambda: all((task_dir(home, "g", t) / "done").exists() for t in TASKS), timeout=timeout,
             what="every task done")


def _runs(log):
    """The agents' log lines (split) and, per task, its `end` lines: each must have one."""
    lines = [x.split() for x in log.read_text().splitlines()]
    ends = {t: [x for x in lines if x[0] == "end" and x[1] == t] for t in TASKS}
    assert all(len(v) == 1 for v in ends.values()), ends            # every task ran to its end once
    return lines, ends


def _lost_then_redone(home, on_a) -> None:
    """hostA's tasks: attempt 1 lost (not counted) by its silence; the others done at attempt 1."""
    for t in on_a:
        lost = json.loads((task_dir(home, "g", t) / "attempts" / "1.json").read_text())
        assert lost["outcome"] == "lost" and not lost["counted"]
        assert "no heartbeat from w-hostA on hostA" in lost["reason"], lost["reason"]
    for t in set(TASKS) - set(on_a):
        assert json.loads((task_dir(home, "g", t) / "done").read_text())["attempt"] == 1


def test_a_killed_host_loses_its_claims_only_after_the_lease_and_nothing_runs_twice(tmp_path, hosts):
    home, log, env = _submit(tmp_path, LEASE, 4)
    a, b, on_a = _three_each(home, hosts, env, env)
    os.kill(_ns_init(a), signal.SIGKILL)          # the whole host dies at once
    killed = time.time()
    a.wait(10)
    _all_done(home, 60)
    lines, ends = _runs(log)
    _lost_then_redone(home, on_a)
    for t in on_a:
        second = [x for x in lines if x[0] == "start" and x[1] == t and x[2] == "2"]
        assert len(second) == 1 and second[0][3] == "hostB"
        assert float(second[0][4]) >= killed + LEASE - 1.0    # not before the lease ran out (mtime: 1 s steps)
        assert ends[t][0][3] == "hostB"


@pytest.fixture
def faketime() -> None:
    if not os.path.exists(FAKETIME_LIB):
        if os.environ.get("CI") == "true":
            pytest.fail(f"libfaketime is missing ({FAKETIME_LIB}; apt-get install faketime)")
        pytest.skip(f"needs libfaketime ({FAKETIME_LIB}; apt-get install faketime) to skew one host's clock")


@pytest.mark.slow
def test_a_host_whose_clock_runs_ahead_breaks_no_live_claim_and_takes_a_dead_hosts_claims(tmp_path, hosts, faketime):
    """Clock skew where the lease logic reads times: hostB's wall clock runs SKEW seconds
    ahead (libfaketime on its worker, time() only: file times stay the kernel's, as a shared
    file system's server stamps them). The lease compares hostB's `now` with the mtimes of
    hostA's owner.json / heartbeat, so hostA's live claims look SKEW seconds older to hostB;
    hostA refreshes them every lease/3, so with SKEW < 2/3 of the lease they never look
    stale: hostB breaks none of them while hostA lives (its tasks outlive the lease). Once
    hostA dies, hostB takes its claims over (a little early, by the skew), each task still
    runs to its end exactly once, and the goal finishes."""
    lease, skew = 6.0, 3.0
    home, log, env = _submit(tmp_path, lease, 30)
    ahead = {**env, "LD_PRELOAD": FAKETIME_LIB, "FAKETIME": f"+{skew:g}s", "DONT_FAKE_MONOTONIC": "1",
             "NO_FAKE_STAT": "1"}
    a, b, on_a = _three_each(home, hosts, env, ahead)
    # hostB's clock is really ahead (its own view of time, as its engine reads it)
    r = subprocess.run(["python3", "-c", "import time; print(time.time())"], env=ahead, capture_output=True,
                       text=True, check=True)
    assert float(r.stdout) - time.time() > skew - 1
    # both live past a whole lease: hostB, ahead, must not take hostA's running claims
    time.sleep(lease + 1)
    assert not list((home / "goals" / "g" / "tasks").glob("*/attempts/*.json")), "a live claim was broken"
    assert all(_owner_host(home, t) == "hostA" for t in on_a)   # (its agents outlive this wait)
    os.kill(_ns_init(a), signal.SIGKILL)          # now hostA dies whole
    a.wait(10)
    _all_done(home, 90)
    lines, ends = _runs(log)
    _lost_then_redone(home, on_a)
    for t in on_a:
        assert ends[t][0][2:4] == ["2", "hostB"]
