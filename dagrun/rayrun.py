"""The Ray runner: each attempt is a Ray task (a remote function) that runs the agent with
`sh -c` on whichever node Ray picks. No shared file system: the rendered prompt travels with
the task, and stdout, stderr and the exit status travel back; the driver writes the capture
files and the engine commits them like any other attempt.

The remote function runs the agent in its own process group (not session) with stdin = the
prompt and the attempt's environment (DAGRUN_* included); the worker's guard process (one per
Ray worker, fed the groups of its running agents through a pipe) kills that group if the Ray
worker dies (a forced cancel, a crash, its driver's death). Each attempt is one plain Ray task
whose result is its one report (exit status, outputs, node); a callback on its result rings a
pipe the driver's poll(2) waits on, so the attempt ends with its Ray task (its worker is free
then). An attempt still running 0.1 s after its agent started puts its node into Ray's
internal KV (under its run id); the driver reads the node of its attempts older than that from
there, all due ones in one call (status, a `placed` event). terminate() is `ray.cancel(ref)`:
it raises KeyboardInterrupt in the remote function, which sends TERM to the agent's group,
waits `kill_grace`, then KILL; kill() is `ray.cancel(ref, force=True)` (the worker is killed;
the agent with it). A node that dies, or a worker that crashes, ends the attempt `failed` with
Ray's reason; the task's `retries` apply. Ray tasks are owned by the driver that submitted
them: when a driver dies, Ray stops its tasks, so there is nothing to reattach -- the next
driver records the attempt `lost` and runs it again.

`import ray` happens on the first start (never at import): only drivers that use Ray pay it.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

from .executor import RUN_ID_VAR, Exit, Launch, Progress, StartError, Wakeup

PLACE_AFTER = 0.1          # s: an attempt still running this long after its agent started says where it runs
LOOK_EVERY = 0.05          # s: the driver reads a long attempt's node this long after it is due, then
LOOK_MAX = 1.0             # ... twice as long each time it is not there yet, up to this
KV_TIMEOUT = 2.0           # s: the longest the driver's loop waits for the GCS to say where attempts run
MB = 1024 * 1024


def _mem_bytes(mem) -> int:
    if isinstance(mem, int):
        return mem * MB
    n, unit = (int(mem[:-1]), mem[-1]) if mem[-1] in "KMGT" else (int(mem), "M")
    return n * {"K": 1024, "M": MB, "G": 1024 * MB, "T": 1024 * 1024 * MB}[unit]


def run_agent(agent: str, cwd: str, env: dict, prompt: bytes, max_output: int | None, grace: float,
              place_after: float = PLACE_AFTER):
    """On the node: the agent as the local runner runs it; returns what the driver commits
    (with the node). A plain Ray task: its result is its one report to the driver. If the
    agent is still running `place_after` seconds after it started, its node goes into Ray's
    internal KV under its run id (one call to the GCS, only for long attempts): the driver,
    which cannot ask Ray where a running task is without the state API's delay, reads it
    there for attempts older than that (status, a `placed` event). The key is deleted when the
    attempt ends here."""
    import select
    import subprocess

    node = socket.gethostname()
    if not os.path.isdir(cwd):
        return {"start_error": f"cannot start the agent in {cwd} on {node}: No such file or directory", "node": node}
    rid = env.get(RUN_ID_VAR, "").encode()
    # the worker's guard (one process per Ray worker, started once) kills the attempt's
    # processes if the worker dies (a forced cancel, a crash, its driver's death). It is told
    # of the attempt (by its run id, which every process of the agent carries in its
    # environment) *before* the agent exists: a worker killed in the instant after the agent
    # started, before it could say the agent's group, must not leave the agent running
    if not rid or b"\n" in rid or b" " in rid:
        return {"start_error": f"cannot start the agent on {node}: the attempt has no usable run id", "node": node}
    guard = _guard()
    if guard is None:
        return {"start_error": f"cannot start the agent on {node}: no guard process for the Ray worker", "node": node}
    # (written to the guard's state file, which it reads only once the worker is gone: no
    # wake-up of the guard per attempt -- its pipe, written three times an attempt, cost
    # ~0.25 ms of the attempt's time on a loaded machine)
    # the agent's stdin, stdout and stderr: three in-memory files held as bare descriptors
    # (no Python file objects around them); the prompt is written at offset 0 with pwrite(2),
    # which leaves the shared offset there for the agent to read from
    fds = []
    p = None
    told = placed = False
    try:
        for _ in range(3):
            fds.append(_scratch())
        stdin, out, err = fds
        if prompt:
            _pwrite_all(stdin, prompt)
        try:
            told = _tell(guard, b"%s 0\n" % rid)
            if not told:
                raise OSError("the Ray worker's guard cannot be told of the attempt")
            # its own process group (setpgid), the unit the guard and a cancel kill; not its own
            # session: with the kernel's scheduler autogroups on (kernel.sched_autogroup_enabled,
            # the default of most distributions) setsid(2) makes a new autogroup, which is
            # created and torn down with each attempt -- 0.2-1.5 ms an attempt here
            # (bench/ray_guard.py, bench/ray_edge.py). A Ray worker has no controlling terminal,
            # so a session would shield the agent from nothing.
            # No preexec_fn: that would make Python fork the whole Ray worker (~28 ms a task
            # here) instead of vfork + exec (~1 ms)
            p = subprocess.Popen(["/bin/sh", "-c", agent], cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err,
                                 process_group=0, close_fds=True)
            _tell(guard, b"%s %d\n" % (rid, p.pid))       # its group: killed first, no /proc scan needed
            # its exit wakes us at once (a pidfd); ray.cancel's KeyboardInterrupt is seen
            # between two selects (it does not interrupt a system call)
            try:
                fd = os.pidfd_open(p.pid)
            except (AttributeError, OSError):
                fd = None
            try:
                t0 = time.monotonic()
                while True:         # (the pidfd first: a waitpid(2) before it finds a new agent alive)
                    wait = 0.1 if placed else max(0.0, min(0.1, t0 + place_after - time.monotonic()))
                    if fd is not None:
                        select.select([fd], [], [], wait)
                    elif p.poll() is None:
                        time.sleep(min(wait, 0.02))
                    if p.poll() is not None:
                        break
                    if not placed and time.monotonic() >= t0 + place_after:
                        placed = True
                        _kv("put", rid, node.encode())
            finally:
                if fd is not None:
                    os.close(fd)
        except KeyboardInterrupt:          # ray.cancel(ref): stop the whole group, TERM then KILL
            if p is not None:
                _stop_group(p, grace)
            raise
        finally:                           # however it ends, nothing of the attempt outlives it
            if p is not None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            elif told:
                # interrupted (ray.cancel) between telling the guard and knowing the agent's
                # pid: it may have started all the same; find it by its run id
                ns: dict = {}
                exec(SWEEP, ns)
                ns["sweep"]({rid: None})
            if told:
                _tell(guard, b"\n")                     # no attempt (its group is gone)
            if placed:
                _kv("del", rid)
        size = os.fstat(out).st_size
        data = _pread_all(out, size if max_output is None else min(size, max_output + 1))
        over = max_output is not None and len(data) > max_output
        return {"code": p.returncode, "stdout": data[:max_output] if over else data, "over_limit": over,
                "stderr": _pread_all(err, os.fstat(err).st_size), "node": node}
    finally:
        for fd in fds:
            os.close(fd)


def attempt(args: tuple):
    """The Ray task of an attempt: run_agent with its arguments packed in one tuple, which Ray
    serializes (and the worker deserializes) as one argument -- each argument of a remote
    function is a serialization of its own, with its own metadata: seven cost ~0.07 ms more of
    the driver's submission than one (bench/ray_runner.py's `args` note in docs/cluster.md)."""
    return run_agent(*args)


def _scratch() -> int:
    """A descriptor for the agent's stdin, stdout or stderr on the node: an anonymous in-memory
    file (memfd_create(2): no directory entry, no file system's journal or inode allocation),
    else an unnamed temporary file. Its content is held in memory on its way back anyway.
    Not inheritable: Popen dup2()s it onto the agent's 0, 1 or 2."""
    try:
        return os.memfd_create("dagrun-ray-io", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return _tmpfd()


def _pwrite_all(fd: int, data: bytes) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], done)


