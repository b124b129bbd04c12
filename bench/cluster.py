"""Per-task overhead of the Slurm and Ray runners against each engine's own floor, measured in
the same run.

Two shapes of no-op tasks (agent `true`):
  chain   CHAIN tasks (default 20), each depending on the previous one (latency: one at a time)
  fanout  FANOUT independent tasks (default 100), -j FANOUT (throughput: as many as fit)

and for each, in this order:
  local   `dagrun run` with the local runner (dagrun's own cost)
  slurm floor   the same shape straight on Slurm: `sbatch --parsable --wrap 'touch F'` and
          waiting for F (stat every 10 ms) -- sbatch -> job start -> job end, nothing of
          dagrun's; the chain submits the next job when the previous file appears
  srun    the same shape as `srun true` job steps inside one allocation (salloc), chain only
  slurm   `dagrun run --runner slurm`
  steps   `dagrun run --runner slurm` with "slurm": {"mode": "steps"}, the driver inside a salloc
          of STEPS_CPUS (default 2) CPUs, -j 1 (chain) / -j STEPS_CPUS (fan-out); timed inside
          the allocation (the wait for it left out). Two floors, run the same way (xargs -P):
            steps floor min    `srun --exact -n1 true`
            steps floor agent  what dagrun must do per task: `sh -c 'exec srun --exact --nodes=1
                               --ntasks=1 --cpus-per-task=1 --job-name=.. --chdir=D /bin/sh -c true
                               <PROMPT >OUT 2>ERR'` (the local runner also starts `exec srun ...`
                               through `sh -c`; the agent reads the prompt, its output is kept)
  ray     `dagrun run --runner ray` (a whole program: Python start-up, import, connecting to the
          head, Ray starting the job's workers, the tasks). Three floors:
            ray floor min      in one connected, warmed-up process: a remote function running
                               `sh -c true` and returning its exit code (earlier: "a bare Ray task")
            ray floor agent    the same process: what any Ray user must write to run an agent
                               the way dagrun does -- read the prompt file, a remote function
                               taking the command, workdir, environment (the driver's plus the
                               DAGRUN_* variables) and prompt, running `sh -c CMD` as a
                               subprocess with the prompt on stdin, returning (code, stdout,
                               stderr)
            ray program        that same agent floor as a whole program, timed from outside like
                               `dagrun run` (Python start-up, import ray, connect, the job's
                               workers, the tasks)

Per task is printed two ways: whole (the run's time / N) and steady (from the run's own `done`
times: (last - first) / (N - 1), start-up left out). For Ray also:
  late    the steady time of the second half of the tasks only ((last - the N/2-th) / (N - 1 -
          N/2)), for dagrun, the Ray program and the warm agent floor alike. A whole run is a
          fresh Ray job: Ray starts its workers at its first submission, and in a fan-out the
          second worker's start (its Python, `import ray`, its first task) falls inside the
          steady window -- its first task is done 31-630 ms after the job's first at load 7
          (bench/ray_workers.py), when the whole window is 0.2-0.7 s -- so steady/task swings
          with how long that start takes (1.17x-1.60x the warm floor at 9a12c26, the Ray
          program as much). The late half is past it.
  cpu     the CPU time (user + system) of the whole `dagrun run` / Ray program process (all
          threads, start-up included) / N: what the driver spends, which the machine's load
          moves much less than wall time.
  head    with RAY_HEAD_ROOT=DIR (the head's --temp-dir, e.g. .ci/ray-up.sh's RAY_ROOT): the CPU
          time of the head's processes (GCS, raylet and the rest named after DIR, the raylet's
          live children -- the workers -- and what they reaped) over the run / N: the node side
          of the same tasks (the workers' guards, which are no children of them, left out).

BASELINE="cmd" (environment) also runs that dagrun for the steps and ray rows, interleaved with
this one (an A/B in one run, e.g. BASELINE="env PYTHONPATH=/old/checkout python -m dagrun").
REPS=N (environment) repeats every measurement N times, interleaved, and prints medians (on a
busy shared machine one run is noise). DAGRUN="python -m ..." runs another dagrun (an A/B
against an older checkout). Prints the Slurm settings (SchedulerParameters, the node's CPUs)
and the load average. Needs a cluster (SLURM_CONF; .ci/slurm-up.sh) and a Ray head
(RAY_ADDRESS).

    SLURM_CONF=... RAY_ADDRESS=127.0.0.1:6379 REPS=3 .venv/bin/python bench/cluster.py [CHAIN] [FANOUT] [slurm,steps,ray]
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
BASELINE = shlex.split(os.environ.get("BASELINE") or "")
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


def done_times(home: str, goal: str) -> list[float]:
    """The goal's `done` events' times (epoch seconds), in order, from its events.jsonl."""
    from datetime import datetime
    ts = []
    with open(os.path.join(home, "goals", goal, "events.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            if e.get("status") == "done":
                ts.append(datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp())
    ts.sort()
    return ts


def steady(home: str, goal: str) -> float:
    """Seconds per task once running, from the goal's own events: (last `done` - first `done`)
    / (N - 1). Start-up (Python, import, connecting, the first task) is left out."""
    ts = done_times(home, goal)
    return (ts[-1] - ts[0]) / (len(ts) - 1)


def dagrun_steps(root: str, shape: str, n: int, exe: list[str] = DAGRUN) -> tuple[float, float]:
    home = tempfile.mkdtemp(dir=root, prefix=f"home-steps-{shape}-")
    cmd = [*exe, f"--home={home}", "run", "-q", "-j", str(1 if shape == "chain" else STEPS_CPUS),
           "--runner", "slurm", plan(root, shape, n, steps=True)]
    return _in_allocation(STEPS_CPUS, " ".join(shlex.quote(x) for x in cmd) + " >/dev/null"), steady(home, shape)


def srun_steps(shape: str, n: int) -> float:
    """The minimal steps floor: `srun --exact -n1 true`, xargs -P 1 (chain) / STEPS_CPUS."""
    par = 1 if shape == "chain" else STEPS_CPUS
    return _in_allocation(STEPS_CPUS, f"seq {n} | xargs -P {par} -I@ srun --exact -n1 true")


def srun_agent_steps(root: str, shape: str, n: int) -> float:
    """The honest steps floor: per task what dagrun's steps mode must do at the least -- a
    `sh -c 'exec srun ...'` (the local runner starts its srun through sh -c too) of one task on
    one node with --exact, running `/bin/sh -c true` with the prompt on stdin and stdout/stderr
    kept in files."""
    d = tempfile.mkdtemp(dir=root, prefix=f"srun-agent-{shape}-")
    prompt = os.path.join(d, "prompt.md")
    with open(prompt, "w") as f:
        f.write("p")
    par = 1 if shape == "chain" else STEPS_CPUS
    one = (f"exec srun --quiet --exact --nodes=1 --ntasks=1 --cpus-per-task=1 --job-name=floor --chdir={d} "
           f"/bin/sh -c true <{prompt} >{d}/out.$0 2>{d}/err.$0")
    return _in_allocation(STEPS_CPUS, f"seq {n} | xargs -P {par} -I@ sh -c {shlex.quote(one)} @")


def late(home: str, goal: str) -> float:
    """Seconds per task over the second half of the goal's `done` events (past a fresh Ray
    job's worker start-up)."""
    return _late(done_times(home, goal))


