"""`dagrun submit`: several plans at once (all or nothing), and its fast path (no typer)
against the typer path: the same files on disk, the same output and errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run, write_plan


def _plan(plans: Path, g: str, prompt: str = "x", **kw) -> Path:
    return write_plan(plans, [{"id": "a", "prompt": prompt}, {"id": "b", "prompt": "y", "deps": ["a"]}],
                      name=f"{g}.json", goal=g, defaults={"agent": "true"}, **kw)


def _tree(home: Path) -> dict:
    """Every file under goals/ (relative path -> bytes), events' timestamps and worker names
    (which differ between two runs) blanked out."""
    out = {}
    for p in sorted((home / "goals").rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            data = p.read_bytes()
            if p.name == "events.jsonl":
                data = b"\n".join(json.dumps({k: v for k, v in json.loads(line).items()
                                              if k not in ("ts", "worker", "id", "pid")}, sort_keys=True).encode()
                                  for line in data.splitlines())
            out[str(p.relative_to(home))] = data
    return out


def test_submit_many_all_or_nothing(home, plans):
    good = [_plan(plans, f"g{i}") for i in range(3)]
    bad = write_plan(plans, [{"id": "a"}], name="bad.json", goal="bad")
    broken = plans / "broken.json"
    broken.write_text("{nope")
    p = run("submit", *good, bad, broken, plans / "missing.json", home=home, check=2)
    lines = p.stderr.splitlines()
    assert len(lines) == 4 and "Traceback" not in p.stderr
    assert lines[0].startswith("dagrun: ") and "bad.json" in lines[0] and "prompt" in lines[0]
    assert "broken.json" in lines[1] and "missing.json" in lines[2]
    assert lines[3] == "dagrun: nothing submitted: 3 of 6 plans refused"
    assert not (home / "goals").exists() or os.listdir(home / "goals") == []
    ok = run("submit", *good, home=home)
    assert ok.stdout.splitlines() == ["g0", "g1", "g2"]
    assert json.loads(run("status", "g2", "--json", home=home).stdout)["counts"] == {"ready": 1, "waiting": 1}
    # again: unchanged; with a changed plan for g1: refused (4) unless --replace, nothing else written
    _plan(plans, "g1", prompt="changed")
    _plan(plans, "g3")
    r = run("submit", plans / "g3.json", plans / "g1.json", home=home, check=4)
    assert "goal 'g1' already exists with a different plan" in r.stderr
    assert not (home / "goals" / "g3").exists()
    j = json.loads(run("submit", plans / "g3.json", plans / "g1.json", "--replace", "--json", home=home).stdout)
    assert [(x["goal"], x["action"]) for x in j["goals"]] == [("g3", "created"), ("g1", "replaced")]
    dup = run("submit", plans / "g3.json", plans / "g3.json", home=home, check=2)
    assert "one plan per goal" in dup.stderr


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_submit_fast_path_and_typer_write_the_same(tmp_path, plans, extra):
    files = [_plan(plans, "s1"), _plan(plans, "s2")]
    for args in ([files[0]], files):
        fast = run("submit", *args, *extra, home=tmp_path / "fast")
        slow = run("submit", *args, *extra, home=tmp_path / "slow", env={"DAGRUN_NO_FAST_PATH": "1"})
        assert fast.stdout == slow.stdout and fast.stderr == slow.stderr
        assert _tree(tmp_path / "fast") == _tree(tmp_path / "slow")
    _plan(plans, "s1", prompt="changed")
    for args in (["--dry-run", "--replace"], ["--replace"]):
        fast = run("submit", files[0], *args, *extra, home=tmp_path / "fast")
        slow = run("submit", files[0], *args, *extra, home=tmp_path / "slow", env={"DAGRUN_NO_FAST_PATH": "1"})
        assert fast.stdout == slow.stdout and fast.stderr == slow.stderr
    assert _tree(tmp_path / "fast") == _tree(tmp_path / "slow")


SUBMIT_ERRORS = [(["submit"], 2), (["submit", "missing.json"], 2), (["submit", "bad.json"], 2),
                 (["submit", "bad.json", "missing.json"], 2), (["submit", "changed.json"], 4),
                 (["submit", "--bogus", "ok.json"], 2)]


@pytest.mark.parametrize("args,code", SUBMIT_ERRORS)
def test_submit_errors_fast_and_typer_agree(home, plans, args, code):
    _plan(plans, "ok")
    run("submit", plans / "ok.json", home=home)
    write_plan(plans, [{"id": "a", "prompt": "other"}], name="changed.json", goal="ok", defaults={"agent": "true"})
    write_plan(plans, [{"id": "a"}], name="bad.json", goal="bad")
    fast = run(*args, home=home, check=code, cwd=plans)
    slow = run(*args, home=home, check=code, cwd=plans, env={"DAGRUN_NO_FAST_PATH": "1"})
    assert "Traceback" not in fast.stderr and fast.stderr.count("\n") <= 3
    if args[1:2] != ["--bogus"] and len(args) > 1:     # the fast path's errors: word for word typer's
        assert fast.stderr == slow.stderr and fast.stdout == slow.stdout


def test_submit_does_not_load_heavy_modules(home, plans):
    probe = ("import sys\nfrom dagrun.entry import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = {m.split('.')[0] for m in sys.modules} & "
             "{'typer', 'click', 'pydantic', 'rich', 'watchdog', 'filelock', 'psutil'}\n"
             "print(code, sorted(heavy), file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", probe, f"--home={home}", "submit", str(_plan(plans, "h"))],
                       capture_output=True, text=True, timeout=30)
    assert p.stderr.strip().endswith("0 []"), p.stderr
