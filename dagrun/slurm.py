"""The Slurm runner: one batch job per attempt, on a home the nodes share.

start() writes a small wrapper script into the claim folder (claim/job.sh: the agent command
quoted into it, never the prompt) and submits it with `sbatch --parsable`; the submitting
environment (DAGRUN_* included) travels with the job (sbatch's default --export=ALL), so the
agent runs exactly as the local runner runs it: `sh -c "$agent"` in the task's workdir,
stdin = prompt.md, stdout -> claim/stdout, stderr -> claim/stderr. The wrapper then publishes
the exit status by rename as claim/exit. The handle (the job id, the cluster, the paths) goes
into owner.json like any other runner's, and the engine commits through the same code path.

An attempt's end is noticed by its exit file (a stat per running job every 20-100 ms, by how many run) and
reconciled with Slurm every QUEUE_POLL seconds (one `squeue` for all jobs of this driver): a job
that left the queue without an exit file died under Slurm (node failure, out of memory, time
limit, a human's scancel) and ends with Slurm's state and exit code as the reason (from
`scontrol show job`, else `sacct`). terminate/kill are `scancel` (TERM / KILL to every process
of the job). Submissions are spaced by at least SUBMIT_INTERVAL (no sbatch storm).

Steps mode (`"slurm": {"mode": "steps"}`): the driver runs inside an allocation it holds
(`salloc ... dagrun run`, `sbatch --wrap 'dagrun worker --until-idle'`) and each attempt is a
local child `srun --exact --nodes=1 --ntasks=1 ...` that starts one job step of that
allocation. The srun process is run by a ProcessRunner, so liveness (pid + start time, run id),
timeouts, cancel, stray killing and the recovery of a dead driver's claims are the local
runner's; srun forwards TERM to the step, a KILL also `scancel`s the step. The step itself
reads prompt.md and writes claim/stdout and claim/stderr on the shared home, as a jobs-mode
wrapper does: srun's own I/O forwarding (Slurm 22.05) lost the whole stdout of about one
short step in 500 under load, the agent having printed it and srun exiting 0. The driver
follows those files' sizes for stall_timeout, max_output and first-byte times (the output
streams); srun's own messages (its pipes) are added to claim/stderr when the step ends. When
the allocation ends (the driver's batch script exits) Slurm kills its steps. srun is exec'd
straight (Launch.argv: no `sh -c` in between) and the step's one shell runs the agent's text
itself. Handles carry "mode": "steps" and the allocation's job id; the step writes its step id
to claim/step and, unless the allocation has one node (then the handle names it from the
start), its node to claim/node; both are removed when the step ends, so the claim folder is
empty again for its release.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, replace

from . import fsio
from .executor import RUN_ID_VAR, Exit, Launch, ProcessRunner, Progress, StartError, Wakeup
from .proc import HOST

EXIT_POLL = (0.02, 0.1)   # s: stat of the running jobs' exit files: 2 ms per job, within these bounds
QUEUE_POLL = 2.0          # s: one squeue for every running job of this driver
SETTLE = 10.0             # s: the longest wait for Slurm's end state after an exit by a signal we did not send
GONE_GRACE = 1.5          # s: a job out of the queue gets this long for its exit file to show (NFS)
SUBMIT_INTERVAL = 0.02    # s: at most 50 sbatch calls a second from one driver
CMD_TIMEOUT = 30.0        # s: a Slurm command that takes longer is treated as failed
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
               "SIGNALING", "STAGE_OUT", "STOPPED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
               "UNKNOWN-LIVE"}     # squeue did not answer: nothing is judged on a controller hiccup
# end states in which Slurm itself stopped the job (not the agent's own exit)
STOPPED_STATES = {"CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE", "BOOT_FAIL"}
TOOLS = ("sbatch", "squeue", "scancel", "scontrol")
SRUN_OUT, SRUN_ERR = "srun.out", "srun.err"   # a step's srun process's own stdout/stderr (claim folder)
STEPS = "steps"
NO_ALLOCATION = ("runner slurm: mode \"steps\" needs the driver inside a Slurm allocation (SLURM_JOB_ID is not set): "
                 "run it as `salloc ... dagrun run PLAN` or `sbatch --wrap 'dagrun worker --until-idle'`")


def _run(args: list[str], env: dict | None = None, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 255, "", f"{args[0]} did not answer within {timeout:g}s")
    except OSError as e:
        return subprocess.CompletedProcess(args, 255, "", f"{args[0]}: {e.strerror or e}")


def sbatch_args(launch: Launch, script: str) -> list[str]:
    """The sbatch command line of an attempt: resources, limits and the plan's options."""
    spec = launch.spec or {}
    res = spec.get("resources") or {}
    opts = spec.get("slurm") or {}
    a = ["sbatch", "--parsable", f"--job-name={spec.get('name') or 'dagrun'}", f"--comment={launch.run_id}",
         f"--chdir={launch.cwd}", "--output=/dev/null", "--error=/dev/null", "--ntasks=1"]
    if res.get("cpus"):
        a.append(f"--cpus-per-task={int(res['cpus'])}")
    a += _mem_gpu(res)
    if spec.get("timeout"):
        # Slurm's limit is the backstop: dagrun's own timeout (TERM, kill_grace, KILL) fires first
        secs = float(spec["timeout"]) + float(spec.get("kill_grace") or 0) + 60
        a.append(f"--time={max(1, -(-int(secs) // 60))}")
    if opts.get("partition"):
        a.append(f"--partition={opts['partition']}")
    if opts.get("account"):
        a.append(f"--account={opts['account']}")
    a += list(opts.get("sbatch_args") or [])
    a.append(script)
    return a


