"""Agent usage: what an attempt cost, from the lines it wrote to $DAGRUN_USAGE_FILE.

The file lives in the claim (claim/usage.jsonl) while the attempt runs; a preset's adapter
(agentrun.py) writes it for the real CLIs, a home-made agent may write it itself. One JSON
object a line with any of tokens_in, tokens_out, tokens_cached, cost_usd, model; lines add
up (an agent can report as it goes). A malformed line is skipped with a warning, never an
error: usage is bookkeeping, it must not fail a task. Pure functions plus one bounded read.
"""
from __future__ import annotations

import json
import os

USAGE_FILE = "usage.jsonl"      # in claim/ while the attempt runs
RAW_FILE = "raw"                # a preset's raw tool stdout: claim/raw -> tasks/<t>/raw | attempts/<n>.raw
MAX_BYTES = 1 << 20
COUNTS = ("tokens_in", "tokens_out", "tokens_cached")
ERROR_PREFIX = "dagrun-agent: "  # the adapter's last stderr line on a failure (agentrun.ERROR_PREFIX)


def _read(path: str, limit: int, tail: bool = False) -> bytes | None:
    """At most `limit` bytes (the last ones with tail=True); never through a symlink (the
    agent could plant one in its claim folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if tail:
            size = os.fstat(fd).st_size
            os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse(data: bytes) -> tuple[dict | None, list[str]]:
    """Sum the lines. Returns (usage or None, warnings)."""
    total: dict = {}
    models: dict[str, dict] = {}
    warnings: list[str] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError:
            warnings.append(f"usage line {n} ignored: not JSON")
            continue
        if not isinstance(d, dict):
            warnings.append(f"usage line {n} ignored: not a JSON object")
            continue
        bad = [k for k in (*COUNTS, "cost_usd") if k in d and d[k] is not None and
               (isinstance(d[k], bool) or not isinstance(d[k], (int, float)) or d[k] < 0 or d[k] != d[k]
                or (k in COUNTS and d[k] != int(d[k])))]
        if "model" in d and d["model"] is not None and not isinstance(d["model"], str):
            bad.append("model")
        if bad:
            warnings.append(f"usage line {n} ignored: {bad[0]} must be a " +
                            ("string" if bad[0] == "model" else "non-negative number"))
            continue
        got = {k: d[k] for k in (*COUNTS, "cost_usd") if d.get(k) is not None}
        if not got and not d.get("model"):
            continue
        model = d.get("model") or None
        for k, v in got.items():
            total[k] = total.get(k, 0) + v
        if model:
            m = models.setdefault(model[:200], {})
            for k, v in got.items():
                m[k] = m.get(k, 0) + v
    if not total and not models:
        return None, warnings
    out = {k: (int(total[k]) if k in COUNTS else round(float(total[k]), 6)) for k in (*COUNTS, "cost_usd") if k in total}
    if models:
        out["model"] = max(models, key=lambda m: (models[m].get("tokens_out", 0), models[m].get("tokens_in", 0)))
        if len(models) > 1:
            out["models"] = {m: {k: (int(v) if k in COUNTS else round(float(v), 6)) for k, v in u.items()}
                             for m, u in models.items()}
    return out, warnings


def read(path: str) -> tuple[dict | None, list[str]]:
    data = _read(path, MAX_BYTES + 1)
    if not data:
        return None, []
    warnings = []
    if len(data) > MAX_BYTES:
        data = data[:MAX_BYTES].rsplit(b"\n", 1)[0]
        warnings.append(f"usage file larger than {MAX_BYTES} bytes: the rest is ignored")
    u, w = parse(data)
    return u, warnings + w


def by_model(u: dict | None) -> dict[str, dict]:
    """model -> its usage (an attempt without a model counts under "unknown")."""
    if not u:
        return {}
    if u.get("models"):
        return u["models"]
    return {u.get("model") or "unknown": {k: u[k] for k in (*COUNTS, "cost_usd") if k in u}}


def add(a: dict | None, b: dict | None) -> dict | None:
    """Totals of two usages (for a task's attempts, a goal's tasks)."""
    if not b:
        return a
    if not a:
        a = {}
    out = dict(a)
    for k in (*COUNTS, "cost_usd"):
        if isinstance(b.get(k), (int, float)):
            out[k] = round(out.get(k, 0) + b[k], 6) if k == "cost_usd" else out.get(k, 0) + b[k]
    models = {m: dict(v) for m, v in by_model(a).items()} if a.get("model") or a.get("models") else {}
    for m, v in by_model(b).items():
        t = models.setdefault(m, {})
        for k, x in v.items():
            t[k] = round(t.get(k, 0) + x, 6) if k == "cost_usd" else t.get(k, 0) + x
    out.pop("models", None)
    if len(models) > 1:
        out["models"] = models
        out["model"] = max(models, key=lambda m: models[m].get("tokens_out", 0))
    elif models:
        out["model"] = next(iter(models))
    return out


def fmt(u: dict | None) -> str:
    """'2.6k in (0 cached) / 5 out, $0.0103, claude-opus-5-5' -- for status and the report."""
    if not u:
        return "-"
    parts = []
    if "tokens_in" in u or "tokens_out" in u:
        s = f"{_k(u.get('tokens_in', 0))} in"
        if u.get("tokens_cached"):
            s += f" ({_k(u['tokens_cached'])} cached)"
        parts.append(s + f" / {_k(u.get('tokens_out', 0))} out")
    if "cost_usd" in u:
        parts.append(f"${u['cost_usd']:.4f}")
    if u.get("model"):
        parts.append(u["model"] + (f" +{len(u['models']) - 1}" if u.get("models") else ""))
    return ", ".join(parts)


def _k(n) -> str:
    n = float(n)
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{int(n)}"
