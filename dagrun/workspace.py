"""Code workspaces: every task of a goal with a `workspace` runs in its own git worktree
(tasks/<t>/worktree, branch dagrun/<goal>/<task>) made from the goal's base with the commits
of all its prerequisites merged in; what the agent changed is committed on that branch before
the done marker. The only module that runs git.

Steps (each one idempotent, so a SIGKILL anywhere is repaired by doing it again):
  check      at validate/submit: repo is a work tree, base a commit, its work tree clean
  pin        goals/<g>/workspace.json: the base commit, fixed when the goal is created
  prepare    under the claim, before the prompt: merge the prerequisites' heads without a
             work tree (`git merge-tree --write-tree`), `git worktree add -B`, then publish
             snapshot.json. An existing worktree with a snapshot.json is reused as it is.
  capture    after exit 0, before `done`: `git add -A`, write-tree, commit-tree, update-ref
             (no commit when nothing changed), then publish `patch` and changes.json
  integrate  merge every done task's head, in topological order, into dagrun/<goal>/_integrated
  gc         remove worktrees of ended goals; delete task branches once integrated

Safety: git always gets an argv list (never a shell), `--` before paths, user text never in
an option's place (a base or branch starting with "-" is refused), no hooks run
(core.hooksPath=/dev/null), and every GIT_* variable of the caller is dropped so GIT_DIR,
GIT_WORK_TREE, GIT_INDEX_FILE ... cannot redirect dagrun's git calls.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from . import fsio
from .errors import DagrunError, ExitCode, PlanError, Refused, UsageError
from .plan import Plan, Task
from .records import NEW, frozen_methods, plain_methods
from .scheduler import Scheduler
from .store import Home, dumps, loads_obj
from .wsrules import conflict_parties, describe_conflict, prerequisites, uses

DEFAULT_AUTHOR = {"name": "dagrun", "email": "dagrun@localhost"}
ZERO = "0" * 40


class GitError(DagrunError):
    """git said no where it should not have (a broken repository, a full disk)."""
    exit_code = ExitCode.IO


class Conflict(DagrunError):
    """Prerequisites (or task branches at integration) that do not merge cleanly."""
    exit_code = ExitCode.GOAL_FAILED

    def __init__(self, lines: list[str]):
        super().__init__("; ".join(lines))
        self.lines = lines


# ================================================================================ git itself
def _env(author: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    a = author or DEFAULT_AUTHOR
    env.update(GIT_AUTHOR_NAME=a["name"], GIT_AUTHOR_EMAIL=a["email"],
               GIT_COMMITTER_NAME=a["name"], GIT_COMMITTER_EMAIL=a["email"])
    return env


def git(cwd: str, *args: str, ok: tuple[int, ...] = (0,), author: dict | None = None,
        what: str | None = None) -> subprocess.CompletedProcess:
    """Run git with an argv list in cwd; a status outside `ok` raises GitError with git's own
    last line. Each call is a crash-injection step (DAGRUN_CRASH_AT) like a file operation."""
    label = f"git {args[0]} {cwd}"
    fsio._step(label)
    try:
        # checkout.workers=0: files are written by one worker per core -- about twice as
        # fast for a 20 000-file worktree here (inode creation is the cost; bench/workspace.py)
        p = subprocess.run(["git", "-c", "core.hooksPath=/dev/null", "-c", "checkout.workers=0", *args],
                           cwd=cwd, env=_env(author),
                           stdin=subprocess.DEVNULL, capture_output=True)
    except FileNotFoundError:
        raise GitError("git is not installed (code workspaces need git >= 2.38)") from None
    except NotADirectoryError:
        raise GitError(f"cannot run git in {cwd}: not a folder") from None
    fsio._done_step(label)
    if p.returncode not in ok:
        msg = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(f"{what or 'git ' + args[0]} failed in {cwd}: {msg[-1] if msg else f'exit {p.returncode}'}")
    return p


def _out(p: subprocess.CompletedProcess) -> str:
    return p.stdout.decode("utf-8", "surrogateescape").strip()


def _safe_name(kind: str, s: str) -> str:
    if not s or s.startswith("-") or "\x00" in s:
        raise UsageError(f"invalid {kind} {s!r}: must not be empty or start with '-'")
    return s


# ================================================================================ check (submit)
def repo_top(path: str) -> str:
    """The work tree root of the repository at path, or PlanError (one line)."""
    if not os.path.isdir(path):
        raise PlanError(f"workspace.repo: {path} is not a folder")
    p = git(path, "rev-parse", "--is-inside-work-tree", "--show-toplevel", ok=(0, 128))
    lines = _out(p).splitlines()
    if p.returncode != 0 or not lines or lines[0] != "true" or len(lines) < 2:
        raise PlanError(f"workspace.repo: {path} is not a git repository with a work tree")
    return lines[1]


def resolve(top: str, rev: str, kind: str = "workspace.base") -> str:
    if not rev or rev.startswith("-"):
        raise PlanError(f"{kind}: {rev!r} is not a branch or commit")
    p = git(top, "rev-parse", "--verify", "--quiet", "--end-of-options", rev + "^{commit}", ok=(0, 1, 128))
    if p.returncode != 0:
        raise PlanError(f"{kind}: {rev!r} is not a branch or commit of {top}")
    return _out(p)


def _checked_out(top: str) -> dict[str, str]:
    """branch ref -> the work tree it is checked out in (every worktree of the repository)."""
    out, path = {}, None
    for line in _out(git(top, "worktree", "list", "--porcelain")).splitlines():
        if line.startswith("worktree "):
            path = line[9:]
        elif line.startswith("branch ") and path:
            out[line[7:]] = path
    return out


def _dirty(wt: str, skip: str | None = None) -> list[str]:
    """Uncommitted changes in a work tree (tracked or untracked, not ignored), minus `skip`
    (the dagrun home when it lies inside the repository)."""
    p = git(wt, "status", "--porcelain=v1", "-z", "--untracked-files=normal", "--ignore-submodules=none")
    names = [e[3:] for e in p.stdout.decode("utf-8", "surrogateescape").split("\x00") if len(e) > 3]
    if skip:
        rel = os.path.relpath(os.path.realpath(skip), os.path.realpath(wt))
        if not rel.startswith(".."):
            names = [n for n in names if not (n.rstrip("/") == rel or n.startswith(rel.rstrip("/") + "/"))]
    return names


def check_plan(plan: Plan, home_root: str | None = None) -> dict | None:
    """At validate/submit: the plan's workspace is usable. Returns the goal's pin
    ({repo, base, base_commit}) or None for a plan without workspace."""
    ws = plan.workspace
    if not ws:
        return None
    where = os.path.basename(plan.source)
    try:
        top = repo_top(ws["repo"])
        base = ws.get("base") or "HEAD"
        oid = resolve(top, base)
        # (base cannot start with "-": resolve() refused that; rev-parse 2.39 would print
        # --end-of-options back in this mode)
        full = _out(git(top, "rev-parse", "--symbolic-full-name", base, ok=(0, 128)))
        here = _out(git(top, "symbolic-ref", "-q", "HEAD", ok=(0, 1)))
        if base == "HEAD" or (full and full == here):
            dirty = _dirty(top, home_root)
            if dirty:
                more = f" and {len(dirty) - 3} more" if len(dirty) > 3 else ""
                raise PlanError(f"workspace: the base {base!r} is checked out in {top} with uncommitted changes "
                                f"({', '.join(dirty[:3])}{more}); the tasks would start without them: commit or "
                                f"stash them first")
    except PlanError as e:
        raise PlanError(f"{where}: {e}") from None
    return {"repo": top, "base": base, "base_commit": oid}


def pin(home: Home, plan: Plan) -> dict:
    """The goal's base commit: fixed when the goal was created (goals/<g>/workspace.json);
    written here if it is missing (a goal submitted before its repository was ready)."""
    g = plan.goal
    got = loads_obj(fsio.read_bytes(home.goal_workspace_path(g), follow=False))
    if isinstance(got, dict) and got.get("base_commit"):
        return got
    rec = check_plan(plan, home.root)
    fsio.write_atomic(home.goal_workspace_path(g), dumps(rec), exclusive=True)
    return loads_obj(fsio.read_bytes(home.goal_workspace_path(g), follow=False)) or rec


# ================================================================================ prepare
def branch_of(g: str, t: str) -> str:
    return f"dagrun/{g}/{t}"


def goal_branch(g: str) -> str:
    """Where `integrate` merges the tasks. Not dagrun/<goal>: git cannot hold a branch
    dagrun/<goal> beside dagrun/<goal>/<task> (a ref is a file or a folder, not both); ids
    start with a letter or digit, so `_integrated` never clashes with a task's branch."""
    return f"dagrun/{g}/_integrated"


