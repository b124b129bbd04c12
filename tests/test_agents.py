"""Presets, the adapter and usage without the real CLIs (those are in test_agents_real.py):
home-made agents that write $DAGRUN_USAGE_FILE, presets.json overrides with small scripts that
print what a real CLI prints, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import events, run, write_plan

PY = sys.executable


def _task(home: Path, g: str, t: str) -> Path:
    return home / "goals" / g / "tasks" / t


USAGE_AGENT = r"""
cat > /dev/null
printf '%s\n' '{"tokens_in": 100, "tokens_out": 10, "cost_usd": 0.25, "model": "m1"}' >> "$DAGRUN_USAGE_FILE"
printf '%s\n' 'not json at all' >> "$DAGRUN_USAGE_FILE"
printf '%s\n' '{"tokens_in": -5}' >> "$DAGRUN_USAGE_FILE"
printf '%s\n' '[1, 2]' >> "$DAGRUN_USAGE_FILE"
printf '%s\n' '{"tokens_in": 50, "tokens_out": 5, "tokens_cached": 20, "cost_usd": 0.5, "model": "m1"}' >> "$DAGRUN_USAGE_FILE"
echo answer
"""


def test_usage_file_lines_add_up_and_bad_lines_are_ignored_with_a_warning(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "agent.sh").write_text(USAGE_AGENT)
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "deps": ["a"]}],
                      goal="u", defaults={"agent": f"sh {tmp_path}/agent.sh"})
    p = run("run", plan, home=home)
    assert "usage line 2 ignored: not JSON" in p.stderr + p.stdout
    assert "usage line 3 ignored: tokens_in must be a non-negative number" in p.stderr + p.stdout
    done = json.loads((_task(home, "u", "a") / "done").read_text())
    assert done["usage"] == {"tokens_in": 150, "tokens_out": 15, "tokens_cached": 20, "cost_usd": 0.75, "model": "m1"}
    assert (_task(home, "u", "a") / "output").read_text() == "answer\n"
    # events: on the done line
    dl = [e for e in events(home, "u") if e.get("status") == "done"]
    assert [e["usage"]["cost_usd"] for e in dl] == [0.75, 0.75]
    # status: per task and the goal's total
    st = json.loads(run("status", "u", "--json", home=home).stdout)
    assert st["usage"]["cost_usd"] == 1.5 and st["usage"]["tokens_in"] == 300
    assert all(r["usage"]["tokens_out"] == 15 for r in st["tasks"])
    txt = run("status", "u", home=home).stdout
    assert "USAGE" in txt and "usage 300 in (40 cached) / 30 out, $1.5000, m1" in txt
    # summary.json
    s = json.loads((home / "goals/u/summary.json").read_text())
    assert s["usage"]["cost_usd"] == 1.5 and s["usage_by_task"]["b"]["tokens_in"] == 150
    # metrics
    m = run("metrics", home=home).stdout
    assert 'dagrun_agent_cost_usd_total{goal="u"} 1.5' in m
    assert 'dagrun_agent_tokens_total{goal="u",model="m1",kind="in"} 300' in m
    # the report
    out = tmp_path / "r.html"
    run("report", "u", "--out", out, home=home)
    assert "agent usage" in out.read_text() and "$1.5000" in out.read_text()


def test_failed_attempts_keep_their_usage_and_count_in_the_total(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "agent.sh").write_text(
        'cat >/dev/null; echo \'{"tokens_in": 7, "cost_usd": 0.1}\' >> "$DAGRUN_USAGE_FILE"\n'
        '[ "$DAGRUN_ATTEMPT" = 2 ] && echo ok && exit 0; exit 3\n')
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="f",
                      defaults={"agent": f"sh {tmp_path}/agent.sh", "retries": 1, "retry_backoff": 0})
    run("run", plan, home=home)
    rec = json.loads((_task(home, "f", "a") / "attempts" / "1.json").read_text())
    assert rec["usage"] == {"tokens_in": 7, "cost_usd": 0.1}
    retrying = [e for e in events(home, "f") if e.get("status") == "retrying"]
    assert retrying[0]["usage"]["cost_usd"] == 0.1
    st = json.loads(run("status", "f", "--json", home=home).stdout)
    assert st["usage"]["cost_usd"] == 0.2 and st["usage"]["tokens_in"] == 14


# ------------------------------------------------------------------ presets through presets.json
FAKE_CLAUDE = r"""
import json, sys
prompt = sys.stdin.read()
args = sys.argv[1:]
if "FAIL" in prompt:
    print(json.dumps({"type": "result", "is_error": True, "result": "API Error: 529 overloaded", "total_cost_usd": 0}))
    sys.exit(1)
