"""Start-up cost of a typer command: build only what the command line needs.

typer converts every parameter's value through a pydantic TypeAdapter, built on first use,
and builds the click object of every command before it parses anything. Importing pydantic
and building the adapters was ~0.10 s of CPU per `dagrun` call, building the other 37
commands ~0.035 s -- for a command that then runs for a few milliseconds (bench/latency.py,
docs/performance.md "Start-up"). So:

- `only(app, argv)`: the click group holds the invoked command only (the full tree for
  `--help`, completion, an unknown or missing command: everything that lists commands).
- `cheap_coercion(group)`: a value whose conversion is plain -- None, a string for a `str`
  parameter (a list of them for `list[str]`), a bool flag, decimal digits for an `int` or a
  `float` inside its min/max -- is converted here to what the adapter would return; any other
  value (a Path, a choice, "1e3", "abc" for an int, 0 for a min=1) goes to typer's own
  adapter, built then, so its conversions and error messages stay the reference.
"""
from __future__ import annotations

import copy
import re


def command_name(app, argv: list[str]) -> str | None:
    """The command argv invokes (after the global options hoist_globals put in front), if it
    is one of app's commands or groups."""
    from typer.main import get_command_name

    i = 0
    while i < len(argv) and argv[i].split("=", 1)[0] in ("--home", "--color"):
        i += 1 if "=" in argv[i] else 2
    if i >= len(argv) or argv[i].startswith("-"):
        return None
    names = {c.name or get_command_name(c.callback.__name__) for c in app.registered_commands}
    names |= {g.name for g in app.registered_groups}
    return argv[i] if argv[i] in names else None


def only(app, name: str | None):
    """app itself, or a copy whose command tree is the one command (or group) `name`."""
    if name is None:
        return app
    from typer.main import get_command_name

    part = copy.copy(app)
    part.registered_commands = [c for c in app.registered_commands
                                if (c.name or get_command_name(c.callback.__name__)) == name]
    part.registered_groups = [g for g in app.registered_groups if g.name == name]
    return part


class _Lazy:
    """typer's runtime coercion of one parameter, its adapter built only when a value needs it."""
    __slots__ = ("param", "real")

    def __init__(self, param):
        self.param = param
        self.real = None

    def coerce(self, value, param, ctx):
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        got = _plain(value, self.param.type_descriptor, multi)
        if got is not _ASK:
            return got
        if self.real is None:
            from typer._coercion import build_runtime_param
            self.real = build_runtime_param(self.param.type_descriptor)
        return self.real.coerce(value, param=param, ctx=ctx)


_ASK = object()
_INT = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?")


def _plain(value, d, multi: bool):
    """What typer's adapter returns for value, in the plain cases: a str for a `str`, a
    list of str for a `list[str]`, a bool for a `bool`, decimal digits for an `int` or a
    `float` inside its min/max. _ASK for anything else (the adapter decides, and words
    the error)."""
    info = d.parameter_info
    if d.file_annotation is not None or getattr(info, "parser", None) is not None or \
            getattr(info, "click_type", None) is not None:
        return _ASK
    a = d.annotation
    if multi:
        if a == list[str] and isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
            return list(value)
        return _ASK
    if a is str or a is bool:
        return value if type(value) is a else _ASK
    if a is int or a is float:
        if type(value) is str:
            if not (_INT if a is int else _FLOAT).fullmatch(value):
                return _ASK
            value = a(value)
        elif type(value) is int or (a is float and type(value) is float):
            value = a(value)
        else:
            return _ASK
        lo, hi = getattr(info, "min", None), getattr(info, "max", None)
        if getattr(info, "clamp", False) or (lo is not None and value < lo) or (hi is not None and value > hi):
            return _ASK
        return value
    return _ASK


def _lazy(p):
    if hasattr(p, "get_runtime_param") and hasattr(p, "type_descriptor") and \
            getattr(p, "_runtime_param", False) is None:
        p._runtime_param = _Lazy(p)
    return p


def cheap_coercion(group) -> None:
    """Every parameter of the tree, and the --help option click makes per context, gets the
    lazy coercion (a typer without runtime params -- before pydantic -- is left as it is)."""
    for cmd in [group, *getattr(group, "commands", {}).values()]:
        if cmd is not group and getattr(cmd, "commands", None):
            cheap_coercion(cmd)
            continue
        for p in cmd.params:
            _lazy(p)
        help_option = cmd.get_help_option
        cmd.get_help_option = lambda ctx, f=help_option: (lambda o: o if o is None else _lazy(o))(f(ctx))
