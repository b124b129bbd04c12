"""The hot path of a task start (issue 20): agents forked by the runner's spawner thread
(ProcessRunner.submit/spawned), a task file read with one openat2, a first claim that makes
its task folder without looking first. Runner checks run in a forked child, so the subreaper setting and the
spawner thread stay out of the test process (as in test_runners.py)."""
from __future__ import annotations

import errno
import multiprocessing as mp
import os
import select
import signal
import time

import pytest

from conftest import in_child
from dagrun import claim as claims
from dagrun import fsio
from dagrun.executor import Exit, Launch, ProcessRunner, StartError
from dagrun.store import CLAIM, Home


def _launch(tmp, agent: str, cwd: str | None = None) -> Launch:
    prompt = os.path.join(tmp, "prompt.md")
    with open(prompt, "w") as f:
        f.write("p\n")
    return Launch(agent=agent, cwd=cwd or tmp, env=dict(os.environ), stdin_path=prompt,
                  stdout_path=os.path.join(tmp, "stdout"), stderr_path=os.path.join(tmp, "stderr"),
                  run_id=f"test:{os.getpid()}:{time.monotonic_ns()}")


def _spawned(r: ProcessRunner, timeout: float = 20.0) -> list:
    """Wait on the runner's wake-up fds, as the engine's loop does, until a spawn is reported."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = r.spawned()
        if got:
            return got
        p = select.poll()
        for fd in r.wakeup().fds:
            p.register(fd, select.POLLIN)
        p.poll(100)
    raise AssertionError("the spawn was never reported")


def _exit(r: ProcessRunner, h: dict, timeout: float = 20.0) -> Exit:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r.service(set(r.wakeup().fds))
        ex = r.poll(h)
        if ex is not None:
            return ex
        time.sleep(0.02)
    raise AssertionError("the attempt never ended")


def _submit_then_exit(tmp: str) -> None:
    r = ProcessRunner()
    h = r.submit(_launch(tmp, "sleep 0.5; echo hi; echo err >&2"))
    key = r.key(h)
    assert "pid" not in h and r.poll(h) is None          # spawning: no pid yet, not ended
    [(got, err)] = _spawned(r)
    assert got is h and err is None
    assert h["pid"] == h["pgid"] > 0 and h["start"] and r.key(h) == key   # completed in place, same key
    ex = _exit(r, h)
    assert ex.ok, ex.describe()
    with open(os.path.join(tmp, "stdout")) as f:
        assert f.read() == "hi\n"
    with open(os.path.join(tmp, "stderr")) as f:
        assert f.read() == "err\n"
    r.close()


def _stop_while_spawning(tmp: str) -> None:
    r = ProcessRunner()
    h = r.submit(_launch(tmp, "sleep 30"))
    r.terminate(h)                       # asked before the process exists
    _spawned(r)
    t0 = time.monotonic()
    ex = _exit(r, h)
    assert ex.signal == signal.SIGTERM, ex.describe()
    assert time.monotonic() - t0 < 10
    r.close()


def _failed_spawn(tmp: str) -> None:
    r = ProcessRunner()
    h = r.submit(_launch(tmp, "true", cwd=os.path.join(tmp, "no-such-folder")))
    [(got, err)] = _spawned(r)
    assert got is h and isinstance(err, StartError) and "cannot start the agent" in str(err)
    assert r.poll(h) == Exit(None, signal.SIGKILL)      # forgotten: nothing runs
    r.close()


def _close_kills_what_is_being_spawned(tmp: str) -> None:
    r = ProcessRunner()
    marker = os.path.join(tmp, "still-running")
    r.submit(_launch(tmp, f"sleep 3; touch {marker}"))
    r.close()                            # before spawned(): the spawn finishes, then is killed
    time.sleep(4)
    assert not os.path.exists(marker)


def _exits_names_the_ended_attempts(tmp: str) -> None:
    from dagrun.executor import Mux
    r = ProcessRunner()
    mux = Mux({"process": r})
    short, long_ = mux.submit(_launch(tmp, "true")), mux.submit(_launch(tmp, "sleep 30"))
    got: list = []
    while len(got) < 2:
        got += _spawned(r)
    if not r.pidfd_ok:
        assert mux.exits(set(r.wakeup().fds)) is None     # no pidfds: the engine polls every run
        r.close()
        return
    assert mux.exits(set()) == set()
    ended: set = set()
    end = time.monotonic() + 20
    while not ended and time.monotonic() < end:           # wait as the loop does
        p = select.poll()
        for fd in mux.wakeup().fds:
            p.register(fd, select.POLLIN)
        ready = {fd for fd, _ in p.poll(100)}
        mux.service(ready)
        ended = mux.exits(ready)
    assert ended == {mux.key(short)}                      # only the one that exited; not the sleeper
    assert mux.poll(long_) is None and mux.poll(short).ok
    mux.kill(long_)
    while mux.poll(long_) is None:
        time.sleep(0.02)
    r.close()


def _a_slow_spawn_does_not_hold_up_the_next(tmp: str) -> None:
    """A spawn whose prompt is a FIFO blocks its spawner thread in open(2) until a writer
    comes; the other spawner thread starts the second agent meanwhile. Spawns are reported in
    the order they were submitted: the second waits for the first to be registered."""
    from dagrun import executor
    assert executor.SPAWNERS >= 2
    r = ProcessRunner()
    fifo = os.path.join(tmp, "slow-prompt")
    os.mkfifo(fifo)
    marker = os.path.join(tmp, "second-ran")
    slow = _launch(tmp, "cat >/dev/null")
    slow = Launch(**{**slow.__dict__, "stdin_path": fifo,
                     "stdout_path": os.path.join(tmp, "slow.out"), "stderr_path": os.path.join(tmp, "slow.err")})
    hs = r.submit(slow)
    time.sleep(0.2)                        # let a spawner thread block in open(fifo)
    hf = r.submit(_launch(tmp, f"touch {marker}"))
    end = time.monotonic() + 20
    while not os.path.exists(marker) and time.monotonic() < end:
        time.sleep(0.02)
    assert os.path.exists(marker), "the second agent waited for the first spawn"
    assert r.spawned() == [] and r.poll(hs) is None and r.poll(hf) is None   # reported in order
    w = os.open(fifo, os.O_WRONLY)        # the first spawn's open returns; it runs and ends
    os.close(w)
    got: list = []
    while len(got) < 2:
        got += _spawned(r)
    assert [h for h, _ in got] == [hs, hf] and not any(e for _, e in got)
    assert _exit(r, hs).ok and _exit(r, hf).ok
    r.close()


def test_a_slow_spawn_does_not_hold_up_the_next(tmp_path):
    """Two spawner threads (executor.SPAWNERS): the vfork waits of two spawns overlap."""
    in_child(_a_slow_spawn_does_not_hold_up_the_next, tmp_path)


def _three_slow_spawns_do_not_hold_up_a_fourth(tmp: str) -> None:
    """Three spawns blocked in open(2) of a FIFO prompt hold three spawner threads; a fourth
    agent is still started by the fourth thread (with two threads it waited in the queue)."""
    r = ProcessRunner()
    slow = []
    for i in range(3):
        fifo = os.path.join(tmp, f"slow-prompt-{i}")
        os.mkfifo(fifo)
        base = _launch(tmp, "cat >/dev/null")
        slow.append((fifo, r.submit(Launch(**{**base.__dict__, "stdin_path": fifo,
                                               "stdout_path": os.path.join(tmp, f"slow{i}.out"),
                                               "stderr_path": os.path.join(tmp, f"slow{i}.err")}))))
    time.sleep(0.3)                        # let three spawner threads block in open(fifo)
    marker = os.path.join(tmp, "fourth-ran")
    hf = r.submit(_launch(tmp, f"touch {marker}"))
    end = time.monotonic() + 20
    while not os.path.exists(marker) and time.monotonic() < end:
        time.sleep(0.02)
    ran = os.path.exists(marker)
    for fifo, _h in slow:                  # the slow spawns' opens return; they run and end
        os.close(os.open(fifo, os.O_WRONLY))
    got: list = []
    while len(got) < 4:
        got += _spawned(r)
    assert ran, "the fourth agent waited for a spawner thread"
    assert [h for h, _ in got] == [h for _, h in slow] + [hf] and not any(e for _, e in got)
    assert all(_exit(r, h).ok for h, _ in got)
    r.close()


def _threads_start_as_spawns_pile_up(tmp: str) -> None:
    """The spawner threads (executor._Spawner._grow): the first submit starts one thread --
    a run's first agent waits for one thread's start, not four (docs/performance.md
    "2026-12-06 (12)") -- the first collect the rest, up to SPAWNERS, and a submit one more
    whenever more spawns are in flight than there are threads (see the next test: spawns
    submitted before any collect)."""
    import threading
    from dagrun import executor

    def spawners():
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("dagrun-spawner"))
    r = ProcessRunner()
    h = r.submit(_launch(tmp, "true"))
    assert spawners() == ["dagrun-spawner-0"]
    got = _spawned(r)
    assert [x for x, _ in got] == [h] and _exit(r, h).ok
    assert len(spawners()) == executor.SPAWNERS                  # the rest: at the first collect
    hs = [r.submit(_launch(tmp, "true")) for _ in range(6)]      # six in flight at once
    assert len(spawners()) == executor.SPAWNERS
    got = []
    while len(got) < 6:
        got += _spawned(r)
    assert [x for x, _ in got] == hs and all(_exit(r, x).ok for x in hs)
    r.close()
    assert spawners() == []
    r = ProcessRunner()                     # closed before its first collect: close() collects
    r.submit(_launch(tmp, "sleep 30"))      # what was being spawned, and starts no thread then
    r.close()
    assert spawners() == []


def test_spawner_threads_start_as_spawns_pile_up(tmp_path):
    in_child(_threads_start_as_spawns_pile_up, tmp_path)


def _threads_start_for_spawns_submitted_before_a_collect(tmp: str) -> None:
    """Before any collect, each spawn in flight beyond the threads there are starts one more
    (up to SPAWNERS): three spawns blocked in open(2) of a FIFO prompt, submitted one by one
    with time for each to block, do not hold up a fourth (nothing collected meanwhile)."""
    import threading
    from dagrun import executor
    sp = executor._Spawner()
    fifos = []
    try:
        for i in range(3):
            fifo = os.path.join(tmp, f"p{i}")
            os.mkfifo(fifo)
            fifos.append(fifo)
            base = _launch(tmp, "cat >/dev/null")
            sp.submit(f"s{i}", Launch(**{**base.__dict__, "stdin_path": fifo}), False)
            time.sleep(0.1)                 # it blocks in open(fifo) before the next comes
        marker = os.path.join(tmp, "fourth-ran")
        sp.submit("f", _launch(tmp, f"touch {marker}"), False)
        end = time.monotonic() + 20
        while not os.path.exists(marker) and time.monotonic() < end:
            time.sleep(0.02)
        assert os.path.exists(marker), "the fourth spawn waited for a thread"
        assert len([t for t in threading.enumerate() if t.name.startswith("dagrun-spawner")]) == 4
    finally:
        for fifo in fifos:
            os.close(os.open(fifo, os.O_WRONLY))
        sp.close()
        for _k, s in sp.collect():
            if not isinstance(s, StartError):
                os.close(s.r_out)
                os.close(s.r_err)
        os.close(sp.fd)
        os.close(sp._w)


def test_spawns_submitted_before_a_collect_each_get_a_thread(tmp_path):
    in_child(_threads_start_for_spawns_submitted_before_a_collect, tmp_path)


def test_four_spawns_in_flight_at_once(tmp_path):
    """Four spawner threads (executor.SPAWNERS, docs/performance.md "2026-12-06 (2)"): a
    fan-out's launches no longer queue for two threads parked in vfork(2)."""
    in_child(_three_slow_spawns_do_not_hold_up_a_fourth, tmp_path)