def _late(ts: list[float]) -> float:
    h = len(ts) // 2
    return (ts[-1] - ts[h]) / (len(ts) - 1 - h)


def head_cpu() -> float | None:
    """CPU seconds used so far by the Ray head under $RAY_HEAD_ROOT (None without it): every
    process whose command line names that folder, and the raylet's children, each with what
    it reaped (utime + stime + cutime + cstime)."""
    root = os.environ.get("RAY_HEAD_ROOT")
    if not root:
        return None
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(pid: str) -> int:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in st[11:15])
    total, raylets = 0, []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            if (root.rstrip("/") + "/").encode() in cmd:
                total += cpu(d)
                if b"/raylet/raylet" in cmd:
                    raylets.append(d)
        except OSError:
            pass
    for r in raylets:
        try:
            kids = " ".join(open(f"/proc/{r}/task/{t}/children").read() for t in os.listdir(f"/proc/{r}/task")).split()
        except OSError:
            kids = []
        for k in kids:
            try:
                total += cpu(k)
            except OSError:
                pass
    return total / tick


def _cpu_children() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def dagrun_ray(root: str, shape: str, n: int, exe: list[str] = DAGRUN) -> tuple:
    """(the whole `dagrun run --runner ray`, its steady time per task, its late-half time per task,
    the process's CPU seconds, the head's CPU seconds or None)"""
    c, h = _cpu_children(), head_cpu()
    whole, _ = dagrun(root, shape, n, "ray", exe)
    home = dagrun.last_home
    h2 = head_cpu()
    return whole, steady(home, shape), late(home, shape), _cpu_children() - c, None if h is None else h2 - h


def dagrun(root: str, shape: str, n: int, runner: str, exe: list[str] = DAGRUN) -> tuple[float, float]:
    """(the whole `dagrun run`, its steady time per task)"""
    home = tempfile.mkdtemp(dir=root, prefix=f"home-{runner}-{shape}-")
    p = plan(root, shape, n)
    t = time.perf_counter()
    subprocess.run([*exe, f"--home={home}", "run", "-q", "-j", str(n if shape == "fanout" else 1),
                    "--runner", runner, p], check=True, capture_output=True)
    dagrun.last_home = home
    return time.perf_counter() - t, steady(home, shape)


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


