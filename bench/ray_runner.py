"""What the Ray runner itself adds to a Ray task, without dagrun's engine or start-up: one
process connects once, then (interleaved, REPS times) runs N no-op tasks in each of these
ways, and prints medians per task:

  empty    floor, minimal: a remote function that returns None (Ray's own cost per task, no
           process started)
  true     floor, minimal: a remote function that runs `sh -c true` and returns its exit code
           (what the earlier versions of this bench called "a bare Ray task")
  agent    floor, honest: what any Ray user must write to run an agent the way dagrun does --
           a remote function that takes the command, its workdir, its environment (the same
           dict the runner sends: the driver's environment plus the DAGRUN_* variables) and
           the prompt (read from the prompt file on the driver), runs `sh -c CMD` as a
           subprocess with the prompt on stdin, and returns (exit code, stdout, stderr)
  stream   the agent floor as a Ray streaming task (a generator yielding its one result; the
           driver reads it with next()): what a streaming task costs over a plain one
  files    the agent floor with temporary files for stdin/stdout/stderr (as the runner does:
           a prompt or output bigger than a pipe's buffer needs them or threads) instead of pipes
  runner   RayRunner.start() of a Launch running `true` with that environment and prompt,
           then the engine's loop in miniature (poll on runner.wakeup(), exits() if the runner
           has it, service, poll -- every attempt, or those exits() names -- and node() of
           those still running) until every attempt has its Exit

Each shape: chain (ray.get of one task at a time) and fanout (all N submitted, then waited
for). Ratios are printed against both the honest (agent) and the minimal (true) floor.
RUNNER=path/to/rayrun.py measures another version of the module instead; RUNNER=A,B,... (paths,
or "-" for this checkout's) measures each, interleaved with the floors in the same process (an
A/B in one run: on a loaded machine separate runs differ by more than the change). Needs a Ray
head (RAY_ADDRESS).

    RAY_ADDRESS=127.0.0.1:6379 .venv/bin/python bench/ray_runner.py [N] [REPS]
"""
from __future__ import annotations

import importlib.util
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rayfloor  # noqa: E402


