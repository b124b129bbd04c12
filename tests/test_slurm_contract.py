"""Issue 15's remote guarantees for the Slurm runner's steps mode (`"slurm": {"mode": "steps"}`),
on a real single-node cluster (.ci/slurm-up.sh; SLURM_CONF): the example goal and a 50-task DAG
give the local runner's outputs with every task a step of the driver's one allocation; a
timeout stops the step and is recorded as one; status names the runner and the job of a
running attempt. (Jobs mode: tests/test_slurm.py.) Marked
`slurm`: skipped without a cluster, failing under CI=true. The record reader needs no cluster."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import DAGRUN, EXAMPLES, events, kill_group, outputs, processes_with_env, run, sbatch_wait, spawn, \
    task_dir, wait_for, write_plan

slurm = pytest.mark.slurm


def _steps_of(job: int) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-s", "-j", str(job), "-o", "%i"], capture_output=True, text=True).stdout
    return [s for s in out.split() if s.split(".")[-1].isdigit()]


def _in_allocation(tmp_path: Path, script: str, cpus: int = 2, timeout: float = 240) -> tuple[int, int, str]:
    """`script` as the batch script of one job of `cpus` CPUs, waited for (conftest's
    sbatch_wait): (job id, exit code, its output)."""
    log = tmp_path / f"driver-{len(list(tmp_path.glob('driver-*.log')))}.log"
    job, rc = sbatch_wait(["-n", str(cpus), f"--output={log}", "--wrap", script], timeout=timeout)
    return job, rc, log.read_text() if log.exists() else ""


@slurm
def test_steps_mode_gives_the_local_outputs_for_the_example_goal_and_a_fifty_task_dag(tmp_path, cluster):
    ex = tmp_path / "examples"
    shutil.copytree(EXAMPLES / "add-auth", ex / "add-auth")
    shutil.copy(EXAMPLES / "fake-agent.sh", ex / "fake-agent.sh")
    doc = json.loads((ex / "add-auth" / "dag.json").read_text())
    doc["defaults"]["slurm"] = {"mode": "steps"}
    (ex / "add-auth" / "dag.json").write_text(json.dumps(doc))
    tasks = [{"id": f"t{layer}-{i}", "prompt": f"task {layer}/{i}",
              "deps": [] if layer == 0 else [f"t{layer - 1}-{i}", f"t{layer - 1}-{(i + 3) % 10}"]}
             for layer in range(5) for i in range(10)]
    fifty = write_plan(tmp_path / "plans", tasks, goal="fifty", defaults={
        "agent": "printf '%s %s ' \"$DAGRUN_TASK\" \"$DAGRUN_ATTEMPT\"; cksum | cut -d' ' -f1",
        "slurm": {"mode": "steps"}})
    local, steps = tmp_path / "local", tmp_path / "steps"
    run("run", "-q", ex / "add-auth" / "dag.json", home=local)
    run("run", "-q", "-j", "8", fifty, home=local)
    job, rc, log = _in_allocation(tmp_path, f"{DAGRUN} --home={steps} run -q -j 2 --runner slurm "
                                            f"{ex / 'add-auth' / 'dag.json'} && "
                                            f"{DAGRUN} --home={steps} run -q -j 2 --runner slurm {fifty}")
    assert rc == 0, log
    assert "goal add-auth done" in log and "goal fifty done: 50 done" in log, log
    assert len(outputs(local, "add-auth")) == 6 and outputs(steps, "add-auth") == outputs(local, "add-auth")
    assert len(outputs(local, "fifty")) == 50 and outputs(steps, "fifty") == outputs(local, "fifty")
    for goal, n in (("add-auth", 6), ("fifty", 50)):
        running = [e for e in events(steps, goal) if e.get("status") == "running"]
        assert len(running) == n and all(e["runner"] == "slurm" and e["job"] == job for e in running)
        done = [e for e in events(steps, goal) if e.get("status") == "done"]
        assert len(done) == n and all(e.get("node") for e in done)
    assert not list((steps / "goals" / "fifty" / "tasks").glob("*/claim"))


@slurm
def test_a_steps_node_is_known_from_a_one_node_allocation_else_the_step_says_it(tmp_path, cluster):
    """In an allocation of one node every step runs there: the `running` event already names
    the node and the step writes no node record. In one that spans nodes (forced here with
    SLURM_JOB_NUM_NODES=2: a one-node cluster cannot hold a two-node allocation) the step writes
    claim/node and the node reaches the `done` events and markers. Either way the step's
    records are gone by the commit, so the claim folder is released by one rmdir, never by an
    rmtree of what was left in it."""
    tasks = [{"id": f"t{i}", "prompt": "p", "agent": "printf '%s' \"$SLURM_STEP_ID\""} for i in range(6)]
    one = write_plan(tmp_path / "plans", tasks, "one.json", goal="one", runner="slurm", defaults={"slurm": {"mode": "steps"}})
    many = write_plan(tmp_path / "plans", tasks, "many.json", goal="many", runner="slurm",
                      defaults={"slurm": {"mode": "steps"}})
    home = tmp_path / "home"
    job, rc, log = _in_allocation(tmp_path, f"DAGRUN_STEP_TRACE={tmp_path / 'one.trace'} {DAGRUN} --home={home} "
                                            f"run -q -j 2 {one} && SLURM_JOB_NUM_NODES=2 DAGRUN_STEP_TRACE="
                                            f"{tmp_path / 'many.trace'} {DAGRUN} --home={home} run -q -j 2 {many}")
    assert rc == 0, log
    node = subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()[0]
    for goal in ("one", "many"):
        assert len(set(outputs(home, goal).values())) == 6             # six distinct steps
        evs = events(home, goal)
        running = [e for e in evs if e.get("status") == "running"]
        assert len(running) == 6 and all(e["job"] == job for e in running)
        if goal == "one":                                   # known when it started: no `placed` to follow
            assert all(e["node"] == node for e in running), running
            assert not [e for e in evs if e["type"] == "agent.task.placed"]
        else:
            assert not [e for e in running if "node" in e], running
        done = [e for e in evs if e.get("status") == "done"]
        assert len(done) == 6 and all(e["node"] == node for e in done), done
        assert all(json.loads((task_dir(home, goal, f"t{i}") / "done").read_text())["node"] == node for i in range(6))
        steps = (tmp_path / f"{goal}.trace").read_text().splitlines()
        assert not [s for s in steps if "rmtree" in s and ".claim.released" in s], steps   # nothing left in a claim
        assert len([s for s in steps if s.split()[1] == "rmdir" and s.endswith("/claim")]) == 6, steps
    assert not list((home / "goals").glob("*/tasks/*/claim"))


@slurm
def test_a_step_that_times_out_is_stopped_and_recorded_as_a_timeout(tmp_path, cluster):
    p = write_plan(tmp_path / "plans", [
        {"id": "slow", "prompt": "p", "agent": "sleep 120", "timeout": 1, "kill_grace": 1},
        {"id": "after", "prompt": "p", "agent": "true", "deps": ["slow"]}],
        goal="st", runner="slurm", defaults={"slurm": {"mode": "steps"}})
    home = tmp_path / "home"
    job, rc, log = _in_allocation(tmp_path, f"{DAGRUN} --home={home} run -q {p}", cpus=1, timeout=120)
    assert rc == 1, log                                # the goal failed: its driver's exit code
    rec = json.loads((task_dir(home, "st", "slow") / "attempts" / "1.json").read_text())
    assert rec["outcome"] == "timeout" and "timed out after 1s" in rec["reason"] and rec["counted"], rec
    assert rec["node"], rec                            # the step named its node before it was stopped
    assert (task_dir(home, "st", "slow") / "failed").exists()
    assert not (task_dir(home, "st", "after") / "done").exists()
    assert any(e["type"] == "agent.task.blocked" and e.get("task") == "after" for e in events(home, "st"))
    wait_for(lambda: not _steps_of(job), timeout=30, what="no step of the driver's job left")
    wait_for(lambda: not processes_with_env("DAGRUN_HOME", str(home)), timeout=35, what="the agent gone")


@slurm
def test_a_steps_output_streams_to_the_driver_and_its_stderr_is_kept(tmp_path, cluster):
    """The step writes the agent's stdout/stderr into the claim itself (srun's forwarding lost
    a short step's whole output about once in 500 under load): the driver still sees it grow
    (max_output stops a flood, stall_timeout a silent agent), a failed attempt keeps its
    stderr, and srun's own messages land in it too."""
    p = write_plan(tmp_path / "plans", [
        {"id": "flood", "prompt": "p", "agent": "yes flood", "max_output": 20000, "kill_grace": 1},
        {"id": "quiet", "prompt": "p", "agent": "echo once; sleep 120", "stall_timeout": 2, "kill_grace": 1},
        {"id": "bad", "prompt": "the prompt", "agent": "cat; echo to-stderr >&2; exit 3"},
        {"id": "empty", "prompt": "p", "agent": "true"},
        {"id": "nomem", "prompt": "p", "agent": "true", "resources": {"cpus": 64}}],
        goal="so", runner="slurm", defaults={"slurm": {"mode": "steps"}})
    home = tmp_path / "home"
    job, rc, log = _in_allocation(tmp_path, f"{DAGRUN} --home={home} run -q -j 5 {p}", cpus=2, timeout=180)
    assert rc == 1, log

    def record(t):
        return json.loads((task_dir(home, "so", t) / "attempts" / "1.json").read_text())
    assert record("flood")["outcome"] == "output_limit", record("flood")
    out = (task_dir(home, "so", "flood") / "attempts" / "1.out").read_bytes()
    assert len(out) == 20000 and out.startswith(b"flood\nflood\n")         # cut at max_output
    assert record("quiet")["outcome"] == "stalled", record("quiet")
    assert (task_dir(home, "so", "quiet") / "attempts" / "1.out").read_text() == "once\n"
    bad = record("bad")
    assert bad["exit_code"] == 3, bad
    assert (task_dir(home, "so", "bad") / "attempts" / "1.out").read_text() == \
        (task_dir(home, "so", "bad") / "prompt.md").read_text()          # stdin = prompt.md
    err = (task_dir(home, "so", "bad") / "attempts" / "1.err").read_text()
    assert err.startswith("to-stderr\n") and "srun: error:" in err and "exit code 3" in err, err   # srun's own line too
    assert (task_dir(home, "so", "empty") / "done").exists()
    assert (task_dir(home, "so", "empty") / "output").read_bytes() == b""
    assert not (task_dir(home, "so", "empty") / "stderr.log").exists()
    err = (task_dir(home, "so", "nomem") / "attempts" / "1.err").read_text()     # srun's own refusal
    assert "srun" in err and err.strip(), err
    wait_for(lambda: not _steps_of(job), timeout=30, what="no step of the driver's job left")
    wait_for(lambda: not processes_with_env("DAGRUN_HOME", str(home)), timeout=35, what="the agents gone")


