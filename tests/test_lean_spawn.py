"""The spawner's fork without subprocess.Popen (executor._fork_exec, issue 20): the agent
starts exactly as Popen(argv, cwd=, env=, stdin=, stdout=, stderr=, start_new_session=True,
close_fds=True) starts it -- same process, session, environment bytes, inherited fds, and the
same OSError when it cannot -- and an interpreter whose fork_exec takes other arguments gets
Popen. Each case runs both ways and compares."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from dagrun import executor

pytestmark = pytest.mark.skipif(not (3, 11) <= sys.version_info[:2] <= (3, 13) or executor._posixsubprocess is None,
                                reason="not CPython 3.11-3.13: the runner uses Popen")


def _run(monkeypatch, lean: bool, argv, cwd, env, extra_fd: int | None = None):
    """Start argv both ways with stdout/stderr on pipes: (exit code, stdout, stderr, the object)."""
    monkeypatch.setattr(executor, "_LEAN", lean)
    r_out, w_out = os.pipe2(os.O_CLOEXEC)
    r_err, w_err = os.pipe2(os.O_CLOEXEC)
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        p = executor._fork_exec(argv, cwd, env, stdin, w_out, w_err)
    finally:
        for fd in (stdin, w_out, w_err):
            os.close(fd)
    outs = []
    for fd in (r_out, r_err):
        chunks = []
        while b := os.read(fd, 65536):
            chunks.append(b)
        os.close(fd)
        outs.append(b"".join(chunks))
    return p.wait(30), outs[0], outs[1], p


REPORT = ("import os, sys; "
          "print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid()); "
          "print(sorted(int(f) for f in os.listdir('/proc/self/fd'))); "
          "sys.stdout.flush(); "
          "os.write(1, b'\\0'.join(sorted(k + b'=' + v for k, v in os.environb.items()))); "
          "sys.stderr.write(os.getcwd()); sys.exit(7)")


def test_the_child_is_the_one_popen_starts(monkeypatch, tmp_path):
    """Exit code, own session and group, only fds 0-2 (close_fds: an inheritable fd of ours is
    not passed on), the environment byte for byte (non-ASCII and undecodable bytes too), cwd."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "ÄÖ": "wert ü",
           "RAW": os.fsdecode(b"\xff\xfe-bytes"), "EMPTY": "", "DAGRUN_RUN_ID": "x:g/t/1/1"}
    leak = os.open(os.devnull, os.O_RDONLY)        # inheritable: close_fds must close it
    os.set_inheritable(leak, True)
    try:
        lean = _run(monkeypatch, True, [sys.executable, "-c", REPORT], str(tmp_path), env)
        popen = _run(monkeypatch, False, [sys.executable, "-c", REPORT], str(tmp_path), env)
    finally:
        os.close(leak)
    assert isinstance(lean[3], executor._Child) and isinstance(popen[3], subprocess.Popen)
    assert lean[:3] == popen[:3]
    code, out, err, _ = lean
    assert code == 7 and out.startswith(b"True True\n[0, 1, 2")
    assert err.decode() == str(tmp_path)


@pytest.mark.parametrize("case", ["missing", "noexec", "cwd", "dir"])
def test_a_child_that_cannot_start_raises_what_popen_raises(monkeypatch, tmp_path, case):
    """The direct exec's fallback (executor._spawn) and the StartError text hang on this."""
    (tmp_path / "script").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "script").chmod(0o644)
    argv, cwd = {"missing": (["no-such-command-xyz"], str(tmp_path)),
                 "noexec": ([str(tmp_path / "script")], str(tmp_path)),
                 "cwd": (["true"], str(tmp_path / "gone")),
                 "dir": ([str(tmp_path)], str(tmp_path))}[case]
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    got = []
    for lean in (True, False):
        with pytest.raises(OSError) as e:
            _run(monkeypatch, lean, argv, cwd, env)
        got.append((type(e.value), e.value.errno, e.value.strerror, e.value.filename))
    assert got[0] == got[1]
    assert got[0][1] in (errno.ENOENT, errno.EACCES)


def test_a_bad_environment_is_refused_as_popen_refuses_it(monkeypatch, tmp_path):
    for env in ({"A=B": "x"}, {"A": "x\0y"}):
        for lean in (True, False):
            with pytest.raises(ValueError):
                _run(monkeypatch, lean, ["true"], str(tmp_path), env)


