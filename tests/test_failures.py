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
