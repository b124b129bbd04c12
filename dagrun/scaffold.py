"""`dagrun init`: the files shipped inside the package (dagrun/share: examples, the systemd
units, crontab.example, contrib/lobster.sh), written out with the path of the installed
dagrun filled in, and a starter dag.json whose "$schema" is the installed JSON Schema.

Every file is published by rename (whole or absent) and an existing file is never
overwritten without `force`."""
from __future__ import annotations

import json
import os
import re
import shlex

from . import fsio
from .errors import Refused, UsageError
from .plan import SCHEMA_PATH

SHARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "share")
UNITS = ("dagrun-worker.service", "dagrun-worker-idle.service", "dagrun-worker-idle.timer")
SHIPPED_EXE = "%h/.local/bin/dagrun"          # where pipx / uv tool install put it


def share_path(*parts: str) -> str:
    return os.path.join(SHARE, *parts)


def _read(*parts: str) -> str:
    with open(share_path(*parts), encoding="utf-8") as f:
        return f.read()


def _write(path: str, text: str, force: bool, mode: int | None = None) -> str:
    if os.path.lexists(path) and not force:
        raise Refused(f"{path} exists; remove it or pass --force to overwrite it")
    fsio.write_named(path, text.encode())
    if mode is not None:
        os.chmod(path, mode)
    return path


def starter_plan(goal: str, agent: str) -> str:
    plan = {
        "$schema": "file://" + os.path.abspath(SCHEMA_PATH),
        "goal": goal,
        "defaults": {"agent": agent, "timeout": 900, "retries": 1},
        "max_parallel": 4,
        "tasks": [
            {"id": "research", "prompt": "Survey the options for ... and list their trade-offs."},
            {"id": "design", "prompt": "Design ... from the survey above.", "deps": ["research"]},
            {"id": "implement", "prompt": "Implement the design above.", "deps": ["design"]},
            {"id": "review", "prompt": "Review the implementation above; list concrete problems.",
             "deps": ["implement"]},
        ],
    }
    return json.dumps(plan, indent=2) + "\n"


def init_plan(folder: str, *, goal: str | None, agent: str, force: bool) -> list[str]:
    folder = os.path.abspath(folder)
    goal = goal or _goal_from(folder)
    return [_write(os.path.join(folder, "dag.json"), starter_plan(goal, agent), force)]


def _goal_from(folder: str) -> str:
    import re
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(folder.rstrip("/"))).strip("-.")[:128]
    return name if name and name[0].isalnum() else "my-goal"


def _unit_quote(exe: str) -> str:
    return f'"{exe}"' if any(c.isspace() for c in exe) else exe


def systemd_units(folder: str, *, exe: str, home: str | None, workdirs: list[str], force: bool) -> list[str]:
    out = []
    for name in UNITS:
        text = _read("examples", "systemd", name).replace(SHIPPED_EXE, _unit_quote(exe))
        if home:
            text = text.replace("Environment=DAGRUN_HOME=%h/.dagrun", f"Environment=DAGRUN_HOME={home}")
        if workdirs or home:
            rw = " ".join([home or "%h/.dagrun", *workdirs])
            text = text.replace("ReadWritePaths=%h\n", f"ReadWritePaths={rw}\n")
        out.append(_write(os.path.join(folder, name), text, force))
    return out


def crontab(folder: str, *, exe: str, home: str | None, force: bool) -> list[str]:
    user_home = os.path.expanduser("~")
    text = _read("crontab.example")
    text = text.replace("PATH=/home/me/.local/bin:", f"PATH={os.path.dirname(exe)}:")
    text = text.replace("DAGRUN_HOME=/home/me/.dagrun", f"DAGRUN_HOME={home or user_home + '/.dagrun'}")
    text = text.replace("/home/me", user_home)
    text = text.replace("    dagrun worker", f"    {shlex.quote(exe)} worker")
    return [_write(os.path.join(folder, "crontab"), text, force)]


def lobster(folder: str, *, exe: str, force: bool) -> list[str]:
    text = _read("contrib", "lobster.sh")
    text = text.replace("DAGRUN=${DAGRUN:-dagrun}", "DAGRUN=${DAGRUN:-" + shlex.quote(exe) + "}")
    return [_write(os.path.join(folder, "lobster.sh"), text, force, 0o755)]


def examples() -> list[str]:
    base = share_path("examples")
    return sorted(n for n in os.listdir(base) if os.path.isfile(os.path.join(base, n, "dag.json")))


def example(folder: str, name: str, *, force: bool) -> list[str]:
    """Copy a bundled example goal to folder/NAME/ (and the fake agent it calls beside it):
    it runs offline, `dagrun run NAME/dag.json`."""
    if name not in examples():
        raise UsageError(f"--example {name!r}: the bundled examples are {', '.join(examples())}")
    src = share_path("examples", name)
    out = []
    for root, dirs, files in os.walk(src):
        # an installer byte-compiles every .py it installs, the example's seed code included:
        # the bytecode is not part of the example
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith((".pyc", ".pyo")):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            dst = os.path.join(folder, name, rel)
            fsio.makedirs(os.path.dirname(dst))
            text = _read("examples", name, rel)
            if rel == "dag.json":       # the repo-relative "$schema" would dangle: the installed one
                text = re.sub(r'"\$schema": "[^"]*"', lambda _m: json.dumps("$schema") + ": "
                              + json.dumps("file://" + os.path.abspath(SCHEMA_PATH)), text, count=1)
            out.append(_write(dst, text, force))
    out.append(_write(os.path.join(folder, "fake-agent.sh"), _read("examples", "fake-agent.sh"), force, 0o755))
    return out


def check_folder(folder: str) -> str:
    if not os.path.isdir(folder):
        raise UsageError(f"--dir {folder}: no such folder")
    return os.path.abspath(folder)
