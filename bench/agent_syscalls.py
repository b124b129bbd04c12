#!/usr/bin/env python3
"""System calls of starting agents: `strace -f -ff` of one `dagrun run` of fan-out-N (bench/run.py's
workload, agent `true`, -j 8), counted per task file: the agents (before their first
successful exec, and in all), the spawner threads (the tasks that vfork), the rest.

    python3 bench/agent_syscalls.py DAGRUN_CMD N [VAR=value ...]    # e.g. .venv/bin/dagrun 498

VAR=value pairs go into the run's environment (DAGRUN_DIRECT_EXEC=0: the same build through
`sh -c`); KEEP=1 keeps the strace files. Needs strace. docs/performance.md, "ninth round".
"""
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402
build, n = sys.argv[1], int(sys.argv[2])
extra = dict(a.split("=", 1) for a in sys.argv[3:])
d = tempfile.mkdtemp(prefix="exec9st-", dir="/tmp")
ids, deps = B.fanout(n); B.write_workload(os.path.join(d, "w"), "g", ids, deps)
env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
env["DAGRUN_HOME"] = os.path.join(d, "home"); env.update(extra)
os.makedirs(os.path.join(d, "st"))
subprocess.run(["strace", "-f", "-ff", "-o", os.path.join(d, "st", "t"), build, "run", os.path.join(d, "w", "dag.json"), "-j", "8", "-q"],
               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
cat = collections.defaultdict(list); names = collections.Counter()
spawn_calls = []
for f in glob.glob(os.path.join(d, "st", "t.*")):
    lines = open(f).read().splitlines()
    ex = [i for i, l in enumerate(lines) if l.startswith("execve(") and "= 0" in l]
    calls = [l for l in lines if re.match(r"^[a-z_0-9]+\(", l)]
    if ex and any("true" in lines[i] or "/bin/sh" in lines[i] for i in ex) and not any("python" in lines[i] for i in ex):
        first = ex[0]
        pre = [l for l in lines[:first] if re.match(r"^[a-z_0-9]+\(", l)]
        cat["agent:before-exec"].append(len(pre)); cat["agent:all"].append(len(calls)); cat["agent:execs"].append(len(ex))
        for l in pre: names[l.split("(")[0]] += 1
    elif any(l.startswith("clone3(") or l.startswith("vfork(") or (l.startswith("clone(") and "CLONE_VFORK" in l) for l in lines) and not ex:
        cat["spawner"].append(len(calls))
        for l in calls: spawn_calls.append(l.split("(")[0])
        nv = sum(1 for l in lines if "CLONE_VFORK" in l or l.startswith("vfork("))
        cat["spawner:spawns"].append(nv)
    else:
        cat["other"].append(len(calls))
agents = len(cat["agent:all"])
print(f"{build} {extra}: agents={agents}")
for k, v in cat.items():
    print(f"  {k:20s} tasks={len(v)} total={sum(v)} per-agent={sum(v)/max(agents,1):.1f}")
sc = collections.Counter(spawn_calls); print("  spawner calls per spawn:", {k: round(c / max(agents, 1), 1) for k, c in sc.most_common(16)})
print("  before-exec calls per agent:", {k: round(c / max(agents, 1), 1) for k, c in names.most_common(12)})
print(d) if os.environ.get("KEEP") else shutil.rmtree(d, ignore_errors=True)