def test_exits_names_only_the_attempts_whose_process_ended(tmp_path):
    """The engine polls only these runs each turn (Engine._reap(due)): a pidfd stays
    readable once its process has exited, so a run is never missed."""
    in_child(_exits_names_the_ended_attempts, tmp_path)


def test_submit_reports_the_spawn_then_the_exit(tmp_path):
    in_child(_submit_then_exit, tmp_path)


def test_a_stop_asked_while_spawning_is_applied_when_the_process_exists(tmp_path):
    in_child(_stop_while_spawning, tmp_path)


def test_a_spawn_that_fails_comes_back_as_start_error(tmp_path):
    in_child(_failed_spawn, tmp_path)


def test_closing_the_runner_kills_what_is_being_spawned(tmp_path):
    in_child(_close_kills_what_is_being_spawned, tmp_path)


def test_open_beneath_follows_no_link_and_never_leaves_the_root(tmp_path):
    if fsio._OPENAT2 is None:
        pytest.skip("no openat2(2) here: open_task_file walks the path (tests/reliability/test_security.py)")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "a" / "b" / "l").symlink_to("/etc/passwd")
    (tmp_path / "la").symlink_to(tmp_path / "a")
    fd = fsio.open_beneath(str(tmp_path), "a/b/f")
    assert os.read(fd, 10) == b"x"
    os.close(fd)
    for rel, want in [("a/b/l", errno.ELOOP), ("la/b/f", errno.ELOOP), ("a/../../etc/passwd", errno.EXDEV),
                      ("a/b/nope", errno.ENOENT), ("a/b/f/x", errno.ENOTDIR)]:
        with pytest.raises(OSError) as e:
            fsio.open_beneath(str(tmp_path), rel)
        assert e.value.errno == want, rel
    home = Home(str(tmp_path))
    with pytest.raises(Exception, match="symbolic link"):   # the walk names what it refused
        home.open_task_file(str(tmp_path / "a" / "b" / "l"))


