"""A plain agent command is exec'd directly, as GNU make execs a plain recipe line; anything the
shell would touch keeps `sh -c` (executor._direct, shellwords.plain_argv). The table runs every
command both ways -- the runner's spawn with direct exec on, and forced through `sh -c` -- as
real processes and compares exit code, stdout and stderr byte for byte (the environment as a
set), and says which way each one must go. The runner test looks at the running process:
a plain `sleep` is the attempt's process from the first moment (never a shell), its own
session and group leader, stopped by the runner's TERM/KILL as before."""
from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import in_child
from dagrun import executor
from dagrun.executor import Launch, ProcessRunner
from dagrun.shellwords import plain_argv


def _launch(tmp: str, agent: str, env: dict | None = None, cwd: str | None = None) -> Launch:
    prompt = os.path.join(tmp, "prompt.md")
    if not os.path.exists(prompt):
        with open(prompt, "w") as f:
            f.write("the prompt\n")
    return Launch(agent=agent, cwd=cwd or tmp, env=dict(os.environ) if env is None else env,
                  stdin_path=prompt, stdout_path=os.path.join(tmp, "stdout"),
                  stderr_path=os.path.join(tmp, "stderr"), run_id=f"test:{os.getpid()}:{time.monotonic_ns()}")


RAN: list = []      # the argv each _run exec'd first ("/bin/sh" or the agent's own words)


def _run(launch: Launch) -> tuple[int, bytes, bytes]:
    """_spawn (the spawner thread's work) and wait: exit code, stdout, stderr."""
    sp = executor._spawn(launch, False)
    RAN.append(list(sp.popen.args))
    assert not isinstance(sp, executor.StartError), sp
    assert os.getpgid(sp.pid) == sp.pid and os.getsid(sp.pid) == sp.pid   # own session, leader
    rc = sp.popen.wait(30)
    outs = []
    for fd in (sp.r_out, sp.r_err):
        os.set_blocking(fd, True)
        chunks = []
        while b := os.read(fd, 65536):
            chunks.append(b)
        os.close(fd)
        outs.append(b"".join(chunks))
    return rc, outs[0], outs[1]


def _both(monkeypatch, launch: Launch):
    monkeypatch.setattr(executor, "DIRECT_EXEC", True)
    direct = _run(launch)
    monkeypatch.setattr(executor, "DIRECT_EXEC", False)
    shell = _run(launch)
    monkeypatch.setattr(executor, "DIRECT_EXEC", True)
    return direct, shell


@pytest.fixture
def tree(tmp_path):
    """A folder with a script, a script without #!, a file without x, a tool in a sub folder,
    a file with a blank in its name, and two PATH folders that shadow each other."""
    t = tmp_path

    def put(rel: str, text: str, mode: int) -> None:
        p = t / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
    put("script.sh", '#!/bin/sh\necho "$0 [$*]"; exit 5\n', 0o755)
    put("noshebang", 'echo "run by a shell as $0"\n', 0o755)
    put("notexec.sh", "#!/bin/sh\necho never\n", 0o644)
    put("sub/tool", "#!/bin/sh\necho tool $1\n", 0o755)
    put("a b.txt", "spaced\n", 0o644)
    put("p1/tool2", "#!/bin/sh\necho p1\n", 0o644)      # not executable: skipped by the look-up
    (t / "p1" / "tool3").mkdir()                         # a folder: skipped
    put("p2/tool2", "#!/bin/sh\necho p2\n", 0o755)
    put("p2/tool3", "#!/bin/sh\necho p2 tool3\n", 0o755)
    return t


# (command, goes direct?) -- every row is also run through `sh -c` and must agree with it
TABLE = [
    ("true", True),
    ("false", True),
    ("cat", True),                                  # the prompt on stdin
    ("ls -d . sub", True),
    ("/bin/pwd", True),                             # a path with a slash: exec'd as it is
    ("./script.sh one  two", True),                 # $0 is the path execve(2) was given
    ("sub/tool x", True),
    ("cat 'a b.txt'", True),                        # single quotes: literal
    ("sh -c 'echo \"$0\" $1; exit 4' zero one", True),
    ("exec ./script.sh", True),                     # exec dropped: it is what running it does
    ("tool2", True),                                # PATH: p1's is not executable, p2's runs
    ("tool3", True),                                # PATH: p1's is a folder
    ("./noshebang", False),                         # ENOEXEC: the shell runs it after all
    ("no-such-command-x9 a", False),                # 127 and the shell's own message
    ("./notexec.sh", False),                        # 126 and the shell's own message
    ("./missing/tool", False),
    ("echo hi", False),                             # dash's echo is not /bin/echo
    ("printf '%s-' a b", False),
    ("pwd", False),                                 # the builtin's logical cwd
    ("exit 3", False),
    ("cd sub", False),
    ("export A=1", False),
    ("A=1 env", False),
    ("ls *.sh", False),
    ("ls ?cript.sh", False),
    ("echo $HOME", False),
    ("ls ~", False),
    ("cat < prompt.md", False),
    ("true > out.txt", False),
    ("true | cat", False),
    ("false || true", False),
    ("true; false", False),
    ("true # a comment", False),
    ('"true"', False),
    ("ls a\\ b.txt", False),
    ("true\nfalse", False),
    ("ls é", False),
    ("'unterminated", False),
    ("exec", False),
    ("{ true; }", False),
    ("if true; then false; fi", False),
    ("test -d sub", False),
]


