"""Security: a private home, ids that cannot leave it, no symlink followed out of it, prompts
and outputs never on a command line, no secret of the environment written anywhere. See the
threat model in ARCHITECTURE.md."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import DAGRUN, run, spawn, task_dir, wait_for, write_plan  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

PASSWD_LINE = "root:x:0:0"


def _dagrun_with_umask(umask: int, *args, home: Path) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("DAGRUN_HOME", None)
    return subprocess.run(["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", DAGRUN, f"--home={home}", *map(str, args)],
                          capture_output=True, text=True, env=e, timeout=60)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_home_is_0700_and_nothing_in_it_is_group_or_world_writable(tmp_path, plans, umask):
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "echo x; echo e >&2; exit 1", "retries": 1,
                            "retry_backoff": 0}, {"id": "b", "prompt": "p", "agent": "echo ok"}], goal="perm")
    home = tmp_path / "deep" / "er" / "home"
    r = _dagrun_with_umask(umask, "run", p, home=home)
    assert r.returncode == 1, r.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "goals").stat().st_mode) == 0o700
    for path in home.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o022, f"{path} is {oct(mode)} (umask {umask:03o})"


def test_an_existing_home_folder_keeps_its_mode(tmp_path, plans):
    """dagrun does not chmod a folder you made yourself (documented: make it 0700)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o750)
    os.chmod(home, 0o750)
    run("run", write_plan(plans, [{"id": "a", "prompt": "p", "agent": "true"}], goal="mine"), home=home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o750
    assert stat.S_IMODE((home / "goals").stat().st_mode) == 0o700


CMDS = [["status", "BAD"], ["output", "BAD", "a"], ["output", "g", "BAD"], ["logs", "g", "BAD"], ["events", "BAD"],
        ["cancel", "BAD"], ["cancel", "g", "BAD"], ["retry", "g", "BAD"], ["claim", "BAD"], ["complete", "g", "BAD"],
        ["fail", "g", "BAD"], ["heartbeat", "g", "BAD"], ["heartbeat", "BAD", "a"]]


def _refused_everywhere(tmp_path, plans, bads, cmds):
    home = tmp_path / "home"
    run("submit", write_plan(plans, [{"id": "a", "prompt": "p", "agent": "true"}], goal="g"), home=home)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for bad in bads:
        for c in cmds:
            c = [bad if x == "BAD" else x for x in c]
            r = run(*(c[:1] + ["--"] + c[1:]), home=home, check=False)
            assert r.returncode == 2, (c, r.returncode, r.stderr)
            assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("dagrun: "), (c, r.stderr)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_ids_from_the_command_line_never_make_a_path(tmp_path, plans):
    """Every command that takes a goal or task id refuses ids that would leave the home."""
    _refused_everywhere(tmp_path, plans, ["../x"], CMDS)
    _refused_everywhere(tmp_path / "more", plans, ["..", "a/b"], CMDS[1:3] + CMDS[8:10])


@pytest.mark.slow
def test_more_bad_ids_from_the_command_line(tmp_path, plans):
    _refused_everywhere(tmp_path, plans, ["/etc", ".", ".hidden", "a\nb", "a b", "-rf"], CMDS[1:3] + CMDS[8:10])


def _two_step(plans: Path, goal: str, agent_b: str = "cat") -> Path:
    return write_plan(plans, [{"id": "a", "prompt": "first"}, {"id": "b", "prompt": "second", "deps": ["a"],
                                                               "agent": agent_b}],
                      goal=goal, defaults={"agent": "echo from-a"})


def _no_leak(home: Path, needle: str = PASSWD_LINE) -> None:
    for p in home.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert needle.encode() not in p.read_bytes(), f"{needle!r} leaked into {p}"


def _complete_a(home: Path, goal: str) -> None:
    assert run("claim", goal, "--worker", "w", home=home).stdout.strip() == "a"
    run("complete", goal, "a", "--worker", "w", "--output", "-", home=home, input="from-a\n")


def test_a_symlinked_output_is_never_read(home, plans):
    p = _two_step(plans, "sym")
    run("submit", p, home=home)
    _complete_a(home, "sym")
    out = task_dir(home, "sym", "a") / "output"
    out.unlink()
    out.symlink_to("/etc/passwd")
    r = run("output", "sym", "a", home=home, check=5)
    assert PASSWD_LINE not in r.stdout and "is a symbolic link" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run("run", "sym", home=home, check=5)
    assert "refusing to read" in r.stderr and "symbolic link" in r.stderr
    assert PASSWD_LINE not in r.stdout + r.stderr
    _no_leak(home)


def test_a_symlinked_task_folder_is_never_read_or_written(home, plans, tmp_path):
    p = _two_step(plans, "symdir")
    run("submit", p, home=home)
    _complete_a(home, "symdir")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "output").write_text("SECRET-OUTSIDE\n")
    (outside / "done").write_text((task_dir(home, "symdir", "a") / "done").read_text())
    real = task_dir(home, "symdir", "a")
    import shutil
    shutil.rmtree(real)
    real.symlink_to(outside)
    r = run("output", "symdir", "a", home=home, check=5)
    assert "SECRET-OUTSIDE" not in r.stdout and "symbolic link" in r.stderr
    run("run", "symdir", home=home, check=5)
    _no_leak(home, "SECRET-OUTSIDE")
    # a symlinked folder of a task still to run is refused, and nothing is written through it
    (outside / "done").unlink()
    (outside / "output").unlink()
    shutil.rmtree(task_dir(home, "symdir", "b"), ignore_errors=True)
    task_dir(home, "symdir", "b").symlink_to(outside)
    real.unlink()
    real.mkdir()
    r = run("run", "symdir", home=home, check=5)
    assert "symbolic link" in r.stderr
    assert sorted(x.name for x in outside.iterdir()) == []