def test_a_first_claim_makes_its_folder_and_says_so(tmp_path):
    """acquire() makes the task folder, then claim/ in it (two mkdirs, no look first): True
    whether the folder was made with the claim or was there (a retry), False while held;
    with hold=True the birth lock is on the folder before the claim appears, and owner.json
    drops it."""
    home = Home(str(tmp_path / "home"))
    home.ensure()
    os.makedirs(home.tasks_dir("g"))
    assert claims.acquire(home, "g", "t1") is True
    assert os.path.isdir(home.claim_dir("g", "t1")) and os.listdir(home.claim_dir("g", "t1")) == []
    assert os.listdir(home.task_dir("g", "t1")) == [CLAIM]
    assert not claims.acquire(home, "g", "t1")          # held: exclusive like mkdir
    assert not claims.being_born(home, "g", "t1")       # (made without the birth lock)
    claims.release(home, "g", "t1")
    got = claims.acquire(home, "g", "t1")               # the folder exists: claim/ alone
    assert got is True and os.listdir(home.task_dir("g", "t1")) == [CLAIM]
    assert claims.acquire(home, "g", "t2", hold=True) is True and claims.being_born(home, "g", "t2")
    claims.update_owner(home, "g", "t2", claims.new_owner("w", 1, kind="engine"))
    assert not claims.being_born(home, "g", "t2")
    assert claims.acquire(home, "g2", "t", hold=True) is True    # no tasks/ folder yet: made
    assert claims.being_born(home, "g2", "t")


