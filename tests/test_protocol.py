"""The bash protocol: dagrun claim / complete / fail / heartbeat, driven from real shells
(dash and bash) through the installed binary; the holder of a script's claim; the fast path."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DAGRUN, agents_of, events, run, spawn, task_dir, wait_for, write_plan

SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]


def _env(home) -> dict:
    e = dict(os.environ)
    e["DAGRUN_HOME"] = str(home)
    e["PATH"] = str(Path(DAGRUN).parent) + os.pathsep + e.get("PATH", "")
    return e


def sh(script: str, home, shell: str = "dash", timeout: float = 60, check: bool = True, **kw):
    """Run a shell script with `dagrun` on PATH and DAGRUN_HOME set."""
    p = subprocess.run([shell, "-c", script], capture_output=True, text=True, env=_env(home), timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{shell} script exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def holder(home, script: str, shell: str = "dash") -> subprocess.Popen:
    """A long-lived shell that claims (script) and then sleeps: a live holder that is not us."""
    return subprocess.Popen([shell, "-c", script + "\nexec sleep 60"], env=_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def owner(home, goal, task) -> dict:
    return json.loads((task_dir(home, goal, task) / "claim" / "owner.json").read_text())


def two_step(plans, goal="p", **top):
    return write_plan(plans, [{"id": "a", "prompt": "first"}, {"id": "b", "prompt": "second", "deps": ["a"]}],
                      goal=goal, defaults={"agent": "cat"}, **top)


# ------------------------------------------------------------------------------ claim
def test_claim_json_prompt_ready_and_exit_codes(home, plans):
    """(Claims made through run() belong to this test process: the parent of `dagrun`.)"""
    run("submit", two_step(plans), home=home)
    c = json.loads(run("claim", "--json", "p", home=home).stdout)
    tdir = task_dir(home, "p", "a").resolve()
    assert c["task"] == "a" and c["attempt"] == 1 and c["goal"] == "p" and c["pid"] == os.getpid()
    assert c["worker"] == f"{socket.gethostname()}-{os.getpid()}"
    assert c["task_dir"] == str(tdir) and c["prompt_file"] == str(tdir / "prompt.md")
    assert c["stdout_file"] == str(tdir / "claim" / "stdout") and c["stderr_file"] == str(tdir / "claim" / "stderr")
    assert c["output_file"] == str(tdir / "output") and c["lease"] == 60 and c["agent"] == "cat"
    assert c["workdir"] == str(plans) and ":p/a/" in c["run_id"] and c["run_id"].endswith("/1") and c["home"] == str(home.resolve())
    # the prompt was rendered before claim returned
    assert (tdir / "prompt.md").read_text().startswith("first")
    # b waits for a, a is claimed (by a live process: us): nothing ready, exit 3
    r = run("claim", "p", home=home, check=3)
    assert r.stdout == "" and r.stderr == ""
    r = run("claim", "--json", "p", home=home, check=3)
    assert json.loads(r.stdout) == {"goal": "p", "task": None, "exit": 3}
    run("complete", "p", "a", "--output", "-", input="A-OUT\n", home=home)
    # b's prompt carries a's output the moment b is claimed
    assert run("claim", "p", home=home).stdout == "b\n"
    prompt = (task_dir(home, "p", "b") / "prompt.md").read_text()
    assert prompt.startswith("second") and "## Output of a" in prompt and "A-OUT" in prompt
    run("complete", "p", "b", home=home)
    r = run("claim", "p", home=home, check=1)          # the goal has ended
    assert r.stdout == "" and r.stderr == ""
    st = [e.get("status") for e in events(home, "p") if e.get("task") == "a"]
    assert st == ["ready", "running", "done"]


@pytest.mark.parametrize("shell", SHELLS)
def test_claim_env_for_eval(home, plans, shell):
    run("submit", write_plan(plans, [{"id": "t1", "prompt": "q"}], goal="e", defaults={"agent": "echo 'it'\"'\"'s $HOME'", "timeout": 90}), home=home)
    p = sh('out=$(dagrun claim --env e) || exit 9; eval "$out"; '
           'printf "%s|" "$DAGRUN_GOAL" "$DAGRUN_TASK" "$DAGRUN_ATTEMPT" "$DAGRUN_PROMPT_FILE" "$DAGRUN_STDOUT_FILE" '
           '"$DAGRUN_AGENT" "$DAGRUN_LEASE" "$DAGRUN_TIMEOUT" "$DAGRUN_RUN_ID"; '
           'sh -c "$DAGRUN_AGENT" > "$DAGRUN_STDOUT_FILE"; dagrun complete "$DAGRUN_GOAL" "$DAGRUN_TASK"', home, shell)
    f = p.stdout.split("|")
    tdir = task_dir(home, "e", "t1").resolve()
    assert f[:3] == ["e", "t1", "1"]
    assert f[3] == str(tdir / "prompt.md") and f[4] == str(tdir / "claim" / "stdout")
    assert f[5] == "echo 'it'\"'\"'s $HOME'"          # single quotes survive eval, nothing expanded
    assert f[6:8] == ["60", "90"] and ":e/t1/" in f[8] and f[8].endswith("/1")
    assert (tdir / "output").read_text() == "it's $HOME\n"


def test_claim_rejects_bad_input(home, plans):
    run("submit", two_step(plans), home=home)
    r = run("claim", "--pid", "999999999", "p", home=home, check=2)
    assert r.stderr == "dagrun: --pid 999999999: no such process\n"
    r = run("claim", "../x", home=home, check=2)
    assert r.stderr.startswith("dagrun: invalid goal id") and r.stderr.count("\n") == 1
    r = run("claim", "nosuch", home=home, check=2)
    assert r.stderr.startswith("dagrun: no goal 'nosuch'")
    r = run("claim", "--json", "--env", "p", home=home, check=2)
    assert r.stderr.startswith("dagrun: ") and "Traceback" not in r.stderr
    assert not (task_dir(home, "p", "a") / "claim").exists()


# ------------------------------------------------------------------------------ complete / fail
def test_complete_output_from_file_stdin_or_stdout_file(home, plans, tmp_path):
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(3)], goal="o", defaults={"agent": "x"})
    run("submit", p, home=home)
    (tmp_path / "res.txt").write_text("from a file\n")
    sh(f'''
t=$(dagrun claim o); dagrun complete o "$t" --output {tmp_path / "res.txt"}
t=$(dagrun claim o); echo from stdin | dagrun complete o "$t" --output -
eval "$(dagrun claim --env o)"; echo from stdout_file > "$DAGRUN_STDOUT_FILE"
echo warn > "$DAGRUN_STDERR_FILE"; dagrun complete o "$DAGRUN_TASK"
''', home)
    outs = {t: (task_dir(home, "o", t) / "output").read_text() for t in ("t0", "t1", "t2")}
    assert outs == {"t0": "from a file\n", "t1": "from stdin\n", "t2": "from stdout_file\n"}
    assert (task_dir(home, "o", "t2") / "stderr.log").read_text() == "warn\n"
    for t in outs:
        d = task_dir(home, "o", t)
        assert not (d / "claim").exists()
        done = json.loads((d / "done").read_text())
        assert done["attempt"] == 1 and "forced_by" not in done
    assert (tmp_path / "res.txt").exists()          # --output FILE is copied, not taken
    r = run("complete", "o", "t0", home=home, check=4)
    assert r.stderr == "dagrun: cannot complete o/t0: it is already done\n"


def test_fail_retries_then_fails_for_good(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p", "retries": 1, "retry_backoff": 0},
                           {"id": "b", "prompt": "p", "deps": ["a"]}], goal="f", defaults={"agent": "x"})
    run("submit", p, home=home)
    r = sh('eval "$(dagrun claim --env f)"; echo partial > "$DAGRUN_STDOUT_FILE"; '
           'dagrun fail f a --exit-code 7 --reason "tool crashed"', home)
    assert "will be retried (attempt 2)" in r.stderr
    rec = json.loads((task_dir(home, "f", "a") / "attempts" / "1.json").read_text())
    assert rec["outcome"] == "failed" and rec["exit_code"] == 7 and rec["reason"] == "tool crashed"
    assert (task_dir(home, "f", "a") / "attempts" / "1.out").read_text() == "partial\n"
    r = sh('t=$(dagrun claim f); echo "$t"; dagrun fail f "$t" --reason again', home)
    assert r.stdout == "a\n"
    failed = json.loads((task_dir(home, "f", "a") / "failed").read_text())
    assert failed["attempt"] == 2 and failed["reason"] == "again"
    run("claim", "f", home=home, check=1)        # a failed for good, b is blocked: the goal ended
    ev = events(home, "f")
    assert [e["status"] for e in ev if e.get("task") == "a" and e.get("status")] == \
        ["ready", "running", "retrying", "ready", "running", "failed"]
    assert any(e["type"] == "agent.task.blocked" and e["task"] == "b" for e in ev)


# ------------------------------------------------------------------------------ only the holder
def test_non_holder_is_refused_and_force_is_recorded(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"}], goal="h",
                   defaults={"agent": "x"})
    run("submit", p, home=home)
    h = holder(home, "dagrun claim --worker lob-1 h >/dev/null; dagrun claim --worker lob-1 h >/dev/null")
    try:
        wait_for(lambda: (task_dir(home, "h", "b") / "claim" / "owner.json").exists(), what="two claims")
        o = owner(home, "h", "a")
        assert o["pid"] == h.pid and o["worker"] == "lob-1" and o["kind"] == "external"
        for cmd in (["complete", "h", "a"], ["fail", "h", "a"], ["heartbeat", "h", "a"],
                    ["complete", "h", "a", "--worker", "someone-else"], ["complete", "h", "a", "--pid", str(os.getpid())]):
            r = run(*cmd, home=home, check=4)
            what = cmd[0]
            assert r.stderr == (f"dagrun: cannot {what} h/a: it is held by worker lob-1 (pid {h.pid} on "
                                f"{socket.gethostname()}), not by you; give the --worker or --pid used to claim it, "
                                f"or --force\n")
            assert r.stdout == ""
        assert (task_dir(home, "h", "a") / "claim" / "owner.json").exists()
        assert not (task_dir(home, "h", "a") / "done").exists()
        # --force overrides, says so on stderr, and is recorded in the marker and the event
        r = run("complete", "h", "a", "--force", "--worker", "admin", "--output", "-", input="forced\n", home=home)
        assert r.stderr == f"dagrun: h/a completed with --force over the claim of lob-1 (pid {h.pid} on " \
                           f"{socket.gethostname()})\n"
        done = json.loads((task_dir(home, "h", "a") / "done").read_text())
        assert done["forced_by"] == "admin" and done["held_by"].startswith("lob-1 (pid ")
        e = [e for e in events(home, "h") if e.get("task") == "a" and e.get("status") == "done"][0]
        assert e["forced_by"] == "admin" and e["held_by"] == done["held_by"] and e["worker"] == "admin"
        r = run("fail", "h", "b", "--force", "--reason", "given up", home=home)
        assert "failed with --force over the claim of lob-1" in r.stderr
        failed = json.loads((task_dir(home, "h", "b") / "failed").read_text())
        assert failed["forced_by"].startswith(socket.gethostname()) and failed["held_by"].startswith("lob-1")
        # naming the holder's worker is enough (no --force, nothing recorded as forced)
    finally:
        os.killpg(h.pid, signal.SIGKILL)
        h.wait()


def test_named_worker_may_complete_from_anywhere(home, plans):
    run("submit", two_step(plans), home=home)
    h = holder(home, "dagrun claim --worker lob-2 p >/dev/null")
    try:
        wait_for(lambda: (task_dir(home, "p", "a") / "claim" / "owner.json").exists(), what="claim")
        run("complete", "p", "a", "--worker", "lob-2", home=home)
        done = json.loads((task_dir(home, "p", "a") / "done").read_text())
        assert done["worker"] == "lob-2" and "forced_by" not in done
    finally:
        os.killpg(h.pid, signal.SIGKILL)
        h.wait()


# ------------------------------------------------------------------------------ whose claim is it
SUBSHELL_FORMS = ['t=$(dagrun claim g)', 't=$(dagrun claim g 2>/dev/null)', 't=$(dagrun claim g || true)',
                  't=$(dagrun claim g; true)', 't=$( (dagrun claim g) )', 't=$(dagrun claim g | cat)']


@pytest.mark.parametrize("shell", SHELLS)
def test_claim_belongs_to_the_script_even_from_subshells(home, plans, shell):
    """However the script calls `dagrun claim` (some forms fork a subshell that exits at
    once), the claim belongs to the script: heartbeat and complete from the script, from a
    subshell or from a background job are accepted."""
    p = write_plan(plans, [{"id": f"t{i}", "prompt": "p"} for i in range(len(SUBSHELL_FORMS))], goal="g",
                   defaults={"agent": "x"})
    run("submit", p, home=home)
    lines = ['echo "me=$$"']
    for form in SUBSHELL_FORMS:
        lines.append(f'{form}; pid=$(sed -n \'s/.*"pid": \\([0-9]*\\).*/\\1/p\' "$DAGRUN_HOME/goals/g/tasks/$t/claim/owner.json")')
        lines.append('echo "$t=$pid"')
        lines.append('(dagrun heartbeat g "$t") || exit 11')
        lines.append('dagrun heartbeat g "$t" & wait $! || exit 12')
        lines.append('echo out | (dagrun complete g "$t" --output -) || exit 13')
    r = sh("\n".join(lines), home, shell)
    out = r.stdout.split()
    me = out[0].split("=")[1]
    pids = dict(x.split("=") for x in out[1:])
    assert len(pids) == len(SUBSHELL_FORMS) and set(pids.values()) == {me}, r.stdout
    for t in pids:
        assert (task_dir(home, "g", t) / "output").read_text() == "out\n"


def test_live_script_claim_is_never_taken_and_dead_one_is_recovered(home, plans):
    """A running worker checks other claims every second: a claim made through a subshell
    by a live script stays its claim; once the script is killed, the worker breaks it and
    runs the task itself (attempt 2; attempt 1 recorded as lost, not counted)."""
    p = write_plan(plans, [{"id": "a", "prompt": "p"}], goal="lv", defaults={"agent": "echo worker-did-it"})
    run("submit", p, home=home)
    h = holder(home, 'x=$(dagrun claim lv 2>/dev/null || true); echo "$x" > /dev/null')
    # the script claims first: a worker started alongside could win the race and run the task
    wait_for(lambda: (task_dir(home, "lv", "a") / "claim" / "owner.json").exists(), what="claim")
    w = spawn("worker", "--name", "w1", home=home)
    try:
        nonce = owner(home, "lv", "a")["nonce"]
        time.sleep(3.5)                              # > 3 liveness checks by the worker
        assert owner(home, "lv", "a")["nonce"] == nonce
        assert not (task_dir(home, "lv", "a") / "done").exists()
        os.killpg(h.pid, signal.SIGKILL)
        h.wait()
        wait_for(lambda: (task_dir(home, "lv", "a") / "done").exists(), timeout=20, what="recovery")
        done = json.loads((task_dir(home, "lv", "a") / "done").read_text())
        assert done["attempt"] == 2 and done["worker"] == "w1"
        assert (task_dir(home, "lv", "a") / "output").read_text() == "worker-did-it\n"
        rec = json.loads((task_dir(home, "lv", "a") / "attempts" / "1.json").read_text())
        assert rec["outcome"] == "lost" and rec["counted"] is False and f"(pid {h.pid}) is gone" in rec["reason"]
        ready = [e for e in events(home, "lv") if e.get("status") == "ready" and e.get("attempt") == 2]
        assert ready and ready[0]["worker"] == "w1" and ready[0]["reason"].startswith("claim broken: holder ")
    finally:
        os.killpg(w.pid, signal.SIGTERM)
        w.communicate(timeout=20)
        try:
            os.killpg(h.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_claim_for_an_explicit_pid(home, plans):
    """--pid hands the claim to another process: it lives as long as that process does; the
    next `dagrun claim` breaks it once that process is gone."""
    run("submit", two_step(plans), home=home)
    keeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        r = run("claim", "--pid", str(keeper.pid), "p", home=home)
        assert r.stdout == "a\n"
        o = owner(home, "p", "a")
        assert o["pid"] == keeper.pid and o["worker"] == f"{socket.gethostname()}-{keeper.pid}"
        run("heartbeat", "--pid", str(keeper.pid), "p", "a", home=home)
        assert (task_dir(home, "p", "a") / "claim" / "heartbeat").exists()
        run("claim", "p", home=home, check=3)       # still held: keeper lives
    finally:
        keeper.kill()
        keeper.wait()
    r = run("claim", "p", home=home)                # keeper is gone: its claim is broken, a again
    assert r.stdout == "a\n"
    assert json.loads((task_dir(home, "p", "a") / "attempts" / "1.json").read_text())["outcome"] == "lost"
    run("heartbeat", "--pid", str(keeper.pid), "p", "a", home=home, check=4)


def test_heartbeat_tells_a_cancelled_script_to_stop(home, plans):
    run("submit", two_step(plans), home=home)
    h = holder(home, "dagrun claim p > /dev/null")
    try:
        wait_for(lambda: (task_dir(home, "p", "a") / "claim" / "owner.json").exists(), what="claim")
        run("cancel", "p", "a", home=home)
        r = run("heartbeat", "--pid", str(h.pid), "p", "a", home=home, check=4)
        assert r.stderr == "dagrun: p/a was cancelled: stop working on it\n"
    finally:
        os.killpg(h.pid, signal.SIGKILL)
        h.wait()


# ------------------------------------------------------------------------------ the fast path
ERROR_CASES = [
    (["claim"], 2), (["claim", "p", "extra"], 2), (["claim", "--bogus", "p"], 2), (["claim", "--pid", "x", "p"], 2),
    (["complete", "p"], 2), (["complete", "p", "a"], 4), (["fail", "p", "zz"], 2), (["heartbeat", "p", "a"], 4),
    (["fail", "p", "a", "--exit-code", "nan"], 2), (["claim", "--worker"], 2),
]


@pytest.mark.parametrize("args,code", ERROR_CASES)
def test_fast_path_and_typer_agree(home, plans, args, code):
    run("submit", two_step(plans), home=home)
    fast = run(*args, home=home, check=code)
    slow = run(*args, home=home, check=code, env={"DAGRUN_NO_FAST_PATH": "1"})
    assert fast.stderr.startswith("dagrun: ") or fast.stderr.startswith("Usage:")
    assert fast.stderr.count("\n") <= 2 and "Traceback" not in fast.stderr
    if code != 2:            # refusals come from the same function: word for word the same
        assert fast.stderr == slow.stderr and fast.stdout == slow.stdout


def test_status_json_on_the_fast_path_is_the_typer_commands(home, plans):
    """`status GOAL --json` runs on the fast path (no typer): the same bytes as the typer
    command, before and after a task ran, and the same refusal for a missing goal."""
    run("submit", two_step(plans), home=home)
    for _ in range(2):
        fast = run("status", "p", "--json", home=home)
        slow = run("status", "p", "--json", home=home, env={"DAGRUN_NO_FAST_PATH": "1"})
        assert fast.stdout == slow.stdout and json.loads(fast.stdout)["goal"] == "p"
        run("worker", "--until-idle", home=home)
    fast = run("status", "nope", "--json", home=home, check=2)
    slow = run("status", "nope", "--json", home=home, check=2, env={"DAGRUN_NO_FAST_PATH": "1"})
    assert fast.stderr == slow.stderr and fast.stderr.startswith("dagrun: no goal 'nope'")
    from dagrun.protocol import parse_fast
    assert parse_fast(["status", "p", "--json"]) == (None, "status", {"goal": "p", "json": True})
    assert parse_fast(["status", "p"]) is None and parse_fast(["status", "--json"]) is None


def test_protocol_commands_do_not_load_heavy_modules(home, plans):
    """claim/complete/heartbeat run in a bash loop: no typer, pydantic, rich, watchdog,
    filelock or psutil on their path (cold start, see bench/latency.py)."""
    run("submit", two_step(plans), home=home)
    probe = ("import sys\nfrom dagrun.entry import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = {m.split('.')[0] for m in sys.modules} & "
             "{'typer', 'click', 'pydantic', 'rich', 'watchdog', 'filelock', 'psutil'}\n"
             "print(code, sorted(heavy), file=sys.stderr)\n")
    for args in (["claim", "p"], ["heartbeat", "p", "a"], ["complete", "p", "a"]):
        p = subprocess.run([sys.executable, "-c", probe, f"--home={home}", *args], capture_output=True, text=True,
                           timeout=30)
        assert p.stderr.strip().endswith("0 []"), (args, p.stderr)


def test_force_complete_over_a_workers_claim_stops_its_agent(home, plans):
    p = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "sleep 60"},
                           {"id": "b", "prompt": "p", "deps": ["a"], "agent": "echo b-ran"}], goal="fw")
    run("submit", p, home=home)
    w = spawn("worker", "--name", "busy", home=home)
    try:
        wait_for(lambda: (task_dir(home, "fw", "a") / "claim" / "owner.json").exists(), what="the agent")
        r = run("complete", "fw", "a", "--force", "--output", "-", input="by hand\n", home=home)
        assert "over the claim of busy (pid" in r.stderr
        wait_for(lambda: (task_dir(home, "fw", "b") / "done").exists(), timeout=20, what="b")
        wait_for(lambda: not agents_of(home), timeout=10, what="the worker to stop its agent")
    finally:
        os.killpg(w.pid, signal.SIGTERM)
        out, err = w.communicate(timeout=30)
    assert (task_dir(home, "fw", "a") / "output").read_text() == "by hand\n"
    done = json.loads((task_dir(home, "fw", "a") / "done").read_text())
    assert done["held_by"].startswith("busy (pid ") and done["attempt"] == 1
    assert (task_dir(home, "fw", "b") / "output").read_text() == "b-ran\n"
    assert w.returncode == 143 and b"error" not in err


def test_heartbeat_waits_for_a_claim_being_born(home, plans):
    """An engine publishes owner.json just after starting the agent; an agent that calls
    `dagrun heartbeat` at once must not be refused meanwhile."""
    run("submit", two_step(plans), home=home)
    cdir = task_dir(home, "p", "a") / "claim"
    cdir.mkdir(parents=True)
    hb = spawn("heartbeat", "--worker", "eng-1", "p", "a", home=home)
    time.sleep(0.5)
    assert hb.poll() is None                       # still waiting for owner.json
    body = {"worker": "eng-1", "host": socket.gethostname(), "pid": os.getpid(), "attempt": 1, "nonce": "n"}
    (cdir / ".owner.tmp").write_text(json.dumps(body))
    (cdir / ".owner.tmp").rename(cdir / "owner.json")
    _, err = hb.communicate(timeout=20)
    assert hb.returncode == 0, err
    assert (cdir / "heartbeat").exists()


def test_run_quiet_on_the_fast_path_is_the_typer_commands(home, plans, tmp_path):
    """`run TARGET -q [-j N]` runs on the fast path (no typer, click, pydantic, rich: ~0.1 s of
    CPU less before the first task starts): the same output and exit code as the typer
    command, for a goal that ends done and one that fails; anything else goes to typer."""
    from dagrun.protocol import parse_fast
    ok = write_plan(plans, [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "deps": ["a"]}],
                    name="ok.json", goal="ok", defaults={"agent": "true"})
    bad = write_plan(plans, [{"id": "a", "prompt": "p", "agent": "false", "retries": 0},
                             {"id": "b", "prompt": "p", "deps": ["a"], "agent": "true"}], name="bad.json", goal="bad")
    for plan, code in ((ok, 0), (bad, 1)):
        fast = run("run", plan, "-q", "-j", "2", home=tmp_path / "fast", check=code)
        slow = run("run", plan, "-q", "-j", "2", home=tmp_path / "slow", check=code,
                   env={"DAGRUN_NO_FAST_PATH": "1"})
        assert (fast.stdout, fast.stderr) == (slow.stdout, slow.stderr)
        again = run("run", json.loads(plan.read_text())["goal"], "--quiet",
                    home=tmp_path / "fast", check=code)          # a submitted goal by its id
        assert again.stdout == fast.stdout
    assert "goal bad failed" in fast.stdout and "failed: a" in fast.stdout
    assert run("run", "nope.json", "-q", home=home, check=2).stderr == "dagrun: no plan file nope.json\n"
    assert parse_fast(["run", "x.json", "-q", "-j", "8"]) == (None, "run", {"target": "x.json", "quiet": True,
                                                                            "jobs": 8})
    for argv in (["run", "x.json"], ["run", "x.json", "-q", "-j", "0"], ["run", "x.json", "-q", "--watch"],
                 ["run", "-q"], ["run", "x.json", "-q", "--dry-run"]):
        assert parse_fast(argv) is None, argv
    probe = ("import sys\nfrom dagrun.entry import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = {m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'pydantic', 'rich'}\n"
             "print(code, sorted(heavy), file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", probe, f"--home={tmp_path / 'probe'}", "run", str(ok), "-q"],
                       capture_output=True, text=True, timeout=60)
    assert p.stderr.strip().endswith("0 []"), p.stderr
