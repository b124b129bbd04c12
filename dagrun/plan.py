"""Parse and validate dag.json into frozen dataclasses.

One table (FIELDS) describes every field; both the validator and the JSON Schema shipped in
dagrun/schema/ are generated from it, so they cannot disagree. Errors are one line:
`dag.json:14: tasks[3].deps[1]: unknown dependency "desing" (asked for by task "implement")`.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, make_dataclass
from operator import itemgetter
from functools import cached_property
from collections.abc import Iterable

import orjson

from . import bulk, conditions, fanrules, lazyre, presets
from . import states as S
from .digests import sha256
from .records import NEW, frozen_methods, plain_methods
from .errors import PlanError
from .scheduler import CycleError, topo_order
from .wsrules import check_glob

ID_RE = lazyre.Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PLAN_BYTES = 64 * 1024 * 1024
MAX_PROMPT_BYTES = 16 * 1024 * 1024
MAX_TASKS = 100_000
RUNNER_NAMES = ("local", "slurm", "ray")                 # "runner" in a plan; executor.PLAN_RUNNERS maps them
CLUSTER_KEYS = ("runner", "resources", "slurm", "ray")   # Task fields left out of plan.json at their defaults
CLUSTER_OPTIONS = ("resources", "slurm", "ray")          # Task fields that are objects
_SHARED_NUMBERS = ("timeout", "retry_backoff", "stall_timeout", "kill_grace", "context_limit", "max_output",
                   "check_timeout", "budget_share")
_SHARED_STRINGS = ("agent", "workdir", "retry_context", "runner", "trigger", "prompt_file", "mutex", "serial")
MEM_RE = lazyre.Pattern(r"[0-9]{1,12}[KMGT]?")
MAX_SECONDS = 30 * 24 * 3600          # a month: anything longer is a typo
DEFAULT_CONTEXT_LIMIT = 64 * 1024      # bytes of each dependency's output put into a prompt
DEFAULT_LEASE = 60.0
DEFAULT_AGING = 60.0                   # seconds per priority point a waiting class gains (scheduler.py)
HOOK_EVENTS = ("on_done", "on_failed", "on_retrying", "on_cancelled", "on_blocked", "on_skipped", "on_approval_needed",
               "on_goal_finished")
DEFAULT_HOOK_TIMEOUT = 30.0
ENV_RE = lazyre.Pattern(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def valid_id(s: object) -> bool:
    return isinstance(s, str) and ID_RE.fullmatch(s) is not None


def agent_key(agent: str) -> str | None:
    """The name an agent limit counts a task under: a preset's name without its @
    (`@claude --model x` -> claude) or the program's file name (`/usr/bin/claude -p` -> claude);
    None if that is no valid id."""
    word = (agent or "").strip().split(None, 1)[0] if (agent or "").strip() else ""
    word = word[1:] if word.startswith("@") else os.path.basename(word)
    return word if valid_id(word) else None


def check_id(kind: str, s: str) -> str:
    """For ids typed on the command line: the same rule as in plans, one clear line."""
    if not valid_id(s):
        raise PlanError(f"invalid {kind} id {s!r}: use 1-128 of A-Z a-z 0-9 . _ - , starting with a letter or digit")
    return s


# ------------------------------------------------------------------------------ the field table
_set = object.__setattr__     # the frozen classes' __init__ (as @dataclass(frozen=True) sets fields)
_F_FIELDS = ("kind", "doc", "lo", "hi", "gt", "choices", "default", "nullable", "fields")


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class F:
    """One field of the plan's field table: its kind, documentation and bounds."""
    kind: str                        # string|text|id|ids|integer|number|enum|object|tasks|argv|estimate|boolean
    doc: str
    lo: float | None = None          # inclusive minimum
    hi: float | None = None          # inclusive maximum
    gt: float | None = None          # exclusive minimum
    choices: tuple[str, ...] = ()
    default: object = None
    nullable: bool = False
    fields: object = None              # kind "object" of a runner's options: its own field table

    def __init__(self, kind, doc, lo=None, hi=None, gt=None, choices=(), default=None, nullable=False, fields=None):
        _set(self, "kind", kind)
        _set(self, "doc", doc)
        _set(self, "lo", lo)
        _set(self, "hi", hi)
        _set(self, "gt", gt)
        _set(self, "choices", choices)
        _set(self, "default", default)
        _set(self, "nullable", nullable)
        _set(self, "fields", fields)

    __repr__, __eq__ = plain_methods(*_F_FIELDS)
    __setattr__, __delattr__, __hash__ = frozen_methods(*_F_FIELDS)