@pytest.mark.parametrize("cmd,direct", TABLE, ids=[c for c, _ in TABLE])
def test_same_result_both_ways(tree, monkeypatch, cmd, direct):
    env = dict(os.environ, PATH=f"{tree}/p1:{tree}/p2:{os.environ.get('PATH', '/usr/bin:/bin')}")
    launch = _launch(str(tree), cmd, env=env)
    RAN.clear()
    d, s = _both(monkeypatch, launch)
    assert d == s
    assert (RAN[0][0] != "/bin/sh") == direct, RAN[0]
    assert RAN[1] == ["/bin/sh", "-c", cmd]


def test_environment_as_dash_passes_it(tmp_path, monkeypatch):
    """`env` run directly sees what it sees under dash: names a shell variable cannot have are
    dropped, PWD is the cwd's physical path unless the inherited one names the cwd."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    cwd = str(tmp_path / "link")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "A-B": "1", "é": "2", "_x": "3"}
    for pwd in ("/", str(tmp_path / "nowhere"), "relative", cwd, cwd + "/", str(real), None, "/"):
        env = dict(base) if pwd is None else dict(base, PWD=pwd)
        launch = _launch(str(tmp_path), "env", env=env, cwd=cwd)
        RAN.clear()
        (rd, od, ed), (rs, os_, es) = _both(monkeypatch, launch)
        assert RAN[0] == ["env"], RAN[0]
        assert (rd, ed) == (rs, es) == (0, b"")
        assert sorted(od.splitlines()) == sorted(os_.splitlines()), pwd
        assert b"A-B=1" not in od and b"_x=3" in od


def test_plain_argv_words():
    assert plain_argv("  a  b\tc ") == ["a", "b", "c"]
    assert plain_argv("a '' b") == ["a", "", "b"]
    assert plain_argv("a --k='x y'z") == ["a", "--k=x yz"]
    assert plain_argv("exec a b") == ["a", "b"]
    assert plain_argv("a b=c") == ["a", "b=c"]
    for cmd in ("", "  ", "exec", "exec -a x y", "a=b c", "exec exit 1", "a 'b\nc'", "a\\b", "-x"):
        assert plain_argv(cmd) is None, cmd


def test_presets_go_direct(monkeypatch, tmp_path):
    """The preset adapter's command line (`exec python -I -m dagrun.agentrun NAME ARGS`, every
    word shlex-quoted) and a checked plain agent split into the words the shell would pass."""
    import sys

    from dagrun import presets
    for agent, check in (("@claude --model 'a b'", None), ("@gemini", None), ("true", ("test", "-e", "x"))):
        line = presets.shell_command(agent, check=check)
        argv = plain_argv(line)
        assert argv is not None and argv[0] == sys.executable and argv[1:4] == ["-I", "-m", "dagrun.agentrun"], line
        import shlex
        assert argv == shlex.split(line)[1:]


def _cmdline(pid: int) -> list[bytes]:
    """The process's argv as soon as its exec has set it up: Popen returns when the
    close-on-exec error pipe closes, which the kernel does before it writes the new argv
    (until then the file is empty)."""
    end = time.monotonic() + 10
    while True:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            got = f.read().split(b"\0")[:-1]
        if got or time.monotonic() > end:
            return got
        time.sleep(0.0005)


def _wait_exit(r: ProcessRunner, h: dict):
    end = time.monotonic() + 20
    while time.monotonic() < end:
        r.service(set(r.wakeup().fds))
        ex = r.poll(h)
        if ex is not None:
            return ex
        time.sleep(0.02)
    raise AssertionError("the attempt never ended")


def _tree_check(tmp: str) -> None:
    r = ProcessRunner()
    h = r.start(_launch(tmp, "sleep 30"))
    # start() returns once the child has exec'd: the first argv it shows is the program exec'd
    # (a shell would be /bin/sh here, and only become sleep when dash execs it a moment later)
    assert _cmdline(h["pid"]) == [b"sleep", b"30"], _cmdline(h["pid"])
    assert os.readlink(f"/proc/{h['pid']}/exe").endswith("/sleep")
    assert os.getpgid(h["pid"]) == h["pgid"] == h["pid"] and os.getsid(h["pid"]) == h["pid"]
    r.terminate(h)
    ex = _wait_exit(r, h)
    assert ex.signal == signal.SIGTERM, ex.describe()

    h = r.start(_launch(tmp, "sleep 30; true"))          # a list: the shell stays
    assert _cmdline(h["pid"])[:2] == [b"/bin/sh", b"-c"]
    r.kill(h)
    ex = _wait_exit(r, h)
    assert ex.signal == signal.SIGKILL, ex.describe()
    r.close()


def test_plain_command_runs_without_sh(tmp_path):
    in_child(_tree_check, tmp_path)



def test_path_entry_with_trailing_slash(tree, monkeypatch):
    """dash execs `dir//word` for a PATH entry `dir/` (a script's $0 shows it): the shell's."""
    env = dict(os.environ, PATH=f"{tree}/p2/:/usr/bin:/bin")
    RAN.clear()
    d, s = _both(monkeypatch, _launch(str(tree), "tool3", env=env))
    assert d == s == (0, b"p2 tool3\n", b"") and RAN[0][0] == "/bin/sh"
    env["PATH"] = f"{tree}/p2:/usr/bin:/bin"
    RAN.clear()
    d, s = _both(monkeypatch, _launch(str(tree), "tool3", env=env))
    assert d == s == (0, b"p2 tool3\n", b"") and RAN[0] == ["tool3"]
