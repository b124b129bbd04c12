"""Parse and validate dag.json into frozen dataclasses.

One table (FIELDS) describes every field; both the validator and the JSON Schema shipped in
dagrun/schema/ are generated from it, so they cannot disagree. Errors are one line:
`dag.json:14: tasks[3].deps[1]: unknown dependency "desing" (asked for by task "implement")`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable

import orjson

from .errors import PlanError
from .scheduler import CycleError, topo_order

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PLAN_BYTES = 64 * 1024 * 1024
MAX_PROMPT_BYTES = 16 * 1024 * 1024
MAX_TASKS = 100_000
RUNNER_NAMES = ("local", "slurm", "ray")                 # "runner" in a plan; executor.PLAN_RUNNERS maps them
CLUSTER_KEYS = ("runner", "resources", "slurm", "ray")   # Task fields left out of plan.json at their defaults
MEM_RE = re.compile(r"[0-9]{1,12}[KMGT]?")
MAX_SECONDS = 30 * 24 * 3600          # a month: anything longer is a typo
DEFAULT_CONTEXT_LIMIT = 64 * 1024      # bytes of each dependency's output put into a prompt
DEFAULT_LEASE = 60.0


def valid_id(s: object) -> bool:
    return isinstance(s, str) and ID_RE.fullmatch(s) is not None


def check_id(kind: str, s: str) -> str:
    """For ids typed on the command line: the same rule as in plans, one clear line."""
    if not valid_id(s):
        raise PlanError(f"invalid {kind} id {s!r}: use 1-128 of A-Z a-z 0-9 . _ - , starting with a letter or digit")
    return s


# ------------------------------------------------------------------------------ the field table
@dataclass(frozen=True)
class F:
    kind: str                        # string|text|id|ids|integer|number|enum|object|tasks
    doc: str
    lo: float | None = None          # inclusive minimum
    hi: float | None = None          # inclusive maximum
    gt: float | None = None          # exclusive minimum
    choices: tuple[str, ...] = ()
    default: Any = None
    nullable: bool = False
    fields: Any = None               # kind "object" of a runner's options: its own field table


KNOBS: dict[str, F] = {  # allowed in "defaults" and on every task
    "agent": F("string", "Shell command, run as `sh -c \"$agent\"` with the rendered prompt on stdin."),
    "timeout": F("number", "Seconds before the agent's process group gets TERM, then KILL. null: none.",
                 gt=0, hi=MAX_SECONDS, nullable=True),
    "retries": F("integer", "Extra attempts after a failed or timed-out one.", lo=0, hi=100, default=0),
    "retry_backoff": F("number", "Base seconds between attempts (doubles each attempt, +-50% jitter).",
                       lo=0, hi=3600, default=1.0),
    "retry_context": F("enum", "\"error\": append the previous attempt's exit code and stderr tail to the prompt.",
                       choices=("none", "error"), default="none"),
    "stall_timeout": F("number", "Seconds without new output bytes or heartbeat before the attempt is killed as stalled.",
                       gt=0, hi=MAX_SECONDS, nullable=True),
    "kill_grace": F("number", "Seconds between TERM and KILL.", lo=0, hi=600, default=5.0),
    "workdir": F("string", "Folder the agent runs in, relative to the plan's folder (default: the plan's folder)."),
    "context_limit": F("integer", "Bytes of each dependency's output copied into the prompt; the rest is replaced by a pointer to the file.",
                       lo=0, hi=MAX_PROMPT_BYTES, default=DEFAULT_CONTEXT_LIMIT),
    "max_output": F("integer", "Bytes of stdout after which the agent is killed and the attempt fails. null: no cap.",
                    lo=1, hi=2**62, nullable=True),
    # -- cluster runners (dagrun/slurm.py): where an attempt runs and what it may use
    "runner": F("enum", "Where the agent runs: \"local\" (a process of the worker), \"slurm\" (one sbatch job per attempt), \"ray\" (one Ray task per attempt).",
                choices=RUNNER_NAMES, default="local"),
    "resources": F("options", "What the agent may use, passed to the cluster engine: cpus (--cpus-per-task), "
                   "mem (--mem, e.g. \"2G\"), gpu (--gres=gpu:N).", fields={
                       "cpus": F("integer", "CPUs per attempt (--cpus-per-task).", lo=1, hi=4096),
                       "mem": F("mem", "Memory per attempt: megabytes, or a number with K, M, G or T (--mem)."),
                       "gpu": F("integer", "GPUs per attempt (--gres=gpu:N).", lo=0, hi=1024)}),
    "slurm": F("options", "Options of the slurm runner.", fields={
        "partition": F("string", "sbatch --partition."),
        "account": F("string", "sbatch --account."),
        "sbatch_args": F("strings", "Extra sbatch arguments, one per item (e.g. [\"--qos=short\"])."),
    }),
    "ray": F("options", "Options of the ray runner.", fields={
        "address": F("string", "ray.init address (\"auto\", \"HOST:PORT\", \"ray://...\"); \"local\" starts a local Ray. "
                     "Default: $RAY_ADDRESS, else \"auto\"."),
        "runtime_env": F("json", "Ray runtime_env for the driver's connection (env_vars, pip, working_dir, ...)."),
    }),
}

TASK_FIELDS: dict[str, F] = {
    "id": F("id", "Task id: 1-128 of A-Za-z0-9._- starting with a letter or digit."),
    "deps": F("ids", "Tasks that must be done before this one starts."),
    "soft_deps": F("ids", "Tasks this one waits for but runs after whatever their outcome."),
    "prompt": F("text", "The prompt text (exactly one of prompt / prompt_file)."),
    "prompt_file": F("string", "File holding the prompt, relative to the plan's folder and inside it."),
    "priority": F("integer", "Higher runs first among ready tasks (ties: longest path to the end first).",
                  lo=-1_000_000, hi=1_000_000, default=0),
    "description": F("text", "Free text for people; ignored by dagrun."),
    **KNOBS,
}

TOP_FIELDS: dict[str, F] = {
    "runner": F("enum", "The runner of every task that sets none (default \"local\"); same as defaults.runner.",
                choices=RUNNER_NAMES),
    "$schema": F("text", "Editors' schema hint; ignored."),
    "goal": F("id", "Goal id (default: the plan file's name without extension)."),
    "description": F("text", "Free text for people; ignored by dagrun."),
    "defaults": F("object", "Defaults for every task: " + ", ".join(KNOBS) + "."),
    "max_parallel": F("integer", "At most this many tasks of the goal run at once.", lo=1, hi=100_000),
    "on_failure": F("enum", "\"continue\": independent branches keep running; \"stop\": start nothing new after a task fails for good.",
                    choices=("continue", "stop"), default="continue"),
    "lease": F("number", "Seconds without heartbeat after which a claim held from another host is stale.",
               gt=0, hi=MAX_SECONDS, default=DEFAULT_LEASE),
    "tasks": F("tasks", "The sub-goals."),
}


# ------------------------------------------------------------------------------ dataclasses
@dataclass(frozen=True)
class Task:
    id: str
    deps: tuple[str, ...]
    soft_deps: tuple[str, ...]
    prompt: str
    prompt_file: str | None
    agent: str
    timeout: float | None
    retries: int
    retry_backoff: float
    retry_context: str
    stall_timeout: float | None
    kill_grace: float
    workdir: str
    context_limit: int
    max_output: int | None
    priority: int
    description: str | None = None
    runner: str = "local"                                           # plan name: local | slurm
    resources: dict = field(default_factory=dict, hash=False)       # cpus, mem, gpu
    slurm: dict = field(default_factory=dict, hash=False)           # the slurm runner's options
    ray: dict = field(default_factory=dict, hash=False)             # the ray runner's options

    def definition_digest(self) -> str:
        return self._digest

    @cached_property
    def _digest(self) -> str:
        """What decides the task's result: a done task whose digest is unchanged is kept
        when a plan is replaced. Timeouts, retries and priority do not change the result."""
        d = [self.prompt, self.agent, list(self.deps), list(self.soft_deps), self.workdir,
             self.context_limit, self.retry_context]
        return hashlib.sha256(orjson.dumps(d)).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in CLUSTER_KEYS:         # left out at their defaults: plan.json of local plans unchanged
            if d[k] == Task.__dataclass_fields__[k].default or d[k] == {}:
                del d[k]
        d["deps"] = list(self.deps)
        d["soft_deps"] = list(self.soft_deps)
        return d


@dataclass(frozen=True)
class Plan:
    goal: str
    source: str            # absolute path of the dag.json it came from
    plan_dir: str          # absolute folder: agents run here, prompt_file is read from here
    tasks: tuple[Task, ...]
    max_parallel: int | None = None
    on_failure: str = "continue"
    lease: float = DEFAULT_LEASE
    description: str | None = None
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self._index.update((t.id, t) for t in self.tasks)

    def task(self, tid: str) -> Task:
        return self._index[tid]

    def has(self, tid: str) -> bool:
        return tid in self._index

    def ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    def dependents(self) -> dict[str, list[str]]:
        """task -> tasks that list it in deps or soft_deps."""
        out: dict[str, list[str]] = {t.id: [] for t in self.tasks}
        for t in self.tasks:
            for d in t.deps:
                out[d].append(t.id)
            for d in t.soft_deps:
                out[d].append(t.id)
        return out

    def descendants(self, roots: Iterable[str]) -> list[str]:
        """Every task downstream of roots (roots excluded unless reachable), in plan order."""
        dep = self.dependents()
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            for d in dep[stack.pop()]:
                if d not in seen:
                    seen.add(d)
                    stack.append(d)
        return [t.id for t in self.tasks if t.id in seen]

    def to_dict(self) -> dict:
        return {
            "version": 1, "goal": self.goal, "source": self.source, "plan_dir": self.plan_dir,
            "max_parallel": self.max_parallel, "on_failure": self.on_failure, "lease": self.lease,
            "description": self.description, "tasks": [t.to_dict() for t in self.tasks],
        }

    def canonical(self) -> bytes:
        """plan.json: sorted keys, indented, UTF-8 -- byte-identical for the same plan."""
        return self._canonical

    @cached_property
    def _canonical(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 |
                            orjson.OPT_APPEND_NEWLINE)

    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """Load a normalised plan (plan.json under the home: already validated, trusted)."""
        tasks = tuple(
            Task(**{**t, "deps": tuple(t["deps"]), "soft_deps": tuple(t["soft_deps"])}) for t in d["tasks"])
        return cls(goal=d["goal"], source=d["source"], plan_dir=d["plan_dir"], tasks=tasks,
                   max_parallel=d.get("max_parallel"), on_failure=d.get("on_failure", "continue"),
                   lease=d.get("lease", DEFAULT_LEASE), description=d.get("description"))


# ------------------------------------------------------------------------------ loading
def load(path: str) -> Plan:
    """Read, parse and validate a dag.json; raise PlanError with one precise line."""
    shown = path
    try:
        st = os.stat(path)
    except OSError as e:
        raise PlanError(f"cannot read plan {shown}: {e.strerror}") from None
    if not os.path.isfile(path):
        raise PlanError(f"cannot read plan {shown}: not a regular file")
    if st.st_size > MAX_PLAN_BYTES:
        raise PlanError(f"{shown}: plan is {st.st_size} bytes; the limit is {MAX_PLAN_BYTES} bytes")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PLAN_BYTES + 1)
    except OSError as e:
        raise PlanError(f"cannot read plan {shown}: {e.strerror}") from None
    source = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    return parse(raw, shown=shown, source=source, default_goal=stem)


def parse(raw: bytes, *, shown: str, source: str, default_goal: str) -> Plan:
    if raw.startswith(b"\xef\xbb\xbf"):
        raise PlanError(f"{shown}:1:1: malformed JSON: the file starts with a UTF-8 byte-order mark; save it without BOM")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise PlanError(f"{shown}:1:1: malformed JSON: the file is UTF-16 text; save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PlanError(f"{shown}:{line}: malformed JSON: invalid UTF-8 at byte {e.start}") from None
    doc = _parse_json(text, shown)
    return _Validator(text, shown, source, default_goal).plan(doc)


class _DupKey(Exception):
    pass


def _pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise _DupKey(k)
        d[k] = v
    return d


def _bad_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str, shown: str):
    if not text.strip():
        raise PlanError(f"{shown}:1:1: malformed JSON: the file is empty")
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_bad_constant)
    except json.JSONDecodeError as e:
        raise PlanError(f"{shown}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    except _DupKey as e:
        key = e.args[0]
        line = _line_of_key(text, key)
        raise PlanError(f"{shown}:{line}: duplicate key {json.dumps(key)} in one object") from None
    except RecursionError:
        raise PlanError(f"{shown}: malformed JSON: nested too deeply") from None
    except ValueError as e:  # NaN/Infinity, or an integer with thousands of digits
        m = re.search(r"[\[:,]\s*(-?Infinity|NaN|-?\d{4000,})", text)
        where = f"{shown}:{text.count(chr(10), 0, m.start(1)) + 1}" if m else shown
        if m and m.group(1)[-1].isdigit():
            raise PlanError(f"{where}: malformed JSON: a number with {len(m.group(1).lstrip('-'))} digits") from None
        raise PlanError(f"{where}: malformed JSON: {e}") from None


def _line_of_key(text: str, key: str) -> int:
    """Line of the second occurrence of "key": (good enough to point at a duplicate)."""
    pat = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    hits = [m.start() for m in pat.finditer(text)]
    pos = hits[1] if len(hits) > 1 else (hits[0] if hits else 0)
    return text.count("\n", 0, pos) + 1


def _fmt_path(path: tuple) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def _type_name(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _show(v) -> str:
    s = json.dumps(v, ensure_ascii=True)
    return s if len(s) <= 40 else s[:37] + "..."


class _Validator:
    def __init__(self, text: str, shown: str, source: str, default_goal: str):
        self.text, self.shown, self.source, self.default_goal = text, shown, source, default_goal
        self._lines: dict | None = None

    # -- errors
    def fail(self, path: tuple, msg: str):
        line = self.line(path)
        where = f"{self.shown}:{line}" if line else self.shown
        p = _fmt_path(path)
        err = PlanError(f"{where}: {p}: {msg}" if path else f"{where}: {msg}")
        err.line, err.json_path = line, (p if path else None)     # for `validate --json`
        raise err

    def line(self, path: tuple) -> int | None:
        if self._lines is None:
            self._lines = _value_lines(self.text)
        while path and path not in self._lines:
            path = path[:-1]
        return self._lines.get(path)

    # -- scalars
    def check(self, path: tuple, f: F, v):
        if v is None and f.nullable:
            return None
        k = f.kind
        if k in ("string", "text", "id"):
            if not isinstance(v, str):
                self.fail(path, f"expected a string, got {_type_name(v)}")
            if "\x00" in v:
                self.fail(path, "contains a NUL character")
            if k == "string" and not v.strip():
                self.fail(path, "must not be empty")
            if k == "id" and not valid_id(v):
                self.fail(path, f"invalid id {_show(v)}: use 1-128 of A-Z a-z 0-9 . _ - , starting with a letter or digit")
            return v
        if k in ("integer", "number"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(path, f"expected {'an integer' if k == 'integer' else 'a number'}, got {_type_name(v)}")
            if k == "integer" and isinstance(v, float):
                if not v.is_integer():
                    self.fail(path, f"expected an integer, got {v!r}")
                v = int(v)
            if isinstance(v, float) and not math.isfinite(v):
                self.fail(path, "must be a finite number")
            if f.gt is not None and not v > f.gt:
                self.fail(path, f"must be greater than {f.gt:g}, got {_show(v)}")
            if f.lo is not None and v < f.lo:
                self.fail(path, f"must be at least {f.lo:g}, got {_show(v)}")
            if f.hi is not None and v > f.hi:
                self.fail(path, f"must be at most {f.hi:g}, got {_show(v)}")
            return v
        if k == "options":
            v = self.obj(path, v, f.fields, f"{path[-1]} options")
            return {kk: self.check(path + (kk,), f.fields[kk], vv) for kk, vv in v.items()}
        if k == "strings":
            if not isinstance(v, list):
                self.fail(path, f"expected an array of strings, got {_type_name(v)}")
            for j, x in enumerate(v):
                self.check(path + (j,), F("string", ""), x)
            return list(v)
        if k == "json":
            if not isinstance(v, dict):
                self.fail(path, f"expected an object, got {_type_name(v)}")
            return v
        if k == "mem":
            if isinstance(v, bool) or not isinstance(v, (int, str)) or not MEM_RE.fullmatch(str(v)):
                self.fail(path, f"expected megabytes or a size like \"512M\" or \"2G\", got {_show(v)}")
            return v
        if k == "enum":
            if v not in f.choices:
                self.fail(path, f"must be one of {', '.join(json.dumps(c) for c in f.choices)}, got {_show(v)}")
            return v
        raise AssertionError(k)

    def obj(self, path: tuple, v, allowed: dict[str, F], what: str) -> dict:
        if not isinstance(v, dict):
            self.fail(path, f"expected an object, got {_type_name(v)}")
        unknown = [k for k in v if k not in allowed]
        if unknown:
            names = ", ".join(json.dumps(k) for k in unknown)
            self.fail(path + (unknown[0],), f"unknown field{'s' if len(unknown) > 1 else ''} {names} in {what}"
                      f" (known: {', '.join(k for k in allowed if not k.startswith('$'))})")
        return v

    # -- the plan
    def plan(self, doc) -> Plan:
        top = self.obj((), doc, TOP_FIELDS, "the plan")
        goal = self.check(("goal",), TOP_FIELDS["goal"], top["goal"]) if "goal" in top else None
        if goal is None:
            if not valid_id(self.default_goal):
                self.fail((), f"goal id from the file name {_show(self.default_goal)} is not a valid id; set \"goal\" in the plan")
            goal = self.default_goal
        defaults = self.obj(("defaults",), top.get("defaults", {}), KNOBS, "defaults")
        dflt = {k: self.check(("defaults", k), KNOBS[k], v) for k, v in defaults.items()}
        if "runner" in top:
            dflt.setdefault("runner", self.check(("runner",), TOP_FIELDS["runner"], top["runner"]))
        opts = {}
        for k in ("max_parallel", "on_failure", "lease", "description"):
            if k in top:
                opts[k] = self.check((k,), TOP_FIELDS[k], top[k])
        if "$schema" in top:
            self.check(("$schema",), TOP_FIELDS["$schema"], top["$schema"])
        if "tasks" not in top:
            self.fail((), "missing \"tasks\" (an array of tasks)")
        raw_tasks = top["tasks"]
        if not isinstance(raw_tasks, list):
            self.fail(("tasks",), f"expected an array of tasks, got {_type_name(raw_tasks)}")
        if not raw_tasks:
            self.fail(("tasks",), "a plan needs at least one task")
        if len(raw_tasks) > MAX_TASKS:
            self.fail(("tasks",), f"{len(raw_tasks)} tasks; the limit is {MAX_TASKS}")

        plan_dir = os.path.dirname(self.source)
        seen: dict[str, int] = {}
        tasks = []
        for i, rt in enumerate(raw_tasks):
            tasks.append(self.task(i, rt, dflt, plan_dir, seen))
        by_id = {t.id: i for i, t in enumerate(tasks)}
        for i, t in enumerate(tasks):
            for field_name in ("deps", "soft_deps"):
                for j, d in enumerate(getattr(t, field_name)):
                    if d not in by_id:
                        self.fail(("tasks", i, field_name, j),
                                  f"unknown dependency {_show(d)} (asked for by task {_show(t.id)})")
        try:
            topo_order(list(by_id), [[by_id[d] for d in (*t.deps, *t.soft_deps)] for t in tasks],
                       _successors(tasks, by_id))
        except CycleError as e:
            self.fail(("tasks", by_id[e.cycle[0]]), _fmt_cycle(e.cycle))
        return Plan(goal=goal, source=self.source, plan_dir=plan_dir, tasks=tuple(tasks),
                    max_parallel=opts.get("max_parallel"), on_failure=opts.get("on_failure", "continue"),
                    lease=float(opts.get("lease", DEFAULT_LEASE)), description=opts.get("description"))

    def task(self, i: int, rt, dflt: dict, plan_dir: str, seen: dict) -> Task:
        path = ("tasks", i)
        rt = self.obj(path, rt, TASK_FIELDS, "a task")
        if "id" not in rt:
            self.fail(path, "task has no \"id\"")
        tid = self.check(path + ("id",), TASK_FIELDS["id"], rt["id"])
        if tid in seen:
            self.fail(path + ("id",), f"duplicate task id {_show(tid)} (first at tasks[{seen[tid]}])")
        seen[tid] = i
        deps = self.ids(path + ("deps",), rt.get("deps", []))
        soft = self.ids(path + ("soft_deps",), rt.get("soft_deps", []))
        both = set(deps) & set(soft)
        if both:
            self.fail(path + ("soft_deps",), f"{_show(sorted(both)[0])} is in both deps and soft_deps")
        has_p, has_pf = "prompt" in rt, "prompt_file" in rt
        if has_p == has_pf:
            self.fail(path, f"task {_show(tid)} needs exactly one of \"prompt\" or \"prompt_file\"" +
                      (" (it has both)" if has_p else ""))
        if has_p:
            prompt = self.check(path + ("prompt",), TASK_FIELDS["prompt"], rt["prompt"])
            if len(prompt.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
                self.fail(path + ("prompt",), f"prompt is longer than {MAX_PROMPT_BYTES} bytes")
            pfile = None
        else:
            pfile = self.check(path + ("prompt_file",), TASK_FIELDS["prompt_file"], rt["prompt_file"])
            prompt = self.read_prompt_file(path + ("prompt_file",), pfile, plan_dir)
        if _has_lone_surrogate(prompt):
            self.fail(path + ("prompt",), "contains an unpaired UTF-16 surrogate escape")
        knobs = dict(dflt)
        for k in KNOBS:
            if k in rt:
                knobs[k] = self.check(path + (k,), KNOBS[k], rt[k])
        agent = knobs.get("agent")
        if not agent:
            self.fail(path, f"task {_show(tid)} has no agent: set \"agent\" on it or in \"defaults\"")
        workdir = knobs.get("workdir")
        workdir = os.path.normpath(os.path.join(plan_dir, workdir)) if workdir else plan_dir
        prio = self.check(path + ("priority",), TASK_FIELDS["priority"], rt["priority"]) if "priority" in rt else 0
        desc = self.check(path + ("description",), TASK_FIELDS["description"], rt["description"]) if "description" in rt else None

        def get(k):
            return knobs.get(k, KNOBS[k].default)

        timeout, stall = get("timeout"), get("stall_timeout")
        return Task(
            id=tid, deps=tuple(deps), soft_deps=tuple(soft), prompt=prompt, prompt_file=pfile, agent=agent,
            timeout=float(timeout) if timeout is not None else None, retries=int(get("retries")),
            retry_backoff=float(get("retry_backoff")), retry_context=get("retry_context"),
            stall_timeout=float(stall) if stall is not None else None, kill_grace=float(get("kill_grace")),
            workdir=workdir, context_limit=int(get("context_limit")), max_output=get("max_output"),
            priority=int(prio), description=desc, runner=get("runner"),
            resources=dict(knobs.get("resources") or {}), slurm=dict(knobs.get("slurm") or {}),
            ray=dict(knobs.get("ray") or {}))

    def ids(self, path: tuple, v) -> list[str]:
        if not isinstance(v, list):
            self.fail(path, f"expected an array of task ids, got {_type_name(v)}")
        out, seen = [], set()
        for j, d in enumerate(v):
            if not isinstance(d, str):
                self.fail(path + (j,), f"expected a task id (string), got {_type_name(d)}")
            if not valid_id(d):
                self.fail(path + (j,), f"invalid id {_show(d)}")
            if d in seen:
                self.fail(path + (j,), f"{_show(d)} is listed twice")
            seen.add(d)
            out.append(d)
        return out

    def read_prompt_file(self, path: tuple, pfile: str, plan_dir: str) -> str:
        if os.path.isabs(pfile):
            self.fail(path, f"{_show(pfile)} must be relative to the plan's folder")
        root = os.path.realpath(plan_dir)
        real = os.path.realpath(os.path.join(plan_dir, pfile))
        if real != root and not real.startswith(root + os.sep):
            self.fail(path, f"{_show(pfile)} resolves outside the plan's folder ({real})")
        try:
            st = os.stat(real)
        except OSError as e:
            self.fail(path, f"cannot read {_show(pfile)}: {e.strerror}")
        if not os.path.isfile(real):
            self.fail(path, f"{_show(pfile)} is not a regular file")
        if st.st_size > MAX_PROMPT_BYTES:
            self.fail(path, f"{_show(pfile)} is {st.st_size} bytes; the limit is {MAX_PROMPT_BYTES}")
        try:
            with open(real, "rb") as f:
                data = f.read(MAX_PROMPT_BYTES + 1)
        except OSError as e:
            self.fail(path, f"cannot read {_show(pfile)}: {e.strerror}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(path, f"{_show(pfile)} is not UTF-8 text")
        if "\x00" in text:
            self.fail(path, f"{_show(pfile)} contains a NUL character")
        return text


def _has_lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _fmt_cycle(cycle: list[str]) -> str:
    """`a -> b -> a`; a long cycle keeps its ends and says how much it left out (one line)."""
    n = len(cycle) - 1
    if n <= 12:
        return "dependency cycle: " + " -> ".join(cycle)
    return ("dependency cycle: " + " -> ".join(cycle[:4]) + f" -> ... {n - 7} more of {n} tasks ... -> "
            + " -> ".join(cycle[-4:]))


def _successors(tasks, by_id: dict[str, int]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in tasks]
    for i, t in enumerate(tasks):
        for d in (*t.deps, *t.soft_deps):
            out[by_id[d]].append(i)
    return out


def _value_lines(text: str) -> dict[tuple, int]:
    """Map each JSON path to the line its value starts on (iterative scan of valid JSON; only
    run when reporting an error)."""
    out: dict[tuple, int] = {}
    line = 1
    i, n = 0, len(text)
    stack: list[list] = []     # [kind, key_or_index, expecting_key]
    path: list = []
    pending_key = None

    def value_start():
        nonlocal pending_key
        if stack:
            top = stack[-1]
            if top[0] == "a":
                top[1] += 1
                p = tuple(path) + (top[1],)
            else:
                p = tuple(path) + (pending_key,)
        else:
            p = ()
        out.setdefault(p, line)
        return p

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r,:":
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            s = text[i: j + 1]
            i = j + 1
            if stack and stack[-1][0] == "o" and stack[-1][2]:
                try:
                    pending_key = json.loads(s)
                except ValueError:
                    pending_key = s
                stack[-1][2] = False
            else:
                value_start()
                if stack and stack[-1][0] == "o":
                    stack[-1][2] = True
        elif c in "[{":
            p = value_start()
            if stack and stack[-1][0] == "o":
                stack[-1][2] = True
            stack.append(["a", -1, False] if c == "[" else ["o", None, True])
            path[:] = list(p)
            i += 1
        elif c in "]}":
            stack.pop()
            if path:
                path.pop()
            i += 1
        else:
            j = i
            while j < n and text[j] not in " \t\r\n,]}":
                j += 1
            value_start()
            if stack and stack[-1][0] == "o":
                stack[-1][2] = True
            i = j
    return out


# ------------------------------------------------------------------------------ JSON Schema
def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of dag.json, generated from the field table."""
    def prop(f: F) -> dict:
        k = f.kind
        if k == "id":
            s = {"type": "string", "pattern": "^" + ID_RE.pattern + "$"}
        elif k == "ids":
            s = {"type": "array", "uniqueItems": True, "items": {"$ref": "#/$defs/id"}}
        elif k in ("string", "text"):
            s = {"type": "string"}
            if k == "string":
                s["minLength"] = 1
        elif k in ("integer", "number"):
            s = {"type": k}
            if f.lo is not None:
                s["minimum"] = f.lo
            if f.hi is not None:
                s["maximum"] = f.hi
            if f.gt is not None:
                s["exclusiveMinimum"] = f.gt
        elif k == "enum":
            s = {"enum": list(f.choices)}
        elif k == "object":
            s = {"$ref": "#/$defs/knobs"}
        elif k == "options":
            s = {"type": "object", "additionalProperties": False,
                 "properties": {kk: prop(ff) for kk, ff in f.fields.items()}}
        elif k == "strings":
            s = {"type": "array", "items": {"type": "string", "minLength": 1}}
        elif k == "json":
            s = {"type": "object"}
        elif k == "mem":
            s = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^" + MEM_RE.pattern + "$"}]}
        elif k == "tasks":
            s = {"type": "array", "minItems": 1, "maxItems": MAX_TASKS, "items": {"$ref": "#/$defs/task"}}
        else:
            raise AssertionError(k)
        if f.nullable:
            if "type" in s:
                s["type"] = [s["type"], "null"]
            else:
                s = {"anyOf": [s, {"type": "null"}]}
        if f.default is not None:
            s["default"] = f.default
        s["description"] = f.doc
        return s

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://dagrun.dev/schema/dag.schema.json",
        "title": "dagrun plan (dag.json)",
        "type": "object",
        "additionalProperties": False,
        "required": ["tasks"],
        "properties": {k: prop(f) for k, f in TOP_FIELDS.items()},
        "$defs": {
            "id": {"type": "string", "pattern": "^" + ID_RE.pattern + "$"},
            "knobs": {"type": "object", "additionalProperties": False,
                      "properties": {k: prop(f) for k, f in KNOBS.items()}},
            "task": {
                "type": "object", "additionalProperties": False, "required": ["id"],
                "oneOf": [{"required": ["prompt"]}, {"required": ["prompt_file"]}],
                "properties": {k: prop(f) for k, f in TASK_FIELDS.items()},
            },
        },
    }


SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema", "dag.schema.json")


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"
