"""Slurm steps mode against its honest floor, per step, in ONE allocation: an A/B that a loaded
shared machine does not drown (bench/cluster.py takes a fresh salloc per measurement and
compares whole-run medians, which move by +-30 % here).

Inside one `salloc -n STEPS_CPUS` (default 2) this runs, interleaved round after round:
  floor   the steps floor "agent" of docs/cluster.md: `sh -c 'exec srun --quiet --exact
          --nodes=1 --ntasks=1 --cpus-per-task=1 --job-name=.. --chdir=D /bin/sh -c true <PROMPT
          >OUT 2>ERR'`, spawned from this process one after the other (chain) or STEPS_CPUS at
          a time (fan-out)
  ARM     `dagrun run -j 1|STEPS_CPUS --runner slurm` of a no-op chain / fan-out in steps mode,
          for each ARM: this checkout ("now") and every BASELINE entry (a command prefix, e.g.
          ".venv/bin/python bench/other_checkout.py /tmp/old"; several separated by ";"; NOW= another
          command for "now", e.g. a frozen copy of this checkout)

Per step it prints, for the chain, the cycle from one step's end to the next one's end
(floor: the spawn + srun's wait; dagrun: between consecutive `done` events) as the median and
the lower quartile of all steps of all rounds (the quartile is what the machine gives when
nobody else happens to run); for the fan-out the steady time per task of each round (floor:
the round's time / N; dagrun: last `done` - first `done` over N - 1), median and lower
quartile. And the CPU (user + sys) per task of the whole client side: this process's
children (floor: sh + srun; dagrun: the driver, its start-up included, and its srun
processes). The Slurm daemons' CPU is the same work for both and not counted.

    SLURM_CONF=... ROUNDS=8 BASELINE=".venv/bin/python bench/other_checkout.py /tmp/old" \\
        .venv/bin/python bench/steps_ab.py [CHAIN] [FANOUT]
"""
from __future__ import annotations

import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import done_times  # noqa: E402  (bench/cluster.py: the same events reader)

HERE = os.path.dirname(os.path.abspath(__file__))
CPUS = int(os.environ.get("STEPS_CPUS") or 2)
ROUNDS = int(os.environ.get("ROUNDS") or 8)
NOW = [os.path.join(os.path.dirname(sys.executable), "dagrun")]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def plan(root: str, shape: str, n: int) -> str:
    tasks = [{"id": f"t{i}", "prompt": "p", "deps": [f"t{i - 1}"] if shape == "chain" and i else []}
             for i in range(n)]
    path = os.path.join(root, f"{shape}.json")
    with open(path, "w") as f:
        json.dump({"goal": shape, "defaults": {"agent": "true", "slurm": {"mode": "steps"}}, "tasks": tasks}, f)
    return path


def floor(root: str, shape: str, n: int) -> tuple[list[float], float, float]:
    """(per-step cycles, seconds per task, client CPU per task)"""
    d = tempfile.mkdtemp(dir=root, prefix="floor-")
    prompt = os.path.join(d, "prompt.md")
    with open(prompt, "w") as f:
        f.write("p")
    one = (f"exec srun --quiet --exact --nodes=1 --ntasks=1 --cpus-per-task=1 --job-name=floor --chdir={d} "
           f"/bin/sh -c true <{prompt} >{d}/out.$0 2>{d}/err.$0")
    par = 1 if shape == "chain" else CPUS
    cpu0, t0 = _children_cpu(), time.perf_counter()
    ends, running, left = [], [], n
    while left or running:
        while left and len(running) < par:
            running.append(subprocess.Popen(["/bin/sh", "-c", one, str(left)], stdin=subprocess.DEVNULL,
                                            start_new_session=True))
            left -= 1
        pid, _ = os.wait()
        running = [p for p in running if p.pid != pid]
        ends.append(time.perf_counter())
    took = time.perf_counter() - t0
    cycles = [b - a for a, b in zip([t0] + ends, ends)]
    return cycles, took / n, (_children_cpu() - cpu0) / n


def dagrun(root: str, shape: str, n: int, exe: list[str]) -> tuple[list[float], float, float]:
    home = tempfile.mkdtemp(dir=root, prefix="home-")
    cpu0 = _children_cpu()
    subprocess.run([*exe, f"--home={home}", "run", "-q", "-j", str(1 if shape == "chain" else CPUS),
                    "--runner", "slurm", plan(root, shape, n)], check=True, stdout=subprocess.DEVNULL)
    cpu = (_children_cpu() - cpu0) / n
    ts = done_times(home, shape)
    return [b - a for a, b in zip(ts, ts[1:])], (ts[-1] - ts[0]) / (len(ts) - 1), cpu


def inside(chain: int, fan: int, arms: dict[str, list[str]]) -> None:
    res: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory(prefix="steps-ab-") as root:
        for r in range(ROUNDS):
            order = ["floor", *arms]
            if r % 2:
                order.reverse()               # alternate the order: no arm always runs after another
            for shape, n in (("chain", chain), ("fanout", fan)):
                for who in order:
                    out = floor(root, shape, n) if who == "floor" else dagrun(root, shape, n, arms[who])
                    res.setdefault((shape, who), []).append(out)
    q = statistics.quantiles
    for shape, n in (("chain", chain), ("fanout", fan)):
        print(f"\n{shape} of {n}, {ROUNDS} rounds")
        base = None
        for who in ["floor", *arms]:
            runs = res[(shape, who)]
            per = [c for cycles, _, _ in runs for c in cycles] if shape == "chain" else [s for _, s, _ in runs]
            med, low = statistics.median(per), (q(per, n=4)[0] if len(per) > 1 else per[0])
            cpu = statistics.median([c for _, _, c in runs])
            if who == "floor":
                base = (med, low)
                extra = ""
            else:
                extra = f"  = {med / base[0]:.2f}x / {low / base[1]:.2f}x the floor ({(med - base[0]) * 1000:+.1f} ms)"
            print(f"  {who:8} per task: median {med * 1000:6.1f} ms, lower quartile {low * 1000:6.1f} ms;"
                  f" client CPU {cpu * 1000:5.1f} ms{extra}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        arms = json.loads(sys.argv[4])
        inside(int(sys.argv[2]), int(sys.argv[3]), arms)
        return
    chain = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    fan = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    arms = {"now": shlex.split(os.environ["NOW"]) if os.environ.get("NOW") else NOW}
    for i, b in enumerate(x for x in (os.environ.get("BASELINE") or "").split(";") if x.strip()):
        arms[f"base{i or ''}"] = shlex.split(b)
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; arms: {arms}")
    subprocess.run(["salloc", f"-n{CPUS}", "--quiet", sys.executable, os.path.abspath(__file__), "--inside",
                    str(chain), str(fan), json.dumps(arms)], check=True, stdin=subprocess.DEVNULL)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
