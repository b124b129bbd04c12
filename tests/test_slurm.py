"""The Slurm runner on a real single-node cluster (.ci/slurm-up.sh; SLURM_CONF in the
environment): the same plans give the same outputs as the local runner, Slurm's own ends
(scancel behind dagrun's back) become failures with Slurm's reason, a SIGKILLed driver's jobs
are reattached (never resubmitted), resources reach sbatch. Marked `slurm`: skipped without a
cluster, failing under CI=true. The runner checks (exit 2) need no cluster."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import DAGRUN, EXAMPLES, events, kill_group, outputs, processes_with_env, run, sbatch_wait, spawn, \
    task_dir, wait_for, write_plan

slurm = pytest.mark.slurm


def _job_of(home: Path, goal: str, task: str) -> int | None:
    try:
        owner = json.loads((task_dir(home, goal, task) / "claim" / "owner.json").read_text())
    except (OSError, ValueError):
        return None
    h = owner.get("handle") or {}
    return h.get("job")


def _scontrol(job: int) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job)], capture_output=True, text=True).stdout
    return dict(x.split("=", 1) for x in out.split() if "=" in x)


def _scancel_all(jobs, home: Path | None = None) -> None:
    """Cancel what a test left, and wait (up to Slurm's KillWait, 30 s) until the node has
    killed the agents of that home: slurmd does it in its own time, under load seconds later."""
    for j in jobs:
        if j:
            subprocess.run(["scancel", str(j)], capture_output=True)
    if home is not None:
        wait_for(lambda: not processes_with_env("DAGRUN_HOME", str(home)), timeout=35,
                 what="the cancelled jobs' processes gone")


@contextlib.contextmanager
def _driving(p: Path, home: Path, task: str):
    """`dagrun run -q p` (goal g) in the background, and the Slurm job of `task` once
    owner.json names it: the body gets (driver, job); then the driver is killed and the job
    cancelled (its agents waited out)."""
    d = spawn("run", "-q", p, home=home)
    job = None
    try:
        wait_for(lambda: _job_of(home, "g", task), timeout=60, what="the job id in owner.json")
        job = _job_of(home, "g", task)
        yield d, job
    finally:
        kill_group(d)
        _scancel_all([job], home)


@pytest.fixture
def sbatch_calls(tmp_path: Path) -> tuple[dict, Path]:
    """A PATH in front of the real sbatch that logs every call: resubmissions are counted.
    (the env to run dagrun with, the log: one line per sbatch call)"""
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "sbatch.calls"
    real = shutil.which("sbatch")
    (shim / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec {real} \"$@\"\n")
    (shim / "sbatch").chmod(0o755)
    return {"PATH": f"{shim}:{os.environ['PATH']}"}, log


# ------------------------------------------------------------------------------ no cluster needed
def test_a_slurm_plan_without_sbatch_is_refused_at_submit(tmp_path, home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="g", runner="slurm",
                   defaults={"agent": "true"})
    empty = tmp_path / "bin"
    empty.mkdir()
    r = run("submit", p, home=home, check=2, env={"PATH": str(empty)})
    assert r.stderr.strip().endswith("runner slurm: sbatch not found on PATH")
    assert not (home / "goals" / "g").exists()       # nothing half-written
    r = run("run", p, home=home, check=2, env={"PATH": str(empty)})
    assert "runner slurm: sbatch not found on PATH" in r.stderr


def test_an_unknown_runner_is_a_usage_error(tmp_path, home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="g", defaults={"agent": "true"})
    r = run("run", "--runner", "nosuch", p, home=home, check=2)
    assert "runner nosuch: unknown (known: local, slurm, ray)" in r.stderr
    r = run("worker", "--runner", "nosuch", "--until-idle", home=home, check=2)
    assert "runner nosuch: unknown" in r.stderr
    bad = write_plan(tmp_path / "bad", [{"id": "a", "prompt": "p", "runner": "pbs"}], goal="g",
                     defaults={"agent": "true"})
    r = run("validate", bad, check=2)
    assert "tasks[0].runner: must be one of \"local\", \"slurm\", \"ray\"" in r.stderr


def test_resources_and_slurm_options_are_validated(tmp_path):
    for task, msg in [({"resources": {"mem": "2X"}}, "resources.mem: expected megabytes"),
                      ({"resources": {"licence": 1.5}}, "resources.licence: expected an integer"),
                      ({"slurm": {"sbatch_args": "--qos=x"}}, "slurm.sbatch_args: expected an array of strings"),
                      ({"resources": {"gpu": -1}}, "resources.gpu: must be at least 0")]:
        p = write_plan(tmp_path / f"p{len(msg)}", [{"id": "a", "prompt": "p", **task}], goal="g",
                       defaults={"agent": "true"})
        r = run("validate", p, check=2)
        assert msg in r.stderr, r.stderr


def test_sbatch_command_line_maps_resources_and_options():
    from dagrun.executor import Launch
    from dagrun.slurm import sbatch_args
    la = Launch(agent="x", cwd="/w", env={}, stdin_path="/p", stdout_path="/o", stderr_path="/e", run_id="r1",
                runner="slurm", spec={"resources": {"cpus": 3, "mem": "2G", "gpu": 1}, "timeout": 100,
                                      "kill_grace": 5, "name": "dagrun.g.t",
                                      "slurm": {"partition": "p1", "account": "acc", "sbatch_args": ["--qos=q"]}})
    a = sbatch_args(la, "/w/job.sh")
    assert a[:2] == ["sbatch", "--parsable"] and a[-1] == "/w/job.sh"
    for x in ("--cpus-per-task=3", "--mem=2G", "--gres=gpu:1", "--time=3", "--partition=p1", "--account=acc",
              "--qos=q", "--comment=r1", "--job-name=dagrun.g.t", "--chdir=/w"):
        assert x in a, x


# ------------------------------------------------------------------------------ on the cluster
def _fifty(folder: Path) -> Path:
    """50 tasks in 5 layers of 10; each task depends on two of the layer above."""
    tasks = []
    for layer in range(5):
        for i in range(10):
            deps = [] if layer == 0 else [f"t{layer - 1}-{i}", f"t{layer - 1}-{(i + 3) % 10}"]
            tasks.append({"id": f"t{layer}-{i}", "prompt": f"task {layer}/{i}", "deps": deps})
    agent = "printf '%s %s ' \"$DAGRUN_TASK\" \"$DAGRUN_ATTEMPT\"; cksum | cut -d' ' -f1"
    return write_plan(folder, tasks, goal="fifty", defaults={"agent": agent})


@slurm
def test_example_goal_and_a_fifty_task_dag_give_the_local_outputs(tmp_path, cluster, sbatch_calls, plans):
    env, calls = sbatch_calls
    ex = EXAMPLES / "add-auth" / "dag.json"
    run("run", "-q", ex, home=tmp_path / "local")
    r = run("run", "-q", "--runner", "slurm", ex, home=tmp_path / "slurm", env=env, timeout=180)
    assert "goal add-auth done" in r.stdout
    assert outputs(tmp_path / "slurm", "add-auth") == outputs(tmp_path / "local", "add-auth")
    assert len(outputs(tmp_path / "local", "add-auth")) == 6

    p = _fifty(plans)
    run("run", "-q", "-j", "8", p, home=tmp_path / "local")
    r = run("run", "-q", "-j", "8", "--runner", "slurm", p, home=tmp_path / "slurm", env=env, timeout=300)
    assert "goal fifty done: 50 done" in r.stdout
    local, remote = outputs(tmp_path / "local", "fifty"), outputs(tmp_path / "slurm", "fifty")
    assert len(local) == 50 and remote == local
    assert len(calls.read_text().splitlines()) == 56          # one job per task, nothing twice
    running = [e for e in events(tmp_path / "slurm", "fifty") if e.get("status") == "running"]
    assert len(running) == 50 and all(e["runner"] == "slurm" and isinstance(e["job"], int) for e in running)
    # the claim folders are gone, the wrapper scripts with them
    assert not list((tmp_path / "slurm" / "goals" / "fifty" / "tasks").glob("*/claim"))


@slurm
def test_tasks_of_one_goal_run_on_their_own_runners(cluster, home, plans):
    p = write_plan(plans, [
        {"id": "here", "prompt": "p", "agent": "printf 'slurm job:%s' \"${SLURM_JOB_ID:-none}\""},
        {"id": "there", "prompt": "p", "runner": "slurm", "deps": ["here"],
         "agent": "printf 'slurm job:%s' \"${SLURM_JOB_ID:-none}\""}], goal="mixed")
    run("run", "-q", p, home=home, timeout=120)
    out = outputs(home, "mixed")
    assert out["here"] == "slurm job:none"
    assert out["there"].startswith("slurm job:") and out["there"][10:].isdigit()


def _agent_running(home, argv0: bytes) -> bool:
    """A process of this home's jobs whose command starts with argv0 exists."""
    for pid in processes_with_env("DAGRUN_HOME", str(home)):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().startswith(argv0):
                return True
        except OSError:
            pass
    return False


@slurm
def test_a_job_scancelled_behind_dagruns_back_fails_with_the_slurm_reason(tmp_path, cluster, home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "sleep 120"},
                                        {"id": "b", "prompt": "p", "agent": "true", "deps": ["a"]}],
                   goal="g", runner="slurm")
    with _driving(p, home, "a") as (d, job):
        wait_for(lambda: _scontrol(job).get("JobState") == "RUNNING", timeout=30, what="the job running")
        # the agent itself running: with proctrack/linuxproc (this cluster), a scancel in the
        # very instant the wrapper forks the agent can miss the agent (Slurm finds a job's
        # processes by their parents); proctrack/cgroup has no such gap
        wait_for(lambda: _agent_running(home, b"sleep"), timeout=30, what="the agent running")
        subprocess.run(["scancel", str(job)], check=True)          # a human, not dagrun
        assert d.wait(60) == 1
    failed = json.loads((task_dir(home, "g", "a") / "failed").read_text())
    # Slurm TERMs the agent and the job's wrapper together: either the wrapper died before it
    # wrote the agent's exit status, or it wrote 143 -- either way the reason is Slurm's state
    assert f"slurm job {job} CANCELLED" in failed["reason"], failed["reason"]
    assert ("without writing its exit file" in failed["reason"]
            or "(the agent ended by signal 15)" in failed["reason"]), failed["reason"]
    assert any(e["type"] == "agent.task.blocked" and e.get("task") == "b" for e in events(home, "g"))
    print(failed["reason"])


