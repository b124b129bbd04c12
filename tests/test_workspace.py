"""Code workspaces with real git repositories: each task in its own worktree made from the
base plus its prerequisites' commits, capture before done, integrate, gc, the files mutex,
crash safety of capture. See docs/workspaces.md."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import crash_step, events, need_realagents, run, write_plan

pytestmark = pytest.mark.skipif(shutil.which("git") is None and os.environ.get("CI") != "true",
                                reason="git is not installed")

GIT_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
GIT_ENV.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@x", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@x")


def git(repo, *args, check=True) -> str:
    p = subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"git {args}: {p.stderr}")
    return p.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README": "hello\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "base")
    return path


def ws_plan(base: Path, tasks, **top) -> Path:
    top.setdefault("workspace", {"repo": "repo", "base": "main"})
    return write_plan(base, tasks, goal="g", **top)


def tdir(base: Path, t: str) -> Path:
    return base / "home" / "goals" / "g" / "tasks" / t


def fsck_clean(repo: Path) -> None:
    p = subprocess.run(["git", "fsck", "--no-progress"], cwd=repo, env=GIT_ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    bad = [x for x in (p.stdout + p.stderr).splitlines() if not x.startswith(("dangling ", "Checking"))]
    assert not bad, bad


# ------------------------------------------------------------------------------ snapshots
def test_parallel_tasks_and_dependents_see_exactly_their_prerequisites(tmp_path):
    repo = make_repo(tmp_path / "repo")
    ws_plan(tmp_path, [
        {"id": "A", "prompt": "a", "agent": "sleep 0.3; echo a > a.txt; echo wrote-a"},
        {"id": "B", "prompt": "b", "agent": "sleep 0.3; mkdir -p sub && echo b > sub/b.txt"},
        {"id": "C", "prompt": "c", "deps": ["A", "B"],
         "agent": "test -e a.txt && test -e sub/b.txt && echo c > c.txt"},
        {"id": "D", "prompt": "d", "deps": ["A"], "agent": "test -e a.txt && ! test -e sub/b.txt"},
        {"id": "E", "prompt": "e", "deps": ["C"],
         "agent": 'test -e c.txt && test "$PWD" = "$DAGRUN_WORKSPACE" && '
                  'test "$(git rev-parse --show-toplevel)" = "$DAGRUN_WORKSPACE" && '
                  'test "$(git symbolic-ref --short HEAD)" = dagrun/g/E'},
        {"id": "N", "prompt": "n", "workspace": False, "agent": 'test -z "$DAGRUN_WORKSPACE" && pwd'},
    ])
    # the user's GIT_* variables must neither redirect dagrun's git nor the agents'
    r = run("run", tmp_path / "dag.json", "-j", "4", home=tmp_path / "home", check=False,
            env={"GIT_DIR": str(tmp_path / "nowhere"), "GIT_WORK_TREE": str(tmp_path),
                 "GIT_INDEX_FILE": str(tmp_path / "idx")})
    assert r.returncode == 0, r.stderr + r.stdout
    # A and B overlapped in time (they ran in parallel, each in its own worktree)
    ev = events(tmp_path / "home", "g")
    order = [(e.get("task"), e.get("status")) for e in ev if e.get("status") in ("running", "done")]
    assert order.index(("B", "running")) < order.index(("A", "done"))
    # workspace: false runs where it always did
    assert (tdir(tmp_path, "N") / "output").read_text().strip() == str(tmp_path)
    assert not (tdir(tmp_path, "N") / "worktree").exists()
    # the prompt says where the workspace is and what it contains; downstream sees diffstats
    pc = (tdir(tmp_path, "C") / "prompt.md").read_text()
    assert str(tdir(tmp_path, "C") / "worktree") in pc and "branch dagrun/g/C" in pc
    heads = {t: json.loads((tdir(tmp_path, t) / "changes.json").read_text())["head"] for t in "AB"}
    assert f"A ({heads['A'][:12]})" in pc and f"B ({heads['B'][:12]})" in pc
    assert "a.txt | 1 +" in pc and "sub/b.txt | 1 +" in pc and str(tdir(tmp_path, "A") / "patch") in pc
    # capture: one commit per task on its branch, a patch next to the output
    assert git(repo, "show", "dagrun/g/A:a.txt") == "a"
    assert git(repo, "rev-list", "--count", "main..dagrun/g/A") == "1"
    patch = (tdir(tmp_path, "A") / "patch").read_text()
    assert patch.startswith("From ") and "+a" in patch and "a.txt" in patch
    assert set(json.loads((tdir(tmp_path, "C") / "changes.json").read_text())["files"]) == {"c.txt"}
    assert git(repo, "show", "dagrun/g/E:c.txt") == "c"
    # the user's checkout was not touched
    assert git(repo, "status", "--porcelain") == "" and git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert not (repo / "a.txt").exists()
    fsck_clean(repo)


def test_untracked_files_are_captured_ignored_ones_are_not(tmp_path):
    repo = make_repo(tmp_path / "repo", {".gitignore": "*.log\n", "x.py": "print(1)\n"})
    ws_plan(tmp_path, [{"id": "A", "prompt": "a",
                        "agent": "echo 'print(2)' > x.py; echo n > new.txt; echo junk > debug.log"}],
            workspace={"repo": "repo", "author": {"name": "Bot", "email": "bot@example.org"}})
    run("run", tmp_path / "dag.json", home=tmp_path / "home")
    files = git(repo, "ls-tree", "-r", "--name-only", "dagrun/g/A").split()
    assert "new.txt" in files and "debug.log" not in files
    assert git(repo, "show", "dagrun/g/A:x.py") == "print(2)"
    assert git(repo, "log", "-1", "--format=%an <%ae>", "dagrun/g/A") == "Bot <bot@example.org>"


def test_prerequisites_that_conflict_never_start_the_dependent(tmp_path):
    repo = make_repo(tmp_path / "repo", {"f.txt": "line\n"})
    marker = tmp_path / "R-started"
    ws_plan(tmp_path, [
        {"id": "P", "prompt": "p", "agent": "echo from-P > f.txt"},
        {"id": "Q", "prompt": "q", "agent": "echo from-Q > f.txt"},
        {"id": "R", "prompt": "r", "deps": ["P", "Q"], "agent": f"touch {marker}"},
        {"id": "S", "prompt": "s", "deps": ["R"], "agent": "true"},
    ])
    r = run("run", tmp_path / "dag.json", home=tmp_path / "home", check=1)
    assert not marker.exists()
    failed = json.loads((tdir(tmp_path, "R") / "failed").read_text())
    assert failed["outcome"] == "workspace_conflict"
    assert "P and Q conflict in f.txt" in failed["reason"], failed
    assert not (tdir(tmp_path, "R") / "worktree").exists()
    st = json.loads(run("status", "g", "--json", home=tmp_path / "home").stdout)
    states = {t["task"]: t["state"] for t in st["tasks"]}
    assert states == {"P": "done", "Q": "done", "R": "failed", "S": "blocked"}, states
    assert "workspace_conflict" in r.stdout + r.stderr or "conflict" in r.stdout + r.stderr
    fsck_clean(repo)


def test_integrate_merges_in_order_and_reports_conflicts_by_task(tmp_path):
    repo = make_repo(tmp_path / "repo", {"f.txt": "one\ntwo\nthree\n"})
    ws_plan(tmp_path, [
        {"id": "P", "prompt": "p", "agent": "printf 'one\\nP\\nthree\\n' > f.txt"},
        {"id": "Q", "prompt": "q", "agent": "printf 'one\\nQ\\nthree\\n' > f.txt"},
        {"id": "X", "prompt": "x", "agent": "echo x > x.txt"},
    ])
    run("run", tmp_path / "dag.json", home=tmp_path / "home")
    r = run("integrate", "g", home=tmp_path / "home", check=1)
    assert "P and Q conflict in f.txt" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1                      # one line
    assert git(repo, "rev-parse", "--verify", "--quiet", "dagrun/g/_integrated", check=False) == ""
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", "main@{0}")
    assert git(repo, "status", "--porcelain") == ""


def test_integrate_then_into_a_checked_out_branch_and_gc(tmp_path):
    repo = make_repo(tmp_path / "repo")
    ws_plan(tmp_path, [
        {"id": "A", "prompt": "a", "agent": "echo a > a.txt"},
        {"id": "B", "prompt": "b", "agent": "echo b > b.txt"},
        {"id": "C", "prompt": "c", "deps": ["A"], "agent": "echo c >> a.txt"},
    ])
    home = tmp_path / "home"
    run("run", tmp_path / "dag.json", home=home)
    main_before = git(repo, "rev-parse", "main")
    out = run("integrate", "g", home=home).stdout
    assert out.startswith("dagrun/g/_integrated ") and "3 task branch(es) merged" in out
    assert git(repo, "show", "dagrun/g/_integrated:a.txt") == "a\nc"
    assert git(repo, "show", "dagrun/g/_integrated:b.txt") == "b"
    assert git(repo, "rev-parse", "main") == main_before          # the user's branch untouched
    assert "already up to date" in run("integrate", "g", home=home).stdout
    # --into the checked-out branch: refused while dirty, fast-forwarded when clean
    (repo / "README").write_text("edited\n")
    r = run("integrate", "g", "--into", "main", home=home, check=4)
    assert "uncommitted changes" in r.stderr and "README" in r.stderr
    git(repo, "checkout", "-q", "--", "README")
    run("integrate", "g", "--into", "main", home=home)
    assert (repo / "a.txt").read_text() == "a\nc\n" and git(repo, "status", "--porcelain") == ""
    r = run("integrate", "g", "--into", "--force", home=home, check=2)
    assert "must not" in r.stderr
    # gc: worktrees of the ended goal go; integrated task branches go; nothing else
    git(repo, "branch", "keep-me")
    dry = run("gc", "--dry-run", home=home).stdout
    assert "would remove worktree" in dry and (tdir(tmp_path, "A") / "worktree").exists()
    run("gc", home=home)
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    branches = set(git(repo, "branch", "--format=%(refname:short)").split())
    assert branches == {"main", "keep-me", "dagrun/g/_integrated"}, branches
    fsck_clean(repo)


def test_gc_keeps_branches_until_integration(tmp_path):
    repo = make_repo(tmp_path / "repo")
    ws_plan(tmp_path, [{"id": "A", "prompt": "a", "agent": "echo a > a.txt"}])
    run("run", tmp_path / "dag.json", home=tmp_path / "home")
    run("gc", home=tmp_path / "home")
    assert not (tdir(tmp_path, "A") / "worktree").exists()
    assert "dagrun/g/A" in git(repo, "branch", "--format=%(refname:short)").split()
    run("integrate", "g", home=tmp_path / "home")       # works from the branches alone
    assert git(repo, "show", "dagrun/g/_integrated:a.txt") == "a"


def test_automatic_integration_when_the_goal_ends(tmp_path):
    repo = make_repo(tmp_path / "repo")
    ws_plan(tmp_path, [{"id": "A", "prompt": "a", "agent": "echo a > a.txt"}],
            workspace={"repo": "repo", "integrate": True})
    run("run", tmp_path / "dag.json", home=tmp_path / "home")
    assert git(repo, "show", "dagrun/g/_integrated:a.txt") == "a"


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("setup,ws,msg", [
    ("plain", {"repo": "repo"}, "is not a git repository"),
    ("repo", {"repo": "repo", "base": "nope"}, "'nope' is not a branch or commit"),
    ("repo", {"repo": "missing"}, "is not a folder"),
    ("dirty", {"repo": "repo", "base": "main"}, "uncommitted changes (README)"),
    ("untracked", {"repo": "repo"}, "uncommitted changes (new.txt)"),
    ("repo", {"repo": "repo", "base": "-x"}, "is not a branch or commit name"),
    ("repo", {"base": "main"}, "workspace needs \"repo\""),
    ("repo", {"repo": "repo", "colour": 1}, "unknown field \"colour\""),
])
def test_bad_workspaces_are_refused_with_one_line(tmp_path, setup, ws, msg):
    if setup == "plain":
        (tmp_path / "repo").mkdir()
    else:
        repo = make_repo(tmp_path / "repo")
        if setup == "dirty":
            (repo / "README").write_text("changed\n")
        elif setup == "untracked":
            (repo / "new.txt").write_text("x\n")
    p = ws_plan(tmp_path, [{"id": "A", "prompt": "a", "agent": "true"}], workspace=ws)
    for cmd in ("validate", "submit"):
        r = run(cmd, p, home=tmp_path / "home", check=2)
        assert msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "home" / "goals" / "g").exists()


def test_dirty_other_branch_and_home_inside_repo_are_fine(tmp_path):
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "base2")
    (repo / "README").write_text("dirty, but main is not the base\n")
    p = ws_plan(repo, [{"id": "A", "prompt": "a", "agent": "echo a > a.txt"}],
                workspace={"repo": ".", "base": "base2"})
    git(repo, "add", "dag.json")
    run("run", p, home=repo / ".dagrun")                 # the home inside the repo is not "dirty"
    assert git(repo, "show", "dagrun/g/A:a.txt") == "a"


def test_files_globs_serialise_overlapping_tasks(tmp_path):
    make_repo(tmp_path / "repo")
    log = tmp_path / "log"
    agent = f'echo "start $DAGRUN_TASK" >> {log}; sleep 0.4; echo "end $DAGRUN_TASK" >> {log}'
    ws_plan(tmp_path, [
        {"id": "auth1", "prompt": "p", "agent": agent, "files": ["src/auth/**"]},
        {"id": "auth2", "prompt": "p", "agent": agent, "files": ["src/*/login.py"]},
        {"id": "docs", "prompt": "p", "agent": agent, "files": ["docs/**"]},
    ])
    run("run", tmp_path / "dag.json", "-j", "3", home=tmp_path / "home")
    lines = log.read_text().split("\n")
    a1s, a1e = lines.index("start auth1"), lines.index("end auth1")
    a2s, a2e = lines.index("start auth2"), lines.index("end auth2")
    assert a1e < a2s or a2e < a1s, lines          # never at the same time
    assert lines.index("start docs") < max(a1e, a2e)   # the disjoint one ran beside them


# ------------------------------------------------------------------------------ crash safety
def _capture_steps(tmp_path) -> tuple[list[tuple[int, str]], list[str], Path]:
    """The step numbers (fsio._step, git calls included) of A's capture in a clean run; all
    its labels and its home (for crash_step)."""
    base = tmp_path / "trace"
    make_repo(base / "repo")
    ws_plan(base, CRASH_TASKS)
    trace = base / "trace.txt"
    run("run", base / "dag.json", "-j", "1", home=base / "home", env={"DAGRUN_STEP_TRACE": str(trace)})
    steps = [(int(n), label) for n, label in (x.split(" ", 1) for x in trace.read_text().splitlines())]
    first = next(n for n, label in steps if label.startswith("git add ") and "/A/worktree" in label)
    last = next(n for n, label in steps if label.endswith("/A/done"))
    return [(n, label) for n, label in steps if first <= n <= last], [label for _n, label in steps], base / "home"


CRASH_TASKS = [
    {"id": "A", "prompt": "a", "agent": "echo a > a.txt; echo same > b.txt"},
    {"id": "B", "prompt": "b", "deps": ["A"], "agent": "test -e a.txt && echo b >> b.txt"},
]


@pytest.mark.slow
def test_sigkill_at_every_step_of_capture_then_resume_is_consistent(tmp_path):
    _crash_capture(tmp_path, lambda label: True, ("", ":after"))


def test_sigkill_between_commit_and_done_then_resume_is_consistent(tmp_path):
    """The key points (the whole walk is the slow test above), right after: the index was
    updated, the commit object was made, the branch moved (committed, no done yet), the
    patch's temporary file was written."""
    _crash_capture(tmp_path, lambda label: label.startswith(("git add", "git commit-tree", "git update-ref"))
                   or "/A/.patch." in label, (":after",))


