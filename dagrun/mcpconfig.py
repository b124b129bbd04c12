"""The MCP client configurations that give an agent CLI `dagrun mcp` with a given home
(`dagrun mcp --print-config CLIENT`). No SDK needed: printing a config must work anywhere."""
from __future__ import annotations

import json

from .store import Home


def client_config(client: str, home: Home, exe: str) -> str:
    """The snippet that gives an agent CLI this server (with this home)."""
    args = ["--home", home.root, "mcp"]
    if client == "claude":        # claude --mcp-config FILE (or the JSON itself)
        return json.dumps({"mcpServers": {"dagrun": {"command": exe, "args": args}}}, indent=2) + "\n"
    if client == "gemini":        # .gemini/settings.json
        return json.dumps({"mcpServers": {"dagrun": {"command": exe, "args": args}}}, indent=2) + "\n"
    if client == "codex":         # ~/.codex/config.toml
        q = ", ".join(json.dumps(a) for a in args)
        return f"[mcp_servers.dagrun]\ncommand = {json.dumps(exe)}\nargs = [{q}]\n"
    raise ValueError(client)


CLIENTS = ("claude", "codex", "gemini")
