"""What an agent process hands back besides stdout/stderr, through files in its claim:

    claim/usage.jsonl   $DAGRUN_USAGE_FILE  usage lines (usage.py)
    claim/raw           $DAGRUN_RAW_FILE    a preset's raw tool output (-> tasks/<t>/raw, attempts/<n>.raw)
    claim/check.json    $DAGRUN_CHECK_FILE  the acceptance check's verdict, written by agentrun
    claim/answer        (agentrun)          the answer the check reads as $DAGRUN_OUTPUT

The engine (and `dagrun complete`/`fail` for scripts) calls three functions: `agent_env` when
it starts an attempt, `attempt_extra` and `failure_verdict` when it commits one. Everything
is read without following symlinks and judged, never trusted to be well-formed: a missing or
malformed file means "nothing reported".
"""
from __future__ import annotations

import json
import os

from .store import HEARTBEAT
from .usage import ERROR_PREFIX, RAW_FILE, USAGE_FILE, _read, read as read_usage

CHECK_FILE = "check.json"
CHECK_TAIL = 2000            # bytes of the check's output kept in the attempt's record

__all__ = ["RAW_FILE", "USAGE_FILE", "CHECK_FILE", "agent_env", "attempt_extra", "failure_verdict"]


def agent_env(claim_dir: str) -> dict[str, str]:
    """What an attempt's environment gets besides the DAGRUN_* basics."""
    d = claim_dir + "/" if claim_dir and not claim_dir.endswith("/") else claim_dir   # os.path.join, inlined
    return {"DAGRUN_USAGE_FILE": d + USAGE_FILE, "DAGRUN_RAW_FILE": d + RAW_FILE,
            "DAGRUN_CHECK_FILE": d + CHECK_FILE, "DAGRUN_HEARTBEAT_FILE": d + HEARTBEAT}


def read_check(claim_dir: str) -> dict | None:
    data = _read(os.path.join(claim_dir, CHECK_FILE), 64 * 1024)
    try:
        d = json.loads(data) if data else None
    except ValueError:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("argv"), list) or not isinstance(d.get("passed"), bool):
        return None
    out = {"argv": [str(a) for a in d["argv"]][:64], "passed": d["passed"]}
    for k in ("exit_code", "signal"):
        if isinstance(d.get(k), int) and not isinstance(d.get(k), bool):
            out[k] = d[k]
    if isinstance(d.get("duration"), (int, float)):
        out["duration"] = round(float(d["duration"]), 3)
    if d.get("timed_out") is True:
        out["timed_out"] = True
    if isinstance(d.get("tail"), str) and not d["passed"]:
        out["tail"] = d["tail"][-CHECK_TAIL:]
    return out


def attempt_extra(claim_dir: str, warn=None, listing: frozenset | set | None = None) -> dict | None:
    """The fields an ending attempt adds to its marker and record: `usage` (summed usage
    lines) and `check` (the acceptance check's verdict, with its output tail when it failed).
    listing: the claim folder's names (the caller listed it after the attempt ended): a file
    not among them is not looked for."""
    out = {}
    if listing is None or USAGE_FILE in listing:
        u, warnings = read_usage(os.path.join(claim_dir, USAGE_FILE))
        for w in warnings:
            if warn:
                warn(w)
        if u:
            out["usage"] = u
    if listing is None or CHECK_FILE in listing:
        c = read_check(claim_dir)
        if c:
            out["check"] = c
    return out or None


def failure_verdict(claim_dir: str, describe: str) -> tuple[str, str]:
    """(outcome, reason) of an attempt that exited non-zero: `check_failed` with what the
    check did, or `failed` with the exit status and the adapter's message when it gave one
    ('exit code 1: @claude: API Error: 400 ...')."""
    c = read_check(claim_dir)
    if c and not c["passed"]:
        what = ("timed out" if c.get("timed_out") else f"exit code {c['exit_code']}" if "exit_code" in c
                else f"killed by signal {c.get('signal')}" if c.get("signal") else "could not run")
        return "check_failed", f"check failed: {what} (`{' '.join(c['argv'])}`)"
    data = _read(os.path.join(claim_dir, "stderr"), 8192, tail=True)
    if data:
        for line in reversed(data.decode("utf-8", "replace").splitlines()):
            if line.startswith(ERROR_PREFIX):
                why = line[len(ERROR_PREFIX):].strip()[:1000]
                if why:
                    return "failed", f"{describe}: {why}"
                break
    return "failed", describe
