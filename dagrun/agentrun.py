"""The preset adapter: `python -m dagrun.agentrun NAME [ARGS...]`, run *as* the task's agent.

It runs the preset's real CLI (command + the preset's output-format args + the task's extra
args) with the prompt on stdin (inherited), and

- keeps the tool's raw stdout in $DAGRUN_RAW_FILE (published as tasks/<t>/raw on commit),
- forwards the tool's stderr unchanged (stderr.log) while keeping its tail for the parser,
- prints only the extracted answer on stdout, so `output` is the answer, never JSON,
- appends one usage line per model to $DAGRUN_USAGE_FILE (tokens_in/out/cached, cost_usd, model),
- turns the tool's hidden failures (an API error on stdout with exit 1, aider's exit 0 after
  an API failure, an error object on stderr, an empty answer) into a non-zero exit and a last
  stderr line `dagrun-agent: @NAME: <the tool's message>`, which the engine puts into the
  attempt's failure reason.

Runs on every agent start: imports only the standard library modules it needs (no orjson,
no typer); about 40 ms of interpreter start on top of the tool.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

from . import mcpconfig, presets
from .errors import PlanError

from .usage import ERROR_PREFIX
TAIL = 64 * 1024
HEARTBEAT_EVERY = 1.0      # s
ANSWER_FILE = "answer"     # beside $DAGRUN_CHECK_FILE: the answer the check reads as $DAGRUN_OUTPUT


class Result:
    def __init__(self, answer: str | None = None, usage: list[dict] | None = None, error: str | None = None):
        self.answer = answer
        self.usage = usage or []
        self.error = error


def main(argv: list[str] | None = None) -> int:
    """python -m dagrun.agentrun [--check JSON_ARGV [--check-timeout S]] (PRESET [ARGS...] | --sh COMMAND)"""
    argv = list(sys.argv[1:] if argv is None else argv)
    check, check_timeout = None, 600.0
    while argv[:1] in (["--check"], ["--check-timeout"]):
        if len(argv) < 2:
            return _fail(f"{argv[0]} needs a value", 2)
        try:
            if argv[0] == "--check":
                check = json.loads(argv[1])
                if not isinstance(check, list) or not check or not all(isinstance(a, str) for a in check):
                    raise ValueError("not a non-empty array of strings")
            else:
                check_timeout = float(argv[1])
        except ValueError as e:
            return _fail(f"bad {argv[0]} {argv[1]!r}: {e}", 2)
        argv = argv[2:]
    if not argv or argv[0] == "--sh" and len(argv) != 2:
        return _fail("usage: python -m dagrun.agentrun [--check JSON [--check-timeout S]] (PRESET [ARGS...] | --sh COMMAND)", 2)
    if argv[0] == "--sh":
        rc, answer = _run_shell(argv[1])
    else:
        rc, answer = _run_preset(argv[0], argv[1:])
    if rc != 0 or answer is None:
        return rc or 1
    if check is not None:
        ok, answer = _check(check, check_timeout, answer)
        if not ok:
            return 1
    if isinstance(answer, bytes):
        sys.stdout.buffer.write(answer)
    else:
        with open(answer, "rb") as f:       # a plain command's stdout, kept while its check ran
            while chunk := f.read(1 << 20):
                sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    return 0


def _run_preset(name: str, extra: list[str]) -> tuple[int, bytes | None]:
    """Run a preset's CLI; (0, the answer) or (exit code, None) after saying why on stderr."""
    try:
        table = presets.load()
    except PlanError as e:
        return _fail(str(e), 2), None
    row = table.get(name)
    if row is None:
        return _fail(f"unknown agent preset @{name} (known: {', '.join('@' + n for n in sorted(table))})", 2), None
    env = dict(os.environ)
    env.update(row.get("env", {}))
    scratch = None
    if mcpconfig.OPTION in extra:          # give the CLI `dagrun mcp` with this home, per run
        extra = [a for a in extra if a != mcpconfig.OPTION]
        client = mcpconfig.BY_PARSER.get(row.get("parser", "text"))
        if client is None:
            return _fail(f"{mcpconfig.OPTION}: preset @{name} cannot be given an MCP server per run "
                         f"(supported: the presets with the parser of "
                         f"{', '.join('@' + c for c in mcpconfig.BY_PARSER.values())})", 2), None
        side = os.environ.get("DAGRUN_CHECK_FILE")       # files go into the claim (a scratch dir by hand)
        if side:
            side = os.path.dirname(side)
        else:
            side = scratch = tempfile.mkdtemp(prefix="dagrun-mcp.")
        try:
            mcp = mcpconfig.run_args(client, presets.home_root(), mcpconfig.dagrun_exe(), side, env)
        except mcpconfig.Unavailable as e:
            return _fail(str(e), 2), None
        for path, content in mcp.files.items():
            try:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                with open(path, "w") as f:
                    f.write(content)
            except OSError as e:
                return _fail(f"{mcpconfig.OPTION}: cannot write {path}: {e.strerror}", 1), None
        extra = mcp.args + extra
        env.update(mcp.env)
    cmd = list(row["command"]) + list(row.get("args", [])) + extra
    raw_path = os.environ.get("DAGRUN_RAW_FILE")
    tmp = None
    if not raw_path:
        fd, tmp = tempfile.mkstemp(prefix="dagrun-raw.")
        os.close(fd)
        raw_path = tmp
    try:
        rc, err_tail = _run(cmd, env, raw_path, name)
        if rc is None:
            return 127, None
        with open(raw_path, "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    finally:
        if tmp:
            os.unlink(tmp)
        if scratch:
            import shutil
            shutil.rmtree(scratch, ignore_errors=True)
    res = PARSERS[row.get("parser", "text")](raw, err_tail, rc)
    model = _model_from(cmd, row.get("model_flags", []))
    _write_usage(res.usage, model)
    if rc != 0 or res.error or not (res.answer or "").strip():
        msg = res.error or ((_last_line(err_tail) or _last_line(raw)) if rc != 0 else None) or "empty answer"
        if rc < 0:
            msg += f" (killed by signal {-rc})"
        return _fail(f"@{name}: {msg}", rc if rc > 0 else (128 - rc if rc < 0 else 1)), None
    out = res.answer if res.answer.endswith("\n") else res.answer + "\n"
    return 0, out.encode("utf-8", "surrogateescape")


def _side_path(name: str) -> str:
    """A file beside $DAGRUN_CHECK_FILE in the claim (a scratch file when run by hand)."""
    base = os.environ.get("DAGRUN_CHECK_FILE")
    if base:
        return os.path.join(os.path.dirname(base), name)
    fd, path = tempfile.mkstemp(prefix=f"dagrun-{name}.")
    os.close(fd)
    return path


def _run_shell(command: str) -> tuple[int, str | None]:
    """A plain agent command with a check: its stdout goes to a file the check can read."""
    path = _side_path(ANSWER_FILE)
    with open(path, "wb") as out:
        try:
            p = subprocess.Popen(["/bin/sh", "-c", command], stdout=out)
        except OSError as e:
            return _fail(f"cannot run the agent: {e.strerror or e}", 127), None
    _forward_signals(p)
    rc = p.wait()
    if rc != 0:
        return (rc if rc > 0 else 128 - rc), None
    return 0, path


def _check(argv: list[str], timeout: float, answer: bytes | str) -> tuple[bool, bytes | str]:
    """Run the acceptance check with DAGRUN_OUTPUT = the answer's file. Its output goes to our
    stderr (stderr.log) and, as a tail, into $DAGRUN_CHECK_FILE (the attempt's record)."""
    if isinstance(answer, bytes):
        path = _side_path(ANSWER_FILE)
        with open(path, "wb") as f:
            f.write(answer)
    else:
        path = answer
    env = dict(os.environ, DAGRUN_OUTPUT=path)
    shown = " ".join(argv)
    t0 = time.monotonic()
    sys.stderr.write(f"dagrun-check: running {shown}\n")
    sys.stderr.flush()
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=env, process_group=0)
    except OSError as e:
        res = {"argv": argv, "passed": False, "exit_code": None, "timed_out": False, "duration": 0.0,
               "tail": f"cannot run {argv[0]!r}: {e.strerror or e}"}
        _write_check(res)
        _fail(f"check failed: cannot run {argv[0]!r}: {e.strerror or e}", 1)
        return False, answer
    _forward_signals(p, group=True)
    tail, timed_out = _tee(p, time.monotonic() + timeout)
    rc = p.wait()
    res = {"argv": argv, "passed": rc == 0 and not timed_out, "exit_code": rc if rc >= 0 else None,
           "signal": -rc if rc < 0 else None, "timed_out": timed_out,
           "duration": round(time.monotonic() - t0, 3), "tail": _tail_text(tail)}
    _write_check(res)
    if not res["passed"]:
        why = f"timed out after {timeout:g}s" if timed_out else (
            f"exit code {rc}" if rc >= 0 else f"killed by signal {-rc}")
        _fail(f"check failed: {shown}: {why}", 1)
    return res["passed"], answer


