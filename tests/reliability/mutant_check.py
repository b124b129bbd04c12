"""Check one test of test_core_mutants.py against many mutants by hand, in one process.

    cd mutants && ../.venv/bin/python ../tests/reliability/mutant_check.py [FILE::]TEST[:i] NAME ...

TEST is a test function of tests/reliability/test_core_mutants.py, or of FILE (a test file's
path from the repository root, e.g. tests/test_scheduler.py) -- its copy under mutants/: `cp`
the file there first when it changed since mutmut's last run; `:i` picks the i-th case
of a parametrized one, `:*` runs every case (KILLED if one fails); NAME is a mutant (`dagrun.lifecycle.x_keep_captures__mutmut_62`, "" for
the original code, which must pass). Prints KILLED or SURVIVED per name. The same as
`MUTANT_UNDER_TEST=NAME pytest -n 0 ... -k TEST` per mutant (mutmut's trampolines read that
variable at each call), but mutants/dagrun/plan.py (19 MB of mutants) is imported once, not
once per mutant: about a second per mutant instead of a minute on the loaded machine.
Only for tests whose fixtures are tmp_path, plans, home, monkeypatch and their parameters. Not a test (no test_ prefix):
a helper for README.md "Mutation testing".
"""
import importlib.util
import inspect
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["DAGRUN_MUTMUT"] = "1"
sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests", "reliability"))
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))


def load(path: str):
    """The test module at path (relative to mutants/), imported once."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)     # (dataclasses look it up)
    spec.loader.exec_module(mod)
    return mod


def main(spec: str, names: list[str]) -> None:
    path, _, spec = spec.rpartition("::")
    M = load(path or "tests/reliability/test_core_mutants.py")
    fname, _, pidx = spec.partition(":")
    fn = getattr(M, fname)
    cases = [{}]
    for m in getattr(fn, "pytestmark", []):
        if m.name == "parametrize":
            argnames = [a.strip() for a in m.args[0].split(",")] if isinstance(m.args[0], str) else list(m.args[0])
            values = [getattr(v, "values", v) for v in m.args[1]]          # pytest.param(...) too
            values = values if pidx == "*" else [values[int(pidx or 0)]]
            cases = [dict(zip(argnames, v if len(argnames) > 1 else (v,))) for v in values]
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        for i, params in enumerate(cases):
            killed = run_one(fn, params)
            if killed:
                print("KILLED", name, f"(case {i})" if len(cases) > 1 else "", killed, flush=True)
                break
        else:
            print("SURVIVED", name, flush=True)


def run_one(fn, params: dict) -> str:
    """Run fn with its fixtures; "" if it passed, else what it raised."""
    d = tempfile.mkdtemp(prefix="mutant-check-")
    kw = dict(params)
    wants = inspect.signature(fn).parameters
    mp = pytest.MonkeyPatch()
    if "tmp_path" in wants:
        kw["tmp_path"] = Path(d)
    if "plans" in wants:                 # conftest's fixtures of the same names
        kw["plans"] = Path(d, "plans")
        kw["plans"].mkdir()
    if "home" in wants:
        kw["home"] = Path(d, "home")
    if "monkeypatch" in wants:
        kw["monkeypatch"] = mp
    try:
        fn(**kw)
        return ""
    except BaseException as e:    # what the mutant raised, a failed assertion, pytest's Failed
        if isinstance(e, KeyboardInterrupt):
            raise
        return f"{type(e).__name__} {(str(e).splitlines() or [''])[0][:100]}"
    finally:
        mp.undo()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
