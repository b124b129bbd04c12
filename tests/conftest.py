"""Shared helpers: real files, real processes, the installed `dagrun` binary."""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def dagrun_bin() -> str:
    """The installed console script (next to this interpreter, else on PATH)."""
    cand = Path(sys.executable).parent / "dagrun"
    if cand.exists():
        return str(cand)
    found = shutil.which("dagrun")
    if not found:
        pytest.fail("the dagrun command is not installed (pip install -e '.[test]')")
    return found


DAGRUN = dagrun_bin()


# Under mutmut (DAGRUN_MUTMUT=1, see tests/reliability/README.md) a test that runs the installed
# binary cannot see the mutant (mutmut swaps functions inside the test process): skip it there.
MUTMUT = bool(os.environ.get("DAGRUN_MUTMUT"))


def pytest_configure(config):
    """Byte-compile dagrun's modules once, before any test runs the installed command. A
    wheel install ships them compiled; an editable install writes __pycache__ on first use,
    except under PYTHONDONTWRITEBYTECODE=1, where every `dagrun` process the suite starts
    (thousands) would compile all of them again: ~0.1 s of CPU each (bench/latency.py shows
    the cold-start cost). py_compile writes them whatever that variable says; stale ones
    are found by the usual mtime check. Once, in the xdist controller (or a plain run)."""
    if MUTMUT or hasattr(config, "workerinput"):
        return
    import compileall
    import re
    # not dagrun/share: the examples there are copied out whole by `dagrun init --example`
    compileall.compile_dir(str(REPO / "dagrun"), quiet=2, rx=re.compile(r"[/\\]dagrun[/\\]share[/\\]"))
    if getattr(config.option, "numprocesses", None):
        rewrite_test_modules_once(config)