def _tee(p, deadline: float) -> tuple[bytes, bool]:
    """Copy the check's output to our stderr, keep its tail; at the deadline TERM its group,
    KILL it 2 s later, and stop waiting for the pipe 1 s after that (an escaped holder)."""
    fd = p.stdout.fileno()
    tail = bytearray()
    timed_out = False
    kill_at = give_up_at = None
    while True:
        now = time.monotonic()
        if not timed_out and now >= deadline:
            timed_out = True
            _killpg(p.pid, signal.SIGTERM)
            kill_at = now + 2.0
        if kill_at is not None and now >= kill_at:
            _killpg(p.pid, signal.SIGKILL)
            kill_at, give_up_at = None, now + 1.0
        if give_up_at is not None and now >= give_up_at:
            break
        nxt = kill_at if kill_at is not None else give_up_at if give_up_at is not None else (
            None if timed_out else deadline)
        r, _, _ = select.select([fd], [], [], None if nxt is None else max(0.0, nxt - now))
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        _pass_on(chunk, tail)
    p.stdout.close()
    if timed_out:
        _killpg(p.pid, signal.SIGKILL)     # whatever of the check's group still holds on
    return bytes(tail), timed_out


def _pass_on(chunk: bytes, tail: bytearray) -> None:
    """Copy a child's chunk to our stderr (the attempt's stderr capture) and keep the last
    TAIL bytes of it (for the failure reason / the check's record)."""
    try:
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
    except OSError:
        pass
    tail += chunk
    if len(tail) > 2 * TAIL:
        del tail[:-TAIL]