def test_env_bytes_is_os_fsencode_name_by_name():
    env = {"PATH": "/bin", "Ä": "ü", "RAW": os.fsdecode(b"\xff"), "EMPTY": "", "EQ": "a=b=c"}
    assert executor._env_bytes(env) == [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
    assert executor._env_bytes({"B": b"bytes"}) == [b"B=bytes"]      # the name-by-name way


def test_a_fork_exec_with_other_arguments_gets_popen(monkeypatch, tmp_path):
    """Another CPython's signature: TypeError before any fork -- Popen, then and from then on,
    no fd left open."""
    def refuse(*a):
        raise TypeError("fork_exec() takes exactly 21 arguments")
    monkeypatch.setattr(executor._posixsubprocess, "fork_exec", refuse)
    before = set(os.listdir("/proc/self/fd"))
    code, out, _, p = _run(monkeypatch, True, ["sh", "-c", "echo hi"], str(tmp_path), dict(os.environ))
    assert (code, out) == (0, b"hi\n") and isinstance(p, subprocess.Popen)
    assert executor._LEAN is False
    assert set(os.listdir("/proc/self/fd")) == before


def test_poll_and_wait_say_what_popen_says(monkeypatch, tmp_path):
    for lean in (True, False):
        monkeypatch.setattr(executor, "_LEAN", lean)
        p = executor._fork_exec(["sh", "-c", "kill -TERM $$"], str(tmp_path), dict(os.environ), 0, 1, 2)
        assert p.wait(30) == -15 and p.poll() == -15
        q = executor._fork_exec(["sleep", "5"], str(tmp_path), dict(os.environ), 0, 1, 2)
        assert q.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            q.wait(0.05)
        os.kill(q.pid, 9)
        assert q.wait(30) == -9


def _prog(folder, name: str, says: str, mode: int = 0o755) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\necho {says}\n")
    os.chmod(path, mode)
    return path


def test_the_childs_path_search_starts_at_the_first_entry_that_has_the_name(monkeypatch, tmp_path):
    """executor._exec_list: the entries where the name is not there (ENOENT, ENOTDIR: the
    execve the child would try fails with those and it goes on) are left out, everything from
    the first entry that has it on is kept, in order; a relative entry stops the trimming
    (it is the child's cwd's). Without the trimming the child tried all 15 entries of this
    machine's PATH for `true`."""
    monkeypatch.setattr(executor, "_EXEC_LISTS", {})
    monkeypatch.setattr(executor, "PATH_TTL", 60.0)
    a, b, c, d = (str(tmp_path / x) for x in "abcd")
    os.makedirs(a)
    _prog(c, "prog", "c")
    _prog(d, "prog", "d")
    notdir = _prog(str(tmp_path), "file", "x")             # an entry that is a file: ENOTDIR
    path = os.pathsep.join([a, str(tmp_path / "gone"), notdir, b, c, d])
    assert executor._exec_list(b"prog", path) == (os.fsencode(c) + b"/prog", os.fsencode(d) + b"/prog")
    rel = os.pathsep.join([a, "rel", c])
    assert executor._exec_list(b"prog", rel) == (b"rel/prog", os.fsencode(c) + b"/prog")
    assert executor._exec_list(b"nowhere", path) == executor._search_list(b"nowhere", path)   # the child says so
    assert executor._exec_list(b"/bin/sh", path) == (b"/bin/sh",)


def test_a_trimmed_path_search_runs_what_the_full_one_runs(monkeypatch, tmp_path):
    """The program found first is removed: the next spawn runs the next entry's at once (the
    child goes on past the ENOENT, as a full search does); a non-executable file in front
    (EACCES) is passed over as a full search passes it; a name nowhere fails as Popen fails.
    A program put into an earlier entry is run once PATH_TTL has passed (the documented
    difference: not before)."""
    monkeypatch.setattr(executor, "_EXEC_LISTS", {})
    monkeypatch.setattr(executor, "PATH_TTL", 0.3)
    a, c, d = (str(tmp_path / x) for x in "acd")
    os.makedirs(a)
    first = _prog(c, "prog", "c")
    _prog(d, "prog", "d")
    env = {"PATH": os.pathsep.join([a, c, d])}
    assert _run(monkeypatch, True, ["prog"], str(tmp_path), env)[:2] == (0, b"c\n")
    os.unlink(first)
    assert _run(monkeypatch, True, ["prog"], str(tmp_path), env)[:2] == (0, b"d\n")
    _prog(a, "prog", "a", mode=0o644)                        # there, but not executable
    time.sleep(0.35)
    assert _run(monkeypatch, True, ["prog"], str(tmp_path), env)[:2] == (0, b"d\n")
    os.chmod(os.path.join(a, "prog"), 0o755)
    assert _run(monkeypatch, True, ["prog"], str(tmp_path), env)[:2] == (0, b"a\n")
    with pytest.raises(FileNotFoundError):
        _run(monkeypatch, True, ["nowhere"], str(tmp_path), env)


def test_a_program_put_earlier_on_path_is_found_after_path_ttl(monkeypatch, tmp_path):
    monkeypatch.setattr(executor, "_EXEC_LISTS", {})
    monkeypatch.setattr(executor, "PATH_TTL", 0.3)
    a, c = str(tmp_path / "a"), str(tmp_path / "c")
    os.makedirs(a)
    _prog(c, "prog", "c")
    env = {"PATH": os.pathsep.join([a, c])}
    assert _run(monkeypatch, True, ["prog"], str(tmp_path), env)[:2] == (0, b"c\n")
    _prog(a, "prog", "a")
    assert _run(monkeypatch, True, ["prog"], str(tmp_path), env)[:2] == (0, b"c\n")   # within PATH_TTL
    time.sleep(0.35)
    assert _run(monkeypatch, True, ["prog"], str(tmp_path), env)[:2] == (0, b"a\n")
    monkeypatch.setattr(executor, "PATH_TTL", 0.0)            # DAGRUN_PATH_TTL=0: every child searches
    assert executor._exec_list(b"prog", env["PATH"]) == executor._search_list(b"prog", env["PATH"])
