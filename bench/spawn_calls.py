#!/usr/bin/env python3
"""System calls per task of the engine's loop thread and per spawn of its spawner threads:
`strace -f -ff` of one `dagrun run` of fan-out-N (bench/run.py's workload, agent `true`,
-j 8), the loop thread being the process's main thread (the lowest-numbered python file),
the spawners the threads that vfork, the agents the files that exec `true`.

    python3 bench/spawn_calls.py DAGRUN_CMD [N] [--scratch DIR] [VAR=value ...]

The loop thread's futex calls are its GIL hand-offs with the spawner threads (each call of
a spawner that releases the GIL is a point where the loop may park until the spawner's next
release). docs/performance.md, "2026-12-06 (8)". Needs strace.
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

args = sys.argv[1:]
scratch = "/tmp"
if "--scratch" in args:
    i = args.index("--scratch")
    scratch = args[i + 1]
    del args[i:i + 2]
build = args[0]
n = int(args[1]) if len(args) > 1 and "=" not in args[1] else 498
extra = dict(a.split("=", 1) for a in args[1:] if "=" in a)
d = tempfile.mkdtemp(prefix="spcalls-", dir=scratch)
ids, deps = B.fanout(n)
B.write_workload(os.path.join(d, "w"), "g", ids, deps)
env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
env["DAGRUN_HOME"] = os.path.join(d, "home")
env.update(extra)
os.makedirs(os.path.join(d, "st"))
subprocess.run(["strace", "-f", "-ff", "-qq", "-o", os.path.join(d, "st", "t"), build, "run",
                os.path.join(d, "w", "dag.json"), "-j", "8", "-q"],
               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
CALL = re.compile(r"^([a-z_0-9]+)\(")
tasks = n + 2
pythons, spawners, agents = [], [], []
for f in sorted(glob.glob(os.path.join(d, "st", "t.*")), key=lambda p: int(p.rsplit(".", 1)[1])):
    lines = open(f).read().splitlines()
    names = collections.Counter(m.group(1) for ln in lines if (m := CALL.match(ln)))
    execs = [ln for ln in lines if ln.startswith("execve(")]
    if execs and "python" not in execs[-1] and any(ln.startswith("execve(") and " = 0" in ln for ln in lines):
        agents.append(names)
    elif names["vfork"] or any("CLONE_VFORK" in ln for ln in lines):
        spawners.append(names)
    else:
        pythons.append((f, names))
# the loop thread: the python file with the most calls among the first ones (the main thread
# of the python process; a shell launcher exec'd python in the same pid)
loop = max(pythons, key=lambda p: sum(p[1].values()))[1]
spawns = sum(s["vfork"] + s["clone"] for s in spawners) or 1
sp = sum(spawners, collections.Counter())
ag = sum(agents, collections.Counter())
print(f"{build} {extra} fan-out-{n}: tasks={tasks} spawns={spawns} agents={len(agents)} spawner threads={len(spawners)}")
print(f"  loop thread per task: all={sum(loop.values()) / tasks:.1f} futex={loop['futex'] / tasks:.1f}",
      {k: round(c / tasks, 1) for k, c in loop.most_common(14)})
print(f"  spawners per spawn: all={sum(sp.values()) / spawns:.1f} futex={sp['futex'] / spawns:.1f}",
      {k: round(c / spawns, 1) for k, c in sp.most_common(16)})
print(f"  agents per agent: all={sum(ag.values()) / max(len(agents), 1):.1f}",
      {k: round(c / max(len(agents), 1), 1) for k, c in ag.most_common(6)})
print(d) if os.environ.get("KEEP") else shutil.rmtree(d, ignore_errors=True)