def _tail_text(data: bytes, nbytes: int = 2000, lines: int = 20) -> str:
    text = data[-nbytes:].decode("utf-8", "replace")
    if len(data) > nbytes:
        text = text.split("\n", 1)[-1]
    return "\n".join(text.splitlines()[-lines:])


def _write_check(res: dict) -> None:
    path = os.environ.get("DAGRUN_CHECK_FILE")
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(res, f)
    os.replace(tmp, path)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _forward_signals(p, group: bool = False) -> None:
    """A runner that signals only us (or the engine's TERM to our group): pass it on."""
    def forward(signum, frame):
        try:
            if group:
                os.killpg(p.pid, signum)
            else:
                p.send_signal(signum)
        except OSError:
            pass
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)


def _run(cmd: list[str], env: dict, raw_path: str, name: str) -> tuple[int | None, str]:
    with open(raw_path, "wb") as raw:
        try:
            p = subprocess.Popen(cmd, stdout=raw, stderr=subprocess.PIPE, env=env)
        except OSError as e:
            _fail(f"@{name}: cannot run {cmd[0]!r}: {e.strerror or e} "
                  f"(set its \"command\" in $DAGRUN_HOME/presets.json)", 127)
            return None, ""

    _forward_signals(p)
    tail = bytearray()
    fd = p.stderr.fileno()
    beat = _Heartbeat(raw_path)
    while True:
        try:
            ready, _, _ = select.select([fd], [], [], HEARTBEAT_EVERY)
            beat.check()            # the tool's stdout goes to the raw file: show its progress
            if not ready:
                continue
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        _pass_on(chunk, tail)
    p.stderr.close()
    rc = p.wait()
    return rc, bytes(tail[-TAIL:]).decode("utf-8", "replace")


class _Heartbeat:
    """stall_timeout sees our stdout and stderr; a preset's stdout goes to the raw file
    instead, so while that file grows we touch $DAGRUN_HEARTBEAT_FILE (at most once a
    second), exactly what `dagrun heartbeat` does."""

    def __init__(self, raw_path: str):
        self.raw = raw_path
        self.path = os.environ.get("DAGRUN_HEARTBEAT_FILE")
        self.size = 0
        self.at = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if not self.path or now - self.at < HEARTBEAT_EVERY:
            return
        self.at = now
        try:
            size = os.stat(self.raw).st_size
        except OSError:
            return
        if size > self.size:
            self.size = size
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                os.close(fd)
                os.utime(self.path)
            except OSError:
                pass