KNOBS: dict[str, F] = {  # allowed in "defaults" and on every task
    "agent": F("string", "Shell command, run as `sh -c \"$agent\"` with the rendered prompt on stdin; or a preset: "
               "`@claude`, `@codex`, `@gemini`, `@aider`, `@llm` (or one from $DAGRUN_HOME/presets.json) with extra arguments."),
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
    "check": F("argv", "Acceptance check: a program and its arguments (never a shell), run in the workdir after the "
               "agent exits 0, with DAGRUN_OUTPUT = the output's path; non-zero fails the attempt (check_failed). null: none.",
               nullable=True),
    "check_timeout": F("number", "Seconds the acceptance check may run before it is killed (and fails).",
                       gt=0, hi=MAX_SECONDS, default=600.0),
    "cache": F("boolean", "Reuse the result of an identical earlier run (same agent, check, normalised prompt and "
               "upstream outputs) from the home's result cache instead of running the agent.", default=False),
    "estimate": F("estimate", "What a run of the task is expected to take, for `dagrun plan`: {\"seconds\": s, \"usd\": d} "
                  "(either may be left out: then the history of earlier runs in this home is used)."),
    "budget_share": F("number", "The part of the plan's budget one task may spend before it is told (logged, an event, "
                      "$DAGRUN_BUDGET_FILE); the pool itself is the hard limit.", gt=0, hi=1, default=0.4),
    # -- cluster runners (dagrun/slurm.py): where an attempt runs and what it may use
    "runner": F("enum", "Where the agent runs: \"local\" (a process of the worker), \"slurm\" (one sbatch job per attempt), \"ray\" (one Ray task per attempt).",
                choices=RUNNER_NAMES, default="local"),
    "resources": F("resources", "What the agent uses. Counted against the capacities of the plan (top-level "
                   "\"resources\"), the home and the tenant (`dagrun resources set`): any name -> a whole number of units "
                   "(e.g. {\"repo\": 1, \"gpu\": 1}; see docs/resources.md). cpus, mem and gpu are also passed to cluster "
                   "runners: cpus (--cpus-per-task), mem (--mem, e.g. \"2G\"; never counted), gpu (--gres=gpu:N).", fields={
                       "cpus": F("integer", "CPUs per attempt (--cpus-per-task).", lo=1, hi=4096),
                       "mem": F("mem", "Memory per attempt: megabytes, or a number with K, M, G or T (--mem)."),
                       "gpu": F("integer", "GPUs per attempt (--gres=gpu:N).", lo=0, hi=1024)}),
    "mutex": F("id", "A resource of capacity 1 shared by every goal of the home (unless `dagrun resources set` gives "
               "the name another capacity): tasks naming the same mutex never run at the same time."),
    "slurm": F("options", "Options of the slurm runner.", fields={
        "partition": F("string", "sbatch --partition."),
        "account": F("string", "sbatch --account."),
        "sbatch_args": F("strings", "Extra sbatch arguments, one per item (e.g. [\"--qos=short\"])."),
        "mode": F("enum", "\"jobs\" (default): one sbatch job per attempt; \"steps\": one `srun --exact` job step per "
                  "attempt inside the allocation the driver runs in (`salloc ... dagrun run`, `sbatch --wrap 'dagrun "
                  "worker --until-idle'`): ~50 ms per task instead of ~1 s; see docs/cluster.md.",
                  choices=("jobs", "steps"), default="jobs"),
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
    "workspace": F("boolean", "false: this task touches no code and runs without a git worktree (when the plan has a workspace).",
                   default=True),
    "files": F("globs", "Repository paths (globs, ** for any depth) this task may edit: tasks whose globs overlap never run at the same time."),
    "hooks": F("hooks", "Commands / webhooks run when this task is done, failed, retrying, cancelled or blocked "
               "(see docs/integrations.md)."),
    "serial": F("id", "Serial group: the tasks of a group run one at a time, in plan order (each waits until the "
                "group's earlier tasks have ended, whatever their outcome)."),
    "when": F("when", "Condition over the dependencies' outcomes and outputs, judged when they have ended; false: "
              "the task is skipped (see docs/conditions.md). E.g. {\"output_of\": \"review\", \"contains\": \"NEEDS_FIX\"}."),
    "trigger": F("enum", "When the task may run, from its deps' outcomes: all_success (all done), all_done (all ended), "
                 "one_success, one_failed, none_failed (see docs/conditions.md).", choices=S.TRIGGERS,
                 default="all_success"),
    "approval": F("approval", "An approval gate: no agent runs; once its deps are done it waits (awaiting_approval) "
                  "until `dagrun approve` (done, the note is its output) or `dagrun reject` (failed). "
                  "{\"prompt\": \"...\", \"timeout\": \"2h\"} (timeout: rejected when nobody decided)."),
    "for_each": F("for_each", "Fan-out: this task is a template. When its dependencies are done, the output of the "
                  "task `from` (a JSON array, or JSON Lines) becomes one task per item, `<id>.<k>` (k = 0, 1, ...), "
                  "each with `{{as}}` / `{{as.field}}` in its prompt replaced by the item; tasks that depend on the "
                  "template wait for every instance (see docs/fanout.md)."),
    **KNOBS,
}

FOR_EACH_FIELDS: dict[str, F] = {
    "from": F("id", "The task whose output lists the items (added to deps if missing)."),
    "as": F("string", "The name the item has in the prompt: {{item}}, {{item.field}}.", default="item"),
    "max": F("integer", "The most items accepted: more fails the template.", lo=1, hi=10_000, default=100),
}
AS_RE = lazyre.Pattern(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
DEFAULT_MAX_TASKS = 1000

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
    "workspace": F("workspace", "Code workspace: every task runs in its own git worktree of `repo` (relative to the plan's folder), "
                   "starting from `base` with its prerequisites' commits merged in."),
    "hooks": F("hooks", "Commands / webhooks run on every task's state changes and when the goal finishes "
               "(see docs/integrations.md)."),
    "max_tasks": F("integer", "The most tasks the goal may hold once `dagrun add` and fan-out (for_each) have grown "
                   "it (default: 1000). A plan may start with more; it then cannot grow.", lo=1, hi=MAX_TASKS),
    "budget": F("budget", "The goal's spending pool: {\"usd\": d, \"tokens\": n} (either or both). A ready task whose "
                "estimate does not fit in what is left does not start (blocked: budget); a running task that "
                "pushes the spend past it is stopped. `dagrun budget GOAL --add D` raises it."),
    "resources": F("capacities", "Capacities of the goal: resource name -> units its tasks may hold at once "
                   "(beside the home's and the tenant's, `dagrun resources set`); a task asking for more is an error.",
                   lo=1),
    "agent_limits": F("capacities", "At most this many tasks of the goal run each agent at once: agent name "
                      "(\"claude\" for \"@claude ...\" or \"claude ...\") -> count; the same as a capacity of the "
                      "resource agent.NAME.", lo=1),
    "tenant": F("id", "The tenant the goal belongs to: `dagrun resources set --tenant T NAME N` limits what all "
                "of a tenant's goals hold together."),
    "weight": F("number", "The goal's share of a worker serving several goals: a weight-2 goal gets two starts for each "
                "one of a weight-1 goal while both have ready tasks (see docs/scheduling.md).", gt=0, hi=1000, default=1.0),
    "aging": F("number", "Seconds after which a priority class that waits for a start competes one priority higher "
               "(repeatedly), so a low priority cannot starve; 0: no aging.", lo=0, hi=MAX_SECONDS, default=DEFAULT_AGING),
    "tasks": F("tasks", "The sub-goals."),
}

MAX_UNITS = 100_000                 # a capacity or a task's need of one resource
AGENT_RES = "agent."                # the resource an agent limit is a capacity of: agent.<name>
MEM = "mem"                         # a cluster runner's memory: passed on, never counted

WORKSPACE_FIELDS: dict[str, F] = {
    "repo": F("string", "The git repository, relative to the plan's folder."),
    "base": F("string", "Branch or commit the goal starts from (default: what is checked out in repo); pinned when the goal is created.",
              default="HEAD"),
    "author": F("author", "Identity of the commits dagrun makes: {\"name\": ..., \"email\": ...} (default: dagrun <dagrun@localhost>)."),
    "integrate": F("boolean", "true: when the goal ends with every task done, merge the task branches into dagrun/<goal>/_integrated.",
                   default=False),
}


# ------------------------------------------------------------------------------ dataclasses
_NO_OPTIONS: dict = {}      # the one empty resources/slurm/ray of every task that sets none (never mutated)


_REQUIRED = object()
# The fields of a Task in order: name -> default (_REQUIRED: none). `hooks`, `when`, `approval`
# and `origin` are left out of equality (_NOT_COMPARED); the dict-valued ones out of the hash.
_TASK_SPEC: dict[str, object] = {
    "id": _REQUIRED, "deps": _REQUIRED, "soft_deps": _REQUIRED, "prompt": _REQUIRED, "prompt_file": _REQUIRED,
    "agent": _REQUIRED, "timeout": _REQUIRED, "retries": _REQUIRED, "retry_backoff": _REQUIRED,
    "retry_context": _REQUIRED, "stall_timeout": _REQUIRED, "kill_grace": _REQUIRED, "workdir": _REQUIRED,
    "context_limit": _REQUIRED, "max_output": _REQUIRED, "priority": _REQUIRED,
    "description": None,
    "check": None,                 # tuple of argv, or None
    "check_timeout": 600.0,
    "cache": False,                # the result cache (cache.py); not part of the definition
    "estimate_seconds": None,      # `estimate` (for `dagrun plan`; not part of the definition)
    "estimate_usd": None,
    "workspace": True,             # false: no git worktree for this task
    "files": (),                   # globs it may edit (the mutex)
    "hooks": None,                 # event -> [hook]; not in the digest
    "budget_share": 0.4,           # of the plan's budget (budget.py; not part of the definition)
    "runner": "local",             # plan name: local | slurm | ray
    "resources": _NO_OPTIONS,      # cpus, mem, gpu, any resource name -> units
    "slurm": _NO_OPTIONS,          # the slurm runner's options
    "ray": _NO_OPTIONS,            # the ray runner's options
    "mutex": None,                 # a home-wide resource of capacity 1 (resources.py)
    "serial": None,                # serial group: one at a time, in plan order
    "when": None,                  # conditions.py expression
    "trigger": "all_success",      # scheduler.verdict rule
    "approval": None,              # {"prompt", "timeout"}: a gate
    "for_each": None,              # {"from", "as", "max"}: a template (fanrules.py)
    "fanout": None,                # plan.json only: a template's number of instances once expanded
    "origin": None,                # plan.json only: which edit made it
}
_TASK_KEYS = tuple(_TASK_SPEC)
_ALL_KEYS = frozenset(_TASK_KEYS)
_TASK_DEFAULTS = {k: v for k, v in _TASK_SPEC.items() if v is not _REQUIRED}
_NOT_COMPARED = frozenset(("hooks", "when", "approval", "origin"))
_NOT_HASHED = frozenset(("hooks", "resources", "slurm", "ray", "when", "approval", "for_each", "origin"))
_values = itemgetter(*_TASK_KEYS)
_compared = itemgetter(*(i for i, k in enumerate(_TASK_KEYS) if k not in _NOT_COMPARED))
_hashed = itemgetter(*(i for i, k in enumerate(_TASK_KEYS) if k not in _NOT_HASHED))


_DIGESTS: dict[int, tuple] = {}     # id(Task) -> (the Task, its definition digest)
_DIGESTS_MAX = 4096                  # the running attempts' tasks: cleared when full (bounded memory)


class Task(tuple):
    """One task of a plan: immutable, built with keywords (`Task(id=..., deps=..., ...)`),
    fields read as attributes. A tuple underneath, not a dataclass: a 100 000-task plan is
    built by every `status`, `submit` and worker that loads it, and a tuple of the fields is
    made in one step where a frozen dataclass sets ~45 attributes one by one (ARCHITECTURE.md,
    "Plans of 100 000 tasks"). t.replace(**changes) is dataclasses.replace."""
    __slots__ = ()

    def __new__(cls, **kw):
        d = {**_TASK_DEFAULTS, **kw}
        if d.keys() != _ALL_KEYS:
            unknown = sorted(set(kw) - _ALL_KEYS)
            if unknown:
                raise TypeError(f"Task() got an unexpected keyword argument {unknown[0]!r}")
            raise TypeError(f"Task() missing required keyword argument {sorted(_ALL_KEYS - d.keys())[0]!r}")
        return tuple.__new__(cls, _values(d))

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _compared(self) == _compared(other)

    def __ne__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _compared(self) != _compared(other)

    def __hash__(self):
        return hash(_hashed(self))

    def __repr__(self) -> str:
        return "Task(" + ", ".join(f"{k}={v!r}" for k, v in zip(_TASK_KEYS, self)) + ")"

    def __reduce__(self):
        return (_task_of, (tuple(self),))

    def fields(self) -> dict:
        """Field name -> value, every field."""
        return dict(zip(_TASK_KEYS, self))

    def replace(self, **changes) -> "Task":
        return Task(**{**self.fields(), **changes})

    def needs(self) -> dict[str, int]:
        """Resource name -> units this task holds while it runs: its `resources` (but mem),
        its mutex, and one unit of agent.<name> (counted only where a capacity exists)."""
        out = {k: int(v) for k, v in self.resources.items() if k != MEM and isinstance(v, int) and v > 0}
        if self.mutex:
            out[self.mutex] = max(out.get(self.mutex, 0), 1)
        key = agent_key(self.agent)
        if key:
            out.setdefault(AGENT_RES + key, 1)
        return out

    @property
    def declared_deps(self) -> tuple[str, ...]:
        """deps as written: an expanded template's deps end with its instances (fanrules)."""
        return self.deps[:len(self.deps) - self.fanout] if self.fanout else self.deps

    @property
    def instances(self) -> tuple[str, ...]:
        """An expanded template's instance ids (empty otherwise)."""
        return self.deps[len(self.deps) - self.fanout:] if self.fanout else ()

    def definition_digest(self) -> str:
        """What decides the task's result: a done task whose digest is unchanged is kept
        when a plan is replaced. Timeouts, retries and priority do not change the result.
        Remembered per Task object (an engine asks three times per attempt)."""
        hit = _DIGESTS.get(id(self))
        if hit is not None and hit[0] is self:
            return hit[1]
        digest = self._digest()
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        _DIGESTS[id(self)] = (self, digest)     # the Task is kept alive: its id is not reused
        return digest

    def _digest(self) -> str:
        d = [self.prompt, self.agent, list(self.declared_deps), list(self.soft_deps), self.workdir,
             self.context_limit, self.retry_context]
        if self.for_each:       # a template: what it fans out over (not `max`, not its instances)
            d.append(["for_each", self.for_each["from"], self.for_each["as"]])
        if self.check:           # what is accepted as a result (absent: the digests of older plans hold)
            d.append(list(self.check))
        if not self.workspace:
            d.append("no-workspace")
        if self.when is not None or self.trigger != "all_success" or self.approval is not None:
            d.append([self.when, self.trigger, self.approval])     # absent: older digests hold
        return sha256(orjson.dumps(d)).hexdigest()[:16]

    def to_dict(self) -> dict:
        if _optional(self) == _OPTIONAL_UNUSED:      # most tasks: plan.json has the always-there fields only
            d = dict(zip(_ALWAYS_KEYS, _always(self)))
            d["deps"] = list(self.deps)
            d["soft_deps"] = list(self.soft_deps)
            return d
        return self._to_dict_generic()

    def _to_dict_generic(self) -> dict:
        d = self.fields()
        for k in CLUSTER_KEYS:         # left out at their defaults: plan.json of local plans unchanged
            if d[k] == _TASK_SPEC[k] or d[k] == {}:
                del d[k]
        d["deps"] = list(self.deps)
        d["soft_deps"] = list(self.soft_deps)
        if self.check:
            d["check"] = list(self.check)
        else:         # absent when unused: plan.json of plans without checks stays byte-identical
            del d["check"], d["check_timeout"]
        for k in ("estimate_seconds", "estimate_usd"):
            if d[k] is None:
                del d[k]
        if not d["cache"]:
            del d["cache"]
        d["files"] = list(self.files)
        for k, dflt in (("workspace", True), ("files", [])):   # plans without workspaces keep
            if d[k] == dflt:                                    # their plan.json byte for byte
                del d[k]
        if d["hooks"] is None:
            del d["hooks"]            # plans without hooks keep their plan.json bytes
        if d["budget_share"] == 0.4:   # absent when default: plan.json of older plans stays byte-identical
            del d["budget_share"]
        for k, dflt in (("mutex", None), ("serial", None), ("when", None), ("trigger", "all_success"),
                        ("approval", None), ("for_each", None), ("fanout", None), ("origin", None)):
            if d[k] == dflt:      # absent unless used: older plan.json bytes hold
                del d[k]
        return d


# Task.to_dict of a task that uses none of the optional fields: every field that plan.json
# leaves out at its default (below) at that default; the result is the generic path's, built
# without making the whole dict and deleting 21 keys (0.31-0.48 -> 0.16 s at 100 000 tasks).
# check_timeout is absent whenever check is: it is neither "always" nor "optional" here.
_OPTIONAL_UNUSED_SPEC = {"check": None, "cache": False, "estimate_seconds": None, "estimate_usd": None,
                         "workspace": True, "files": (), "hooks": None, "budget_share": 0.4, "runner": "local",
                         "resources": {}, "slurm": {}, "ray": {}, "mutex": None, "serial": None, "when": None,
                         "trigger": "all_success", "approval": None, "for_each": None, "fanout": None,
                         "origin": None}
_ALWAYS_KEYS = tuple(k for k in _TASK_KEYS if k not in _OPTIONAL_UNUSED_SPEC and k != "check_timeout")
_always = itemgetter(*(_TASK_KEYS.index(k) for k in _ALWAYS_KEYS))
_optional = itemgetter(*(_TASK_KEYS.index(k) for k in _OPTIONAL_UNUSED_SPEC))
_OPTIONAL_UNUSED = tuple(_OPTIONAL_UNUSED_SPEC.values())


def _knob_fields(knobs: dict) -> dict:
    """The Task fields that come from the knobs (a task's own over the plan's defaults)."""
    def get(k):
        return knobs.get(k, KNOBS[k].default)

    timeout, stall = get("timeout"), get("stall_timeout")
    return dict(
        timeout=float(timeout) if timeout is not None else None, retries=int(get("retries")),
        retry_backoff=float(get("retry_backoff")), retry_context=get("retry_context"),
        stall_timeout=float(stall) if stall is not None else None, kill_grace=float(get("kill_grace")),
        context_limit=int(get("context_limit")), max_output=get("max_output"),
        check=get("check"), check_timeout=float(get("check_timeout")),
        cache=bool(get("cache")), budget_share=float(get("budget_share")),
        estimate_seconds=(knobs.get("estimate") or {}).get("seconds"), estimate_usd=(knobs.get("estimate") or {}).get("usd"),
        runner=get("runner"), resources=_options(knobs.get("resources")), slurm=_options(knobs.get("slurm")),
        ray=_options(knobs.get("ray")), mutex=knobs.get("mutex"))


def _options(v: dict | None) -> dict:
    """A task's resources/slurm/ray: a copy, or the shared empty one."""
    return dict(v) if v else _NO_OPTIONS


def _task_of(values: tuple) -> Task:
    """Unpickling (Task.__reduce__): the fields in order."""
    return tuple.__new__(Task, values)


try:                       # the C accessor namedtuple uses; else the same through itemgetter
    from collections import _tuplegetter
except ImportError:        # pragma: no cover
    def _tuplegetter(i, doc):
        return property(itemgetter(i), doc=doc)
for _i, _k in enumerate(_TASK_KEYS):
    setattr(Task, _k, _tuplegetter(_i, f"Task.{_k}"))


class _TaskFields:
    """Task.__dataclass_fields__, the dataclass field table that dataclasses.fields() and
    dataclasses.replace() (and orjson) read on a Task, built on its first use: make_dataclass
    of 38 fields is ~2.5 ms of every start, and the run path never asks for it."""

    def __get__(self, obj, cls=None):
        from typing import Any
        table = make_dataclass("Task", [
            (k, Any) if v is _REQUIRED else
            (k, Any, field(default_factory=lambda v=v: v, compare=k not in _NOT_COMPARED, hash=k not in _NOT_HASHED))
            if isinstance(v, dict) else (k, Any, field(default=v, compare=k not in _NOT_COMPARED, hash=k not in _NOT_HASHED))
            for k, v in _TASK_SPEC.items()], frozen=True).__dataclass_fields__
        type.__setattr__(Task, "__dataclass_fields__", table)      # from now on a plain class attribute
        return table


Task.__dataclass_fields__ = _TaskFields()


_PLAN_SHOWN = ("goal", "source", "plan_dir", "tasks", "max_parallel", "on_failure", "lease", "description", "workspace",
               "hooks", "budget", "capacities", "agent_limits", "tenant", "max_tasks", "weight", "aging")
_PLAN_COMPARED = tuple(k for k in _PLAN_SHOWN if k != "hooks")


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Plan:
    """A validated plan: the goal, where it came from, its tasks and its goal-wide settings."""
    goal: str
    source: str            # absolute path of the dag.json it came from
    plan_dir: str          # absolute folder: agents run here, prompt_file is read from here
    tasks: tuple[Task, ...]
    max_parallel: int | None = None
    on_failure: str = "continue"
    lease: float = DEFAULT_LEASE
    description: str | None = None
    workspace: dict | None = None      # {"repo": absolute, "base", "author"?, "integrate"}
    hooks: dict | None = field(default=None, compare=False)   # event -> [hook], see HOOK_EVENTS
    budget: dict | None = None     # {"usd": float, "tokens": int}, either or both (budget.py)
    capacities: dict | None = None     # plan "resources": name -> units (the goal's pool, resources.py)
    agent_limits: dict | None = None   # agent name -> tasks running it at once (= capacity of agent.<name>)
    tenant: str | None = None
    max_tasks: int | None = None   # the cap on growth by `dagrun add` and fan-out (None: the default)
    weight: float = 1.0            # fair share across goals (scheduler.FairShare)
    aging: float = DEFAULT_AGING   # seconds per priority point (scheduler.Scheduler)
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __init__(self, goal, source, plan_dir, tasks, max_parallel=None, on_failure="continue", lease=DEFAULT_LEASE,
                 description=None, workspace=None, hooks=None, budget=None, capacities=None, agent_limits=None,
                 tenant=None, max_tasks=None, weight=1.0, aging=DEFAULT_AGING, _index=NEW):
        _set(self, "goal", goal)
        _set(self, "source", source)
        _set(self, "plan_dir", plan_dir)
        _set(self, "tasks", tasks)
        _set(self, "max_parallel", max_parallel)
        _set(self, "on_failure", on_failure)
        _set(self, "lease", lease)
        _set(self, "description", description)
        _set(self, "workspace", workspace)
        _set(self, "hooks", hooks)
        _set(self, "budget", budget)
        _set(self, "capacities", capacities)
        _set(self, "agent_limits", agent_limits)
        _set(self, "tenant", tenant)
        _set(self, "max_tasks", max_tasks)
        _set(self, "weight", weight)
        _set(self, "aging", aging)
        _set(self, "_index", {} if _index is NEW else _index)
        self.__post_init__()

    __repr__ = plain_methods(*_PLAN_SHOWN)[0]
    __eq__ = plain_methods(*_PLAN_COMPARED)[1]
    __setattr__, __delattr__, __hash__ = frozen_methods(*_PLAN_COMPARED)

    def __post_init__(self):
        self._index.update((t.id, t) for t in self.tasks)

    def task(self, tid: str) -> Task:
        return self._index[tid]

    def has(self, tid: str) -> bool:
        return tid in self._index

    @cached_property
    def hook_events(self) -> frozenset:
        """The hook events (on_done, ...) the plan or any of its tasks has a hook for."""
        out = set(self.hooks or ())
        for t in self.tasks:
            out.update(t.hooks or ())
        return frozenset(out)

    @cached_property
    def files_of(self) -> dict[str, tuple[str, ...]] | None:
        """task -> its declared `files` globs; None when no task declares any (the mutex is off)."""
        return {t.id: t.files for t in self.tasks} if any(t.files for t in self.tasks) else None

    def ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    def goal_capacities(self) -> dict[str, int]:
        """The plan's own capacities, agent limits as agent.<name>."""
        out = dict(self.capacities or {})
        out.update({AGENT_RES + k: v for k, v in (self.agent_limits or {}).items()})
        return out

    @cached_property
    def has_mutex(self) -> bool:
        """Some task names a mutex (resources.plan_pools asks on every status and submit)."""
        return any(t.mutex for t in self.tasks)

    @cached_property
    def serial_of(self) -> dict[str, str] | None:
        """task -> its serial group; None when no task has one (the rule is off)."""
        return {t.id: t.serial for t in self.tasks if t.serial} or None

    def with_tasks(self, tasks) -> "Plan":
        """The same plan with other tasks (a plan edit: add, fan-out)."""
        return Plan(goal=self.goal, source=self.source, plan_dir=self.plan_dir, tasks=tuple(tasks),
                    max_parallel=self.max_parallel, on_failure=self.on_failure, lease=self.lease,
                    description=self.description, workspace=self.workspace, hooks=self.hooks,
                    budget=self.budget, max_tasks=self.max_tasks, capacities=self.capacities,
                    agent_limits=self.agent_limits, tenant=self.tenant, weight=self.weight, aging=self.aging)

    def task_cap(self) -> int:
        """The most tasks the goal may hold after add / fan-out (max_tasks)."""
        return self.max_tasks or DEFAULT_MAX_TASKS

    @cached_property
    def unexpanded(self) -> tuple[str, ...]:
        """Templates (for_each) not expanded yet: the scheduler never hands them out."""
        return tuple(t.id for t in self.tasks if t.for_each and t.fanout is None)

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
        d = {
            "version": 1, "goal": self.goal, "source": self.source, "plan_dir": self.plan_dir,
            "max_parallel": self.max_parallel, "on_failure": self.on_failure, "lease": self.lease,
            "description": self.description, "tasks": [t.to_dict() for t in self.tasks],
            **({"budget": self.budget} if self.budget else {}),
            **({"max_tasks": self.max_tasks} if self.max_tasks else {}),
        }
        if self.workspace:
            d["workspace"] = self.workspace
        if self.hooks is not None:
            d["hooks"] = self.hooks
        for k, v in (("resources", self.capacities), ("agent_limits", self.agent_limits), ("tenant", self.tenant)):
            if v:
                d[k] = v
        if self.weight != 1.0:          # absent at their defaults: older plan.json bytes unchanged
            d["weight"] = self.weight
        if self.aging != DEFAULT_AGING:
            d["aging"] = self.aging
        return d

    def canonical(self) -> bytes:
        """plan.json: sorted keys, indented, UTF-8 -- byte-identical for the same plan."""
        return self._canonical

    @cached_property
    def _canonical(self) -> bytes:
        with bulk.paused():     # a dict per task, all alive until dumped: 0.9-1.1 -> 0.4 s at 100 000 tasks
            return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 |
                                orjson.OPT_APPEND_NEWLINE)

    def digest(self) -> str:
        return sha256(self.canonical()).hexdigest()[:16]

    @classmethod
    def from_json(cls, data: bytes) -> "Plan":
        """Load plan.json's bytes (see from_dict). The parsed task objects are dropped one by
        one as their Tasks are built, so the peak is not the JSON tree plus the plan."""
        with bulk.paused():
            return cls.from_dict(orjson.loads(data), consume=True)

    @classmethod
    def from_dict(cls, d: dict, *, consume: bool = False) -> "Plan":
        """Load a normalised plan (plan.json under the home: already validated, trusted).
        Equal strings are shared (a dependency is the depended-on task's own id string, one
        agent/workdir string for all tasks that have it), empty lists become the empty tuple,
        empty option objects one shared dict. consume: d["tasks"] is emptied on the way."""
        with bulk.paused():
            raw = d["tasks"]
            memo: dict = {}
            one = memo.setdefault
            floats, ints = {}.setdefault, {}.setdefault    # apart: 1 == 1.0 == True as dict keys
            tasks = []
            for k, t in enumerate(raw):
                t = t if consume else dict(t)
                t["id"] = one(t["id"], t["id"])
                t["deps"] = tuple([one(x, x) for x in t["deps"]])
                t["soft_deps"] = tuple([one(x, x) for x in t["soft_deps"]])
                for key in _SHARED_STRINGS:
                    v = t.get(key)
                    if v.__class__ is str:
                        t[key] = one(v, v)
                for key in _SHARED_NUMBERS:      # floats and big ints are objects of their own too
                    v = t.get(key)
                    if v.__class__ is float:
                        t[key] = floats(v, v)
                    elif v.__class__ is int:
                        t[key] = ints(v, v)
                c = t.get("check")
                t["check"] = tuple(c) if c else None
                f = t.get("files")
                t["files"] = tuple(f) if f else ()
                for key in CLUSTER_OPTIONS:
                    if not t.get(key):
                        t[key] = _NO_OPTIONS
                tasks.append(Task(**t))
                if consume:
                    raw[k] = None
            if consume:
                raw.clear()
        return cls(goal=d["goal"], source=d["source"], plan_dir=d["plan_dir"], tasks=tuple(tasks),
                   max_parallel=d.get("max_parallel"), on_failure=d.get("on_failure", "continue"),
                   lease=d.get("lease", DEFAULT_LEASE), description=d.get("description"),
                   workspace=d.get("workspace"), hooks=d.get("hooks"),
                   budget=d.get("budget"), capacities=d.get("resources"), agent_limits=d.get("agent_limits"),
                   tenant=d.get("tenant"), max_tasks=d.get("max_tasks"), weight=float(d.get("weight", 1.0)),
                   aging=float(d.get("aging", DEFAULT_AGING)))


# ------------------------------------------------------------------------------ loading
def load(path: str, home: str | None = None) -> Plan:
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
    return parse(raw, shown=shown, source=source, default_goal=stem, home=home)


def parse(raw: bytes, *, shown: str, source: str, default_goal: str, home: str | None = None) -> Plan:
    """`home`: whose presets.json extends the agent presets (default: $DAGRUN_HOME)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise PlanError(f"{shown}:1:1: malformed JSON: the file starts with a UTF-8 byte-order mark; save it without BOM")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise PlanError(f"{shown}:1:1: malformed JSON: the file is UTF-16 text; save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PlanError(f"{shown}:{line}: malformed JSON: invalid UTF-8 at byte {e.start}") from None
    with bulk.paused():
        doc = _parse_json(text, shown)
        return _Validator(text, shown, source, default_goal, home).plan(doc)


FRAGMENT_FIELDS: dict[str, F] = {
    "$schema": TOP_FIELDS["$schema"],
    "defaults": TOP_FIELDS["defaults"],
    "tasks": F("tasks", "The tasks to add."),
}


def parse_fragment(raw: bytes, *, shown: str, plan: Plan) -> Plan:
    """Validate a fragment {"tasks": [...], "defaults": {...}} to add to `plan` and return
    the plan with the new tasks appended: the same rules as a whole plan (ids, unknown
    dependencies, cycles, limits), plus no id may clash with an existing task. New tasks may
    depend on existing ones, never the other way round, so existing tasks keep their
    definitions. Prompt files and workdirs are relative to the goal's plan folder."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PlanError(f"{shown}: malformed JSON: invalid UTF-8 at byte {e.start}") from None
    doc = _parse_json(text, shown)
    v = _Validator(text, shown, plan.source, plan.goal)
    v.no_lone_surrogates(doc)
    top = v.obj((), doc, FRAGMENT_FIELDS, "a fragment")
    defaults = v.obj(("defaults",), top.get("defaults", {}), KNOBS, "defaults")
    dflt = {k: v.check(("defaults", k), KNOBS[k], x) for k, x in defaults.items()}
    raw_tasks = top.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        v.fail(("tasks",) if "tasks" in top else (), "a fragment needs \"tasks\": a non-empty array of tasks")
    if len(plan.tasks) + len(raw_tasks) > plan.task_cap():
        v.fail(("tasks",), f"the goal would have {len(plan.tasks) + len(raw_tasks)} tasks; its max_tasks is "
               f"{plan.task_cap()}" + ("" if plan.max_tasks else " (the default; set \"max_tasks\" in the plan)"))
    seen: dict[str, int] = {}
    new = []
    for i, rt in enumerate(raw_tasks):
        t = v.task(i, rt, dflt, plan.plan_dir, seen)
        if plan.has(t.id):
            v.fail(("tasks", i, "id"), f"task id {_show(t.id)} already exists in goal {_show(plan.goal)}")
        new.append(t)
    tasks = list(plan.tasks) + new
    by_id = {t.id: i for i, t in enumerate(tasks)}
    base = len(plan.tasks)
    for i, t in enumerate(new):
        for field_name in ("deps", "soft_deps"):
            for j, d in enumerate(getattr(t, field_name)):
                if d not in by_id:
                    v.fail(("tasks", i, field_name, j), f"unknown dependency {_show(d)} (asked for by task {_show(t.id)})")
    try:
        topo_order(list(by_id), [[by_id[d] for d in (*t.deps, *t.soft_deps)] for t in tasks],
                   _successors(tasks, by_id))
    except CycleError as e:
        v.fail(("tasks", max(0, by_id[e.cycle[0]] - base)), _fmt_cycle(e.cycle))
    v.check_scheduling(tasks, plan.goal_capacities(), base)
    v.check_templates(plan.tasks, new)
    return plan.with_tasks(tasks)


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
    """Line of the second occurrence of "key": (good enough to point at a duplicate), the key
    written with its non-ASCII characters as they are or as \\u escapes."""
    pat = re.compile(r"(?:%s|%s)\s*:" % (re.escape(json.dumps(key)), re.escape(json.dumps(key, ensure_ascii=False))))
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
    def __init__(self, text: str, shown: str, source: str, default_goal: str, home: str | None = None):
        self.text, self.shown, self.source, self.default_goal = text, shown, source, default_goal
        self._lines: dict | None = None
        self.home = home
        self._presets: dict | None = None
        self._agents_ok: set = set()        # agents check_agent passed (100 000 tasks share a few)
        self._workdirs: dict = {}           # workdir as written -> absolute
        self._knob_values: tuple | None = None   # (dflt, the Task fields it gives) of the last call
    def check_agent(self, path: tuple, agent: str) -> None:
        if agent in self._agents_ok:
            return
        if not presets.is_preset(agent):
            self._agents_ok.add(agent)
            return
        if self._presets is None:
            self._presets = presets.load(self.home)
        problem = presets.check(agent, self._presets)
        if problem:
            self.fail(path, problem)
        self._agents_ok.add(agent)

    # -- errors
    def fail(self, path: tuple, msg: str):
        line = self.line(path)
        where = f"{self.shown}:{line}" if line else self.shown
        p = _fmt_path(path)
        err = PlanError(f"{where}: {p}: {msg}" if path else f"{where}: {msg}")
        err.line, err.json_path = line, (p if path else None)     # for `validate --json`
        raise err

    def no_lone_surrogates(self, doc) -> None:
        """A lone UTF-16 surrogate (only a \\u escape makes one) in any string or key of the
        document is refused here, naming where: no such string can be written as UTF-8 later
        (plan.json, events, the prompt). Searched only when the text has such an escape."""
        if _SURROGATE_ESCAPE.search(self.text) is None:
            return
        todo = [((), doc)]
        while todo:
            path, v = todo.pop()
            if isinstance(v, str):
                if _has_lone_surrogate(v):
                    self.fail(path, "contains an unpaired UTF-16 surrogate escape")
            elif isinstance(v, dict):
                for k in v:
                    if _has_lone_surrogate(k):
                        self.fail(path, f"the key {_show(k)} contains an unpaired UTF-16 surrogate escape")
                todo.extend(((*path, k), x) for k, x in reversed(v.items()))
            elif isinstance(v, list):
                todo.extend(((*path, i), x) for i, x in reversed(list(enumerate(v))))

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
        if k == "boolean":
            if not isinstance(v, bool):
                self.fail(path, f"expected true or false, got {_type_name(v)}")
            return v
        if k == "estimate":
            if not isinstance(v, dict):
                self.fail(path, f"expected an object like {{\"seconds\": 120, \"usd\": 0.5}}, got {_type_name(v)}")
            for key, x in v.items():
                if key not in ("seconds", "usd"):
                    self.fail(path + (key,), f"unknown field {json.dumps(key)} in estimate (known: seconds, usd)")
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                    self.fail(path + (key,), f"expected a non-negative number, got {_show(x)}")
            return {k2: float(x) for k2, x in v.items()}
        if k == "budget":
            if not isinstance(v, dict):
                self.fail(path, f"expected an object like {{\"usd\": 10, \"tokens\": 2000000}}, got {_type_name(v)}")
            out = {}
            for key, x in v.items():
                if key not in ("usd", "tokens"):
                    self.fail(path + (key,), f"unknown field {json.dumps(key)} in budget (known: usd, tokens)")
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
                    self.fail(path + (key,), f"expected a positive number, got {_show(x)}")
                if key == "tokens" and x != int(x):
                    self.fail(path + (key,), f"expected a whole number of tokens, got {_show(x)}")
                out[key] = int(x) if key == "tokens" else float(x)
            if not out:
                self.fail(path, "an empty budget limits nothing: give \"usd\" and/or \"tokens\"")
            return out
        if k == "argv":
            if not isinstance(v, list):
                self.fail(path, f"expected an array of strings (a program and its arguments; no shell), got {_type_name(v)}")
            if not v:
                self.fail(path, "must name a program: an empty array runs nothing")
            for j, a in enumerate(v):
                if not isinstance(a, str):
                    self.fail(path + (j,), f"expected a string, got {_type_name(a)}")
                if "\x00" in a:
                    self.fail(path + (j,), "contains a NUL character")
            if not v[0].strip():
                self.fail(path + (0,), "the program name must not be empty")
            return tuple(v)
        if k == "options":
            v = self.obj(path, v, f.fields, f"{path[-1]} options")
            return {kk: self.check(path + (kk,), f.fields[kk], vv) for kk, vv in v.items()}
        if k == "resources":       # the cluster fields as before, any other name: units of a resource
            if not isinstance(v, dict):
                self.fail(path, f"expected an object of resource name -> units, like {{\"gpu\": 1}}, got {_type_name(v)}")
            out = {}
            for kk, vv in v.items():
                if kk in f.fields:
                    out[kk] = self.check(path + (kk,), f.fields[kk], vv)
                    continue
                if not valid_id(kk):
                    self.fail(path + (kk,), f"invalid resource name {_show(kk)}: use 1-128 of A-Z a-z 0-9 . _ - , "
                              f"starting with a letter or digit")
                out[kk] = self.check(path + (kk,), F("integer", "", lo=0, hi=MAX_UNITS), vv)
            return out
        if k == "capacities":
            if not isinstance(v, dict):
                self.fail(path, f"expected an object of name -> count, like {{\"gpu\": 2}}, got {_type_name(v)}")
            out = {}
            for kk, vv in v.items():
                name = kk[1:] if path[-1] == "agent_limits" and isinstance(kk, str) and kk.startswith("@") else kk
                if not valid_id(name):
                    self.fail(path + (kk,), f"invalid name {_show(kk)}: use 1-128 of A-Z a-z 0-9 . _ - , "
                              f"starting with a letter or digit")
                if name in out:
                    self.fail(path + (kk,), f"{_show(name)} is given twice")
                out[name] = self.check(path + (kk,), F("integer", "", lo=f.lo, hi=MAX_UNITS), vv)
            return out
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
        if k == "approval":
            v = self.obj(path, v, {"prompt": F("text", ""), "timeout": F("duration", "")}, "approval")
            if "prompt" not in v:
                self.fail(path, "approval needs \"prompt\": the question shown to the person who decides")
            prompt = self.check(path + ("prompt",), F("string", ""), v["prompt"])
            out = {"prompt": prompt, "timeout": None}
            if v.get("timeout") is not None:
                out["timeout"] = self.check(path + ("timeout",), F("duration", ""), v["timeout"])
            return out
        if k == "duration":
            secs = parse_duration(v)
            if secs is None:
                self.fail(path, f"expected seconds or a duration like \"90s\", \"30m\", \"2h\", \"1d\", got {_show(v)}")
            return secs
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
        self.no_lone_surrogates(doc)
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
        for k in ("max_parallel", "on_failure", "lease", "description", "budget", "resources", "agent_limits",
                  "tenant", "max_tasks", "weight", "aging"):
            if k in top:
                opts[k] = self.check((k,), TOP_FIELDS[k], top[k])
        if "$schema" in top:
            self.check(("$schema",), TOP_FIELDS["$schema"], top["$schema"])
        workspace = self.workspace(top["workspace"]) if "workspace" in top else None
        hooks = self.hooks(("hooks",), top["hooks"], HOOK_EVENTS) if "hooks" in top else None
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
        plain = self.plain_tasks(dflt, plan_dir)
        for i, rt in enumerate(raw_tasks):
            t = plain(i, rt, seen) if plain is not None else None
            tasks.append(t if t is not None else self.task(i, rt, dflt, plan_dir, seen))
        by_id = {t.id: i for i, t in enumerate(tasks)}
        try:        # every dependency a task of the plan (a KeyError: find and name the first that is not)
            if any(t.soft_deps for t in tasks):
                preds = [[by_id[d] for d in (*t.deps, *t.soft_deps)] for t in tasks]
            else:
                preds = [[by_id[d] for d in t.deps] for t in tasks]
        except KeyError:
            for i, t in enumerate(tasks):
                for field_name in ("deps", "soft_deps"):
                    for j, d in enumerate(getattr(t, field_name)):
                        if d not in by_id:
                            self.fail(("tasks", i, field_name, j),
                                      f"unknown dependency {_show(d)} (asked for by task {_show(t.id)})")
            raise
        succs: list[list[int]] = [[] for _ in tasks]
        for i, ps in enumerate(preds):
            for d in ps:
                succs[d].append(i)
        try:
            topo_order(list(by_id), preds, succs)
        except CycleError as e:
            self.fail(("tasks", by_id[e.cycle[0]]), _fmt_cycle(e.cycle))
        caps = {**(opts.get("resources") or {}), **{AGENT_RES + a: n for a, n in (opts.get("agent_limits") or {}).items()}}
        self.check_scheduling(tasks, caps, 0)
        self.check_templates((), tasks)
        if opts.get("max_tasks") is not None and opts["max_tasks"] < len(tasks):
            self.fail(("max_tasks",), f"{opts['max_tasks']} is less than the plan's {len(tasks)} tasks")
        return Plan(goal=goal, source=self.source, plan_dir=plan_dir, tasks=tuple(tasks),
                    max_parallel=opts.get("max_parallel"), on_failure=opts.get("on_failure", "continue"),
                    lease=float(opts.get("lease", DEFAULT_LEASE)), description=opts.get("description"),
                    workspace=workspace, hooks=hooks, budget=opts.get("budget"), capacities=opts.get("resources"),
                    agent_limits=opts.get("agent_limits"), tenant=opts.get("tenant"), max_tasks=opts.get("max_tasks"),
                    weight=float(opts.get("weight", 1.0)), aging=float(opts.get("aging", DEFAULT_AGING)))

    def check_scheduling(self, tasks: list, caps: dict, base: int) -> None:
        """No task asks for more of a resource than the plan's capacity of it (it could never
        start), and no serial group runs against the dependencies: a task depending (directly
        or not) on a later task of its own group would wait for it forever. tasks[base:] are
        the ones being added (reported by their index among those)."""
        for i, t in enumerate(tasks[base:] if caps else ()):     # no capacity: nobody asks too much
            for name, n in t.needs().items():
                cap = caps.get(name)
                if cap is not None and n > cap:
                    where = ("mutex",) if name == t.mutex and name not in t.resources else ("resources", name)
                    what = f"the plan's agent limit of {name[len(AGENT_RES):]} is {cap}" if name.startswith(AGENT_RES) \
                        else f"the plan's capacity of {_show(name)} is {cap}"
                    self.fail(("tasks", i) + where, f"task {_show(t.id)} asks for {n} unit{'s' if n > 1 else ''} of "
                              f"{_show(name)} but {what}: it could never start")
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            if t.serial:
                groups.setdefault(t.serial, []).append(i)
        if not any(len(m) > 1 for m in groups.values()):
            return
        by_id = {t.id: i for i, t in enumerate(tasks)}
        preds = [[by_id[d] for d in (*t.deps, *t.soft_deps)] for t in tasks]
        for members in groups.values():
            for a, b in zip(members, members[1:]):
                preds[b].append(a)
        succs: list[list[int]] = [[] for _ in tasks]
        for i, ps in enumerate(preds):
            for p in ps:
                succs[p].append(i)
        try:
            topo_order([t.id for t in tasks], preds, succs)
        except CycleError as e:
            t = tasks[by_id[e.cycle[0]]]
            i = by_id[t.id]
            self.fail(("tasks", max(0, i - base), "serial"), f"serial group {_show(t.serial)} runs in plan order, but "
                      f"that order contradicts the dependencies: {_fmt_cycle(e.cycle)}")

    def check_templates(self, existing: tuple, new: list) -> None:
        """Fan-out ids: `<template>.<k>` belongs to the template's instances, so no other task
        (in the plan, or added later) may take such an id."""
        templates = {t.id for t in (*existing, *new) if t.for_each}
        if not templates:
            return
        for i, t in enumerate(new):
            of = fanrules.template_of(t.id)
            if of in templates and not (t.origin and t.origin.get("of") == of):
                self.fail(("tasks", i, "id"), f"task id {_show(t.id)} is reserved for the instances of the "
                          f"template {_show(of)} (for_each)")
        for i, t in enumerate(new):
            if t.for_each:
                clash = next((e.id for e in existing if fanrules.template_of(e.id) == t.id), None)
                if clash:
                    self.fail(("tasks", i, "id"), f"template {_show(t.id)} would name its instances like the "
                              f"existing task {_show(clash)}")

    def for_each(self, path: tuple, v, tid: str) -> dict:
        v = self.obj(path, v, FOR_EACH_FIELDS, "for_each")
        if "from" not in v:
            self.fail(path, "for_each needs \"from\": the task whose output lists the items")
        src = self.check(path + ("from",), FOR_EACH_FIELDS["from"], v["from"])
        if src == tid:
            self.fail(path + ("from",), "a template cannot fan out over its own output")
        as_ = v.get("as", "item")
        if not isinstance(as_, str) or not AS_RE.fullmatch(as_):
            self.fail(path + ("as",), f"expected a name of letters, digits and _ (like \"item\"), got {_show(as_)}")
        mx = int(self.check(path + ("max",), FOR_EACH_FIELDS["max"], v.get("max", FOR_EACH_FIELDS["max"].default)))
        if len(fanrules.instance_id(tid, mx - 1)) > 128:
            self.fail(path + ("max",), f"the instance ids {tid}.<k> would be longer than 128 characters: "
                                       f"shorten the template's id")
        return {"from": src, "as": as_, "max": mx}

    def workspace(self, v) -> dict:
        """The plan's workspace object (the git checks come later: workspace.check_plan)."""
        path = ("workspace",)
        w = self.obj(path, v, WORKSPACE_FIELDS, "workspace")
        if "repo" not in w:
            self.fail(path, "workspace needs \"repo\" (the git repository, relative to the plan's folder)")
        repo = self.check(path + ("repo",), WORKSPACE_FIELDS["repo"], w["repo"])
        out = {"repo": os.path.normpath(os.path.join(os.path.dirname(self.source), repo))}
        base = self.check(path + ("base",), WORKSPACE_FIELDS["base"], w.get("base", "HEAD"))
        if base.startswith("-") or any(c.isspace() for c in base):
            self.fail(path + ("base",), f"{_show(base)} is not a branch or commit name")
        out["base"] = base
        if "author" in w:
            a = w["author"]
            if not isinstance(a, dict) or set(a) != {"name", "email"} or not all(
                    isinstance(a[k], str) and a[k].strip() and not any(c in a[k] for c in "<>\n\x00") for k in a):
                self.fail(path + ("author",), "expected {\"name\": \"...\", \"email\": \"...\"} "
                          "(non-empty strings without <, > or newlines)")
            out["author"] = {"name": a["name"], "email": a["email"]}
        if "integrate" in w:
            if not isinstance(w["integrate"], bool):
                self.fail(path + ("integrate",), f"expected true or false, got {_type_name(w['integrate'])}")
            out["integrate"] = w["integrate"]
        return out

    def plain_tasks(self, dflt: dict, plan_dir: str):
        """The validator of a plain task -- only "id", "deps", "prompt" and "description", every
        knob from the defaults: (i, rt, seen) -> its Task, or None for any other task and for
        any value that is not plainly valid (then task() checks it and words the error). What
        it leaves out cannot happen in such a task: its other fields are those of a plain task
        built once by task() itself (the prototype), a NUL can only come from a \\u escape:
        the strings are searched for one only when the plan's text has such an escape (a lone
        surrogate was refused before any task, no_lone_surrogates). 100 000 tasks: ~0.3 s
        instead of ~1.2 s (ARCHITECTURE.md, "Plans of 100 000 tasks"). None when a plain task
        would be an error (no agent)."""
        nul = _NUL_ESCAPE in self.text
        try:
            proto = list(self.task(0, {"id": "x", "prompt": "x"}, dflt, plan_dir, {}))
        except PlanError:
            return None
        keys, fullmatch, new = _PLAIN_KEYS, ID_RE.fullmatch, tuple.__new__
        i_deps, i_prompt, i_desc = _TASK_KEYS.index("deps"), _TASK_KEYS.index("prompt"), _TASK_KEYS.index("description")
        too_long = MAX_PROMPT_BYTES // 4

        def plain(i: int, rt, seen: dict) -> Task | None:
            if rt.__class__ is not dict or not rt.keys() <= keys:
                return None
            tid, prompt, deps = rt.get("id"), rt.get("prompt"), rt.get("deps", ())
            if tid.__class__ is not str or prompt.__class__ is not str or tid in seen or \
                    fullmatch(tid) is None or len(prompt) > too_long:
                return None
            if deps.__class__ is not list:
                if deps != () or "deps" in rt:
                    return None
            elif deps:
                try:      # a dependency seen as a task id is a valid id; one not seen yet is checked
                    for d in deps:
                        if d not in seen and (d.__class__ is not str or fullmatch(d) is None):
                            return None
                    if len(deps) > 1 and len(set(deps)) != len(deps):
                        return None
                except TypeError:      # an unhashable item
                    return None
            desc = rt.get("description")
            if desc is not None and desc.__class__ is not str or desc is None and "description" in rt:
                return None
            if nul and ("\x00" in prompt or desc is not None and "\x00" in desc):
                return None
            seen[tid] = i
            v = proto.copy()
            v[0], v[i_deps], v[i_prompt], v[i_desc] = tid, tuple(deps), prompt, desc
            return new(Task, v)
        return plain

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
        fe = self.for_each(path + ("for_each",), rt["for_each"], tid) if "for_each" in rt else None
        if fe is not None:
            if fe["from"] in soft:
                self.fail(path + ("for_each", "from"), f"{_show(fe['from'])} must be a dependency (deps), not a soft one")
            if fe["from"] not in deps:
                deps.append(fe["from"])           # the items come from it: it must be done first
        has_p, has_pf = "prompt" in rt, "prompt_file" in rt
        if has_p == has_pf:
            self.fail(path, f"task {_show(tid)} needs exactly one of \"prompt\" or \"prompt_file\"" +
                      (" (it has both)" if has_p else ""))
        if has_p:
            prompt = self.check(path + ("prompt",), TASK_FIELDS["prompt"], rt["prompt"])
            if len(prompt) * 4 > MAX_PROMPT_BYTES and len(prompt.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
                self.fail(path + ("prompt",), f"prompt is longer than {MAX_PROMPT_BYTES} bytes")
            pfile = None
        else:
            pfile = self.check(path + ("prompt_file",), TASK_FIELDS["prompt_file"], rt["prompt_file"])
            prompt = self.read_prompt_file(path + ("prompt_file",), pfile, plan_dir)
        knobs = dflt
        own = [k for k in rt if k in KNOBS]
        if own:
            knobs = dict(dflt)
            for k in own:
                knobs[k] = self.check(path + (k,), KNOBS[k], rt[k])
        approval = self.check(path + ("approval",), TASK_FIELDS["approval"], rt["approval"]) \
            if rt.get("approval") is not None else None
        agent = knobs.get("agent")
        if not agent and approval is None:       # a gate needs none: a person decides it
            self.fail(path, f"task {_show(tid)} has no agent: set \"agent\" on it or in \"defaults\"")
        agent = agent or ""
        if agent:
            self.check_agent(path + ("agent",) if "agent" in rt else ("defaults", "agent"), agent)
        workdir = knobs.get("workdir")
        if workdir not in self._workdirs:
            self._workdirs[workdir] = os.path.normpath(os.path.join(plan_dir, workdir)) if workdir else plan_dir
        workdir = self._workdirs[workdir]
        prio = self.check(path + ("priority",), TASK_FIELDS["priority"], rt["priority"]) if "priority" in rt else 0
        desc = self.check(path + ("description",), TASK_FIELDS["description"], rt["description"]) if "description" in rt else None
        use_ws = rt.get("workspace", True)
        if not isinstance(use_ws, bool):
            self.fail(path + ("workspace",), f"expected true or false, got {_type_name(use_ws)}")
        files = rt.get("files", [])
        if not isinstance(files, list):
            self.fail(path + ("files",), f"expected an array of globs, got {_type_name(files)}")
        for j, fg in enumerate(files):
            if not isinstance(fg, str):
                self.fail(path + ("files", j), f"expected a glob (string), got {_type_name(fg)}")
            why = check_glob(fg)
            if why:
                self.fail(path + ("files", j), f"glob {_show(fg)} {why}")

        trigger = self.check(path + ("trigger",), TASK_FIELDS["trigger"], rt["trigger"]) if "trigger" in rt \
            else "all_success"
        if trigger in ("one_success", "one_failed") and not deps:
            self.fail(path + ("trigger",), f"trigger {_show(trigger)} needs at least one task in deps")
        when = None
        if "when" in rt:
            try:
                conditions.check(rt["when"], [*deps, *soft])
            except conditions.ConditionError as e:
                self.fail(path + ("when",) + e.path, str(e))
            when = rt["when"]

        if knobs is dflt:          # the task sets no knob of its own: the defaults' fields, worked out once
            if self._knob_values is None or self._knob_values[0] is not dflt:
                self._knob_values = (dflt, _knob_fields(dflt))
            fields = self._knob_values[1]
        else:
            fields = _knob_fields(knobs)
        return Task(
            id=tid, deps=tuple(deps), soft_deps=tuple(soft), prompt=prompt, prompt_file=pfile, agent=agent,
            workdir=workdir, priority=int(prio), description=desc, **fields,
            workspace=use_ws and approval is None, files=tuple(files),    # a gate runs no code: no worktree
            hooks=self.hooks(path + ("hooks",), rt["hooks"], HOOK_EVENTS[:-1]) if "hooks" in rt else None,
            serial=self.check(path + ("serial",), TASK_FIELDS["serial"], rt["serial"]) if "serial" in rt else None,
            when=when, trigger=trigger, approval=approval, for_each=fe)

    def hooks(self, path: tuple, v, events: tuple[str, ...]) -> dict | None:
        """{"on_done": [hook, ...], ...}; a hook is an argv array (never a shell), {"argv": [...],
        "timeout": s}, or a webhook {"url": "http(s)://...", "headers": {..}, "headers_env":
        {"Header": "ENV_VAR"}, "secret_env": "ENV_VAR", "timeout": s, "retries": n}. Returned
        normalised (every hook an object with its timeout); None when empty."""
        if not isinstance(v, dict):
            self.fail(path, f"expected an object of hook lists ({', '.join(events)}), got {_type_name(v)}")
        out = {}
        for ev_name, hooks in v.items():
            p = path + (ev_name,)
            if ev_name not in events:
                self.fail(p, f"unknown hook event {_show(ev_name)} (known: {', '.join(events)})")
            if not isinstance(hooks, list):
                self.fail(p, f"expected an array of hooks, got {_type_name(hooks)}")
            out[ev_name] = [self.hook(p + (j,), h) for j, h in enumerate(hooks)]
        return {k: h for k, h in out.items() if h} or None

    def hook(self, path: tuple, h) -> dict:
        if isinstance(h, list):
            h = {"argv": h}
        if not isinstance(h, dict):
            self.fail(path, f"expected an argv array or an object, got {_type_name(h)}")
        kind = "argv" if "argv" in h else "url" if "url" in h else None
        if kind is None:
            self.fail(path, "a hook needs \"argv\" (a command) or \"url\" (a webhook)")
        allowed = {"argv", "timeout"} if kind == "argv" else \
            {"url", "headers", "headers_env", "secret_env", "timeout", "retries"}
        unknown = sorted(set(h) - allowed)
        if unknown:
            self.fail(path + (unknown[0],), f"unknown field {_show(unknown[0])} in a hook (known: {', '.join(sorted(allowed))})")
        timeout = h.get("timeout", DEFAULT_HOOK_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            self.fail(path + ("timeout",), f"must be a number of seconds in (0, 3600], got {_show(timeout)}")
        out: dict = {"timeout": float(timeout)}
        if kind == "argv":
            argv = h["argv"]
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a and "\x00" not in a
                                                                  for a in argv):
                self.fail(path + ("argv",), "expected a non-empty array of non-empty strings (the command and "
                                            "its arguments; no shell)")
            out["argv"] = list(argv)
            return out
        url = h["url"]
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s]+", url):
            self.fail(path + ("url",), f"expected an http:// or https:// URL, got {_show(url)}")
        out["url"] = url
        for k in ("headers", "headers_env"):
            hv = h.get(k, {})
            if not isinstance(hv, dict) or not all(isinstance(a, str) and re.fullmatch(r"[A-Za-z0-9-]{1,128}", a)
                                                   and isinstance(b, str) and "\n" not in b and "\r" not in b
                                                   for a, b in hv.items()):
                self.fail(path + (k,), "expected an object of header names to string values")
            if k == "headers_env" and not all(ENV_RE.fullmatch(b) for b in hv.values()):
                self.fail(path + (k,), "values must be environment variable names (the secret itself never "
                                       "goes in the plan)")
            out[k] = dict(hv)
        se = h.get("secret_env")
        if se is not None and not (isinstance(se, str) and ENV_RE.fullmatch(se)):
            self.fail(path + ("secret_env",), f"expected an environment variable name, got {_show(se)}")
        out["secret_env"] = se
        retries = h.get("retries", 3)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
            self.fail(path + ("retries",), f"must be an integer 0-20, got {_show(retries)}")
        out["retries"] = retries
        return out

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
        if len(data) > MAX_PROMPT_BYTES:       # it grew since the stat above
            self.fail(path, f"{_show(pfile)} grew past the limit of {MAX_PROMPT_BYTES} bytes while it was read")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(path, f"{_show(pfile)} is not UTF-8 text")
        if "\x00" in text:
            self.fail(path, f"{_show(pfile)} contains a NUL character")
        return text


_PLAIN_KEYS = frozenset(("id", "deps", "prompt", "description"))
# the only way a NUL or a lone surrogate gets into a parsed string: a \u escape (raw control
# characters are a JSON error, and the text was strictly decoded UTF-8); an escaped backslash
# before "u0000" matches too, which only costs the plain path a check per string
_NUL_ESCAPE = "\\u0000"
_SURROGATE_ESCAPE = lazyre.Pattern(r"\\u[dD][89a-fA-F]")


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
        elif k == "argv":
            s = {"type": "array", "minItems": 1, "items": {"type": "string"}}
        elif k == "boolean":
            s = {"type": "boolean"}
        elif k == "estimate":
            s = {"type": "object", "additionalProperties": False,
                 "properties": {"seconds": {"type": "number", "minimum": 0}, "usd": {"type": "number", "minimum": 0}}}
        elif k == "budget":
            s = {"type": "object", "additionalProperties": False, "minProperties": 1,
                 "properties": {"usd": {"type": "number", "exclusiveMinimum": 0},
                                "tokens": {"type": "integer", "exclusiveMinimum": 0}}}
        elif k == "enum":
            s = {"enum": list(f.choices)}
        elif k == "object":
            s = {"$ref": "#/$defs/knobs"}
        elif k == "hooks":
            s = {"type": "object", "additionalProperties": {"type": "array", "items": {"$ref": "#/$defs/hook"}}}
        elif k == "options":
            s = {"type": "object", "additionalProperties": False,
                 "properties": {kk: prop(ff) for kk, ff in f.fields.items()}}
        elif k == "resources":
            s = {"type": "object", "propertyNames": {"$ref": "#/$defs/id"},
                 "properties": {kk: prop(ff) for kk, ff in f.fields.items()},
                 "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_UNITS}}
        elif k == "capacities":
            s = {"type": "object", "propertyNames": {"pattern": "^@?" + ID_RE.pattern + "$"},
                 "additionalProperties": {"type": "integer", "minimum": f.lo or 0, "maximum": MAX_UNITS}}
        elif k == "strings":
            s = {"type": "array", "items": {"type": "string", "minLength": 1}}
        elif k == "json":
            s = {"type": "object"}
        elif k == "mem":
            s = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^" + MEM_RE.pattern + "$"}]}
        elif k == "tasks":
            s = {"type": "array", "minItems": 1, "maxItems": MAX_TASKS, "items": {"$ref": "#/$defs/task"}}
        elif k == "boolean":
            s = {"type": "boolean"}
        elif k == "globs":
            s = {"type": "array", "items": {"type": "string", "minLength": 1}}
        elif k == "author":
            s = {"type": "object", "additionalProperties": False, "required": ["name", "email"],
                 "properties": {"name": {"type": "string", "minLength": 1}, "email": {"type": "string", "minLength": 1}}}
        elif k == "workspace":
            s = {"$ref": "#/$defs/workspace"}
        elif k == "when":
            s = {"$ref": "#/$defs/condition"}
        elif k == "approval":
            s = {"type": "object", "additionalProperties": False, "required": ["prompt"],
                 "properties": {"prompt": {"type": "string", "minLength": 1},
                                "timeout": {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                                      {"type": "string", "pattern": "^" + DURATION_RE.pattern + "$"},
                                                      {"type": "null"}]}}}
        elif k == "for_each":
            s = {"type": "object", "additionalProperties": False, "required": ["from"],
                 "properties": {"from": {"$ref": "#/$defs/id", "description": FOR_EACH_FIELDS["from"].doc},
                                "as": {"type": "string", "pattern": "^" + AS_RE.pattern + "$", "default": "item",
                                       "description": FOR_EACH_FIELDS["as"].doc},
                                "max": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100,
                                        "description": FOR_EACH_FIELDS["max"].doc}}}
        else:
            raise AssertionError(k)
        if f.nullable:
            if "type" in s:
                s["type"] = [s["type"], "null"]
            else:
                s = {"anyOf": [s, {"type": "null"}]}
        if f.default is not None and f.kind != "workspace":
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
            "hook": {"oneOf": [
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                {"type": "object", "additionalProperties": False, "required": ["argv"],
                 "properties": {"argv": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                                "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}}},
                {"type": "object", "additionalProperties": False, "required": ["url"],
                 "properties": {"url": {"type": "string", "pattern": "^https?://"},
                                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                                "headers_env": {"type": "object", "additionalProperties": {"type": "string"}},
                                "secret_env": {"type": "string"},
                                "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                                "retries": {"type": "integer", "minimum": 0, "maximum": 20}}}]},
            "condition": _condition_schema(),
            "knobs": {"type": "object", "additionalProperties": False,
                      "properties": {k: prop(f) for k, f in KNOBS.items()}},
            "workspace": {"type": "object", "additionalProperties": False, "required": ["repo"],
                          "properties": {k: prop(f) for k, f in WORKSPACE_FIELDS.items()}},
            "task": {
                "type": "object", "additionalProperties": False, "required": ["id"],
                "oneOf": [{"required": ["prompt"]}, {"required": ["prompt_file"]}],
                "properties": {k: prop(f) for k, f in TASK_FIELDS.items()},
            },
        },
    }


def _condition_schema() -> dict:
    """The `when` language (conditions.py) as JSON Schema: one operator per object."""
    ref = {"$ref": "#/$defs/condition"}
    task = {"$ref": "#/$defs/id"}
    outcomes = {"enum": list(conditions.OUTCOMES)}
    return {"description": "A condition (docs/conditions.md): output_of, json_of, outcome_of, all, any, not.",
            "oneOf": [
                {"type": "object", "additionalProperties": False, "required": ["all"],
                 "properties": {"all": {"type": "array", "minItems": 1, "items": ref}}},
                {"type": "object", "additionalProperties": False, "required": ["any"],
                 "properties": {"any": {"type": "array", "minItems": 1, "items": ref}}},
                {"type": "object", "additionalProperties": False, "required": ["not"], "properties": {"not": ref}},
                {"type": "object", "additionalProperties": False, "required": ["output_of"], "minProperties": 2,
                 "maxProperties": 2, "properties": {"output_of": task, "contains": {"type": "string"},
                                                    "equals": {"type": "string"}, "empty": {"type": "boolean"}}},
                {"type": "object", "additionalProperties": False, "required": ["json_of"],
                 "properties": {"json_of": task, "path": {"type": "string"}, "equals": {}, "in": {"type": "array"},
                                "exists": {"type": "boolean"}, "gt": {"type": "number"}, "lt": {"type": "number"},
                                "contains": {}}},
                {"type": "object", "additionalProperties": False, "required": ["outcome_of"], "minProperties": 2,
                 "maxProperties": 2, "properties": {"outcome_of": task, "is": outcomes,
                                                    "in": {"type": "array", "minItems": 1, "items": outcomes}}},
            ]}


DURATION_RE = lazyre.Pattern(r"[0-9]+(\.[0-9]+)?[smhd]?")


def parse_duration(v) -> float | None:
    """Seconds from a number or "90s" / "30m" / "2h" / "1d"; None when it is neither (or <= 0)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        secs = float(v)
    elif isinstance(v, str) and DURATION_RE.fullmatch(v.strip()):
        v = v.strip()
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(v[-1], 1)
        secs = float(v.rstrip("smhd")) * mult
    else:
        return None
    return secs if math.isfinite(secs) and 0 < secs <= MAX_SECONDS else None


SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema", "dag.schema.json")


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"
