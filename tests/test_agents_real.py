"""Every preset against its real CLI (Claude Code, Codex, Gemini CLI, aider, llm), offline,
talking to the local mock LLM API of ../shared/realagents (installed and started by
`sh ../shared/realagents/agents.sh`, which .ci/run does). Without /tmp/realagents these
tests skip -- except under CI=true, where they fail."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from conftest import run, write_plan

R = Path("/tmp/realagents")
pytestmark = pytest.mark.realagents

# The tests point each preset's command at the wrappers (they set HOME, the mock's URL, keys)
# through the home's presets.json -- exactly what a user does to use another binary.
PRESETS = {
    "claude": {"command": [str(R / "bin/claude-mock")]},
    "codex": {"command": [str(R / "bin/codex-mock")]},
    "gemini": {"command": [str(R / "bin/gemini-mock")]},
    "aider": {"command": [str(R / "bin/aider-mock")]},
    # llm's OpenAI plugin against the mock (model "mock" comes from extra-openai-models.yaml)
    "llm": {"command": [str(R / "venv/bin/llm"), "-m", "mock", "-n"],
            "env": {"LLM_USER_PATH": str(R / "home/.llm")}},
    "llm-echo": {"command": [str(R / "bin/llm-echo")], "args": ["-u"], "parser": "llm-text"},
}
NAMES = ["claude", "codex", "gemini", "aider", "llm"]


def _mock_up() -> str | None:
    if not (R / "bin").is_dir():
        return f"{R}/bin is missing: run `sh ../shared/realagents/agents.sh`"
    try:
        port = int((R / "mock.port").read_text())
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except (OSError, ValueError) as e:
        return f"the mock LLM API is not running ({e}): run `sh ../shared/realagents/agents.sh`"
    return None


@pytest.fixture(scope="module", autouse=True)
def realagents():
    why = _mock_up()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    (h / "presets.json").write_text(json.dumps(PRESETS))
    return h


def _diamond(folder: Path, agent: str) -> Path:
    return write_plan(folder, [
        {"id": "a", "prompt": "alpha says hello"},
        {"id": "b", "prompt": "beta", "deps": ["a"]},
        {"id": "c", "prompt": "gamma", "deps": ["a"]},
        {"id": "d", "prompt": "delta", "deps": ["b", "c"]},
    ], goal="dia", defaults={"agent": agent, "timeout": 120}, max_parallel=2)


def _task(home: Path, t: str, goal: str = "dia") -> Path:
    return home / "goals" / goal / "tasks" / t


@pytest.mark.parametrize("name", NAMES)
def test_preset_runs_a_diamond_on_the_real_cli(home, tmp_path, name):
    plan = _diamond(tmp_path / "plan", f"@{name}")
    run("run", plan, home=home, timeout=300)
    for t in "abcd":
        out = (_task(home, t) / "output").read_text()
        assert out.startswith("MOCK REPLY: "), (t, out)          # the answer, not the tool's JSON
        assert (_task(home, t) / "raw").stat().st_size > 0           # the raw stream is kept beside it
        done = json.loads((_task(home, t) / "done").read_text())
        u = done["usage"]
        assert u["tokens_in"] > 0 and u["tokens_out"] > 0, u
        if name in ("claude", "aider"):
            assert u["cost_usd"] > 0, u
    # the answer text of a reaches its dependents' prompts, not JSON
    prompt_b = (_task(home, "b") / "prompt.md").read_text()
    assert "## Output of a\n\nMOCK REPLY: alpha says hello" in prompt_b
    assert '"result"' not in prompt_b and '"type"' not in prompt_b
    # usage on the done event lines
    done_lines = [json.loads(x) for x in (home / "goals/dia/events.jsonl").read_text().splitlines()]
    done_lines = [e for e in done_lines if e.get("status") == "done"]
    assert len(done_lines) == 4 and all(e["usage"]["tokens_out"] > 0 for e in done_lines)


@pytest.mark.parametrize("name", NAMES)
def test_api_error_fails_the_task_with_the_tools_message(home, tmp_path, name):
    plan = write_plan(tmp_path / "plan", [
        {"id": "a", "prompt": "please fail MOCK_HTTP_STATUS=400"},
        {"id": "b", "prompt": "never", "deps": ["a"]},
    ], goal="err", defaults={"agent": f"@{name}", "timeout": 120})
    p = run("run", plan, home=home, check=1, timeout=300)
    failed = json.loads((_task(home, "a", "err") / "failed").read_text())
    assert "mock error 400" in failed["reason"], failed
    assert f"@{name}:" in failed["reason"]
    assert "mock error 400" in p.stdout                    # `run` shows the reason
    assert not (_task(home, "b", "err") / "output").exists()
    if name == "aider":             # aider exits 0 after the API failure: caught by the adapter
        assert failed["exit_code"] == 1
    assert (_task(home, "a", "err") / "attempts" / "1.raw").exists() or name == "gemini"


def test_llm_echo_exact_reply(home, tmp_path):
    """llm's offline echo model (no server): `{"raw": text}` replies exactly text."""
    plan = write_plan(tmp_path / "plan", [{"id": "a", "prompt": '{"raw": "exactly this"}'}],
                      goal="echo", defaults={"agent": "@llm-echo"})
    run("run", plan, home=home, timeout=120)
    assert (_task(home, "a", "echo") / "output").read_text() == "exactly this\n"
    assert json.loads((_task(home, "a", "echo") / "done").read_text())["usage"]["tokens_out"] > 0