BENCH = os.path.dirname(os.path.abspath(__file__))   # bench/rayfloor.py: the floor's remote functions
RAY_FLOOR = r"""
import time
t0 = time.perf_counter()
import os, sys, tempfile
sys.path.insert(0, sys.argv[4])
import rayfloor
ray, true, agent = rayfloor.connect()

root = tempfile.mkdtemp()
with open(os.path.join(root, "prompt.md"), "w") as f:
    f.write("p")

def agent_task(i):
    env = dict(os.environ)
    env.update({k: f"{root}/{k.lower()}/t{i}" for k in ("DAGRUN_HOME", "DAGRUN_GOAL", "DAGRUN_TASK",
                "DAGRUN_ATTEMPT", "DAGRUN_TASK_DIR", "DAGRUN_PROMPT_FILE", "DAGRUN_OUTPUT_FILE",
                "DAGRUN_WORKER", "DAGRUN_USAGE_FILE", "DAGRUN_RAW_FILE", "DAGRUN_CHECK_FILE",
                "DAGRUN_HEARTBEAT_FILE", "DAGRUN_RUN_ID")})
    with open(os.path.join(root, "prompt.md"), "rb") as f:
        prompt = f.read()
    return agent.remote("true", root, env, prompt)

def shape_run(shape, n, f, ends=None):
    t = time.perf_counter()
    if shape == "chain":
        for i in range(n):
            r = ray.get(f(i))
            if ends is not None:
                ends.append(time.perf_counter())
    else:
        left = [f(i) for i in range(n)]
        while left:
            done, left = ray.wait(left, num_returns=1)
            r = ray.get(done[0])
            if ends is not None:
                ends.append(time.perf_counter())
    assert r == 0 or r[0] == 0, r
    return time.perf_counter() - t

def late(ends):                     # the second half's time per task (cluster._late)
    h = len(ends) // 2
    return (ends[-1] - ends[h]) / (len(ends) - 1 - h)

mode, shape, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "program":               # the honest floor as a whole program: timed from outside
    ends = []
    shape_run(shape, n, agent_task, ends)
    print((ends[-1] - ends[0]) / (n - 1), late(ends))   # its steady and late time per task, as dagrun's
else:                               # in one connected, warmed-up process
    ray.get([true.remote(), agent_task(0)])
    ends = []
    print(shape_run(shape, n, lambda i: true.remote()), shape_run(shape, n, agent_task, ends), late(ends))
"""


def ray_floor(shape: str, n: int) -> tuple[float, float, float]:
    """(min, agent, the agent floor's late-half time per task): N tasks' time from a connected,
    warmed-up driver."""
    r = subprocess.run([sys.executable, "-c", RAY_FLOOR, "inproc", shape, str(n), BENCH], capture_output=True, text=True,
                       check=True)
    a, b, c = r.stdout.strip().splitlines()[-1].split()
    return float(a), float(b), float(c)


