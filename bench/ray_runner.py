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
  runner   RayRunner.start() of a Launch running `true` with that environment and prompt,
           then the engine's loop in miniature (poll on runner.wakeup(), service, node, poll)
           until every attempt has its Exit

Each shape: chain (ray.get of one task at a time) and fanout (all N submitted, then waited
for). Ratios are printed against both the honest (agent) and the minimal (true) floor.
RUNNER=path/to/rayrun.py measures another version of the module (an A/B against an older
checkout). Needs a Ray head (RAY_ADDRESS).

    RAY_ADDRESS=127.0.0.1:6379 .venv/bin/python bench/ray_runner.py [N] [REPS]
"""
from __future__ import annotations

import importlib.util
import os
import select
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rayfloor  # noqa: E402


def load_runner():
    path = os.environ.get("RUNNER")
    if not path:
        from dagrun import rayrun
        return rayrun
    spec = importlib.util.spec_from_file_location("dagrun.rayrun_under_test", path)
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

    def launch(i):
        d = tempfile.mkdtemp(dir=root)
        return Launch(agent="true", cwd=root, env=agent_env(root, i), stdin_path=prompt,
                      stdout_path=os.path.join(d, "stdout"), stderr_path=os.path.join(d, "stderr"),
                      run_id=f"r{i}", runner="ray", spec={"ray": {}})

    def wait(handles):
        left = list(handles)
        while left:
            w = runner.wakeup()
            r, _, _ = select.select(list(w.fds), [], [], w.timeout)
            runner.service(set(r))
            for h in list(left):
                ex = runner.poll(h)
                if ex is None:
                    if hasattr(runner, "node"):
                        runner.node(h)          # as the engine does for attempts not yet placed
                    continue
                assert ex.code == 0, ex
                left.remove(h)

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

    mod = load_runner()
    runner = mod.RayRunner()
    m: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rayrunner-") as root:
        prompt_path = os.path.join(root, "prompt-floor.md")
        with open(prompt_path, "w") as f:
            f.write("p")

        def agent_task(i):
            with open(prompt_path, "rb") as f:
                prompt = f.read()
            return agent.remote("true", root, agent_env(root, i), prompt)

        floors = {"empty": lambda i: empty.remote(), "true": lambda i: true.remote(), "agent": agent_task}
        for f in floors.values():
            ray.get(f(0))
        run_runner(mod, runner, root, 2, True)          # warm: the functions exported, workers up
        for _ in range(reps):
            for shape in ("chain", "fanout"):
                for name, f in floors.items():
                    t = time.perf_counter()
                    if shape == "chain":
                        for i in range(n):
                            r = ray.get(f(i))
                    else:
                        r = ray.get([f(i) for i in range(n)])[-1]
                    m.setdefault(f"{shape} {name}", []).append(time.perf_counter() - t)
                    assert r in (None, 0) or r[0] == 0, r
                m.setdefault(f"{shape} runner", []).append(run_runner(mod, runner, root, n, shape == "chain"))
    print(f"{mod.__file__}: {n} tasks, medians of {reps} interleaved runs, ms per task")
    print(f"  {'shape':7} {'empty':>7} {'true':>7} {'agent':>7} {'runner':>7}  {'runner/agent':>12} "
          f"{'runner/true':>11} {'added to agent':>14}")
    for shape in ("chain", "fanout"):
        v = {k: statistics.median(m[f"{shape} {k}"]) / n * 1000 for k in ("empty", "true", "agent", "runner")}
        print(f"  {shape:7} {v['empty']:7.2f} {v['true']:7.2f} {v['agent']:7.2f} {v['runner']:7.2f}  "
              f"{v['runner'] / v['agent']:11.2f}x {v['runner'] / v['true']:10.2f}x {v['runner'] - v['agent']:12.2f}ms")


if __name__ == "__main__":
    main()
