"""The architecture, enforced: a lower layer never imports a higher one; typer/rich only in cli/,
watchdog only in watcher.py, process control only in executor.py. See ARCHITECTURE.md."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dagrun"

# lower number = lower layer. A module may import modules of its own layer or below. The
# layers are the ones ARCHITECTURE.md draws ("Module map"), bottom up:
LAYERS = {
    # 0: vocabulary and facts about processes; no dagrun imports
    "errors": 0, "states": 0, "proc": 0,
    "bulk": 0,           # big builds (plan, scheduler, facts) with the cyclic GC paused
    "records": 0,        # @dataclass's __repr__/__eq__ without exec (start-up)
    "digests": 0,        # SHA-1/SHA-256 without hashlib's OpenSSL load (start-up)
    "lazyre": 0,         # module-level regular expressions compiled on first use (start-up)
    # 1: the one module that changes files
    "fsio": 1,
    "linesink": 1,       # the log lines to stderr/stdout that never block the engine (a pipe nobody reads)
    # 2: pure: the plan, prompts, the scheduler (no I/O, no clock)
    "plan": 2, "prompt": 2, "scheduler": 2, "agentcheck": 2, "conditions": 2,
    # agent presets (the table + $DAGRUN_HOME/presets.json) and the usage-line format
    "presets": 2, "usage": 2,
    "wsrules": 2,        # pure rules of code workspaces (snapshot order, files mutex, conflicts)
    "fanrules": 2,       # pure rules of fan-out: instance ids, items from an output, {{item}}
    "shellwords": 2,     # pure: the words of a plain agent command (exec'd without sh -c)
    # 3: the on-disk layout
    "store": 3,
    # 4: adapters at the edge: the events log, claims, the inotify doorbell, the runners
    "events": 4, "claim": 4, "resources": 4, "watcher": 4, "executor": 4, "simrun": 4, "slurm": 4, "rayrun": 4,
    # the preset adapter, run as the agent (python -m dagrun.agentrun); the claim files an agent
    # hands back; the content-addressed result cache
    "agentrun": 4, "agentio": 4, "cache": 4,
    "workspace": 4,      # git plumbing of code workspaces: runs git, so it may use subprocess
    # 5: the files of one task transition; the aggregator over them
    "lifecycle": 5, "summary": 5, "hooks": 5, "budget": 5, "statuscache": 5,
    "history": 5,        # durations of done runs (estimates, history, agent medians) for ranking
    # 6: the one transition path (markers -> events -> scheduler changes)
    "transitions": 6,
    # 7: the drivers: the engine loop and its reconciliation, the dry run, the operations
    # (plan editing, control, the protocol commands' bodies, status data)
    "engine": 7, "reconcile": 7, "dryrun": 7, "edit": 7, "control": 7, "commands": 7, "status": 7,
    "wsops": 7,          # integrate, gc: the operations on code workspaces
    "goalgc": 7,         # gc of finished goals (retention), the worker's --gc-older-than
    "fanout": 7,         # fan-out: a template expanded into instances (a plan edit), its join
    "simulate": 7,       # `dagrun simulate`: the scheduler + fair share on a virtual clock (SimRunner)
    # 8: views over the files
    "metrics": 8, "graph": 8, "report": 8, "estimate": 8,
    # the MCP server (another face of the layer-7 operations) and its client configs
    "mcpserver": 8,
    "mcpconfig": 2,      # the client configs (agentrun uses them for --dagrun-mcp); reads only the user's Gemini auth type
    # 9: the command line and its fast path
    "protocol": 9, "cli": 9, "entry": 9,
    # `dagrun init`: the files shipped in dagrun/share, filled in
    "scaffold": 8,
}
# agentrun: the preset adapter runs the agent CLI; workspace: git, short synchronous commands;
# slurm: the Slurm runner drives sbatch/squeue/scancel/scontrol (the cluster engine's only interface);
# rayrun: its remote function starts the agent on the Ray node
ONLY_IN = {"typer": {"cli"}, "rich": {"cli"}, "watchdog": {"watcher"},
           "subprocess": {"executor", "agentrun", "workspace", "slurm", "rayrun"}, "ray": {"rayrun"}}


def _modules():
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG)
        top = rel.parts[0].removesuffix(".py")
        if top in ("__init__", "__main__", "share"):    # share/: files shipped as data (the
            continue                                     # code-edit example's seed calc.py)
        yield p, top


def _imports(p: Path):
    tree = ast.parse(p.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], None
        elif isinstance(node, ast.ImportFrom):
            if node.level and node.module:
                yield None, node.module.split(".")[0]
            elif node.level:
                for a in node.names:
                    yield None, a.name
            elif node.module:
                yield node.module.split(".")[0], None


def test_layers_only_import_downwards():
    bad = []
    for p, top in _modules():
        if top not in LAYERS:
            bad.append(f"{p.name}: module {top!r} has no layer in tests/test_layering.py")
            continue
        for ext, local in _imports(p):
            if local and top != "cli":
                if local not in LAYERS:
                    continue
                if LAYERS[local] > LAYERS[top]:
                    bad.append(f"{p.relative_to(PKG)} (layer {LAYERS[top]}) imports {local} (layer {LAYERS[local]})")
            if ext in ONLY_IN and top not in ONLY_IN[ext]:
                bad.append(f"{p.relative_to(PKG)} imports {ext}, allowed only in {sorted(ONLY_IN[ext])}")
    assert not bad, "\n".join(bad)
