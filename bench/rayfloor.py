"""The Ray floor that bench/cluster.py and bench/ray_runner.py measure the Ray runner against:
the connection and the remote functions any Ray user writes to run a no-op task or an agent
the way dagrun does. Not a module of dagrun: the benches import it from their own folder."""
from __future__ import annotations

import os
import subprocess


def connect():
    """Connect to the Ray head (RAY_ADDRESS, else "auto") and define the floor's remote
    functions: (ray, true, agent). `true()` runs `sh -c true` and returns its exit code;
    `agent(cmd, cwd, env, prompt)` runs `sh -c CMD` with the prompt on stdin and returns
    (exit code, stdout, stderr). Defined here, after the connection, so that Ray ships them
    by value (the workers need not import this file)."""
    import ray
    ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=1, max_retries=0)
    def true():
        return subprocess.run(["/bin/sh", "-c", "true"]).returncode

    @ray.remote(num_cpus=1, max_retries=0)
    def agent(cmd: str, cwd: str, env: dict, prompt: bytes):
        p = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, input=prompt, capture_output=True)
        return p.returncode, p.stdout, p.stderr

    return ray, true, agent
