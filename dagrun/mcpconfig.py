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
BY_PARSER = {"claude-json": "claude", "codex-jsonl": "codex"}   # presets that can take it per run
#                                                  (Gemini CLI cannot: see docs/integrations.md)
WRITES_FILE = {"claude"}         # run_args needs a file path for these (the claim's mcp.json)


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
        q = ", ".join(_toml_str(a) for a in args)
        return f"[mcp_servers.dagrun]\ncommand = {_toml_str(exe)}\nargs = [{q}]\n"
    raise ValueError(client)


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


def run_args(client: str, home_root: str, exe: str, config_path: str | None) -> tuple[list[str], str | None]:
    """For one run of a preset's CLI: the extra arguments, and the file content to write at
    `config_path` first (None: no file). The user's own config is never touched:
    claude: `--mcp-config FILE`; codex: `-c` overrides of `mcp_servers.dagrun` (TOML values)
    on top of the user's ~/.codex/config.toml, with the dagrun tools approved for this run
    (`codex exec` never asks, so a tool that needs approval would always be refused) and
    the task's DAGRUN_GOAL/DAGRUN_TASK passed on (Codex gives MCP servers a bare environment)."""
    if client == "claude":
        return ["--mcp-config", config_path], client_config("claude", home_root, exe)
    if client == "codex":
        args = ", ".join(_toml_str(a) for a in ["--home", home_root, "mcp"])
        return ["-c", f"mcp_servers.dagrun.command={_toml_str(exe)}",
                "-c", f"mcp_servers.dagrun.args=[{args}]",
                "-c", 'mcp_servers.dagrun.default_tools_approval_mode="approve"',
                "-c", 'mcp_servers.dagrun.env_vars=["DAGRUN_GOAL", "DAGRUN_TASK"]'], None
    raise ValueError(client)
