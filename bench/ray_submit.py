"""Ray's submission of one attempt, three ways, interleaved in one connected process: through
RemoteFunction._remote with run_agent's seven arguments (the runner before session 9), with
them packed in one tuple (rayrun.attempt), and through rayrun._fast_submit (the core worker's
submit_task with the options worked out once). Each round submits N no-op tasks one at a time
(ray.get of each before the next: a chain) and times the submission call alone and the whole
round trip; medians of REPS rounds, ms. Needs a Ray head (RAY_ADDRESS).

    RAY_ADDRESS=127.0.0.1:6379 .venv/bin/python bench/ray_submit.py [N] [REPS]
"""
from __future__ import annotations

import os
import statistics
import sys
import time


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    import ray
    ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level="ERROR", log_to_driver=False)
    from dagrun import rayrun

    @ray.remote(num_cpus=1, max_retries=0)
    def seven(a, b, c, d, e, f, g):
        return {"code": 0}

    @ray.remote(num_cpus=1, max_retries=0)
    def one(a):
        return {"code": 0}

    args = ("true", "/tmp", dict(os.environ), b"p", None, 5.0, 0.1)
    opts = {k: v for k, v in one._default_options.items() if k != "max_calls"}
    env = one._serialized_base_runtime_env_info
    ray.get([seven.remote(*args), one._remote(args=(args,), kwargs=None, serialized_runtime_env_info=env,
                                              **opts, name="warm")])
    fast = rayrun._fast_submit(ray, one, opts)
    if fast is None:
        sys.exit("no fast submission on this Ray (rayrun.FAST_RAY)")
    arms = {
        "_remote, 7 args": lambda i: seven._remote(args=args, kwargs=None, serialized_runtime_env_info=env,
                                                   **opts, name=f"t{i}"),
        "_remote, 1 tuple": lambda i: one._remote(args=(args,), kwargs=None, serialized_runtime_env_info=env,
                                                  **opts, name=f"t{i}"),
        "fast, 1 tuple": lambda i: fast(f"t{i}", args),
    }
    sub: dict = {}
    rt: dict = {}
    for _ in range(reps):
        for k, f in arms.items():
            s = []
            t = time.perf_counter()
            for i in range(n):
                t0 = time.perf_counter()
                r = f(i)
                s.append(time.perf_counter() - t0)
                ray.get(r)
            rt.setdefault(k, []).append((time.perf_counter() - t) / n)
            sub.setdefault(k, []).append(statistics.median(s))
    print(f"chains of {n} no-op tasks, medians of {reps} interleaved rounds, ms; load average {os.getloadavg()[0]:.1f}")
    for k in arms:
        print(f"  {k:18} submission {statistics.median(sub[k]) * 1000:.3f}   task {statistics.median(rt[k]) * 1000:.2f}")


if __name__ == "__main__":
    main()
