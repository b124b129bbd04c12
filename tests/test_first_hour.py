"""Issue 17, "a user's first hour": one test per defect a new user hit (terminal ones through
a pseudo-terminal -- pexpect -- or a real tmux pane), plus the install-as-a-tool pieces:
`dagrun init`, shell completion, the man page."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from conftest import DAGRUN, EXAMPLES, REPO, run, run_goal, task_dir, write_plan

CI = os.environ.get("CI") == "true"


def need(tool: str) -> str:
    """The tool's path; skip without it -- except under CI=true, where that is a failure."""
    path = shutil.which(tool)
    if path is None:
        if CI:
            pytest.fail(f"{tool} is not installed (CI must install it: see .ci/run)")
        pytest.skip(f"{tool} is not installed")
    return path


def tty(home, *args, cols=80, rows=40, env=None, cwd=None) -> tuple[int, str]:
    """Run dagrun in a pseudo-terminal to its end: (exit code, everything it drew)."""
    e = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "DAGRUN_HOME")}
    e.update({"TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}, **(env or {}))
    child = pexpect.spawn(DAGRUN, [f"--home={home}", *map(str, args)], env=e, dimensions=(rows, cols),
                          encoding="utf-8", timeout=60, cwd=cwd)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def tmux_screen(cmd: str, tmp_path: Path, cols=80, rows=40) -> str:
    """Run `cmd` in a detached tmux pane of cols x rows; the screen, with colour escapes."""
    need("tmux")
    sock = str(tmp_path / "tmux.sock")
    done = tmp_path / "tmux.done"
    base = ["tmux", "-S", sock, "-f", "/dev/null"]
    subprocess.run(base + ["new-session", "-d", "-x", str(cols), "-y", str(rows),
                           f"{cmd}; touch {done}; sleep 30"], check=True,
                   env={**os.environ, "TERM": "xterm-256color"})
    try:
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists(), "the command in tmux did not end"
        return subprocess.run(base + ["capture-pane", "-p", "-e"],
                              capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(base + ["kill-server"], capture_output=True)


FAILING = [{"id": "a", "prompt": "x", "agent": "echo out-a; exit 3"},
           {"id": "b", "prompt": "x", "agent": "echo out-b", "deps": ["a"]}]


@pytest.fixture(scope="module")
def failed_goal(tmp_path_factory):
    """A goal that ended failed: a failed (exit 3), b blocked; plus a done goal whose task wrote no stderr."""
    base = tmp_path_factory.mktemp("fh")
    home, plan = run_goal(base, FAILING, check=1, goal="broken")
    ok = write_plan(base / "plans", [{"id": "quiet", "prompt": "x", "agent": "echo hello"},
                                     {"id": "twice", "prompt": "x", "agent": '[ "$DAGRUN_ATTEMPT" = 2 ] || exit 1; echo ok'}],
                    name="ok.json", goal="fine", defaults={"retries": 1, "retry_backoff": 0.01})
    run("run", ok, home=home)
    return home, plan


# -- 1 -------------------------------------------------------------------------------------------
def test_1_logs_of_a_done_task_without_stderr_is_empty_and_exit_0(failed_goal, tmp_path):
    home, _ = failed_goal
    r = run("logs", "fine", "quiet", home=home)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert run("logs", "fine", "quiet", "--stdout", home=home).stdout == "hello\n"
    code, screen = tty(home, "logs", "fine", "quiet")        # on a terminal it says why it is empty
    assert code == 0 and "attempt 1 wrote no stderr" in screen


# -- 2 -------------------------------------------------------------------------------------------
def test_2_status_fits_80_columns_and_colours_states(tmp_path):
    home = tmp_path / "home"
    tasks = [{"id": f"a-rather-long-task-name-number-{i}", "prompt": "x",
              "agent": "echo 'a long complaint that goes on and on about what went wrong' >&2; exit 3"}
             for i in range(3)] + [{"id": "ok", "prompt": "x", "agent": "true"}]
    plan = write_plan(tmp_path / "p", tasks, goal="wide")
    run("run", plan, "--worker", "a-very-long-worker-name-on-a-long-host", home=home, check=1)
    screen = tmux_screen(f"{DAGRUN} --home={home} status wide", tmp_path, cols=80)
    lines = [x for x in screen.splitlines() if x.strip()]
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", x) for x in lines]
    rows = [x for x in plain if x.startswith(("a-rather", "ok ", "ok\t"))]
    assert len(rows) == 4, plain                               # one line per task: nothing wrapped
    assert all(len(x.rstrip()) <= 80 for x in plain)
    assert plain[0].split()[:3] == ["TASK", "STATE", "TRY"]
    assert any("\x1b[31mfailed" in x for x in lines) and any("\x1b[32mdone" in x for x in lines)
    # off a terminal: whole values, no colour (awk-able)
    flat = run("status", "wide", home=home).stdout
    assert "\x1b[" not in flat and "a-very-long-worker-name-on-a-long-host" in flat
    # --color always / FORCE_COLOR colour it anyway; NO_COLOR / --color never do not
    assert "\x1b[31mfailed" in run("status", "wide", "--color", "always", home=home).stdout
    assert "\x1b[31mfailed" in run("status", "wide", home=home, env={"FORCE_COLOR": "1"}).stdout
    code, drawn = tty(home, "status", "wide", env={"NO_COLOR": "1"})
    assert "\x1b[31m" not in drawn


# -- 3 -------------------------------------------------------------------------------------------
def test_3_watch_overview_draws_a_failed_goal_red_not_green(failed_goal):
    home, _ = failed_goal
    code, screen = tty(home, "watch", cols=120)
    row = next(x for x in screen.splitlines() if "broken" in x)
    bar = re.findall(r"\x1b\[([0-9;]*)m([━╸╺]+)", row)
    assert bar, repr(row)
    assert all(sgr.split(";")[-1] == "31" for sgr, _ in bar), repr(row)     # red, all of it
    assert code == 1


# -- 4 -------------------------------------------------------------------------------------------
def test_4_validate_json_reports_failures_as_json(tmp_path):
    plan = tmp_path / "bad.json"
    plan.write_text('{\n "goal": "g",\n "tasks": [\n  {"id": "a", "prompt": "x", "agent": "true",\n'
                    '   "deps": ["nope"]}\n ]\n}\n')
    r = run("validate", plan, "--json", check=2)
    d = json.loads(r.stdout)
    assert d["ok"] is False and d["line"] == 5 and d["path"] == "tasks[0].deps[0]"
    assert "unknown dependency" in d["error"] and d["file"] == str(plan)
    assert r.stderr.startswith("dagrun: ")
    plan.write_text('{"goal": "g",\n "tasks": [}')
    d = json.loads(run("validate", plan, "--json", check=2).stdout)
    assert d["ok"] is False and d["line"] == 2 and "malformed JSON" in d["error"]
    ok = json.loads(run("validate", EXAMPLES / "minimal" / "dag.json", "--json").stdout)
    assert ok["ok"] is True


# -- 5 -------------------------------------------------------------------------------------------
def test_5_agent_not_on_path_is_named_in_the_reason_and_warned_about(tmp_path):
    home = tmp_path / "home"
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "claude-not-here -p"},
                                       {"id": "b", "prompt": "x", "agent": "FOO=1 env -i sh -c true"}], goal="nc")
    v = run("validate", plan)
    assert v.returncode == 0
    assert "command not found: claude-not-here (PATH=" in v.stderr and "'a'" in v.stderr
    assert "task 'b'" not in v.stderr
    vj = json.loads(run("validate", plan, "--json").stdout)
    assert vj["ok"] is True and len(vj["warnings"]) == 1 and "claude-not-here" in vj["warnings"][0]
    s = run("submit", plan, home=home)
    assert s.returncode == 0 and s.stdout == "nc\n" and "command not found: claude-not-here" in s.stderr
    path = "/usr/bin:/bin"
    r = run("run", plan, home=home, check=1, env={"PATH": path})
    failed = json.loads((task_dir(home, "nc", "a") / "failed").read_text())
    assert failed["reason"] == f"command not found: claude-not-here (PATH={path})"
    assert "command not found: claude-not-here" in r.stdout
    st = json.loads(run("status", "nc", "--json", home=home).stdout)
    assert st["tasks"][0]["reason"].startswith("command not found: claude-not-here")
    # an agent that exits 127 for its own reasons keeps the plain reason
    plan2 = write_plan(tmp_path / "q", [{"id": "a", "prompt": "x", "agent": "exit 127"}], goal="own")
    run("run", plan2, home=home, check=1)
    assert json.loads((task_dir(home, "own", "a") / "failed").read_text())["reason"] == "exit code 127"


