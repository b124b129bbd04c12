"""The bash protocol -- `claim`, `complete`, `fail`, `heartbeat` -- and `submit`, and their fast path.

A lobster loop calls these commands once or twice per task, so their start-up time is part of
every task's latency. typer builds its command tree through pydantic: ~100 ms of imports
before any command runs, against ~60 ms for the whole protocol path. So `entry.main()` has these
commands (and `submit`, which a script calls once per goal, and `mcp`, which an agent CLI
starts and waits for) parsed here, with a strict little parser, and hands everything else -- other
commands, --help, and any argument list it does not fully understand -- to the typer CLI,
which stays the reference for parsing, help and error messages. Both paths call the same
`cmd_*` functions below, which do the work and print the result.
"""
from __future__ import annotations

import sys

from .errors import DagrunError, ExitCode, report
from .store import Home, dumps


# ------------------------------------------------------------------------------ the commands
def cmd_claim(home: Home, goal: str, *, worker: str | None, pid: int | None, fmt: str = "id") -> int:
    """fmt: "id" (the task id), "json", or "env" (shell assignments to eval)."""
    from .commands import claim_external

    rc, info = claim_external(home, goal, worker=worker, pid=pid)
    if info is None:
        if fmt == "json":
            _write_json({"goal": goal, "task": None, "exit": int(rc)})
        return int(rc)
    if fmt == "json":
        _write_json(info)
    elif fmt == "env":
        sys.stdout.write(shell_env(info))
    else:
        sys.stdout.write(info["task"] + "\n")
    return 0


ENV_VARS = (("DAGRUN_HOME", "home"), ("DAGRUN_GOAL", "goal"), ("DAGRUN_TASK", "task"),
            ("DAGRUN_ATTEMPT", "attempt"), ("DAGRUN_WORKER", "worker"), ("DAGRUN_TASK_DIR", "task_dir"),
            ("DAGRUN_PROMPT_FILE", "prompt_file"), ("DAGRUN_STDOUT_FILE", "stdout_file"),
            ("DAGRUN_STDERR_FILE", "stderr_file"), ("DAGRUN_OUTPUT_FILE", "output_file"),
            ("DAGRUN_RUN_ID", "run_id"), ("DAGRUN_LEASE", "lease"), ("DAGRUN_AGENT", "agent"),
            ("DAGRUN_WORKDIR", "workdir"), ("DAGRUN_TIMEOUT", "timeout"),
            ("DAGRUN_USAGE_FILE", "usage_file"), ("DAGRUN_RAW_FILE", "raw_file"),
            ("DAGRUN_CHECK_FILE", "check_file"), ("DAGRUN_HEARTBEAT_FILE", "heartbeat_file"))
OPTIONAL_ENV_VARS = (("DAGRUN_WORKSPACE", "workspace"),)     # only when the task has one


def shell_env(info: dict) -> str:
    """`export NAME='value'` lines for `eval` in any POSIX shell (values single-quoted, so
    nothing in them is expanded)."""
    lines = []
    for var, key in ENV_VARS:
        v = info.get(key)
        if v is None:
            v = ""
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        lines.append(f"export {var}='" + str(v).replace("'", "'\\''") + "'\n")
    for var, key in OPTIONAL_ENV_VARS:
        if info.get(key) is not None:
            lines.append(f"export {var}='" + str(info[key]).replace("'", "'\\''") + "'\n")
    return "".join(lines)


def cmd_complete(home: Home, goal: str, task: str, *, output: str | None, worker: str | None,
                 pid: int | None, force: bool) -> int:
    from .commands import complete

    body = complete(home, goal, task, output=output, worker=worker, pid=pid, force=force, stdin=sys.stdin.buffer)
    if body.get("forced_by"):
        _note(f"{goal}/{task} completed with --force over the claim of {body['held_by']}")
    return 0


def cmd_fail(home: Home, goal: str, task: str, *, reason: str, exit_code: int | None, worker: str | None,
             pid: int | None, force: bool) -> int:
    from .commands import fail
    from .store import now_iso

    rec = fail(home, goal, task, reason=reason, worker=worker, pid=pid, force=force, exit_code=exit_code)
    if rec.get("forced_by"):
        _note(f"{goal}/{task} failed with --force over the claim of {rec['held_by']}")
    if not rec["final"]:
        _note(f"{goal}/{task} will be retried (attempt {rec['attempt'] + 1}) after "
              f"{now_iso(rec['retry_at'])[11:19]}")
    return 0


def cmd_heartbeat(home: Home, goal: str, task: str, *, worker: str | None, pid: int | None) -> int:
    from .commands import heartbeat

    heartbeat(home, goal, task, worker=worker, pid=pid)
    return 0


