"""claim, complete, fail, heartbeat: the protocol for bash workers that run the agent themselves.

Holder identity: a claim records the pid of the calling script (the parent of `dagrun claim`,
or --pid) and a worker name; complete/fail/heartbeat must come from the same script (same
parent pid) or name the same --worker. Pass `--pid $$` when calling from a pipeline or
subshell, whose parent is a short-lived copy of the shell.
"""
from __future__ import annotations

import sys

import typer

from . import app
from .common import home_of, print_json

_PID = typer.Option(None, "--pid", help="Pid of the process that holds the claim (default: the calling shell).")


@app.command()
def claim(ctx: typer.Context,
          goal: str = typer.Argument(..., help="Goal id."),
          worker: str = typer.Option(None, "--worker", help="Worker name (default: HOST-PID of the caller)."),
          pid: int = _PID,
          json: bool = typer.Option(False, "--json", help="Print goal, task, attempt, task_dir, prompt_file, output_file.")):
    """Atomically claim one ready task and print its id. Exit 0 claimed, 3 nothing ready yet,
    1 the goal has ended. prompt.md is rendered before this returns."""
    import os
    import socket

    from ..ops import claim_external
    from ..plan import check_id

    check_id("goal", goal)
    home = home_of(ctx)
    me = worker or f"{socket.gethostname()}-{pid or os.getppid()}"
    rc, c = claim_external(home, goal, worker=me, pid=pid)
    if c is None:
        if json:
            print_json({"goal": goal, "task": None, "exit": int(rc)})
        raise typer.Exit(rc)
    if json:
        print_json({"goal": goal, "task": c.task, "attempt": c.attempt, "worker": me,
                    "task_dir": home.task_dir(goal, c.task), "prompt_file": home.prompt_path(goal, c.task),
                    "output_file": home.attempt_path(goal, c.task, c.attempt, "out"),
                    "stderr_file": home.attempt_path(goal, c.task, c.attempt, "err")})
    else:
        print(c.task)


@app.command()
def complete(ctx: typer.Context,
             goal: str = typer.Argument(..., help="Goal id."),
             task: str = typer.Argument(..., help="Task id."),
             output: str = typer.Option(None, "--output", "-o", metavar="FILE|-",
                                        help="The task's output (default: what was written to the claim's output_file)."),
             worker: str = typer.Option(None, "--worker", help="The worker name used for the claim."),
             pid: int = _PID,
             force: bool = typer.Option(False, "--force", help="Complete even if somebody else holds the claim (logged).")):
    """Mark a claimed task done with its output; dependents become ready."""
    from ..ops import complete as do_complete

    do_complete(home_of(ctx), goal, task, output=output, worker=worker, pid=pid, force=force, stdin=sys.stdin.buffer)


@app.command()
def fail(ctx: typer.Context,
         goal: str = typer.Argument(..., help="Goal id."),
         task: str = typer.Argument(..., help="Task id."),
         reason: str = typer.Option("", "--reason", help="Why (shown by status, kept in the attempt record)."),
         exit_code: int = typer.Option(None, "--exit-code", help="The agent's exit code, for the record."),
         worker: str = typer.Option(None, "--worker", help="The worker name used for the claim."),
         pid: int = _PID,
         force: bool = typer.Option(False, "--force", help="Fail even if somebody else holds the claim (logged).")):
    """Mark a claimed task failed (it is retried while its retries last)."""
    from ..ops import fail as do_fail

    rec = do_fail(home_of(ctx), goal, task, reason=reason, worker=worker, pid=pid, force=force, exit_code=exit_code)
    if not rec["final"]:
        from ..store import now_iso
        print(f"dagrun: {goal}/{task} will be retried (attempt {rec['attempt'] + 1}) after "
              f"{now_iso(rec['retry_at'])[11:19]}", file=sys.stderr)


@app.command()
def heartbeat(ctx: typer.Context,
              goal: str = typer.Argument(..., help="Goal id."),
              task: str = typer.Argument(..., help="Task id."),
              worker: str = typer.Option(None, "--worker", help="The worker name used for the claim."),
              pid: int = _PID):
    """Say the holder is alive and working (keeps a cross-host lease; resets stall_timeout).
    Exit 4 when the task was cancelled or the claim is gone: stop working on it."""
    from ..ops import heartbeat as do_heartbeat

    do_heartbeat(home_of(ctx), goal, task, worker=worker, pid=pid)
