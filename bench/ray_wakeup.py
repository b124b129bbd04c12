"""How a Ray task's end reaches a driver, one no-op agent task (`sh -c true`, prompt on stdin,
outputs returned) at a time, in one connected process (medians of REPS interleaved runs of N
tasks, ms per task):

  plain get    a plain remote function; the driver blocks in ray.get (the bench floors)
  plain cb     the same; the driver sleeps in select(2) on a pipe that the ref's future's
               callback writes to (how an event loop that also waits for other things learns it;
               the Ray runner's way since it runs plain tasks, with the ref's _on_completed)
  stream get   a streaming remote function (generator) yielding its one result; next() + get
  stream cb    the same; woken by the completion callback of gen.completed(), then the items
               read (what the Ray runner did up to main b10aab8: streaming so that a long
               attempt could say its node first; it now puts it into Ray's internal KV)

    RAY_ADDRESS=127.0.0.1:6379 .venv/bin/python bench/ray_wakeup.py [N] [REPS]
"""
from __future__ import annotations

import os
import select
import statistics
import subprocess
import sys
import time


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    import ray
    ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=1, max_retries=0, num_returns="streaming")
    def stream(cmd, cwd, env, prompt):
        p = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, input=prompt, capture_output=True)
        yield p.returncode, p.stdout, p.stderr

    @ray.remote(num_cpus=1, max_retries=0)
    def plain(cmd, cwd, env, prompt):
        p = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, input=prompt, capture_output=True)
        return p.returncode, p.stdout, p.stderr

    env = dict(os.environ)
    r, w = os.pipe()

    def ring(_f):
        os.write(w, b"x")

    def wait_bell():
        select.select([r], [], [])
        os.read(r, 64)

    def get_plain():
        return ray.get(plain.remote("true", "/tmp", env, b"p"))

    def cb_plain():
        ref = plain.remote("true", "/tmp", env, b"p")
        ref.future().add_done_callback(ring)
        wait_bell()
        return ray.get(ref)

    def get_stream():
        return ray.get(next(stream.remote("true", "/tmp", env, b"p")))

    def cb_stream():
        g = stream.remote("true", "/tmp", env, b"p")
        g.completed().future().add_done_callback(ring)
        wait_bell()
        return [ray.get(x) for x in g][-1]

    ways = {"plain get": get_plain, "plain cb": cb_plain, "stream get": get_stream, "stream cb": cb_stream}
    for f in ways.values():
        f()
    m: dict[str, list[float]] = {}
    for _ in range(reps):
        for k, f in ways.items():
            t = time.perf_counter()
            for _ in range(n):
                assert f()[0] == 0
            m.setdefault(k, []).append((time.perf_counter() - t) / n * 1000)
    print(f"{n} tasks one at a time, medians of {reps} interleaved runs, ms per task; load average "
          f"{os.getloadavg()[0]:.1f}")
    for k, v in m.items():
        print(f"  {k:11} {statistics.median(v):6.2f}")


if __name__ == "__main__":
    main()
