"""Run mutmut's mutants in one pytest session: collect once, fork per mutant, fastest test first.

    cd mutants && DAGRUN_MUTMUT=1 nice -n 19 ../.venv/bin/python ../tests/reliability/mutant_sweep.py \\
        [--pending] [--meta] [--log FILE] [--limit N] PATTERN ...

mutmut 3.8.1 forks one child per mutant that starts a fresh `pytest.main` (collection of the
whole selection, then the function's tests in collection order, `-x`): on this machine 2-40
mutants a minute. This driver uses mutmut's own generated tree (`mutants/`, from a first
`mutmut run`) and its map of function -> tests (`mutants/mutmut-stats.json`), collects the
selection of setup.cfg ONCE, and then per mutant forks the collected session and runs in the
child, with MUTANT_UNDER_TEST set (mutmut's trampolines read it at each call), the tests that
call the mutant's function, **fastest first** (mutmut's recorded durations), stopping at the
first failing report (setup, call or teardown): killed. All pass: survived. The function has
no test: "no test". The child runs under mutmut's CPU limit (RLIMIT_CPU = ceil((sum of the
tests' durations + timeout_constant) * timeout_multiplier * 2), as mutmut), with a wall-clock
backstop (4 x that + 30 s) that kills its process group: both are **timeouts** (not kills).

Before the mutants, the selected tests run once unmutated in a child in the same order (the
baseline): a test that fails there is left out of every mutant's run and named (a kill by a
test that fails anyway would be false).

PATTERN: fnmatch patterns or names of mutants (`dagrun.plan.*`, `dagrun.claim.x_judge__mutmut_3`).
--pending: only mutants without a result in the .meta files. --meta: write each verdict into
mutants/dagrun/<module>.py.meta with mutmut's exit codes (1 killed, 0 survived, 33 no tests,
36 timeout), so `mutmut results` and tests/reliability/mutmut_summary.py report them.
--log: one JSON line per mutant (name, status, the killing test, seconds), appended; default
mutants/sweep.jsonl (the last line of a name counts). --meta-from-log: copy the log's verdicts
of the mutants matched into the .meta files (after sweeps that were stopped), run nothing. --unsure-only: only the mutants --log has as "unsure" (the second pass
while first passes still run). --limit N: stop after N mutants. --no-baseline: skip the baseline.
--killers-first K: run first the (up to K) tests that killed the latest mutants of the same
function (read from --log, then as the run goes), then the rest fastest first: the verdict is
the same (killed iff one test fails), but a killed mutant whose killer is a slow or late test
is found at once instead of after every faster test (the validator's: 20-40 s -> ~0.2 s).

Only the tests that call a function of the chosen mutants (mutmut-stats.json), and tests newer
than that file, are traced and run: a sweep of the core modules does not trace plan.py's tests.

Two passes (--budget SECS, then the same command without it): the first pass runs each mutant's
tests, fastest first, only while their recorded times add up to at most SECS (at least one
test); a mutant none of those kills is logged "unsure" (no verdict in the .meta files) with the
number of tests run and a digest of their ids. The second pass (no --budget, --skip-logged: a
logged "unsure" is not skipped) runs every remaining mutant with its whole test set, leaving
out the first tests an "unsure" record ran when the ordering is the same (same digest). A kill
in either pass is a kill; "survived" only after the whole set passed. The cheap kills of every
module come first, and the survivors to study are known early.

Subprocesses: the sweep runs in mutants/, with MUTANT_UNDER_TEST in the environment. A child
`python -c "import dagrun..."` started there (cwd = mutants/, sys.path[0] = '') imports the
mutated tree and its trampolines read the inherited variable: it runs the mutant. The installed
`dagrun` command (the venv's console script: sys.path[0] is .venv/bin, the editable install
points at the repository's dagrun/) runs the original code: conftest skips the tests that start
it under DAGRUN_MUTMUT=1, so no kill is claimed through a process that cannot see the mutant.
Not a test (no test_ prefix): a helper for README.md "Mutation testing".
"""
from __future__ import annotations

import argparse
import ast
import configparser
import difflib
import fnmatch
import glob
import hashlib
import json
import math
import os
import resource
import select
import signal
import sys
import threading
import time