_PREPARED = ("path", "branch", "base", "base_commit", "snapshot", "merged", "cwd", "plan_dir")


@dataclass(init=False, repr=False, eq=False)   # frozen; methods written out (records.py: start-up)
class Prepared:
    """A task's git worktree, made before its attempt starts."""
    path: str                 # the worktree
    branch: str
    base: str                 # the base's name as in the plan
    base_commit: str
    snapshot: str             # the commit the task starts from
    merged: list              # [[task, head commit]] merged into the snapshot, in order
    cwd: str                  # where the agent runs
    plan_dir: str             # where it would run without a workspace (scripts next to the plan)

    def __init__(self, path, branch, base, base_commit, snapshot, merged, cwd, plan_dir):
        for k, v in zip(_PREPARED, (path, branch, base, base_commit, snapshot, merged, cwd, plan_dir)):
            object.__setattr__(self, k, v)

    __repr__, __eq__ = plain_methods(*_PREPARED)
    __setattr__, __delattr__, __hash__ = frozen_methods(*_PREPARED)

    def env(self) -> dict:
        return {"DAGRUN_WORKSPACE": self.path, "DAGRUN_WORKSPACE_BRANCH": self.branch,
                "DAGRUN_WORKSPACE_SNAPSHOT": self.snapshot, "DAGRUN_PLAN_DIR": self.plan_dir}