def ray_program(shape: str, n: int) -> tuple:
    """(the whole program, its steady time per task, its late-half time per task, its CPU seconds,
    the head's CPU seconds or None)"""
    c, h = _cpu_children(), head_cpu()
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RAY_FLOOR, "program", shape, str(n), BENCH], capture_output=True, text=True,
                       check=True)
    whole = time.perf_counter() - t
    st, lt = r.stdout.strip().splitlines()[-1].split()
    h2 = head_cpu()
    return whole, float(st), float(lt), _cpu_children() - c, None if h is None else h2 - h


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
    which = sys.argv[3].split(",") if len(sys.argv) > 3 else ["slurm", "steps", "ray"]
    med = statistics.median
    if "slurm" in which or "steps" in which:
        print("Slurm settings:\n" + settings())
    print(f"medians of {REPS} interleaved run(s); dagrun: {' '.join(DAGRUN)}; load average at start: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    m: dict[str, list] = {}

    def add(k, v):
        if isinstance(v, tuple):
            m.setdefault(k, []).append(v[0])
            for extra, x in zip((" steady", " late", " cpu", " head"), v[1:]):
                if x is not None:
                    m.setdefault(k + extra, []).append(x)
        else:
            m.setdefault(k, []).append(v)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as root:
        for _ in range(REPS):
            for shape, n in (("chain", chain), ("fanout", fan)):
                add(f"{shape} local", dagrun(root, shape, n, "local"))
                if "slurm" in which:
                    add(f"{shape} slurm floor", floor(root, shape, n))
                    if shape == "chain":
                        add(f"{shape} srun", srun_chain(n))
                    add(f"{shape} slurm", dagrun(root, shape, n, "slurm"))
                if "steps" in which:
                    add(f"{shape} steps floor min", srun_steps(shape, n))
                    add(f"{shape} steps floor agent", srun_agent_steps(root, shape, n))
                    add(f"{shape} steps", dagrun_steps(root, shape, n))
                    if BASELINE:
                        add(f"{shape} steps base", dagrun_steps(root, shape, n, BASELINE))
                if "ray" in which:
                    fmin, fagent, flate = ray_floor(shape, n)
                    add(f"{shape} ray floor min", fmin)
                    add(f"{shape} ray floor agent", fagent)
                    add(f"{shape} ray floor agent late", flate)
                    add(f"{shape} ray program", ray_program(shape, n))
                    add(f"{shape} ray", dagrun_ray(root, shape, n))
                    if BASELINE:
                        add(f"{shape} ray base", dagrun_ray(root, shape, n, BASELINE))
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    def ms(x):
        return f"{x * 1000:8.1f}ms" if x is not None else f"{'-':>10}"
    print(f"\n{'shape':7} {'N':>4} {'what':18} {'whole/task':>10} {'steady/task':>11} {'late/task':>10} {'cpu/task':>10} {'head/task':>10}")
    for shape, n in (("chain", chain), ("fanout", fan)):
        for what in ("local", "slurm floor", "srun", "slurm", "steps floor min", "steps floor agent", "steps",
                     "ray floor min", "ray floor agent", "ray program", "ray", "steps base", "ray base"):
            k = f"{shape} {what}"
            if k not in m:
                continue
            st = med(m[k + " steady"]) if k + " steady" in m else (med(m[k]) / n if "floor" in what or what == "srun"
                                                                   else None)
            lt = med(m[k + " late"]) if k + " late" in m else None
            cpu = med(m[k + " cpu"]) / n if k + " cpu" in m else None
            head = med(m[k + " head"]) / n if k + " head" in m else None
            print(f"{shape:7} {n:4d} {what:18} {ms(med(m[k]) / n)} {ms(st):>11} {ms(lt)} {ms(cpu)} {ms(head)}")
        print()
    print("ratios per task: steady (dagrun's from its events, start-up left out) against the floors, "
          "which run warmed up; whole runs where both sides start from nothing")
    for shape, n in (("chain", chain), ("fanout", fan)):
        def r(a, b):
            return f"{a / b:5.2f}x ({(a - b) * 1000:+.1f} ms)"
        if "slurm" in which:
            print(f"  {shape:7} slurm jobs, whole  / sbatch floor      {r(med(m[f'{shape} slurm']) / n, med(m[f'{shape} slurm floor']) / n)}")
        if "steps" in which:
            for b in ("", " base") if BASELINE else ("",):
                st = med(m[f"{shape} steps{b} steady"])
                for f in ("agent", "min"):
                    print(f"  {shape:7} steps{b:5}, steady / steps floor {f:5} {r(st, med(m[f'{shape} steps floor {f}']) / n)}")
        if "ray" in which:
            for b in ("", " base") if BASELINE else ("",):
                st = med(m[f"{shape} ray{b} steady"])
                print(f"  {shape:7} ray{b:5}, steady   / ray program steady {r(st, med(m[f'{shape} ray program steady']))}")
                for f in ("agent", "min"):
                    print(f"  {shape:7} ray{b:5}, steady   / ray floor {f:5}    {r(st, med(m[f'{shape} ray floor {f}']) / n)}")
                print(f"  {shape:7} ray{b:5}, whole    / ray program whole  "
                      f"{r(med(m[f'{shape} ray{b}']) / n, med(m[f'{shape} ray program']) / n)}")
                lt = med(m[f"{shape} ray{b} late"])
                print(f"  {shape:7} ray{b:5}, late     / ray floor agent late {r(lt, med(m[f'{shape} ray floor agent late']))}")
                print(f"  {shape:7} ray{b:5}, late     / ray program late   {r(lt, med(m[f'{shape} ray program late']))}")
                print(f"  {shape:7} ray{b:5}, cpu      / ray program cpu    "
                      f"{r(med(m[f'{shape} ray{b} cpu']) / n, med(m[f'{shape} ray program cpu']) / n)}")
                if f"{shape} ray{b} head" in m:
                    print(f"  {shape:7} ray{b:5}, head cpu / ray program head   "
                          f"{r(med(m[f'{shape} ray{b} head']) / n, med(m[f'{shape} ray program head']) / n)}")
        print(f"  {shape:7} local runner, steady: {med(m[f'{shape} local steady']) * 1000:.1f} ms a task "
              f"(dagrun's own cost with a local `true`)")


if __name__ == "__main__":
    main()
