"""The MCP client configurations that give an agent CLI `dagrun mcp` with a given home
(`dagrun mcp --print-config CLIENT`, and the preset option `--dagrun-mcp` of agentrun.py).
No SDK needed: printing a config must work anywhere. Nothing secret goes in: the program,
`--home`, `mcp`."""
from __future__ import annotations

import collections
import json
import os
import sys

OPTION = "--dagrun-mcp"          # the preset option (`"agent": "@claude --dagrun-mcp"`)
CLIENTS = ("claude", "codex", "gemini")
BY_PARSER = {"claude-json": "claude", "codex-jsonl": "codex", "gemini-json": "gemini"}  # presets that
#                                                   can take it per run (see docs/integrations.md)
GEMINI_ENV_AUTH = ("gemini-api-key", "vertex-ai")   # Gemini CLI auth types that live in the environment
# How long a CLI may wait for the server: its start (the `mcp` SDK's import alone takes 1-3 s
# on a loaded 2-core machine, bench/mcp_startup.py) and one tool call (`cancel` waits for
# the cancelled agents to end). Generous: the task's own timeout bounds the run anyway.
STARTUP_TIMEOUT_S = 60
TOOL_TIMEOUT_S = 600


class Unavailable(Exception):
    """This run cannot be given the server (one line: why)."""


# args: put before the task's own extra arguments; files: path -> content, written (parents
# made) before the run; env: added to the CLI's environment. (A collections.namedtuple, not
# typing.NamedTuple: typing is not imported on the run path, docs/performance.md "(10)".)
RunConfig = collections.namedtuple("RunConfig", "args files env")


def _root(home) -> str:
    return home if isinstance(home, str) else home.root


def client_config(client: str, home, exe: str) -> str:
    """The snippet that gives an agent CLI this server (with this home)."""
    args = ["--home", _root(home), "mcp"]
    if client == "claude":        # claude --mcp-config FILE (or the JSON itself)
        return json.dumps({"mcpServers": {"dagrun": {"command": exe, "args": args}}}, indent=2) + "\n"
    if client == "gemini":        # .gemini/settings.json
        return json.dumps({"mcpServers": {"dagrun": {"command": exe, "args": args, **GEMINI_WAIT}}},
                          indent=2) + "\n"
    if client == "codex":         # ~/.codex/config.toml
        q = ", ".join(_toml_str(a) for a in args)
        return (f"[mcp_servers.dagrun]\ncommand = {_toml_str(exe)}\nargs = [{q}]\n"
                + "".join(f"{k} = {v}\n" for k, v in CODEX_WAIT))
    raise ValueError(client)


# Codex (0.169): `required` makes the session wait for the server before the first model
# request and fail ("required MCP servers failed to initialize: dagrun: ...") if it cannot
# start; without it Codex starts MCP servers in the background, and a model request made
# before `dagrun mcp` answered (its tool_search included) sees none of its tools.
# startup_timeout_sec (default 30) bounds that wait, tool_timeout_sec (default 60) a call.
CODEX_WAIT = (("required", "true"), ("startup_timeout_sec", str(STARTUP_TIMEOUT_S)),
              ("tool_timeout_sec", str(TOOL_TIMEOUT_S)))
# Gemini CLI (0.61): `gemini -p` always waits for its MCP servers before the first request;
# the per-server `timeout` (ms, default 600000) bounds the connection, the tool listing and
# each call. Set explicitly, so the bound is dagrun's and not a default that may change.
GEMINI_WAIT = {"timeout": TOOL_TIMEOUT_S * 1000}


def _toml_str(s: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, minus surrogate pairs (so no
    ensure_ascii) and plus DEL, which TOML wants escaped."""
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def dagrun_exe() -> str:
    """The `dagrun` program beside this interpreter (its venv), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "dagrun")
    if os.access(here, os.X_OK):
        return here
    import shutil
    return shutil.which("dagrun") or here


