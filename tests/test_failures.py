"""Failure handling and control (issue 5): retries with fresh context, timeouts and stalls,
cascade, soft dependencies, cancel / retry, plan edits. Real processes through the installed
`dagrun` binary; agents are small shell scripts that count their runs in files."""
from __future__ import annotations

import json
import os

from conftest import events, run, spawn, task_dir, wait_for, write_plan  # noqa: F401


def test_spare_pool_never_recycles_a_folder_with_files(tmp_path):
    """Regression: releasing a claim that still held owner.json (cancel, superseded) moved the
    whole folder into the spare pool, and owner.json later showed up in a task's attempts/."""
    from dagrun import fsio

    fsio.start_spares(str(tmp_path), threads=1, target=4)
    try:
        c = tmp_path / "claim"
        c.mkdir()
        (c / "owner.json").write_text("{}")
        try:
            fsio.rmdir(str(c))
            raise AssertionError("rmdir of a non-empty folder succeeded")
        except OSError:
            pass
        assert (c / "owner.json").exists()
        (c / "owner.json").unlink()
        assert fsio.rmdir(str(c)) and not c.exists()
        for i in range(12):
            p = tmp_path / f"n{i}"
            fsio.makedirs(str(p))
            assert list(p.iterdir()) == []
    finally:
        fsio.stop_spares()


# ------------------------------------------------------------------------------ timeouts
def _alive_with(marker: str) -> list[int]:
    import psutil
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_timeout_kills_a_term_ignoring_forking_agent_and_its_escapees(home, plans):
    """TERM to the group, kill_grace, KILL; children in the group, grandchildren, and a child
    that left the group with setsid -- all ignore TERM -- are all gone afterwards."""
    agent = ("trap '' TERM; echo started; "
             "(trap '' TERM; sleep 61.11) & "
             "(trap '' TERM; sleep 61.12 & wait) & "
             "setsid sh -c \"trap '' TERM; sleep 61.13\" & "
             "sleep 61.14; wait")
    p = write_plan(plans, [{"id": "hang", "prompt": "p", "timeout": 1, "kill_grace": 1}], goal="to",
                   defaults={"agent": agent})
    r = run("run", p, home=home, check=1)
    assert "failed: hang (timed out after 1s)" in r.stdout
    f = json.loads((task_dir(home, "to", "hang") / "failed").read_text())
    assert f["outcome"] == "timeout" and f["signal"] == 9     # the shell ignored TERM: KILL after the grace
    assert f["duration"] >= 1.9
    wait_for(lambda: not _alive_with("sleep 61.1"), 5, what="no sleep 61.1x left")
    # the attempt's stdout was kept
    assert (task_dir(home, "to", "hang") / "attempts" / "1.out").read_text() == "started\n"


def test_timeout_of_an_agent_that_dies_on_term_still_kills_its_escaped_children(home, plans):
    agent = "setsid sh -c \"trap '' TERM; sleep 61.21\" & sleep 61.22"
    p = write_plan(plans, [{"id": "t", "prompt": "p", "timeout": 0.5, "kill_grace": 5}], goal="to2",
                   defaults={"agent": agent})
    run("run", p, home=home, check=1)
    f = json.loads((task_dir(home, "to2", "t") / "failed").read_text())
    assert f["outcome"] == "timeout" and f["signal"] == 15
    wait_for(lambda: not _alive_with("sleep 61.2"), 5, what="no sleep 61.2x left")