@slurm
def test_a_sigkilled_driver_is_restarted_and_reattaches_to_its_jobs(tmp_path, cluster, sbatch_calls, home, plans):
    env, calls = sbatch_calls
    go = tmp_path / "go"            # the agents run until the test creates it: after the reattach
    agent = f"until [ -e {go} ]; do sleep 0.05; done; printf 'done %s' \"$DAGRUN_TASK\""
    p = write_plan(plans, [{"id": f"a{i}", "prompt": "p"} for i in range(3)] +
                   [{"id": "z", "prompt": "p", "deps": ["a0", "a1", "a2"]}],
                   goal="g", runner="slurm", defaults={"agent": agent})
    d = spawn("run", "-q", p, home=home, env=env)
    d2 = None
    jobs = {}
    try:
        wait_for(lambda: all(_job_of(home, "g", f"a{i}") for i in range(3)), timeout=60, what="3 jobs submitted")
        jobs = {f"a{i}": _job_of(home, "g", f"a{i}") for i in range(3)}
        kill_group(d, signal.SIGKILL)                               # the driver dies; the jobs live on
        d.wait(10)
        assert all(_scontrol(j).get("JobState") in ("RUNNING", "PENDING") for j in jobs.values())
        d2 = spawn("run", "-q", p, home=home, env=env)
        # the new driver has taken over the three claims of the live jobs (owner.json says so)

        def reattached(t):
            try:
                o = json.loads((task_dir(home, "g", t) / "claim" / "owner.json").read_text())
            except (OSError, ValueError):
                return False
            return o.get("reattached") == 1 and o["handle"]["job"] == jobs[t]
        wait_for(lambda: all(reattached(t) for t in jobs), timeout=60, what="the jobs reattached")
        go.touch()
        out, err = d2.communicate(timeout=120)
        assert d2.returncode == 0, err
        assert b"goal g done: 4 done" in out
    finally:
        go.touch()                  # (a failed test's agents end too)
        kill_group(d)
        if d2 is not None:
            kill_group(d2)
        _scancel_all(jobs.values(), home)
    lines = calls.read_text().splitlines()
    assert len(lines) == 4, lines                                    # a0-a2 once, z once: nothing resubmitted
    for t, j in jobs.items():
        done = json.loads((task_dir(home, "g", t) / "done").read_text())
        assert done["attempt"] == 1 and (task_dir(home, "g", t) / "output").read_text() == f"done {t}"
        assert not (task_dir(home, "g", t) / "attempts").exists()   # no lost attempt recorded
    running = [e for e in events(home, "g") if e.get("status") == "running" and e["task"].startswith("a")]
    assert sorted(e["job"] for e in running) == sorted(jobs.values())