def test_extra_arguments_reach_the_cli(home, tmp_path):
    """`@claude --model X`: the extra words go to the real CLI (the mock answers as X)."""
    plan = write_plan(tmp_path / "plan", [{"id": "a", "prompt": "hi"}], goal="m",
                      defaults={"agent": "@claude --model claude-sonnet-4-5"})
    run("run", plan, home=home, timeout=120)
    done = json.loads((_task(home, "a", "m") / "done").read_text())
    assert done["usage"]["model"] == "claude-sonnet-4-5"


def test_example_goal_passes_with_a_preset(home, tmp_path):
    """examples/add-auth with its agent swapped for @codex."""
    src = json.loads((Path(__file__).resolve().parent.parent / "examples/add-auth/dag.json").read_text())
    src.setdefault("defaults", {})["agent"] = "@codex"
    for t in src["tasks"]:
        t.pop("agent", None)
        if "prompt_file" in t:
            t.pop("prompt_file")
            t["prompt"] = f"do {t['id']}"
    plan = tmp_path / "plan" / "dag.json"
    plan.parent.mkdir()
    plan.write_text(json.dumps(src))
    run("run", plan, home=home, timeout=300)
    st = json.loads(run("status", src["goal"], "--json", home=home).stdout)
    assert st["counts"] == {"done": len(src["tasks"])} or st.get("outcome") == "done", st


def test_acceptance_check_sees_the_real_clis_answer(home, tmp_path):
    """A check on a preset: it reads the extracted answer at $DAGRUN_OUTPUT; a failing one
    fails the attempt as check_failed and its output reaches the retry's prompt."""
    plan = write_plan(tmp_path / "plan", [
        {"id": "ok", "prompt": "hello", "check": ["sh", "-c", 'grep -q "^MOCK REPLY: hello" "$DAGRUN_OUTPUT"']},
        {"id": "no", "prompt": "hello", "check": ["sh", "-c", 'echo "got: $(cat "$DAGRUN_OUTPUT")"; exit 1'],
         "retries": 1, "retry_backoff": 0, "retry_context": "error"},
    ], goal="chk", defaults={"agent": "@claude", "timeout": 120})
    run("run", plan, home=home, check=1, timeout=300)
    assert (_task(home, "ok", "chk") / "done").exists()
    f = json.loads((_task(home, "no", "chk") / "failed").read_text())
    assert f["outcome"] == "check_failed" and "got: MOCK REPLY: hello" in f["check"]["tail"]
    assert "got: MOCK REPLY: hello" in (_task(home, "no", "chk") / "attempts" / "2.prompt.md").read_text()


def test_cached_plan_makes_no_request_the_second_time(home, tmp_path):
    """`cache: true`: the second goal with the same tasks sends nothing to the API (counted in
    the mock's request log by a nonce in the prompts; other users of the mock do not count)."""
    import uuid
    nonce = uuid.uuid4().hex
    log = R / "mock.log"

    def requests() -> int:
        return sum(1 for line in log.read_text(errors="replace").splitlines() if nonce in line)

    tasks = [{"id": "a", "prompt": f"first {nonce}"}, {"id": "b", "prompt": f"second {nonce}", "deps": ["a"]}]
    run("run", write_plan(tmp_path / "p", tasks, goal="c1", defaults={"agent": "@codex", "cache": True}),
        home=home, timeout=300)
    first = requests()
    assert first >= 2
    run("run", write_plan(tmp_path / "p", tasks, goal="c2", defaults={"agent": "@codex", "cache": True},
                          name="c2.json"), home=home, timeout=300)
    assert requests() == first
    for t in "ab":
        assert (_task(home, t, "c2") / "output").read_bytes() == (_task(home, t, "c1") / "output").read_bytes()
        assert json.loads((_task(home, t, "c2") / "done").read_text())["cached"] is True
    st = json.loads(run("status", "c2", "--json", home=home).stdout)
    assert st.get("usage") is None                     # a cache hit costs nothing