def cmd_status(home: Home, goal: str) -> int:
    """`dagrun status GOAL --json`: the goal's detail, the same bytes as the typer command
    prints (a script polling a 100 000-task goal pays no typer, rich or pydantic import)."""
    from .bulk import one_shot
    from .plan import check_id
    from .status import goal_detail_json

    one_shot()
    check_id("goal", goal)
    sys.stdout.buffer.write(goal_detail_json(home, goal))
    return 0


def cmd_submit(home: Home, plans: list[str], *, replace: bool = False, dry_run: bool = False,
               json: bool = False) -> int:
    """`dagrun submit PLAN...` (also on the fast path: a script submitting goals in a loop
    pays the start-up per goal). One plan: its goal id, or one error. Several: all or
    nothing (edit.submit_many): one `dagrun: ...` line per bad file and nothing submitted,
    else one goal id per line (--json: {"goals": [...]})."""
    from .agentcheck import plan_warnings
    from .bulk import one_shot
    from .edit import BadPlans, submit, submit_many
    from .plan import load

    one_shot()
    loaded = {}
    bad = []
    for p in plans:
        try:
            loaded[p] = load(p, home.root)
        except DagrunError as e:
            if len(plans) == 1:
                raise
            bad.append((p, e))
            continue
        for w in plan_warnings(loaded[p], home.root):
            _note(w)
    try:
        if bad:
            raise BadPlans(bad)
        if len(plans) == 1:
            results = [submit(home, plans[0], replace=replace, dry_run=dry_run, plan=loaded[plans[0]])]
        else:
            results = submit_many(home, plans, replace=replace, dry_run=dry_run, loaded=loaded)
    except BadPlans as e:
        for p, err in e.bad:
            _note(str(err) if p in str(err) else f"{p}: {err}")
        _note(f"nothing submitted: {len(e.bad)} of {len(plans)} plans refused")
        return int(e.exit_code)
    if json:
        rows = [{"goal": r.goal, "action": r.action, "diff": r.diff.to_dict() if r.diff else None} for r in results]
        _write_json(rows[0] if len(plans) == 1 else {"goals": rows})
        return 0
    for r in results:
        sys.stdout.write(r.goal + "\n")
        sys.stdout.flush()
        if r.diff is not None:
            print_diff(r.diff, sys.stderr)
        if r.action not in ("created", "unchanged"):
            _note(f"{r.action} goal {r.goal}")
    return 0


def print_diff(d, out) -> None:
    def line(label, items):
        if items:
            print(f"{label:<10} {' '.join(items)}", file=out)
    line("changed", d.changed)
    line("downstream", d.downstream)
    line("added", d.added)
    line("removed", d.removed)
    print(f"{'kept':<10} {len(d.kept_done)} done task(s) keep their output", file=out)


def cmd_decide(home: Home, goal: str, task: str, *, approve: bool, text: str) -> int:
    """approve / reject an approval gate (commands.decide)."""
    from .commands import decide

    rec = decide(home, goal, task, approve=approve, text=text)
    who = rec.get("decided_by", "?")
    _note(f"{goal}/{task} {'approved' if approve else 'rejected'} by {who}")
    return 0


def cmd_mcp(home: Home) -> int:
    """`dagrun mcp`: serve the Model Context Protocol over stdin/stdout until the client
    closes them (mcpserver.py). On the fast path: an agent CLI waits for the server's
    answer to `initialize` before its first model request, so typer and rich stay out."""
    from .errors import UsageError

    try:
        from .mcpserver import serve
    except ImportError as e:
        raise UsageError(f"dagrun mcp needs the mcp SDK ({e}): pip install 'dagrun[mcp]'") from None
    serve(home)
    return 0


def resolve_target(home: Home, target: str, replace: bool) -> tuple[str, tuple | None]:
    """`dagrun run`'s target: a path to a plan (submitted if needed) or the id of a submitted
    goal. (goal, written): written is (plan.json's stamp, its Plan) when this call created
    the goal or found it with this very plan (edit.SubmitResult.written), for run_goal; None
    otherwise."""
    import os

    from .errors import UsageError
    from .edit import submit
    from .plan import valid_id

    if os.path.isfile(target):
        from .agentcheck import plan_warnings
        from .plan import load
        parsed = load(target, home.root)
        for w in plan_warnings(parsed, home.root):
            print(f"dagrun: {w}", file=sys.stderr)
        r = submit(home, target, replace=replace, plan=parsed)
        return r.goal, r.written
    if valid_id(target) and home.has_goal(target):
        return target, None
    if os.path.exists(target):
        raise UsageError(f"{target} is not a plan file")
    if target.endswith(".json") or os.sep in target:
        raise UsageError(f"no plan file {target}")
    raise UsageError(f"no plan file and no goal named {target!r} under {home.root}")


