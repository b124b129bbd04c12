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
import threading
import time
from dataclasses import dataclass

from .executor import RUN_ID_VAR, Exit, Launch, Progress, StartError, Wakeup

PLACE_POLL = (0.01, 0.05)   # s: attempts not yet placed are asked for their node (0.5 ms each), within these
MB = 1024 * 1024


def _mem_bytes(mem) -> int:
    if isinstance(mem, int):
        return mem * MB
    n, unit = (int(mem[:-1]), mem[-1]) if mem[-1] in "KMGT" else (int(mem), "M")
    return n * {"K": 1024, "M": MB, "G": 1024 * MB, "T": 1024 * 1024 * MB}[unit]


def run_agent(agent: str, cwd: str, env: dict, prompt: bytes, max_output: int | None, grace: float):
    """On the node: the agent as the local runner runs it. A generator (a Ray streaming task):
    it first yields where it runs (the driver learns the node as soon as the attempt starts),
    then what the driver commits."""
    import select
    import subprocess
    import tempfile

    node = socket.gethostname()
    yield {"node": node}
    if not os.path.isdir(cwd):
        yield {"start_error": f"cannot start the agent in {cwd} on {node}: No such file or directory", "node": node}
        return
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdin.write(prompt)
        stdin.seek(0)
        p = guard = None
        try:
            # its own session (process group); no preexec_fn: that would make Python fork the
            # whole Ray worker (~28 ms a task here) instead of vfork + exec (~1 ms)
            p = subprocess.Popen(["/bin/sh", "-c", agent], cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err,
                                 start_new_session=True, close_fds=True)
            # a guard outside the worker: if the worker dies (force cancel, crash), the agent's
            # whole group goes too
            guard = subprocess.Popen(["/bin/sh", "-c", "while kill -0 \"$0\" 2>/dev/null; do sleep 0.5; done; "
                                      "kill -KILL \"-$1\" 2>/dev/null", str(os.getpid()), str(p.pid)],
                                     env={"PATH": "/usr/bin:/bin"}, start_new_session=True, close_fds=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # its exit wakes us at once (a pidfd); ray.cancel's KeyboardInterrupt is seen
            # between two selects (it does not interrupt a system call)
            try:
                fd = os.pidfd_open(p.pid)
            except (AttributeError, OSError):
                fd = None
            try:
                while p.poll() is None:
                    if fd is not None:
                        select.select([fd], [], [], 0.1)
                    else:
                        time.sleep(0.02)
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
            if guard is not None:
                guard.kill()
                guard.wait()
        out.seek(0)
        data = out.read(max_output + 1 if max_output is not None else -1)
        over = max_output is not None and len(data) > max_output
        err.seek(0)
        yield {"code": p.returncode, "stdout": data[:max_output] if over else data, "over_limit": over,
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
    gen: object                      # the Ray ObjectRefGenerator of the attempt
    handle: dict
    launch: Launch
    stop_sig: int | None = None
    node: str | None = None


class RayRunner:
    name = "ray"

    def __init__(self):
        self._tasks: dict[str, _Task] = {}
        self._ray = None
        self._remote = None
        self._warm: threading.Thread | None = None
        self._warm_error: BaseException | None = None
        self._ended: set[str] = set()      # keys whose Ray task ended (set by Ray's callback thread)
        self._lock = threading.Lock()
        self._bell = os.pipe()             # the callback rings it: the driver's poll(2) wakes at once
        for fd in self._bell:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

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

    def warm(self, opts: dict) -> None:
        """Import Ray and connect in the background (seconds) while the driver scans its
        home; the first start() waits for it."""
        if self._ray is None and self._warm is None:
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
        addr = opts.get("address") or os.environ.get("RAY_ADDRESS") or "auto"
        if not ray.is_initialized():
            kw = {"address": None if addr == "local" else addr, "logging_level": "ERROR",
                  "log_to_driver": False, "ignore_reinit_error": True}
            if opts.get("runtime_env"):
                kw["runtime_env"] = opts["runtime_env"]
            ray.init(**kw)
        # shipped by value: the nodes need Ray, not dagrun
        import ray.cloudpickle as cp
        import sys
        cp.register_pickle_by_value(sys.modules[__name__])
        self._remote = ray.remote(max_retries=0, num_returns="streaming")(run_agent)
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
        o: dict = {"num_cpus": res.get("cpus", 1)}
        if res.get("mem") is not None:
            o["memory"] = _mem_bytes(res["mem"])
        if res.get("gpu"):
            o["num_gpus"] = res["gpu"]
        env = dict(launch.env)
        env[RUN_ID_VAR] = launch.run_id
        try:
            gen = self._remote.options(**o, name=spec.get("name") or "dagrun").remote(
                launch.agent, launch.cwd, env, prompt, launch.max_output, float(spec.get("kill_grace") or 5.0))
            tid = gen._generator_ref.task_id().hex()
            gen.completed().future().add_done_callback(lambda _f, k=tid: self._ring(k))
        except Exception as e:      # noqa: BLE001
            raise StartError(f"ray: {e}") from None
        handle = {"runner": self.name, "task_id": tid, "driver": os.getpid(),
                  "host": socket.gethostname(), "run_id": launch.run_id}
        self._tasks[tid] = _Task(gen, handle, launch)
        return handle

    def _ring(self, key: str) -> None:
        """Ray's callback thread: the attempt's Ray task ended (any way)."""
        with self._lock:
            self._ended.add(key)
        try:
            os.write(self._bell[1], b"x")
        except OSError:             # closed (the driver is exiting) or full (it will look anyway)
            pass

    def wakeup(self) -> Wakeup:
        if not self._tasks:
            return Wakeup((self._bell[0],), None)
        waiting = sum(1 for t in self._tasks.values() if t.node is None)
        # ends ring the bell; only an attempt not yet placed is looked at on a timer (its node)
        return Wakeup((self._bell[0],), min(PLACE_POLL[1], max(PLACE_POLL[0], 0.0005 * waiting)) if waiting else None)

    def service(self, ready: set[int]) -> None:
        if self._bell[0] in ready:
            try:
                while os.read(self._bell[0], 4096):
                    pass
            except BlockingIOError:
                pass

    def progress(self, handle: dict) -> Progress:
        return Progress()

    def node(self, handle: dict) -> str | None:
        t = self._tasks.get(self.key(handle))
        if t is None:
            return handle.get("node")
        if t.node is None:
            self._first(t)
        return t.node

    def _first(self, t: _Task) -> None:
        """The attempt's first item (where it runs), if Ray has it already."""
        try:
            ref = t.gen._next_sync(timeout_s=0)
            if not ref.is_nil():
                t.node = self._ray.get(ref)["node"]
        except Exception:           # noqa: BLE001 -- it failed before it started: poll reports it
            t.node = t.node or ""

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
        try:
            items = [self._ray.get(ref) for ref in t.gen]      # ended: nothing here blocks
            r = items[-1] if items else {}
            if "node" in r and "code" not in r and "start_error" not in r:
                raise RuntimeError("the attempt ended without a result")
        except Exception as e:      # noqa: BLE001 -- cancelled, worker crashed, node died
            node = t.node or None
            if t.stop_sig is not None:
                return Exit(None, t.stop_sig, Progress(), node=node,
                            reason=f"ray task cancelled ({signal.Signals(t.stop_sig).name})")
            return Exit(None, None, Progress(), node=node,
                        reason=f"ray: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
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
            return Exit(None, -code, prog, node=node)
        return Exit(code, None, prog, node=node)

    def terminate(self, handle: dict) -> None:
        t = self._tasks.get(self.key(handle))
        if t is not None and t.stop_sig is None:
            t.stop_sig = signal.SIGTERM
            self._ray.cancel(t.gen, force=False)

    def kill(self, handle: dict) -> None:
        t = self._tasks.get(self.key(handle))
        if t is not None and t.stop_sig != signal.SIGKILL:
            t.stop_sig = t.stop_sig or signal.SIGKILL
            try:
                self._ray.cancel(t.gen, force=True)
            except Exception:       # noqa: BLE001 -- already finished
                pass

    def reap_orphan(self, handle: dict | None, grace: float, run_id: str | None = None) -> bool:
        return False     # Ray stops a dead driver's tasks itself (ownership): nothing is left

    def alive(self, handles: dict[str, dict]) -> set[str]:
        return {k for k, h in handles.items() if isinstance(h, dict) and h.get("driver") == os.getpid()
                and h.get("task_id") in self._tasks}

    def close(self) -> None:
        self._tasks.clear()
        bell, self._bell = self._bell, (-1, -1)     # a late callback writes to -1, not a reused fd
        for fd in bell:
            try:
                os.close(fd)
            except OSError:
                pass
