"""The command line: typer app, one thin function per command (parse, call one library
function, render, exit). `main()` is the single place where exceptions become one line on
stderr and an exit code; nothing below it prints tracebacks at users.

Heavy modules (the engine, rich, watchdog, filelock) are imported inside the commands that
need them, so the protocol commands a bash loop calls (`claim`, `complete`, `heartbeat`)
start fast.
"""
from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import ExitCode, report
from .common import Ctx

app = typer.Typer(
    name="dagrun", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
    help="Run a DAG of AI-agent sub-goals in parallel, with all state in plain files.\n\n"
         "Exit codes: 0 ok; 1 goal ended with failed/blocked/cancelled tasks (claim: goal ended); "
         "2 usage or invalid plan; 3 claim: nothing ready yet; 4 refused by the state on disk; "
         "5 file-system error; 130 interrupted.",
)


def _version(value: bool):
    if value:
        print(f"dagrun {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    home: str = typer.Option(None, "--home", envvar="DAGRUN_HOME", metavar="DIR",
                             help="State folder (default: ./.dagrun)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    ctx.obj = Ctx(home)


from . import (control_cmds, graph_cmds, metrics_cmds, obs_cmds, plan_cmds, protocol_cmds,  # noqa: E402,F401
               read_cmds, run_cmds, ws_cmds)


def main(argv: list[str] | None = None) -> None:
    from typer._click import exceptions as cx
    from typer.main import get_command

    argv = sys.argv[1:] if argv is None else argv
    cmd = get_command(app)
    try:
        rc = cmd.main(args=argv, prog_name="dagrun", standalone_mode=False)
        code = rc if isinstance(rc, int) else 0
    except cx.NoArgsIsHelpError as e:
        print(e.format_message() if hasattr(e, "format_message") else str(e), file=sys.stderr)
        code = ExitCode.USAGE
    except cx.UsageError as e:
        hint = f" (see: dagrun {e.ctx.info_name} --help)" if getattr(e, "ctx", None) and e.ctx.info_name != "dagrun" else \
            " (see: dagrun --help)"
        _err(e.format_message().replace("\n", " ") + hint)
        code = ExitCode.USAGE
    except cx.ClickException as e:
        _err(e.format_message().replace("\n", " "))
        code = ExitCode.USAGE
    except typer.Abort:
        _err("interrupted")
        code = ExitCode.INTERRUPTED
    except typer.Exit as e:
        code = e.exit_code
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        code = report(e)
    except KeyboardInterrupt as e:
        code = report(e)
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass
    sys.exit(int(code))


def _err(msg: str) -> None:
    try:
        print(f"dagrun: {msg}", file=sys.stderr)
    except OSError:
        pass
