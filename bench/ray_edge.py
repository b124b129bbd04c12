"""One edge of a `--runner ray` chain in pieces: where the time goes between one task's Ray
result and the next task's Ray submission (the per-edge critical path). An engine runs a
no-op chain of N in this process (connected and warmed up first, so start-up is left out);
its functions are wrapped to take a timestamp at each step:

  cb       Ray's callback thread delivers task i's result      (RayRunner._done)
  wake     the engine's loop starts its next turn             (Engine._loop_once)
  commit   task i's commit begins / ends                       (Engine._commit: output, done, events)
  marker   its done marker is published; released: its claim folder is gone; finished:
           transitions.finish returns (events held in memory, the scheduler's changes)
  claim    task i+1's claim begins                             (lifecycle.claim_task)
  mkdir    its claim folder exists                             (claim.acquire returns)
  claimed  claim_task returns                                  (before: prompt.md written)
  start    runner.start begins / the Ray task is submitted     (RayRunner.start)
  remote   Ray's RemoteFunction._remote (the submission proper) begins / returns
  running  owner.json and the `running` event are written      (Engine._running)
  sleep    the loop goes to sleep in poll(2) again                (Engine._wait)

and of the Ray task: submission -> run_agent begins on the node -> it returns -> the callback.

and prints the median of each gap over the chain's edges, REPS runs interleaved between the
checkouts given. FANOUT=N also runs a fan-out of N no-op tasks (-j N) in the same process after
the chain: its steady time a task (first commit to last, over N-1) and the process's CPU a
task, beside the floor's (N agent tasks submitted at once, ray.wait one at a time). CHECKOUTS=name=DIR;... measures other source trees (e.g. main) with this
venv, each in its own child process (default: this checkout). Needs RAY_ADDRESS.

    RAY_ADDRESS=127.0.0.1:6379 REPS=5 FANOUT=100 CHECKOUTS="base=/tmp/old;now=." .venv/bin/python bench/ray_edge.py 40
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ORDER = ["cb", "wake", "commit0", "marker", "released", "finished", "commit1", "claim0", "mkdir", "claimed", "start0", "remote0", "remote1", "start1", "running", "sleep"]


def child(root: str, n: int) -> None:
    """In a fresh process: import the checkout at root, run the chain, print the gaps (JSON)."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, root)
    from dagrun import claim as claims
    from dagrun import engine, rayrun
    from dagrun.edit import submit
    from dagrun.store import Home

    marks: list[tuple[str, float]] = []
    now = time.time               # (epoch: the node's run_agent times compare with it on one machine)

    def wrap(obj, name, before=None, after=None):
        f = getattr(obj, name, None)
        if f is None:
            return

        @functools.wraps(f)         # (its signature stays the function's: rayrun inspects it)
        def w(*a, **k):
            if before:
                marks.append((before, now()))
            try:
                return f(*a, **k)
            finally:
                if after:
                    marks.append((after, now()))
        setattr(obj, name, w)

    inner = rayrun.run_agent

    def timed_agent(*a, **k):          # on the node: when run_agent began and returned (epoch)
        import time as _t
        t0 = _t.time()
        r = inner(*a, **k)
        if isinstance(r, dict):
            r["_t"] = (t0, _t.time())
        return r
    timed_agent.__module__ = rayrun.__name__     # shipped by value with the module
    rayrun.run_agent = timed_agent
    node: list[tuple[float, float]] = []
    done = rayrun.RayRunner._done

    def on_done(self, key, result):
        if isinstance(result, dict) and "_t" in result:
            node.append(result.pop("_t"))
        return done(self, key, result)
    rayrun.RayRunner._done = on_done
    wrap(rayrun.RayRunner, "_done", "cb")
    wrap(engine.Engine, "_loop_once", "wake")
    wrap(engine.Engine, "_commit", "commit0", "commit1")
    from dagrun import lifecycle, transitions
    wrap(lifecycle, "_publish_from_owner", None, "marker")
    wrap(lifecycle.claims, "release", None, "released")
    wrap(transitions, "finish", None, "finished")
    wrap(engine, "claim_task", "claim0", "claimed")
    wrap(claims, "acquire", None, "mkdir")
    wrap(rayrun.RayRunner, "start", "start0", "start1")
    wrap(rayrun.RayRunner, "submit", "start0", "start1")
    wrap(engine.Engine, "_running", None, "running")
    wrap(engine.Engine, "_wait", "sleep", None)
    from ray.remote_function import RemoteFunction
    wrap(RemoteFunction, "_remote", "remote0", "remote1")

    with tempfile.TemporaryDirectory(prefix="bench-ray-edge-") as d:
        home = Home(os.path.join(d, "home"))
        home.ensure()
        p = os.path.join(d, "chain.json")
        tasks = [{"id": f"t{i}", "prompt": "p", "deps": [f"t{i - 1}"] if i else []} for i in range(n)]
        with open(p, "w") as f:
            json.dump({"goal": "chain", "defaults": {"agent": "true", "runner": "ray"}, "tasks": tasks}, f)
        g = submit(home, p).goal
        r = rayrun.RayRunner()
        r._init({})
        import ray
        warm = ("true", d, {"DAGRUN_RUN_ID": "warm"}, b"", None, 1.0)
        packed = hasattr(rayrun, "attempt")       # (its arguments in one tuple since session 9)
        ray.get([r._remote.remote(warm) if packed else r._remote.remote(*warm)
                 for _ in range(2)])              # the workers exist before the chain starts
        eng = engine.Engine(home, jobs=1, goal=g, until_idle=True, runner=r)
        rc = eng.run()
        assert rc == 0, rc
        floor = floor_chain(ray, d, n)
        fan = int(os.environ.get("FANOUT") or 0)
        if fan > 1:                 # the fan-out: steady time a task (first commit to last) and CPU
            at = len(marks)
            p = os.path.join(d, "fan.json")
            with open(p, "w") as f:
                json.dump({"goal": "fan", "defaults": {"agent": "true", "runner": "ray"},
                           "tasks": [{"id": f"f{i}", "prompt": "p"} for i in range(fan)]}, f)
            g = submit(home, p).goal
            r = rayrun.RayRunner()
            r._init({})
            eng = engine.Engine(home, jobs=fan, goal=g, until_idle=True, runner=r)
            c0 = time.process_time()
            rc = eng.run()
            cpu = time.process_time() - c0
            assert rc == 0, rc
            ends = [t for k, t in marks[at:] if k == "commit1"]
            fan_out = {"fan-out steady a task": [(ends[-1] - ends[0]) / (len(ends) - 1) * 1000],
                       "fan-out driver CPU a task": [cpu / fan * 1000]}
            fan_out.update(floor_fanout(ray, d, fan))
        del marks[at if fan > 1 else len(marks):]
    # split at each callback: one edge is cb(i) .. the next submission
    edges: list[dict] = []
    cur: dict | None = None
    for name, t in marks:
        if name == "cb":
            if cur is not None:
                edges.append(cur)
            cur = {"cb": t}
        elif cur is not None and name not in cur:
            cur[name] = t
    gaps: dict[str, list[float]] = {}
    for e in edges:
        names = [k for k in ORDER if k in e]
        for a, b in zip(names, names[1:]):
            gaps.setdefault(f"{a}->{b}", []).append((e[b] - e[a]) * 1000)
        if "start1" in e:
            gaps.setdefault("edge cb->submitted", []).append((e["start1"] - e["cb"]) * 1000)
    subs = [t for k, t in marks if k == "start1"]
    turns = []                   # the loop's turns between a submission and the next result
    for i, (k, _) in enumerate(marks):
        if k == "start1":
            j = i + 1
            while j < len(marks) and marks[j][0] != "cb":
                j += 1
            turns.append(sum(1 for x, _ in marks[i:j] if x == "wake"))
    gaps["turns while it runs"] = turns

    cbs = [t for k, t in marks if k == "cb"]
    gaps["ray submitted->cb"] = [(c - s) * 1000 for s, c in zip(subs, cbs)]
    gaps["  submitted->node"] = [(a - s) * 1000 for s, (a, _) in zip(subs, node)]
    gaps["  run_agent on node"] = [(b - a) * 1000 for a, b in node]
    gaps["  node->cb"] = [(c - b) * 1000 for (_, b), c in zip(node, cbs)]
    gaps["task (cb to cb)"] = [(b - a) * 1000 for a, b in zip(cbs, cbs[1:])]
    for k, v in floor.items():
        gaps[k] = v
    if fan > 1:
        gaps.update(fan_out)
    print(json.dumps({k: statistics.median(v) for k, v in gaps.items()}))