def test_symlinked_logs_and_stderr_tails_are_never_read(home, plans):
    """An agent plants attempts/1.err -> /etc/passwd (it wrote no stderr, so dagrun does not
    replace it): neither `dagrun logs` nor the retry's prompt (retry_context) shows it."""
    plant = ('if [ "$DAGRUN_ATTEMPT" = 1 ]; then mkdir -p "$DAGRUN_TASK_DIR/attempts"; '
             'ln -s /etc/passwd "$DAGRUN_TASK_DIR/attempts/1.err"; exit 3; fi; cat')
    p = write_plan(plans, [{"id": "r", "prompt": "try", "agent": plant, "retries": 1, "retry_backoff": 0,
                            "retry_context": "error"}], goal="tail")
    run("run", p, home=home)
    out = (task_dir(home, "tail", "r") / "output").read_text()
    assert "Previous attempt 1 failed" in out and PASSWD_LINE not in out
    r = run("logs", "tail", "r", "--attempt", "1", home=home, check=False)
    assert PASSWD_LINE not in r.stdout and r.returncode == 5 and "symbolic link" in r.stderr
    _no_leak(home)


def test_a_symlinked_claim_is_removed_without_touching_its_target(home, plans, tmp_path):
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / "owner.json").write_text(json.dumps({"worker": "x", "host": "elsewhere", "pid": 1, "nonce": "n",
                                                    "attempt": 1, "since": "2020-01-01T00:00:00Z"}))
    (outside / "stdout").write_text("VICTIM-DATA\n")
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "echo fine"}], goal="symclaim")
    run("submit", p, home=home)
    tdir = task_dir(home, "symclaim", "a")
    tdir.mkdir(parents=True)
    (tdir / "claim").symlink_to(outside)
    r = run("run", "symclaim", home=home, env={"DAGRUN_CLAIM_GRACE": "0"}, timeout=60)
    assert "symclaim done: 1 done" in r.stdout
    assert (tdir / "output").read_text() == "fine\n"
    assert sorted(x.name for x in outside.iterdir()) == ["owner.json", "stdout"]
    assert (outside / "stdout").read_text() == "VICTIM-DATA\n"
    assert not (tdir / "claim").exists() and not list(tdir.glob(".claim.*"))
    _no_leak(home, "VICTIM-DATA")


