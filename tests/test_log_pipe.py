"""A worker's (and `dagrun run`'s) log lines never stop it: stderr/stdout a pipe nobody reads
(`dagrun worker 2>&1 | less` left on its first page, a supervisor that stopped draining) fills
at 64 KiB; the goal still runs to its end, the reader later gets whole lines and one line that
counts what was dropped, a slow reader gets every line (dagrun/linesink.py)."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DAGRUN, _child_env, run, task_dir, wait_for, write_plan

N = 300
IDS = [f"a-long-task-name-so-that-300-tasks-log-more-than-64k-{i:03d}" for i in range(N)]
EVENT = re.compile(r"^(dagrun: )?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<who>\S+) (?P<what>\S+)( \w+=(\S+|\"[^\"]*\"))*$")
DROPPED = re.compile(r"^dagrun: (\d+) log lines dropped \((stderr|stdout) not read\); the events are in events\.jsonl$")


def big_goal(home: Path, plans: Path) -> None:
    p = write_plan(plans, [{"id": t, "prompt": "p"} for t in IDS], goal="big", defaults={"agent": "true"})
    run("submit", p, home=home)


def start(home: Path, *args, stream: str, buffer: int | None = None) -> tuple[subprocess.Popen, int]:
    """dagrun args... with `stream` (stdout or stderr) a pipe this test reads only when it wants
    to (the other: /dev/null); returns the process and the read end."""
    r, w = os.pipe()
    env = {"DAGRUN_LOG_BUFFER": str(buffer)} if buffer is not None else None
    null = subprocess.DEVNULL
    p = subprocess.Popen([DAGRUN, f"--home={home}", *args], env=_child_env(env), stdin=null, start_new_session=True,
                         stdout=w if stream == "stdout" else null, stderr=w if stream == "stderr" else null)
    os.close(w)
    return p, r


def read_until(r: int, pred, timeout: float = 20.0) -> bytes:
    """Read the pipe until pred(bytes so far) or EOF."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while not pred(bytes(got)):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; read so far: {bytes(got[-300:])!r}"
        if select.select([r], [], [], left)[0]:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            got += chunk
    return bytes(got)


def stop(p: subprocess.Popen, r: int) -> None:
    """A test's end: its dagrun killed (group) if still running, the pipe's read end closed."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    os.close(r)


def all_done(home: Path) -> bool:
    return all((task_dir(home, "big", t) / "done").exists() for t in (IDS[0], IDS[-1]))


def whole_lines(data: bytes) -> list[str]:
    """The pipe's bytes as lines: every one whole (ends with a newline, parses)."""
    assert data.endswith(b"\n")
    lines = data.decode().splitlines()
    for line in lines:
        assert EVENT.match(line) or DROPPED.match(line) or re.match(r"^dagrun: worker \S+ (serving|exiting)", line) \
            or re.match(r"^goal big done: \d+ done$", line), line
        m = EVENT.match(line)
        if m and m.group("who").startswith("big/"):
            assert m.group("who")[4:] in IDS, line                 # not the piece of an id
    return lines


def dropped(lines: list[str]) -> int:
    notes = [int(m.group(1)) for m in map(DROPPED.match, lines) if m]
    assert len(notes) <= 1, notes
    return sum(notes)


def test_worker_runs_its_goal_while_nobody_reads_its_stderr(home, plans):
    """The daemon: 300 tasks (about 75 KiB of log lines) while the pipe stays full; once the
    test reads, the engine's poll(2) wakes for the pipe's room and writes what it kept plus one
    line counting the lines it dropped (an 8 KiB buffer here) -- no line lost uncounted."""
    big_goal(home, plans)
    p, r = start(home, "worker", "--name", "w1", stream="stderr", buffer=8192)
    try:
        wait_for(lambda: all_done(home), timeout=20, what="the goal done with its stderr not read")
        wait_for(lambda: b"goal.finished" in (home / "goals" / "big" / "events.jsonl").read_bytes(), timeout=5,
                 what="goal.finished")
        data = read_until(r, lambda b: b"log lines dropped" in b and b.endswith(b"\n"))
        lines = whole_lines(data)
        assert p.poll() is None                      # the daemon went on; the lines came from its loop
        n = dropped(lines)
        assert n > 0 and DROPPED.match(lines[-1])
        # one start line, running + done per task, goal.finished: each either read or counted
        assert len(lines) - 1 + n == 1 + 2 * N + 1
        os.killpg(p.pid, signal.SIGTERM)
        rest = read_until(r, lambda b: False)        # to EOF: the exit line
        assert whole_lines(rest)[-1] == "dagrun: worker w1 exiting: stopped by signal 15"
        assert p.wait(timeout=10) == 128 + 15
    finally:
        stop(p, r)


@pytest.mark.parametrize("args, stream, total", [
    (("worker", "--until-idle", "--name", "w1"), "stderr", 1 + 2 * N + 1 + 1),   # start, 2 per task, finished, exit
    (("run", "big"), "stdout", 2 * N + 1 + 1)],                                 # 2 per task, finished, the result
    ids=["worker-until-idle", "run"])
def test_until_idle_and_run_finish_their_goal_and_wait_a_bounded_time_for_a_reader(home, plans, args, stream, total):
    """`dagrun worker --until-idle` (stderr) and `dagrun run` (the event lines on stdout) whose
    pipe is not read finish the goal; at the end each waits a little for a reader: the one that
    comes gets whole lines, the dropped count, and `dagrun run`'s result line."""
    big_goal(home, plans)
    p, r = start(home, *args, stream=stream, buffer=4096)
    try:
        wait_for(lambda: all_done(home), timeout=20, what=f"{args[0]}: the goal done with its {stream} not read")
        lines = whole_lines(read_until(r, lambda b: False))
        assert p.wait(timeout=10) == 0
    finally:
        stop(p, r)
    n = dropped(lines)
    assert n > 0
    assert len(lines) - 1 + n == total
    if args[0] == "run":
        assert lines[-1] == "goal big done: 300 done"        # kept beyond the bound: the answer
        assert DROPPED.match(lines[-2]) and "stdout not read" in lines[-2]