def srun_args(launch: Launch, cdir: str, node: str | None = None) -> list[str]:
    """The srun command line of a step-mode attempt: one task on one node of the allocation,
    only the resources it asks for (--exact), the agent run as the local runner runs it (a
    /bin/sh running AGENT, stdin = the prompt, stdout and stderr the claim's capture files,
    opened by the step: not srun's forwarding). The step's shell first writes its step id
    (which a KILL scancels) into the claim folder and, unless the driver already knows the
    `node` (an allocation of one node), its node; then it redirects its own stdin, stdout and
    stderr and runs the agent's command itself -- one shell, not a shell that execs the
    agent's `sh -c` (one exec of /bin/sh less a task). The agent's text follows on the same
    line, so it is parsed with the prefix: a syntax error in it runs nothing and reads as it
    would locally (line 1).

    The records are written straight (one `printf` each, no `mv` process: each costs a fork +
    exec per task, 1-10 ms here) and read only once they end with their newline
    (_read_record): each file is written once per attempt, so a torn or interrupted write is
    a prefix without one, read as "not yet known"."""
    spec = launch.spec or {}
    res = spec.get("resources") or {}
    q = shlex.quote
    inner = "" if node else f"printf '%s\\n' \"${{SLURMD_NODENAME:-$(hostname)}}\" >{q(os.path.join(cdir, 'node'))}; "
    inner += (f"printf '%s.%s\\n' \"$SLURM_JOB_ID\" \"$SLURM_STEP_ID\" >{q(os.path.join(cdir, 'step'))}; "
              f"exec <{q(launch.stdin_path)} >{q(launch.stdout_path)} 2>{q(launch.stderr_path)}; {launch.agent}")
    a = ["srun", "--quiet", "--input=none", "--exact", "--nodes=1", "--ntasks=1", f"--cpus-per-task={int(res.get('cpus') or 1)}",
         f"--job-name={spec.get('name') or 'dagrun'}", f"--chdir={launch.cwd}", *_mem_gpu(res)]
    return a + ["/bin/sh", "-c", inner]


def allocation_node(env: dict) -> str | None:
    """The node of an allocation of exactly one node (every step of it runs there), from the
    variables Slurm sets in it; None when it has more, or they do not say plainly."""
    if env.get("SLURM_JOB_NUM_NODES") != "1":
        return None
    n = env.get("SLURM_JOB_NODELIST") or ""
    return n if n and not any(c in n for c in "[],") else None


def _mem_gpu(res: dict) -> list[str]:
    """The memory and GPUs a task's resources ask for, as sbatch and srun options."""
    out = [f"--mem={res['mem']}"] if res.get("mem") is not None else []
    if res.get("gpu"):
        out.append(f"--gres=gpu:{int(res['gpu'])}")
    return out