def _crash_then_resume(base: Path, at: str | dict, label: str = "") -> Path:
    """A fresh repo and CRASH_TASKS goal under base, `dagrun run` SIGKILLed at step `at`
    (DAGRUN_CRASH_AT, or the environment of crash_step), then `dagrun run g` to its end: the repo."""
    repo = make_repo(base / "repo")
    ws_plan(base, CRASH_TASKS)
    env = at if isinstance(at, dict) else {"DAGRUN_CRASH_AT": at}
    r = run("run", base / "dag.json", "-j", "1", home=base / "home", check=False, env=env)
    assert r.returncode == -signal.SIGKILL, (at, label, r.returncode, r.stderr)
    run("run", "g", home=base / "home")
    return repo


def _crash_capture(tmp_path, select, whens):
    steps, labels, h0 = _capture_steps(tmp_path)
    assert any("commit-tree" in label for _n, label in steps) and any("update-ref" in label for _n, label in steps)
    picked = [(n, label) for n, label in steps if select(label)]
    assert picked
    for n, label in picked:
        for when in whens:
            base = tmp_path / f"k{n}{when.replace(':', '-')}"
            # the step named by its label (crash_step): its number differs from run to run
            repo = _crash_then_resume(base, crash_step(labels, n, h0, after=when == ":after"), label)
            # no change lost, no second commit, the dependent saw A's work, fsck clean
            assert git(repo, "rev-list", "--count", "main..dagrun/g/A") == "1", (n, label)
            assert git(repo, "show", "dagrun/g/A:a.txt") == "a"
            assert git(repo, "show", "dagrun/g/B:b.txt") == "same\nb"
            assert "+a" in (tdir(base, "A") / "patch").read_text()
            fsck_clean(repo)
            run("gc", home=base / "home")
            assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
            assert not list((base / "home/goals/g/tasks").glob("*/worktree"))
            shutil.rmtree(base)


