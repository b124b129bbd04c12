"""claim, complete, fail, heartbeat: the protocol for bash workers that run the agent themselves.

These definitions are the reference for the commands' options and help. A call that
dagrun.protocol's fast parser fully understands never reaches typer (start-up time matters in
a bash loop); both paths run the same dagrun.protocol.cmd_* functions.

Holder identity: a claim belongs to the calling script (the parent of `dagrun claim`, or the
script a subshell was forked from), or to --pid; complete/fail/heartbeat are accepted from
that process or anything it started, or from whoever names the claim's --worker.
"""
from __future__ import annotations

import typer

from . import app
from .common import GOAL_ARG, PROTOCOL, TASK_ARG, examples, home_of

_PID_HELP = ("Pid of the process that holds the claim (default: the calling script; "
             "see the docs, 'Whose claim is it?').")
_WORKER = typer.Option(None, "--worker", metavar="NAME", help="The worker name used for the claim.")
_PID = typer.Option(None, "--pid", metavar="PID", help=_PID_HELP)


@app.command(rich_help_panel=PROTOCOL, epilog=examples(
    'eval "$(dagrun claim --env add-auth)" || exit   # 0 claimed, 3 nothing ready, 1 goal ended',
    'dagrun claim --json add-auth | jq -r .prompt_file',
))
def claim(ctx: typer.Context,
          goal: str = GOAL_ARG,
          worker: str = typer.Option(None, "--worker", metavar="NAME", help="Worker name (default: HOST-PID of the holder)."),
          pid: int = _PID,
          json: bool = typer.Option(False, "--json", help="Print the claim as JSON: task, attempt, task_dir, "
                                    "prompt_file, stdout_file, stderr_file, output_file, lease, agent, workdir ..."),
          env: bool = typer.Option(False, "--env", help="Print `export DAGRUN_TASK=...` lines for eval "
                                   "(DAGRUN_GOAL, _TASK, _ATTEMPT, _PROMPT_FILE, _STDOUT_FILE, _LEASE ...).")):
    """Atomically claim one ready task and print its id. Exit 0 claimed, 3 nothing ready yet,
    1 the goal has ended. prompt.md is rendered before this returns."""
    from ..errors import UsageError
    from ..protocol import cmd_claim

    if json and env:
        raise UsageError("--json and --env exclude each other")
    raise typer.Exit(cmd_claim(home_of(ctx), goal, worker=worker, pid=pid,
                               fmt="json" if json else "env" if env else "id"))


@app.command(rich_help_panel=PROTOCOL, epilog=examples(
    'dagrun complete "$DAGRUN_GOAL" "$DAGRUN_TASK"                  # output: the claim\'s stdout_file',
    'claude -p < "$DAGRUN_PROMPT_FILE" | dagrun complete --output - "$DAGRUN_GOAL" "$DAGRUN_TASK"',
))
def complete(ctx: typer.Context,
             goal: str = GOAL_ARG,
             task: str = TASK_ARG,
             output: str = typer.Option(None, "--output", "-o", metavar="FILE|-",
                                        help="The task's output: a file, or - for stdin "
                                             "(default: what was written to the claim's stdout_file)."),
             worker: str = _WORKER,
             pid: int = _PID,
             force: bool = typer.Option(False, "--force", help="Complete even if somebody else holds the claim "
                                        "(recorded in the done marker and the event).")):
    """Mark a claimed task done with its output; dependents become ready."""
    from ..protocol import cmd_complete

    raise typer.Exit(cmd_complete(home_of(ctx), goal, task, output=output, worker=worker, pid=pid, force=force))


@app.command(rich_help_panel=PROTOCOL, epilog=examples(
    'dagrun fail "$DAGRUN_GOAL" "$DAGRUN_TASK" --exit-code $? --reason "agent failed"',
))
def fail(ctx: typer.Context,
         goal: str = GOAL_ARG,
         task: str = TASK_ARG,
         reason: str = typer.Option("", "--reason", metavar="TEXT", help="Why (shown by status, kept in the attempt record)."),
         exit_code: int = typer.Option(None, "--exit-code", metavar="N", help="The agent's exit code, for the record."),
         worker: str = _WORKER,
         pid: int = _PID,
         force: bool = typer.Option(False, "--force", help="Fail even if somebody else holds the claim "
                                    "(recorded in the attempt record and the event).")):
    """Mark a claimed task failed (it is retried while its retries last)."""
    from ..protocol import cmd_fail

    raise typer.Exit(cmd_fail(home_of(ctx), goal, task, reason=reason, exit_code=exit_code, worker=worker,
                              pid=pid, force=force))