def test_a_task_folder_is_listed_once_after_every_claim_even_one_the_claim_made(tmp_path, monkeypatch):
    """claim_task reads a task's folder (markers, attempts/, half-done breaks) once it holds
    the claim: one listing, also when the claim's acquire made the folder itself. An earlier
    version skipped that listing (the folder "can only hold claim/"), but another worker can
    claim, run and commit the task between the folder's mkdir and the claim's, and the task
    then ran twice (bug 34; test_stale_claims.py plays that interleaving). A folder that
    existed (a retry) is listed too, and a marker there refuses."""
    from dagrun import lifecycle
    from dagrun.plan import parse
    home = Home(str(tmp_path / "home"))
    home.ensure()
    os.makedirs(home.tasks_dir("g"))
    plan = parse(b'{"goal": "g", "defaults": {"agent": "true"}, "tasks": [{"id": "t1", "prompt": "x"}, '
                 b'{"id": "t2", "prompt": "y"}]}', shown="p", source=str(tmp_path / "p.json"), default_goal="g")
    listed, listdir, scandir = [], os.listdir, os.scandir
    tasks = home.tasks_dir("g")
    monkeypatch.setattr(os, "listdir", lambda p: (listed.append(p) if os.path.dirname(str(p)) == tasks else None) or listdir(p))
    monkeypatch.setattr(os, "scandir", lambda p: (listed.append(p) if os.path.dirname(str(p)) == tasks else None) or scandir(p))
    c = lifecycle.claim_task(home, plan, "t1", worker="w", kind="engine")
    assert c is not None and c.attempt == 1 and listed == [home.task_dir("g", "t1")]
    assert sorted(os.listdir(home.task_dir("g", "t1"))) == [CLAIM, "prompt.md"]
    claims.release(home, "g", "t1")
    listed.clear()
    c = lifecycle.claim_task(home, plan, "t1", worker="w", kind="engine")     # the folder exists
    assert c is not None and listed == [home.task_dir("g", "t1")]
    claims.release(home, "g", "t1")
    os.makedirs(home.task_dir("g", "t2"))
    open(os.path.join(home.task_dir("g", "t2"), "done"), "w").close()
    assert lifecycle.claim_task(home, plan, "t2", worker="w", kind="engine") is None
    assert listed[-1] == home.task_dir("g", "t2")