@pytest.mark.slow     # ~10 s per point: a claim that died before owner.json waits out its grace
def test_sigkill_during_prepare_then_resume(tmp_path):
    """A crash half-way through creating B's worktree: the next engine starts it over."""
    base0 = tmp_path / "trace"
    make_repo(base0 / "repo")
    ws_plan(base0, CRASH_TASKS)
    trace = base0 / "trace.txt"
    run("run", base0 / "dag.json", "-j", "1", home=base0 / "home", env={"DAGRUN_STEP_TRACE": str(trace)})
    steps = [x.split(" ", 1) for x in trace.read_text().splitlines()]
    wt_add = [int(n) for n, label in steps if label.startswith("git worktree ")]
    for n in wt_add:
        base = tmp_path / f"k{n}"
        repo = _crash_then_resume(base, f"{n}:after")
        assert git(repo, "show", "dagrun/g/B:b.txt") == "same\nb"
        fsck_clean(repo)
        shutil.rmtree(base)


# ------------------------------------------------------------------------------ pure rules
def test_glob_overlap_rules():
    from dagrun.wsrules import globs_overlap, may_start, prerequisites
    yes = [("src/auth/**", "src/auth/x.py"), ("src/auth", "src/auth/x.py"), ("src/*/login.py", "src/auth/**"),
           ("*.py", "main.py"), ("a/b*.py", "a/bc*.py"), ("**", "anything"), ("docs/x.md", "docs/x.md")]
    no = [("src/auth/**", "src/db/**"), ("*.py", "*.md"), ("a/b.py", "a/c.py"), ("src/*/login.py", "src/a/b.py"),
          ("docs/**", "src/**")]
    for a, b in yes:
        assert globs_overlap(a, b) and globs_overlap(b, a), (a, b)
    for a, b in no:
        assert not globs_overlap(a, b) and not globs_overlap(b, a), (a, b)
    assert may_start(("a/**",), [(), ("b/**",)]) and not may_start(("a/**",), [("a/x",)])
    assert may_start((), [("**",)])
    deps = {"A": [], "B": ["A"], "C": ["B"], "D": ["A", "C"], "N": ["A"], "M": ["N"]}
    topo = ["A", "B", "N", "C", "D", "M"]
    assert prerequisites(deps, topo, "D") == ["A", "B", "C"]
    assert prerequisites(deps, topo, "M", {"N": False}) == ["A"]


