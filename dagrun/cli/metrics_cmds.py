"""metrics: Prometheus text format, for the node exporter's textfile collector."""
from __future__ import annotations

import sys

import typer

from . import app
from .common import INSPECT, examples, home_of


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun metrics | grep dagrun_tasks",
    "dagrun metrics --textfile /var/lib/node_exporter/textfile/dagrun.prom"))
def metrics(ctx: typer.Context,
            textfile: str = typer.Option(None, "--textfile", metavar="PATH",
                                         help="Write to PATH (published by rename; name it *.prom in the node "
                                              "exporter's --collector.textfile.directory) instead of stdout.")):
    """Print every goal's metrics in Prometheus text format: tasks by state, ready-queue depth,
    running, blocked/repeat totals, parallelism, task duration and generation latency
    histograms. (`dagrun worker --metrics PATH` keeps such a file fresh and adds the
    state-bus lag it observes.)"""
    from ..fsio import write_named
    from ..metrics import Collector

    text = Collector(home_of(ctx)).render()
    if textfile:
        write_named(textfile, text.encode())
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