def wrapper(launch: Launch, exit_path: str) -> str:
    q = shlex.quote
    node_path = os.path.join(os.path.dirname(exit_path), "node")
    return (
        "#!/bin/sh\n"
        f"# dagrun attempt {launch.run_id}: says where it runs, runs the agent as the local runner does,\n"
        "# then publishes its exit status\n"
        f"printf '%s\\n' \"${{SLURMD_NODENAME:-$(hostname)}}\" >{q(node_path + '.tmp')} && "
        f"mv -f {q(node_path + '.tmp')} {q(node_path)}\n"
        f"cd {q(launch.cwd)} || exit 126\n"
        f"/bin/sh -c {q(launch.agent)} <{q(launch.stdin_path)} >{q(launch.stdout_path)} 2>{q(launch.stderr_path)}\n"
        "rc=$?\n"
        # as the local runner: a capture file exists only if something was written to it
        f"[ -s {q(launch.stdout_path)} ] || rm -f {q(launch.stdout_path)}\n"
        f"[ -s {q(launch.stderr_path)} ] || rm -f {q(launch.stderr_path)}\n"
        f"printf '%s\\n' \"$rc\" >{q(exit_path + '.tmp')} && mv -f {q(exit_path + '.tmp')} {q(exit_path)}\n"
        "exit \"$rc\"\n")


@dataclass
class _Job:
    handle: dict
    t0: float
    gone_since: float | None = None      # monotonic: first seen out of the queue without an exit file
    stop_sig: int | None = None          # we asked it to stop with this signal (the latest)
    first_sig: int | None = None         # ... and first
    state: str | None = None             # last squeue state
    node: str | None = None              # where it runs: claim/node (the wrapper) or squeue's %N
    exit_seen: float | None = None       # monotonic: a 128+N exit file seen while Slurm still ends the job
    settle_at: float | None = None       # ... and when to ask Slurm again


@dataclass
class _StepOutput:
    """The capture files of a running step as the driver last saw them."""
    cap: int | None = None               # max_output
    out: int = 0
    err: int = 0
    first_byte: float | None = None      # monotonic: when a check first saw stdout non-empty
    last_output: float | None = None     # ... and when it last saw either file grow