def agent_cwd(plan: Plan, task: Task, top: str, wt: str) -> str:
    """Where the agent runs: a workdir inside the repository maps to the same place in the
    worktree; the default (the plan's folder) outside it becomes the worktree's root; an
    explicit workdir outside the repository is kept."""
    real_top = os.path.realpath(top)
    wd = os.path.realpath(task.workdir)
    if wd == real_top or wd.startswith(real_top + os.sep):
        return os.path.join(wt, os.path.relpath(wd, real_top))
    return wt if task.workdir == plan.plan_dir else task.workdir


def _changes(home: Home, g: str, t: str) -> dict | None:
    r = loads_obj(fsio.read_bytes(home.changes_path(g, t), follow=False))
    return r if isinstance(r, dict) and r.get("head") else None


def _merge_chain(top: str, start: str, heads: list[tuple[str, str, list[str]]], what: str,
                 author: dict | None, into: str) -> tuple[str, list[str]]:
    """Merge each (task, head, files) into start, in order, without a work tree. Returns the
    resulting commit and the conflicts (one line each; a conflicting head is left out)."""
    cur, done, conflicts = start, [], []
    for t, head, files in heads:
        if _is_ancestor(top, head, cur):
            done.append((t, files))
            continue
        if _is_ancestor(top, cur, head):
            cur = head
            done.append((t, files))
            continue
        p = git(top, "merge-tree", "--write-tree", "--name-only", "-z", "--no-messages", cur, head, ok=(0, 1))
        parts = p.stdout.decode("utf-8", "surrogateescape").split("\x00")
        if p.returncode == 1:
            files_c = list(dict.fromkeys(x for x in parts[1:] if x))
            conflicts.append(describe_conflict(t, files_c, conflict_parties(files_c, done), into))
            continue
        tree = parts[0]
        cur = _out(git(top, "commit-tree", "--no-gpg-sign", tree, "-p", cur, "-p", head, "-m",
                       f"dagrun: merge {t} into {what}", author=author))
        done.append((t, files))
    return cur, conflicts


def _is_ancestor(top: str, a: str, b: str) -> bool:
    return git(top, "merge-base", "--is-ancestor", a, b, ok=(0, 1)).returncode == 0


def _valid_worktree(wt: str, branch: str) -> bool:
    if not os.path.isfile(os.path.join(wt, ".git")):
        return False
    p = git(wt, "rev-parse", "--show-toplevel", "--symbolic-full-name", "HEAD", ok=(0, 128))
    lines = _out(p).splitlines()
    return p.returncode == 0 and len(lines) == 2 and os.path.realpath(lines[0]) == os.path.realpath(wt) \
        and lines[1] == "refs/heads/" + branch