@slurm
def test_resources_reach_the_job(tmp_path, cluster, home, plans):
    p = write_plan(plans, [{"id": "big", "prompt": "p", "agent": "sleep 120", "timeout": 240,
                                         "resources": {"cpus": 2, "mem": "123M"},
                                         "slurm": {"sbatch_args": ["--nice=10"]}}],
                   goal="g", runner="slurm")
    with _driving(p, home, "big") as (d, job):
        info = _scontrol(job)
        assert info["NumCPUs"] == "2" and info.get("MinMemoryNode") == "123M", info
        assert info["TimeLimit"] == "00:06:00" and info["Nice"] == "10" and info["JobName"] == "dagrun.g.big"
        run("cancel", "g", "big", home=home, timeout=60)
        assert d.wait(60) == 1
    assert json.loads((task_dir(home, "g", "big") / "cancelled").read_text())
    wait_for(lambda: _scontrol(job).get("JobState") in ("CANCELLED", "FAILED", None), timeout=30, what="the job gone")


@slurm
def test_a_job_whose_driver_died_before_publishing_its_handle_is_found_by_run_id_and_cancelled(cluster, home,
                                                                                                 plans):
    """SIGKILL between sbatch and owner.json: the claim is half-born (no owner.json); after the
    grace the breaker asks the task's runner, which finds the job by its --comment (the run id).
    The grace is 1 s here (DAGRUN_CLAIM_GRACE; its 10 s default is test_stale_claims.py's):
    its length is not what this test checks, and it was 10 of the test's 12 s."""
    from dagrun.lifecycle import run_id
    from dagrun.store import Home
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "printf ok"}], goal="g", runner="slurm")
    run("submit", p, home=home)
    os.makedirs(task_dir(home, "g", "a") / "claim")
    rid = run_id(Home(str(home)), "g", "a", 1)
    job = int(subprocess.run(["sbatch", "--parsable", f"--comment={rid}", "--output=/dev/null", "--wrap", "sleep 120"],
                             capture_output=True, text=True, check=True).stdout.strip())
    try:
        wait_for(lambda: _scontrol(job).get("JobState") == "RUNNING", timeout=30, what="the orphan job running")
        r = run("run", "-q", p, home=home, timeout=120, env={"DAGRUN_CLAIM_GRACE": "1"})
        assert "goal g done" in r.stdout
        assert _scontrol(job).get("JobState") in ("CANCELLED", "COMPLETING", "FAILED")
        lost = json.loads((task_dir(home, "g", "a") / "attempts" / "1.json").read_text())
        assert lost["outcome"] == "lost" and "half-created claim" in lost["reason"]
    finally:
        _scancel_all([job])


