"""What the Ray runner itself adds to a bare Ray task, without dagrun's engine or start-up:
one process connects once, then (interleaved, REPS times) runs N no-op tasks as

  floor   a bare Ray task running `sh -c true` (ray.get of one at a time: a chain; of all at
          once: a fan-out)
  runner  RayRunner.start() of a Launch running `true`, then the engine's loop in miniature
          (select on runner.wakeup(), service, poll) until every attempt has its Exit

and prints medians per task. RUNNER=path/to/rayrun.py measures another version of the module
(an A/B against an older checkout). Needs a Ray head (RAY_ADDRESS).

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


def run_runner(mod, runner, root: str, n: int, chain: bool) -> float:
    from dagrun.executor import Launch
    prompt = os.path.join(root, "prompt.md")
    with open(prompt, "w") as f:
        f.write("p")

    def launch(i):
        d = tempfile.mkdtemp(dir=root)
        return Launch(agent="true", cwd=root, env={"PATH": os.environ["PATH"]}, stdin_path=prompt,
                      stdout_path=os.path.join(d, "stdout"), stderr_path=os.path.join(d, "stderr"),
                      run_id=f"r{i}", runner="ray", spec={"ray": {}})

    def wait(handles):
        left = list(handles)
        while left:
            w = runner.wakeup()
            r, _, _ = select.select(list(w.fds), [], [], w.timeout)
            runner.service(set(r))
            for h in list(left):
                if hasattr(runner, "node"):
                    runner.node(h)          # as the engine does for attempts not yet placed
                ex = runner.poll(h)
                if ex is not None:
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
    import ray
    ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=1, max_retries=0)
    def noop():
        return subprocess.run(["/bin/sh", "-c", "true"]).returncode

    mod = load_runner()
    runner = mod.RayRunner()
    m: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rayrunner-") as root:
        ray.get(noop.remote())
        run_runner(mod, runner, root, 2, True)          # warm: the function exported, workers up
        for _ in range(reps):
            for shape in ("chain", "fanout"):
                t = time.perf_counter()
                if shape == "chain":
                    for _ in range(n):
                        ray.get(noop.remote())
                else:
                    ray.get([noop.remote() for _ in range(n)])
                m.setdefault(f"{shape} floor", []).append(time.perf_counter() - t)
                m.setdefault(f"{shape} runner", []).append(run_runner(mod, runner, root, n, shape == "chain"))
    print(f"{mod.__file__}: {n} tasks, medians of {reps} interleaved runs, per task")
    for shape in ("chain", "fanout"):
        fl, ru = statistics.median(m[f"{shape} floor"]), statistics.median(m[f"{shape} runner"])
        print(f"  {shape:7} floor {fl / n * 1000:6.1f}ms  runner {ru / n * 1000:6.1f}ms  "
              f"added {(ru - fl) / n * 1000:6.1f}ms  ({ru / fl:4.2f}x)")


if __name__ == "__main__":
    main()
