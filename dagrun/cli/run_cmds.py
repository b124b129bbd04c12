"""run (one goal in the foreground) and worker (every goal: systemd daemon or cron)."""
from __future__ import annotations

import os
import sys

import typer

from . import app
from .common import (POLL_OPT, RUN, RUNNER_OPT, WORKER_NAME, LogLine, complete_goal, examples, fmt_event, home_of,
                     is_tty, parse_age)


@app.command(rich_help_panel=RUN, epilog=examples(
    "dagrun run examples/add-auth/dag.json     # submit and run; Ctrl-C stops, run again resumes",
    "dagrun run add-auth -j 8                   # a submitted goal, 8 agents at once",
    "dagrun run --replace dag.json              # after editing the plan: re-run what changed"))
def run(ctx: typer.Context,
        target: str = typer.Argument(..., metavar="PLAN|GOAL", help="A dag.json (submitted if needed) or a goal id.",
                                     autocompletion=complete_goal),
        jobs: int = typer.Option(None, "-j", "--jobs", min=1, metavar="N",
                                 help="Agents at once (default: the plan's max_parallel, else 4)."),
        name: str = typer.Option(None, *WORKER_NAME, metavar="NAME",
                                 help="Worker name in claims and events (default: HOST-PID)."),
        poll: float = POLL_OPT,
        runner: str = RUNNER_OPT,
        replace: bool = typer.Option(False, "--replace", help="If the goal exists with another plan, replace it (see submit)."),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output; only the final line."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print what would start, in order (every task "
                                     "succeeding), and exit: starts nothing, submits nothing, writes nothing."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Run every agent: neither use nor fill the result cache.")):
    """Submit if needed, then run the goal in the foreground until it ends; resumes an
    interrupted goal (done work is never redone)."""
    if dry_run:
        _dry_run(ctx, target, jobs)
        return
    from ..protocol import resolve_target, run_goal
    from ..status import goal_detail

    home = home_of(ctx)
    goal, written = resolve_target(home, target, replace)
    on_event = wrap = None
    if not quiet and is_tty():
        from rich.live import Live

        from .common import console
        from .live import GoalView
        view = GoalView(goal_detail(home, goal))
        live = Live(view, console=console(), auto_refresh=True, refresh_per_second=4, transient=False)
        on_event = view.apply

        def wrap(go):
            with live:
                return go()
    elif not quiet:
        from ..linesink import out

        def on_event(e):
            out(fmt_event(e))              # a stdout pipe nobody reads never stops the run
    rc = run_goal(home, goal, target, jobs=jobs, name=name, poll=poll, runner=runner, no_cache=no_cache,
                  on_event=on_event, wrap=wrap, written=written)
    raise typer.Exit(rc)


def _dry_run(ctx, target: str, jobs: int | None) -> None:
    from .. import plan as planmod
    from ..dryrun import dry_run
    from ..errors import UsageError
    from ..plan import valid_id

    home = home_of(ctx)
    if os.path.isfile(target):
        plan = planmod.load(target, home.root)
    elif valid_id(target) and home.has_goal(target):
        plan = home.load_plan(target)
    else:
        raise UsageError(f"no plan file and no goal named {target!r} under {home.root}")
    steps = dry_run(home, plan, jobs=jobs or plan.max_parallel or 4)
    for s in steps:
        print(f"{s.wave}\t{s.goal}/{s.task}\t{s.agent}")
    waves = steps[-1].wave if steps else 0
    print(f"dry run: {len(steps)} task(s) would start in {waves} wave(s); nothing was started", file=sys.stderr)


@app.command(rich_help_panel=RUN, epilog=examples(
    "dagrun worker -j 4                       # daemon (systemd): every goal, until SIGTERM",
    "dagrun worker --until-idle -j 4          # cron: run what is ready, exit when idle (silent if idle)",
    "dagrun init --systemd                    # the units, with this dagrun's path"))
def worker(ctx: typer.Context,
           jobs: int = typer.Option(4, "-j", "--jobs", min=1, metavar="N", help="Agents at once, over all goals."),
           until_idle: bool = typer.Option(False, "--until-idle", help="Exit 0 once nothing this worker can run is "
                                           "ready or running (for cron)."),
           name: str = typer.Option(None, *WORKER_NAME, metavar="NAME", help="Worker name (default: HOST-PID)."),
           poll: float = POLL_OPT,
           runner: str = RUNNER_OPT,
           rescan: float = typer.Option(10.0, "--rescan", min=0.1, metavar="SECONDS",
                                        help="Full rescan of the files at least this often (safety net)."),
           lease: float = typer.Option(None, "--lease", min=1.0, metavar="SECONDS",
                                       help="Judge other hosts' claims stale only after this long without a "
                                            "heartbeat, if longer than the plan's lease."),
           metrics_path: str = typer.Option(None, "--metrics", metavar="PATH",
                                            help="Keep a Prometheus textfile at PATH up to date (see `dagrun "
                                                 "metrics`), plus the state-bus lag this worker observes."),
           metrics_every: float = typer.Option(15.0, "--metrics-every", min=0.1, metavar="SECONDS",
                                               help="How often --metrics rewrites the file."),
           verbose: bool = typer.Option(False, "-v", "--verbose", help="With --until-idle: log the start and "
                                        "exit lines even when there was nothing to do."),
           no_cache: bool = typer.Option(False, "--no-cache", help="Run every agent: neither use nor fill the result cache."),
           gc_older_than: str = typer.Option(None, "--gc-older-than", metavar="AGE",
                                             help="Delete finished goals that ended more than AGE ago (e.g. 30d): "
                                                  "at start, then hourly (`dagrun gc --older-than AGE`).")):
    """Serve every goal under the home: the daemon for systemd, or --until-idle for cron.
    Logs one line per event of its own to stderr."""
    from ..engine import Engine, default_worker_name
    from ..executor import for_driver

    home = home_of(ctx)
    runners = for_driver([], runner)            # exit 2 if --runner cannot start anything here
    me = name or default_worker_name()
    wm = None
    if metrics_path:
        from ..metrics import WorkerMetrics
        wm = WorkerMetrics(home, metrics_path, me)

    log = LogLine(quiet=until_idle and not verbose)
    tick = wm
    if gc_older_than is not None:
        from ..goalgc import GcSchedule
        tick = GcSchedule(home, parse_age(gc_older_than, "--gc-older-than"), log=log, then=wm)

    def on_event(e):
        if wm is not None:
            wm.observe(e)
        if e.get("worker") == me or e.get("type", "").endswith("goal.finished"):
            log.event(e)
    eng = Engine(home, worker=me, jobs=jobs, until_idle=until_idle, poll=poll, log=log,
                 on_event=on_event, rescan_every=rescan, lease=lease, tick=tick, tick_every=metrics_every if wm is not None else 60.0,
                 use_cache=not no_cache, runner=runners)
    log.start(f"worker {me} serving {home.root} with -j {jobs}" + (" until idle" if until_idle else ""))
    rc = eng.run()
    if log.said or rc != 0:       # an idle cron run that did nothing stays silent
        log(f"worker {me} exiting: " + ("idle" if rc == 0 else f"stopped by signal {rc - 128}" if rc > 128
                                        else f"exit {rc}"), 6 if rc in (0, 130, 143) else 3)
    from ..linesink import finish
    finish()                      # what waits for a reader: written, or dropped after a bounded wait
    raise typer.Exit(rc)