os.environ["DAGRUN_MUTMUT"] = "1"
os.environ["MUTANT_UNDER_TEST"] = ""
sys.path.insert(0, os.getcwd())

import pytest  # noqa: E402
from _pytest.runner import runtestprotocol  # noqa: E402

EXIT = {"killed": 1, "survived": 0, "no test": 33, "timeout": 36}
MODULES = ("plan", "scheduler", "claim", "lifecycle", "transitions")


def fn_key(mutant: str) -> str:
    return mutant.partition("__mutmut_")[0]


def all_mutants(root: str = "dagrun") -> dict[str, tuple[str, object]]:
    """Every mutant name -> (its .meta path, its current exit code)."""
    out = {}
    for meta in sorted(glob.glob(os.path.join(root, "*.py.meta"))):
        with open(meta) as f:
            for name, code in json.load(f)["exit_code_by_key"].items():
                out[name] = (meta, code)
    return out


def write_meta(verdicts: dict[str, int], known: dict[str, tuple[str, object]]) -> None:
    by_meta: dict[str, dict[str, int]] = {}
    for name, code in verdicts.items():
        by_meta.setdefault(known[name][0], {})[name] = code
    for meta, codes in by_meta.items():
        with open(meta) as f:
            data = json.load(f)
        data["exit_code_by_key"].update(codes)
        tmp = meta + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=4)
        os.replace(tmp, meta)


# -- which lines of the original function a mutant changes --------------------------------------
def _stmt_ranges(fn: ast.AST) -> list[tuple[int, int, int]]:
    """(start, end of header, end) of every statement and except/case clause inside fn."""
    out = []
    for node in ast.walk(fn):
        if node is fn or not isinstance(node, (ast.stmt, ast.ExceptHandler, ast.match_case)):
            continue
        start = node.lineno if hasattr(node, "lineno") else node.pattern.lineno
        end = getattr(node, "end_lineno", None) or max(getattr(n, "end_lineno", start) or start for n in ast.walk(node))
        body = getattr(node, "body", None)
        head = body[0].lineno - 1 if isinstance(body, list) and body and hasattr(body[0], "lineno") else end
        out.append((start, max(start, head), end))
    return out


def reach_lines(module: str) -> dict[str, list[int]]:
    """For each mutant of mutants/dagrun/<module>.py: the lines of its original function (in that
    file) one of which the unmutated run must execute for the mutant to behave differently at all:
    the innermost statement (or its header, for a compound one) around each line the mutant
    changes; the def line for a change of the signature (a call event records it). [] = unknown
    (every test that calls the function is run)."""
    path = os.path.join("dagrun", module + ".py")
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    tree = ast.parse(text)
    funcs: dict[str, ast.AST] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            funcs[node.name] = node
    out: dict[str, list[int]] = {}
    for name, node in funcs.items():
        base, _, num = name.partition("__mutmut_")
        if num == "orig" or base + "__mutmut_orig" not in funcs:
            continue
        o = funcs[base + "__mutmut_orig"]
        first = min([o.lineno] + [d.lineno for d in o.decorator_list])
        a = lines[o.lineno - 1:o.end_lineno]
        b = lines[node.lineno - 1:node.end_lineno]
        if a and b:
            b = [b[0].replace(name, base + "__mutmut_orig", 1)] + b[1:]
        changed: set[int] = set()
        for tag, i1, i2, _, _ in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            if tag != "equal":
                changed |= set(range(o.lineno + i1, o.lineno + max(i2, i1 + 1)))
        body_start = o.body[0].lineno if o.body else o.lineno
        reach: set[int] = set()
        ranges = _stmt_ranges(o)
        for ln in changed:
            if ln < body_start:               # the signature: its defaults, annotations
                reach |= set(range(first, body_start))
                continue
            inner = [r for r in ranges if r[0] <= ln <= r[2]]
            if not inner:
                reach = set()
                break
            st, head, end = max(inner, key=lambda r: r[0] + 1e-6 * (r[0] - r[2]))     # the innermost
            reach |= set(range(st, (head if ln <= head else end) + 1))
        out[f"dagrun.{module}.{name}"] = sorted(reach) if changed else []
    return out