def _slurm_node() -> str:
    return subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()[0]


@slurm
def test_the_node_of_each_attempt_shows_in_status_events_and_markers(tmp_path, cluster, home, plans):
    """A pending job has no node: the `running` event is written at sbatch; once the job
    runs, its node (what the wrapper wrote as claim/node) goes into owner.json (status shows
    it), into a `placed` event, and at the end into the marker, the attempt record and the
    done / failed event."""
    # each attempt runs until the test creates go<attempt>: the first ones once status has shown
    # both running on their node, bad's second once its `placed` event is written
    wait = f"until [ -e {tmp_path}/go$DAGRUN_ATTEMPT ]; do sleep 0.05; done"
    p = write_plan(plans, [
        {"id": "ok", "prompt": "p", "agent": f"{wait}; printf ok"},
        {"id": "bad", "prompt": "p", "agent": f"{wait}; exit 3", "retries": 1, "retry_backoff": 0}],
        goal="g", runner="slurm")
    node = _slurm_node()
    d = spawn("run", "-q", "-j", "2", p, home=home)
    jobs = []
    try:
        seen: dict = {}

        def placed():        # status while both jobs run: each row names the node
            r = run("status", "g", "--json", home=home, check=False)    # (before the submit: exit 2)
            rows = json.loads(r.stdout)["tasks"] if r.returncode == 0 else []
            seen.update({r["task"]: r["node"] for r in rows if r["state"] == "running" and r.get("node")})
            return len(seen) == 2
        wait_for(placed, timeout=60, interval=0.2, what="both jobs placed on a node")
        assert seen == {"ok": node, "bad": node}
        jobs = [_job_of(home, "g", t) for t in ("ok", "bad")]
        (tmp_path / "go1").touch()
        wait_for(lambda: any(e["type"] == "agent.task.placed" and e.get("task") == "bad" and e.get("attempt") == 2
                             for e in events(home, "g", polling=True)), timeout=60, what="bad's second attempt placed")
        jobs.append(_job_of(home, "g", "bad"))
        (tmp_path / "go2").touch()
        assert d.wait(120) == 1
    finally:
        for n in (1, 2):            # (a failed test's agents end too)
            (tmp_path / f"go{n}").touch()
        kill_group(d)
        _scancel_all(jobs, home)
    done = json.loads((task_dir(home, "g", "ok") / "done").read_text())
    assert done["node"] == node
    failed = json.loads((task_dir(home, "g", "bad") / "failed").read_text())
    assert failed["node"] == node and failed["exit_code"] == 3
    for n in (1, 2):
        rec = json.loads((task_dir(home, "g", "bad") / "attempts" / f"{n}.json").read_text())
        assert rec["node"] == node
    evs = events(home, "g")
    placed = [e for e in evs if e["type"] == "agent.task.placed"]
    assert sorted((e["task"], e["attempt"]) for e in placed) == [("bad", 1), ("bad", 2), ("ok", 1)]
    assert all(e["node"] == node and e["runner"] == "slurm" and isinstance(e["job"], int) for e in placed)
    ends = [e for e in evs if e.get("status") in ("done", "retrying", "failed")]
    assert len(ends) == 3 and all(e["node"] == node for e in ends)
    r = run("events", "g", home=home)     # the plain event lines name the node too
    assert f"node={node}" in r.stdout or f'"node":"{node}"' in r.stdout or f'"node": "{node}"' in r.stdout


