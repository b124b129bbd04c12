"""Is an agent's command there? The first word of an `agent` string, looked up the way `sh -c`
will look it up, so a plan that says `claude -p` on a machine (or under cron's short PATH)
without `claude` is named plainly -- by `validate`/`submit` as a warning, and in the failure
reason of an attempt that exited 127 -- instead of a bare `exit code 127`.
Pure apart from the file-system lookups of shutil.which (and, for `@preset` agents, the
home's presets.json)."""
from __future__ import annotations

import os
import shlex
import shutil

from . import lazyre, presets
from .errors import PlanError

_ASSIGN = lazyre.Pattern(r"^[A-Za-z_][A-Za-z0-9_]*=")
# words sh runs without a file on PATH (builtins, keywords); a command behind them is not judged
_SHELL_WORDS = frozenset(
    "! { ( [[ [ . : alias bg break case cd command continue echo eval exec exit export false fg "
    "for getopts hash if jobs kill printf pwd read readonly return set shift test times trap "
    "true type ulimit umask unalias unset wait while until time".split())


def first_command(agent: str) -> str | None:
    """The program `sh -c agent` starts first: leading VAR=value words and `env [-i] [VAR=v]`
    skipped. None when it cannot be told (a shell keyword or builtin, unbalanced quotes)."""
    try:
        words = shlex.split(agent, comments=True)
    except ValueError:
        return None
    i = 0
    while i < len(words) and _ASSIGN.match(words[i]):
        i += 1
    if i < len(words) and os.path.basename(words[i]) == "env":
        i += 1
        while i < len(words) and (words[i].startswith("-") or _ASSIGN.match(words[i])):
            i += 1
    if i >= len(words):
        return None
    w = words[i]
    if w in _SHELL_WORDS or any(c in w for c in "$`*?;|&<>()"):
        return None
    return w


def missing(agent: str, path: str | None = None, cwd: str | None = None) -> str | None:
    """The first word of `agent` when it is not an executable (on `path`, default $PATH; a
    word with a slash relative to `cwd`); None when it is there or cannot be judged."""
    w = first_command(agent)
    if w is None:
        return None
    if "/" in w:
        p = w if os.path.isabs(w) or cwd is None else os.path.join(cwd, w)
        return None if os.access(p, os.X_OK) and not os.path.isdir(p) else w
    search = os.environ.get("PATH", os.defpath) if path is None else path
    return None if shutil.which(w, path=search) else w


def exit_reason(described: str, code: int | None, agent: str, cwd: str | None = None) -> str:
    """An attempt's failure reason: `described` ("exit code 127"), or -- for exit code 127
    with a first word that is not there -- `command not found: claude (PATH=...)`."""
    if code != 127:
        return described
    w = missing(agent, cwd=cwd)
    if w is None:
        return described
    return f"command not found: {w} (PATH={os.environ.get('PATH', '')})"


def _preset_program(agent: str, table: dict) -> str | None:
    """The program an `@preset` agent runs (its table row's command), as a word to look up."""
    try:
        name, _ = presets.split(agent)
    except ValueError:
        return None
    row = table.get(name)
    return shlex.quote(row["command"][0]) if row and row.get("command") else None


def plan_warnings(plan, home: str | None = None) -> list[str]:
    """One line per distinct agent of `plan` whose first word is not there (validate, submit);
    for an `@preset` agent, the program of its preset (the home's presets.json included)."""
    out, seen = [], set()
    table = None
    for t in plan.tasks:
        if not t.agent:               # an approval gate without one: nothing runs
            continue
        key = (t.agent, t.workdir)
        if key in seen:
            continue
        seen.add(key)
        agent = t.agent
        if presets.is_preset(agent):
            try:
                table = table if table is not None else presets.load(home)
            except PlanError:
                continue          # the plan's validation reports a malformed presets.json
            agent = _preset_program(agent, table)
            if agent is None:
                continue
        w = missing(agent, cwd=t.workdir)
        if w is not None:
            users = [u.id for u in plan.tasks if u.agent == t.agent]
            more = f" and {len(users) - 1} more" if len(users) > 1 else ""
            out.append(f"warning: agent {t.agent!r} of task {users[0]!r}{more}: command not found: {w} "
                       f"(PATH={os.environ.get('PATH', '')}); the task will fail unless the worker's PATH has it")
    return out
