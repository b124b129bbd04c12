"""Every preset against its real CLI (Claude Code, Codex, Gemini CLI, aider, llm), offline,
talking to the local mock LLM API of ../shared/realagents (installed and started by
`sh ../shared/realagents/agents.sh`, which .ci/run does). Without /tmp/realagents these
tests skip -- except under CI=true, where they fail."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import events, need_realagents, run, write_plan

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


@pytest.fixture(scope="module", autouse=True)
def realagents():
    need_realagents()


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
    done_lines = [e for e in events(home, "dia") if e.get("status") == "done"]
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


class _ScriptedModel:
    """A Responses API "model" for Codex that uses tools, which the shared mock never does
    (a real model cannot run here): 1st request -> a client `tool_search_call` for "dagrun
    goal status"; 2nd (carrying Codex's tool_search_output) -> a call of the found `status`
    tool with {"goal": GOAL}; 3rd (carrying its output) -> a call of `add` with a sub-goal;
    4th -> an answer quoting the status output. Every request body is kept in `requests`."""

    def __init__(self, goal: str):
        import http.server
        import threading
        self.goal, self.requests = goal, []
        model = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):            # model lists
                self._send(b'{"object": "list", "data": []}', "application/json")

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip
                    raw = gzip.decompress(raw)
                body = json.loads(raw)
                model.requests.append(body)
                item = model.reply(body, len(model.requests))
                resp = {"id": f"resp_{len(model.requests)}", "object": "response", "created_at": 0,
                        "model": body.get("model"), "status": "completed", "output": [item],
                        "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                                  "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                                  "total_tokens": 15}}
                events = [("response.created", {"response": dict(resp, status="in_progress", output=[])}),
                          ("response.output_item.done", {"output_index": 0, "item": item}),
                          ("response.completed", {"response": resp})]
                self._send(b"".join(f"event: {n}\ndata: {json.dumps(dict(o, type=n, sequence_number=i))}\n\n"
                                    .encode() for i, (n, o) in enumerate(events)), "text/event-stream")

            def _send(self, data: bytes, ctype: str):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def reply(self, body: dict, n: int) -> dict:
        items = [i for i in body.get("input", []) if isinstance(i, dict)]
        calls = [i for i in items if i.get("type") == "function_call_output"]
        found = [i for i in items if i.get("type") == "tool_search_output"]
        if len(calls) == 1:
            ns = next(i["namespace"] for i in items if i.get("type") == "function_call")
            sub = {"id": "more", "deps": ["ask"], "prompt": "added by the agent", "agent": "true"}
            return {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "status": "completed",
                    "namespace": ns, "name": "add", "arguments": json.dumps({"goal": self.goal, "tasks": [sub]})}
        if calls:
            out = calls[0].get("output")
            text = out if isinstance(out, str) else "".join(c.get("text", "") for c in out if isinstance(c, dict))
            return {"type": "message", "id": f"msg_{n}", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "TOOL SAID: " + text, "annotations": []}]}
        if found:
            for ns in found[-1].get("tools", []):
                for t in ns.get("tools", []):
                    if t.get("name") == "status":
                        return {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}",
                                "status": "completed", "namespace": ns["name"], "name": "status",
                                "arguments": json.dumps({"goal": self.goal})}
            return {"type": "message", "id": f"msg_{n}", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "NO DAGRUN TOOL FOUND", "annotations": []}]}
        return {"type": "tool_search_call", "id": f"ts_{n}", "call_id": f"ts_{n}", "status": "completed",
                "execution": "client", "arguments": {"query": "dagrun goal status", "limit": 20}}

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def test_codex_preset_with_dagrun_mcp_reaches_the_dagrun_tools(home, tmp_path):
    """`"agent": "@codex --dagrun-mcp"`: the real Codex CLI gets `dagrun mcp` (this home) by
    per-run `-c mcp_servers.dagrun.*` overrides. Codex defers MCP tools behind its client-side
    tool_search: the first request offers `tool_search`, no dagrun tool; when the model
    searches, Codex answers with the dagrun server's ten tools (namespace mcp__dagrun), and the
    model's call of `status` runs on our server during the task (its answer is the goal's live
    status, showing the task itself running), and its call of `add` puts a sub-goal into the
    running goal, which then runs."""
    model = _ScriptedModel("live")
    try:
        presets = json.loads((home / "presets.json").read_text())
        presets["codex"]["env"] = {"MOCK_PORT": str(model.port)}         # the wrapper's API port
        (home / "presets.json").write_text(json.dumps(presets))
        plan = write_plan(tmp_path / "plan", [{"id": "ask", "prompt": "what is the goal's status?"}],
                          goal="live", defaults={"agent": "@codex --dagrun-mcp", "timeout": 120})
        run("run", plan, home=home, timeout=180)
    finally:
        model.close()
    reqs = model.requests
    assert len(reqs) == 4, [[i.get("type") for i in r["input"]] for r in reqs]
    offered = [t.get("name") or t.get("type") for t in reqs[0]["tools"]]
    assert "tool_search" in offered and not any("dagrun" in str(n) for n in offered), offered
    found = [i for i in reqs[1]["input"] if isinstance(i, dict) and i.get("type") == "tool_search_output"]
    ns = {t["name"]: {f["name"] for f in t.get("tools", [])} for t in found[-1]["tools"]}
    assert ns.get("mcp__dagrun") == {"status", "output", "logs", "claim", "complete", "fail", "heartbeat",
                                     "add", "cancel", "retry"}, ns
    out = (_task(home, "ask", "live") / "output").read_text()
    assert out.startswith("TOOL SAID: "), out
    live = json.loads(out[out.index("{"):])        # Codex puts "Wall time: ...\nOutput:" before it
    assert {r["task"]: r["state"] for r in live["tasks"]} == {"ask": "running"}, live
    raw = [json.loads(x) for x in (_task(home, "ask", "live") / "raw").read_text().splitlines() if x.startswith("{")]
    calls = [(o["item"]["tool"], o["item"]["status"]) for o in raw
             if o.get("type") == "item.completed" and o["item"].get("type") == "mcp_tool_call"
             and o["item"].get("server") == "dagrun"]
    assert calls == [("status", "completed"), ("add", "completed")], calls
    # the sub-goal the agent added ran after it, recorded as added by the task (DAGRUN_TASK reached the server)
    assert (_task(home, "more", "live") / "done").exists()
    origin = {t["id"]: t.get("origin") for t in json.loads((home / "goals/live/plan.json").read_text())["tasks"]}
    assert origin["more"]["by"] == "ask", origin
    assert "--dagrun-mcp" not in json.dumps(reqs)


def test_gemini_preset_with_dagrun_mcp_offers_the_dagrun_tools(home, tmp_path):
    """`"agent": "@gemini --dagrun-mcp"`: the real Gemini CLI, in a Gemini home of its own for
    the run (GEMINI_CLI_HOME in the claim, the server entry trusted), starts `dagrun mcp` and
    offers all ten dagrun tools to the model (the shared mock's request log). The user's
    auth type and trusted folders still count (no GEMINI_CLI_TRUST_WORKSPACE here: the plan
    folder is trusted in the user's trustedFolders.json); nothing is written into the task's
    working directory or the user's ~/.gemini."""
    user = tmp_path / "user"                                  # the user's GEMINI_CLI_HOME
    (user / ".gemini").mkdir(parents=True)
    (user / ".gemini/settings.json").write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}}))
    (user / ".gemini/trustedFolders.json").write_text(json.dumps({str(tmp_path / "plan"): "TRUST_FOLDER"}))
    before = {p.name: p.read_bytes() for p in (user / ".gemini").iterdir()}
    wrapper = tmp_path / "gemini-no-trust-env"                # the gemini-mock wrapper without
    wrapper.write_text((R / "bin/gemini-mock").read_text()    # GEMINI_CLI_TRUST_WORKSPACE=true
                       .replace("GEMINI_CLI_TRUST_WORKSPACE=true", ""))
    wrapper.chmod(0o755)
    assert "TRUST_WORKSPACE" not in wrapper.read_text()
    presets = json.loads((home / "presets.json").read_text())
    presets["gemini"] = {"command": [str(wrapper)], "env": {"GEMINI_CLI_HOME": str(user)}}
    (home / "presets.json").write_text(json.dumps(presets))
    token = f"dagrun-gemini-mcp-{os.getpid()}-{os.urandom(4).hex()}"
    plan = write_plan(tmp_path / "plan", [{"id": "ask", "prompt": f"{token}: list the goal's tasks"}],
                      goal="gm", defaults={"agent": "@gemini --dagrun-mcp", "timeout": 120})
    log = R / "mock.log"
    start = log.stat().st_size
    run("run", plan, home=home, timeout=180)
    assert (_task(home, "ask", "gm") / "output").read_text().startswith("MOCK REPLY: ")
    with open(log, "rb") as f:
        f.seek(start)
        mine = [json.loads(x) for x in f.read().decode("utf-8", "replace").splitlines() if token in x]
    offered = [{d["name"] for t in r["body"].get("tools", []) for d in t.get("functionDeclarations", [])}
               for r in mine]
    dagrun_tools = {"mcp_dagrun_" + t for t in ("status", "output", "logs", "claim", "complete", "fail",
                                                 "heartbeat", "add", "cancel", "retry")}
    assert any(o >= dagrun_tools for o in offered), [sorted(o) for o in offered]
    assert "--dagrun-mcp" not in json.dumps(mine)
    assert {p.name: p.read_bytes() for p in (user / ".gemini").iterdir()} == before
    assert not any(p.name == ".gemini" for p in (tmp_path / "plan").rglob("*"))


def test_gemini_dagrun_mcp_without_env_auth_fails_in_one_line(home, tmp_path):
    """A user whose Gemini login is kept in ~/.gemini (oauth): the per-run Gemini home cannot
    see it, so the attempt fails at once with the reason (no request is made)."""
    user = tmp_path / "user"
    (user / ".gemini").mkdir(parents=True)
    (user / ".gemini/settings.json").write_text(json.dumps({"security": {"auth": {"selectedType": "oauth-personal"}}}))
    presets = json.loads((home / "presets.json").read_text())
    presets["gemini"]["env"] = {"GEMINI_CLI_HOME": str(user)}
    (home / "presets.json").write_text(json.dumps(presets))
    plan = write_plan(tmp_path / "plan", [{"id": "ask", "prompt": "hi"}], goal="go",
                      defaults={"agent": "@gemini --dagrun-mcp", "timeout": 60})
    run("run", plan, home=home, check=1, timeout=120)
    failed = json.loads((_task(home, "ask", "go") / "failed").read_text())
    assert "--dagrun-mcp" in failed["reason"] and "'oauth-personal'" in failed["reason"], failed
    assert failed["exit_code"] == 2
