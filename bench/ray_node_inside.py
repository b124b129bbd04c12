"""The node side inside one Ray worker: the Ray runner's remote function (`rayrun.run_agent` of
`true`) against the honest floor's (`subprocess.run` of `sh -c true` with the prompt on stdin,
pipes), and a bare `Popen` + `wait` with and without its own process group, interleaved in
the same worker, N rounds: wall time and the worker's CPU per call (medians). Ray's scheduling
is left out: what the function itself costs where it runs.

    RAY_ADDRESS=... .venv/bin/python bench/ray_node_inside.py [N]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ray_runner  # noqa: E402
import rayfloor  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    ray, _, _ = rayfloor.connect()
    import ray.cloudpickle as cp
    from dagrun import rayrun
    cp.register_pickle_by_value(rayrun)
    env = ray_runner.agent_env("/tmp", 1)
    env["DAGRUN_RUN_ID"] = f"node-inside-{os.getpid()}"

    @ray.remote(num_cpus=1, max_retries=0)
    def inside(n, env):
        import statistics
        import subprocess
        import time

        def floor():
            subprocess.run(["/bin/sh", "-c", "true"], cwd="/tmp", env=env, input=b"p", capture_output=True)

        def runner():
            rayrun.run_agent("true", "/tmp", env, b"p", None, 5.0)

        def popen(group):
            subprocess.Popen(["/bin/sh", "-c", "true"], cwd="/tmp", env=env, close_fds=True,
                             **({"process_group": 0} if group else {})).wait()
        arms = {"floor": floor, "run_agent": runner, "popen+group": lambda: popen(True), "popen": lambda: popen(False)}
        res = {k: ([], []) for k in arms}
        for f in arms.values():
            f()
        for _ in range(n):
            for k, f in arms.items():
                c, t = time.process_time(), time.perf_counter()
                f()
                res[k][0].append((time.perf_counter() - t) * 1e3)
                res[k][1].append((time.process_time() - c) * 1e3)
        return {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in res.items()}, os.getloadavg()[0]

    r, load = ray.get(inside.remote(n, env))
    print(f"{n} rounds in one Ray worker, interleaved; load average {load:.1f}")
    for k, (w, c) in r.items():
        print(f"  {k:12} wall {w:.3f} ms, worker CPU {c:.3f} ms a call")


if __name__ == "__main__":
    main()