class SlurmRunner:
    name = "slurm"

    def __init__(self):
        self._jobs: dict[str, _Job] = {}
        self._last_submit = 0.0
        self._next_queue = 0.0
        self.submitted = 0                 # sbatch calls by this instance (bench, tests)
        self._steps: ProcessRunner | None = None    # runs the srun processes of steps mode
        self._step_out: dict[str, _StepOutput] = {}  # key -> what a step's agent has written

    def _proc(self) -> ProcessRunner:
        if self._steps is None:
            self._steps = ProcessRunner()
        return self._steps

    @staticmethod
    def driver_unusable(tasks) -> str | None:
        """What a driver of these tasks lacks (checked when it starts): steps mode runs inside
        the driver's own allocation."""
        if not any((t.slurm or {}).get("mode") == STEPS for t in tasks):
            return None
        if shutil.which("srun") is None:
            return "runner slurm: srun not found on PATH"
        return None if os.environ.get("SLURM_JOB_ID", "").isdigit() else NO_ALLOCATION

    @staticmethod
    def unusable(opts: dict | None = None) -> str | None:
        for t in TOOLS:
            if shutil.which(t) is None:
                return f"runner slurm: {t} not found on PATH"
        r = _run(["scontrol", "ping"], timeout=15)
        if r.returncode != 0 or "UP" not in r.stdout:
            why = (r.stderr or r.stdout).strip().splitlines()
            return f"runner slurm: the controller does not answer `scontrol ping`" + (f" ({why[-1]})" if why else "")
        return None

    def key(self, handle: dict) -> str:
        if handle.get("mode") == STEPS:      # (by run id: known before the srun is forked)
            return f"step{handle.get('run_id') or handle['pid']}"
        return str(handle["job"])

    # ------------------------------------------------------------------ start
    def start(self, launch: Launch) -> dict:
        if ((launch.spec or {}).get("slurm") or {}).get("mode") == STEPS:
            return self._start_step(launch)
        if not os.path.isdir(launch.cwd):
            raise StartError(f"cannot start the agent in {launch.cwd}: No such file or directory")
        cdir = os.path.dirname(launch.stdout_path)
        script, exit_path = os.path.join(cdir, "job.sh"), os.path.join(cdir, "exit")
        try:
            with open(script + ".tmp", "w") as f:
                f.write(wrapper(launch, exit_path))
            os.chmod(script + ".tmp", 0o700)
            os.rename(script + ".tmp", script)
        except OSError as e:
            raise StartError(f"cannot write the job script {script}: {e.strerror or e}") from None
        wait = self._last_submit + SUBMIT_INTERVAL - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        env = dict(launch.env)
        env[RUN_ID_VAR] = launch.run_id
        r = _run(sbatch_args(launch, script), env=env)
        self._last_submit = time.monotonic()
        self.submitted += 1
        job = r.stdout.strip().split(";")[0] if r.returncode == 0 else ""
        if not job.isdigit():
            err = (r.stderr or r.stdout).strip().splitlines()
            raise StartError(f"sbatch failed: {err[-1] if err else f'exit {r.returncode}'}")
        cluster = r.stdout.strip().split(";")[1] if ";" in r.stdout else None
        handle = {"runner": self.name, "job": int(job), "cluster": cluster, "submit_host": HOST,
                  "run_id": launch.run_id, "exit": exit_path, "stdout": launch.stdout_path,
                  "node_file": os.path.join(cdir, "node")}
        self._jobs[job] = _Job(handle, time.monotonic())
        return handle

    def _start_step(self, launch: Launch, wait: bool = True) -> dict:
        job = str(launch.env.get("SLURM_JOB_ID") or "")
        if not job.isdigit():
            raise StartError(NO_ALLOCATION)
        srun = _which("srun", launch.env.get("PATH"))
        if srun is None:
            raise StartError("runner slurm: srun not found on PATH")
        cdir = os.path.dirname(launch.stdout_path)
        node = allocation_node(launch.env)
        argv = (srun, *srun_args(launch, cdir, node)[1:])
        # srun is exec'd straight, not through `sh -c` (one exec of /bin/sh less a task, 1-4 ms
        # here); its own pipes carry only srun's messages (the step writes the agent's files)
        proc = self._proc()
        handle = (proc.start if wait else proc.submit)(replace(launch, agent=shlex.join(argv), argv=argv, runner="process",
                                                               max_output=None, stdout_path=os.path.join(cdir, SRUN_OUT),
                                                               stderr_path=os.path.join(cdir, SRUN_ERR)))
        # the node: known now in an allocation of one node (the `running` event says it, and no
        # `placed` event and owner.json rewrite follow), else the step writes it
        handle.update(runner=self.name, mode=STEPS, job=int(job), step_file=os.path.join(cdir, "step"),
                      stdout=launch.stdout_path, stderr=launch.stderr_path,
                      **({"node": node} if node else {"node_file": os.path.join(cdir, "node")}))
        self._step_out[self.key(handle)] = _StepOutput(cap=launch.max_output)
        return handle

    def submit(self, launch: Launch) -> dict | None:
        """A step's `srun` is forked by the ProcessRunner's spawner thread while the driver's
        loop goes on (as a local agent is; the fork + exec cost 5-15 ms of the loop a task
        here); spawned() hands it back. None for a job: start() submits it."""
        if ((launch.spec or {}).get("slurm") or {}).get("mode") != STEPS:
            return None
        return self._start_step(launch, wait=False)

    def spawned(self) -> list:
        return self._steps.spawned() if self._steps is not None else []

    def adopt(self, handle: dict) -> bool:
        """Follow a job started by a driver that died (reattach): True if it is still queued or
        running, or ended with its exit file written (then poll reports that exit). A step is
        never adopted: its srun was the dead driver's child (it is reaped like a local agent)."""
        if handle.get("mode") == STEPS or not isinstance(handle.get("job"), int):
            return False
        if not (os.path.exists(handle.get("exit") or "") or self._states([handle["job"]]).get(handle["job"]) in LIVE_STATES):
            return False
        self._jobs[str(handle["job"])] = _Job(dict(handle), time.monotonic(), node=handle.get("node"))
        return True

    def node(self, handle: dict) -> str | None:
        """The node the job runs on: what its wrapper wrote as claim/node when it started (or
        squeue's node list); None while it is pending."""
        if handle.get("mode") == STEPS:
            return handle.get("node") or _read_record(handle.get("node_file"))
        j = self._jobs.get(self.key(handle))
        if j is None:
            return handle.get("node")
        if j.node is None and j.state != "PENDING":     # (a queued job has not written it yet)
            j.node = _read_line(handle.get("node_file"))
        return j.node

    # ------------------------------------------------------------------ the loop's side
    def wakeup(self) -> Wakeup:
        w = self._steps.wakeup() if self._steps is not None else Wakeup((), None)
        if not self._jobs:
            return w
        t = min(EXIT_POLL[1], max(EXIT_POLL[0], 0.002 * len(self._jobs)))
        return Wakeup(w.fds, t if w.timeout is None else min(t, w.timeout))

    def service(self, ready: set[int]) -> None:
        if self._steps is not None:
            self._steps.service(ready)

    def progress(self, handle: dict) -> Progress:
        if handle.get("mode") == STEPS:
            return self._step_progress(handle)
        if self.key(handle) not in self._jobs:
            return Progress()
        return self._job_progress(handle)

    @staticmethod
    def _job_progress(handle: dict) -> Progress:
        """What a job's agent has written: the size of claim/stdout (the wrapper's redirect);
        both while it runs and in its Exit."""
        return Progress(out_bytes=fsio.size(handle["stdout"]))

    def _step_progress(self, handle: dict) -> Progress:
        """What the step's agent has written so far: the sizes of claim/stdout and
        claim/stderr (the step writes them), a byte more than last time being output."""
        w = self._step_out.setdefault(self.key(handle), _StepOutput())
        out, err = fsio.size(handle.get("stdout")), fsio.size(handle.get("stderr"))
        if out > w.out or err > w.err:
            now = time.monotonic()
            w.last_output = now
            if out and w.first_byte is None:
                w.first_byte = now
            w.out, w.err = out, err
        over = w.cap is not None and out > w.cap
        return Progress(out_bytes=min(out, w.cap) if over else out, err_bytes=err, first_byte=w.first_byte,
                        last_output=w.last_output, over_limit=over)

    def _end_step(self, handle: dict, e: Exit) -> Exit:
        """A step's srun has exited: srun's own messages join the agent's stderr, stdout is cut
        at max_output, and (as the local runner) a capture file exists only if written to. The
        step's node and step-id records and srun's own capture files are removed once read, so
        the claim folder holds only owner.json again when the attempt is committed: its release
        is then one rmdir(2), not a listing, a rename and an rmtree on the driver's loop (2-3 ms
        a task here, more on NFS)."""
        prog = self._step_progress(handle)
        self._step_out.pop(self.key(handle), None)
        out, err = handle.get("stdout"), handle.get("stderr")
        cdir = os.path.dirname(out or "")
        said = b""
        srun = (e.progress.out_bytes or e.progress.err_bytes) if e.progress is not None else True
        for name in (SRUN_ERR, SRUN_OUT) if srun else ():      # (created on srun's first byte only)
            try:
                with open(os.path.join(cdir, name), "rb") as f:
                    said += f.read()
            except OSError:
                pass
        node = handle.get("node") or _read_record(handle.get("node_file"))
        try:
            if said:
                with open(err, "ab") as f:
                    f.write(said)
            if prog.over_limit:
                os.truncate(out, prog.out_bytes)
            if not prog.out_bytes:
                _unlink(out)
            if not prog.err_bytes and not said:
                _unlink(err)
        except OSError:
            pass
        for path in (handle.get("node_file"), handle.get("step_file"), *(
                os.path.join(cdir, n) for n in ((SRUN_ERR, SRUN_OUT) if srun else ()))):
            _unlink(path)
        return replace(e, progress=replace(prog, err_bytes=prog.err_bytes + len(said)), node=node)

    def poll(self, handle: dict) -> Exit | None:
        if handle.get("mode") == STEPS:
            e = self._proc().poll(handle)
            return None if e is None else self._end_step(handle, e)
        k = self.key(handle)
        j = self._jobs.get(k)
        if j is None:
            return Exit(None, signal.SIGKILL)
        code = _read_exit(handle.get("exit"))
        if code is None:                         # no exit file (yet): Slurm's word once it is gone
            e = self._gone(handle, j)
        elif code > 128 and j.stop_sig is None:  # a signal we did not send: Slurm's word once it settles
            e = self._signalled(handle, j, code)
        else:                                    # the agent's own exit, or the end of our scancel
            e = Exit(code, None, self._job_progress(handle), node=self._node(handle, j))
        if e is not None:
            del self._jobs[k]
        return e

    def _node(self, handle: dict, j: _Job) -> str | None:
        return j.node or _read_line(handle.get("node_file"))

    def _signalled(self, handle: dict, j: _Job, code: int) -> Exit | None:
        """The exit file says the agent died of signal code-128 and we sent none: Slurm's
        scancel by a human, its time limit, an OOM kill... Slurm signals the agent and the
        wrapper together, so the wrapper may still have written the agent's 128+N: say what
        Slurm says once it has ended the job (scontrol shows COMPLETING until then; asked every
        0.2 s, for up to SETTLE s, then the exit file stands). None: not settled yet."""
        now = time.monotonic()
        if j.settle_at is not None and now < j.settle_at:
            return None
        state = (self.describe(handle["job"])[0] or "").split(" ")[0]
        if state in STOPPED_STATES:
            return Exit(None, code - 128, self._job_progress(handle), node=self._node(handle, j),
                        reason=f"slurm job {handle['job']} {state} (the agent ended by signal {code - 128})")
        if state in LIVE_STATES and now - (j.exit_seen or now) < SETTLE:
            j.exit_seen = j.exit_seen or now
            j.settle_at = now + 0.2
            return None
        return Exit(code, None, self._job_progress(handle), node=self._node(handle, j))

    def _gone(self, handle: dict, j: _Job) -> Exit | None:
        """No exit file: the job ends once squeue (one call for every job of this driver, every
        QUEUE_POLL s; 0.5 s while one is being stopped) has not shown it for GONE_GRACE s (at
        once after our scancel), with Slurm's state and exit code. None: still running."""
        now = time.monotonic()
        if now >= self._next_queue:
            self._next_queue = now + (0.5 if any(x.stop_sig for x in self._jobs.values()) else QUEUE_POLL)
            nodes: dict[int, str] = {}
            states = self._states([int(x) for x in self._jobs], nodes)
            for kk, x in self._jobs.items():
                x.state = states.get(int(kk))
                x.node = x.node or nodes.get(int(kk))
                if x.state in LIVE_STATES:
                    x.gone_since = None
                elif x.gone_since is None:
                    x.gone_since = now
        if j.gone_since is None or now - j.gone_since < (0.0 if j.stop_sig else GONE_GRACE):
            return None
        state, exitcode, reason = self.describe(handle["job"])
        code, sig = _split_exitcode(exitcode)
        node = self._node(handle, j)
        if j.stop_sig is not None:       # we stopped it: the wrapper died with the agent
            return Exit(None, sig or j.first_sig, self._job_progress(handle), node=node,
                        reason=f"slurm job {handle['job']} {state or 'ended'} after dagrun's scancel")
        why = f"slurm job {handle['job']} {state or 'vanished from the queue'}"
        if exitcode:
            why += f" (exit code {exitcode}" + (f", {reason}" if reason and reason != "None" else "") + ")"
        why += " without writing its exit file"
        return Exit(code if code else None, sig if sig else (None if code else signal.SIGKILL),
                    self._job_progress(handle), reason=why, node=node)

    # ------------------------------------------------------------------ Slurm queries
    def _states(self, jobs: list[int], nodes: dict | None = None) -> dict[int, str]:
        """job -> state for the jobs Slurm still knows (one squeue); a job missing is gone.
        nodes: filled with job -> node list of the jobs that have one (running)."""
        if not jobs:
            return {}
        r = _run(["squeue", "-h", "-t", "all", "-o", "%i %T %N", "-j", ",".join(map(str, jobs))])
        out: dict[int, str] = {}
        if r.returncode != 0:
            if "Invalid job id" in r.stderr:
                return {}
            # the controller did not answer: say every job still lives (never fail on a hiccup)
            return {j: "UNKNOWN-LIVE" for j in jobs} if jobs else {}
        for line in r.stdout.splitlines():
            p = line.split()
            if len(p) in (2, 3) and p[0].isdigit():
                out[int(p[0])] = p[1]
                if len(p) == 3 and nodes is not None:
                    nodes[int(p[0])] = p[2]
        return out

    def describe(self, job: int) -> tuple[str | None, str | None, str | None]:
        """(state, exit code "N:S", reason) from scontrol, else sacct; Nones when unknown."""
        r = _run(["scontrol", "-o", "show", "job", str(job)])
        if r.returncode == 0 and "JobState=" in r.stdout:
            f = dict(x.split("=", 1) for x in r.stdout.split() if "=" in x)
            return f.get("JobState"), f.get("ExitCode"), f.get("Reason")
        for args in (["sacct", "-n", "-X", "-P", "-o", "State,ExitCode", "-j", str(job)],
                     ["sacct", "-c", "-n", "-P", "-o", "State,ExitCode", "-j", str(job)]):
            r = _run(args)
            line = r.stdout.strip().splitlines()[:1]
            if r.returncode == 0 and line and "|" in line[0]:
                st, ec = line[0].split("|")[:2]
                return st.split()[0], ec, None
        return None, None, None

    # ------------------------------------------------------------------ stopping
    def terminate(self, handle: dict) -> None:
        self._signal(handle, signal.SIGTERM)

    def kill(self, handle: dict) -> None:
        self._signal(handle, signal.SIGKILL)

    def _signal(self, handle: dict, sig: int) -> None:
        if handle.get("mode") == STEPS:
            # TERM: srun forwards it to the step; KILL: srun cannot forward it, so the step
            # (if it got as far as naming itself) is scancelled too
            if sig == signal.SIGKILL:
                self._proc().kill(handle)
                _cancel_step(handle)
            else:
                self._proc().terminate(handle)
            return
        j = self._jobs.get(self.key(handle))
        if j is not None:
            if j.stop_sig == sig:
                return
            j.stop_sig = sig
            j.first_sig = j.first_sig or sig
            self._next_queue = 0.0
        job = str(handle["job"])
        if sig == signal.SIGKILL:
            _run(["scancel", job])
        elif _run(["scancel", "--full", f"--signal={signal.Signals(sig).name[3:]}", job]).returncode != 0:
            _run(["scancel", job])          # not running yet: a pending job is just removed

    def alive(self, handles: dict[str, dict]) -> set[str]:
        steps = {k: h for k, h in handles.items() if h.get("mode") == STEPS}
        out = self._proc().alive(steps) if steps else set()
        jobs = {h["job"]: k for k, h in handles.items() if isinstance(h.get("job"), int) and k not in steps}
        if not jobs:
            return out
        st = self._states(list(jobs))
        return out | {k for j, k in jobs.items() if st.get(j) in LIVE_STATES}

    def reap_orphan(self, handle: dict | None, grace: float, run_id: str | None = None) -> bool:
        """scancel what is left of a dead driver's job: by the job id in its handle, or (a claim
        that died before its handle was published) by the run id sbatch put in --comment.
        A step: its srun process on this host, as the local runner reaps an agent, then the step."""
        if (handle or {}).get("mode") == STEPS:
            found = self._proc().reap_orphan({**handle, "runner": self._proc().name}, grace, run_id)
            return _cancel_step(handle) or found
        job = (handle or {}).get("job")
        if not isinstance(job, int):
            rid = (handle or {}).get("run_id") or run_id
            if not rid:
                return False
            r = _run(["squeue", "-h", "-o", "%i %k"])
            found = [int(p[0]) for p in (x.split(None, 1) for x in r.stdout.splitlines())
                     if len(p) == 2 and p[0].isdigit() and p[1].strip() == rid]
            if not found:
                return False
            job = found[0]
        if self._states([job]).get(job) not in LIVE_STATES:
            return False
        _run(["scancel", "--full", "--signal=TERM", str(job)])
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._states([job]).get(job) in LIVE_STATES:
            time.sleep(0.2)
        _run(["scancel", str(job)])
        return True

    def close(self) -> None:
        self._jobs.clear()
        if self._steps is not None:
            self._steps.close()