def _drive_slow_spawns(home_root: str, goal: str) -> None:
    from dagrun import executor
    from dagrun.engine import Engine
    code = 99
    try:
        real = executor._spawn

        def slow(launch, want_pidfd):      # a fork that takes long (a loaded machine)
            time.sleep(0.6)
            return real(launch, want_pidfd)
        executor._spawn = slow
        code = Engine(Home(home_root), goal=goal, runner=ProcessRunner(), worker=f"w-{os.getpid()}",
                      rescan_every=0.05).run()
    finally:
        os._exit(int(code))


def test_a_rescan_while_an_agent_is_being_spawned_leaves_it_alone(tmp_path):
    """The engine rebuilds the goal from the files every rescan; an attempt still being
    spawned has no owner.json yet and must not look like a claim taken away."""
    import json

    from conftest import write_plan
    from dagrun import edit
    p = write_plan(tmp_path / "plans", [{"id": "a", "prompt": "p", "agent": "echo out"},
                                        {"id": "b", "prompt": "p", "agent": "echo out", "deps": ["a"]}], goal="g")
    home = Home(str(tmp_path / "home"))
    edit.submit(home, str(p))
    proc = mp.get_context("fork").Process(target=_drive_slow_spawns, args=(home.root, "g"))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    for t in ("a", "b"):
        with open(home.marker_path("g", t, "done")) as f:
            assert json.load(f)["attempt"] == 1
    with open(home.events_path("g")) as f:
        seen = [json.loads(x).get("status") for x in f if '"task":"a"' in x.replace(" ", "")]
    assert seen == ["ready", "running", "done"], seen


def _spawner_wakes_once_per_collect(tmp: str) -> None:
    """Spawns that finish before the loop collects share one wake-up byte (executor._Spawner,
    docs/performance.md "twelfth session"); after a collect the next spawn writes one again."""
    from dagrun import executor
    sp = executor._Spawner()
    try:
        for i in range(6):
            sp.submit(f"k{i}", _launch(tmp, "true"), True)
        end = time.monotonic() + 20
        while len(sp._done) < 6 and time.monotonic() < end:
            time.sleep(0.01)
        assert len(sp._done) == 6
        assert os.read(sp.fd, 4096) == b"s"          # one byte for six spawns
        got = sp.collect()
        assert sorted(k for k, _ in got) == [f"k{i}" for i in range(6)]
        sp.submit("k6", _launch(tmp, "true"), True)
        p = select.poll()
        p.register(sp.fd, select.POLLIN)
        assert p.poll(20000), "the spawn after a collect woke nobody"
        assert [k for k, _ in sp.collect()] == ["k6"]
        for _k, s in got:
            assert not isinstance(s, StartError), s
    finally:
        sp.close()
        os.close(sp.fd)
        os.close(sp._w)


def test_spawns_between_two_collects_share_one_wakeup_byte(tmp_path):
    in_child(_spawner_wakes_once_per_collect, tmp_path)


