"""Plain help pages in one style: commands listed by panel (each command's rich_help_panel),
arguments shown as GOAL / [TASK] (typer's plain formatter writes {goal} [task] and `<str>`),
and the same tree rendered as a man page (`dagrun man`)."""
from __future__ import annotations

from typer.core import TyperArgument, TyperGroup

from .common import PANELS


# the order of the commands within their panels (help, man page)
ORDER = ("run", "worker", "status", "watch", "output", "logs", "events", "graph", "report", "metrics",
         "cancel", "retry", "validate", "submit", "diff", "schema", "claim", "complete", "fail", "heartbeat",
         "init", "completion", "man")


class DagrunGroup(TyperGroup):
    def list_commands(self, ctx):
        order = {p: i for i, p in enumerate(PANELS)}
        return sorted(self.commands, key=lambda n: (order.get(getattr(self.commands[n], "rich_help_panel", None),
                                                              len(order)), ORDER.index(n) if n in ORDER else 99, n))

    def format_commands(self, ctx, formatter) -> None:
        by_panel: dict[str, list] = {}
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            by_panel.setdefault(getattr(cmd, "rich_help_panel", None) or "Other commands", []).append((name, cmd))
        if not by_panel:
            return
        width = max(len(n) for rows in by_panel.values() for n, _ in rows)
        limit = formatter.width - 6 - width
        for panel, rows in by_panel.items():
            with formatter.section(panel):
                formatter.write_dl([(n.ljust(width), c.get_short_help_str(limit)) for n, c in rows], col_max=width + 2)


class DagrunArgument(TyperArgument):
    """GOAL when required, [GOAL] when not; no `<str>` type label."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw.upper() if self.metavar is None else self.metavar
        return name if self.required else f"[{name}]"

    def _rich_display_name(self) -> str:
        return self._usage_display_name()

    def display_type(self, ctx) -> str:
        return ""

    def display_type_rich(self, ctx):
        return None


def polish(group):
    """Give every argument of the command tree the house style (called once per process)."""
    for cmd in group.commands.values():
        for p in cmd.params:
            if isinstance(p, TyperArgument) and not isinstance(p, DagrunArgument):
                p.__class__ = DagrunArgument
    return group


# ---------------------------------------------------------------------------------- man page
def _roff(text: str) -> str:
    out = []
    for line in text.replace("\\", "\\e").splitlines():
        line = line.replace("-", "\\-")
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line)
    return "\n".join(out)


def _para(text: str) -> str:
    """Help text (click style: \\b marks a paragraph kept as written) as roff paragraphs."""
    out = []
    for block in text.strip().split("\n\n"):
        if block.startswith("\b"):
            out.append(".PP\n.nf\n" + _roff(block[1:].strip("\n")) + "\n.fi")
        else:
            out.append(".PP\n" + _roff(" ".join(block.split())))
    return "\n".join(out)


def render_man(group) -> str:
    import datetime as dt

    from .. import __version__
    from ..store import now_iso
    from typer._click import Context

    date = now_iso()[:10] if not __import__("os").environ.get("SOURCE_DATE_EPOCH") else \
        dt.datetime.fromtimestamp(int(__import__("os").environ["SOURCE_DATE_EPOCH"]), dt.timezone.utc).strftime("%Y-%m-%d")
    ctx = Context(group, info_name="dagrun")
    lines = [f'.TH DAGRUN 1 "{date}" "dagrun {__version__}" "User Commands"',
             ".SH NAME", "dagrun \\- run a DAG of AI\\-agent sub\\-goals in parallel, state in plain files",
             ".SH SYNOPSIS", ".B dagrun", "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".SH DESCRIPTION", _para(group.help or ""), ".SH GLOBAL OPTIONS"]
    for p in group.params:
        rec = p.get_help_record(ctx)
        if rec:
            lines += [".TP", f"\\fB{_roff(rec[0])}\\fR", _roff(rec[1])]
    by_panel: dict[str, list] = {}
    for name in group.list_commands(ctx):
        cmd = group.commands[name]
        if not cmd.hidden:
            by_panel.setdefault(getattr(cmd, "rich_help_panel", None) or "Other commands", []).append((name, cmd))
    lines.append(".SH COMMANDS")
    for panel, cmds in by_panel.items():
        lines.append(f".SS {_roff(panel)}")
        for name, cmd in cmds:
            sub = Context(cmd, info_name=name, parent=ctx)
            usage = " ".join(cmd.collect_usage_pieces(sub))
            lines += [".TP", f"\\fBdagrun {name}\\fR {_roff(usage)}", _roff(" ".join((cmd.help or "").split()))]
            lines.append(".RS")
            for p in cmd.params:
                rec = p.get_help_record(sub)
                if rec and rec[0] not in ("-h, --help",):
                    lines += [".TP", f"\\fB{_roff(rec[0])}\\fR", _roff(rec[1])]
            if cmd.epilog:
                lines.append(_para(cmd.epilog))
            lines.append(".RE")
    lines += [".SH ENVIRONMENT", ".TP", "\\fBDAGRUN_HOME\\fR", "The state folder (default ./.dagrun).",
              ".TP", "\\fBNO_COLOR\\fR, \\fBFORCE_COLOR\\fR", "Turn colour off / on (see \\-\\-color).",
              ".TP", "\\fBDAGRUN_DEBUG\\fR", "Set to 1 for a traceback on an internal error.",
              ".SH EXIT STATUS",
              "0 ok; 1 the goal ended with failed, blocked or cancelled tasks (claim: the goal ended); "
              "2 usage error or invalid plan; 3 claim: nothing ready yet; 4 refused by the state on disk; "
              "5 file\\-system error; 130/143 interrupted by SIGINT/SIGTERM.",
              ".SH FILES", "$DAGRUN_HOME/goals/GOAL/ \\- plan.json, events.jsonl, tasks/TASK/{claim/,prompt.md,"
              "output,done,failed,cancelled,attempts/}",
              ".SH SEE ALSO", "The documentation site built from docs/ (mkdocs), \\fBsystemd.service\\fR(5), "
              "\\fBcrontab\\fR(5)", ""]
    return "\n".join(lines)