# ------------------------------------------------------------------------------ steps mode
def test_a_bad_slurm_mode_is_refused(tmp_path, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="g", runner="slurm",
                   defaults={"agent": "true", "slurm": {"mode": "step"}})
    r = run("validate", p, check=2)
    assert 'defaults.slurm.mode: must be one of "jobs", "steps", got "step"' in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_srun_command_line_of_a_step():
    from dagrun.executor import Launch
    from dagrun.slurm import srun_args
    la = Launch(agent="claude -p", cwd="/w", env={}, stdin_path="/p", stdout_path="/c/stdout", stderr_path="/e",
                run_id="r1", runner="slurm", spec={"resources": {"cpus": 3, "mem": "2G"}, "name": "dagrun.g.t",
                                                   "slurm": {"mode": "steps"}})
    a = srun_args(la, "/c")
    assert a[:7] == ["srun", "--quiet", "--input=none", "--exact", "--nodes=1", "--ntasks=1", "--cpus-per-task=3"]
    assert "--mem=2G" in a and "--job-name=dagrun.g.t" in a and "--chdir=/w" in a
    # the step opens the agent's files itself (srun's forwarding once lost a short step's
    # output) and runs the agent's text in the same shell: no second /bin/sh exec'd
    assert a[-3:-1] == ["/bin/sh", "-c"] and a[-1].endswith("; exec </p >/c/stdout 2>/e; claude -p")
    assert "/c/node" in a[-1] and "/c/step" in a[-1]              # the node is not known: the step says it
    one = srun_args(la, "/c", node="n1")[-1]                       # an allocation of one node: known
    assert "/c/node" not in one and "/c/step" in one and "SLURMD_NODENAME" not in one


