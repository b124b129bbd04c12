"""Per-task overhead of the Slurm and Ray runners against each engine's own floor, measured in
the same run.

Two shapes of no-op tasks (agent `true`):
  chain   20 tasks, each depending on the previous one (latency: one job at a time)
  fanout  100 independent tasks, -j 100 (throughput: as many jobs as the node takes)

and for each, in this order:
  local   `dagrun run` with the local runner (dagrun's own cost)
  floor   the same shape straight on Slurm: `sbatch --parsable --wrap 'touch F'` and waiting
          for F (stat every 10 ms) -- sbatch -> job start -> job end, nothing of dagrun's;
          the chain submits the next job when the previous file appears
  srun    the same shape as `srun true` job steps inside one allocation (salloc), the
          floor of a steps mode (chain only)
  slurm   `dagrun run --runner slurm`
  steps   `dagrun run --runner slurm` with "slurm": {"mode": "steps"}, the driver inside a salloc
          of STEPS_CPUS (default 2) CPUs, -j STEPS_CPUS; timed inside the allocation (the wait
          for it left out); its floor: `srun --exact -n1 true` steps, STEPS_CPUS at a time
  ray floor  a bare Ray task running `sh -c true` (ray.get of one at a time for the chain, of
          all at once for the fan-out), from a driver already connected
  ray     `dagrun run --runner ray` (its time includes importing Ray and connecting to the
          head, ~1-3 s, once; the floor's own import + connect is printed beside it)

REPS=N (environment) repeats every measurement N times, interleaved (local, floor, dagrun,
local, ...), and prints medians: on a busy shared machine one run is noise. For Ray it also
prints dagrun ray - dagrun local (what the Ray runner adds to dagrun's own cost) per task.
DAGRUN="python -m ..." (environment) runs another dagrun (an A/B against an older checkout).

Prints the Slurm settings (SchedulerParameters, the node's CPUs) and per-task times and the
ratio dagrun/floor. Needs a cluster (SLURM_CONF; .ci/slurm-up.sh) and a Ray head (RAY_ADDRESS).

    SLURM_CONF=... RAY_ADDRESS=127.0.0.1:6379 .venv/bin/python bench/cluster.py [CHAIN] [FANOUT] [slurm,steps,ray]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import shlex
import statistics

DAGRUN = shlex.split(os.environ.get("DAGRUN") or os.path.join(os.path.dirname(sys.executable), "dagrun"))
REPS = int(os.environ.get("REPS") or 1)
STEPS_CPUS = int(os.environ.get("STEPS_CPUS") or 2)


def plan(root: str, shape: str, n: int, steps: bool = False) -> str:
    tasks = [{"id": f"t{i}", "prompt": "p", "deps": [f"t{i - 1}"] if shape == "chain" and i else []}
             for i in range(n)]
    path = os.path.join(root, f"{shape}{'-steps' if steps else ''}.json")
    defaults = {"agent": "true", **({"slurm": {"mode": "steps"}} if steps else {})}
    with open(path, "w") as f:
        json.dump({"goal": shape, "defaults": defaults, "tasks": tasks}, f)
    return path


def _in_allocation(cpus: int, script: str) -> float:
    """Seconds `script` takes inside a fresh salloc of `cpus` CPUs (the wait for it left out)."""
    timed = f"t=$(date +%s.%N); {script} || exit 1; e=$(date +%s.%N); echo \"$e - $t\" | bc"
    r = subprocess.run(["salloc", f"-n{cpus}", "--quiet", "sh", "-c", timed], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def dagrun_steps(root: str, shape: str, n: int) -> float:
    home = tempfile.mkdtemp(dir=root, prefix=f"home-steps-{shape}-")
    cmd = [*DAGRUN, f"--home={home}", "run", "-q", "-j", str(1 if shape == "chain" else STEPS_CPUS),
           "--runner", "slurm", plan(root, shape, n, steps=True)]
    return _in_allocation(STEPS_CPUS, " ".join(shlex.quote(x) for x in cmd) + " >/dev/null")


def srun_steps(shape: str, n: int) -> float:
    par = 1 if shape == "chain" else STEPS_CPUS
    return _in_allocation(STEPS_CPUS, f"seq {n} | xargs -P {par} -I@ srun --exact -n1 true")


def dagrun(root: str, shape: str, n: int, runner: str) -> float:
    home = tempfile.mkdtemp(dir=root, prefix=f"home-{runner}-{shape}-")
    p = plan(root, shape, n)
    t = time.perf_counter()
    subprocess.run([*DAGRUN, f"--home={home}", "run", "-q", "-j", str(n if shape == "fanout" else 1),
                    "--runner", runner, p], check=True, capture_output=True)
    return time.perf_counter() - t


def _wait_files(paths: list[str]) -> None:
    left = set(paths)
    while left:
        left = {p for p in left if not os.path.exists(p)}
        if left:
            time.sleep(0.01)


def _sbatch(flag: str) -> None:
    subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--error=/dev/null", "--ntasks=1",
                    "--wrap", f"touch {flag}"], check=True, capture_output=True)


def floor(root: str, shape: str, n: int) -> float:
    d = tempfile.mkdtemp(dir=root, prefix=f"floor-{shape}-")
    flags = [os.path.join(d, f"f{i}") for i in range(n)]
    t = time.perf_counter()
    if shape == "chain":
        for f in flags:
            _sbatch(f)
            _wait_files([f])
    else:
        for f in flags:
            _sbatch(f)
        _wait_files(flags)
    return time.perf_counter() - t


def srun_chain(n: int) -> float:
    script = f"t=$(date +%s.%N); for i in $(seq {n}); do srun --exact -n1 true; done; " \
             "e=$(date +%s.%N); echo \"$e - $t\" | bc"
    r = subprocess.run(["salloc", "-n1", "--quiet", "sh", "-c", script], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


RAY_FLOOR = r"""
import time
t0 = time.perf_counter()
import os, subprocess, sys, ray
ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level="ERROR", log_to_driver=False)
@ray.remote(num_cpus=1, max_retries=0)
def noop():
    return subprocess.run(["/bin/sh", "-c", "true"]).returncode