@slurm
def test_status_names_the_runner_and_the_job_of_a_running_attempt(tmp_path, cluster):
    p = write_plan(tmp_path / "plans", [{"id": "a", "prompt": "p", "agent": "sleep 120"}], goal="g", runner="slurm")
    home = tmp_path / "home"
    d = spawn("run", "-q", p, home=home)
    job = None
    try:
        def job_of():
            try:
                return json.loads((task_dir(home, "g", "a") / "claim" / "owner.json").read_text())["handle"].get("job")
            except (OSError, ValueError, KeyError):
                return None
        job = wait_for(job_of, timeout=60, what="the job id in owner.json")
        row = json.loads(run("status", "g", "--json", home=home).stdout)["tasks"][0]
        assert row["state"] == "running" and row["runner"] == "slurm" and row["job"] == job, row
        assert f"slurm job {job}" in run("status", "g", home=home, env={"COLUMNS": "200"}).stdout
        run("cancel", "g", "a", home=home, timeout=60)
        assert d.wait(60) == 1
    finally:
        kill_group(d)
        if job:
            subprocess.run(["scancel", str(job)], capture_output=True)
        wait_for(lambda: not processes_with_env("DAGRUN_HOME", str(home)), timeout=35, what="the job's agent gone")
    row = json.loads(run("status", "g", "--json", home=home).stdout)["tasks"][0]
    assert row["state"] == "cancelled" and "runner" not in row          # only while it runs


def test_a_node_record_is_read_only_once_whole(tmp_path):
    """The step writes claim/node in place (no rename, no `mv` process): a reader takes it only
    once its newline is there, so a write cut short reads as "not known yet"."""
    from dagrun.slurm import _read_record
    f = tmp_path / "node"
    assert _read_record(str(f)) is None                # not written yet
    f.write_text("")
    assert _read_record(str(f)) is None                # created, nothing written yet
    f.write_text("node-1")
    assert _read_record(str(f)) is None                # cut short: no newline
    f.write_text("node-17\n")
    assert _read_record(str(f)) == "node-17"
    assert _read_record(None) is None