def test_plan_without_workspace_keeps_its_plan_json(tmp_path):
    from dagrun.plan import load
    p = write_plan(tmp_path, [{"id": "A", "prompt": "a", "agent": "true"}])
    d = json.loads(load(str(p)).canonical())
    assert "workspace" not in d and "files" not in d["tasks"][0] and "workspace" not in d["tasks"][0]


def test_bash_protocol_claim_edits_the_workspace_and_complete_captures(tmp_path):
    repo = make_repo(tmp_path / "repo")
    ws_plan(tmp_path, [{"id": "A", "prompt": "a", "agent": "unused"},
                       {"id": "B", "prompt": "b", "deps": ["A"], "agent": "unused"}])
    home = tmp_path / "home"
    run("submit", tmp_path / "dag.json", home=home)
    script = ('eval "$(dagrun claim g --env)" && cd "$DAGRUN_WORKDIR" && test "$PWD" = "$DAGRUN_WORKSPACE" '
              '&& echo from-script > s.txt && echo done > "$DAGRUN_STDOUT_FILE" && dagrun complete g "$DAGRUN_TASK"')
    env = dict(os.environ, DAGRUN_HOME=str(home), PATH=os.path.dirname(run.__globals__["DAGRUN"]) + ":" +
               os.environ["PATH"])
    p = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert git(repo, "show", "dagrun/g/A:s.txt") == "from-script"
    info = json.loads(run("claim", "g", "--json", home=home).stdout)
    assert info["task"] == "B" and os.path.exists(os.path.join(info["workspace"], "s.txt"))