def _pread_all(fd: int, n: int) -> bytes:
    """The first n bytes of the file (one pread(2) unless it is bigger than one call returns)."""
    parts, got = [], 0
    while got < n:
        b = os.pread(fd, n - got, got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


KV_NS = b"dagrun"          # Ray's internal KV: b"node/RUNID" -> the node of a long attempt


def _kv(op: str, rid: bytes, value: bytes = b"") -> None:
    """The node of a long attempt in Ray's internal KV (on the node: put, then del at its end).
    Best effort: an attempt whose node cannot be said still runs (status shows no node until
    its end)."""
    try:
        from ray.experimental import internal_kv as kv
        if op == "put":
            kv._internal_kv_put(b"node/" + rid, value, namespace=KV_NS)
        else:
            kv._internal_kv_del(b"node/" + rid, namespace=KV_NS)
    except Exception:               # noqa: BLE001 -- the GCS unreachable, or Ray's internals moved
        pass


# The guard of a Ray worker: a small process in its own session that waits for the end of a
# pipe only this worker holds the write end of. When the pipe closes (the worker died: a forced
# cancel, a crash, its driver's death) it reads the worker's state file (a memfd the worker
# overwrites in place, never read while the worker lives: "RUNID 0" before an attempt's agent
# starts, "RUNID PGID" once it runs, empty after its group was killed and reaped; one attempt at
# a time, as a Ray worker runs one task at a time) and kills what is left of the attempt there:
# its process group, then every process whose environment carries its run id (DAGRUN_RUN_ID: the
# agent and all it started, even one that left the group, and an agent whose pgid the worker did
# not live to say), until none is found. Started once per worker (spawning one per attempt cost
# ~5 ms an attempt) and kept in a module of sys.modules: this module travels by value, so its own
# globals are not the worker's. Nothing wakes the guard while the worker lives (the pipe carried
# three lines an attempt before: ~0.25 ms of each attempt's time at load 4).
# The guard is NOT a child of the Ray worker (its launcher, a /bin/sh, forks it and exits): a Ray worker
# that exits on purpose -- ray.cancel(force=True), its owner gone -- first SIGKILLs its own
# children (Ray's kill_child_processes_on_worker_exit, on by default), which took the guard
# with the agent's shell and left the rest of the agent's group running with nobody to sweep
# it (CI's cancelled Ray agents that outlived their tests). A guard that died all the same is
# noticed before the next attempt (the pipe's write end reports POLLERR: no reader) and replaced.
# The launcher is a shell, and so is the guard until it is needed: the worker waits only for a
# `sh` to fork and exit (~1-5 ms), not for an interpreter to start (16-70 ms at load 6 -- in the
# first attempt of every worker, i.e. inside a fresh job's first tasks), and the guard waits
# for the pipe's end as the forked shell itself (its `read` builtin: one process, no CPU), then
# execs the guard's Python to read the state and sweep. The ~12 ms of CPU an interpreter's
# start costs is paid only when a worker dies, not once per worker while the first tasks run.
# (An earlier version ran the attempt as a Ray streaming task and told the guard around the
# yield of its node, sweeping an attempt parked there too long: a cancel landing while Ray,
# not run_agent, ran could leave it suspended. A plain task has no such point.)
SWEEP = r"""
import os, signal, time
def sweep(live, limit=5.0):
    for pg in live.values():
        if pg:
            try:
                os.killpg(pg, signal.SIGKILL)
            except OSError:
                pass
    needles = [b"\0DAGRUN_RUN_ID=" + rid + b"\0" for rid in live]
    me = os.getpid()
    deadline = time.monotonic() + limit
    while needles:
        found = 0
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open("/proc/" + d + "/environ", "rb") as f:
                    env = b"\0" + f.read() + b"\0"
            except OSError:
                continue
            if any(n in env for n in needles):
                found += 1
                try:
                    os.kill(int(d), signal.SIGKILL)
                except OSError:
                    pass
        if not found or time.monotonic() > deadline:
            return
        time.sleep(0.05)       # (a zombie still shows its environment: until its parent reaps it)
"""

GUARD = SWEEP + r"""
# the dagrun Ray worker guard (forked by its launcher, a shell that exits at once: no child of the
# Ray worker; exec'd by the forked shell once the pipe's end came: the read below sees it at once)
import sys
state = int(sys.argv[1])
while os.read(0, 4096):    # nothing is written: EOF when the worker is gone
    pass
rid, _, pg = os.pread(state, 4096, 0).split(b"\n", 1)[0].partition(b" ")
if rid:
    sweep({rid: int(pg or 0) or None})
"""

# the guard's launcher: the pipe (its stdin) goes to the guard, a shell forked in the
# background (a background command's stdin would be /dev/null: the pipe is moved to fd 3, or 4
# if the state file is 3 -- dash redirects single-digit descriptors only -- and back), which
# reads it until its end and then becomes the guard's Python (GUARD); the launcher exits at once
LAUNCH = 'exec %(fd)d<&0 </dev/null; { while read -r _; do :; done; exec "$0" -S -c "$1" "$2"; } <&%(fd)d %(fd)d<&- &'


def _guard():
    """This worker's guard (its state: .w the pipe's write end, .m the state file), started if
    it has none or its guard is gone; None if it cannot be started."""
    import subprocess
    import sys
    import types
    # (not the names of the earlier guards' states, which kept a Popen, then a pipe fed by
    # lines: a worker that ran an earlier version keeps that one's guard apart)
    st = sys.modules.get("_dagrun_ray_guard_v3")
    if st is None:
        st = sys.modules["_dagrun_ray_guard_v3"] = types.ModuleType("_dagrun_ray_guard_v3")
        st.pid, st.w, st.m = None, None, None
    if st.pid == os.getpid() and st.w is not None:
        if not st.gone.poll(0):           # POLLERR on the write end: no reader (the guard died)
            return st
    if st.pid == os.getpid():
        for fd in (st.w, st.m):
            if fd is not None:
                os.close(fd)
    st.pid = st.w = st.m = None
    try:
        m = os.memfd_create("dagrun-ray-guard") if hasattr(os, "memfd_create") else _tmpfd()
        r, w = os.pipe()                  # (not inheritable: no agent holds the write end)
        try:
            launch = LAUNCH % {"fd": 4 if m == 3 else 3}
            launcher = subprocess.Popen(["/bin/sh", "-c", launch, sys.executable, GUARD, str(m)], stdin=r,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={"PATH": "/usr/bin:/bin"}, start_new_session=True,
                                        close_fds=True, pass_fds=(m,))
        finally:
            os.close(r)
        if launcher.wait() != 0:          # it exits as soon as the guard is forked (not started)
            os.close(w)
            os.close(m)
            return None
    except OSError:
        return None
    import select
    st.gone = select.poll()
    st.gone.register(w, 0)                # (POLLERR/POLLHUP are reported whatever the mask)
    st.pid, st.w, st.m = os.getpid(), w, m
    return st


def _tmpfd() -> int:
    import tempfile
    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())         # (dup: not inheritable)


