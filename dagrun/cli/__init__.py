"""The command line: typer app, one thin function per command (parse, call one library
function, render, exit). `main()` is the single place where exceptions become one line on
stderr and an exit code; nothing below it prints tracebacks at users.

Heavy modules (the engine, rich, watchdog, filelock) are imported inside the commands that
need them, so the protocol commands a bash loop calls (`claim`, `complete`, `heartbeat`)
start fast.

Help pages: commands are listed in panels (Run, Inspect, Control, ...), every page ends with
examples, and arguments are shown as GOAL / [TASK] in the usage line (helpfmt.py).
Global options (--home, --color) are accepted before or after the command (`hoist_globals`).
"""
from __future__ import annotations

import os
import signal
import sys

import typer

from .. import __version__
from ..errors import ExitCode, one_line, report
from .common import COLOR, Ctx
from .helpfmt import DagrunGroup

app = typer.Typer(
    name="dagrun", cls=DagrunGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
    help="Run a DAG of AI-agent sub-goals in parallel, with all state in plain files.\n\n"
         "Exit codes: 0 ok; 1 goal ended with failed/blocked/cancelled tasks (claim: goal ended); "
         "2 usage or invalid plan; 3 claim: nothing ready yet; 4 refused by the state on disk; "
         "5 file-system error; 130 interrupted.",
    epilog="\b\nExamples:\n"
           "  dagrun init && dagrun run dag.json      # a plan to edit, then run it\n"
           "  dagrun status                           # every goal under ./.dagrun\n"
           "  dagrun status add-auth --home ~/.dagrun # global options go before or after the command\n"
           "  dagrun COMMAND --help                   # each command's options and examples",
)

COLOR_MODES = ("auto", "always", "never")


def _version(value: bool):
    if value:
        print(f"dagrun {__version__}")
        raise typer.Exit(0)


def _color(value: str | None):
    if value is not None and value not in COLOR_MODES:
        raise typer.BadParameter(f"{value!r}: expected auto, always or never")
    COLOR["mode"] = value or "auto"
    return value


@app.callback()
def _root(
    ctx: typer.Context,
    home: str = typer.Option(None, "--home", envvar="DAGRUN_HOME", metavar="DIR",
                             help="State folder (default: ./.dagrun). Before or after the command."),
    color: str = typer.Option(None, "--color", metavar="auto|always|never", callback=_color, is_eager=True,
                              help="Colour in tables and live views (default auto: on a terminal, unless "
                                   "NO_COLOR is set; FORCE_COLOR=1 forces it)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    ctx.obj = Ctx(home, color or "auto")


from . import (cache_cmds, control_cmds, graph_cmds, metrics_cmds, obs_cmds, plan_cmds, protocol_cmds,  # noqa: E402,F401
               resource_cmds,
               read_cmds, run_cmds, setup_cmds, ws_cmds)

GLOBAL_VALUE_OPTS = ("--home", "--color")


def hoist_globals(argv: list[str]) -> list[str]:
    """`dagrun status --home X` == `dagrun --home X status`: global options found after the
    command are moved in front of it (up to a `--`). Nothing else is reordered."""
    i = 0
    while i < len(argv) and argv[i].split("=", 1)[0] in GLOBAL_VALUE_OPTS:
        i += 1 if "=" in argv[i] else 2
    if i >= len(argv):
        return argv
    head, rest, moved = argv[:i], [], []
    j = i
    while j < len(argv):
        a = argv[j]
        if a == "--":
            rest += argv[j:]
            break
        name = a.split("=", 1)[0]
        if j > i and name in GLOBAL_VALUE_OPTS:
            if "=" in a:
                moved.append(a)
            elif j + 1 < len(argv):
                moved += [a, argv[j + 1]]
                j += 1
            else:
                from ..errors import UsageError
                raise UsageError(f"{a} needs a value (see: dagrun --help)")
        else:
            rest.append(a)
        j += 1
    return head + moved + rest


def get_cli(argv: list[str] | None = None):
    """The click command tree of the app (help, completion and the man page use it); with
    argv, of the command it invokes only (startup.py)."""
    from typer.main import get_command

    from .helpfmt import polish
    from .startup import cheap_coercion, command_name, only
    group = polish(get_command(only(app, None if argv is None else command_name(app, argv))))
    cheap_coercion(group)
    return group


def _take_back_sigint() -> None:
    """A process started in the background by a shell without job control (`cmd &` in a
    script, nohup, many CI runners) inherits SIGINT ignored, and Python then installs no
    handler: `kill -INT` would be lost and `dagrun events -f` / `dagrun watch` would follow
    forever. dagrun always ends with 130 on SIGINT, however it was started."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:          # not the main thread (an embedding program): leave it alone
        pass


def main(argv: list[str] | None = None) -> None:
    from typer._click import exceptions as cx

    _take_back_sigint()
    try:
        argv = hoist_globals(sys.argv[1:] if argv is None else argv)
    except Exception as e:  # noqa: BLE001 - a usage error: one line
        sys.exit(report(e))
    completing = bool(os.environ.get("_DAGRUN_COMPLETE"))     # a completion request from the shell script
    cmd = get_cli(None if completing else argv)
    if completing:
        from typer._completion_classes import completion_init
        completion_init()
    try:
        rc = cmd.main(args=argv, prog_name="dagrun", standalone_mode=False)
        code = rc if isinstance(rc, int) else 0
    except cx.NoArgsIsHelpError as e:
        print(e.format_message() if hasattr(e, "format_message") else str(e), file=sys.stderr)
        code = ExitCode.USAGE
    except cx.UsageError as e:
        ctx = getattr(e, "ctx", None)      # the whole path: `dagrun resources set`, not `dagrun set`
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None and ctx.info_name != "dagrun" else \
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
    sinks = sys.modules.get("dagrun.linesink")
    if sinks is not None:
        sinks.finish()             # lines still waiting for a reader of a pipe: a bounded wait
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass
    sys.exit(int(code))


def _err(msg: str) -> None:
    try:
        print(f"dagrun: {one_line(msg)}", file=sys.stderr)
    except OSError:
        pass