def run_goal(home: Home, goal: str, target: str, *, jobs: int | None, name: str | None = None,
             poll: float | None = None, runner: str | None = None, no_cache: bool = False,
             on_event=None, wrap=None, written: tuple | None = None) -> int:
    """`dagrun run`: the goal in the foreground until it ends, then its one-line result (and
    what failed or is blocked). wrap(go): the typer path's live view around the run.
    written: (stamp, plan) of the plan.json the submit just wrote (resolve_target): not
    parsed again (~5 ms of a 500-task run's start); the engine still takes it only while
    plan.json is that file."""
    import os

    from . import linesink
    from .engine import WATCH_AFTER, Engine
    from .executor import for_driver
    from .status import goal_detail

    if written is not None:
        stamp, plan = written
    else:
        stamp = home.plan_stamp(goal)           # before the load: the engine takes this plan if
        plan = home.load_plan(goal)             # plan.json is still that file (no second parse)
    runners = for_driver([plan], runner)        # exit 2 if a runner cannot start anything here
    eng = Engine(home, worker=name, jobs=jobs or plan.max_parallel or 4, goal=goal, poll=poll, log=stderr_log,
                 on_event=on_event, use_cache=not no_cache, runner=runners, plans={goal: (stamp, plan)},
                 watch_after=WATCH_AFTER)     # inotify only for a run still going after 2 s
    rc = wrap(eng.run) if wrap is not None else eng.run()
    d = goal_detail(home, goal, fresh=eng.fresh.get(goal))   # the snapshot the engine derived at the end
    c = d["counts"]
    parts = ", ".join(f"{v} {k}" for k, v in c.items())
    # after the lines still waiting for a reader (linesink), in order; at most a bounded wait
    if rc == 130 or rc >= 128:
        linesink.err(f"goal {goal} interrupted: {parts} (run it again to resume)", True)
    else:
        linesink.out(f"goal {goal} {d['state']}: {parts}", True)
        if d["state"] != "done":
            failed = [r for r in d["tasks"] if r["state"] in ("failed", "cancelled")]
            for r in failed:
                linesink.out(f"  {r['state']}: {r['task']}" + (f" ({r['reason']})" if r.get("reason") else ""), True)
            by_root: dict = {}
            for r in d["tasks"]:
                if r["state"] == "blocked":
                    by_root.setdefault(r.get("blocked_by") or "?", []).append(r["task"])
            for root, tasks in by_root.items():
                linesink.out(f"  blocked by {root}: {' '.join(tasks)}", True)
            if failed:
                plan_arg = target if os.path.isfile(target) else "PLAN"
                linesink.err(f"dagrun: to run the failed and cancelled tasks again: dagrun retry {goal} "
                             f"(then: dagrun run {goal}); after editing the plan: dagrun run --replace {plan_arg}", True)
    linesink.finish()
    return rc


def cmd_run(home: Home, target: str, *, jobs: int | None, replace: bool, no_cache: bool) -> int:
    """`dagrun run TARGET -q [-j N]` on the fast path: no progress output to draw, so neither
    typer nor rich is imported (~0.1 s of CPU before the first task starts)."""
    goal, written = resolve_target(home, target, replace)
    return run_goal(home, goal, target, jobs=jobs, no_cache=no_cache, written=written)


def stderr_log(msg: str) -> None:
    """`dagrun run`'s log: one line on stderr that never blocks the engine (linesink)."""
    from .errors import one_line
    from .linesink import err
    err(f"dagrun: {one_line(msg)}")


def _note(msg: str) -> None:
    print(f"dagrun: {msg}", file=sys.stderr)


def _write_json(obj) -> None:
    sys.stdout.buffer.write(dumps(obj))


# ------------------------------------------------------------------------------ the fast path
# command -> (positional names, {option: (key, kind)}); kind: "str", "int", "flag"
_WHO = {"--worker": ("worker", "str"), "--pid": ("pid", "int"), "--home": ("home", "str")}  # --home: also after
SPEC = {
    "claim": (("goal",), {**_WHO, "--json": ("json", "flag"), "--env": ("env", "flag")}),
    "complete": (("goal", "task"), {**_WHO, "--output": ("output", "str"), "-o": ("output", "str"),
                                    "--force": ("force", "flag")}),
    "fail": (("goal", "task"), {**_WHO, "--reason": ("reason", "str"), "--exit-code": ("exit_code", "int"),
                                "--force": ("force", "flag")}),
    "heartbeat": (("goal", "task"), dict(_WHO)),
    "submit": (("plans...",), {"--home": ("home", "str"), "--replace": ("replace", "flag"),
                               "--dry-run": ("dry_run", "flag"), "--json": ("json", "flag")}),
    "approve": (("goal", "task"), {"--home": ("home", "str"), "--note": ("note", "str")}),
    "reject": (("goal", "task"), {"--home": ("home", "str"), "--reason": ("reason", "str")}),
    "mcp": ((), {"--home": ("home", "str")}),            # --print-config goes to typer
    # `status GOAL --json` only (scripts poll it; a table goes to typer and rich)
    "status": (("goal",), {"--home": ("home", "str"), "--json": ("json", "flag")}),
    # `run TARGET -q` only (no progress to draw; the other options go to typer)
    "run": (("target",), {"--home": ("home", "str"), "-q": ("quiet", "flag"), "--quiet": ("quiet", "flag"),
                          "-j": ("jobs", "int"), "--jobs": ("jobs", "int"), "--replace": ("replace", "flag"),
                          "--no-cache": ("no_cache", "flag")}),
}