def _cancel_step(handle: dict) -> bool:
    """scancel the step a steps-mode attempt wrote into claim/step (KILL to its tasks, on
    whatever node); False when it never named itself or is gone."""
    step = _read_record(handle.get("step_file"))
    if not step or not all(p.isdigit() for p in step.split(".")) or step.count(".") != 1:
        return False
    return _run(["scancel", step]).returncode == 0


@functools.lru_cache(maxsize=8)
def _which(name: str, path: str | None) -> str | None:
    return shutil.which(name, path=path)


def _unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _read_exit(path: str | None) -> int | None:
    s = _read_line(path)
    return int(s) if s is not None and s.isdigit() else None


def _read_record(path: str | None) -> str | None:
    """A one-line file written in place (not renamed): its line once it is whole (ends with
    its newline), else None."""
    if not path:
        return None
    try:
        with open(path) as f:
            s = f.read()
    except OSError:
        return None
    return (s.strip() or None) if s.endswith("\n") else None


def _read_line(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path) as f:
            s = f.read().strip()
    except OSError:
        return None
    return s or None


def _split_exitcode(ec: str | None) -> tuple[int, int]:
    """Slurm's "code:signal"."""
    try:
        a, b = (ec or "0:0").split(":")
        return int(a), int(b)
    except ValueError:
        return 0, 0