@app.command(rich_help_panel=PROTOCOL, epilog=examples(
    'dagrun heartbeat "$DAGRUN_GOAL" "$DAGRUN_TASK" || kill "$agent"   # 4: stop working on it',
))
def heartbeat(ctx: typer.Context,
              goal: str = GOAL_ARG,
              task: str = TASK_ARG,
              worker: str = _WORKER,
              pid: int = _PID):
    """Say the holder is alive and working (keeps a cross-host lease; resets stall_timeout).
    Exit 4 when the task was cancelled or the claim is gone: stop working on it."""
    from ..protocol import cmd_heartbeat

    raise typer.Exit(cmd_heartbeat(home_of(ctx), goal, task, worker=worker, pid=pid))


@app.command(rich_help_panel=PROTOCOL, epilog=examples(
    'dagrun approve release merge --note "checked the diff; go"',
    'dagrun status release     # gates waiting on a person: awaiting_approval',
))
def approve(ctx: typer.Context,
            goal: str = GOAL_ARG,
            task: str = TASK_ARG,
            note: str = typer.Option("", "--note", metavar="TEXT", help="Becomes the task's output "
                                     "(what its dependents see).")):
    """Approve an approval gate that awaits a person: it is done and its dependents run.
    Who (user@host) and when are recorded in its done marker and event."""
    from ..protocol import cmd_decide

    raise typer.Exit(cmd_decide(home_of(ctx), goal, task, approve=True, text=note))


@app.command(rich_help_panel=PROTOCOL, epilog=examples(
    'dagrun reject release merge --reason "tests are red on staging"',
))
def reject(ctx: typer.Context,
           goal: str = GOAL_ARG,
           task: str = TASK_ARG,
           reason: str = typer.Option(..., "--reason", metavar="TEXT", help="Why (kept in the failed marker).")):
    """Reject an approval gate that awaits a person: it fails (no retry) and its dependents
    are blocked, as after any failure; `dagrun retry GOAL TASK` asks again."""
    from ..errors import UsageError
    from ..protocol import cmd_decide

    if not reason.strip():
        raise UsageError("--reason must not be empty")
    raise typer.Exit(cmd_decide(home_of(ctx), goal, task, approve=False, text=reason))


@app.command(rich_help_panel=PROTOCOL, epilog=examples(
    "dagrun mcp                               # serve MCP on stdin/stdout (an agent CLI starts it)",
    "dagrun mcp --print-config claude > mcp.json && claude --mcp-config mcp.json -p '...'",
    "dagrun mcp --print-config codex >> ~/.codex/config.toml",
))
def mcp(ctx: typer.Context,
        print_config: str = typer.Option(None, "--print-config", metavar="CLIENT",
                                         help="Print the MCP configuration that runs this server with this "
                                              "home for CLIENT (claude, codex, gemini) and exit.")):
    """Serve the Model Context Protocol over stdio: tools status, output, logs, claim,
    complete, fail, heartbeat, add, cancel, retry; resources for a goal's plan, events and
    task outputs. Same rules as the protocol commands. Needs the `mcp` SDK
    (pip install 'dagrun[mcp]')."""
    import os
    import shutil
    import sys

    from ..errors import UsageError

    home = home_of(ctx)
    if print_config is not None:
        from ..mcpconfig import CLIENTS as clients, client_config
        if print_config not in clients:
            raise UsageError(f"--print-config: unknown client {print_config!r} (one of: {', '.join(clients)})")
        exe = shutil.which("dagrun") or os.path.join(os.path.dirname(sys.executable), "dagrun")
        exe = os.path.abspath(sys.argv[0]) if os.path.basename(sys.argv[0]) == "dagrun" else exe
        sys.stdout.write(client_config(print_config, home, exe))
        return
    from ..protocol import cmd_mcp

    raise typer.Exit(cmd_mcp(home))
