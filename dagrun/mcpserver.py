"""`dagrun mcp`: the Model Context Protocol over stdio, on the official `mcp` SDK (MCPServer).

Another face of the same library functions as the command line -- commands.py (claim,
complete, fail, heartbeat), control.py (cancel, retry), status.py (status, output, logs),
edit.add_tasks (add) -- so the same rules hold: a claim belongs to the process that asked
for it (here: the agent that started this server, our parent), complete/fail/heartbeat are
accepted from the holder or its descendants (this server is one) or by --worker name, ids
are checked. A refusal comes back as an MCP tool error carrying dagrun's one-line message.

Resources: dagrun://goals/{goal}/plan (plan.json), dagrun://goals/{goal}/events
(events.jsonl, the last 256 KiB) and dagrun://goals/{goal}/tasks/{task}/output.

The SDK is imported here only, and this module only by `dagrun mcp` (protocol.cmd_mcp), so
no other command pays for it. An agent CLI waits for this server before its first model
request (Codex with `required`, Gemini CLI always), so start-up is kept to the SDK's own
import: `dagrun mcp` takes the protocol fast path (no typer, no rich), and the library
modules behind the tools are imported on a tool's first call (bench/mcp_startup.py).
"""
from __future__ import annotations

import io
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from .errors import DagrunError, ExitCode
from .store import Home

EVENTS_TAIL = 256 * 1024
LOG_TAIL = 64 * 1024

INSTRUCTIONS = """dagrun runs a DAG of agent tasks (a goal) with all state in files.
Read a goal with `status`, a done task's result with `output`; add sub-goals with `add`
(new tasks may depend on existing ones); a script-style worker loop is `claim` ->
(do the work) -> `complete` or `fail`, with `heartbeat` while it works."""


def _call(fn, *args, **kw):
    """Run a library function; a DagrunError becomes a tool error with its one line."""
    try:
        return fn(*args, **kw)
    except DagrunError as e:
        raise ToolError(str(e)) from None