class Tracer:
    """Lines executed in the mutated modules' files, per test (sys.settrace, threads too)."""
    def __init__(self, files: dict[str, str]):
        self.files = files            # absolute path -> module
        self.hit: set[tuple[str, int]] = set()

    def _local(self, frame, event, arg):
        if event == "line":
            self.hit.add((self.files[frame.f_code.co_filename], frame.f_lineno))
        return self._local

    def _global(self, frame, event, arg):
        m = self.files.get(frame.f_code.co_filename)
        if m is None:
            return None
        self.hit.add((m, frame.f_code.co_firstlineno))
        self.hit.add((m, frame.f_lineno))
        return self._local

    def start(self):
        threading.settrace(self._global)
        sys.settrace(self._global)

    def take(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for m, ln in self.hit:
            out.setdefault(m, []).append(ln)
        self.hit = set()
        return out


class Sweep:
    def __init__(self, mutants, tests_of, duration, cfg, args, reach):
        self.mutants, self.tests_of, self.duration, self.cfg, self.args = mutants, tests_of, duration, cfg, args
        self.reach = reach
        self.verdicts: dict[str, int] = {}
        self.unsure: dict[str, dict] = {}       # name -> the first pass's record (--budget)
        self.killers: dict[str, list[str]] = {}      # function -> the tests that killed its mutants, latest first
        if args.killers_first and os.path.exists(args.log):
            with open(args.log) as f:
                for line in f:
                    if line.strip():
                        r = json.loads(line)
                        if r.get("status") == "killed":
                            self.note_killer(r["name"], r.get("by"))

    # -- the child: run items in order, report the first failing one -------------------------
    def child(self, items, name: str, cpu_limit: int, wfd: int, cover: str | None) -> None:
        os.setpgid(0, 0)
        if not self.args.verbose:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
        os.environ["MUTANT_UNDER_TEST"] = name
        try:
            from mutmut.mutation.trampoline import set_mutant_under_test
            set_mutant_under_test(name)
        except ImportError:
            pass
        if cpu_limit:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit + 1))
        tracer = None
        if cover:
            tracer = Tracer({os.path.abspath(os.path.join("dagrun", m + ".py")): m for m in MODULES})
            tracer.start()
        code, failed, per_test = 0, [], {}
        try:
            for i, item in enumerate(items):
                nxt = items[i + 1] if i + 1 < len(items) else None
                t0 = time.perf_counter()
                reports = runtestprotocol(item, log=False, nextitem=nxt)
                bad = [r for r in reports if r.failed]
                if tracer:
                    per_test[item.nodeid] = {"secs": time.perf_counter() - t0, "failed": bool(bad),
                                             "lines": tracer.take()}
                if bad:
                    code = 1
                    failed.append(f"{item.nodeid} ({bad[0].when})")
                    if not cover:
                        break
        except BaseException as e:           # pytest.exit, KeyboardInterrupt from a mutant
            code = 2
            failed.append(f"{type(e).__name__}: {e}"[:200])
        if cover:
            sys.settrace(None)
            with open(cover, "w") as f:
                json.dump(per_test, f)
        os.write(wfd, json.dumps(failed).encode()[:60000])
        os._exit(code)

    def fork(self, items, name: str, cpu_limit: int, wall: float, cover: str | None = None):
        r, w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                self.child(items, name, cpu_limit, w, cover)
            finally:
                os._exit(3)
        os.close(w)
        pfd = os.pidfd_open(pid)
        chunks, status, timed_out = [], None, False
        deadline = t0 + wall
        while status is None:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status = os.waitpid(pid, 0)
                break
            ready, _, _ = select.select([pfd, r], [], [], left)
            if r in ready:
                b = os.read(r, 65536)
                if b:
                    chunks.append(b)
                else:
                    select.select([pfd], [], [], None)      # writer closed: the child is exiting
            if pfd in ready or r in ready:
                p, st = os.waitpid(pid, os.WNOHANG)
                if p:
                    status = st
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
        os.close(r)
        os.close(pfd)
        try:
            os.killpg(pid, signal.SIGKILL)       # what the tests left running
        except (ProcessLookupError, PermissionError):
            pass
        try:
            failed = json.loads(b"".join(chunks) or b"[]")
        except ValueError:
            failed = []
        return status, timed_out, failed, time.monotonic() - t0

    # -- the loop ------------------------------------------------------------------------------
    def coverage(self, session, byid) -> dict:
        """Per test: its time and the lines it executes in the mutated modules (unmutated run,
        traced). Cached in --coverage; only the tests missing from the cache are measured (the
        cache must be removed, or --fresh given, when the code or a test changed)."""
        path = self.args.coverage or "sweep-coverage.json"
        cov: dict = {}
        if os.path.exists(path) and not self.args.fresh:
            with open(path) as f:
                cov = json.load(f)
        missing = [i for i in byid if i not in cov]
        if not missing:
            return cov
        ids = sorted(missing, key=lambda i: (self.duration.get(i, 0.0), i))
        new_path = f"{path}.new.{os.getpid()}"      # sweeps started together each measure theirs
        st, to, failed, secs = self.fork([byid[i] for i in ids], "", 0, 7200, cover=new_path)
        with open(new_path) as f:
            new = json.load(f)
        print(f"sweep: baseline (traced) of {len(ids)} tests in {secs:.0f} s, "
              f"{sum(1 for v in new.values() if v['failed'])} fail unmutated", flush=True)
        cov.update(new)
        with open(new_path + ".tmp", "w") as f:
            json.dump(cov, f)
        os.replace(new_path + ".tmp", path)
        os.unlink(new_path)
        return cov

    def plan_tests(self, name: str, cov: dict, index: dict, stats_ok) -> tuple[list[str], str]:
        """The tests to run for a mutant, fastest first, and why."""
        fk = fn_key(name)
        calls = [t for t in self.tests_of.get(fk, ()) if stats_ok(t)]
        module = name.split(".")[1]
        always = [t for t in calls if any(a in t for a in self.args.always)]
        reach = self.reach.get(name) or []
        if self.args.function_level or not reach:
            ids, why = set(calls), "function"
        else:
            ids = set()
            idx = index.get(module, {})
            for ln in reach:
                ids |= idx.get(ln, set())
            ids = {t for t in ids if stats_ok(t) or t not in self.duration}     # new tests count too
            ids |= set(always)
            why = "line"
        secs = lambda t: cov[t]["secs"] if t in cov else self.duration.get(t, 0.0)
        out = sorted(ids, key=lambda t: (secs(t), t))
        if self.args.killers_first:     # the tests that killed this function's last mutants go first
            first = [t for t in self.killers.get(fk, ()) if t in ids]
            out = first + [t for t in out if t not in set(first)]
        return out, why

    def note_killer(self, name: str, by: list) -> None:
        if by and " (" in by[0]:
            fk, t = fn_key(name), by[0].rpartition(" (")[0]
            lst = self.killers.setdefault(fk, [])
            if t in lst:
                lst.remove(t)
            lst.insert(0, t)
            del lst[self.args.killers_first:]

    def pytest_runtestloop(self, session):
        # only the tests that call a chosen mutant's function, and tests mutmut-stats.json does
        # not know (added since): no other test can execute a changed line
        wanted = set()
        for fk in self.args.functions:       # of every mutant the patterns name (before --limit)
            wanted |= set(self.tests_of.get(fk, ()))
        byid = {it.nodeid: it for it in session.items if it.nodeid in wanted or it.nodeid not in self.duration}
        print(f"sweep: {len(byid)} of {len(session.items)} tests call the chosen mutants' functions (or are new)", flush=True)
        cov = self.coverage(session, byid) if not self.args.function_level else {}
        broken = {t for t, v in cov.items() if v["failed"]}
        if broken:
            print(f"sweep: left out (fail unmutated): {sorted(broken)}", flush=True)
        index: dict[str, dict[int, set]] = {}
        for t, v in cov.items():
            if t in byid and t not in broken:
                for m, lns in v["lines"].items():
                    d = index.setdefault(m, {})
                    for ln in lns:
                        d.setdefault(ln, set()).add(t)
        stats_ok = lambda t: t in byid and t not in broken
        # the forced failure: the trampolines must be reached
        probe = next((m for m in self.mutants if self.tests_of.get(fn_key(m))), None)
        if probe:
            ids = sorted((t for t in self.tests_of[fn_key(probe)] if stats_ok(t)), key=lambda t: self.duration.get(t, 0))[:1]
            st, to, failed, _ = self.fork([byid[i] for i in ids], "fail", 0, 600)
            assert failed, "MUTANT_UNDER_TEST=fail killed nothing: the trampolines are not reached"
        log = open(self.args.log, "a")
        t_start, n = time.monotonic(), 0
        mult, const = self.cfg
        for name in self.mutants:
            ids, why = self.plan_tests(name, cov, index, stats_ok)
            if not any(stats_ok(t) for t in self.tests_of.get(fn_key(name), ())) and not (why == "line" and ids):
                rec = {"name": name, "status": "no test", "secs": 0.0}
            elif not ids:
                rec = {"name": name, "status": "survived", "how": "no test executes the changed line", "tests": 0,
                       "secs": 0.0}
            else:
                secs_of = lambda t: cov[t]["secs"] if t in cov else self.duration.get(t, 0.0)
                skipped, left = 0, 0
                prev = self.unsure.get(name)
                if prev and not self.args.budget and 0 < prev["ran"] < len(ids) and digest(ids[:prev["ran"]]) == prev["digest"]:
                    skipped = prev["ran"]           # the first pass ran (and passed) these
                    ids = ids[skipped:]
                total = len(ids) + skipped
                if self.args.budget:
                    k, acc = 0, 0.0
                    while k < len(ids) and (k == 0 or acc + secs_of(ids[k]) <= self.args.budget):
                        acc += secs_of(ids[k])
                        k += 1
                    left = len(ids) - k
                    ids = ids[:k]
                est = sum(secs_of(t) for t in ids)
                cpu = math.ceil((est + const) * mult * 2)
                st, to, failed, secs = self.fork([byid[i] for i in ids], name, cpu, 4 * cpu + 30)
                if to or (os.WIFSIGNALED(st) and os.WTERMSIG(st) in (signal.SIGXCPU, signal.SIGKILL)):
                    status = "timeout"
                    how = "wall" if to else signal.Signals(os.WTERMSIG(st)).name
                elif os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0:
                    status, how = "survived", ""
                elif os.WIFEXITED(st) and os.WEXITSTATUS(st) == 1:
                    status, how = "killed", ""
                else:
                    status = "killed"        # the child died otherwise (the mutant crashed it)
                    how = f"exit {os.WEXITSTATUS(st)}" if os.WIFEXITED(st) else f"signal {os.WTERMSIG(st)}"
                if status == "survived" and left:
                    status = "unsure"                # passed the first pass's tests only
                rec = {"name": name, "status": status, "by": failed[:1], "how": how, "tests": total,
                       "select": why, "secs": round(secs, 3)}
                if skipped:
                    rec["skipped"] = skipped
                if status == "unsure":
                    rec.update(ran=len(ids), digest=digest(ids))
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if rec["status"] != "unsure":
                self.verdicts[name] = EXIT[rec["status"]]
            if rec["status"] == "killed":
                self.note_killer(name, rec.get("by"))
            n += 1
            if self.args.meta and n % 50 == 0:
                write_meta(self.verdicts, self.args.known)
            if n % 25 == 0:
                el = time.monotonic() - t_start
                print(f"sweep: {n}/{len(self.mutants)} in {el:.0f} s ({60 * n / el:.0f}/min), load {os.getloadavg()[0]:.1f}",
                      flush=True)
        if self.args.meta:
            write_meta(self.verdicts, self.args.known)
        el = time.monotonic() - t_start
        print(f"sweep: done, {n} mutants in {el:.0f} s", flush=True)
        return True


def digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


def load_reach(modules: list[str], fresh: bool) -> dict[str, list[int]]:
    """reach_lines of each module, cached in sweep-reach-<module>.json (computed in a child:
    the syntax tree of plan.py's 19 MB of mutants is large)."""
    out: dict[str, list[int]] = {}
    for m in modules:
        path = f"sweep-reach-{m}.json"
        if fresh or not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(f"dagrun/{m}.py"):
            pid = os.fork()
            if pid == 0:
                try:
                    data = reach_lines(m)
                    with open(path + ".tmp", "w") as f:
                        json.dump(data, f)
                    os.replace(path + ".tmp", path)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        with open(path) as f:
            out.update(json.load(f))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("patterns", nargs="+")
    ap.add_argument("--pending", action="store_true")
    ap.add_argument("--skip-logged", action="store_true", help="leave out the mutants already in --log")
    ap.add_argument("--meta", action="store_true")
    ap.add_argument("--log", default="sweep.jsonl")
    ap.add_argument("--coverage", default="sweep-coverage.json")
    ap.add_argument("--fresh", action="store_true", help="measure the coverage and the changed lines again")
    ap.add_argument("--function-level", action="store_true",
                    help="run every test that calls the function (as mutmut), not only those that execute the changed line")
    ap.add_argument("--always", nargs="*", default=["test_plan_properties.py"],
                    help="tests (substrings) run whenever they call the function: their inputs are random")
    ap.add_argument("--killers-first", type=int, default=0, metavar="K",
                    help="run first the K tests that killed the function's latest mutants (from --log and this run), "
                         "then the rest fastest first: the same verdicts, a kill found sooner")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--unsure-only", action="store_true",
                    help="only the mutants whose last record in --log is 'unsure' (the second pass)")
    ap.add_argument("--meta-from-log", action="store_true",
                    help="write the last verdict --log holds for each mutant matched into the .meta files, run nothing")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="first pass: per mutant only the fastest tests whose recorded times add up to SECS; "
                         "a mutant they do not kill is logged 'unsure'")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.exists("mutmut-stats.json"):
        sys.exit("run from mutants/ after a first `mutmut run` (it writes mutmut-stats.json)")
    with open("mutmut-stats.json") as f:
        stats = json.load(f)
    tests_of = stats["tests_by_mangled_function_name"]
    duration = stats["duration_by_test"]
    known = all_mutants()
    args.known = known
    names = []
    for p in args.patterns:
        hit = [n for n in known if fnmatch.fnmatchcase(n, p)] if any(c in p for c in "*?[") else [p] if p in known else []
        if not hit:
            sys.exit(f"no mutant matches {p}")
        names += hit
    names = list(dict.fromkeys(names))
    if args.pending:
        names = [n for n in names if known[n][1] is None]
    unsure: dict[str, dict] = {}
    if os.path.exists(args.log):
        with open(args.log) as f:
            last = {}
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    last[r["name"]] = r
        unsure = {n: r for n, r in last.items() if r["status"] == "unsure"}
        if args.meta_from_log:              # the log's verdicts of the names matched, into the .meta files
            got = {n: EXIT[last[n]["status"]] for n in names if n in last and last[n]["status"] != "unsure"}
            write_meta(got, known)
            print(f"sweep: {len(got)} verdicts written from {args.log}")
            return 0
        if args.skip_logged:
            # the first pass skips every logged mutant; the second only those with a verdict
            names = [n for n in names if n not in last or (n in unsure and not args.budget)]
        if args.unsure_only:                # the second pass alone, beside a first pass still running
            names = [n for n in names if n in unsure]
    args.functions = {fn_key(n) for n in names}
    if args.limit:
        names = names[:args.limit]
    reach = {} if args.function_level else load_reach(sorted({n.split(".")[1] for n in names}), args.fresh)
    cp = configparser.ConfigParser()
    cp.read("setup.cfg")
    sec = cp["mutmut"]
    cfg = (float(sec.get("timeout_multiplier", "15")), float(sec.get("timeout_constant", "1")))
    pargs = [a.strip() for a in sec.get("pytest_add_cli_args", "").splitlines() if a.strip()]
    sel = [a.strip() for a in sec.get("pytest_add_cli_args_test_selection", "").splitlines() if a.strip()]
    print(f"sweep: {len(names)} mutants", flush=True)
    plugin = Sweep(names, tests_of, duration, cfg, args, reach)
    plugin.unsure = unsure
    rc = pytest.main(["--rootdir=.", "--tb=no", "-p", "no:randomly", *pargs, *sel], plugins=[plugin])
    return 0 if rc in (0, 5) else int(rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