@pytest.mark.parametrize("owner", [
    '{"pid": "abc", "host": "HOST"}', '{"pid": -5, "host": "HOST"}', '{"pid": 99999999999, "host": "HOST"}',
    '[]', '"text"', '{"host": "HOST", "pid": 1, "pid_start": "1"}', '{', '{"host": 5, "pid": {}}', 'null',
])
def test_garbage_owner_json_is_judged_not_crashed_on(home, plans, owner):
    import socket
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "echo ok"}], goal="garbage")
    run("submit", p, home=home)
    cdir = task_dir(home, "garbage", "a") / "claim"
    cdir.mkdir(parents=True)
    (cdir / "owner.json").write_text(owner.replace("HOST", socket.gethostname()))
    old = time.time() - 1000          # an owner "from another host" is judged by its lease (60 s)
    os.utime(cdir / "owner.json", (old, old))
    r = run("run", "garbage", home=home, env={"DAGRUN_CLAIM_GRACE": "0"}, timeout=60)
    assert "garbage done: 1 done" in r.stdout, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    st = run("status", "garbage", home=home)
    assert st.returncode == 0


@pytest.mark.parametrize("record,marker", [
    ('{"attempt": "x", "started": "yesterday"}', '[1]'), ('{"attempt": 99999999999999999999999}', '{"attempt": "two"}'),
    ('"text"', '{"attempt": [], "started": {}}'),
])
def test_garbage_attempt_records_and_markers_are_summarised_not_crashed_on(home, plans, tmp_path, record, marker):
    flag = tmp_path / "failed-once"
    p = write_plan(plans, [{"id": "a", "prompt": "p", "retries": 1, "retry_backoff": 0,
                            "agent": f"test -e {flag} || {{ touch {flag}; exit 1; }}; echo ok"}], goal="gsum")
    run("run", p, home=home)
    tdir = task_dir(home, "gsum", "a")
    (tdir / "attempts" / "1.json").write_text(record)
    (tdir / "done").write_text(marker)
    (home / "goals" / "gsum" / "summary.json").unlink()
    out = tmp_path / "r.html"
    r = run("report", "gsum", "--out", out, home=home)      # builds the summary from the files
    assert out.exists() and "Traceback" not in r.stderr and "internal error" not in r.stderr


def test_prompts_never_appear_on_a_command_line_or_in_the_environment(home, plans):
    marker = "PROMPT-MARKER-7f3a"
    p = write_plan(plans, [{"id": "a", "prompt": f"{marker} $(id) `id`", "agent": "sleep 1; cat"},
                           {"id": "b", "prompt": "p", "deps": ["a"], "agent": "sleep 1; cat"}], goal="argv")
    proc = spawn("run", p, home=home)
    seen = 0
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes()
                if f"DAGRUN_HOME={home}".encode() not in env and int(pid) != proc.pid:
                    continue
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            seen += 1
            assert marker.encode() not in cmd, f"prompt text on the command line of {pid}: {cmd!r}"
            assert marker.encode() not in env, f"prompt text in the environment of {pid}"
        time.sleep(0.05)
    proc.communicate(timeout=30)
    assert proc.returncode == 0 and seen > 10
    assert marker in (task_dir(home, "argv", "b") / "output").read_text()   # it did travel, as stdin


def test_no_secret_of_the_environment_is_written_anywhere(home, plans, tmp_path):
    secrets = {"AWS_SECRET_ACCESS_KEY": "AKIA-sekrit-1111", "GITHUB_TOKEN": "ghp_sekrit2222",
               "ANTHROPIC_API_KEY": "sk-ant-sekrit3333", "MY_PASSWORD": "hunter2-sekrit4444",
               "DATABASE_URL": "postgres://u:sekrit5555@db/x"}
    p = write_plan(plans, [
        {"id": "ok", "prompt": "p", "agent": 'test -n "$GITHUB_TOKEN" && echo agent-has-its-env'},
        {"id": "fails", "prompt": "p", "agent": "echo boom >&2; exit 2", "retries": 1, "retry_backoff": 0,
         "retry_context": "error"},
        {"id": "slow", "prompt": "p", "agent": "sleep 5", "timeout": 0.3, "kill_grace": 0.2},
        {"id": "after", "prompt": "p", "deps": ["ok"], "agent": "cat"}], goal="env")
    r = run("run", p, home=home, check=1, env=secrets)
    assert (task_dir(home, "env", "ok") / "output").read_text() == "agent-has-its-env\n"   # agents get it
    texts = [r.stdout, r.stderr, run("events", "env", home=home).stdout,
             run("status", "env", "--json", home=home).stdout]
    texts += [p.read_text(errors="replace") for p in home.rglob("*") if p.is_file()]
    for name, value in secrets.items():
        for t in texts:
            assert value not in t, f"{name} was written somewhere"