def _no_spawn_is_left_without_a_wakeup(tmp: str) -> None:
    """The loop's side as the engine does it (poll the fd, collect) while four threads finish
    spawns at random moments: every result is collected, no poll(2) sleeps on a result that
    came without a byte."""
    import random
    from dagrun import executor
    sp = executor._Spawner()
    p = select.poll()
    p.register(sp.fd, select.POLLIN)
    rng = random.Random(7)
    launch = _launch(tmp, "true")
    try:
        for rnd in range(150):
            n = rng.randint(1, 8)
            for i in range(n):
                sp.submit(f"{rnd}.{i}", launch, False)
            got = 0
            while got < n:
                if rng.random() < 0.5:
                    time.sleep(rng.random() * 0.002)
                assert p.poll(5000), f"round {rnd}: {n - got} spawns outstanding ({len(sp._done)} done), no wake-up"
                for _k, s in sp.collect():
                    got += 1
                    assert not isinstance(s, StartError), s
                    os.close(s.r_out)
                    os.close(s.r_err)
                    s.popen.wait()
    finally:
        sp.close()
        os.close(sp.fd)
        os.close(sp._w)


def test_no_spawn_result_waits_without_a_wakeup(tmp_path):
    in_child(_no_spawn_is_left_without_a_wakeup, tmp_path)


def _start_from_the_clock(tmp: str) -> None:
    """A spawned agent's start time is /proc/PID/stat's; read from CLOCK_BOOTTIME readings
    around the fork when both fall in one tick, /proc read only to check that once, when the
    readings straddle a tick, or after a disagreement (executor._start_of)."""
    import subprocess
    from dagrun import executor
    from dagrun.proc import proc_start
    if executor._START_CLOCK is False:
        pytest.skip("no CLOCK_BOOTTIME ticks here")
    tick = executor._TICK_NS
    child = subprocess.Popen(["sleep", "30"])
    try:
        real = proc_start(child.pid)
        inside = int(real) * tick + tick // 2
        executor._START_CLOCK = None              # not yet checked: /proc read, and it agrees
        assert executor._start_of(child.pid, inside - 1, inside) == real
        assert executor._START_CLOCK is True
        reads = []
        executor.proc_start = lambda pid: reads.append(pid) or real
        assert executor._start_of(child.pid, inside - 1, inside) == real and reads == []   # no /proc
        assert executor._start_of(child.pid, inside - tick, inside) == real and reads == [child.pid]   # straddles
        executor.proc_start = proc_start
        executor._START_CLOCK = None              # a clock that disagrees: /proc from then on
        assert executor._start_of(child.pid, inside + 3 * tick, inside + 3 * tick) == real
        assert executor._START_CLOCK is False
        executor.proc_start = lambda pid: reads.append(pid) or real
        assert executor._start_of(child.pid, inside - 1, inside) == real and len(reads) == 2
    finally:
        executor.proc_start = proc_start
        child.kill()
        child.wait()
    # spawned agents: the handle's start is the one /proc shows, and lies between the readings.
    # The clock is trusted after the first spawn whose readings fall in one tick, and then gives
    # the start of every such spawn. A loaded machine can have none of a dozen spawns in one
    # tick: vfork(2) parks the parent until the child has exec'd, and the child first waits for
    # a CPU -- 6-155 ms per spawn at load 16-24 on the 2 cores (the clock is then left untrusted,
    # /proc read: right, only slower). So: spawns until 8 starts came from the trusted clock.
    executor._START_CLOCK = None
    r = ProcessRunner()
    born = {}
    fork_exec = executor._fork_exec

    def recorded(*a, **kw):
        p = fork_exec(*a, **kw)
        born[p.pid] = p.born
        return p
    executor._fork_exec = recorded
    seen, from_clock, deadline = [], 0, time.monotonic() + 30
    try:
        while from_clock < 8:
            trusted = executor._START_CLOCK is True
            h = r.start(_launch(tmp, "sleep 30"))
            t0, t1 = born[h["pid"]]
            real = proc_start(h["pid"])
            seen.append(f"t0={t0} t1={t1} tick={tick} start={h['start']} /proc={real}")
            assert h["start"] == real and t0 // tick <= int(real) <= t1 // tick, seen[-1]
            if t0 // tick == t1 // tick:
                assert executor._START_CLOCK is True, seen[-1]     # (None: /proc was never read)
                from_clock += trusted
            r.kill(h)
            _exit(r, h)
            assert time.monotonic() < deadline, f"{from_clock} starts from the clock in 30 s: {seen[-5:]}"
    finally:
        executor._fork_exec = fork_exec
        r.close()


