"""What a code workspace costs: creating a task's git worktree (prepare) and committing
what it changed (capture), on a generated repository of N files (default 20 000).

    .venv/bin/python bench/workspace.py [FILES] [ROUNDS]

Per round, in a fresh goal: prepare A and B (base only: `git worktree add` of the whole
tree, shared object store), one file changed in each and captured, then prepare C, which
depends on both (merge-tree of the two heads + worktree add). Prints the median and the
worst of each step. The target is < 1 s per workspace on these machines.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from dagrun import workspace as wsp
from dagrun.ops import submit
from dagrun.store import Home

ENV = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
ENV.update(GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@x")


def make_repo(path: str, n: int) -> None:
    os.makedirs(path)
    subprocess.run(["git", "init", "-q", "-b", "main", path], check=True, env=ENV)
    per = 100
    for i in range(n):
        d = os.path.join(path, "src", f"pkg{i // per:04d}")
        if i % per == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"mod{i % per:03d}.py"), "w") as f:
            f.write(f"# module {i}\nVALUE = {i}\n\ndef f(x):\n    return x + VALUE\n")
    subprocess.run(["git", "add", "-A"], cwd=path, check=True, env=ENV)
    subprocess.run(["git", "commit", "-qm", "generated"], cwd=path, check=True, env=ENV)


def one_round(root: str, k: int) -> dict[str, float]:
    plan_path = os.path.join(root, f"g{k}.json")
    with open(plan_path, "w") as f:
        json.dump({"goal": f"g{k}", "workspace": {"repo": "repo", "base": "main"}, "defaults": {"agent": "true"},
                   "tasks": [{"id": "A", "prompt": "a"}, {"id": "B", "prompt": "b"},
                             {"id": "C", "prompt": "c", "deps": ["A", "B"]}]}, f)
    home = Home(os.path.join(root, "home"))
    submit(home, plan_path)
    plan = home.load_plan(f"g{k}")
    out = {}
    for t, path in (("A", "src/pkg0000/mod000.py"), ("B", "src/pkg0199/mod099.py")):
        os.makedirs(home.task_dir(plan.goal, t), exist_ok=True)
        t0 = time.perf_counter()
        p = wsp.prepare(home, plan, t)
        out[f"prepare {t} (base)"] = time.perf_counter() - t0
        with open(os.path.join(p.path, path), "a") as f:
            f.write(f"# changed by {t}\n")
        t0 = time.perf_counter()
        wsp.capture(home, plan, t)
        out[f"capture {t} (1 file)"] = time.perf_counter() - t0
        with open(home.marker_path(plan.goal, t, "done"), "w") as f:
            f.write("{}")
    os.makedirs(home.task_dir(plan.goal, "C"), exist_ok=True)
    t0 = time.perf_counter()
    wsp.prepare(home, plan, "C")
    out["prepare C (2 prerequisites merged)"] = time.perf_counter() - t0
    return out


def floor(root: str, n: int) -> float:
    """The part no checkout avoids: creating n small files (and their folders) on this disk."""
    base = os.path.join(root, "floor")
    t0 = time.perf_counter()
    for i in range(n):
        d = os.path.join(base, f"pkg{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"mod{i % 100:03d}.py"), "w") as f:
            f.write("x = 1\n")
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory(prefix="dagrun-ws-bench-") as root:
        t0 = time.perf_counter()
        make_repo(os.path.join(root, "repo"), n)
        print(f"repository: {n} files, made in {time.perf_counter() - t0:.1f} s ({root})")
        results: dict[str, list[float]] = {}
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for k in range(rounds):
            for step, s in one_round(root, k).items():
                results.setdefault(step, []).append(s)
        results["floor: create as many files (python)"] = [floor(os.path.join(root, f"f{k}"), n) for k in range(rounds)]
        for step, xs in results.items():
            print(f"{step:<42} median {statistics.median(xs) * 1000:7.0f} ms   worst {max(xs) * 1000:7.0f} ms"
                  f"   ({len(xs)} rounds)")


if __name__ == "__main__":
    main()