def _clear_stale_locks(top: str, wt: str | None, branch: str) -> None:
    """Lock files a killed git left behind (we hold the claim and the attempt's processes
    are gone, so nobody else uses them)."""
    common = _out(git(top, "rev-parse", "--git-common-dir"))
    common = os.path.join(top, common) if not os.path.isabs(common) else common
    fsio.remove(os.path.join(common, "refs", "heads", *branch.split("/")) + ".lock")
    if wt and os.path.isfile(os.path.join(wt, ".git")):
        p = git(wt, "rev-parse", "--git-dir", ok=(0, 128))
        if p.returncode == 0:
            gd = _out(p)
            gd = gd if os.path.isabs(gd) else os.path.join(wt, gd)
            fsio.remove(os.path.join(gd, "index.lock"))


def prepare(home: Home, plan: Plan, t: str) -> Prepared | None:
    """The task's worktree, created (or found) under its claim. None for a task without
    workspace; Conflict when its prerequisites do not merge cleanly."""
    task = plan.task(t)
    if not uses(plan, task):
        return None
    g = plan.goal
    pinned = pin(home, plan)
    top = pinned["repo"]
    wt, branch = home.worktree_path(g, t), branch_of(g, t)
    order = prerequisites({x.id: x.deps for x in plan.tasks}, Scheduler(plan.tasks).topo_ids(), t,
                          {x.id: x.workspace for x in plan.tasks})
    heads = []
    for d in order:
        ch = _changes(home, g, d)
        if ch is None:        # done without a workspace (before the plan had one): no commits
            continue          # (with one, changes.json is published before the done marker)
        heads.append((d, ch["head"], ch.get("files") or []))
    rec = loads_obj(fsio.read_bytes(home.snapshot_path(g, t), follow=False))
    if rec and rec.get("snapshot") and rec.get("merged") == [[d, h] for d, h, _f in heads] \
            and os.path.isdir(wt) and _valid_worktree(wt, branch):
        # a retry, or a crash after the worktree was made: go on where it is. (Only while it
        # holds the prerequisites' current heads: one re-done since -- a claim that came
        # back Stale, an edited changes.json -- means a fresh snapshot.)
        _clear_stale_locks(top, wt, branch)
        return _prepared(plan, task, top, rec)
    # a fresh task folder, or a crash half-way through the last prepare: start over
    if os.path.lexists(wt):
        fsio.rmtree(wt)
    git(top, "worktree", "prune")
    _clear_stale_locks(top, None, branch)
    author = plan.workspace.get("author")
    snap, conflicts = _merge_chain(top, pinned["base_commit"], heads, f"the snapshot of {t}", author,
                                   pinned["base"])
    if conflicts:
        raise Conflict([f"the prerequisites of {t} do not merge: " + c for c in conflicts])
    fsio.makedirs(os.path.dirname(wt))
    git(top, "worktree", "add", "--quiet", "--force", "-B", branch, "--", wt, snap)
    rec = {"path": wt, "branch": branch, "base": pinned["base"], "base_commit": pinned["base_commit"],
           "snapshot": snap, "merged": [[d, h] for d, h, _f in heads]}
    fsio.write_atomic(home.snapshot_path(g, t), dumps(rec))
    return _prepared(plan, task, top, rec)


def _prepared(plan: Plan, task: Task, top: str, rec: dict) -> Prepared:
    return Prepared(path=rec["path"], branch=rec["branch"], base=rec["base"], base_commit=rec["base_commit"],
                    snapshot=rec["snapshot"], merged=rec.get("merged") or [],
                    cwd=agent_cwd(plan, task, top, rec["path"]), plan_dir=plan.plan_dir)


def prompt_note(p: Prepared) -> str:
    """What the prompt says about the workspace."""
    lines = ["# Your workspace", "",
             f"You work in a git worktree: {p.path} (branch {p.branch}). Edit the files there.",
             f"It starts from {p.base} ({p.base_commit[:12]})" + (
                 " with the changes of these prerequisite tasks already merged in: " +
                 ", ".join(f"{d} ({h[:12]})" for d, h in p.merged) + "." if p.merged else "."),
             "When you exit with status 0, dagrun commits everything you changed there (new files too, "
             "ignored ones not) on that branch; you need not commit yourself."]
    return "\n".join(lines)