def _tell(guard, state: bytes) -> bool:
    """The worker's state for its guard, in place (one pwrite: the guard reads it only after
    the worker is gone, so no reader sees half of it). A shorter state leaves bytes of the
    longer one after its newline: the guard reads up to the first."""
    try:
        os.pwrite(guard.m, state, 0)
        return True
    except OSError:
        return False


def _stop_group(p, grace: float) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


# The Ray versions whose RemoteFunction._remote the fast submission below was read from (and
# tested with): another version gets Ray's own entry for every attempt.
FAST_RAY = ("2.60.",)


def _fast_submit(ray, remote, opts: dict):
    """The remote function's submission without the Python around it: what
    RemoteFunction._remote does for each call -- the ~30 task options filled in from their
    defaults, the resources and the placement group worked out, the arguments checked
    against the signature, the usage recorded -- is the same for every attempt with the same
    resources, so it is done once here and each attempt goes straight to the core worker's
    submit_task with it: ~0.14 ms less a submission at load 8 (0.28 -> 0.14 ms; docs/cluster.md,
    session 9). Only for a Ray this was read from (FAST_RAY), only in the plain case
    _remote would handle the same way (no Ray client, tracing, launch hook, placement group,
    generator or cross-language function), and only once _remote has exported the function to
    this cluster; else None (Ray's own entry is used)."""
    try:
        if not ray.__version__.startswith(FAST_RAY):
            return None
        from ray import remote_function as rf
        from ray._common import ray_option_utils as ou
        from ray._common.signature import DUMMY_TYPE
        from ray._common.utils import resources_from_ray_options
        from ray._private.client_mode_hook import client_mode_should_convert
        from ray.util.tracing.tracing_helper import _is_tracing_enabled as is_tracing_enabled
        w = ray._private.worker.global_worker
        if (client_mode_should_convert() or is_tracing_enabled() or rf._task_launch_hook is not None
                or remote._decorator is not None or remote._is_cross_language or remote._is_generator
                or remote._last_export_cluster_and_job != w.current_cluster_and_job
                or w.mode == ray._private.worker.WORKER_MODE or w.should_capture_child_tasks_in_placement_group):
            return None
        full = {k: v.default_value for k, v in ou.task_options.items()}
        full.update(opts)
        full["max_retries"] = int(os.environ.get("RAY_TASK_MAX_RETRIES", full["max_retries"]))
        if (full.get("placement_group") not in (None, "default") or full.get("scheduling_strategy") is not None
                or full.get("num_returns") not in (None, 1) or isinstance(full.get("retry_exceptions"), (list, tuple))):
            return None
        resources = resources_from_ray_options(full)
        submit = w.core_worker.submit_task
        lang, fd = remote._language, remote._function_descriptor
        env_info = remote._serialized_base_runtime_env_info or "{}"
        max_retries, retry_exc = full["max_retries"], full["retry_exceptions"]
        backpressure = full.get("_generator_backpressure_num_objects")
        per_yield = full.get("_num_objects_per_yield")
        backpressure = -1 if backpressure is None else backpressure
        per_yield = 1 if per_yield is None else per_yield
        events, labels = full.get("enable_task_events"), full.get("_labels")
        selector, fallback = full.get("label_selector"), full.get("fallback_strategy")
    except Exception:               # noqa: BLE001 -- Ray's internals moved: its own entry
        return None

    def go(name: str, args: tuple):
        refs = submit(lang, fd, [DUMMY_TYPE, args], name or "", 1, resources, max_retries, retry_exc, None,
                      "DEFAULT", w.debugger_breakpoint, env_info, backpressure, per_yield, events, labels,
                      selector, fallback)
        w.debugger_breakpoint = b""
        return refs[0]
    return go


