"""init (a starter dag.json; the systemd units, crontab and lobster.sh with this dagrun's
path), completion (typer's shell-completion scripts) and man (the man page, generated from
the same command definitions as --help)."""
from __future__ import annotations

import os
import sys

import typer

from . import app
from .common import SETUP, examples, home_of

SHELLS = ("bash", "zsh", "fish")


def installed_exe() -> str:
    """The absolute path of the running `dagrun` command (what a unit or crontab must call)."""
    me = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(me) == "dagrun" and os.access(me, os.X_OK):
        return me
    cand = os.path.join(os.path.dirname(sys.executable), "dagrun")
    if os.access(cand, os.X_OK):
        return cand
    import shutil
    return shutil.which("dagrun") or "dagrun"


@app.command(rich_help_panel=SETUP, epilog=examples(
    "dagrun init                      # ./dag.json to edit ($schema: dagrun schema --path)",
    "dagrun init --agent 'codex exec' --goal refactor",
    "dagrun init --example add-auth && dagrun run add-auth/dag.json   # offline, a fake agent",
    "dagrun init --systemd --workdir ~/src --dir ~/.config/systemd/user",
    "dagrun init --cron && crontab -l | cat - crontab | crontab -",
    "dagrun init --lobster && ./lobster.sh GOAL"))
def init(ctx: typer.Context,
         systemd: bool = typer.Option(False, "--systemd", help="Write the systemd user units (daemon; timer + "
                                      "oneshot) with this dagrun's path in ExecStart."),
         cron: bool = typer.Option(False, "--cron", help="Write `crontab` (a worker every minute) with this "
                                   "dagrun's path."),
         lobster: bool = typer.Option(False, "--lobster", help="Write lobster.sh (a bash-protocol worker) "
                                      "calling this dagrun."),
         example: str = typer.Option(None, "--example", metavar="NAME", help="Copy a bundled example goal "
                                     "(add-auth, minimal: a fake agent, no network) to DIR/NAME/."),
         folder: str = typer.Option(".", "--dir", "-d", metavar="DIR", help="Where to write (default: here)."),
         goal: str = typer.Option(None, "--goal", metavar="GOAL", help="Goal id of the starter plan "
                                  "(default: the folder's name)."),
         agent: str = typer.Option("claude -p", "--agent", metavar="CMD", help="The starter plan's agent."),
         workdir: list[str] = typer.Option(None, "--workdir", metavar="DIR",
                                           help="With --systemd: a folder the agents may write (repeatable); "
                                                "ReadWritePaths becomes the dagrun home plus these."),
         force: bool = typer.Option(False, "--force", help="Overwrite files that exist.")):
    """Start here: write a starter dag.json, or (--systemd, --cron, --lobster) the files that
    run workers unattended, with the real path of this dagrun filled in. Prints what it wrote."""
    from .. import scaffold

    folder = scaffold.check_folder(os.path.expanduser(folder))
    exe = installed_exe()
    home = os.path.abspath(str(home_of(ctx).root)) if ctx.find_root().params.get("home") else None
    wrote: list[str] = []
    if systemd:
        wrote += scaffold.systemd_units(folder, exe=exe, home=home,
                                        workdirs=[os.path.abspath(os.path.expanduser(w)) for w in workdir or []],
                                        force=force)
    if cron:
        wrote += scaffold.crontab(folder, exe=exe, home=home, force=force)
    if lobster:
        wrote += scaffold.lobster(folder, exe=exe, force=force)
    if example:
        wrote += scaffold.example(folder, example, force=force)
    if not (systemd or cron or lobster or example):
        wrote += scaffold.init_plan(folder, goal=goal, agent=agent, force=force)
    for p in wrote:
        print(p)
    nxt = []
    if systemd:
        unit_dir = os.path.expanduser("~/.config/systemd/user")
        cp = "" if os.path.realpath(folder) == os.path.realpath(unit_dir) else \
            f"mkdir -p {unit_dir} && cp {folder}/dagrun-worker*.* {unit_dir}/ && "
        nxt.append(f"{cp}systemctl --user daemon-reload && systemctl --user enable --now dagrun-worker "
                   "(or the timer: dagrun-worker-idle.timer)")
    if cron:
        nxt.append(f"(crontab -l 2>/dev/null; cat {folder}/crontab) | crontab -")
    if lobster:
        nxt.append(f"{folder}/lobster.sh GOAL")
    if example:
        nxt.append(f"dagrun run {os.path.join(folder, example, 'dag.json')}")
    if not (systemd or cron or lobster or example):
        nxt.append(f"dagrun validate {wrote[0]} && dagrun run {wrote[0]}")
    for line in nxt:
        print(f"dagrun: next: {line}", file=sys.stderr)


@app.command(rich_help_panel=SETUP, epilog=examples(
    'eval "$(dagrun completion bash)"                     # this shell; add it to ~/.bashrc',
    "dagrun completion zsh > ~/.zfunc/_dagrun             # fpath+=(~/.zfunc) in ~/.zshrc",
    "dagrun completion fish > ~/.config/fish/completions/dagrun.fish"))
def completion(shell: str = typer.Argument(..., metavar="SHELL", help="bash, zsh or fish.")):
    """Print the shell-completion script (commands, options, goal and task ids of the home)."""
    from typer._completion_shared import get_completion_script

    from ..errors import UsageError
    if shell not in SHELLS:
        raise UsageError(f"completion {shell!r}: expected bash, zsh or fish")
    print(get_completion_script(prog_name="dagrun", complete_var="_DAGRUN_COMPLETE", shell=shell))


@app.command(rich_help_panel=SETUP, epilog=examples(
    "dagrun man | man -l -",
    "dagrun man > ~/.local/share/man/man1/dagrun.1     # then: man dagrun"))
def man():
    """Print the dagrun(1) man page (roff), generated from the same definitions as --help."""
    from . import get_cli
    from .helpfmt import render_man

    sys.stdout.write(render_man(get_cli()))
