"""Install like a tool: a wheel built from the repo, installed into a fresh venv in an empty
folder (as `pipx install` / `uv tool install` do), has the examples, lobster.sh, the systemd
units and crontab.example inside it, and runs the bundled example offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow
def test_wheel_installs_into_a_clean_venv_and_runs_the_bundled_example(tmp_path):
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k not in ("DAGRUN_HOME", "PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, env=env, timeout=600, cwd=tmp_path)
    (whl,) = wheels.glob("dagrun-*.whl")
    venv = tmp_path / "tool"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(whl)], check=True, env=env, timeout=900)
    dagrun = venv / "bin" / "dagrun"
    work = tmp_path / "clean"
    work.mkdir()

    def sh(*args, check=True):
        p = subprocess.run([str(dagrun), *map(str, args)], capture_output=True, text=True, cwd=work,
                           env={**env, "FAKE_AGENT_SLEEP": "0"}, timeout=300)
        assert not check or p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    # the installed package, not the repo: its files live in the venv
    share = subprocess.run([str(venv / "bin" / "python"), "-c", "import dagrun.scaffold as s; print(s.SHARE)"],
                           capture_output=True, text=True, check=True, cwd=work).stdout.strip()
    assert share.startswith(str(venv))
    for rel in ("examples/add-auth/dag.json", "examples/minimal/dag.json", "examples/fake-agent.sh",
                "contrib/lobster.sh", "crontab.example", "examples/systemd/dagrun-worker.service",
                "examples/systemd/dagrun-worker-idle.service", "examples/systemd/dagrun-worker-idle.timer"):
        assert (Path(share) / rel).is_file(), rel
    schema = sh("schema", "--path").stdout.strip()
    assert schema.startswith(str(venv)) and json.loads(Path(schema).read_text())

    sh("init", "--example", "add-auth")
    r = sh("run", "add-auth/dag.json")
    assert "goal add-auth done: 6 done" in r.stdout
    assert (work / ".dagrun" / "goals" / "add-auth" / "tasks" / "review" / "done").exists()
    sh("init", "--systemd", "--cron", "--lobster")
    assert f"ExecStart={dagrun} worker -j 4" in (work / "dagrun-worker.service").read_text()
    assert f"{dagrun} worker --until-idle" in (work / "crontab").read_text()
    assert sh("man").stdout.startswith(".TH DAGRUN 1")
