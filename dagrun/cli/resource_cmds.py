"""resources (the capacities and their holders), resources set / unset (home and tenant
capacities; see dagrun/resources.py)."""
from __future__ import annotations

import typer

from . import app
from .common import CONTROL, JSON_OPT, examples, home_of, plain_table, print_json

res_app = typer.Typer(help="Resource capacities shared by every goal, worker and script of the home, and who "
                           "holds their units now (see docs/resources.md).",
                      invoke_without_command=True, epilog=examples(
                          "dagrun resources                    # capacity, units held, holders",
                          "dagrun resources set gpu 2          # at most 2 units of gpu in this home",
                          "dagrun resources set agent.claude 2 # at most 2 @claude tasks at once",
                          "dagrun resources set --tenant acme gpu 1",
                          "dagrun resources --json | jq '.resources[] | select(.held > 0)'"))
app.add_typer(res_app, name="resources", rich_help_panel=CONTROL)

TENANT_OPT = typer.Option(None, "--tenant", metavar="TENANT",
                          help="A limit on what all goals of this tenant (plan \"tenant\") hold together.")


@res_app.callback()
def resources(ctx: typer.Context, json: bool = JSON_OPT):
    """List the capacities (home, tenants, goals' plans) with the units held and by whom."""
    if ctx.invoked_subcommand is not None:
        return
    from ..resources import overview

    rows = overview(home_of(ctx))
    if json:
        print_json({"resources": rows})
        return

    def scope(r):
        return r["scope"] if r["scope"] == "home" else f"{r['scope']} {r.get(r['scope'])}"

    plain_table([[r["name"], scope(r), "-" if r["capacity"] is None else str(r["capacity"]), str(r["held"]),
                  ", ".join(f"{h['goal']}/{h['task']} ({h['worker']})" for h in r["holders"]) or "-"]
                 for r in rows], ["RESOURCE", "SCOPE", "CAPACITY", "HELD", "HOLDERS"])


@res_app.command("set", epilog=examples("dagrun resources set gpu 2", "dagrun resources set repo 1",
                                        "dagrun resources set --tenant acme gpu 1",
                                        "dagrun resources set agent.claude 2   # an agent limit"))
def set_(ctx: typer.Context,
         name: str = typer.Argument(..., metavar="NAME", help="Resource name (agent.NAME: an agent limit)."),
         n: int = typer.Argument(..., metavar="N", help="Units that may be held at once (0: none).", min=0),
         tenant: str = TENANT_OPT):
    """Set a capacity of the home (or of one tenant's goals together). Takes effect at the
    next look of each worker (at most its --rescan period); units held above a lowered
    capacity stay until their attempts end."""
    from ..resources import set_capacity

    set_capacity(home_of(ctx), name, n, tenant)
    print(f"{name}: {n}" + (f" (tenant {tenant})" if tenant else ""))


@res_app.command("unset", epilog=examples("dagrun resources unset gpu", "dagrun resources unset --tenant acme gpu"))
def unset(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME", help="Resource name."),
          tenant: str = TENANT_OPT):
    """Remove a capacity: the resource is no longer counted at that scope."""
    from ..resources import set_capacity

    set_capacity(home_of(ctx), name, None, tenant)
    print(f"{name}: no limit" + (f" (tenant {tenant})" if tenant else ""))
