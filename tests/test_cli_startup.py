"""The CLI's start-up shortcuts (dagrun/cli/startup.py) say what typer says: the plain value
conversions give the adapter's values, anything else is left to the adapter, a command built
alone parses and fails as it does in the whole tree, and the shortcut is taken (no pydantic)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer._click import Context

from conftest import run, write_plan

from dagrun.cli import app, get_cli
from dagrun.cli.startup import _ASK, _plain, command_name

VALUES = [None, "", "0", "7", "007", "-1", "-0", " 3", "3 ", "+2", "1_0", "1e3", "1.5", "0.5", "-0.0", "abc",
          "12345678901234567890123", "1.", ".5", "٣", 0, 1, 7, -3, 1.5, True, False, (), ("a", "b"), ["x"]]


def _params(tree):
    """(command path, param) for every typed parameter of the tree."""
    out = []

    def walk(cmd, path):
        for p in cmd.params:
            if hasattr(p, "type_descriptor"):
                out.append((path, p))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])
    walk(tree, [])
    return out


def test_plain_conversions_equal_the_adapters_for_every_parameter():
    from typer._click.exceptions import BadParameter
    from typer._coercion import build_runtime_param

    seen, taken = set(), 0
    tree = get_cli()
    ctx = Context(tree, info_name="dagrun")
    for path, p in _params(tree):
        d = p.type_descriptor
        seen.add(repr(d.annotation))
        multi = p.multiple or p.nargs == -1
        real = build_runtime_param(d)
        for v in VALUES:
            if v is None:
                continue
            got = _plain(v, d, multi)
            if got is _ASK:
                continue
            taken += 1
            try:
                want = real.coerce(v, param=p, ctx=ctx)
            except BadParameter as e:
                pytest.fail(f"{path} {p.name}: {v!r} -> {got!r} here, the adapter refuses it: {e}")
            assert type(got) is type(want) and got == want, (path, p.name, v, got, want)
    assert {"<class 'str'>", "<class 'int'>", "<class 'float'>"} <= seen
    assert taken > 100


def test_the_command_is_found_after_global_options_and_only_it_is_built():
    assert command_name(app, ["--home", "h", "--color=never", "status", "g"]) == "status"
    assert command_name(app, ["resources", "set"]) == "resources"
    assert command_name(app, ["--version"]) is None and command_name(app, ["stat"]) is None
    assert command_name(app, ["--home"]) is None and command_name(app, []) is None
    assert list(get_cli(["--home=h", "retry", "g"]).commands) == ["retry"]
    assert len(get_cli(["nosuch"]).commands) == len(get_cli().commands) > 30


def test_a_typer_command_with_plain_values_does_not_import_pydantic(tmp_path):
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"}], goal="g")
    home = tmp_path / "home"
    run("run", plan, "-j", "2", "--poll", "0.5", home=home)
    code = ("import sys\nfrom dagrun.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print('pydantic' in sys.modules, code, file=sys.stderr)\n")
    for argv, ends in ((["status", "g"], "False 0"), (["run", "g", "-q", "-j", "3"], "False 0"),
                       (["events", "g", "--type", "task.blocked", "--type", "goal.finished"], "False 0"),
                       (["run", "g", "-j", "abc"], "True 2"), (["run", "g", "-j", "0"], "True 2")):
        p = subprocess.run([sys.executable, "-c", code, "--home", str(home), *argv], capture_output=True, text=True,
                           timeout=60)
        assert p.stderr.splitlines()[-1] == ends, (argv, p.stderr)


def test_bad_values_are_worded_by_typer(tmp_path):
    p = run("run", "x.json", "-j", "abc", home=tmp_path / "h", check=2)
    assert p.stderr == ("dagrun: Invalid value for '-j' / '--jobs': Input should be a valid integer, unable to "
                        "parse string as an integer (see: dagrun run --help)\n")
    p = run("run", "x.json", "--jobs=0", home=tmp_path / "h", check=2)
    assert "'-j' / '--jobs'" in p.stderr and "1" in p.stderr and p.stderr.count("\n") == 1
    p = run("status", "--nosuch", home=tmp_path / "h", check=2)
    assert p.stderr == "dagrun: No such option: --nosuch (see: dagrun status --help)\n"
    p = run("stat", home=tmp_path / "h", check=2)
    assert p.stderr.startswith("dagrun: No such command 'stat'")


def test_a_quiet_run_imports_none_of_the_heavy_modules(tmp_path):
    """`dagrun run PLAN -q` (the protocol fast path: submit, engine, one task, the goal's
    end) imports no typer, click, pydantic or rich (the CLI's), and none of the standard modules that cost milliseconds for a name or a
    number: socket (the host name is uname's), secrets (nonces are os.urandom), statistics
    (fractions, decimal), concurrent.futures (logging comes with watchdog's inotify binding), hashlib
    or hmac (OpenSSL's libcrypto and its configuration: dagrun.digests), typing (~11 M instructions:
    collections.abc's names in annotations, protocols as plain classes), and -- a run that ends
    within engine.WATCH_AFTER -- none of watchdog, logging or ctypes.util; nor random (~2.7 M
    instructions: only a retry's back-off draws from it) and, for a plan without a code
    workspace, dagrun.workspace (git's side, ~2.5 M); nor queue.py (the spawner's SimpleQueue is _queue's). Start-up is issue 20's fixed cost of
    every run (docs/performance.md, "Start-up of `dagrun run`", "2026-12-06 (10)"); this guards it without timing."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"},
                                       {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"]}], goal="g")
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(' '.join(sorted(sys.modules)), file=sys.stderr))\n"
            "from dagrun.entry import main\nmain(sys.argv[1:])\n")
    p = subprocess.run([sys.executable, "-c", code, "--home", str(tmp_path / "home"), "run", str(plan), "-q",
                        "-j", "2"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "goal g done: 2 done\n", p.stderr
    loaded = set(p.stderr.split("\n")[-2].split())
    assert {"dagrun.engine", "dagrun.executor", "dagrun.edit", "dagrun.watcher"} <= loaded   # the run happened here
    heavy = {"typer", "click", "pydantic", "rich", "socket", "secrets", "statistics",
             "concurrent.futures", "filelock", "psutil", "hashlib", "_hashlib", "hmac", "typing",
             "watchdog", "logging", "ctypes.util", "random", "dagrun.workspace", "queue"}
    assert sorted(heavy & loaded) == []
    import hashlib

    from dagrun import digests            # the interpreter's own SHA-1/SHA-256: hashlib's digests
    for data in (b"", b"abc", bytes(range(256)) * 300):
        assert digests.sha1(data).hexdigest() == hashlib.sha1(data).hexdigest()
        h = digests.sha256()
        h.update(data)
        assert h.hexdigest() == digests.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_the_console_command_skips_the_interpreters_finalization_and_keeps_its_output_and_code(tmp_path):
    """`dagrun` on the fast path, as its own process (main() without argv: the console
    script), ends with os._exit once stdout and stderr are flushed: no module teardown
    (10-20 ms a call) -- atexit handlers do not run -- while its output and exit code are
    the command's. main(argv), a library call, and a run under a profiler (cProfile,
    bench/loop_calls.py) or a sys.monitoring tool (Python 3.12+: coverage's sysmon core;
    here its API stands in on 3.11) raise SystemExit as before."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo hi"}], goal="g")
    home = str(tmp_path / "home")
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('finalized', file=sys.stderr))\n"
            "from dagrun.entry import main\n"
            "if sys.argv[1] == 'lib':\n    main(sys.argv[2:])\n"
            "elif sys.argv[1] == 'profiled':\n    sys.argv = ['dagrun'] + sys.argv[2:]\n"
            "    sys.setprofile(lambda *a: None)\n    main()\n"
            "elif sys.argv[1] == 'monitored':\n    sys.argv = ['dagrun'] + sys.argv[2:]\n"
            "    import types\n    mon = getattr(sys, 'monitoring', None) or types.SimpleNamespace(\n"
            "        get_tool=lambda i: 'coverage' if i == 1 else None)\n"
            "    sys.monitoring = mon\n    mon.get_tool(1) or mon.use_tool_id(1, 'coverage')\n    main()\n"
            "else:\n    sys.argv = ['dagrun'] + sys.argv[2:]\n    main()\n")

    def call(how, *argv):
        return subprocess.run([sys.executable, "-c", code, how, "--home", home, *argv], capture_output=True,
                              text=True, timeout=60)
    p = call("own", "run", str(plan), "-q")
    assert (p.returncode, p.stdout, p.stderr) == (0, "goal g done: 1 done\n", "")
    p = call("own", "claim", "g")                        # the goal has ended: exit 1, said on stderr
    assert p.returncode == 1 and "finalized" not in p.stderr
    p = call("own", "claim", "nosuch")                   # a one-line error, its code
    assert p.returncode == 2 and p.stderr.startswith("dagrun: ") and "finalized" not in p.stderr
    for how in ("lib", "profiled", "monitored"):         # a profiler writes its results after main()
        p = call(how, "claim", "nosuch")
        assert p.returncode == 2 and p.stderr.endswith("finalized\n"), how


def test_the_console_command_waits_for_its_threads_and_ctrl_c_there_exits_130(tmp_path):
    """The os._exit of the console command comes after the threads that are not daemons
    (hooks.py's) have ended, as the interpreter's exit would; a Ctrl-C while it waits exits
    130 with one line, no traceback."""
    import signal
    import time

    mark = tmp_path / "mark"
    # SIGINT as in a terminal: a background job of a non-interactive shell (CI) starts its
    # processes with SIGINT ignored, and Python then installs no KeyboardInterrupt for it
    code = ("import signal, sys, threading, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "def late(wait, path):\n    time.sleep(float(wait))\n    open(path, 'w').write('ran')\n"
            "threading.Thread(target=late, args=sys.argv[1:3]).start()\n"
            "sys.argv = ['dagrun', '--home', sys.argv[3], 'claim', 'nosuch']\n"
            "from dagrun.entry import main\nmain()\n")
    home = str(tmp_path / "home")
    p = subprocess.run([sys.executable, "-c", code, "0.5", str(mark), home], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("dagrun: ") and mark.read_text() == "ran"
    p = subprocess.Popen([sys.executable, "-c", code, "30", str(mark), home], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = p.stderr.readline()              # the command's error line: it now waits for the thread
        time.sleep(0.2)
        assert first.startswith("dagrun: no goal") and p.poll() is None
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert err == "dagrun: interrupted\n"


@pytest.mark.parametrize("closed", ["stdout", "stdout and stderr", "all three"])
def test_a_command_started_with_its_standard_fds_closed_writes_nowhere_and_keeps_its_code(tmp_path, closed):
    """`dagrun status >&-` (and 2>&-, <&-): no traceback (Python has no sys.stdout then), the
    exit code of the same command with /dev/null there, and /dev/null put on the closed fds
    first, so no file dagrun opens lands on fd 1 -- where a child would take it as its stdout.
    Both the typer path (status) and the fast path (run -q, heartbeat) are checked."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "echo hi"}],
                      goal="g")
    home = str(tmp_path / "home")
    redir = {"stdout": ">&-", "stdout and stderr": ">&- 2>&-", "all three": ">&- 2>&- <&-"}[closed]
    dagrun = str(Path(sys.executable).with_name("dagrun"))
    for argv, code in (("status", 0), (f"run {plan} -q", 0), ("heartbeat g a", 4), ("status g --json", 0)):
        p = subprocess.run(["bash", "-c", f"'{dagrun}' --home '{home}' {argv} {redir}; echo rc=$?"],
                           capture_output=True, text=True, timeout=60)
        assert "Traceback" not in p.stderr and p.stdout == f"rc={code}\n", (argv, p.stdout, p.stderr)
    out = Path(home, "goals", "g", "tasks", "a", "output").read_text()
    assert out == "hi\n"                    # the agent's stdout is its pipe, as always


def test_a_quiet_run_builds_no_dataclass_docstring_and_not_the_task_field_table(tmp_path):
    """Two start-up costs of `dagrun run -q` that no run uses: a dataclass without a
    docstring gets one made from `inspect.signature` of the class (0.1-0.3 ms each, 19 on the
    run path), and plan.Task's dataclass field table (make_dataclass of 38 fields, ~2.5 ms)
    is only for dataclasses.fields()/replace() and orjson on a Task -- built on first use.
    Guarded without timing: after a quiet run every dataclass of a loaded dagrun module has
    a docstring of its own, and the field table is still the lazy one (and works when asked)."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"},
                                       {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"]}], goal="g")
    code = ("import atexit, dataclasses, sys\n"
            "def report():\n"
            "    made = []\n"
            "    for name, mod in list(sys.modules.items()):\n"
            "        if name.startswith('dagrun'):\n"
            "            for c in vars(mod).values():\n"
            "                if isinstance(c, type) and c.__module__ == name and c.__name__ != 'Task' \\\n"
            "                        and dataclasses.is_dataclass(c) and (c.__doc__ or '').startswith(c.__name__ + '('):\n"
            "                    made.append(name + '.' + c.__name__)\n"
            "    from dagrun import plan\n"
            "    lazy = type(plan.Task.__dict__['__dataclass_fields__']).__name__\n"
            "    print(lazy, ','.join(sorted(made)) or '-', file=sys.stderr)\n"
            "atexit.register(report)\n"
            "from dagrun.entry import main\nmain(sys.argv[1:])\n")
    p = subprocess.run([sys.executable, "-c", code, "--home", str(tmp_path / "home"), "run", str(plan), "-q",
                        "-j", "2"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "goal g done: 2 done\n", p.stderr
    assert p.stderr.splitlines()[-1] == "_TaskFields -", p.stderr
    import dataclasses

    from dagrun.plan import load
    t = load(str(plan)).tasks[0]
    assert dataclasses.replace(t, prompt="z").prompt == "z" and len(dataclasses.fields(t)) > 30


def test_the_console_command_starts_without_the_cyclic_collector_and_a_run_freezes_its_start(tmp_path):
    """The imports of a `dagrun` process build ~30 000 containers that all live as long as it
    does; the collector walked them ~30 times on the way (7-25 ms of a run's start). The
    console command (main() without argv) turns it off first (bulk.start_up): a command that
    ends when it returns leaves it off, `dagrun run`'s engine moves its start into the
    permanent generation and turns it back on (bulk.settled), so a long run collects its
    own garbage as before. main(argv) -- a library call, a test -- leaves the collector alone.
    Guarded without timing: gc.callbacks count the collections before the freeze."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"},
                                       {"id": "b", "prompt": "y", "agent": "true", "deps": ["a"]}], goal="g")
    home = str(tmp_path / "home")
    # counted from main()'s call: what a console script imports before it (dagrun.entry,
    # dagrun.bulk) may cross a collection threshold or not, depending on what the interpreter's
    # start left allocated (setuptools' editable finder loaded pathlib and re, a plain .pth not)
    code = ("import gc, os, sys\n"
            "import dagrun.entry, dagrun.bulk\n"
            "seen = []\n"
            "gc.callbacks.append(lambda phase, info: phase == 'start' and seen.append(gc.get_freeze_count()))\n"
            "def report(code=0):\n"
            "    early = sum(1 for f in seen if f == 0)\n"
            "    print(early, gc.get_freeze_count() > 10000, gc.isenabled(), file=sys.stderr, flush=True)\n"
            "    real(code)\n"
            "real, os._exit = os._exit, report\n"
            "from dagrun.entry import main\n"
            "if sys.argv[1] == 'lib':\n"
            "    try:\n        main(sys.argv[2:])\n    except SystemExit as e:\n        report(e.code)\n"
            "sys.argv = ['dagrun'] + sys.argv[2:]\nmain()\n")

    def call(how, *argv):
        p = subprocess.run([sys.executable, "-c", code, how, "--home", home, *argv], capture_output=True, text=True,
                           timeout=60)
        return p.returncode, p.stderr.splitlines()[-1]
    assert call("own", "run", str(plan), "-q", "-j", "2") == (0, "0 True True")   # none before the freeze; back on
    assert call("own", "status", "g", "--json") == (0, "0 False False")           # a one-shot command: off for good
    rc, line = call("lib", "run", str(plan), "-q", "-j", "2")                      # a library's process: untouched
    assert rc == 0 and line.split()[1:] == ["False", "True"]


def test_a_run_loads_watchdogs_inotify_binding_alone_and_submit_loads_no_git_side_nor_ctypes(tmp_path):
    """watchdog's binding (watchdog.observers.inotify_c) is all the watcher uses: a watcher
    loads it without the package's observer pick (watchdog's InotifyObserver, event classes,
    buffers: ~8 ms of CPU a start), and a `dagrun run` that ends within its first seconds
    (engine.WATCH_AFTER: it polls meanwhile) loads none of watchdog. `dagrun submit` of a
    plan without a code workspace imports no workspace.py (git), and neither it nor `claim`
    imports ctypes (openat2's binding is made on the first open_beneath, by the engine's
    prompt reads)."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"}], goal="g")
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(' '.join(sorted(sys.modules)), file=sys.stderr))\n"
            "from dagrun.entry import main\nmain(sys.argv[1:])\n")

    def modules(*argv, code_=0):
        p = subprocess.run([sys.executable, "-c", code, "--home", str(tmp_path / "home"), *argv],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == code_, p.stderr
        return set(p.stderr.split("\n")[-2].split())
    loaded = modules("submit", str(plan))
    assert "dagrun.edit" in loaded and sorted({"dagrun.workspace", "ctypes"} & loaded) == []
    loaded = modules("run", "g", "-q")
    assert "dagrun.engine" in loaded and sorted(m for m in loaded if m.startswith("watchdog")) == []
    p = subprocess.run([sys.executable, "-c", "import sys\nfrom dagrun.watcher import Watcher\n"
                        "w = Watcher(sys.argv[1])\nprint(w.fd is not None, ' '.join(sorted(sys.modules)))",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    up, loaded = p.stdout.split(" ", 1)
    loaded = set(loaded.split())
    assert up == "True" and "watchdog.observers.inotify_c" in loaded
    assert sorted({"watchdog.observers", "watchdog.observers.inotify", "watchdog.observers.api",
                   "watchdog.events"} & loaded) == []
    loaded = modules("claim", "g", "--json", code_=1)        # (the goal has ended: nothing to claim)
    assert "dagrun.claim" in loaded and "ctypes" not in loaded


def test_a_run_that_creates_its_goal_does_not_parse_the_plan_json_it_just_wrote(tmp_path):
    """`dagrun run PLAN` on a new goal: the submit parsed and validated PLAN and wrote
    plan.json from it; the engine gets that Plan and the file's stamp (edit.SubmitResult.written)
    instead of parsing plan.json again (~5 ms of a 500-task run's start). Run again with the
    same plan (a resumed run), the submit finds plan.json's bytes equal to the plan's and
    neither parses the old plan nor has the engine parse it (one parse fewer than a run by
    goal id; before, the two parsed as many). With a changed plan the old one is parsed. Counted with a wrapper around Plan.from_json, both on the
    fast path (-q) and typer's."""
    tasks = [{"id": f"t{i}", "prompt": "x", "agent": "true", "deps": ["t0"] if i else []} for i in range(5)]
    code = ("import sys\nfrom dagrun.plan import Plan\nn = [0]\nparse = Plan.from_json.__func__\n"
            "def counted(cls, data):\n    n[0] += 1\n    return parse(cls, data)\n"
            "Plan.from_json = classmethod(counted)\n"
            "from dagrun.entry import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('parsed', n[0], 'exit', e.code, file=sys.stderr)\n")

    def run_(*argv, home="home"):
        p = subprocess.run([sys.executable, "-c", code, "--home", str(tmp_path / home), "run", *argv],
                           capture_output=True, text=True, timeout=60)
        return p.stdout.splitlines()[-1], p.stderr.splitlines()[-1]
    plan = write_plan(tmp_path / "p", tasks, goal="g")
    assert run_(str(plan), "-q", "-j", "2") == ("goal g done: 5 done", "parsed 0 exit 0")
    # again: the engine's history of durations reads the plans of goals that ran (this one too);
    # by goal id plan.json is parsed once more for the run, with the same plan not
    same, by_id = run_(str(plan), "-q"), run_("g", "-q")
    assert same[0] == by_id[0] == "goal g done: 5 done", (same, by_id)
    assert int(same[1].split()[1]) == int(by_id[1].split()[1]) - 1, (same, by_id)
    plan.write_text(plan.read_text().replace('"x"', '"y"', 1))      # a changed plan: the old one is parsed
    out, parsed = run_(str(plan), "-q", "--replace")
    assert out == "goal g done: 5 done" and parsed.startswith("parsed ") and parsed != "parsed 0 exit 0"
    plan = write_plan(tmp_path / "p2", tasks, goal="h")
    assert run_(str(plan), "-j", "2", home="h2") == ("goal h done: 5 done", "parsed 0 exit 0")   # typer's path
    # (a home with other goals: the history of their durations reads their plans)


WRITTEN_OUT = [("dagrun.transitions", "Changes"), ("dagrun.transitions", "Finished"), ("dagrun.edit", "Diff"),
               ("dagrun.edit", "SubmitResult"), ("dagrun.history", "History"), ("dagrun.budget", "Spend"),
               ("dagrun.reconcile", "GoalState"), ("dagrun.summary", "GoalRun"),
               ("dagrun.store", "TaskFacts"), ("dagrun.summary", "Attempt"), ("dagrun.history", "TaskGuess"),
               ("dagrun.workspace", "Integration"), ("dagrun.workspace", "GcItem"), ("dagrun.engine", "Run"),
               ("dagrun.executor", "_Spawned"), ("dagrun.executor", "_Stream"), ("dagrun.executor", "_Proc"),
               ("dagrun.lifecycle", "Claim")]
FROZEN = [("dagrun.prompt", "Upstream"), ("dagrun.conditions", "Facts"), ("dagrun.resources", "Pool"), ("dagrun.plan", "F"),
          ("dagrun.plan", "Plan"), ("dagrun.workspace", "Prepared"), ("dagrun.executor", "Launch"),
          ("dagrun.executor", "Progress"), ("dagrun.executor", "Wakeup"), ("dagrun.executor", "Exit")]


def test_a_quiet_run_compiles_no_dataclass_method(tmp_path):
    """No class of a module that `dagrun run PLAN -q` loads has a method @dataclass compiled
    from source text at import (exec: "<string>"): every dataclass of the run path -- the
    engine's Run, the executor's Launch, Progress, Wakeup, Exit and its process records,
    lifecycle's Claim too -- writes its methods out (records.py). A new dataclass on the run
    path that does not fails here (WRITTEN_OUT/FROZEN below check each behaves as generated)."""
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "true"},
                                       {"id": "b", "prompt": "y", "agent": "echo hi", "deps": ["a"]}], goal="g")
    code = ("import atexit, dataclasses, sys\n"
            "def report():\n"
            "    made = []\n"
            "    for name, mod in list(sys.modules.items()):\n"
            "        if name.startswith('dagrun'):\n"
            "            for c in vars(mod).values():\n"
            "                if isinstance(c, type) and c.__module__ == name and dataclasses.is_dataclass(c):\n"
            "                    for m in ('__init__', '__repr__', '__eq__', '__setattr__', '__delattr__', '__hash__'):\n"
            "                        f = c.__dict__.get(m)\n"
            "                        if getattr(getattr(f, '__code__', None), 'co_filename', '') == '<string>':\n"
            "                            made.append(f'{name}.{c.__name__}.{m}')\n"
            "    print(' '.join(sorted(made)) or '-', file=sys.stderr)\n"
            "atexit.register(report)\n"
            "from dagrun.entry import main\nmain(sys.argv[1:])\n")
    p = subprocess.run([sys.executable, "-c", code, "--home", str(tmp_path / "home"), "run", str(plan), "-q",
                        "-j", "2"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "goal g done: 2 done\n", p.stderr
    assert p.stderr.splitlines()[-1] == "-", p.stderr


def test_a_quiet_run_compiles_only_the_regular_expressions_it_uses(tmp_path):
    """re.compile costs 0.6-1.1 M instructions a pattern (its parser is Python). No module
    that `dagrun run PLAN -q` loads compiles a pattern at import (a module-level
    `re.compile(...)`, found with ast): they are lazyre.Pattern, compiled on first use -- a
    one-task run compiles the id check, the plan's escape check and the agent command's
    words, not the fan-out, duration, memory or glob patterns. And a Pattern is its
    compiled pattern: the same answers, `.pattern` without compiling."""
    import ast
    import re

    from dagrun import lazyre

    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "A=1 true"}], goal="g")
    code = ("import atexit, re, sys\n"
            "def report():\n"
            "    print(' '.join(sorted(n for n, m in sys.modules.items() if n.startswith('dagrun'))), file=sys.stderr)\n"
            "    from dagrun import fanrules, lazyre, plan\n"
            "    lazy = [v for m in list(sys.modules.values()) if (m.__name__ or '').startswith('dagrun')\n"
            "            for v in vars(m).values() if isinstance(v, lazyre.Pattern)]\n"
            "    print(len(lazy), repr(plan.DURATION_RE.__dict__), repr(fanrules._FENCE.__dict__), file=sys.stderr)\n"
            "atexit.register(report)\n"
            "from dagrun.entry import main\nmain(sys.argv[1:])\n")
    p = subprocess.run([sys.executable, "-c", code, "--home", str(tmp_path / "home"), "run", str(plan), "-q"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "goal g done: 1 done\n", p.stderr
    lines = p.stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("dagrun dagrun."))
    loaded, counts = lines[at], lines[at + 1:] and lines[at + 1]
    root = Path(__file__).resolve().parent.parent
    compiled_at_import = []
    for mod in loaded.split():
        path = root / (mod.replace(".", "/") + ".py")
        if not path.exists():
            path = root / mod.replace(".", "/") / "__init__.py"
        todo = list(ast.parse(path.read_text()).body)       # what runs at import: not the functions' bodies
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "re.compile":
                compiled_at_import.append(f"{mod}:{node.lineno}")
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                todo.extend(ast.iter_child_nodes(node))
    assert compiled_at_import == [], compiled_at_import
    n, rest = counts.split(" ", 1)          # none compiled that the run did not use
    assert int(n) >= 10 and rest.count("'_flags'") == 2 and "match" not in rest, counts
    pat = lazyre.Pattern(r"(a+)(b)?", re.I)
    assert pat.pattern == "(a+)(b)?" and "fullmatch" not in vars(pat)
    ref = re.compile(r"(a+)(b)?", re.I)
    for s in ("", "A", "aab", "xaab", "aabb"):
        for meth in ("match", "fullmatch", "search", "findall", "split"):
            got, want = getattr(pat, meth)(s), getattr(ref, meth)(s)
            assert (got.groups() if hasattr(got, "groups") else got) == (want.groups() if hasattr(want, "groups") else want)
    assert pat.sub("-", "xAAbx") == ref.sub("-", "xAAbx") == "x-x" and pat.groups == 2


def test_dataclasses_that_write_their_methods_out_compile_nothing_and_behave_as_generated():
    """@dataclass compiles each class's __init__, __repr__ and __eq__ from source text with
    exec (~0.4 ms a class; a quarter of a one-task run's instructions for ~30 classes). The
    classes of WRITTEN_OUT (records.py) keep the field table and write the methods out: none
    of their methods comes from exec ("<string>"), and each behaves as the one @dataclass
    generates for the same fields -- defaults, default factories (a new object each time;
    an explicit None kept), positional and keyword arguments, repr, ==, hashability, and
    dataclasses.replace."""
    import dataclasses
    import importlib

    for mod, name in WRITTEN_OUT:
        cls = getattr(importlib.import_module(mod), name)
        for meth in ("__init__", "__repr__", "__eq__"):
            assert getattr(cls, meth).__code__.co_filename != "<string>", (name, meth)
        flds = dataclasses.fields(cls)
        ref = dataclasses.make_dataclass(name, [
            (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory, init=f.init,
                                               repr=f.repr, compare=f.compare)) for f in flds])
        required = [f.name for f in flds if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        given = {n: [n, i] for i, n in enumerate(required)}
        a, b = cls(**given), ref(**given)
        for f in flds:
            assert getattr(a, f.name) == getattr(b, f.name), (name, f.name)
            if f.default_factory is not dataclasses.MISSING:
                assert getattr(a, f.name) is not getattr(cls(**given), f.name), (name, f.name)
        assert repr(a) == repr(b) and (a == cls(**given)) == (b == ref(**given)) and a.__hash__ is None
        assert (a == b) is False and a != object()
        for f in flds:
            if f.init:
                other = dict(given, **{f.name: None})
                x, y = cls(**other), ref(**other)
                assert getattr(x, f.name) is None and repr(x) == repr(y), (name, f.name)
                assert (x == cls(**given)) == (y == ref(**given)), (name, f.name)
        assert repr(cls(*given.values())) == repr(ref(*given.values()))
        if flds and flds[-1].init:
            last = flds[-1].name
            assert getattr(dataclasses.replace(a, **{last: "z"}), last) == "z"


def test_frozen_dataclasses_that_write_their_methods_out_behave_as_generated():
    """The frozen ones of records.py's classes (FROZEN): declared without frozen, so that no
    __setattr__/__delattr__/__hash__ is compiled, they take those from records.frozen_methods:
    assigning or deleting raises FrozenInstanceError with the generated wording, the hash and
    == are the generated ones', dataclasses.replace makes a new object."""
    import dataclasses
    import importlib

    for mod, name in FROZEN:
        cls = getattr(importlib.import_module(mod), name)
        for meth in ("__init__", "__repr__", "__eq__", "__setattr__", "__delattr__", "__hash__"):
            assert getattr(cls, meth).__code__.co_filename != "<string>", (name, meth)
        flds = dataclasses.fields(cls)
        ref = dataclasses.make_dataclass(name, [
            (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory, init=f.init,
                                               repr=f.repr, compare=f.compare, hash=f.hash)) for f in flds],
            frozen=True)
        required = [f.name for f in flds if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        given = {n: () if n == "tasks" else f"{n}{i}" for i, n in enumerate(required)}   # (Plan's __post_init__)
        a, b = cls(**given), ref(**given)
        assert repr(a) == repr(b) and hash(a) == hash(b) and a == cls(**given) and a != b
        assert repr(cls(*given.values())) == repr(ref(*given.values()))
        for f in flds:
            if f.name == "tasks":  # (Plan's __post_init__ indexes them)
                pass
            elif f.compare:        # a field out of == and hash (Plan's hooks): different objects still equal
                other = dict(given, **{f.name: "x"})
                assert (cls(**other) == a) == (ref(**other) == b), (name, f.name)
                assert (hash(cls(**other)) == hash(a)) == (hash(ref(**other)) == hash(b)), (name, f.name)
            else:
                other = dict(given, **{f.name: {}})
                assert cls(**other) == a and hash(cls(**other)) == hash(a), (name, f.name)
            assert getattr(a, f.name) == getattr(b, f.name)
            for obj in (a, b):
                with pytest.raises(dataclasses.FrozenInstanceError) as e:
                    setattr(obj, f.name, 1)
                with pytest.raises(dataclasses.FrozenInstanceError) as d:
                    delattr(obj, f.name)
                assert str(e.value) == f"cannot assign to field {f.name!r}"
                assert str(d.value) == f"cannot delete field {f.name!r}"
        with pytest.raises(dataclasses.FrozenInstanceError):
            a.other = 1
        first = flds[0].name
        assert getattr(dataclasses.replace(a, **{first: "z"}), first) == "z" and getattr(a, first) != "z"


def test_the_editable_install_is_a_plain_path_not_setuptools_import_finder():
    """The README's `pip install -e .` writes a .pth naming the checkout (pyproject.toml's
    package-dir), not setuptools' import finder: the finder's module is imported at every
    Python start in the venv and loads pathlib, fnmatch and re -- `python -c "import dagrun"`
    89.9 M instead of 40.0 M instructions (callgrind), ~12 ms of every dagrun command. A venv
    installed before that change still has the finder: `pip install -e .` again."""
    code = ("import json, sys, dagrun\n"
            "from importlib import metadata\n"
            "loaded = sorted(sys.modules)\n"
            "urls = [d.read_text('direct_url.json') for d in metadata.distributions(name='dagrun')]\n"
            "editable = any(json.loads(u).get('dir_info', {}).get('editable') for u in urls if u)\n"
            "print(editable, *loaded)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    editable, *loaded = p.stdout.split()
    if editable != "True":
        pytest.skip("dagrun is not an editable install here")
    finders = [m for m in loaded if m.startswith("__editable__")]
    assert finders == [], f"setuptools' import finder is loaded ({finders}): reinstall with `pip install -e .`"


def test_a_second_settle_freezes_what_was_built_since():
    """`dagrun worker` goes the typer path, which settles its imports (bulk.settled) before
    the engine loads a goal; the engine's own settled() after its first discovery must still
    move the goals' plans and schedulers into the permanent generation, or every full
    collection of a 100 000-task run walks them (1.2-1.4 s a run). A library's process
    (no start_up) is left alone."""
    code = ("import gc, sys\n"
            "from dagrun import bulk\n"
            "if sys.argv[1] == 'own':\n    bulk.start_up()\n"
            "bulk.settled()                              # the typer path's\n"
            "built = [[i] for i in range(50000)]          # an engine's first discovery\n"
            "bulk.settled()                              # Engine.run's\n"
            "print(len(gc.get_objects()) < 50000, gc.isenabled())\n")
    out = {how: subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60,
                               check=True).stdout.split() for how in ("own", "lib")}
    assert out == {"own": ["True", "True"], "lib": ["False", "True"]}