_PENDING = object()          # a _Task's result before Ray's callback set it


@dataclass
class _Task:
    ref: object                      # the Ray ObjectRef of the attempt's result
    handle: dict
    launch: Launch
    look_at: float                   # when the driver reads its node from the KV next (a long attempt)
    born: float = 0.0                # when it was submitted (monotonic)
    look_every: float = LOOK_EVERY
    stop_sig: int | None = None
    node: str | None = None
    result: object = _PENDING        # its result (a dict) or failure (an exception), set by Ray's callback


def _address(opts: dict) -> str:
    """The head to join: the plan's `ray.address`, else $RAY_ADDRESS, else "auto"."""
    return opts.get("address") or os.environ.get("RAY_ADDRESS") or "auto"


class RayRunner:
    name = "ray"

    def __init__(self):
        self._tasks: dict[str, _Task] = {}
        self._ray = None
        self._remote = None
        self._fns: dict = {}               # resources -> the options of run_agent's Ray task (checked once)
        self._direct = None                # the remote function's submission (_submit)
        self._fast: dict = {}              # resources -> the core worker's submission with them (_fast_submit)
        self._env_info = None
        self._base_opts: dict = {}
        self._warm: threading.Thread | None = None
        self._warm_error: BaseException | None = None
        self._ended: set[str] = set()      # keys whose result arrived (set by Ray's callback thread)
        self._next_look: float | None = None   # the earliest look_at of an attempt without a node
        self._looking: threading.Thread | None = None   # the read of nodes from Ray's KV under way
        self._found: set[str] = set()      # keys whose node that read found (exits() names them once)
        self._took = False                 # exits() drained the bell this turn
        self._lock = threading.Lock()
        self._bell = os.pipe()             # the callback rings it: the driver's poll(2) wakes at once
        for fd in self._bell:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
    @staticmethod
    def unusable(opts: dict | None = None) -> str | None:
        if importlib.util.find_spec("ray") is None:
            return "runner ray: the ray package is not installed (pip install 'dagrun[ray]')"
        addr = _address(opts or {})
        if addr == "auto":
            if not os.path.exists("/tmp/ray/ray_current_cluster"):
                return "runner ray: no Ray cluster to join (set RAY_ADDRESS, or \"ray\": {\"address\": ...} in the plan)"
            return None
        if addr == "local" or addr.startswith("ray://"):
            return None
        host, _, port = addr.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
        except (OSError, ValueError) as e:
            return f"runner ray: cannot reach the Ray head at {addr} ({getattr(e, 'strerror', None) or e})"
        return None

    def key(self, handle: dict) -> str:
        return handle["task_id"]

    def warm(self, opts: dict) -> None:
        """Import Ray and connect in the background (seconds) while the driver scans its
        home; the first start() waits for it. Not for "local": the processes of a cluster
        started here die with the thread that started them (Ray sets their parent-death
        signal, which fires when that thread ends), so the first start() starts it, in the
        engine's own thread."""
        if self._ray is None and self._warm is None and _address(opts) != "local":
            def connect():
                try:
                    self._init(opts)
                except BaseException as e:      # noqa: BLE001 -- reported by the first start()
                    self._warm_error = e
            self._warm = threading.Thread(target=connect, name="dagrun-ray-connect", daemon=True)
            self._warm.start()

    def _init(self, opts: dict) -> None:
        if self._warm is not None and threading.current_thread() is not self._warm:
            self._warm.join()
            self._warm = None
            if self._warm_error is not None:
                e, self._warm_error = self._warm_error, None
                raise e
        if self._ray is not None:
            return
        import ray
        addr = _address(opts)
        if not ray.is_initialized():
            kw = {"address": addr, "logging_level": "ERROR",
                  "log_to_driver": False, "ignore_reinit_error": True}
            if opts.get("runtime_env"):
                kw["runtime_env"] = opts["runtime_env"]
            ray.init(**kw)
            if addr == "local":
                # the new cluster's processes (GCS, raylet, ...) are this driver's children:
                # the local runner's sweep of agents' orphans must leave them alone
                from .executor import keep_children
                keep_children()
        # shipped by value: the nodes need Ray, not dagrun
        import ray.cloudpickle as cp
        import sys
        cp.register_pickle_by_value(sys.modules[__name__])
        self._remote = ray.remote(max_retries=0)(attempt)
        # the remote function's own submission (what .options(...).remote() calls, with the
        # options merged), if this Ray has it as 2.x does
        import inspect
        direct = getattr(self._remote, "_remote", None)
        try:
            ok = direct is not None and {"args", "kwargs", "serialized_runtime_env_info"} <= set(
                inspect.signature(direct).parameters) and hasattr(self._remote, "_serialized_base_runtime_env_info")
        except (TypeError, ValueError):
            ok = False
        self._direct = direct if ok else None
        self._env_info = getattr(self._remote, "_serialized_base_runtime_env_info", None)
        self._base_opts = {k: v for k, v in getattr(self._remote, "_default_options", {}).items() if k != "max_calls"}
        self._ray = ray

    def start(self, launch: Launch) -> dict:
        spec = launch.spec or {}
        opts = spec.get("ray") or {}
        try:
            self._init(opts)
            with open(launch.stdin_path, "rb") as f:
                prompt = f.read()
        except Exception as e:      # noqa: BLE001 -- Ray raises many kinds; none may escape the loop
            raise StartError(f"ray: {e}") from None
        res = spec.get("resources") or {}
        env = dict(launch.env)
        env[RUN_ID_VAR] = launch.run_id
        tid = None
        try:
            ref = self._submit(res, spec.get("name") or "dagrun", (launch.agent, launch.cwd, env, prompt,
                               launch.max_output, float(spec.get("kill_grace") or 5.0), PLACE_AFTER))
            tid = ref.task_id().hex()
            handle = {"runner": self.name, "task_id": tid, "driver": os.getpid(),
                      "host": socket.gethostname(), "run_id": launch.run_id}
            now = time.monotonic()
            t = self._tasks[tid] = _Task(ref, handle, launch, now + PLACE_AFTER + LOOK_EVERY, now)
            if self._next_look is None or t.look_at < self._next_look:
                self._next_look = t.look_at
            # its result wakes the driver, whatever it is (a failure is one too); the callback
            # gets it deserialized: no ray.get afterwards
            on = getattr(ref, "_on_completed", None)
            if on is not None:
                on(lambda r, k=tid: self._done(k, r))
            else:                   # (Ray's private hook gone: its public wrapper)
                ref.future().add_done_callback(lambda f, k=tid: self._done(k, f.exception() or f.result()))
        except Exception as e:      # noqa: BLE001
            self._tasks.pop(tid, None)
            raise StartError(f"ray: {e}") from None
        return handle

    def _submit(self, res: dict, name: str, args: tuple):
        """Submit the attempt (run_agent's arguments, one tuple) with its options (num_cpus, memory, num_gpus; its name).
        The options are checked by Ray's .options() once per distinct resources; each attempt
        then goes to the remote function's own submission with them and its name -- the name
        is the task's, so a wrapper made by .options() per name was a new one per task (a class
        built, the options merged and checked again: ~0.04 ms of each chain edge). A Ray
        whose RemoteFunction lacks that entry gets .options(...).remote() each time."""
        key = (res.get("cpus", 1), res.get("mem"), res.get("gpu"))
        o = self._fns.get(key)
        if o is None:
            o = {"num_cpus": key[0]}
            if key[1] is not None:
                o["memory"] = _mem_bytes(key[1])
            if key[2]:
                o["num_gpus"] = key[2]
            self._remote.options(**o, name=name)        # invalid options raise here, once
            if len(self._fns) >= 1024:      # (a plan of many distinct resources: bounded)
                self._fns.clear()
                self._fast.clear()
            o = self._fns[key] = {**self._base_opts, **o}
        if self._direct is None:
            return self._remote.options(**o, name=name).remote(args)
        fast = self._fast.get(key)
        if fast is not None:
            return fast(name, args)
        ref = self._direct(args=(args,), kwargs=None, serialized_runtime_env_info=self._env_info, **o, name=name)
        # (after a submission through Ray's own entry: the function is exported to this cluster)
        self._fast[key] = _fast_submit(self._ray, self._remote, o) or (lambda n, a, o=o: self._direct(
            args=(a,), kwargs=None, serialized_runtime_env_info=self._env_info, **o, name=n))
        return ref

    def _done(self, key: str, result) -> None:
        """Ray's callback thread: the attempt's result (or failure) arrived -- its Ray task has
        returned, so its worker is free again."""
        t = self._tasks.get(key)
        if t is None:
            return
        t.result = result
        with self._lock:
            self._ended.add(key)
        try:
            os.write(self._bell[1], b"x")
        except OSError:             # closed (the driver is exiting) or full (it will look anyway)
            pass

    def wakeup(self) -> Wakeup:
        # every result rings the bell; a long attempt's node is read from the KV when due
        nl = self._next_look
        if nl is not None and nl <= time.monotonic():
            nl = self._next_look = min((t.look_at for t in self._tasks.values()
                                        if t.node is None and t.result is _PENDING), default=None)
        return Wakeup((self._bell[0],), None if nl is None else max(0.0, nl - time.monotonic()))

    def _drain(self) -> None:
        try:
            while os.read(self._bell[0], 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def service(self, ready: set[int]) -> None:
        if self._took:              # exits() drained the bell before it looked (below)
            self._took = False
        elif self._bell[0] in ready:
            self._drain()

    def exits(self, ready: set[int]) -> set[str]:
        """The attempts to poll this turn: those whose result arrived, and those due for a look
        at their node (their poll returns None, then the engine asks node()). The bell is
        drained first, then the results looked at: one arriving after that rings it again (a
        drain after the look -- service()'s, called after this -- could swallow its ring and
        leave it unseen until the next timeout)."""
        self._drain()
        self._took = True
        with self._lock:
            keys = set(self._ended)
            if self._found:
                keys |= self._found
                self._found = set()
        nl = self._next_look
        if nl is not None and nl <= time.monotonic():
            now = time.monotonic()
            keys.update(k for k, t in self._tasks.items() if t.node is None and t.look_at <= now)
        return keys

    def progress(self, handle: dict) -> Progress:
        return Progress()

    def node(self, handle: dict) -> str | None:
        t = self._tasks.get(self.key(handle))
        if t is None:
            return handle.get("node")
        if t.node is None and t.result is _PENDING and t.look_at <= time.monotonic():
            self._look()
        return t.node

    def _look(self) -> None:
        """Read the node of every attempt due for a look from Ray's internal KV, in one call
        (run_agent puts it there once its agent ran PLACE_AFTER seconds) made by a thread of
        its own: the loop never waits for the GCS (a round trip of ~1 ms, up to KV_TIMEOUT
        when the GCS is slow; a fan-out of queued attempts made ~20 such reads a run, each
        stalling the commits and submissions behind it). One read at a time; the attempts
        in it are due again later, less and less often (still queued for a worker), unless it
        found them: those go into _found, which exits() names once (the engine then asks
        node() and gets it), and the read rings the bell."""
        if self._looking is not None:
            return
        now = time.monotonic()
        # with those due now, those due within LOOK_EVERY: a fan-out's attempts, submitted one
        # after the other over a few turns, are read together, not in a read per turn or two
        soon = now + LOOK_EVERY
        due = [t for t in self._tasks.values() if t.node is None and t.result is _PENDING and t.look_at <= soon]
        for t in due:
            t.look_every = min(t.look_every * 2, LOOK_MAX)
            t.look_at = now + t.look_every
        self._next_look = min((t.look_at for t in self._tasks.values()
                               if t.node is None and t.result is _PENDING), default=None)
        if not due:
            return
        self._looking = threading.Thread(target=self._read_nodes, args=(due,), name="dagrun-ray-nodes", daemon=True)
        self._looking.start()

    def _read_nodes(self, due: list) -> None:
        """The look's thread: one batched read of the KV, the nodes found into their _Task."""
        keys = [b"node/" + t.handle["run_id"].encode() for t in due]
        got: dict = {}
        try:
            from ray.experimental import internal_kv as kv
            try:
                got = kv.internal_kv_get_gcs_client().internal_kv_multi_get(keys, KV_NS, timeout=KV_TIMEOUT)
            except AttributeError:  # (a Ray without the batched call: one call each)
                got = {k: kv._internal_kv_get(k, namespace=KV_NS) for k in keys}
        except Exception:           # noqa: BLE001 -- the GCS unreachable: later
            got = {}
        found = set()
        for t, k in zip(due, keys):
            v = got.get(k)
            if v:
                t.node = v.decode(errors="replace")
                found.add(t.handle["task_id"])
        with self._lock:
            self._found |= found
            self._looking = None
        if found:                   # (nothing found: the next look is already in wakeup()'s timeout)
            try:
                os.write(self._bell[1], b"x")
            except OSError:
                pass

    def poll(self, handle: dict) -> Exit | None:
        k = self.key(handle)
        t = self._tasks.get(k)
        if t is None:
            return Exit(None, signal.SIGKILL)
        with self._lock:
            if k not in self._ended:
                return None
            self._ended.discard(k)
        del self._tasks[k]
        r = t.result
        if isinstance(r, BaseException):
            node = t.node or None
            if time.monotonic() - t.born > PLACE_AFTER:     # its worker may have died after it
                _kv("del", t.handle["run_id"].encode())     # said its node, before it deleted it
            if t.stop_sig is not None:
                return Exit(None, t.stop_sig, Progress(), node=node,
                            reason=f"ray task cancelled ({signal.Signals(t.stop_sig).name})")
            return Exit(None, None, Progress(), node=node,
                        reason=f"ray: {type(r).__name__}: {str(r).splitlines()[0][:300] if str(r) else ''}")
        if not isinstance(r, dict):
            return Exit(None, None, Progress(), node=t.node or None, reason=f"ray: unexpected result {type(r).__name__}")
        node = r.get("node") or t.node or None
        if "start_error" in r:
            return Exit(127, None, Progress(), reason=r["start_error"], node=node)
        out, err = r["stdout"], r["stderr"]
        for data, path in ((out, t.launch.stdout_path), (err, t.launch.stderr_path)):
            if data:
                try:
                    with open(path, "wb") as f:
                        f.write(data)
                except (FileNotFoundError, NotADirectoryError):
                    pass          # the claim vanished while it ran: the output is dropped
        code = r["code"]
        now = time.monotonic()
        prog = Progress(out_bytes=len(out), err_bytes=len(err), first_byte=now if out else None, last_output=now,
                        over_limit=r["over_limit"])
        if code < 0:
            # a cancel that reached the agent before its Ray task ended: the remote function
            # saw its agent die of the signal and returned that (a forced cancel's worker can
            # still send its result in the instant before it exits)
            why = None if t.stop_sig is None else f"ray task cancelled ({signal.Signals(t.stop_sig).name})"
            return Exit(None, -code, prog, node=node, reason=why)
        return Exit(code, None, prog, node=node)

    def terminate(self, handle: dict) -> None:
        t = self._tasks.get(self.key(handle))
        if t is not None and t.stop_sig is None:
            t.stop_sig = signal.SIGTERM
            self._ray.cancel(t.ref, force=False)

    def kill(self, handle: dict) -> None:
        t = self._tasks.get(self.key(handle))
        if t is not None and t.stop_sig != signal.SIGKILL:
            t.stop_sig = t.stop_sig or signal.SIGKILL
            try:
                self._ray.cancel(t.ref, force=True)
            except Exception:       # noqa: BLE001 -- already finished
                pass

    def reap_orphan(self, handle: dict | None, grace: float, run_id: str | None = None) -> bool:
        return False     # Ray stops a dead driver's tasks itself (ownership): nothing is left

    def alive(self, handles: dict[str, dict]) -> set[str]:
        return {k for k, h in handles.items() if isinstance(h, dict) and h.get("driver") == os.getpid()
                and h.get("task_id") in self._tasks}

    def close(self) -> None:
        # an attempt still running when its driver ends is stopped here (Ray would stop it
        # too once it sees the driver gone -- sooner or later, and not if the driver lingers)
        looking = self._looking
        if looking is not None:      # (a read of the KV under way: over within KV_TIMEOUT)
            looking.join(KV_TIMEOUT + 1.0)
        for t in list(self._tasks.values()):
            try:
                self._ray.cancel(t.ref, force=True)
            except Exception:       # noqa: BLE001 -- it ended meanwhile; Ray is gone
                pass
        self._tasks.clear()
        bell, self._bell = self._bell, (-1, -1)     # a late callback writes to -1, not a reused fd
        for fd in bell:
            try:
                os.close(fd)
            except OSError:
                pass