# -- 6 -------------------------------------------------------------------------------------------
def test_6_run_on_a_failed_goal_says_how_to_retry(failed_goal):
    home, plan = failed_goal
    r = run("run", plan, home=home, check=1)
    assert "dagrun retry broken" in r.stderr and f"dagrun run --replace {plan}" in r.stderr
    r = run("run", "broken", home=home, check=1)
    assert "dagrun retry broken" in r.stderr and "--replace PLAN" in r.stderr


# -- 7 -------------------------------------------------------------------------------------------
def test_7_global_options_after_the_command(failed_goal, tmp_path):
    home, _ = failed_goal
    env = {"DAGRUN_HOME": str(tmp_path / "elsewhere")}
    a = subprocess.run([DAGRUN, "status", "--home", str(home)], capture_output=True, text=True, env={**os.environ, **env})
    assert a.returncode == 0 and "broken" in a.stdout and "fine" in a.stdout, a.stderr
    b = subprocess.run([DAGRUN, "status", "broken", f"--home={home}", "--color=never"], capture_output=True,
                       text=True)
    assert b.returncode == 0 and "blocked by a" in b.stdout
    # the protocol fast path takes --home after the command too (and stays the fast path)
    sys.path.insert(0, str(REPO))
    from dagrun.protocol import parse_fast
    assert parse_fast(["claim", "g", "--home", "/h", "--env"]) == ("/h", "claim", {"goal": "g", "env": True})
    assert parse_fast(["--home=/a", "heartbeat", "g", "t"]) == ("/a", "heartbeat", {"goal": "g", "task": "t"})
    c = subprocess.run([DAGRUN, "claim", "broken", "--home", str(home)], capture_output=True, text=True)
    assert c.returncode == 1 and c.stderr == ""              # the goal has ended
    # the protocol commands through typer too
    d = subprocess.run([DAGRUN, "claim", "broken", "--home", str(home)], capture_output=True, text=True,
                       env={**os.environ, "DAGRUN_NO_FAST_PATH": "1"})
    assert d.returncode == 1