def parse_fast(argv: list[str]) -> tuple[str | None, str, dict] | None:
    """(home, command, arguments) when argv is a protocol command this parser fully
    understands; None for anything else (typer then parses it and reports errors)."""
    home = None
    i = 0
    while i < len(argv) and argv[i].startswith("--home"):
        a = argv[i]
        if a.startswith("--home="):
            home = a[len("--home="):]
        elif a == "--home" and i + 1 < len(argv):
            i += 1
            home = argv[i]
        else:
            return None
        i += 1
    if i >= len(argv) or argv[i] not in SPEC:
        return None
    cmd = argv[i]
    names, opts = SPEC[cmd]
    args: dict = {}
    pos: list[str] = []
    rest = argv[i + 1:]
    j = 0
    while j < len(rest):
        a = rest[j]
        j += 1
        if a == "-" or not a.startswith("-"):
            pos.append(a)
            continue
        name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
        if name not in opts:
            return None                      # --help, --, an unknown or misspelt option
        key, kind = opts[name]
        if key in args:
            return None
        if kind == "flag":
            if eq:
                return None
            args[key] = True
            continue
        if not eq:
            if j >= len(rest):
                return None
            val = rest[j]
            j += 1
        if kind == "int":
            try:
                val = int(val)
            except ValueError:
                return None
        args[key] = val
    if names == ("plans...",):
        if not pos:
            return None
        args["plans"] = pos
    elif len(pos) != len(names) or (args.get("json") and args.get("env")):
        return None
    else:
        if cmd == "reject" and not (args.get("reason") or "").strip():
            return None                          # typer says --reason is required
        if cmd == "status" and not args.get("json"):
            return None
        if cmd == "run" and (not args.get("quiet") or args.get("jobs", 1) < 1):
            return None                          # progress output, or typer's error for -j 0
        args.update(zip(names, pos))
    return args.pop("home", home), cmd, args


def run_parsed(home: Home, cmd: str, a: dict) -> int:
    if cmd == "mcp":
        return cmd_mcp(home)
    if cmd == "status":
        return cmd_status(home, a["goal"])
    if cmd == "run":
        return cmd_run(home, a["target"], jobs=a.get("jobs"), replace=bool(a.get("replace")),
                       no_cache=bool(a.get("no_cache")))
    if cmd == "submit":
        return cmd_submit(home, a["plans"], replace=bool(a.get("replace")), dry_run=bool(a.get("dry_run")),
                          json=bool(a.get("json")))
    who = {"worker": a.get("worker"), "pid": a.get("pid")}
    if cmd == "claim":
        fmt = "json" if a.get("json") else "env" if a.get("env") else "id"
        return cmd_claim(home, a["goal"], fmt=fmt, **who)
    if cmd == "complete":
        return cmd_complete(home, a["goal"], a["task"], output=a.get("output"), force=bool(a.get("force")), **who)
    if cmd == "fail":
        return cmd_fail(home, a["goal"], a["task"], reason=a.get("reason") or "", exit_code=a.get("exit_code"),
                        force=bool(a.get("force")), **who)
    if cmd in ("approve", "reject"):
        return cmd_decide(home, a["goal"], a["task"], approve=cmd == "approve",
                          text=a.get("note") or "" if cmd == "approve" else a["reason"])
    return cmd_heartbeat(home, a["goal"], a["task"], **who)


def run_fast(parsed: tuple) -> None:
    """Run a command parse_fast() fully understood; exits with its code (the boundary: one
    line on stderr and an exit code, never a traceback)."""
    home, cmd, a = parsed
    try:
        code = run_parsed(Home(home), cmd, a)
    except BaseException as e:  # noqa: BLE001 - the boundary: one line, an exit code
        if isinstance(e, SystemExit):
            raise
        code = report(e)
    try:
        sys.stdout.flush()
    except OSError:
        code = code or ExitCode.IO
    sys.exit(int(code))