# ================================================================================ capture
def capture(home: Home, plan: Plan, t: str) -> dict | None:
    """Commit what the agent changed on the task's branch and publish `patch` and
    changes.json. Idempotent: run again after a crash it finds nothing new to commit and
    publishes the same files. None for a task that has no worktree."""
    g = plan.goal
    rec = loads_obj(fsio.read_bytes(home.snapshot_path(g, t), follow=False))
    if not isinstance(rec, dict) or not rec.get("snapshot"):
        return None
    wt, branch, snap = rec["path"], rec["branch"], rec["snapshot"]
    pinned = pin(home, plan)
    top = pinned["repo"]
    if not _valid_worktree(wt, branch):
        raise GitError(f"the worktree {wt} is gone or no longer on branch {branch}")
    _clear_stale_locks(top, wt, branch)
    author = plan.workspace.get("author")
    git(wt, "add", "--all", "--", ":/")
    tree = _out(git(wt, "write-tree"))
    head = _out(git(wt, "rev-parse", "--verify", "HEAD"))
    if tree != _out(git(wt, "rev-parse", "--verify", head + "^{tree}")):
        msg = f"{g}/{t}: {plan.task(t).description or 'changes of task ' + t}\n\ndagrun goal {g}, task {t}\n"
        new = _out(git(wt, "commit-tree", "--no-gpg-sign", tree, "-p", head, "-m", msg, author=author))
        git(wt, "update-ref", "-m", f"dagrun capture {g}/{t}", "refs/heads/" + branch, new, head)
        head = new
    files = [x for x in git(wt, "diff", "--name-only", "-z", "--no-renames", snap, head, "--")
             .stdout.decode("utf-8", "surrogateescape").split("\x00") if x]
    stat = git(wt, "diff", "--stat=100", "--stat-count=60", "--no-color", snap, head, "--").stdout.decode("utf-8", "replace").rstrip()
    patch = git(wt, "format-patch", "--stdout", "--no-color", "--binary", f"{snap}..{head}", "--").stdout
    fsio.write_atomic(home.patch_path(g, t), patch)
    out = {"branch": branch, "snapshot": snap, "head": head, "base_commit": rec["base_commit"],
           "merged": rec.get("merged") or [], "files": files, "diffstat": stat}
    fsio.write_atomic(home.changes_path(g, t), dumps(out))
    return out


def diffstat(home: Home, g: str, t: str) -> tuple[str, str] | None:
    """(diffstat, patch path) of a done task, for its dependents' prompts."""
    ch = _changes(home, g, t)
    if ch is None:
        return None
    return ch.get("diffstat") or "(no changes)", home.patch_path(g, t)


# ================================================================================ integrate
@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class Integration:
    """What integrating a goal's task branches did: the branches merged, those skipped, the head."""
    goal: str
    branch: str
    head: str
    merged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # not done, or without workspace
    updated: bool = False

    def __init__(self, goal, branch, head, merged=NEW, skipped=NEW, updated=False):
        self.goal, self.branch, self.head = goal, branch, head
        self.merged = [] if merged is NEW else merged
        self.skipped = [] if skipped is NEW else skipped
        self.updated = updated

    __repr__, __eq__ = plain_methods("goal", "branch", "head", "merged", "skipped", "updated")

    def to_dict(self) -> dict:
        return {"goal": self.goal, "branch": self.branch, "head": self.head, "merged": self.merged,
                "skipped": self.skipped, "updated": self.updated}