# -- 8 -------------------------------------------------------------------------------------------
def test_8_events_with_an_unknown_type_is_a_usage_error(failed_goal):
    home, _ = failed_goal
    r = run("events", "broken", "--type", "bogus", home=home, check=2)
    assert r.stdout == "" and "bogus" in r.stderr and "agent.task.blocked" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    ok = run("events", "broken", "--type", "task.blocked", home=home).stdout.splitlines()
    assert [json.loads(x)["task"] for x in ok] == ["b"]


# -- 9 -------------------------------------------------------------------------------------------
def test_9_logs_of_an_attempt_that_does_not_exist_counts_the_attempts(failed_goal):
    home, _ = failed_goal
    r = run("logs", "fine", "twice", "--attempt", "5", home=home, check=2)
    assert r.stderr.strip() == "dagrun: fine/twice has 2 attempts: no attempt 5"
    assert run("logs", "fine", "twice", "--attempt", "2", "--stdout", home=home).stdout == "ok\n"
    assert run("logs", "broken", "b", home=home, check=2).stderr.strip().endswith("has not started yet: no logs")


# -- 10 ------------------------------------------------------------------------------------------
def test_10_cancel_of_an_ended_goal_says_so(failed_goal):
    home, _ = failed_goal
    r = run("cancel", "fine", home=home)
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.strip() == "dagrun: nothing to cancel: goal fine had already ended (done)"
    r = run("cancel", "broken", home=home)
    assert "had already ended (failed)" in r.stderr


# -- 11 ------------------------------------------------------------------------------------------
def _helps() -> dict[str, str]:
    top = run("--help").stdout
    names = re.findall(r"^  ([a-z]+)\s{2,}", top.split("Run:", 1)[1], re.M)
    return {"": top, **{n: run(n, "--help").stdout for n in names}}