def build(home: Home) -> MCPServer:
    srv = MCPServer("dagrun", instructions=INSTRUCTIONS, log_level="WARNING")

    @srv.tool(name="status")
    def status_(goal: str | None = None) -> dict:
        """Goals under the home with their counts, or one goal's task table (state, attempt,
        worker, reason, blocked_by per task) and its summary once it ended."""
        from . import status
        if goal is None:
            return {"goals": [_call(status.goal_overview, home, g) for g in home.goals()]}
        from .plan import check_id
        _call(check_id, "goal", goal)
        return _call(status.goal_detail, home, goal)

    @srv.tool()
    def output(goal: str, task: str) -> str:
        """A done task's output (what its agent wrote to stdout)."""
        from . import status
        return _call(status.task_output, home, goal, task).decode("utf-8", "replace")

    @srv.tool()
    def logs(goal: str, task: str, attempt: int | None = None, stdout: bool = False) -> str:
        """A task's stderr (or stdout) of the running or latest attempt (or `attempt`), its
        last 64 KiB."""
        from . import status
        paths, _n, _name = _call(status.log_paths, home, goal, task, attempt=attempt, stdout=stdout)
        for p in paths:
            fd = home.open_task_file(p)
            if fd is not None:
                with os.fdopen(fd, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    f.seek(max(0, size - LOG_TAIL))
                    return f.read().decode("utf-8", "replace")
        return ""

    @srv.tool()
    def claim(goal: str, worker: str | None = None) -> dict:
        """Claim one ready task of the goal for the agent that started this server. Returns
        {"claimed": true, "task", "attempt", "prompt", ...}, or {"claimed": false, "reason"}
        when nothing is ready yet or the goal has ended."""
        from . import commands
        code, facts = _call(commands.claim_external, home, goal, worker=worker)
        if code == ExitCode.OK:
            prompt = home.read_task_file(facts["prompt_file"]) or b""
            return {"claimed": True, **facts, "prompt": prompt.decode("utf-8", "replace")}
        reason = "nothing is ready yet" if code == ExitCode.NOTHING_READY else "the goal has ended"
        return {"claimed": False, "reason": reason}

    @srv.tool()
    def complete(goal: str, task: str, output: str | None = None, worker: str | None = None,
                 force: bool = False) -> dict:
        """Commit a claimed task as done with `output` as its result (default: what was
        written to its stdout_file). Refused unless the caller holds the claim (or `worker`
        names it, or force)."""
        from . import commands
        data = None if output is None else io.BytesIO(output.encode("utf-8"))
        rec = _call(commands.complete, home, goal, task, output="-" if data is not None else None,
                    worker=worker, pid=None, force=force, stdin=data)
        return {"task": task, "state": "done", "duration": rec.get("duration"),
                "output_bytes": rec.get("output_bytes")}

    @srv.tool()
    def fail(goal: str, task: str, reason: str = "", worker: str | None = None, force: bool = False,
             exit_code: int | None = None) -> dict:
        """Commit a claimed task as a failed attempt (retried while the task's retries last)."""
        from . import commands
        rec = _call(commands.fail, home, goal, task, reason=reason, worker=worker, pid=None, force=force,
                    exit_code=exit_code)
        return {"task": task, "outcome": rec.get("outcome"), "final": rec.get("final"),
                "retry_at": rec.get("retry_at")}

    @srv.tool()
    def heartbeat(goal: str, task: str, worker: str | None = None) -> str:
        """Say the claim's holder is alive and working (refused once the task was cancelled)."""
        from . import commands
        _call(commands.heartbeat, home, goal, task, worker=worker, pid=None)
        return "ok"

    @srv.tool()
    def add(goal: str, tasks: list[dict], defaults: dict | None = None, by: str | None = None) -> dict:
        """Add sub-goals to a goal, even while it runs: `tasks` as in dag.json (id, prompt,
        agent, deps, ...); they may depend on existing tasks, never the other way round.
        Validated like a plan (ids, dependencies, cycles)."""
        from .edit import add_tasks
        frag = {"tasks": tasks, **({"defaults": defaults} if defaults else {})}
        who = by or os.environ.get("DAGRUN_TASK") or "mcp"
        added = _call(add_tasks, home, goal, frag, by=who, shown="add")
        return {"goal": goal, "added": added}

    @srv.tool()
    def cancel(goal: str, task: str | None = None, reason: str = "") -> dict:
        """Cancel a task (what depends on it becomes blocked), or every unfinished task of
        the goal; waits until their agents are gone."""
        from . import control
        r = _call(control.cancel, home, goal, task, by="mcp", reason=reason)
        return {"cancelled": r.cancelled, "stopped": r.stopped, "still_running": r.still_running,
                "external": r.external}

    @srv.tool()
    def retry(goal: str, task: str | None = None, cascade: bool = False, force: bool = False) -> dict:
        """Run failed/cancelled tasks (or with force a done one and all below it) again."""
        from . import control
        return {"retried": _call(control.retry, home, goal, task, cascade=cascade, force=force, by="mcp")}

    @srv.resource("dagrun://goals/{goal}/plan", mime_type="application/json")
    def plan_resource(goal: str) -> str:
        """The goal's plan (plan.json, normalised)."""
        _call(home.load_plan, goal)
        return (home.read_task_file(home.plan_path(goal)) or b"").decode("utf-8", "replace")

    @srv.resource("dagrun://goals/{goal}/events", mime_type="application/x-ndjson")
    def events_resource(goal: str) -> str:
        """The goal's events.jsonl (its last 256 KiB, whole lines)."""
        _call(home.load_plan, goal)
        with open(home.events_path(goal), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - EVENTS_TAIL))
            data = f.read()
        if size > EVENTS_TAIL:
            data = data[data.find(b"\n") + 1:]
        return data.decode("utf-8", "replace")

    @srv.resource("dagrun://goals/{goal}/tasks/{task}/output", mime_type="text/plain")
    def output_resource(goal: str, task: str) -> str:
        """A done task's output."""
        from . import status
        return _call(status.task_output, home, goal, task).decode("utf-8", "replace")

    return srv


def serve(home: Home) -> None:
    """Serve over stdin/stdout until the client closes them."""
    build(home).run("stdio")