def test_the_node_of_an_allocation_of_one_node():
    from dagrun.slurm import allocation_node
    assert allocation_node({"SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu07"}) == "gpu07"
    assert allocation_node({"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]"}) is None
    assert allocation_node({"SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu[07]"}) is None    # not plain
    assert allocation_node({"SLURM_JOB_NODELIST": "gpu07"}) is None
    assert allocation_node({}) is None


def _steps_plan(folder: Path, tasks: list[dict], goal: str = "st") -> Path:
    return write_plan(folder, tasks, goal=goal, runner="slurm", defaults={"slurm": {"mode": "steps"}})


def _steps(job: int) -> list[str]:
    """The job steps Slurm runs for this job now (squeue -s), batch/extern steps left out."""
    out = subprocess.run(["squeue", "-h", "-s", "-j", str(job), "-o", "%i"], capture_output=True, text=True).stdout
    return [s for s in out.split() if s.split(".")[-1].isdigit()]


@slurm
def test_steps_mode_runs_the_tasks_as_steps_of_the_drivers_allocation(tmp_path, cluster, sbatch_calls, home, plans):
    agent = "printf '%s %s.%s' \"$DAGRUN_TASK\" \"$SLURM_JOB_ID\" \"$SLURM_STEP_ID\""
    p = _steps_plan(plans, [{"id": f"t{i}", "prompt": "p", "agent": agent} for i in range(20)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    # outside an allocation: refused before anything runs
    r = subprocess.run([DAGRUN, f"--home={home}", "run", str(p)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and 'mode "steps" needs the driver inside a Slurm allocation' in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not [e for e in events(home, "st") if e.get("status") == "running"]      # submitted, nothing started
    # the driver as the batch script of one job holding 2 CPUs: every task is a step of it
    env, calls = sbatch_calls
    job, rc = sbatch_wait(["-n", "2", f"--output={tmp_path / 'driver.log'}", "--wrap", f"{DAGRUN} --home={home} run -q -j 2 {p}"],
                          env={**os.environ, **env}, timeout=180)
    assert rc == 0, (tmp_path / "driver.log").read_text()
    assert "goal st done: 20 done" in (tmp_path / "driver.log").read_text()
    assert len(calls.read_text().splitlines()) == 1                 # our sbatch only: no job per task
    outs = outputs(home, "st")
    assert len(outs) == 20
    steps = set()
    for t, o in outs.items():
        name, step = o.split()
        assert name == t and step.split(".")[0] == str(job)
        steps.add(step)
    assert len(steps) == 20                                         # 20 distinct steps of that one job
    node = _slurm_node()
    evs = events(home, "st")
    running = [e for e in evs if e.get("status") == "running"]
    assert len(running) == 20 and all(e["runner"] == "slurm" and e["job"] == job for e in running)
    done = [e for e in evs if e.get("status") == "done"]
    assert len(done) == 20 and all(e["node"] == node for e in done)
    assert json.loads((task_dir(home, "st", "t0") / "done").read_text())["node"] == node


@slurm
def test_cancel_of_a_step_task_kills_the_step(tmp_path, cluster, home, plans):
    p = _steps_plan(plans, [{"id": "long", "prompt": "p", "agent": "sleep 120"},
                                         {"id": "after", "prompt": "p", "agent": "true", "deps": ["long"]}])
    r = subprocess.run(["sbatch", "--parsable", "-n", "1", f"--output={tmp_path / 'driver.log'}",
                        "--wrap", f"{DAGRUN} --home={home} run -q {p}"], capture_output=True, text=True, check=True)
    job = int(r.stdout.strip().split(";")[0])
    try:
        step_file = task_dir(home, "st", "long") / "claim" / "step"
        # (written in place by the step: whole once its newline is there)
        wait_for(lambda: step_file.exists() and step_file.read_text().endswith("\n"), timeout=60,
                 what="the step started")
        step = step_file.read_text().strip()
        assert step.split(".")[0] == str(job) and step in _steps(job)
        assert processes_with_env("DAGRUN_HOME", str(home))
        r = run("cancel", "st", "long", home=home, timeout=60)
        assert json.loads((task_dir(home, "st", "long") / "cancelled").read_text())
        wait_for(lambda: step not in _steps(job), timeout=30, what="the step gone from squeue -s")
        wait_for(lambda: not processes_with_env("DAGRUN_HOME", str(home)), timeout=30, what="the agent killed")
        # the driver ends (its goal has nothing left to run), and the allocation with it
        wait_for(lambda: _scontrol(job).get("JobState") in ("COMPLETED", "FAILED", None), timeout=60,
                 what="the driver's job ended")
    finally:
        _scancel_all([job])
    assert not (task_dir(home, "st", "after") / "done").exists()
    assert "goal st cancelled: 1 cancelled, 1 blocked" in (tmp_path / "driver.log").read_text()


@slurm
def test_steps_die_with_a_killed_driver_and_the_next_driver_runs_them_again(tmp_path, cluster, home, plans):
    """The driver is the job's script: SIGKILL it and the job ends, Slurm kills its steps; a
    new driver (a new allocation) records the attempt lost and runs the task again."""
    p = _steps_plan(plans, [{"id": "a", "prompt": "p",
                                          "agent": "[ \"$DAGRUN_ATTEMPT\" = 1 ] && sleep 120; printf 'ran %s' \"$SLURM_JOB_ID\""}])
    pidfile = tmp_path / "driver.pid"
    r = subprocess.run(["sbatch", "--parsable", "-n", "1", "--output=/dev/null",
                        "--wrap", f"{DAGRUN} --home={home} run -q {p} & echo $! >{pidfile}; wait"],
                       capture_output=True, text=True, check=True)
    job = int(r.stdout.strip().split(";")[0])
    try:
        step_file = task_dir(home, "st", "a") / "claim" / "step"
        wait_for(lambda: step_file.exists() and step_file.read_text().endswith("\n"), timeout=60,
                 what="the step started")
        step = step_file.read_text().strip()
        # (the script's `echo $! >` may come after the step: waited for, whole, not read once)
        pid = wait_for(lambda: pidfile.exists() and pidfile.read_text().endswith("\n") and pidfile.read_text(),
                       timeout=60, what="the driver's pid")
        os.kill(int(pid), signal.SIGKILL)          # the driver dies; its script ends
        wait_for(lambda: _scontrol(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", None), timeout=60,
                 what="the driver's job ended")
        wait_for(lambda: step not in _steps(job), timeout=30, what="the step gone")
        wait_for(lambda: not processes_with_env("DAGRUN_HOME", str(home)), timeout=35, what="the agent killed")
        job2, rc = sbatch_wait(["-n", "1", f"--output={tmp_path / 'driver2.log'}", "--wrap", f"{DAGRUN} --home={home} run -q {p}"],
                               timeout=120)
        assert rc == 0, (tmp_path / "driver2.log").read_text()
    finally:
        _scancel_all([job])
    assert (task_dir(home, "st", "a") / "output").read_text() == f"ran {job2}"
    lost = json.loads((task_dir(home, "st", "a") / "attempts" / "1.json").read_text())
    assert lost["outcome"] == "lost"
    assert json.loads((task_dir(home, "st", "a") / "done").read_text())["attempt"] == 2
