"""The architecture, enforced: a lower layer never imports a higher one; typer/rich only in cli/,
watchdog only in watcher.py, process control only in executor.py. See ARCHITECTURE.md."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dagrun"

# lower number = lower layer. A module may import modules of its own layer or below.
LAYERS = {
    "errors": 0, "fsio": 0,
    "plan": 1, "prompt": 1, "scheduler": 1,
    "store": 2,
    "events": 3, "claim": 3,
    "summary": 4, "lifecycle": 5, "executor": 4, "watcher": 0,
    "wsrules": 1,        # pure rules of code workspaces (snapshot order, files mutex)
    "workspace": 4,      # git plumbing of code workspaces: runs git, so it may use subprocess
    "ops": 6, "engine": 6,
    "protocol": 9,       # the entry point + protocol fast path: beside cli, never imports typer
    "metrics": 7, "graph": 7, "report": 7, "timeline": 7,
    "cli": 9,
}
ONLY_IN = {"typer": {"cli"}, "rich": {"cli"}, "watchdog": {"watcher"}, "subprocess": {"executor", "workspace"}}  # workspace: git, short synchronous commands


def _modules():
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG)
        top = rel.parts[0].removesuffix(".py")
        if top in ("__init__", "__main__"):
            continue
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