def _fail(msg: str, code: int) -> int:
    sys.stderr.write(ERROR_PREFIX + " ".join(msg.split()) + "\n")
    sys.stderr.flush()
    return code


def _last_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:500]
    return None


def _model_from(cmd: list[str], flags: list[str]) -> str | None:
    model = None
    for i, w in enumerate(cmd):
        for f in flags:
            if w == f and i + 1 < len(cmd):
                model = cmd[i + 1]
            elif w.startswith(f + "="):
                model = w[len(f) + 1:]
    return model


def _write_usage(lines: list[dict], model: str | None) -> None:
    path = os.environ.get("DAGRUN_USAGE_FILE")
    if not path or not lines:
        return
    data = b""
    for u in lines:
        u = {k: v for k, v in u.items() if v is not None}
        if model and not u.get("model"):
            u["model"] = model
        data += json.dumps(u, separators=(",", ":")).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _num(v) -> float | int | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _json_objects(text: str) -> list:
    """The whole text as one JSON value, else one per line (stream formats)."""
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _inner_message(msg) -> str:
    """Tools wrap the API's JSON error body in a string: show its innermost message."""
    for _ in range(3):
        if not isinstance(msg, str) or not msg.lstrip().startswith("{"):
            break
        try:
            d = json.loads(msg)
        except ValueError:
            break
        e = d.get("error", d) if isinstance(d, dict) else None
        if isinstance(e, dict) and "message" in e:
            msg = e["message"]
        else:
            break
    return " ".join(str(msg).split())