def floor_env(d: str) -> dict:
    """The floor's environment: the driver's plus the DAGRUN_* variables dagrun sends."""
    return {**os.environ, **{k: os.path.join(d, k) for k in (
        "DAGRUN_HOME", "DAGRUN_GOAL", "DAGRUN_TASK", "DAGRUN_ATTEMPT", "DAGRUN_TASK_DIR", "DAGRUN_PROMPT_FILE",
        "DAGRUN_OUTPUT_FILE", "DAGRUN_WORKER", "DAGRUN_USAGE_FILE", "DAGRUN_RAW_FILE", "DAGRUN_CHECK_FILE",
        "DAGRUN_HEARTBEAT_FILE", "DAGRUN_RUN_ID")}}


def floor_chain(ray, d: str, n: int) -> dict[str, list[float]]:
    """The honest Ray floor (bench/ray_runner.py's `agent`: read the prompt file, a remote
    function running `sh -c true` with it on stdin and the same environment, returning code and
    outputs; ray.get) as a chain of n in the same process, in the same pieces."""
    @ray.remote(num_cpus=1, max_retries=0)
    def agent(cmd, cwd, env, prompt):
        t0 = time.time()
        p = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, input=prompt, capture_output=True)
        return p.returncode, p.stdout, p.stderr, t0, time.time()

    prompt_path = os.path.join(d, "prompt-floor.md")
    with open(prompt_path, "w") as f:
        f.write("p")
    env = floor_env(d)
    ray.get([agent.remote("true", d, env, b"p") for _ in range(2)])
    out: dict[str, list[float]] = {}
    last = None
    for _ in range(n):
        t0 = time.time()
        with open(prompt_path, "rb") as f:
            prompt = f.read()
        ref = agent.remote("true", d, env, prompt)
        t1 = time.time()
        r = ray.get(ref)
        t2 = time.time()
        for k, v in (("floor .remote", t1 - t0), ("floor submitted->node", r[3] - t1),
                     ("floor run on node", r[4] - r[3]), ("floor node->get", t2 - r[4])):
            out.setdefault(k, []).append(v * 1000)
        if last is not None:
            out.setdefault("floor task", []).append((t2 - last) * 1000)
        last = t2
    return out