def test_nobody_ever_reads_and_the_worker_still_exits(home, plans):
    """SIGTERM to a worker whose stderr pipe stays full: it exits after a bounded wait (linesink
    EXIT_WAIT, 3 s), never hangs; what is in the pipe is whole lines."""
    big_goal(home, plans)
    p, r = start(home, "worker", "--name", "w1", stream="stderr")
    try:
        wait_for(lambda: all_done(home), timeout=20, what="the goal done with its stderr not read")
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == 128 + 15
        assert time.monotonic() - t0 < 8
        data = read_until(r, lambda b: False)
    finally:
        stop(p, r)
    lines = whole_lines(data)
    assert 60000 < len(data) <= 65536             # the pipe's 64 KiB: whole lines, the rest dropped
    assert len(lines) < 1 + 2 * N + 1
    assert dropped(lines) == 0                    # nobody came back to be told


def test_a_slow_reader_gets_every_line(home, plans):
    """A reader that is behind but reads (first after 0.5 s, then 4 KiB every 10 ms) loses
    nothing: the default buffer (1 MiB) keeps what the pipe cannot take yet."""
    big_goal(home, plans)
    p, r = start(home, "worker", "--until-idle", "--name", "w1", stream="stderr")
    got = bytearray()
    time.sleep(0.5)
    try:
        while True:
            time.sleep(0.01)
            chunk = os.read(r, 4096)
            if not chunk:
                break
            got += chunk
        assert p.wait(timeout=10) == 0
    finally:
        stop(p, r)
    lines = whole_lines(bytes(got))
    assert dropped(lines) == 0
    assert len(lines) == 1 + 2 * N + 1 + 1
    done = {m.group("who")[4:] for m in map(EVENT.match, lines) if m and m.group("what") == "done"}
    assert done == set(IDS)


def test_a_sink_keeps_what_the_pipe_cannot_take_drops_beyond_its_bound_and_says_so_where_the_gap_is():
    """In-process (dagrun.linesink on an os.pipe): whole lines in writes of at most PIPE_BUF,
    the buffer's bound, the one notice at the gap, and a line longer than PIPE_BUF."""
    from dagrun import linesink
    r, w = os.pipe()
    s = linesink.LineSink(w, bound=1000)
    try:
        assert s.wfd is not None and s.wfd != w
        k = 0
        while not s.pending:                       # fill the pipe: the first line that does not fit waits
            s.line(f"line {k:05d} " + "x" * 80)
            k += 1
        assert s in linesink.waiting()
        for j in range(k, k + 50):                 # ~10 more fit the 1000 bytes; the rest are dropped
            s.line(f"line {j:05d} " + "x" * 80)
        assert s.size <= 1000 and s.dropped > 0
        kept, dropped = len(s.pending), s.dropped
        assert kept + dropped == 51
        s.line("the answer", must=True)            # kept beyond the bound, after the notice
        data = bytearray()
        while not s.pump():
            data += os.read(r, 65536)
        data += os.read(r, 65536)
        assert s not in linesink.waiting()
        lines = data.decode().splitlines()
        # k - 1 lines went straight in, then the kept ones (the k-th first), the notice, the answer
        assert data.endswith(b"\n") and len(lines) == k - 1 + kept + 2
        assert [int(x.split()[1]) for x in lines[:k - 1 + kept]] == list(range(k - 1 + kept))
        assert lines[-2] == (f"dagrun: {dropped} log lines dropped (fd {w} not read); "
                             "the events are in events.jsonl")
        assert lines[-1] == "the answer"
        long = "y" * (3 * linesink.PIPE_BUF)       # longer than PIPE_BUF: written whole when read
        s.line(long)
        s.line("after")
        got = bytearray()
        while not s.pump() or len(got) < len(long) + 7:
            got += os.read(r, 65536)
        assert got.decode().splitlines() == [long, "after"]
        s.finish(time.monotonic())
        assert s.wfd is None
    finally:
        os.close(r)
        os.close(w)


def test_a_sink_writes_chunks_of_whole_lines_of_at_most_pipe_buf():
    from dagrun import linesink
    s = linesink.LineSink(os.open(os.devnull, os.O_WRONLY), bound=1 << 20)
    try:
        s.pending.extend([b"a" * 1000 + b"\n"] * 5)
        assert len(s._chunk()) == 4 * 1001          # 4 whole lines fit 4096, a 5th does not
        s.pending.clear()
        s.pending.extend([b"b" * 5000 + b"\n", b"c\n"])
        assert s._chunk() == b"b" * 5000 + b"\n"   # one long line alone
        s.pending.clear()
    finally:
        os.close(s.fd)


def test_a_sink_whose_reader_went_away_writes_nothing_more_and_waits_for_nothing(capfd):
    from dagrun import linesink
    r, w = os.pipe()
    s = linesink.LineSink(w, bound=1 << 20)
    try:
        while not s.pending:
            s.line("x" * 100)
        os.close(r)
        assert s.pump() is True                    # EPIPE: dropped, nothing waits
        assert s.wfd is None and not s.pending and s not in linesink.waiting()
        s.line("after")
        assert s.wfd is None and not s.pending
        assert capfd.readouterr().err == ""         # not written elsewhere either
    finally:
        os.close(w)