def test_example_code_edit_runs_offline_and_integrates(tmp_path):
    from conftest import EXAMPLES
    ex = tmp_path / "code-edit"
    shutil.copytree(EXAMPLES / "code-edit", ex, ignore=shutil.ignore_patterns("calc"))
    subprocess.run(["sh", str(ex / "init.sh")], check=True, capture_output=True, env=GIT_ENV)
    home = tmp_path / "home"
    run("run", ex / "dag.json", home=home)
    run("integrate", "code-edit", home=home)
    repo = ex / "calc"
    files = set(git(repo, "ls-tree", "-r", "--name-only", "dagrun/code-edit/_integrated").split())
    assert files == {".gitignore", "README.md", "calc.py", "cli.py", "ops/div.py", "ops/mul.py", "test_calc.py"}
    git(repo, "checkout", "-q", "dagrun/code-edit/_integrated")
    p = subprocess.run(["python3", "cli.py", "6", "/", "3"], cwd=repo, capture_output=True, text=True)
    assert p.stdout.strip() == "2.0", p.stderr


@pytest.mark.parametrize("task,msg", [
    ({"files": ["../x"]}, "tasks[0].files[0]: glob \"../x\" must not contain . or .. segments"),
    ({"files": ["/abs/**"]}, "glob \"/abs/**\" must be relative to the repository root"),
    ({"files": "src/**"}, "tasks[0].files: expected an array of globs, got a string"),
    ({"workspace": "no"}, "tasks[0].workspace: expected true or false, got a string"),
])
def test_bad_task_workspace_fields(tmp_path, task, msg):
    p = write_plan(tmp_path, [{"id": "A", "prompt": "a", "agent": "true", **task}])
    r = run("validate", p, check=2)
    assert msg in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_plan_edit_that_adds_the_workspace_keeps_done_tasks(tmp_path):
    repo = make_repo(tmp_path / "repo")
    tasks = [{"id": "A", "prompt": "a", "agent": "echo plain"}]
    p = write_plan(tmp_path, tasks, goal="g")
    run("run", p, home=tmp_path / "home")
    ws_plan(tmp_path, tasks + [{"id": "B", "prompt": "b", "deps": ["A"], "agent": "echo b > b.txt"}])
    run("submit", "--replace", tmp_path / "dag.json", home=tmp_path / "home")
    run("run", "g", home=tmp_path / "home")
    assert (tdir(tmp_path, "A") / "output").read_text() == "plain\n"       # kept, not re-run
    assert git(repo, "show", "dagrun/g/B:b.txt") == "b"
    assert json.loads((tdir(tmp_path, "B") / "snapshot.json").read_text())["merged"] == []


@pytest.mark.realagents
@pytest.mark.parametrize("cli", ["codex-mock --sandbox workspace-write", "claude-mock"])
def test_real_agent_cli_runs_in_its_worktree(tmp_path, cli):
    """Codex and Claude Code (against the local mock LLM) run with a worktree as their folder;
    the mock only answers in text, so the task's patch is empty -- what is checked is that
    the CLIs accept the worktree (Codex wants a git repository) and the capture runs."""
    binary = Path("/tmp/realagents/bin") / cli.split()[0]
    need_realagents(binary.name)
    repo = make_repo(tmp_path / "repo")
    ws_plan(tmp_path, [{"id": "A", "prompt": "Say hello.", "agent": f"{binary} {' '.join(cli.split()[1:])}",
                        "timeout": 120}])
    run("run", tmp_path / "dag.json", home=tmp_path / "home", timeout=180)
    assert "MOCK REPLY" in (tdir(tmp_path, "A") / "output").read_text()
    assert json.loads((tdir(tmp_path, "A") / "changes.json").read_text())["files"] == []
    assert git(repo, "rev-list", "--count", "main..dagrun/g/A") == "0"
