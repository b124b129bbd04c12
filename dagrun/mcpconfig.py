"""The MCP client configurations that give an agent CLI `dagrun mcp` with a given home
(`dagrun mcp --print-config CLIENT`, and the preset option `--dagrun-mcp` of agentrun.py).
No SDK needed: printing a config must work anywhere. Nothing secret goes in: the program,
`--home`, `mcp`."""
from __future__ import annotations

import json
import os
import sys

OPTION = "--dagrun-mcp"          # the preset option (`"agent": "@claude --dagrun-mcp"`)
CLIENTS = ("claude", "codex", "gemini")
BY_PARSER = {"claude-json": "claude"}   # presets that can take it per run (see docs/integrations.md)


def _root(home) -> str:
    return home if isinstance(home, str) else home.root


def client_config(client: str, home, exe: str) -> str:
    """The snippet that gives an agent CLI this server (with this home)."""
    args = ["--home", _root(home), "mcp"]
    if client == "claude":        # claude --mcp-config FILE (or the JSON itself)
        return json.dumps({"mcpServers": {"dagrun": {"command": exe, "args": args}}}, indent=2) + "\n"
    if client == "gemini":        # .gemini/settings.json
        return json.dumps({"mcpServers": {"dagrun": {"command": exe, "args": args}}}, indent=2) + "\n"
    if client == "codex":         # ~/.codex/config.toml
        q = ", ".join(json.dumps(a) for a in args)
        return f"[mcp_servers.dagrun]\ncommand = {json.dumps(exe)}\nargs = [{q}]\n"
    raise ValueError(client)


def dagrun_exe() -> str:
    """The `dagrun` program beside this interpreter (its venv), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "dagrun")
    if os.access(here, os.X_OK):
        return here
    import shutil
    return shutil.which("dagrun") or here


def run_args(client: str, home_root: str, exe: str, config_path: str) -> tuple[list[str], str | None]:
    """For one run of a preset's CLI: the extra arguments, and the file content to write at
    `config_path` first (None: no file). claude: `--mcp-config FILE` -- the user's own
    config is not touched."""
    if client == "claude":
        return ["--mcp-config", config_path], client_config("claude", home_root, exe)
    raise ValueError(client)