def integrate(home: Home, plan: Plan, into: str | None = None) -> Integration:
    """Merge the heads of every done task, in topological order, into dagrun/<goal>/_integrated (created
    from the base) or into `into`. All or nothing: with a conflict nothing is updated and
    Conflict names the tasks and files. A branch checked out in a work tree (only ever the
    one --into names, or dagrun/<goal>/_integrated if a person checked it out) is advanced there with
    `git merge --ff-only`, and only when that work tree is clean."""
    g = plan.goal
    if not plan.workspace:
        raise UsageError(f"goal {g!r} has no workspace (set \"workspace\" in its plan)")
    pinned = pin(home, plan)
    top = pinned["repo"]
    target = _safe_name("branch", into) if into else goal_branch(g)
    if git(top, "check-ref-format", "--branch", target, ok=(0, 1, 128)).returncode != 0:
        raise UsageError(f"invalid branch name {target!r}")
    ref = "refs/heads/" + target
    p = git(top, "rev-parse", "--verify", "--quiet", ref, ok=(0, 1))
    old = _out(p) if p.returncode == 0 else None
    if old is None and into:
        raise UsageError(f"no branch {into!r} in {top}")
    heads, res = [], Integration(g, target, old or pinned["base_commit"])
    for t in Scheduler(plan.tasks).topo_ids():
        if not plan.task(t).workspace:
            continue
        ch = _changes(home, g, t) if os.path.exists(home.marker_path(g, t, "done")) else None
        if ch is None:
            res.skipped.append(t)
        else:
            heads.append((t, ch["head"], ch.get("files") or []))
    new, conflicts = _merge_chain(top, res.head, heads, target, plan.workspace.get("author"), target)
    if conflicts:
        raise Conflict([f"cannot integrate goal {g} into {target}: " + c for c in conflicts])
    res.merged = [t for t, _h, _f in heads]
    if new == old:
        return res
    wt = _checked_out(top).get(ref)
    if wt is not None:
        dirty = _dirty(wt, home.root)
        if dirty:
            raise Refused(f"{target} is checked out in {wt} with uncommitted changes ({', '.join(dirty[:3])}); "
                          f"commit or stash them, then integrate again")
        git(wt, "merge", "--ff-only", "--quiet", new, what=f"git merge --ff-only into {target}")
    else:
        git(top, "update-ref", "-m", f"dagrun integrate {g}", ref, new, old or ZERO)
    res.head, res.updated = new, True
    return res


# ================================================================================ gc
@dataclass(init=False, repr=False, eq=False)   # methods written out (records.py: start-up)
class GcItem:
    """A worktree or branch that `dagrun workspace gc` removes."""
    goal: str
    what: str          # worktree | branch
    name: str

    def __init__(self, goal, what, name):
        self.goal, self.what, self.name = goal, what, name

    __repr__, __eq__ = plain_methods("goal", "what", "name")


def gc(home: Home, plans: list[Plan], *, ended: set[str], dry_run: bool = False) -> list[GcItem]:
    """Remove the worktrees of ended goals (and of archived task folders of any goal), and
    delete task branches dagrun/<goal>/<task> whose head is already in dagrun/<goal>/_integrated. Never
    deletes a branch outside dagrun/."""
    items: list[GcItem] = []
    for plan in plans:
        if not plan.workspace:
            continue
        g = plan.goal
        pinned = loads_obj(fsio.read_bytes(home.goal_workspace_path(g), follow=False))
        top = pinned.get("repo") if isinstance(pinned, dict) else None
        if not top or not os.path.isdir(top):
            continue
        wts = []
        if g in ended:
            wts += [home.worktree_path(g, t.id) for t in plan.tasks]
        adir = home.archive_dir(g)
        if os.path.isdir(adir):
            for stamp in sorted(os.listdir(adir)):
                sd = os.path.join(adir, stamp)
                for t in sorted(os.listdir(sd)) if os.path.isdir(sd) else []:
                    wts.append(os.path.join(sd, t, "worktree"))
        for wt in wts:
            if os.path.lexists(wt):
                items.append(GcItem(g, "worktree", wt))
                if not dry_run:
                    fsio.rmtree(wt)
        if not dry_run:
            git(top, "worktree", "prune")
        goal_ref = "refs/heads/" + goal_branch(g)
        gp = git(top, "rev-parse", "--verify", "--quiet", goal_ref, ok=(0, 1))
        if gp.returncode != 0:
            continue                           # not integrated: the task branches stay
        busy = _checked_out(top)
        refs = _out(git(top, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/heads/dagrun/{g}/"))
        for line in refs.splitlines():
            ref, oid = line.rsplit(" ", 1)
            if not ref.startswith(f"refs/heads/dagrun/{g}/") or ref == goal_ref or ref in busy:
                continue
            if _is_ancestor(top, oid, goal_ref):
                items.append(GcItem(g, "branch", ref[len("refs/heads/"):]))
                if not dry_run:
                    git(top, "update-ref", "-d", ref, oid)
    return items