def rewrite_test_modules_once(config) -> None:
    """Write the assertion-rewritten code of the test modules (pytest's own cached pyc in
    tests/**/__pycache__) before the xdist workers start, which then load it instead of each
    rewriting every module itself: ~3.4 s of CPU per worker (pytest's AST pass over ~70
    modules; every worker collects them all), i.e. 4-5 x that on CI's fresh clone, where no
    cache exists yet -- and in every run under PYTHONDONTWRITEBYTECODE=1, where pytest never
    writes it. Done here once, split over the cores (forked children). Through pytest's
    rewrite module (private names): if they change, nothing is written and every worker
    rewrites as before; the workers check each pyc's source hash whoever wrote it."""
    try:
        from _pytest.assertion import rewrite as rw
        state = config.stash[rw.assertstate_key]
        read_pyc, rewrite, write_pyc = rw._read_pyc, rw._rewrite_test, rw._write_pyc
        cache_dir, tail, makedirs = rw.get_cache_dir, rw.PYC_TAIL, rw.try_makedirs
    except (ImportError, AttributeError, KeyError):
        return
    if config.getoption("assertmode", "rewrite") != "rewrite":
        return
    patterns = ["conftest.py", *config.getini("python_files")]
    files = set((REPO / "tests").rglob("conftest.py"))
    for arg in config.args:                # what this run collects: the files named, or under the folders
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    todo = []
    for f in sorted(files):
        if f.suffix == ".py" and f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in patterns):
            pyc = cache_dir(f) / (f.name[:-3] + tail)
            if read_pyc(f, pyc) is None and makedirs(pyc.parent):
                todo.append((f, pyc))

    def write(part):
        for f, pyc in part:
            try:
                source_hash, co = rewrite(f, config)
            except SyntaxError:
                continue                   # the worker's own import reports it
            write_pyc(state, co, source_hash, pyc)

    n = max(1, min(len(todo), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    pids = []
    for i in range(1, n):
        pid = os.fork()
        if pid == 0:                       # a child: its share, then out without pytest's atexit
            code = 0
            try:
                write(todo[i::n])
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    write(todo[0::n])
    for pid in pids:
        os.waitpid(pid, 0)


def _child_env(env: dict | None) -> dict:
    """The environment of a `dagrun` the tests start: ours without DAGRUN_HOME (--home names
    it), plus `env`. Under mutmut the test is skipped (the binary does not see the mutants)."""
    if MUTMUT:
        pytest.skip("runs the installed dagrun, which mutmut does not mutate")
    e = dict(os.environ)
    e.pop("DAGRUN_HOME", None)
    if env:
        e.update(env)
    return e


def run(*args, home: Path | str | None = None, check: bool | int = True, timeout: float = 60, env=None,
        input: bytes | str | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run `dagrun args...` and return the finished process (text mode)."""
    e = _child_env(env)
    argv = [DAGRUN] + ([f"--home={home}"] if home is not None else []) + [str(a) for a in args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, input=input, cwd=cwd)
    if check is True and p.returncode != 0:
        raise AssertionError(f"dagrun {' '.join(map(str, args))} exited {p.returncode}\n"
                             f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    if check is not True and check is not False and p.returncode != check:
        raise AssertionError(f"dagrun {' '.join(map(str, args))} exited {p.returncode}, expected {check}\n"
                             f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def spawn(*args, home: Path | str, env=None, cwd=None, **kw) -> subprocess.Popen:
    """Start `dagrun args...` in the background (own session, so tests can signal it)."""
    e = _child_env(env)
    argv = [DAGRUN, f"--home={home}"] + [str(a) for a in args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=cwd,
                            start_new_session=True, **kw)


def write_plan(folder: Path, tasks: list[dict], name: str = "dag.json", **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = dict(top)
    doc["tasks"] = tasks
    p = folder / name
    p.write_text(json.dumps(doc, indent=1))
    return p


def fanout_engine(tmp_path: Path, n: int, after: float):
    """(home, an in-process Engine) for a submitted 1 -> n fan-out (goal "fo", agent `true`,
    tasks a, m00, m01, ...; -j n) whose runs are simulated (simrun.FakeRunner): each ends
    `after` seconds after it started. For tests that count what the loop thread does."""
    from dagrun.engine import Engine
    from dagrun.simrun import FakeRunner, Outcome
    from dagrun.store import Home

    h = Home(str(tmp_path / "home"))
    tasks = [{"id": "a", "prompt": "x"}] + [{"id": f"m{i:02d}", "prompt": "x", "deps": ["a"]} for i in range(n)]
    p = write_plan(tmp_path / "p", tasks, goal="fo", defaults={"agent": "true"})
    run("submit", p, home=h.root)
    return h, Engine(h, goal="fo", jobs=n, runner=FakeRunner(lambda launch: Outcome(after=after)))


def run_goal(base: Path, tasks: list[dict], *, check: bool | int = True, **top) -> tuple[Path, Path]:
    """base/plans/dag.json from `tasks`, run to its end with `dagrun run` in base/home:
    (home, plan). For module fixtures that look at one finished goal from many tests."""
    plan = write_plan(base / "plans", tasks, **top)
    run("run", plan, home=base / "home", check=check)
    return base / "home", plan


def in_child(fn, tmp) -> None:
    """fn(str(tmp)) in a forked child, its exception reported back as the assertion's message:
    for checks of a runner whose process-wide settings (the child subreaper, started threads)
    must stay out of the test process."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def body():
        try:
            fn(str(tmp))
            q.put("ok")
        except BaseException as e:   # report, do not hang the queue; where: the failing line
            import traceback
            where = "".join(traceback.format_tb(e.__traceback__)[-2:])
            q.put(f"{type(e).__name__}: {e}\n{where}")
    p = ctx.Process(target=body)
    p.start()
    try:
        res = q.get(timeout=60)
    except queue.Empty:              # (a bare Empty said nothing)
        res = f"no result from the child in 60 s (pid {p.pid}, alive: {p.is_alive()})"
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(10)
    assert res == "ok", res


def wait_for(pred, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def step_pattern(label: str, home: Path | str) -> str:
    """An fnmatch pattern (fsio's DAGRUN_CRASH_ON) of one step label of a DAGRUN_STEP_TRACE that
    matches the same step in another run: the run's home, pids and ids (hex with a digit, the
    clock) become `*`."""
    s = re.sub(r"[][*?]", lambda m: f"[{m.group(0)}]", label).replace(str(home), "*")
    return re.sub(r"\*+", "*", re.sub(r"[0-9a-f]*[0-9][0-9a-f]*", "*", s))


def crash_step(labels: list[str], k: int, home: Path | str, after: bool = False) -> dict:
    """The environment that SIGKILLs a dagrun right before (after: after) the step that was
    the k-th (1-based) of a clean run whose labels and home these are -- named by its label
    and its rank among the steps with such a label (DAGRUN_CRASH_ON), not by k: the engine's
    threads and its batched event appends make the k-th step another one from run to run."""
    pat = step_pattern(labels[k - 1], home)
    j = sum(fnmatch.fnmatchcase(lab, pat) for lab in labels[:k])
    return {"DAGRUN_CRASH_AT": f"{j}{':after' if after else ''}", "DAGRUN_CRASH_ON": pat}


@contextlib.contextmanager
def safe_walks(suffix: str = ""):
    """The paths (relative to the home) that fsio.open_beneath -- the safe walk of a task
    file, openat2 and five more calls -- is asked for while the block runs, those ending in
    `suffix`; a list filled as it goes."""
    from dagrun import fsio

    walks: list[str] = []
    real = fsio.open_beneath

    def counted(root, rel, *a, **k):
        if rel.endswith(suffix):
            walks.append(rel)
        return real(root, rel, *a, **k)

    fsio.open_beneath = counted
    try:
        yield walks
    finally:
        fsio.open_beneath = real


def task_dir(home: Path, goal: str, task: str) -> Path:
    return Path(home) / "goals" / goal / "tasks" / task


def events(home: Path, goal: str, polling: bool = False) -> list[dict]:
    """polling: the log is being written -- an append that crosses a page boundary can be read
    half done (events.flush writes a batch of lines in one write(2)), so an unterminated last
    line is left for the next poll, as events.Reader does. Otherwise it fails to parse."""
    p = Path(home) / "goals" / goal / "events.jsonl"
    if not p.exists():
        return []
    text = p.read_text()
    if polling:
        text = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def outputs(home: Path, goal: str) -> dict[str, str]:
    """The outputs of the goal's done tasks, by task id."""
    tasks = Path(home) / "goals" / goal / "tasks"
    return {t: (tasks / t / "output").read_text() for t in sorted(os.listdir(tasks))
            if (tasks / t / "done").exists()}


def submit_home(tmp_path: Path, tasks: list[dict], **top):
    """A store.Home at tmp_path/home with goal "g" (tmp_path/plan/dag.json) submitted in this
    process (edit.submit): for the tests that call the library, which mutmut's mutants reach."""
    from dagrun import edit
    from dagrun.store import Home
    doc = {"goal": "g", **top, "tasks": tasks}
    p = tmp_path / "plan" / "dag.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc))
    home = Home(str(tmp_path / "home"))
    assert edit.submit(home, str(p)).goal == "g"
    return home


def goal_events(home, kind: str | None = None, goal: str = "g", polling: bool = False) -> list[dict]:
    """A store.Home's events of `goal` (of type `kind`), read in this process (polling: as
    events())."""
    with open(home.events_path(goal), "rb") as f:
        data = f.read()
    if polling:
        data = data[:data.rfind(b"\n") + 1]
    out = [json.loads(x) for x in data.splitlines()]
    return [e for e in out if kind is None or e["type"] == kind]


def read_json(path: str) -> dict:
    with open(path, "rb") as f:
        return json.loads(f.read())


def dead_pid() -> int:
    """The pid of a process that has exited (reaped): a claim naming it has a dead holder."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@contextlib.contextmanager
def break_lock_held(home, seconds: float = 0.8, goal: str = "g"):
    """Another process holds the goal's `.break.lock` (filelock, as a claim breaker does) for
    `seconds`; the body runs once it holds it."""
    lock = os.path.join(home.goal_dir(goal), ".break.lock")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom filelock import FileLock\n"
                               f"with FileLock({lock!r}):\n    print('held', flush=True)\n    time.sleep({seconds})\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def processes_with_env(var: str, value: str | None = None, also: tuple[str, str] | None = None) -> list[int]:
    """Live processes whose environment has var (=value, a prefix): finds agents dagrun
    started. also=(var2, prefix2): and var2's value starts with prefix2 too."""
    needle = (f"{var}={value}" if value is not None else f"{var}=").encode()
    needle2 = f"{also[0]}={also[1]}".encode() if also else None
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if needle not in env:           # (cheap first look; the exact test follows)
            continue
        parts = env.split(b"\0")
        if not any(part.startswith(needle) for part in parts) or (
                needle2 is not None and not any(part.startswith(needle2) for part in parts)):
            continue
        try:
            if Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                continue
        except OSError:
            continue
        out.append(int(d))
    return out


def kill_group(p: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def plans(tmp_path) -> Path:
    d = tmp_path / "plans"
    d.mkdir()
    return d


def agents_of(home) -> list[int]:
    """Live agent processes (DAGRUN_RUN_ID set) working for this home."""
    want = b"DAGRUN_HOME=" + str(Path(home).resolve()).encode()
    out = []
    for pid in processes_with_env("DAGRUN_RUN_ID"):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in env:
            out.append(pid)
    return out


@pytest.fixture(autouse=True)
def _no_stray_agents(tmp_path_factory):
    """Every test must leave no agent processes behind (agents carry DAGRUN_RUN_ID). Only
    agents of this pytest session count (their DAGRUN_HOME is under its basetemp): other test
    sessions on the same machine have agents of their own, which are none of our business."""
    mine = str(tmp_path_factory.getbasetemp()) + os.sep

    def agents():         # one pass over /proc (this runs twice for every test)
        return set(processes_with_env("DAGRUN_RUN_ID", also=("DAGRUN_HOME", mine)))
    before = agents()
    yield
    deadline = time.monotonic() + 15   # a remote runner (Ray) stops a cancelled agent asynchronously
    left = []
    while time.monotonic() < deadline:
        left = [p for p in agents() if p not in before]
        if not left:
            break
        time.sleep(0.05)
    why = "\n".join(stray_report(p) for p in left)      # what the stray was, before it is killed
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"agent processes left running after the test: {left}\n{why}"


def _proc(pid, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError as e:
        return f"<{e.strerror}>"


def _stat(pid) -> tuple[str, int, float]:
    """(state, ppid, age in seconds) of a process, ('?', 0, 0) if it is gone."""
    try:
        st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        up = float(Path("/proc/uptime").read_text().split()[0])
        return st[0], int(st[1]), round(up - int(st[19]) / os.sysconf("SC_CLK_TCK"), 1)
    except (OSError, IndexError, ValueError):
        return "?", 0, 0.0


def _line(pid) -> str:
    state, ppid, age = _stat(pid)
    return f"pid {pid} ({state}, age {age}s, ppid {ppid}): {_proc(pid, 'cmdline')[:160]}"


def _fds(pid) -> dict[str, str]:
    out = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                pass
    except OSError:
        pass
    return out


def stray_report(pid: int) -> str:
    """Why an agent outlived its test, in facts read from /proc before it is killed: the agent
    (age, run id, task), its ancestors, the Ray worker it ran under (`ray::IDLE`: Ray thinks
    the task ended; `ray::attempt` (`ray::run_agent` before session 9): it still runs it; gone: the agent was orphaned) and that
    worker's guard (alive? still fed by the worker's pipe?), the task's last events, and the
    Ray logs' lines about its Ray task (cancel requests, worker exits)."""
    lines = [f"stray {_line(pid)}"]
    try:
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    except OSError:
        env = {}
    rid, home = env.get(b"DAGRUN_RUN_ID", b"?").decode(), env.get(b"DAGRUN_HOME", b"").decode()
    goal, task = env.get(b"DAGRUN_GOAL", b"?").decode(), env.get(b"DAGRUN_TASK", b"?").decode()
    lines.append(f"  run id {rid}, {goal}/{task}, home {home}")
    worker, p = None, pid
    for _ in range(6):                       # its ancestors, up to the Ray worker or init
        p = _stat(p)[1]
        if p <= 1:
            break
        cmd = _proc(p, "cmdline")
        lines.append(f"  ancestor {_line(p)}")
        if cmd.startswith("ray::") or "default_worker.py" in cmd:
            worker = p
            break
    if worker is None:
        lines.append("  no Ray worker among its ancestors (it died, or this is not a Ray agent)")
    guards = [int(d) for d in os.listdir("/proc") if d.isdigit() and "DAGRUN_RUN_ID=" in _proc(d, "cmdline")
              and "dagrun Ray worker guard" in _proc(d, "cmdline")]
    for g in guards:                         # the Ray workers' guards (rayrun.GUARD)
        gp = _stat(g)[1]
        pipe = _fds(g).get("0", "?")
        fed = sorted({w for w in (worker, gp) if w and pipe in _fds(w).values()})
        lines.append(f"  guard pid {g} (state {_stat(g)[0]}, age {_stat(g)[2]}s), parent {gp} "
                     f"{_proc(gp, 'cmdline')[:40]!r}, stdin {pipe}, write end held by {fed or 'nobody it knows'}"
                     + (" <- this worker's" if worker and gp == worker else ""))
    if not guards:
        lines.append("  no guard process alive on this machine")
    tids = set()
    if home:
        for evf in Path(home).glob("goals/*/events.jsonl"):
            try:
                evs = [json.loads(x) for x in evf.read_text().splitlines() if f'"{task}"' in x]
            except (OSError, ValueError):
                continue
            for e in evs[-5:]:
                tids.update([e["task_id"]] if e.get("task_id") else [])
                lines.append("  event " + " ".join(f"{k}={e[k]}" for k in ("ts", "type", "status", "attempt", "reason",
                                                                          "task_id", "node") if k in e)[:240])
    logdirs = {os.path.dirname(t) for w in [worker] if w for t in _fds(w).values() if t.endswith((".log", ".out", ".err"))}
    if not logdirs and os.environ.get("RAY_ROOT"):
        logdirs = {os.path.join(os.environ["RAY_ROOT"], "session_latest", "logs")}
    for d in logdirs:                         # what Ray logged about the Ray task(s) of the attempt
        hits = []
        for f in sorted(Path(d).glob("*")) if os.path.isdir(d) else []:
            try:
                text = f.read_text(errors="replace") if f.stat().st_size < 20_000_000 else ""
            except OSError:
                continue
            # the lines naming the Ray task, and in the log of the worker that ran it (its
            # own, or one naming the task) the cancels and the worker's exit (which children
            # Ray killed as the worker exited)
            ours = (worker and f.name.endswith(f"_{worker}.log")) or any(len(t) > 16 and t in text for t in tids)
            hits += [f"{f.name}: {x.strip()[:220]}" for x in text.splitlines() if x.startswith("[") and (
                     any(len(t) > 16 and t in x for t in tids)
                     or (ours and f.name.startswith("python-core-worker") and any(
                         w in x for w in ("ancel", "child process", "exit_type", "Quick exit"))))]
        lines += [f"  ray log {h}" for h in hits[-25:]]
    return "\n".join(lines)


# ------------------------------------------------------------------ CI cannot skip silently
# Under CI=true a skipped test fails unless tests/allowed-skips.txt names it (with the reason
# it may skip there); every run ends with the list of its skips, each marked allowed or not.
CI = os.environ.get("CI", "").lower() == "true"
ALLOWED_SKIPS_FILE = REPO / "tests" / "allowed-skips.txt"
_SKIPS: list[tuple[str, str, bool]] = []


def _allowed_skips() -> list[str]:
    """The node-id patterns (fnmatch) of tests/allowed-skips.txt: `pattern  # why`."""
    out = []
    for line in ALLOWED_SKIPS_FILE.read_text().splitlines():
        pat = line.split("#", 1)[0].strip()
        if pat:
            out.append(pat)
    return out


def skip_allowed(nodeid: str) -> bool:
    import fnmatch
    if nodeid.rfind("@") > nodeid.rfind("]"):       # `--dist loadgroup` appends @<xdist_group>
        nodeid = nodeid[:nodeid.rfind("@")]
    return any(fnmatch.fnmatchcase(nodeid, p) for p in _allowed_skips())


# ------------------------------------------------------------------ the xdist schedule
# pyproject's addopts run the suite with `--dist loadgroup`, which tests/xdist_schedule.py
# makes this suite's own schedule: every test is its own unit of work (a long file no longer
# holds one worker while the other idles at the end), the longest tests start first
# (tests/durations.txt), and the tests that share one outside service (its SHARED_SERVICES: Slurm,
# Ray, the real agent CLIs) run one at a time, as they were written to.
from xdist_schedule import pytest_collection_modifyitems, pytest_configure_node, \
    pytest_xdist_make_scheduler  # noqa: E402,F401  (the hooks: pytest finds them in this module)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one and a half workers per core (3 on 2 cores). The tests wait on real
    things -- an agent's sleep, a lease or a grace running out, a daemon starting -- so with
    one worker per core a core idles while its test waits: on main, 2 workers took 447 s of
    wall for 707 s of CPU, i.e. a fifth of the workers' time was waiting. A half worker more
    keeps both cores busy. PYTEST_XDIST_AUTO_NUM_WORKERS=N overrides it.

    One worker more when a Slurm cluster is configured (SLURM_CONF names a file, sbatch is on
    PATH: the `slurm` tests will run, as in CI): the schedule keeps one worker on the Slurm
    tests from the first second (tests/xdist_schedule.py), and that worker mostly waits for
    the cluster (~17 s of CPU in a 150 s chain, `pytest -n 0 -m slurm`), so without it the
    Slurm, Ray and real-CLI chains held all three workers at the start of CI's run and the
    cores idled (docs/performance.md, "The services' chains").

    And one more when a Ray head is configured (RAY_ADDRESS set, the ray package installed:
    the `ray` tests will run): the Ray chain is waiting too -- 15 s of the tests' CPU in a
    153 s chain with Slurm, Ray and the real CLIs up (docs/performance.md, "The test suite
    under CI conditions") -- so in CI one worker would otherwise hold it idle for two minutes."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores + (cores + 1) // 2 + (1 if slurm_configured() else 0) + (1 if ray_configured() else 0)


def slurm_configured() -> bool:
    """A Slurm cluster is configured here (cheap: no Slurm command is run)."""
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    return os.path.isfile(conf) and shutil.which("sbatch") is not None


def ray_configured() -> bool:
    """A Ray head is named here (RAY_ADDRESS) and the ray package is installed (cheap: ray
    is not imported, the head not asked)."""
    import importlib.util
    return bool(os.environ.get("RAY_ADDRESS")) and importlib.util.find_spec("ray") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    allowed = skip_allowed(item.nodeid)
    # noted on the report: under pytest-xdist it is built in a worker and the summary below is
    # printed by the controller, which gets the report (user_properties included), not our list
    rep.user_properties.append(("dagrun_skip", [reason, allowed]))
    if CI and not allowed:
        rep.outcome = "failed"
        rep.longrepr = (f"skipped under CI=true: {reason}\n.ci/run must install what this test needs; "
                        f"a skip that is right in CI goes into {ALLOWED_SKIPS_FILE.relative_to(REPO)} with its reason")


def pytest_runtest_logreport(report):
    for key, value in getattr(report, "user_properties", ()):
        if key == "dagrun_skip" and report.when in ("setup", "call"):
            _SKIPS.append((report.nodeid, value[0], value[1]))


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):          # an xdist worker: the controller prints it
        return
    tr = terminalreporter
    tr.section(f"skips: {len(_SKIPS)} ({sum(not a for _n, _r, a in _SKIPS)} not in tests/allowed-skips.txt)")
    for nodeid, reason, allowed in _SKIPS:
        tr.line(f"{'allowed    ' if allowed else 'NOT ALLOWED'} {nodeid}: {reason}")


REALAGENTS = Path("/tmp/realagents")     # ../shared/realagents/agents.sh installs the CLIs and the mock here


def need_realagents(*binaries: str) -> None:
    """Skip (fail under CI=true) unless the real agent CLIs are installed under /tmp/realagents
    (`binaries`: these of its bin/) and their mock LLM API answers on its port (a mock.port
    left by a mock that died does not count)."""
    import socket
    why = None
    missing = [b for b in binaries if not os.access(REALAGENTS / "bin" / b, os.X_OK)]
    if not (REALAGENTS / "bin").is_dir() or missing:
        why = f"{REALAGENTS}/bin{'/' + missing[0] if missing else ''} is missing"
    else:
        try:
            port = int((REALAGENTS / "mock.port").read_text())
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except (OSError, ValueError) as e:
            why = f"the mock LLM API is not running ({e})"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI must install them: sh ../shared/realagents/agents.sh)")
        pytest.skip(f"{why}: run `sh ../shared/realagents/agents.sh`")


def need_slurm() -> None:
    """Skip (fail under CI=true) unless a Slurm cluster answers here: sbatch & co on PATH and
    `scontrol ping` UP (SLURM_CONF from the environment; .ci/run starts one with .ci/slurm-up.sh)."""
    from dagrun import executor
    why = executor.unusable("slurm")
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI must start Slurm: .ci/slurm-up.sh)")
        pytest.skip(f"{why}; start one with .ci/slurm-up.sh and export SLURM_CONF")


SLURM_END_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                    "BOOT_FAIL", "DEADLINE"}


def sbatch_wait(args: list[str], env: dict | None = None, timeout: float = 240) -> tuple[int, int]:
    """`sbatch --wait args...` without its waits: (job id, the job's exit code; 128+N for a
    signal). sbatch --wait asks for the job's state after 2 s, then 8 s, then 32 s (Slurm
    22.05's _job_wait), so a driver job that ran 3 s returned after 10 s; this asks
    `scontrol` every 0.1 s until the job is in an end state (COMPLETING is not one: the batch
    script's output is whole only after it)."""
    r = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=env, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"sbatch {args} exited {r.returncode}: {r.stderr}")
    job = int(r.stdout.strip().split(";")[0])
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["scontrol", "-o", "show", "job", str(job)], capture_output=True, text=True).stdout
        info = dict(x.split("=", 1) for x in out.split() if "=" in x)
        if info.get("JobState") in SLURM_END_STATES:
            code, _, sig = info.get("ExitCode", "0:0").partition(":")
            return job, (128 + int(sig)) if sig and int(sig) else int(code)
        if time.monotonic() > deadline:
            subprocess.run(["scancel", str(job)], capture_output=True)
            raise AssertionError(f"slurm job {job} still {info.get('JobState')} after {timeout} s")
        time.sleep(0.1)


@pytest.fixture
def cluster() -> None:
    """A Slurm cluster answers here (need_slurm): skipped without one, failing under CI=true."""
    need_slurm()


def need_ray() -> None:
    """Skip (fail under CI=true) unless the ray package is installed and a Ray head answers
    (RAY_ADDRESS; .ci/run starts one with `ray start --head`)."""
    from dagrun import executor
    why = executor.unusable("ray")
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI must start a Ray head: .ci/run)")
        pytest.skip(f"{why}; pip install -e '.[ray]', `ray start --head`, export RAY_ADDRESS")
