"""Agent presets: `"agent": "@claude --model sonnet"` names a row of one data table.

The table ships as dagrun/presets.json; `$DAGRUN_HOME/presets.json` extends or overrides it
field by field (point `claude` at another binary, add a preset of your own). A preset is
turned into a command line here (`shell_command`), but adapted *inside the agent process*
by `python -m dagrun.agentrun NAME ARGS...` (see agentrun.py): it runs the real CLI, keeps
its raw stream, prints only the answer, writes usage lines and turns the tool's hidden
failures into a non-zero exit. So any runner that can run a shell command (local, Slurm,
Ray) gets presets for free, and the engine only ever sees a plain command.

Import-light on purpose (json, os, re, shlex): agentrun imports it on every agent start.
"""
from __future__ import annotations

import json
import os
import shlex
import sys

from . import lazyre
from . import mcpconfig
from .errors import PlanError

PACKAGE_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets.json")
HOME_TABLE = "presets.json"          # under $DAGRUN_HOME
NAME_RE = lazyre.Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PARSERS = ("claude-json", "codex-jsonl", "gemini-json", "aider-text", "llm-text", "text")
FIELDS = {"command", "args", "parser", "model_flags", "env", "doc"}


def is_preset(agent: str) -> bool:
    return agent.lstrip().startswith("@")


def split(agent: str) -> tuple[str, list[str]]:
    """'@claude --model sonnet' -> ('claude', ['--model', 'sonnet']); ValueError if malformed."""
    try:
        words = shlex.split(agent.strip())
    except ValueError as e:
        raise ValueError(f"cannot split {agent!r} into words: {e}") from None
    if not words or not words[0].startswith("@") or not NAME_RE.fullmatch(words[0][1:]):
        raise ValueError(f"{agent!r} does not start with a preset name (@claude, @codex, ...)")
    return words[0][1:], words[1:]


def home_root(home: str | None = None) -> str:
    return os.path.abspath(home or os.environ.get("DAGRUN_HOME") or ".dagrun")


def load(home: str | None = None) -> dict[str, dict]:
    """The package table merged with the home's presets.json. Raises PlanError (one line)
    when the home's file is malformed."""
    with open(PACKAGE_TABLE, "rb") as f:
        table = json.loads(f.read())
    path = os.path.join(home_root(home), HOME_TABLE)
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        return table
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}") from None
    try:
        user = json.loads(raw)
    except ValueError as e:
        raise PlanError(f"{path}: malformed JSON: {e}") from None
    if not isinstance(user, dict):
        raise PlanError(f"{path}: expected an object of presets, e.g. {{\"claude\": {{\"command\": [\"/opt/bin/claude\", \"-p\"]}}}}")
    for name, row in user.items():
        where = f"{path}: preset {name!r}"
        if not NAME_RE.fullmatch(name):
            raise PlanError(f"{where}: invalid name (use 1-64 of A-Za-z0-9._- starting with a letter or digit)")
        if not isinstance(row, dict):
            raise PlanError(f"{where}: expected an object")
        unknown = sorted(set(row) - FIELDS)
        if unknown:
            raise PlanError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(FIELDS))})")
        merged = {**table.get(name, {"args": [], "parser": "text", "model_flags": []}), **row}
        _check_row(where, merged)
        table[name] = merged
    return table


def _check_row(where: str, row: dict) -> None:
    def strings(k, nonempty=False):
        v = row.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or (nonempty and not v):
            raise PlanError(f"{where}: {k!r} must be a{' non-empty' if nonempty else 'n'} array of strings")
    if "command" not in row:
        raise PlanError(f"{where}: a new preset needs \"command\" (an array: the program and its fixed arguments)")
    strings("command", nonempty=True)
    strings("args")
    strings("model_flags")
    if row.get("parser", "text") not in PARSERS:
        raise PlanError(f"{where}: unknown parser {row.get('parser')!r} (known: {', '.join(PARSERS)})")
    env = row.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise PlanError(f"{where}: 'env' must be an object of strings")


def check(agent: str, table: dict[str, dict]) -> str | None:
    """None if `agent` is fine, else what is wrong (for the plan validator)."""
    if not is_preset(agent):
        return None
    try:
        name, args = split(agent)
    except ValueError as e:
        return str(e)
    if name not in table:
        return f"unknown agent preset @{name} (known: {', '.join('@' + n for n in sorted(table))})"
    if mcpconfig.OPTION in args and table[name].get("parser", "text") not in mcpconfig.BY_PARSER:
        return (f"{mcpconfig.OPTION}: preset @{name} cannot be given the dagrun MCP server per run "
                f"(only {', '.join('@' + c for c in mcpconfig.BY_PARSER.values())} and presets with their parser)")
    return None


def shell_command(agent: str, check: tuple[str, ...] | list[str] | None = None, check_timeout: float = 600.0,
                  python: str | None = None) -> str:
    """What the runner runs for a task's agent: a plain command without a check unchanged;
    a preset, or any agent with an acceptance check, becomes the adapter's command line (the
    preset is looked up when the adapter starts, in the agent's own environment, from
    $DAGRUN_HOME/presets.json and the package table; the check runs after the agent, inside
    the same process tree)."""
    if not is_preset(agent) and not check:
        return agent
    # -I: no cwd on sys.path (a `dagrun/` folder in the workdir must not shadow us), no user site
    words = [python or sys.executable, "-I", "-m", "dagrun.agentrun"]
    if check:
        words += ["--check", json.dumps(list(check)), "--check-timeout", f"{float(check_timeout):g}"]
    if is_preset(agent):
        name, args = split(agent)
        words += [name, *args]
    else:
        words += ["--sh", agent]
    return "exec " + " ".join(shlex.quote(w) for w in words)
