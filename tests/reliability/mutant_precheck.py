"""Pre-check mutants that may loop: a fork per mutant runs fixture-less test functions under a CPU limit.

    cd mutants && nice -n 19 ../.venv/bin/python ../tests/reliability/mutant_precheck.py CPU_SECS FILE::TEST[,TEST...] NAME ...

mutant_sweep.py gives a mutant's child a CPU limit worked out from *all* its tests' recorded
times (mutmut's rule): for `plan._value_lines` (420 tests, ~27 s) ~2 min of CPU for each
mutant whose scan stops advancing. This runs only the named test functions of FILE (a path
under mutants/, functions without fixtures), in a child per mutant with MUTANT_UNDER_TEST set
and RLIMIT_CPU = CPU_SECS, and appends to mutants/sweep.jsonl what mutant_sweep.py would:
"killed" (a test raised), "timeout" (the CPU limit); a mutant that passes is printed
"passed" and not logged -- run the sweep on it (its whole test set). Then
`mutant_sweep.py --meta-from-log` copies the verdicts into the .meta files.
Not a test (no test_ prefix): a helper for README.md "Mutation testing".
"""
import importlib
import importlib.util
import json
import os
import resource
import signal
import sys
import time

os.environ["DAGRUN_MUTMUT"] = "1"
os.environ["MUTANT_UNDER_TEST"] = ""
for d in ("", "tests", os.path.join("tests", "reliability")):
    sys.path.insert(0, os.path.join(os.getcwd(), d))


def main(argv: list[str]) -> int:
    cpu, (fpath, _, tests), names = int(argv[0]), argv[1].partition("::"), argv[2:]
    spec = importlib.util.spec_from_file_location(os.path.basename(fpath)[:-3], fpath)
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fns = [getattr(mod, t) for t in tests.split(",")]
    importlib.import_module("dagrun.plan")      # the mutated tree, imported once
    for fn in fns:
        fn()                                    # the original code passes
    with open("sweep.jsonl", "a") as log:
        for name in names:
            t0 = time.monotonic()
            pid = os.fork()
            if pid == 0:
                os.environ["MUTANT_UNDER_TEST"] = name
                resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
                for i, fn in enumerate(fns):
                    try:
                        fn()
                    except BaseException:
                        os._exit(10 + i)
                os._exit(0)
            _, st = os.waitpid(pid, 0)
            secs = round(time.monotonic() - t0, 3)
            if os.WIFSIGNALED(st) and os.WTERMSIG(st) in (signal.SIGXCPU, signal.SIGKILL):
                rec = {"name": name, "status": "timeout", "by": [], "how": f"SIGXCPU (precheck, {cpu} s CPU)", "secs": secs}
            elif os.WIFEXITED(st) and os.WEXITSTATUS(st) >= 10:
                rec = {"name": name, "status": "killed", "by": [f"{fpath}::{fns[os.WEXITSTATUS(st) - 10].__name__} (call)"],
                       "how": "precheck", "secs": secs}
            else:
                print("passed", name, flush=True)
                continue
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(rec["status"], name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
