"""The unattended-operation files do what README says: crontab.example's command and the
systemd units' ExecStart lines are run for real against a temporary home (paths swapped),
and the units pass `systemd-analyze verify` where it exists."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import DAGRUN, EXAMPLES, REPO, run, task_dir, wait_for

UNITS = REPO / "examples" / "systemd"


def fake_user_home(tmp_path: Path) -> Path:
    """A $HOME with ~/.local/bin/dagrun pointing at the installed command."""
    h = tmp_path / "user"
    (h / ".local" / "bin").mkdir(parents=True)
    (h / ".local" / "bin" / "dagrun").symlink_to(DAGRUN)
    return h


def test_crontab_example_runs_a_goal(tmp_path):
    user = fake_user_home(tmp_path)
    text = (REPO / "crontab.example").read_text().replace("/home/me", str(user))
    env_lines = [x for x in text.splitlines() if re.match(r"^[A-Z_]+=", x)]
    jobs = [x for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#") and x not in env_lines]
    assert len(jobs) == 1
    fields = jobs[0].split(None, 5)
    assert fields[:5] == ["*"] * 5                       # every minute
    env = {"HOME": str(user)}
    env.update(dict(x.split("=", 1) for x in env_lines))
    home = Path(env["DAGRUN_HOME"])
    run("submit", EXAMPLES / "minimal" / "dag.json", home=home)
    for _ in range(2):                                   # two "minutes": the second finds nothing
        p = subprocess.run([env["SHELL"], "-c", fields[5]], env=env, cwd=user, timeout=120)
        assert p.returncode == 0
    assert (task_dir(home, "minimal", "write") / "done").exists()
    log = (home / "worker.log").read_text().splitlines()
    assert sum(line.endswith("exiting: idle") for line in log) == 2
    assert all(line.startswith("dagrun: ") for line in log)


def unit_exec(name: str, user: Path) -> list[str]:
    text = (UNITS / name).read_text()
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart="):].replace("%h", str(user)))


def unit_env(name: str, user: Path) -> dict:
    text = (UNITS / name).read_text()
    env = dict(os.environ)
    for x in text.splitlines():
        if x.startswith("Environment="):
            k, v = x[len("Environment="):].split("=", 1)
            env[k] = v.replace("%h", str(user))
    return env


def test_systemd_oneshot_unit_runs_until_idle(tmp_path):
    user = fake_user_home(tmp_path)
    argv, env = unit_exec("dagrun-worker-idle.service", user), unit_env("dagrun-worker-idle.service", user)
    assert "--until-idle" in argv
    run("submit", EXAMPLES / "minimal" / "dag.json", home=env["DAGRUN_HOME"])
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout == ""
    assert (task_dir(Path(env["DAGRUN_HOME"]), "minimal", "write") / "done").exists()
    timer = (UNITS / "dagrun-worker-idle.timer").read_text()
    assert "OnUnitInactiveSec=" in timer


def test_systemd_daemon_unit_serves_and_stops_cleanly(tmp_path):
    user = fake_user_home(tmp_path)
    argv, env = unit_exec("dagrun-worker.service", user), unit_env("dagrun-worker.service", user)
    unit = (UNITS / "dagrun-worker.service").read_text()
    ok_codes = {0} | {int(c) for c in re.search(r"^SuccessExitStatus=(.*)$", unit, re.M).group(1).split()}
    assert "KillMode=mixed" in unit
    d = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        home = Path(env["DAGRUN_HOME"])
        wait_for(lambda: (home / "goals").is_dir(), what="the daemon")
        run("submit", EXAMPLES / "minimal" / "dag.json", home=home)
        wait_for(lambda: (task_dir(home, "minimal", "write") / "done").exists(), timeout=60, what="the goal")
    finally:
        d.send_signal(signal.SIGTERM)                    # what `systemctl stop` does (KillMode=mixed)
        out, err = d.communicate(timeout=60)
    assert d.returncode in ok_codes, (d.returncode, err)
    assert all(line.startswith("dagrun: ") for line in err.splitlines())


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    user = fake_user_home(tmp_path)
    for f in UNITS.iterdir():
        (tmp_path / f.name).write_text(f.read_text().replace("%h", str(user)))
    names = [str(tmp_path / f.name) for f in UNITS.iterdir()]
    p = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=60)
    if "Failed to initialize manager" in p.stderr:
        pytest.skip("systemd-analyze cannot run here: " + p.stderr.strip().splitlines()[-1])
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