def test_11_help_pages_are_grouped_consistent_and_have_examples():
    helps = _helps()
    top = helps[""]
    for panel in ("Run:", "Inspect:", "Control:", "Plan tools:", "Protocol (for bash workers):", "Set-up:"):
        assert panel in top
    assert "Other commands" not in top
    assert len(helps) >= 23
    for name, text in helps.items():
        assert "Examples:\n" in text and f"dagrun {name}".strip() in text.split("Examples:")[1], name
        assert "{" not in text.split("Examples:")[0], (name, text)          # no {goal} / {PLAN}
        assert "<str>" not in text and "<int" not in text and "<float" not in text, (name, text)
        usage = text.splitlines()[0]
        assert usage == usage.replace("goal", "GOAL") or "GOAL" not in usage.upper(), usage
        for line in text.splitlines():
            if re.match(r"\s+-f, ", line):
                assert "--follow" in line, (name, line)                       # -f means one thing
            if "--worker" in line and "--name" in line:
                assert line.strip().startswith("--worker, --name"), (name, line)
    assert "GOAL TASK" in helps["logs"].splitlines()[0] and "GOAL [TASK]" in helps["cancel"].splitlines()[0]


# -- 12 ------------------------------------------------------------------------------------------
def test_12_nothing_refers_to_a_spec_md_that_does_not_ship():
    hits = []
    for base in (REPO / "README.md", REPO / "docs", REPO / "dagrun", REPO / "mkdocs.yml", REPO / "ARCHITECTURE.md"):
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()] if base.exists() else []
        for f in files:
            if f.suffix in (".md", ".py", ".yml", ".sh", ".service", ".timer", ".example", ".json", ""):
                if "SPEC.md" in f.read_text(errors="replace"):
                    hits.append(str(f.relative_to(REPO)))
    assert not hits, hits
    assert not (REPO / "SPEC.md").exists()


