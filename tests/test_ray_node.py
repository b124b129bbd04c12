"""The Ray runner's remote function on the node, without Ray (rayrun.run_agent is a plain
function; a plain Python process plays the Ray worker, as in test_ray_contract's guard test):
what it ships back -- the agent's exit status, stdout (cut at max_output), stderr -- and what
it feeds the agent (the prompt on stdin, however big), through the one-tuple entry the Ray
task calls; and what the driver makes of a result that arrives after a cancel. Fast and
Ray-free: part of the default suite."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from dagrun import rayrun
from dagrun.executor import Launch

NODE = r"""
import json, os, sys
from dagrun import rayrun
cwd = sys.argv[1]
env = {**os.environ, "DAGRUN_RUN_ID": "node-%d" % os.getpid()}
big = bytes(range(256)) * 800                    # 200 KiB: more than a pipe holds
out = {}
for name, agent, prompt, limit in (
        ("cat", "cat", big, None),
        ("empty", "cat; printf '[%s]' \"$PWD\"", b"", None),
        ("codes", "printf out; printf err >&2; exit 3", b"p", None),
        ("cut", "printf 123456789", b"p", 4),
        ("bigerr", "cat >&2", big, 10),
        ("signal", "kill -TERM $$", b"p", None)):
    r = rayrun.attempt((agent, cwd, dict(env, DAGRUN_RUN_ID=env["DAGRUN_RUN_ID"] + name), prompt, limit, 1.0, 0.1))
    out[name] = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in r.items()}
print(json.dumps(out))
"""


def test_the_remote_function_ships_exit_code_stdout_and_stderr_back_and_feeds_the_prompt(tmp_path):
    """Fails if the prompt does not reach the agent's stdin whole (a 200 KiB one), if stdout or
    stderr come back wrong or empty, if stdout is not cut at max_output with over_limit set
    (stderr is never cut), or if the exit code or the killing signal is lost."""
    env = {k: v for k, v in os.environ.items() if k != "DAGRUN_RUN_ID"}
    p = subprocess.run([sys.executable, "-c", NODE, str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=120, start_new_session=True)
    assert p.returncode == 0, p.stderr[-3000:]
    r = {k: {f: (bytes.fromhex(v) if f in ("stdout", "stderr") else v) for f, v in d.items()}
         for k, d in json.loads(p.stdout).items()}
    big = bytes(range(256)) * 800
    assert r["cat"]["code"] == 0 and r["cat"]["stdout"] == big and r["cat"]["stderr"] == b""
    assert not r["cat"]["over_limit"]
    assert r["empty"]["stdout"] == f"[{tmp_path}]".encode() and r["empty"]["code"] == 0
    assert (r["codes"]["code"], r["codes"]["stdout"], r["codes"]["stderr"]) == (3, b"out", b"err")
    assert (r["cut"]["stdout"], r["cut"]["over_limit"]) == (b"1234", True)
    assert r["bigerr"]["stderr"] == big and r["bigerr"]["stdout"] == b"" and not r["bigerr"]["over_limit"]
    assert r["signal"]["code"] == -signal.SIGTERM
    assert all(d["node"] for d in r.values())


def test_an_agent_killed_by_its_cancel_is_reported_as_cancelled(tmp_path):
    """A forced cancel (kill()) SIGKILLs the agent; its Ray task can still return the agent's
    death as an ordinary result in the instant before the worker exits (seen under load in
    test_ray_contract's forced-cancel test). The attempt is the cancel's all the same: its
    reason says so, as when Ray reports the task cancelled. Fails if such a result is
    reported as a plain signal death."""
    r = rayrun.RayRunner()
    try:
        def launch(i):
            return Launch(agent="true", cwd=str(tmp_path), env={}, stdin_path=str(tmp_path / "p"),
                          stdout_path=str(tmp_path / f"out{i}"), stderr_path=str(tmp_path / f"err{i}"),
                          run_id=f"r{i}", runner="ray", spec={})
        for i, stop in ((1, signal.SIGKILL), (2, None)):
            h = {"runner": "ray", "task_id": f"t{i}", "driver": os.getpid(), "run_id": f"r{i}"}
            t = r._tasks[f"t{i}"] = rayrun._Task(None, h, launch(i), 1e18, born=1e18)
            t.stop_sig = stop
            r._done(f"t{i}", {"code": -signal.SIGKILL, "stdout": b"", "stderr": b"", "over_limit": False, "node": "n"})
        ex = r.poll({"task_id": "t1"})
        assert ex.signal == signal.SIGKILL and "cancelled" in ex.describe(), ex.describe()
        ex = r.poll({"task_id": "t2"})
        assert ex.signal == signal.SIGKILL and "cancelled" not in ex.describe(), ex.describe()
    finally:
        r.close()
