"""Render the prompt an agent gets on stdin. Pure: text in, text out.

The prompt and the outputs are only ever written to prompt.md and handed to the agent as
its stdin; they never become part of a shell command line, so `$(...)`, backticks and `;`
inside them are inert text.
"""
from __future__ import annotations

from dataclasses import dataclass

from .records import frozen_methods, plain_methods

_UPSTREAM = ("id", "state", "data", "size", "path", "soft", "changes", "limit")


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Upstream:
    """A dependency as a prompt shows it: its state and (the head of) its output."""
    id: str
    state: str              # done | failed | cancelled | blocked
    data: bytes | None      # the first `limit`+1 bytes of its output (None when unavailable)
    size: int               # size of the whole output in bytes
    path: str               # where the whole output is
    soft: bool = False
    changes: tuple[str, str] | None = None   # (diffstat, patch path) of its workspace commits
    limit: int | None = None        # its own share of the budget (a fan-out instance), else `limit`

    def __init__(self, id, state, data, size, path, soft=False, changes=None, limit=None):
        # one update of the instance's dict, not eight object.__setattr__ calls: a prompt
        # builds one of these per upstream output, on the engine's start path
        self.__dict__.update(id=id, state=state, data=data, size=size, path=path, soft=soft,
                             changes=changes, limit=limit)

    __repr__, __eq__ = plain_methods(*_UPSTREAM)
    __setattr__, __delattr__, __hash__ = frozen_methods(*_UPSTREAM)


def render(prompt: str, upstream: list[Upstream], limit: int, previous_failure: str | None = None,
           workspace: str | None = None) -> str:
    parts = [prompt.rstrip("\n"), ""]
    if workspace:
        parts += ["---", "", workspace.rstrip("\n"), ""]
    if upstream:
        parts += ["---", "", "# Outputs of the tasks this one depends on", ""]
    for u in upstream:
        if u.data is None:
            why = {"blocked": "it was blocked by a failed dependency",
                   "skipped": "it was skipped"}.get(u.state, f"it {u.state}")
            parts += [f"## Output of {u.id} (unavailable: {why})", ""]
            continue
        parts += [f"## Output of {u.id}", ""]
        lim = limit if u.limit is None else u.limit
        text = _clip(u.data, lim)
        parts.append(text.rstrip("\n"))
        if u.size > lim:
            parts.append(f"[... truncated: the first {lim} of {u.size} bytes are shown; "
                         f"the whole output is in {u.path}]")
        parts.append("")
        if u.changes is not None:
            stat, patch = u.changes
            parts += [f"Files {u.id} changed in the workspace (the whole patch is in {patch}):", "", "```",
                      stat.rstrip("\n"), "```", ""]
    if previous_failure:
        parts += ["---", "", previous_failure.rstrip("\n"), ""]
    return "\n".join(parts)


def _clip(data: bytes, limit: int) -> str:
    """At most `limit` bytes, cut on a character boundary; invalid UTF-8 shown as U+FFFD."""
    if not data:                    # (an empty output: nothing to cut or decode)
        return ""
    if len(data) > limit:
        return data[:limit].decode("utf-8", "ignore") if _is_text(data[:limit]) else data[:limit].decode("utf-8", "replace")
    return data.decode("utf-8", "replace")


def _is_text(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        return e.start >= len(b) - 3   # only a character cut in half at the end


def failure_note(attempt: int, outcome: str, exit_code: int | None, stderr_tail: str, timeout: float | None,
                 check: str | None = None) -> str:
    """The `retry_context: "error"` block appended to the next attempt's prompt."""
    if outcome == "check_failed":
        lines = [f"# Previous attempt {attempt} failed", "",
                 f"It finished, but its result failed the acceptance check `{check or 'check'}`."]
        if stderr_tail.strip():
            lines += ["The last lines of the check's output:", "", "```", stderr_tail.rstrip("\n"), "```"]
        return "\n".join(lines)
    if outcome == "timeout":
        what = f"was killed after its timeout of {timeout:g}s" if timeout else "timed out"
    elif outcome == "stalled":
        what = "was killed because it stalled (no output and no heartbeat)"
    elif outcome == "output_limit":
        what = "was killed because its output exceeded max_output"
    else:
        what = f"exited with code {exit_code}"
    lines = [f"# Previous attempt {attempt} failed", "", f"It {what}."]
    if stderr_tail.strip():
        lines += ["The last lines of its stderr:", "", "```", stderr_tail.rstrip("\n"), "```"]
    return "\n".join(lines)
