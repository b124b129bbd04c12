"""Tally mutmut's results per module (and per function with -f) from mutants/dagrun/*.meta.

    .venv/bin/python tests/reliability/mutmut_summary.py [-f] [-s] [module ...]
    .venv/bin/python tests/reliability/mutmut_summary.py -p module [function ...]

Columns: mutants; run (a verdict exists); killed (a test failed); timeout (the mutant's tests
ran past mutmut's CPU limit); survived; no test (no selected test calls the function);
not run; and the score killed / run (a mutant without a test counts as not killed), with
timeouts counted as killed beside it.
-s lists the surviving, timed-out and untested mutants by name (for tests/reliability/mutants.md).
-p lists the mutants of one module (of the named functions only, e.g. `claim_task`,
`Scheduler.load`) that have no result yet: `mutmut run PATTERN` re-runs *every* mutant
the pattern matches, finished ones too, so a resumed run of part of a module takes these names.
Not a test (no test_ prefix): a helper for README.md "Mutation testing".
"""
from __future__ import annotations

import collections
import json
import os
import re
import sys

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no test", 33: "no test", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not run"}
MODULES = ("plan", "scheduler", "claim", "lifecycle", "transitions")


def tally(module: str, root: str = "mutants/dagrun") -> dict[str, collections.Counter]:
    with open(os.path.join(root, module + ".py.meta")) as f:
        codes = json.load(f)["exit_code_by_key"]
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, code in codes.items():
        fn = re.sub(r"__mutmut_\d+$", "", name.split(".", 2)[2])
        fn = re.sub(r"^x_", "", fn) if fn.startswith("x_") else fn[2:].replace("\u01c1", ".")
        st = STATUS.get(code, f"exit {code}")
        out[fn][st] += 1
        out["(module)"][st] += 1
    return out


def row(name: str, c: collections.Counter) -> str:
    total = sum(c.values())
    run = total - c["not run"]
    judged = run - c["skipped"]        # a mutant no test calls is not killed: it counts against the score
    score = 100.0 * c["killed"] / judged if judged else 0.0
    with_t = 100.0 * (c["killed"] + c["timeout"]) / judged if judged else 0.0
    return (f"| {name} | {total} | {run} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no test']} | "
            f"{c['not run']} | {score:.1f} % | {with_t:.1f} % |")


def pending(module: str, functions: list[str], root: str = "mutants/dagrun") -> list[str]:
    with open(os.path.join(root, module + ".py.meta")) as f:
        codes = json.load(f)["exit_code_by_key"]
    out = []
    for name, code in codes.items():
        fn = re.sub(r"__mutmut_\d+$", "", name.split(".", 2)[2])
        fn = re.sub(r"^x_", "", fn) if fn.startswith("x_") else fn[2:].replace("\u01c1", ".")
        if code is None and (not functions or fn in functions):
            out.append(name)
    return out


def main(argv: list[str]) -> None:
    if argv[:1] == ["-p"]:
        print("\n".join(pending(argv[1], argv[2:])))
        return
    by_fn, names = "-f" in argv, "-s" in argv
    mods = [a for a in argv if not a.startswith("-")] or list(MODULES)
    if names:
        for m in mods:
            with open(f"mutants/dagrun/{m}.py.meta") as f:
                codes = json.load(f)["exit_code_by_key"]
            for name, code in sorted(codes.items()):
                if STATUS.get(code) in ("survived", "timeout", "no test"):
                    print(STATUS[code], name)
        return
    print("| module / function | mutants | run | killed | timeout | survived | no test | not run | killed % | killed+timeout % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in mods:
        t = tally(m)
        print(row(f"**{m}.py**", t["(module)"]))
        if by_fn:
            for fn, c in sorted(t.items()):
                if fn != "(module)":
                    print(row(f"{m}.{fn}", c))


if __name__ == "__main__":
    main(sys.argv[1:])