def load_runner(path: str | None = None, i: int = 0):
    if not path or path == "-":
        from dagrun import rayrun
        return rayrun
    spec = importlib.util.spec_from_file_location(f"dagrun.rayrun_under_test{i}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def agent_env(root: str, i: int) -> dict:
    """The environment the engine gives an attempt (engine._start_locked): the driver's own plus
    the DAGRUN_* variables."""
    env = dict(os.environ)
    d = os.path.join(root, "goals", "g", "tasks", f"t{i}")
    env.update({"DAGRUN_HOME": root, "DAGRUN_GOAL": "g", "DAGRUN_TASK": f"t{i}", "DAGRUN_ATTEMPT": "1",
                "DAGRUN_TASK_DIR": d, "DAGRUN_PROMPT_FILE": os.path.join(d, "prompt.md"),
                "DAGRUN_OUTPUT_FILE": os.path.join(d, "output"), "DAGRUN_WORKER": "bench",
                "DAGRUN_USAGE_FILE": os.path.join(d, "claim", "usage.json"),
                "DAGRUN_RAW_FILE": os.path.join(d, "claim", "raw"),
                "DAGRUN_CHECK_FILE": os.path.join(d, "claim", "check.json"),
                "DAGRUN_HEARTBEAT_FILE": os.path.join(d, "claim", "heartbeat")})
    return env


def run_runner(mod, runner, root: str, n: int, chain: bool) -> float:
    from dagrun.executor import Launch
    prompt = os.path.join(root, "prompt.md")
    with open(prompt, "w") as f:
        f.write("p")

    def launch(i):          # (the capture paths' folder is the engine's claim, not timed here)
        return Launch(agent="true", cwd=root, env=agent_env(root, i), stdin_path=prompt,
                      stdout_path=os.path.join(root, f"{i}.stdout"), stderr_path=os.path.join(root, f"{i}.stderr"),
                      run_id=f"r{i}", runner="ray", spec={"ray": {}})

    exits = getattr(runner, "exits", None)

    def wait(handles):
        left = {runner.key(h): h for h in handles}
        while left:
            w = runner.wakeup()
            r, _, _ = select.select(list(w.fds), [], [], w.timeout)
            due = exits(set(r)) if exits is not None else None     # as the engine: None polls all
            runner.service(set(r))
            for k, h in list(left.items()) if due is None else [(k, left[k]) for k in due if k in left]:
                ex = runner.poll(h)
                if ex is None:
                    if hasattr(runner, "node"):
                        runner.node(h)          # as the engine does for attempts not yet placed
                    continue
                assert ex.code == 0, ex
                del left[k]

    t = time.perf_counter()
    if chain:
        for i in range(n):
            wait([runner.start(launch(i))])
    else:
        wait([runner.start(launch(i)) for i in range(n)])
    return time.perf_counter() - t


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    ray, true, agent = rayfloor.connect()

    @ray.remote(num_cpus=1, max_retries=0)
    def empty():
        return None

    @ray.remote(num_cpus=1, max_retries=0, num_returns="streaming")
    def stream(cmd: str, cwd: str, env: dict, prompt: bytes):
        p = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, input=prompt, capture_output=True)
        yield p.returncode, p.stdout, p.stderr

    @ray.remote(num_cpus=1, max_retries=0)
    def files(cmd: str, cwd: str, env: dict, prompt: bytes):
        with tempfile.TemporaryFile() as i, tempfile.TemporaryFile() as o, tempfile.TemporaryFile() as e:
            i.write(prompt)
            i.seek(0)
            code = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, stdin=i, stdout=o, stderr=e).returncode
            o.seek(0)
            e.seek(0)
            return code, o.read(), e.read()

    mods = [load_runner(p, i) for i, p in enumerate((os.environ.get("RUNNER") or "-").split(","))]
    runners = [m.RayRunner() for m in mods]
    names = ["runner"] if len(mods) == 1 else [f"runner{i + 1}" for i in range(len(mods))]
    m: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rayrunner-") as root:
        prompt_path = os.path.join(root, "prompt-floor.md")
        with open(prompt_path, "w") as f:
            f.write("p")

        def agent_task(i, fn=agent):
            with open(prompt_path, "rb") as f:
                prompt = f.read()
            return fn.remote("true", root, agent_env(root, i), prompt)

        def stream_task(i):
            return agent_task(i, stream)

        floors = {"empty": lambda i: empty.remote(), "true": lambda i: true.remote(), "agent": agent_task,
                  "stream": stream_task, "files": lambda i: agent_task(i, files)}
        def get(x):
            if isinstance(x, list):
                return [get(y) for y in x]
            return ray.get(next(x)) if isinstance(x, ray.ObjectRefGenerator) else ray.get(x)
        for f in floors.values():
            get(f(0))
        for mod, runner in zip(mods, runners):
            run_runner(mod, runner, root, 2, True)      # warm: the functions exported, workers up
        for _ in range(reps):
            for shape in ("chain", "fanout"):
                for name, f in floors.items():
                    t = time.perf_counter()
                    if shape == "chain":
                        for i in range(n):
                            r = get(f(i))
                    else:
                        r = get([f(i) for i in range(n)])[-1]
                    m.setdefault(f"{shape} {name}", []).append(time.perf_counter() - t)
                    assert r in (None, 0) or r[0] == 0, r
                for name, mod, runner in zip(names, mods, runners):
                    m.setdefault(f"{shape} {name}", []).append(run_runner(mod, runner, root, n, shape == "chain"))
    for name, mod in zip(names, mods):
        print(f"{name}: {mod.__file__}")
    print(f"{n} tasks, medians of {reps} interleaved runs, ms per task; load average {os.getloadavg()[0]:.1f}")
    cols = ("empty", "true", "agent", "stream", "files", *names)
    print("  shape   " + " ".join(f"{k:>7}" for k in cols))
    for shape in ("chain", "fanout"):
        v = {k: statistics.median(m[f"{shape} {k}"]) / n * 1000 for k in cols}
        print(f"  {shape:7} " + " ".join(f"{v[k]:7.2f}" for k in cols))
        for name in names:
            print(f"  {'':7} {name}: {v[name] / v['agent']:.2f}x the agent floor, {v[name] / v['true']:.2f}x the "
                  f"true floor, {v[name] - v['agent']:+.2f} ms over the agent floor")


if __name__ == "__main__":
    main()