def run_args(client: str, home_root: str, exe: str, side_dir: str,
             environ: dict | None = None) -> RunConfig:
    """For one run of a preset's CLI, what gives it `dagrun --home HOME_ROOT mcp`; files go
    under `side_dir` (the claim). The user's own configuration files are never touched.

    claude: `--mcp-config side_dir/mcp.json`.
    codex: `-c` overrides of `mcp_servers.dagrun` (TOML values) on top of the user's
    ~/.codex/config.toml, the dagrun tools approved for this run (`codex exec` never asks,
    so a tool that needs approval would always be refused) and DAGRUN_GOAL/DAGRUN_TASK
    passed on (Codex gives MCP servers a bare environment), and the server `required`, so
    the run waits for it (CODEX_WAIT).
    gemini: Gemini CLI takes MCP servers only from settings files; the per-run one is a
    Gemini home of its own (GEMINI_CLI_HOME=side_dir/gemini-home) whose settings.json names
    the server with "trust": true (without it `gemini -p` offers none of its tools). That
    home replaces ~/.gemini for the run, so the user's login there is not seen: only auth
    from the environment works (Unavailable otherwise); its auth type is the only thing
    read from the user's settings; the folders the user trusted are read from their
    trustedFolders.json (GEMINI_CLI_TRUSTED_FOLDERS_PATH)."""
    environ = os.environ if environ is None else environ
    if client == "claude":
        path = os.path.join(side_dir, "mcp.json")
        return RunConfig(["--mcp-config", path], {path: client_config("claude", home_root, exe)}, {})
    if client == "codex":
        args = ", ".join(_toml_str(a) for a in ["--home", home_root, "mcp"])
        return RunConfig(["-c", f"mcp_servers.dagrun.command={_toml_str(exe)}",
                          "-c", f"mcp_servers.dagrun.args=[{args}]",
                          "-c", 'mcp_servers.dagrun.default_tools_approval_mode="approve"',
                          "-c", 'mcp_servers.dagrun.env_vars=["DAGRUN_GOAL", "DAGRUN_TASK"]']
                         + [a for k, v in CODEX_WAIT for a in ("-c", f"mcp_servers.dagrun.{k}={v}")], {}, {})
    if client == "gemini":
        gh = os.path.join(side_dir, "gemini-home")
        user = _user_gemini_dir(environ)
        settings = {"security": {"auth": {"selectedType": _gemini_auth(environ, user)}},
                    "mcpServers": {"dagrun": {"command": exe, "args": ["--home", home_root, "mcp"],
                                              "trust": True, **GEMINI_WAIT}}}
        # the folders the user trusted stay trusted (a headless run in an untrusted folder exits 55)
        trusted = environ.get("GEMINI_CLI_TRUSTED_FOLDERS_PATH") or os.path.join(user, "trustedFolders.json")
        return RunConfig([], {os.path.join(gh, ".gemini", "settings.json"): json.dumps(settings, indent=2) + "\n"},
                         {"GEMINI_CLI_HOME": gh, "GEMINI_CLI_TRUSTED_FOLDERS_PATH": trusted})
    raise ValueError(client)


def _user_gemini_dir(environ) -> str:
    """The user's ~/.gemini, as Gemini CLI finds it."""
    base = environ.get("GEMINI_CLI_HOME") or environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(base, ".gemini")


def _gemini_auth(environ, user_dir: str) -> str:
    """The auth type for a per-run Gemini home: the user's (from their settings.json, where
    Gemini CLI keeps it) if it is one that lives in the environment, else the one the
    environment gives; Unavailable when the user's login is in ~/.gemini."""
    path = os.path.join(user_dir, "settings.json")
    try:
        with open(path, "rb") as f:
            user = json.loads(f.read(1 << 20))
        chosen = user["security"]["auth"]["selectedType"]
    except (OSError, ValueError, KeyError, TypeError):
        chosen = None
    if isinstance(chosen, str) and chosen:
        if chosen in GEMINI_ENV_AUTH:
            return chosen
        raise Unavailable(f"{OPTION}: @gemini gets the server through a Gemini home of its own for the run, "
                          f"which cannot see the login of auth type {chosen!r} selected in {path}; "
                          f"use GEMINI_API_KEY (auth type gemini-api-key) or Vertex AI")
    if environ.get("GEMINI_API_KEY"):
        return "gemini-api-key"
    if environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("true", "1"):
        return "vertex-ai"
    raise Unavailable(f"{OPTION}: @gemini gets the server through a Gemini home of its own for the run, "
                      f"so it needs its auth in the environment: set GEMINI_API_KEY (or "
                      f"GOOGLE_GENAI_USE_VERTEXAI=true and the Vertex AI variables)")