def test_the_start_time_comes_from_the_clock_and_matches_proc(tmp_path):
    in_child(_start_from_the_clock, tmp_path)


def _calls_by_thread(tmp: str) -> None:
    """Of a spawn's system calls that release the GIL (each one a hand-off the engine's loop
    thread may park on until the spawner's next release), the spawner thread makes only the
    prompt's open, the fork, and the error pipe's close and read; the loop's thread makes the
    pipes and the cwd's stat in submit(), closes the child's ends when it collects, and reads
    /proc/PID/stat for a start time whose clock readings straddle a tick (executor._Stdio,
    _started; docs/performance.md "2026-12-06 (11)")."""
    import collections
    import threading
    from dagrun import executor
    calls: collections.Counter = collections.Counter()
    real = {n: getattr(os, n) for n in ("pipe2", "open", "close", "read", "stat", "write")}

    def wrap(name):
        def f(*a, **k):
            who = "spawner" if threading.current_thread().name.startswith("dagrun-spawner") else "loop"
            calls[who, name] += 1
            return real[name](*a, **k)
        return f
    from dagrun.proc import proc_start
    r = ProcessRunner()
    executor.PATH_TTL = 600.0                # (sleep's PATH search stat'ed once, here)
    r.submit(_launch(tmp, "sleep 0"))        # (starts the spawner threads)
    _spawned(r)
    if executor._START_CLOCK is False or not executor._TICK_NS:
        pytest.skip("no CLOCK_BOOTTIME ticks here")
    executor._START_CLOCK = True             # the clock trusted, every spawn's readings straddling a
    executor._TICK_NS = 1                    # tick: the /proc/PID/stat reads are the loop's thread's
    calls.clear()
    for n in real:
        setattr(os, n, wrap(n))
    try:
        hs = [r.submit(_launch(tmp, "sleep 30")) for _ in range(8)]
        got: list = []
        while len(got) < 8:
            got += _spawned(r)
    finally:
        for n, f in real.items():
            setattr(os, n, f)
    assert [h for h, _ in got] == hs and not any(e for _, e in got)
    spawner = {n: c for (who, n), c in calls.items() if who == "spawner"}
    writes = spawner.pop("write", 0)           # the wake-up byte: one per collect at most
    assert spawner == {"open": 8, "close": 8, "read": 8}, calls
    assert writes <= 8
    assert calls["loop", "pipe2"] == 24 and calls["loop", "stat"] == 8 and calls["loop", "open"] >= 8, calls
    for h in hs:
        assert h["start"] == proc_start(h["pid"]) and h["start"] is not None, h
        r.kill(h)
        _exit(r, h)
    r.close()


def test_a_spawner_thread_makes_only_the_open_the_fork_and_the_exec_error_read(tmp_path):
    in_child(_calls_by_thread, tmp_path)


def _no_fd_is_left(tmp: str) -> None:
    """Every outcome of a submitted spawn leaves the runner's process with the fds it had:
    started (the child's ends closed at collect, the read ends at the exit), a prompt that
    cannot be opened, a cwd that is not there, a program that is not there (direct exec, then
    sh's 127), and the runner's close()."""
    def fds() -> set:
        return set(os.listdir("/proc/self/fd"))
    r = ProcessRunner()
    h0 = r.submit(_launch(tmp, "true"))           # (the spawner threads and their pipe exist)
    _spawned(r)
    _exit(r, h0)
    before = fds()
    for launch, ok in [(_launch(tmp, "echo out; echo err >&2"), True),
                       (Launch(**{**_launch(tmp, "true").__dict__, "stdin_path": os.path.join(tmp, "gone.md")}), False),
                       (_launch(tmp, "true", cwd=os.path.join(tmp, "no-such-folder")), False),
                       (_launch(tmp, "no-such-program-here"), True)]:
        h = r.submit(launch)
        [(got, err)] = _spawned(r)
        assert got is h and (err is None) == ok, (launch.agent, err)
        if ok:
            _exit(r, h)
        assert fds() == before, (launch.agent, fds() - before)
    r.close()


def test_no_fd_is_left_by_any_outcome_of_a_spawn(tmp_path):
    in_child(_no_fd_is_left, tmp_path)