ray.get(noop.remote())                       # warm: a worker exists, the function is exported
shape, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
if shape == "chain":
    for _ in range(n):
        ray.get(noop.remote())
else:
    ray.get([noop.remote() for _ in range(n)])
print(time.perf_counter() - t, t - t0)
"""


def ray_floor(shape: str, n: int) -> tuple[float, float]:
    """(the tasks' time from a connected driver, the driver's import + connect + first task)"""
    r = subprocess.run([sys.executable, "-c", RAY_FLOOR, shape, str(n)], capture_output=True, text=True, check=True)
    a, b = r.stdout.strip().splitlines()[-1].split()
    return float(a), float(b)


def settings() -> str:
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    keep = [x.strip() for x in conf.splitlines() if x.split("=")[0].strip() in
            ("SchedulerParameters", "SchedulerType", "SelectType", "SelectTypeParameters", "SLURM_VERSION",
             "ProctrackType", "MinJobAge")]
    node = subprocess.run(["sinfo", "-h", "-o", "%N cpus=%c mem=%m"], capture_output=True, text=True).stdout.strip()
    return "\n".join(["  " + x for x in keep] + [f"  node: {node}"])


def main() -> None:
    chain = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    fan = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    which = sys.argv[3].split(",") if len(sys.argv) > 3 else ["slurm", "ray"]
    med = statistics.median
    if "slurm" in which or "steps" in which:
        print("Slurm settings:\n" + settings())
    print(f"medians of {REPS} interleaved run(s); dagrun: {' '.join(DAGRUN)}")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as root:
        rows = []
        for shape, n in (("chain", chain), ("fanout", fan)):
            m: dict[str, list] = {}
            for _ in range(REPS):
                m.setdefault("local", []).append(dagrun(root, shape, n, "local"))
                if "slurm" in which:
                    m.setdefault("slurm floor", []).append(floor(root, shape, n))
                    if shape == "chain":
                        m.setdefault("srun", []).append(srun_chain(n))
                    m.setdefault("slurm", []).append(dagrun(root, shape, n, "slurm"))
                if "steps" in which:
                    m.setdefault("steps floor", []).append(srun_steps(shape, n))
                    m.setdefault("steps", []).append(dagrun_steps(root, shape, n))
                if "ray" in which:
                    fl, connect = ray_floor(shape, n)
                    m.setdefault("ray floor", []).append(fl)
                    m.setdefault("ray connect", []).append(connect)
                    m.setdefault("ray", []).append(dagrun(root, shape, n, "ray"))
            loc = med(m["local"])
            rows.append((shape, n, "local", loc, None, None, None))
            if "slurm" in which:
                rows.append((shape, n, "slurm", med(m["slurm"]), med(m["slurm floor"]),
                             med(m["srun"]) if "srun" in m else None, None))
            if "steps" in which:
                rows.append((shape, n, "steps", med(m["steps"]), med(m["steps floor"]), None, None))
            if "ray" in which:
                rows.append((shape, n, "ray", med(m["ray"]), med(m["ray floor"]), None,
                             (med(m["ray"]) - loc, med(m["ray connect"]))))
        print(f"\n{'shape':7} {'tasks':>5} {'runner':6} {'dagrun/task':>11} {'floor/task':>11} {'srun/task':>10} "
              f"{'ratio':>6} {'added/task':>11} {'minus local':>12} {'floor connect':>14}")
        for shape, n, runner, t, fl, sr, extra in rows:
            print(f"{shape:7} {n:5d} {runner:6} {t / n * 1000:9.1f}ms "
                  f"{(f'{fl / n * 1000:9.1f}ms' if fl else '-'):>11} {(f'{sr / n * 1000:8.1f}ms' if sr else '-'):>10} "
                  f"{(f'{t / fl:5.2f}x' if fl else '-'):>6} {(f'{(t - fl) / n * 1000:9.1f}ms' if fl else '-'):>11} "
                  f"{(f'{extra[0] / n * 1000:10.1f}ms' if extra else '-'):>12} "
                  f"{(f'{extra[1]:12.2f}s' if extra else '-'):>14}")


if __name__ == "__main__":
    main()