# -- 14 ------------------------------------------------------------------------------------------
def test_14_idle_cron_worker_is_quiet_and_journald_gets_priorities(tmp_path):
    home = tmp_path / "home"
    run("submit", EXAMPLES / "minimal" / "dag.json", home=home)
    run("run", "minimal", home=home, env={"FAKE_AGENT_SLEEP": "0"})
    r = run("worker", "--until-idle", home=home)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""            # idle: not a word
    v = run("worker", "--until-idle", "--verbose", home=home).stderr.splitlines()
    assert len(v) == 2 and v[0].startswith("dagrun: worker ") and v[1].endswith("exiting: idle")
    # under journald: <N> priorities, no name, no timestamp
    run("submit", EXAMPLES / "add-auth" / "dag.json", home=home)
    log = tmp_path / "journal"
    with open(log, "w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "FAKE_AGENT_SLEEP": "0"}
        env.pop("DAGRUN_HOME", None)
        p = subprocess.run([DAGRUN, f"--home={home}", "worker", "--until-idle"], stderr=f, env=env, timeout=120)
    assert p.returncode == 0
    lines = log.read_text().splitlines()
    assert lines and all(re.match(r"<[3-7]>", x) for x in lines), lines
    assert not any(x[3:].startswith("dagrun:") or re.match(r"\d{4}-\d\d-\d\d ", x[3:]) for x in lines), lines
    assert any(x.startswith("<6>add-auth/research-api running") for x in lines), lines
    assert lines[-1].startswith("<6>worker ") and lines[-1].endswith("exiting: idle")
    # a failure is a warning to the journal (journalctl -p warning shows it)
    bad = write_plan(tmp_path / "bad", [{"id": "x", "prompt": "p", "agent": "exit 4"}], goal="bad")
    run("submit", bad, home=home)
    with open(log, "w") as f:
        st = os.fstat(f.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([DAGRUN, f"--home={home}", "worker", "--until-idle"], stderr=f, env=env, timeout=120)
    lines = log.read_text().splitlines()
    assert any(x.startswith("<4>bad/x failed ") for x in lines), lines
    assert any(x.startswith("<4>bad goal.finished") for x in lines), lines
    # a JOURNAL_STREAM that is not our stderr (inherited by a child of a unit) changes nothing
    q = run("worker", "--until-idle", "--verbose", home=home, env={"JOURNAL_STREAM": "1:1"})
    assert q.stderr.startswith("dagrun: worker ")


# -- 15 ------------------------------------------------------------------------------------------
def test_15_lobster_without_an_argument_prints_only_its_usage(tmp_path):
    sh = need("dash")
    p = subprocess.run([sh, str(REPO / "contrib" / "lobster.sh")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("usage: lobster.sh GOAL") and len(p.stderr.splitlines()) == 1


# -- 16 ------------------------------------------------------------------------------------------
def test_16_report_defaults_to_goal_report_html_with_labels_and_legend(failed_goal, tmp_path):
    home, _ = failed_goal
    r = run("report", "broken", home=home, cwd=tmp_path)
    out = tmp_path / "broken-report.html"
    assert r.stdout.strip() == "broken-report.html" and out.exists()
    html = out.read_text()
    legend = html.split('<div class="legend">', 1)[1].split("</div>", 1)[0]
    assert "blocked" in legend
    # every bar has a label, however short it is (a 0.0 s bar beside long ones)
    tasks = [{"id": "long", "prompt": "x", "agent": "sleep 1.5"},
             {"id": "a-blip-with-a-long-name", "prompt": "x", "agent": "true", "deps": ["long"]},
             {"id": "after", "prompt": "x", "agent": "sleep 1.5", "deps": ["a-blip-with-a-long-name"]}]
    h2, _ = run_goal(tmp_path / "g", tasks, goal="blips")
    run("report", "blips", "--out", tmp_path / "b.svg", home=h2)
    svg = (tmp_path / "b.svg").read_text()
    bars = re.findall(r'<g class="bar[^"]*" data-task="([^"]+)">(.*?)</g>', svg, re.S)
    assert {t for t, _ in bars} == {"long", "a-blip-with-a-long-name", "after"}
    assert all("<text" in body for _, body in bars), bars


# -- install as a tool ----------------------------------------------------------------------------
def test_init_scaffolds_a_plan_with_the_installed_schema(tmp_path):
    r = run("init", "--dir", tmp_path, "--goal", "starter")
    assert r.stdout.strip() == str(tmp_path / "dag.json") and "dagrun validate" in r.stderr
    plan = json.loads((tmp_path / "dag.json").read_text())
    schema = run("schema", "--path").stdout.strip()
    assert plan["$schema"] == "file://" + schema and Path(schema).is_file()
    assert plan["goal"] == "starter" and plan["defaults"]["agent"] == "claude -p"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(plan, json.loads(Path(schema).read_text()))
    assert run("init", "--dir", tmp_path, check=4).stderr.startswith("dagrun: ")       # never overwrites
    run("init", "--dir", tmp_path, "--force", "--agent", "sh -c cat")
    assert run("validate", tmp_path / "dag.json").stderr == ""


def test_init_writes_cron_and_lobster_with_the_real_binary(tmp_path):
    run("init", "--cron", "--lobster", "--dir", tmp_path)
    cron = (tmp_path / "crontab").read_text()
    job = [x for x in cron.splitlines() if x.strip() and not x.lstrip().startswith("#") and "=" not in x.split()[0]]
    assert len(job) == 1 and f" {DAGRUN} worker --until-idle" in job[0], job
    assert f"PATH={os.path.dirname(DAGRUN)}:" in cron and "/home/me" not in cron
    lob = tmp_path / "lobster.sh"
    assert os.access(lob, os.X_OK) and "DAGRUN=${DAGRUN:-" + DAGRUN + "}" in lob.read_text()
    home = tmp_path / "h"
    run("submit", EXAMPLES / "minimal" / "dag.json", home=home)
    env = {k: v for k, v in os.environ.items() if k != "DAGRUN"}
    env.update(DAGRUN_HOME=str(home), PATH="/usr/bin:/bin", FAKE_AGENT_SLEEP="0")
    p = subprocess.run(["sh", str(lob), "minimal"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (task_dir(home, "minimal", "write") / "done").exists()


def test_completion_script_loads_in_bash_and_completes_goal_and_task_ids(failed_goal):
    home, _ = failed_goal
    bash = need("bash")
    script = (f'eval "$({DAGRUN} completion bash)"; complete -p dagrun; '
              'COMP_WORDS=(dagrun status ""); COMP_CWORD=2; _dagrun_completion dagrun; echo "goals: ${COMPREPLY[*]}"; '
              'COMP_WORDS=(dagrun logs broken ""); COMP_CWORD=3; _dagrun_completion dagrun; echo "tasks: ${COMPREPLY[*]}"; '
              'COMP_WORDS=(dagrun sta); COMP_CWORD=1; _dagrun_completion dagrun; echo "cmds: ${COMPREPLY[*]}"')
    env = {**os.environ, "DAGRUN_HOME": str(home), "PATH": os.path.dirname(DAGRUN) + ":" + os.environ["PATH"]}
    p = subprocess.run([bash, "--norc", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    out = p.stdout.splitlines()
    assert p.returncode == 0 and out[0].startswith("complete ") and out[0].endswith(" dagrun"), p.stdout + p.stderr
    assert "goals: broken fine" in out
    assert "tasks: a b" in out
    assert "cmds: status" in out
    for shell in ("zsh", "fish"):
        assert "_DAGRUN_COMPLETE" in run("completion", shell).stdout
    # what the zsh and fish scripts ask dagrun (the shells themselves may not be installed)
    z = run(env={"_TYPER_COMPLETE_ARGS": "dagrun logs broken ", "_DAGRUN_COMPLETE": "complete_zsh",
                 "DAGRUN_HOME": str(home)})
    assert '"a"' in z.stdout and '"b"' in z.stdout, z.stdout
    f = run(env={"_TYPER_COMPLETE_ARGS": "dagrun status ", "_DAGRUN_COMPLETE": "complete_fish",
                 "_TYPER_COMPLETE_FISH_ACTION": "get-args", "DAGRUN_HOME": str(home)})
    assert f.stdout.split() == ["broken", "fine"], f.stdout
    assert run("completion", "tcsh", check=2).stderr.startswith("dagrun: ")


def test_man_page_renders_with_every_command(tmp_path):
    man = need("man")
    page = tmp_path / "dagrun.1"
    page.write_text(run("man").stdout)
    p = subprocess.run([man, "-l", str(page)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100"})
    assert p.returncode == 0, p.stderr
    text = re.sub(r".\x08", "", p.stdout)
    assert text.startswith("DAGRUN(1)")
    for cmd in ("run", "worker", "status", "logs", "claim", "init", "completion", "man"):
        assert f"dagrun {cmd} " in text, cmd
    assert "Examples:" in text and "EXIT STATUS" in text
    if shutil.which("groff"):
        w = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True)
        assert w.stderr == "", w.stderr


@pytest.mark.parametrize("name", ["add-auth", "minimal", "code-edit"])
def test_init_example_copies_a_runnable_goal_whose_schema_resolves(tmp_path, name):
    """`dagrun init --example NAME` in an empty folder: the copied dag.json's "$schema" is the
    installed schema (a file that exists), and the plan validates."""
    run("init", "--example", name, cwd=tmp_path)
    doc = json.loads((tmp_path / name / "dag.json").read_text())
    schema = doc.get("$schema")
    if name != "minimal":                     # minimal has no "$schema"
        assert schema.startswith("file://") and Path(schema[len("file://"):]).is_file(), schema
    if name != "code-edit":                   # code-edit needs `sh init.sh` (a git repo) first
        run("validate", tmp_path / name / "dag.json", home=tmp_path / "home")


def test_init_example_leaves_out_the_bytecode_an_installer_compiles(tmp_path, monkeypatch):
    """pip byte-compiles every .py it installs, the code-edit example's seed too: `init
    --example` copies the example, not the installer's __pycache__ (it crashed on the .pyc)."""
    import compileall
    import shutil

    from dagrun import scaffold
    share = tmp_path / "share"
    shutil.copytree(scaffold.SHARE, share, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(str(share / "examples"), quiet=1)
    assert list((share / "examples" / "code-edit").rglob("*.pyc"))
    monkeypatch.setattr(scaffold, "SHARE", str(share))
    out = tmp_path / "out"
    out.mkdir()
    files = scaffold.example(str(out), "code-edit", force=False)
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert (out / "code-edit" / "seed" / "calc.py").read_text() == (share / "examples/code-edit/seed/calc.py").read_text()
    assert not list(out.rglob("__pycache__"))
