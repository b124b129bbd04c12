"""The Ray runner: each attempt is a Ray task (a remote function) that runs the agent with
`sh -c` on whichever node Ray picks. No shared file system: the rendered prompt travels with
the task, and stdout, stderr and the exit status travel back; the driver writes the capture
files and the engine commits them like any other attempt.

The remote function runs the agent in its own session (process group) with stdin = the
prompt and the attempt's environment (DAGRUN_* included); a guard process kills that group if
the Ray worker dies (a forced cancel, a crash). terminate() is `ray.cancel(ref)`: it raises KeyboardInterrupt in the
remote function, which sends TERM to the agent's group, waits `kill_grace`, then KILL; kill()
is `ray.cancel(ref, force=True)` (the worker is killed; the agent with it). A node that dies,
or a worker that crashes, ends the attempt `failed` with Ray's reason; the task's `retries`
apply. Ray tasks are owned by the driver that submitted them: when a driver dies, Ray stops
its tasks, so there is nothing to reattach -- the next driver records the attempt `lost` and
runs it again.

`import ray` happens on the first start (never at import): only drivers that use Ray pay it.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import time
from dataclasses import dataclass

from .executor import RUN_ID_VAR, Exit, Launch, Progress, StartError, Wakeup

POLL = (0.005, 0.05)     # s: ray.wait(timeout=0) on the running attempts: 1 ms per attempt, within these
MB = 1024 * 1024


def _mem_bytes(mem) -> int:
    if isinstance(mem, int):
        return mem * MB
    n, unit = (int(mem[:-1]), mem[-1]) if mem[-1] in "KMGT" else (int(mem), "M")
    return n * {"K": 1024, "M": MB, "G": 1024 * MB, "T": 1024 * 1024 * MB}[unit]


def run_agent(agent: str, cwd: str, env: dict, prompt: bytes, max_output: int | None, grace: float) -> dict:
    """On the node: the agent as the local runner runs it; returns what the driver commits."""
    import ctypes
    import subprocess
    import tempfile

    def child_setup():
        os.setsid()
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG: die with the worker
        except OSError:
            pass

    node = socket.gethostname()
    if not os.path.isdir(cwd):
        return {"start_error": f"cannot start the agent in {cwd} on {node}: No such file or directory", "node": node}
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdin.write(prompt)
        stdin.seek(0)
        p = guard = None
        try:
            p = subprocess.Popen(["/bin/sh", "-c", agent], cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err,
                                 preexec_fn=child_setup, close_fds=True)
            # a guard outside the worker: if the worker dies (force cancel, crash), the agent's
            # whole group goes too (PDEATHSIG above reaches only the shell, not what it started)
            guard = subprocess.Popen(["/bin/sh", "-c", "while kill -0 \"$0\" 2>/dev/null; do sleep 0.5; done; "
                                      "kill -KILL \"-$1\" 2>/dev/null", str(os.getpid()), str(p.pid)],
                                     env={"PATH": "/usr/bin:/bin"}, start_new_session=True, close_fds=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while p.poll() is None:
                time.sleep(0.02)
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
            if guard is not None:
                guard.kill()
                guard.wait()
        out.seek(0)
        data = out.read(max_output + 1 if max_output is not None else -1)
        over = max_output is not None and len(data) > max_output
        err.seek(0)
        return {"code": p.returncode, "stdout": data[:max_output] if over else data, "over_limit": over,
                "stderr": err.read(), "node": node}


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


@dataclass
class _Task:
    ref: object
    handle: dict
    launch: Launch
    stop_sig: int | None = None
    result: dict | None = None
    error: str | None = None


class RayRunner:
    name = "ray"

    def __init__(self):
        self._tasks: dict[str, _Task] = {}
        self._ray = None
        self._remote = None

    @staticmethod
    def unusable(opts: dict | None = None) -> str | None:
        if importlib.util.find_spec("ray") is None:
            return "runner ray: the ray package is not installed (pip install 'dagrun[ray]')"
        addr = (opts or {}).get("address") or os.environ.get("RAY_ADDRESS") or ""
        if addr in ("", "auto"):
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

    def _init(self, opts: dict) -> None:
        if self._ray is not None:
            return
        import ray
        addr = opts.get("address") or os.environ.get("RAY_ADDRESS") or "auto"
        if not ray.is_initialized():
            kw = {"address": None if addr == "local" else addr, "logging_level": "ERROR",
                  "log_to_driver": False, "ignore_reinit_error": True}
            if opts.get("runtime_env"):
                kw["runtime_env"] = opts["runtime_env"]
            ray.init(**kw)
        self._ray = ray
        # shipped by value: the nodes need Ray, not dagrun
        import ray.cloudpickle as cp
        import sys
        cp.register_pickle_by_value(sys.modules[__name__])
        self._remote = ray.remote(max_retries=0)(run_agent)

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
        o: dict = {"num_cpus": res.get("cpus", 1)}
        if res.get("mem") is not None:
            o["memory"] = _mem_bytes(res["mem"])
        if res.get("gpu"):
            o["num_gpus"] = res["gpu"]
        env = dict(launch.env)
        env[RUN_ID_VAR] = launch.run_id
        try:
            ref = self._remote.options(**o, name=spec.get("name") or "dagrun").remote(
                launch.agent, launch.cwd, env, prompt, launch.max_output, float(spec.get("kill_grace") or 5.0))
        except Exception as e:      # noqa: BLE001
            raise StartError(f"ray: {e}") from None
        handle = {"runner": self.name, "task_id": ref.task_id().hex(), "driver": os.getpid(),
                  "host": socket.gethostname(), "run_id": launch.run_id}
        self._tasks[handle["task_id"]] = _Task(ref, handle, launch)
        return handle

    def wakeup(self) -> Wakeup:
        if not self._tasks:
            return Wakeup((), None)
        return Wakeup((), min(POLL[1], max(POLL[0], 0.001 * len(self._tasks))))

    def service(self, ready: set[int]) -> None:
        pass

    def progress(self, handle: dict) -> Progress:
        return Progress()

    def poll(self, handle: dict) -> Exit | None:
        k = self.key(handle)
        t = self._tasks.get(k)
        if t is None:
            return Exit(None, signal.SIGKILL)
        ready, _ = self._ray.wait([t.ref], timeout=0)
        if not ready:
            return None
        del self._tasks[k]
        try:
            r = self._ray.get(t.ref)
        except Exception as e:      # noqa: BLE001 -- cancelled, worker crashed, node died
            if t.stop_sig is not None:
                return Exit(None, t.stop_sig, Progress(), reason=f"ray task cancelled ({signal.Signals(t.stop_sig).name})")
            return Exit(None, None, Progress(), reason=f"ray: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        if "start_error" in r:
            return Exit(127, None, Progress(), reason=r["start_error"])
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
            return Exit(None, -code, prog)
        return Exit(code, None, prog)

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
        self._tasks.clear()