# ------------------------------------------------------------------ symlinked goal folder, attempts/, events.jsonl
def _snapshot(folder: Path) -> dict[str, tuple]:
    out = {}
    for p in [folder, *folder.rglob("*")]:
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns, p.read_bytes() if p.is_file() else b"")
    return out


def _one_line_refusal(r, code=5):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(r.stderr.splitlines()) == 1 and "symbolic link" in r.stderr, r.stderr


def test_a_symlinked_goal_folder_is_refused_by_every_command(home, plans, tmp_path):
    """goals/<g> replaced by a link to a goal folder elsewhere (another user's, or one an agent
    made): no command reads or writes through it; the worker skips it with one warning."""
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "echo a"}, {"id": "b", "prompt": "p", "deps": ["a"]}],
                   goal="gl", defaults={"agent": "echo ok"})
    run("submit", p, home=home)
    outside = tmp_path / "outside-goal"
    (home / "goals" / "gl").rename(outside)
    (home / "goals" / "gl").symlink_to(outside)
    before = _snapshot(outside)
    for argv in (["run", "gl"], ["run", p], ["submit", p], ["status", "gl"], ["events", "gl"], ["claim", "gl"],
                 ["cancel", "gl"], ["retry", "gl", "a"], ["output", "gl", "a"], ["logs", "gl", "a"]):
        _one_line_refusal(run(*argv, home=home, check=False))
    r = run("worker", "--until-idle", home=home)
    assert sum("symbolic link" in ln for ln in r.stderr.splitlines()) == 1, r.stderr
    assert _snapshot(outside) == before
    assert (home / "goals" / "gl").is_symlink()


def test_a_symlinked_attempts_folder_is_never_written_or_listed(home, plans, tmp_path):
    """An agent replaces its task's attempts/ by a link to a folder elsewhere: no attempt record,
    output or prompt is written there, and status/logs do not list it."""
    outside = tmp_path / "outside-attempts"
    outside.mkdir()
    (outside / "1.json").write_text('{"outcome": "done", "attempt": 1}')
    plant = f'ln -s {outside} "$DAGRUN_TASK_DIR/attempts"; echo x; exit 3'
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": plant, "retries": 1, "retry_backoff": 0}], goal="at")
    before = _snapshot(outside)
    _one_line_refusal(run("run", p, home=home, check=False))
    assert _snapshot(outside) == before
    for argv in (["status", "at"], ["logs", "at", "a"], ["run", "at"]):
        _one_line_refusal(run(*argv, home=home, check=False))
    assert _snapshot(outside) == before
    _no_leak(home)


def test_a_symlinked_events_log_is_never_appended_or_read(home, plans, tmp_path):
    victim = tmp_path / "victim.log"
    victim.write_text("VICTIM-LINE\n")
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "echo ok"}], goal="ev")
    run("submit", p, home=home)
    log = home / "goals" / "ev" / "events.jsonl"
    log.unlink()
    log.symlink_to(victim)
    r = run("run", "ev", home=home, check=5)
    assert len(r.stderr.splitlines()) == 1 and "symbolic links" in r.stderr, r.stderr
    assert victim.read_text() == "VICTIM-LINE\n"
    r = run("events", "ev", home=home, check=5)
    assert "VICTIM" not in r.stdout and len(r.stderr.splitlines()) == 1, r.stderr
    assert not [x for x in home.rglob("*") if x.is_file() and not x.is_symlink() and b"VICTIM" in x.read_bytes()]