def floor_fanout(ray, d: str, n: int) -> dict[str, list[float]]:
    """The honest floor of a fan-out (bench/cluster.py's): n agent tasks submitted at once,
    their results taken as they come (ray.wait, one at a time); steady time a task (first
    result to last) and this process's CPU a task."""
    @ray.remote(num_cpus=1, max_retries=0)
    def agent(cmd, cwd, env, prompt):
        p = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, input=prompt, capture_output=True)
        return p.returncode, p.stdout, p.stderr

    prompt_path = os.path.join(d, "prompt-floor.md")
    env = floor_env(d)
    ray.get(agent.remote("true", d, env, b"p"))
    c0 = time.process_time()
    left = []
    for i in range(n):
        with open(prompt_path, "rb") as f:
            prompt = f.read()
        left.append(agent.remote("true", d, {**env, "DAGRUN_TASK": f"f{i}", "DAGRUN_RUN_ID": f"r{i}"}, prompt))
    ends = []
    while left:
        done, left = ray.wait(left, num_returns=1)
        ray.get(done[0])
        ends.append(time.time())
    cpu = time.process_time() - c0
    return {"floor fan-out steady": [(ends[-1] - ends[0]) / (n - 1) * 1000], "floor fan-out CPU": [cpu / n * 1000]}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    reps = int(os.environ.get("REPS") or 3)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = os.environ.get("CHECKOUTS") or f"now={here}"
    outs = {k: os.path.abspath(v) for k, _, v in (x.partition("=") for x in spec.split(";"))}
    load0 = os.getloadavg()[0]
    res: dict[str, list[dict]] = {}
    for _ in range(reps):
        for k, root in outs.items():
            r = subprocess.run([sys.executable, __file__, "--child", root, str(n)], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{k}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            res.setdefault(k, []).append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"chain of {n}, medians of {reps} runs (each the median over its edges), ms; "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    keys = [k for k in res[next(iter(res))][0]]
    for k in {k for v in res.values() for r in v for k in r}:
        if k not in keys:
            keys.append(k)
    print(f"  {'gap':24}" + "".join(f"{k:>10}" for k in res))
    for g in keys:
        print(f"  {g:24}" + "".join(
            f"{statistics.median(r[g] for r in v if g in r):10.2f}" if any(g in r for r in v) else f"{'-':>10}"
            for v in res.values()))


if __name__ == "__main__":
    main()