if "EMPTY" in prompt:
    print(json.dumps({"type": "result", "is_error": False, "result": ""}))
    sys.exit(0)
print(json.dumps({"type": "result", "is_error": False, "result": "ANSWER(" + prompt.splitlines()[0] + ") " + " ".join(args),
                  "total_cost_usd": 0.02,
                  "usage": {"input_tokens": 40, "output_tokens": 4, "cache_read_input_tokens": 10},
                  "modelUsage": {"m-big": {"inputTokens": 30, "outputTokens": 3, "cacheReadInputTokens": 10, "costUSD": 0.015},
                                 "m-small": {"inputTokens": 10, "outputTokens": 1, "costUSD": 0.005}}}))
"""


@pytest.fixture
def fake_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (tmp_path / "fake_claude.py").write_text(FAKE_CLAUDE)
    (home / "presets.json").write_text(json.dumps({
        "claude": {"command": [PY, str(tmp_path / "fake_claude.py")]},
        "mine": {"command": ["sh", "-c", 'cat; echo " tail:$0 $1"', "x"], "doc": "a home-made preset"},
    }))
    return home


def test_preset_from_the_home_table_answer_usage_and_args(tmp_path, fake_home):
    plan = write_plan(tmp_path / "p", [
        {"id": "a", "prompt": "first"},
        {"id": "b", "prompt": "second", "deps": ["a"], "agent": "@mine 'two words'"},
    ], goal="pr", defaults={"agent": "@claude --model 'm big'"})
    run("run", plan, home=fake_home)
    out = (_task(fake_home, "pr", "a") / "output").read_text()
    assert out == "ANSWER(first) --output-format json --model m big\n"     # preset args, then the task's
    raw = json.loads((_task(fake_home, "pr", "a") / "raw").read_text())
    assert raw["type"] == "result"
    u = json.loads((_task(fake_home, "pr", "a") / "done").read_text())["usage"]
    assert u["tokens_in"] == 50 and u["tokens_out"] == 4 and u["tokens_cached"] == 10 and u["cost_usd"] == 0.02
    assert u["model"] == "m-big" and set(u["models"]) == {"m-big", "m-small"}
    # the answer (not JSON) is what the dependent gets
    assert "## Output of a\n\nANSWER(first)" in (_task(fake_home, "pr", "b") / "prompt.md").read_text()
    assert (_task(fake_home, "pr", "b") / "output").read_text().endswith(" tail:x two words\n")
    m = run("metrics", home=fake_home).stdout
    assert 'dagrun_agent_tokens_total{goal="pr",model="m-small",kind="in"} 10' in m


def test_hidden_failures_become_failed_attempts_with_the_tools_message(tmp_path, fake_home):
    plan = write_plan(tmp_path / "p", [
        {"id": "err", "prompt": "FAIL please"},
        {"id": "empty", "prompt": "EMPTY please"},
    ], goal="hf", defaults={"agent": "@claude"})
    p = run("run", plan, home=fake_home, check=1)
    err = json.loads((_task(fake_home, "hf", "err") / "failed").read_text())
    assert err["reason"] == "exit code 1: @claude: API Error: 529 overloaded"
    assert "API Error: 529 overloaded" in p.stdout
    empty = json.loads((_task(fake_home, "hf", "empty") / "failed").read_text())
    assert empty["reason"] == "exit code 1: @claude: empty answer"
    assert (_task(fake_home, "hf", "err") / "attempts" / "1.raw").exists()    # the raw stream is kept


def test_a_missing_binary_is_a_clear_failure(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "presets.json").write_text(json.dumps({"codex": {"command": ["/nonexistent/codex"]}}))
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x"}], goal="mb", defaults={"agent": "@codex"})
    run("run", plan, home=home, check=1)
    f = json.loads((_task(home, "mb", "a") / "failed").read_text())
    assert f["exit_code"] == 127 and "cannot run '/nonexistent/codex'" in f["reason"]


def test_script_claims_get_the_expanded_command_and_their_usage_is_recorded(tmp_path, fake_home):
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "scripted"}], goal="sc", defaults={"agent": "@claude"})
    run("submit", plan, home=fake_home)
    c = json.loads(run("claim", "--json", "sc", home=fake_home).stdout)
    assert "dagrun.agentrun claude" in c["agent"] and c["usage_file"].endswith("/claim/usage.jsonl")
    # run the agent the way a script does: sh -c "$DAGRUN_AGENT" < prompt > stdout_file
    with open(c["prompt_file"], "rb") as stdin, open(c["stdout_file"], "wb") as out:
        rc = subprocess.run(["/bin/sh", "-c", c["agent"]], stdin=stdin, stdout=out, cwd=c["workdir"],
                            env={"PATH": "/usr/bin:/bin", "DAGRUN_HOME": str(fake_home),
                                 "DAGRUN_USAGE_FILE": c["usage_file"], "DAGRUN_RAW_FILE": c["raw_file"]}).returncode
    assert rc == 0
    run("complete", "sc", "a", "--worker", c["worker"], home=fake_home)
    done = json.loads((_task(fake_home, "sc", "a") / "done").read_text())
    assert done["usage"]["cost_usd"] == 0.02
    assert (_task(fake_home, "sc", "a") / "output").read_text().startswith("ANSWER(scripted)")
    assert (_task(fake_home, "sc", "a") / "raw").exists()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("agent,msg", [
    ("@claud", "unknown agent preset @claud (known: @aider, @claude, @codex, @gemini, @llm)"),
    ("@claude 'unbalanced", "cannot split"),
    ("@", "does not start with a preset name"),
])
def test_bad_preset_is_a_one_line_plan_error(tmp_path, agent, msg):
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": agent}], goal="b")
    for cmd in (["validate", plan], ["submit", plan], ["run", plan]):
        p = run(*cmd, home=tmp_path / "home", check=2)
        assert p.stderr.count("\n") == 1 and "tasks[0].agent: " in p.stderr and msg in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "home" / "goals" / "b").exists()


@pytest.mark.parametrize("content,msg", [
    ("{not json", "malformed JSON"),
    ("[]", "expected an object of presets"),
    ('{"claude": {"comand": ["x"]}}', "unknown field 'comand'"),
    ('{"new": {"args": []}}', "a new preset needs \"command\""),
    ('{"claude": {"command": "claude -p"}}', "'command' must be a non-empty array of strings"),
    ('{"claude": {"parser": "xml"}}', "unknown parser 'xml'"),
    ('{"claude": {"env": {"A": 1}}}', "'env' must be an object of strings"),
    ('{"bad name!": {"command": ["x"]}}', "invalid name"),
])
def test_bad_presets_json_is_a_one_line_error(tmp_path, content, msg):
    home = tmp_path / "home"
    home.mkdir()
    (home / "presets.json").write_text(content)
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "@claude"}], goal="b")
    p = run("validate", plan, home=home, check=2)
    assert p.stderr.startswith("dagrun: ") and p.stderr.count("\n") == 1 and msg in p.stderr, p.stderr


def test_plain_commands_ignore_presets_json(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "presets.json").write_text("{broken")
    plan = write_plan(tmp_path / "p", [{"id": "a", "prompt": "x", "agent": "cat"}], goal="plain")
    run("run", plan, home=home)
    assert (_task(home, "plain", "a") / "output").read_text().startswith("x")
    assert not (_task(home, "plain", "a") / "raw").exists()


def test_adapter_imports_stay_small():
    """The adapter runs on every agent start: standard library + presets/usage/mcpconfig only
    (and lazyre, presets' pattern compiled on first use)."""
    code = ("import sys; import dagrun.agentrun; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('orjson','typer','rich','watchdog','filelock','psutil') or m.startswith('dagrun.')))")
    out = subprocess.run([PY, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("['dagrun.agentrun', 'dagrun.errors', 'dagrun.lazyre', 'dagrun.mcpconfig', "
                           "'dagrun.presets', 'dagrun.usage']")


def test_a_presets_stdout_counts_as_progress_for_stall_timeout(tmp_path):
    """The CLI's stdout goes to the raw file, not through dagrun's pipe: while it grows, the
    adapter touches the heartbeat, so a working CLI is not killed as stalled; a silent one is."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "talk.py").write_text(
        "import sys, time\nsys.stdin.read()\n"
        "for i in range(8):\n    print('line', i, flush=True); time.sleep(0.4)\n")
    (tmp_path / "mute.py").write_text("import sys, time\nsys.stdin.read()\ntime.sleep(4)\nprint('late')\n")
    (home / "presets.json").write_text(json.dumps({
        "talk": {"command": [PY, str(tmp_path / "talk.py")]},
        "mute": {"command": [PY, str(tmp_path / "mute.py")]}}))
    plan = write_plan(tmp_path / "p", [{"id": "talk", "prompt": "x", "agent": "@talk"},
                                       {"id": "mute", "prompt": "x", "agent": "@mute"}],
                      goal="st", defaults={"stall_timeout": 1.5})
    run("run", plan, home=home, check=1)
    assert (_task(home, "st", "talk") / "output").read_text().startswith("line 0\n")
    f = json.loads((_task(home, "st", "mute") / "failed").read_text())
    assert f["outcome"] == "stalled"
