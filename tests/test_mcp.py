"""`dagrun mcp` driven by the SDK's own client over stdio (mcp.client.stdio), issue 19."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import tomllib

import pytest

from conftest import DAGRUN, need_realagents, run, write_plan

# the SDK's client is imported by the two tests that drive a session (_session), not here: its
# import costs ~0.7 s of CPU in every xdist worker that collects this file, i.e. all of them
if importlib.util.find_spec("mcp") is None:     # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise ImportError("the mcp SDK is not installed: pip install -e '.[test]'")
    pytest.skip("the mcp SDK is not installed: pip install -e '.[test]'", allow_module_level=True)


def _text(res) -> str:
    return "".join(getattr(c, "text", "") for c in res.content)


def _data(res):
    assert not res.is_error, _text(res)
    return json.loads(_text(res))


def _session(home, fn):
    """Start `dagrun --home HOME mcp`, initialize, run `await fn(session)`."""
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    async def main():
        params = StdioServerParameters(command=DAGRUN, args=["--home", str(home), "mcp"])
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                return await fn(s)
    return anyio.run(main)


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def submit(tmp_path, home):
    """submit(tasks): goal `g` with these tasks submitted to `home` (nothing runs them)."""
    def submit(tasks):
        run("submit", write_plan(tmp_path / "p", tasks, goal="g"), home=home)
    return submit


def test_a_whole_goal_through_mcp(home, submit):
    submit([{"id": "a", "prompt": "write A", "agent": "true"},
            {"id": "b", "deps": ["a"], "prompt": "use it", "agent": "true"}])

    async def drive(s):
        names = {t.name for t in (await s.list_tools()).tools}
        assert names == TOOLS
        c = _data(await s.call_tool("claim", {"goal": "g", "worker": "mcp-agent"}))
        assert c["claimed"] and c["task"] == "a" and c["prompt"].startswith("write A")
        assert _text(await s.call_tool("heartbeat", {"goal": "g", "task": "a"})) == "ok"
        assert (await s.call_tool("claim", {"goal": "g"})).content and \
            _data(await s.call_tool("claim", {"goal": "g"})) == {"claimed": False, "reason": "nothing is ready yet"}
        done = _data(await s.call_tool("complete", {"goal": "g", "task": "a", "output": "result of A\n"}))
        assert done["state"] == "done" and done["output_bytes"] == 12
        st = _data(await s.call_tool("status", {"goal": "g"}))
        assert {r["task"]: r["state"] for r in st["tasks"]} == {"a": "done", "b": "ready"}
        assert _text(await s.call_tool("output", {"goal": "g", "task": "a"})) == "result of A\n"
        c = _data(await s.call_tool("claim", {"goal": "g"}))
        assert c["task"] == "b" and "result of A" in c["prompt"]
        _data(await s.call_tool("complete", {"goal": "g", "task": "b", "output": "B"}))
        assert _data(await s.call_tool("claim", {"goal": "g"})) == {"claimed": False, "reason": "the goal has ended"}
        st = _data(await s.call_tool("status", {"goal": "g"}))
        plan_res = await s.read_resource("dagrun://goals/g/plan")
        ev_res = await s.read_resource("dagrun://goals/g/events")
        out_res = await s.read_resource("dagrun://goals/g/tasks/a/output")
        return st, plan_res, ev_res, out_res

    st, plan_res, ev_res, out_res = _session(home, drive)
    assert st["state"] == "done" and st["summary"]["outcome"] == "done"
    assert json.loads(plan_res.contents[0].text)["goal"] == "g"
    types = [json.loads(x)["type"] for x in ev_res.contents[0].text.splitlines()]
    assert types[0] == "agent.plan.created" and types[-1] == "agent.goal.finished"
    assert out_res.contents[0].text == "result of A\n"
    # the same files as the bash protocol writes
    assert (home / "goals/g/tasks/a/output").read_text() == "result of A\n"
    assert json.loads((home / "goals/g/tasks/a/done").read_text())["worker"] == "mcp-agent"


def test_refusals_are_tool_errors(home, submit):
    submit([{"id": "a", "prompt": "x", "agent": "true"}, {"id": "b", "prompt": "x", "agent": "true"}])
    # another process holds a's claim (a script's claim for a sleeping holder)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        t = run("claim", "g", "--pid", str(holder.pid), "--worker", "someone", home=home).stdout.strip()
        assert t == "a"

        async def drive(s):
            out = {}
            for name, args in [("complete", {"goal": "g", "task": "a", "output": "x"}),
                               ("fail", {"goal": "g", "task": "a", "reason": "no"}),
                               ("heartbeat", {"goal": "g", "task": "a"}),
                               ("complete", {"goal": "g", "task": "../etc"}),
                               ("output", {"goal": "g", "task": "nope"}),
                               ("status", {"goal": "no such goal"}),
                               ("add", {"goal": "g", "tasks": [{"id": "a", "prompt": "p", "agent": "true"}]}),
                               ("add", {"goal": "g", "tasks": [{"id": "x", "deps": ["y"], "prompt": "p", "agent": "t"},
                                                               {"id": "y", "deps": ["x"], "prompt": "p", "agent": "t"}]}),
                               ("retry", {"goal": "g", "task": "b"})]:
                res = await s.call_tool(name, args)
                out[(name, json.dumps(args))] = (res.is_error, _text(res))
            added = _data(await s.call_tool("add", {"goal": "g", "tasks": [{"id": "c", "deps": ["a"], "prompt": "p"}],
                                                    "defaults": {"agent": "true"}}))
            return out, added

        out, added = _session(home, drive)
    finally:
        holder.kill()
        holder.wait()
    errors = list(out.values())
    assert all(is_err for is_err, _ in errors), errors
    msgs = [m for _, m in errors]
    assert "not the holder" in msgs[0] or "held by" in msgs[0], msgs[0]
    assert "held by" in msgs[1] or "not the holder" in msgs[1], msgs[1]
    assert "invalid task id '../etc'" in msgs[3]
    assert "goal 'g' has no task 'nope'" in msgs[4]
    assert "invalid goal id" in msgs[5]
    assert 'task id "a" already exists' in msgs[6]
    assert "dependency cycle: x -> y -> x" in msgs[7]
    assert "nothing to retry" in msgs[8]
    assert all("Traceback" not in m for m in msgs)
    assert added == {"goal": "g", "added": ["c"]}
    assert not (home / "goals/g/tasks/a/done").exists()       # the refusals changed nothing


def test_print_config_for_each_client(home):
    cfg = json.loads(run("mcp", "--print-config", "claude", home=home).stdout)
    srv = cfg["mcpServers"]["dagrun"]
    assert srv["args"] == ["--home", str(home), "mcp"] and os.path.basename(srv["command"]) == "dagrun"
    assert json.loads(run("mcp", "--print-config", "gemini", home=home).stdout)["mcpServers"]["dagrun"] == {
        **srv, "timeout": 600000}                 # ms: connecting, listing the tools, each call
    toml = run("mcp", "--print-config", "codex", home=home).stdout
    assert toml.startswith("[mcp_servers.dagrun]\n")
    assert tomllib.loads(toml) == {"mcp_servers": {"dagrun": {**srv, "required": True, "startup_timeout_sec": 60,
                                                              "tool_timeout_sec": 600}}}
    p = run("mcp", "--print-config", "vim", home=home, check=2)
    assert "unknown client 'vim'" in p.stderr


REAL = "/tmp/realagents"
TOOLS = {"status", "output", "logs", "claim", "complete", "fail", "heartbeat", "add", "cancel", "retry"}


class _ClaudeMock:
    """The real Claude Code wrapper against the shared mock LLM, and what the mock saw of
    one task: its request log lines carrying the task's token (other users of the mock do
    not count)."""
    cli = os.path.join(REAL, "bin", "claude-mock")
    log = os.path.join(REAL, "mock.log")

    def __init__(self):
        self.token = f"dagrun-mcp-probe-{os.getpid()}-{os.urandom(4).hex()}"
        self.start = os.path.getsize(self.log)

    def requests(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.start)
            mine = [x for x in f.read().decode("utf-8", "replace").splitlines() if self.token in x]
        assert mine, "the mock never saw the task's request"
        return "\n".join(mine)


@pytest.fixture
def claude_mock():
    need_realagents("claude-mock")
    return _ClaudeMock()


@pytest.mark.realagents
def test_claude_code_started_by_dagrun_gets_the_dagrun_tools(tmp_path, home, claude_mock):
    """A real Claude Code (against the local mock LLM) run as a task with the config of
    `dagrun mcp --print-config claude` starts our server and offers its tools to the model."""
    cfg = tmp_path / "mcp.json"
    cfg.write_text(run("mcp", "--print-config", "claude", home=home).stdout)
    token = claude_mock.token
    plan = write_plan(tmp_path / "p", [{"id": "ask", "prompt": f"{token}: list the goal's tasks",
                                        "agent": f"{claude_mock.cli} --mcp-config {cfg} --strict-mcp-config"}],
                      goal="g")
    run("run", plan, home=home, timeout=180)
    assert token in (home / "goals/g/tasks/ask/output").read_text()
    mine = claude_mock.requests()
    # Claude Code names MCP tools mcp__<server>__<tool> (offered directly or via its tool search)
    seen = set(re.findall(r"mcp__dagrun__([a-z]+)", mine))
    assert seen >= TOOLS, sorted(seen)


def test_dagrun_mcp_option_config_per_cli(tmp_path):
    """The preset option --dagrun-mcp: what each CLI gets for one run (no secret, this home)."""
    from dagrun import mcpconfig
    home, exe, side = str(tmp_path / "home"), "/opt/venv/bin/dagrun", str(tmp_path / "claim")
    srv = {"command": exe, "args": ["--home", home, "mcp"]}
    c = mcpconfig.run_args("claude", home, exe, side, {})
    path = os.path.join(side, "mcp.json")
    assert c.args == ["--mcp-config", path] and c.env == {}
    assert json.loads(c.files[path]) == {"mcpServers": {"dagrun": srv}}
    c = mcpconfig.run_args("codex", home, exe, side, {})        # -c overrides, no file
    assert c.files == {} and c.env == {} and c.args[::2] == ["-c"] * 7
    over = dict(a.split("=", 1) for a in c.args[1::2])
    assert tomllib.loads("\n".join(f"{k} = {v}" for k, v in over.items())) == {"mcp_servers": {"dagrun": {
        **srv, "default_tools_approval_mode": "approve", "env_vars": ["DAGRUN_GOAL", "DAGRUN_TASK"],
        "required": True, "startup_timeout_sec": 60, "tool_timeout_sec": 600}}}
    c = mcpconfig.run_args("gemini", home, exe, side, {"GEMINI_API_KEY": "AIza-not-a-real-key", "HOME": str(tmp_path / "nohome")})
    gh = os.path.join(side, "gemini-home")
    assert c.args == [] and c.env == {"GEMINI_CLI_HOME": gh, "GEMINI_CLI_TRUSTED_FOLDERS_PATH":
                                      str(tmp_path / "nohome" / ".gemini" / "trustedFolders.json")}
    assert json.loads(c.files[os.path.join(gh, ".gemini", "settings.json")]) == {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "mcpServers": {"dagrun": {**srv, "trust": True, "timeout": 600000}}}
    assert "AIza" not in json.dumps(c)                # the key stays in the environment


def test_dagrun_mcp_gemini_auth_must_come_from_the_environment(tmp_path):
    """The per-run Gemini home hides ~/.gemini: the user's auth type (only that) is read from
    their settings; a login kept in ~/.gemini (oauth) or no auth at all is a one-line refusal."""
    from dagrun import mcpconfig

    def user(selected):
        d = tmp_path / f"u-{selected}"
        (d / ".gemini").mkdir(parents=True)
        (d / ".gemini/settings.json").write_text(json.dumps({"security": {"auth": {"selectedType": selected}},
                                                             "mcpServers": {"mine": {"env": {"TOKEN": "s3cret"}}}}))
        return str(d)

    def settings(environ):
        c = mcpconfig.run_args("gemini", "/h", "/bin/dagrun", str(tmp_path / "claim"), environ)
        return json.loads(next(iter(c.files.values())))

    assert settings({"HOME": user("vertex-ai")})["security"]["auth"]["selectedType"] == "vertex-ai"
    s = settings({"GEMINI_CLI_HOME": user("gemini-api-key"), "HOME": "/nonexistent"})
    assert s["security"]["auth"]["selectedType"] == "gemini-api-key" and "s3cret" not in json.dumps(s)
    assert settings({"HOME": "/nonexistent", "GOOGLE_GENAI_USE_VERTEXAI": "true"})["security"]["auth"][
        "selectedType"] == "vertex-ai"
    with pytest.raises(mcpconfig.Unavailable, match="'oauth-personal'"):
        settings({"HOME": user("oauth-personal"), "GEMINI_API_KEY": "k"})
    with pytest.raises(mcpconfig.Unavailable, match="GEMINI_API_KEY"):
        settings({"HOME": "/nonexistent"})


def test_dagrun_mcp_option_refused_for_a_preset_that_cannot_take_it(tmp_path, home):
    for name in ("llm", "aider"):
        plan = write_plan(tmp_path / name, [{"id": "a", "prompt": "x", "agent": f"@{name} --dagrun-mcp"}], goal="g")
        p = run("run", plan, home=home, check=False)
        assert p.returncode == 2, p.stderr
        assert "--dagrun-mcp" in p.stderr and f"@{name}" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.realagents
def test_claude_preset_with_dagrun_mcp_option_gets_the_dagrun_tools(tmp_path, home, claude_mock):
    """`"agent": "@claude --dagrun-mcp"`: the adapter writes the MCP config into the claim and
    passes --mcp-config; the real Claude Code (mock LLM) offers the dagrun tools."""
    home.mkdir()
    (home / "presets.json").write_text(json.dumps({"claude": {"command": [claude_mock.cli, "-p"]}}))
    plan = write_plan(tmp_path / "p", [{"id": "ask", "prompt": f"{claude_mock.token}: list the goal's tasks",
                                        "agent": "@claude --dagrun-mcp --strict-mcp-config"}], goal="g")
    run("run", plan, home=home, timeout=180)
    assert (home / "goals/g/tasks/ask/done").exists()
    mine = claude_mock.requests()
    assert "--dagrun-mcp" not in mine
    seen = set(re.findall(r"mcp__dagrun__([a-z]+)", mine))
    assert seen >= {"status", "output", "claim", "complete", "add"}, sorted(seen)
