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
    assert sum(line.endswith("exiting: idle") for line in log) == 1     # the idle second minute is silent
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


def _systemd_analyze() -> str:
    """systemd-analyze, or a skip -- a failure under CI=true, which installs it (.ci/run)."""
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed (.ci/run installs the systemd package)")
        pytest.skip("systemd-analyze is not installed")
    return path


def _verify(files: list[Path]) -> None:
    p = subprocess.run([_systemd_analyze(), "verify", *map(str, files)], capture_output=True, text=True, timeout=60)
    if "Failed to initialize manager" in p.stderr and os.environ.get("CI") != "true":
        pytest.skip("systemd-analyze cannot run here: " + p.stderr.strip().splitlines()[-1])
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr


def test_systemd_units_verify_as_shipped_for_a_pipx_install(tmp_path):
    """As shipped, ExecStart is ~/.local/bin/dagrun: where `pipx install` / `uv tool install` put it."""
    user = fake_user_home(tmp_path)
    for f in UNITS.iterdir():
        (tmp_path / f.name).write_text(f.read_text().replace("%h", str(user)))
    _verify([tmp_path / f.name for f in UNITS.iterdir()])


def test_systemd_units_from_init_verify_with_the_real_binary(tmp_path):
    out = tmp_path / "units"
    out.mkdir()
    r = run("init", "--systemd", "--workdir", tmp_path / "src", "--dir", out)
    names = sorted(Path(x).name for x in r.stdout.split())
    assert names == ["dagrun-worker-idle.service", "dagrun-worker-idle.timer", "dagrun-worker.service"]
    unit = (out / "dagrun-worker.service").read_text()
    assert f"ExecStart={DAGRUN} worker -j 4" in unit
    assert f"ReadWritePaths=%h/.dagrun {tmp_path / 'src'}" in unit
    _verify(sorted(out.iterdir()))


def test_systemd_units_are_sandboxed_and_fit_a_user_manager(tmp_path):
    for name in ("dagrun-worker.service", "dagrun-worker-idle.service"):
        unit = (UNITS / name).read_text()
        body = [x for x in unit.splitlines() if not x.startswith("#")]
        assert not any("network-online.target" in x for x in body), name     # a user manager has none
        for opt in ("NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict", "ReadWritePaths=%h"):
            assert opt in body, (name, opt)
    user = fake_user_home(tmp_path)
    f = tmp_path / "dagrun-worker.service"
    f.write_text((UNITS / "dagrun-worker.service").read_text().replace("%h", str(user)))
    p = subprocess.run([_systemd_analyze(), "security", "--offline=true", str(f)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout + p.stderr)
    if m is None and os.environ.get("CI") != "true":
        pytest.skip("systemd-analyze security --offline is not supported here")
    assert m is not None and float(m.group(1)) <= 4.0, p.stdout[-500:]