# ----------------------------------------------------------------------------- parsers
def parse_claude(raw: str, err: str, rc: int) -> Result:
    objs = [o for o in _json_objects(raw) if isinstance(o, dict)]
    results = [o for o in objs if o.get("type") == "result" or "result" in o]
    if not results:
        text = raw.strip()
        return Result(answer=text, error=(_last_line(raw) or _last_line(err)) if rc != 0 else None)
    r = results[-1]
    usage = []
    mu = r.get("modelUsage")
    if isinstance(mu, dict) and mu:
        for model, m in mu.items():
            if not isinstance(m, dict):
                continue
            tin = sum(_num(m.get(k)) or 0 for k in ("inputTokens", "cacheReadInputTokens", "cacheCreationInputTokens"))
            usage.append({"model": model, "tokens_in": tin, "tokens_out": _num(m.get("outputTokens")),
                          "tokens_cached": _num(m.get("cacheReadInputTokens")), "cost_usd": _num(m.get("costUSD"))})
    elif isinstance(r.get("usage"), dict) and any(_num(r["usage"].get(k)) for k in ("input_tokens", "output_tokens")):
        u = r["usage"]
        tin = sum(_num(u.get(k)) or 0 for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
        usage.append({"tokens_in": tin, "tokens_out": _num(u.get("output_tokens")),
                      "tokens_cached": _num(u.get("cache_read_input_tokens")), "cost_usd": _num(r.get("total_cost_usd"))})
    answer = r.get("result") if isinstance(r.get("result"), str) else ""
    error = None
    if r.get("is_error") or rc != 0:
        error = " ".join((answer or r.get("subtype") or "error").split())[:500]
        answer = ""
    return Result(answer, usage, error)


def parse_codex(raw: str, err: str, rc: int) -> Result:
    answer, error, usage = "", None, []
    for o in _json_objects(raw):
        if not isinstance(o, dict):
            continue
        t = o.get("type")
        item = o.get("item") if isinstance(o.get("item"), dict) else {}
        if t == "item.completed" and item.get("type") == "agent_message" and isinstance(item.get("text"), str):
            answer = item["text"]
        elif t == "turn.completed" and isinstance(o.get("usage"), dict):
            u = o["usage"]
            usage.append({"tokens_in": _num(u.get("input_tokens")), "tokens_out": _num(u.get("output_tokens")),
                          "tokens_cached": _num(u.get("cached_input_tokens"))})
        elif t == "error":
            error = _inner_message(o.get("message", "error"))
        elif t == "turn.failed":
            e = o.get("error")
            error = _inner_message(e.get("message", "turn failed") if isinstance(e, dict) else "turn failed")
    if rc != 0 and not error:
        error = _last_line(err) or _last_line(raw)
    return Result(answer, usage, error)


def parse_gemini(raw: str, err: str, rc: int) -> Result:
    objs = [o for o in _json_objects(raw) if isinstance(o, dict)]
    d = objs[-1] if objs else {}
    usage = []
    models = (d.get("stats") or {}).get("models") if isinstance(d.get("stats"), dict) else None
    if isinstance(models, dict):
        for model, m in models.items():
            tok = m.get("tokens") if isinstance(m, dict) else None
            if isinstance(tok, dict):
                usage.append({"model": model, "tokens_in": _num(tok.get("prompt", tok.get("input"))),
                              "tokens_out": _num(tok.get("candidates")), "tokens_cached": _num(tok.get("cached"))})
    error = None
    e = d.get("error")
    if e is None:
        e = _error_object(err)       # in -o json mode an API failure is a JSON object on stderr
    if e is not None:
        error = _inner_message(e.get("message", "error") if isinstance(e, dict) else str(e))
    elif rc != 0:
        error = _last_line(err) or _last_line(raw)
    answer = d.get("response") if isinstance(d.get("response"), str) else ("" if objs else raw.strip())
    return Result(answer, usage, error)


def _error_object(text: str):
    starts = [m.start() for m in re.finditer(r"(?m)^\{", text)]
    for s in reversed(starts):
        try:
            d = json.loads(text[s:])
        except ValueError:
            continue
        if isinstance(d, dict) and "error" in d:
            return d["error"]
    return None


_AIDER_BANNER = re.compile(r"^(Aider v|Model:|Main model:|Weak model:|Editor model:|Git repo:|Repo-map:|Added |"
                           r"Cur working dir:|Note:|Warning|https://aider\.chat)")
_AIDER_TOKENS = re.compile(r"^Tokens: (.*)$", re.M)
_AIDER_ERROR = re.compile(r"^(litellm\.\w+|openai\.\w+Error|The API provider|Error:)", re.M)


def _kilo(s: str) -> int:
    s = s.strip()
    mult = {"k": 1e3, "K": 1e3, "M": 1e6}.get(s[-1:], 1)
    try:
        return int(round(float(s.rstrip("kKM")) * mult))
    except ValueError:
        return 0


def parse_aider(raw: str, err: str, rc: int) -> Result:
    lines = raw.splitlines()
    i = 0
    while i < len(lines) and (not lines[i].strip() or _AIDER_BANNER.match(lines[i])):
        i += 1
    body = [ln for ln in lines[i:] if not ln.startswith("Tokens: ")]
    answer = "\n".join(body).strip("\n")
    usage = []
    for m in _AIDER_TOKENS.finditer(raw):
        s = m.group(1)
        sent = re.search(r"([\d.]+[kKM]?) sent", s)
        recv = re.search(r"([\d.]+[kKM]?) received", s)
        hit = re.search(r"([\d.]+[kKM]?) cache hit", s)
        cost = re.search(r"Cost: \$([\d.]+) message", s)
        usage.append({"tokens_in": _kilo(sent.group(1)) if sent else None,
                      "tokens_out": _kilo(recv.group(1)) if recv else None,
                      "tokens_cached": _kilo(hit.group(1)) if hit else None,
                      "cost_usd": float(cost.group(1)) if cost else None})
    error = None
    if not usage:      # no call was billed: an API failure aider only reports in its text (exit 0)
        m = _AIDER_ERROR.search(raw) or _AIDER_ERROR.search(err)
        if m:
            src = raw if _AIDER_ERROR.search(raw) else err
            error = src[m.start():].splitlines()[0].strip()[:500]
            answer = ""
    if rc != 0 and not error:
        error = _last_line(err) or _last_line(raw)
    return Result(answer, usage, error)


_LLM_USAGE = re.compile(r"^Token usage: ([\d,]+) input, ([\d,]+) output", re.M)


def parse_llm(raw: str, err: str, rc: int) -> Result:
    usage = [{"tokens_in": int(m.group(1).replace(",", "")), "tokens_out": int(m.group(2).replace(",", ""))}
             for m in _LLM_USAGE.finditer(err)]
    error = None
    if rc != 0:
        error = _last_line(err) or _last_line(raw)
    return Result(raw, usage, error)


def parse_text(raw: str, err: str, rc: int) -> Result:
    return Result(raw, [], (_last_line(err) or _last_line(raw)) if rc != 0 else None)


PARSERS = {"claude-json": parse_claude, "codex-jsonl": parse_codex, "gemini-json": parse_gemini,
           "aider-text": parse_aider, "llm-text": parse_llm, "text": parse_text}
assert set(PARSERS) == set(presets.PARSERS)


if __name__ == "__main__":
    sys.exit(main())
