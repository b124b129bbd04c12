"""The plan as a picture: Mermaid (renders in GitHub/GitLab markdown) or Graphviz dot.

Nodes get generated ids (t0, t1 ...) in Mermaid, with the task id as the label: task ids may
contain `-` and `.` and may be Mermaid keywords (`end`), which would break a bare id. Dot
quotes every id. With states (a submitted goal), nodes are coloured by state; edges of the
run's critical path are drawn thick and red. Soft dependencies are dashed. Approval gates are
hexagons; skipped tasks are drawn apart (grey, dashed outline); a task with a `when` or a
trigger rule other than all_success says so under its id.
"""
from __future__ import annotations

from .plan import Plan

# state -> (stroke, fill)
STATE_COLOURS = {
    "done": ("#2e7d32", "#c8e6c9"),
    "running": ("#0277bd", "#b3e5fc"),
    "ready": ("#1565c0", "#e3f2fd"),
    "waiting": ("#757575", "#fafafa"),
    "retrying": ("#f57f17", "#fff59d"),
    "failed": ("#c62828", "#ffcdd2"),
    "blocked": ("#6a1b9a", "#e1bee7"),
    "cancelled": ("#424242", "#e0e0e0"),
    "skipped": ("#9e9e9e", "#f5f5f5"),
    "awaiting_approval": ("#ef6c00", "#ffe0b2"),
}
CRITICAL = "#d32f2f"
DASHED = ("skipped",)          # drawn apart: never ran, by design rather than by failure


def _notes(plan: Plan, t: str) -> list[str]:
    task = plan.task(t)
    out = []
    if task.when is not None:
        out.append("when ...")
    if task.trigger != "all_success":
        out.append(task.trigger)
    return out


def _edges(plan: Plan) -> list[tuple[str, str, bool]]:
    """(from, to, soft) in plan order."""
    out = []
    for t in plan.tasks:
        out += [(d, t.id, False) for d in t.deps]
        out += [(d, t.id, True) for d in t.soft_deps]
    return out


def _fan_note(plan: Plan, t: str) -> str | None:
    """A template's second line: its instance count, or what it fans out over."""
    task = plan.task(t)
    if not task.for_each:
        return None
    n = task.fanout
    return f"for_each {task.for_each['from']}" if n is None else f"x{n} (for_each {task.for_each['from']})"


def _groups(plan: Plan) -> dict[str, list[str]]:
    """Expanded template -> its instances (drawn together)."""
    return {t.id: list(t.instances) for t in plan.tasks if t.fanout}


def _critical_edges(path: list[str]) -> set[tuple[str, str]]:
    return set(zip(path, path[1:]))


def mermaid(plan: Plan, states: dict[str, str] | None = None, critical: list[str] | None = None) -> str:
    ids = {t: f"t{i}" for i, t in enumerate(plan.ids())}
    crit = _critical_edges(critical or [])
    lines = ["flowchart LR"]
    groups = _groups(plan)
    inside = {i for members in groups.values() for i in members}

    def node(t: str, indent: str = "    ") -> str:
        label = "<br/>".join([t, *_notes(plan, t)] + ([states.get(t, "waiting")] if states else []))
        note = _fan_note(plan, t)
        if note:                        # a template: the subroutine shape
            return f'{indent}{ids[t]}[["{label}<br/>{note}"]]'
        if plan.task(t).approval is not None:
            return f'{indent}{ids[t]}{{{{"{label}"}}}}'      # a hexagon: a gate a person opens
        return f'{indent}{ids[t]}["{label}"]'
    for t in plan.ids():
        if t in inside:
            continue
        lines.append(node(t))
        if t in groups and groups[t]:
            lines.append(f'    subgraph {ids[t]}g["instances of {t}"]')
            lines += [node(i, "        ") for i in groups[t]]
            lines.append("    end")
    styled = []
    for k, (a, b, soft) in enumerate(_edges(plan)):
        lines.append(f"    {ids[a]} {'-.->' if soft else '-->'} {ids[b]}")
        if (a, b) in crit:
            styled.append(str(k))
    if states:
        for s, (stroke, fill) in STATE_COLOURS.items():
            members = [ids[t] for t in plan.ids() if states.get(t) == s]
            if members:
                dash = ",stroke-dasharray:4 3" if s in DASHED else ""
                lines.append(f"    classDef {s} fill:{fill},stroke:{stroke},color:#000{dash}")
                lines.append(f"    class {','.join(members)} {s}")
    if styled:
        lines.append(f"    linkStyle {','.join(styled)} stroke:{CRITICAL},stroke-width:3px")
    for t in critical or []:
        lines.append(f"    style {ids[t]} stroke-width:3px")
    return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot(plan: Plan, states: dict[str, str] | None = None, critical: list[str] | None = None) -> str:
    crit = _critical_edges(critical or [])
    on_path = set(critical or [])
    lines = [f"digraph {_q(plan.goal)} {{",
             "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=11];',
             '  edge [color="#607d8b", arrowsize=0.7];']
    groups = _groups(plan)
    inside = {i: tpl for tpl, members in groups.items() for i in members}
    cluster: dict[str, list[str]] = {}
    for t in plan.ids():
        attrs = []
        notes = _notes(plan, t) + ([states.get(t, "waiting")] if states else [])
        note = _fan_note(plan, t)
        if note:
            notes.append(note)
        if notes:
            attrs.append("label=" + _q(t)[:-1] + "".join("\\n" + _q(x)[1:-1] for x in notes) + '"')
        if note:
            attrs.append("shape=box3d")       # a template
        elif plan.task(t).approval is not None:
            attrs.append("shape=hexagon")
        if states:
            s = states.get(t, "waiting")
            stroke, fill = STATE_COLOURS.get(s, STATE_COLOURS["waiting"])
            attrs += [f'fillcolor="{fill}"', f'color="{stroke}"']
            if s in DASHED:
                attrs.append('style="rounded,filled,dashed"')
        if t in on_path:
            attrs.append("penwidth=2.5")
        line = f"  {_q(t)}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";"
        if t in inside:
            cluster.setdefault(inside[t], []).append(line)
        else:
            lines.append(line)
    for k, (tpl, members) in enumerate(cluster.items()):
        lines.append(f"  subgraph {_q('cluster_' + tpl)} {{")
        lines.append(f"    label={_q('instances of ' + tpl)}; style=dashed; color=\"#90a4ae\";")
        lines += ["  " + m for m in members]
        lines.append("  }")
    for a, b, soft in _edges(plan):
        attrs = []
        if soft:
            attrs.append("style=dashed")
        if (a, b) in crit:
            attrs += [f'color="{CRITICAL}"', "penwidth=2.5"]
        lines.append(f"  {_q(a)} -> {_q(b)}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(plan: Plan, fmt: str, states: dict[str, str] | None = None, critical: list[str] | None = None) -> str:
    if fmt == "mermaid":
        return mermaid(plan, states, critical)
    if fmt == "dot":
        return dot(plan, states, critical)
    raise ValueError(f"unknown graph format {fmt!r}")
