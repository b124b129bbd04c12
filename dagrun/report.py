"""A goal's run as a self-contained picture: a timeline (Gantt) of every attempt, one row per
worker slot, with the dependencies drawn as arrows and the critical path in red.

HTML (an inline SVG, a header with the numbers of the run and a table of every task) or a bare
SVG. No scripts, no fonts or styles from the network: the file opens offline, in a mail
attachment, or as a CI artifact. Tooltips are SVG <title>s.

Rows: a worker ran up to -j attempts at once; each attempt goes to the first of that worker's
rows that is free at its start (interval partitioning), so a row is one slot of one worker.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from .usage import fmt as fmt_usage
from .lifecycle import build_scheduler
from . import fsio
from .store import Home, loads_obj, now_iso
from .summary import Attempt, GoalRun, build_summary, goal_run

OUTCOME_COLOURS = {
    "done": "#43a047", "running": "#039be5", "failed": "#e53935", "timeout": "#e53935",
    "stalled": "#e53935", "output_limit": "#e53935", "lost": "#fb8c00", "interrupted": "#fb8c00",
    "superseded": "#fb8c00", "cancelled": "#9e9e9e",
}
STATE_COLOURS = {"done": "#43a047", "running": "#039be5", "ready": "#1e88e5", "waiting": "#9e9e9e",
                 "retrying": "#f9a825", "failed": "#e53935", "blocked": "#8e24aa", "cancelled": "#757575",
                 "skipped": "#bdbdbd", "awaiting_approval": "#ef6c00"}
LABEL_W, PLOT_W, ROW_H, BAR_H, TOP, RIGHT = 200, 960, 28, 20, 38, 24


@dataclass
class Report:
    run: GoalRun
    summary: dict
    states: dict[str, str]
    blocked_by: dict[str, str | None]
    skip_reasons: dict[str, str] = field(default_factory=dict)     # skipped by a false condition: why


def collect(home: Home, goal: str) -> Report:
    plan = home.load_plan(goal)
    sched, _ = build_scheduler(home, plan)
    run = goal_run(home, plan, sched)
    s = build_summary(home, plan, sched, run)
    if not sched.is_finished():
        s["outcome"] = "running" if sched.counts().get("running") else "unfinished"
    states = sched.states()
    blocked_by = {b["task"]: b["blocked_by"] for b in s["blocked"]}
    blocked_by.update({x["task"]: x["skipped_by"] for x in s.get("skipped", ()) if x.get("skipped_by")})
    reasons = {}
    for t in (t for t, st in states.items() if st == "skipped" and t not in blocked_by):
        m = loads_obj(fsio.read_bytes(home.marker_path(goal, t, "skipped"), follow=False)) or {}
        reasons[t] = str(m.get("reason") or "skipped")
    return Report(run, s, states, blocked_by, reasons)


# ---------------------------------------------------------------------------------- layout
def lanes(attempts: list[Attempt], now: float) -> tuple[list[str], dict[int, int]]:
    """Row labels, and the row of each timed attempt (by its index in `attempts`)."""
    first: dict[str, float] = {}
    for a in attempts:
        if a.start is not None:
            w = a.worker or "?"
            first[w] = min(first.get(w, a.start), a.start)
    rows: list[str] = []
    row_of: dict[int, int] = {}
    for w in sorted(first, key=lambda w: (first[w], w)):
        mine = sorted((i for i, a in enumerate(attempts) if a.start is not None and (a.worker or "?") == w),
                      key=lambda i: (attempts[i].start, attempts[i].task))
        ends: list[float] = []
        base = len(rows)
        for i in mine:
            a = attempts[i]
            end = a.end if a.end is not None else now
            for k, e in enumerate(ends):
                if e <= a.start + 1e-6:
                    ends[k] = end
                    row_of[i] = base + k
                    break
            else:
                ends.append(end)
                row_of[i] = base + len(ends) - 1
        rows += [f"{w} · slot {k + 1}" for k in range(len(ends))]
    return rows, row_of


def _step(span: float) -> float:
    raw = span / 8
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt_s(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.3g}s" if s < 10 else f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(round(s % 60)):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _tick(v: float) -> str:
    return f"{round(v, 6):g}s" if v < 60 else fmt_s(v)


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


def _e(s) -> str:
    return html.escape(str(s), quote=True)


SVG_STYLE = """
.gantt text { font: 12px system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; fill: #263238; }
.gantt .lane-label { font-size: 11.5px; fill: #455a64; }
.gantt .lane { fill: #f5f7f8; }
.gantt .lane.odd { fill: #eceff1; }
.gantt .grid { stroke: #cfd8dc; stroke-width: 1; }
.gantt .tick { font-size: 11px; fill: #607d8b; }
.gantt .bar rect { stroke: rgba(0,0,0,.25); stroke-width: 1; }
.gantt .bar text { fill: #fff; font-size: 11.5px; font-weight: 600; }
.gantt .bar text.outside { fill: #263238; font-weight: 500; }
.gantt .bar text.small { font-size: 10px; }
.gantt .bar.critical rect { stroke: #b71c1c; stroke-width: 3; }
.gantt .bar.running rect { stroke-dasharray: 4 2; }
.gantt .dep { fill: none; stroke: #78909c; stroke-width: 1.2; opacity: .8; }
.gantt .dep.critical { stroke: #d32f2f; stroke-width: 2.5; opacity: 1; }
.gantt .title { font-size: 14px; font-weight: 600; }
"""


def svg(rep: Report, *, standalone: bool = False) -> str:
    run = rep.run
    attempts = run.attempts
    now = run.now
    rows, row_of = lanes(attempts, now)
    win = run.window()
    t0, t1 = (win if win else (now, now + 1))
    span = max(t1 - t0, 1e-3)
    height = TOP + max(1, len(rows)) * ROW_H + 16
    width = LABEL_W + PLOT_W + RIGHT
    x = lambda t: LABEL_W + (t - t0) / span * PLOT_W     # noqa: E731
    crit = rep.summary["critical_path"]["tasks"]
    on_path = set(crit)
    crit_edges = set(zip(crit, crit[1:]))
    out = [f'<svg class="gantt" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline of goal {_e(run.plan.goal)}">']
    if standalone:
        out.append(f"<style>{SVG_STYLE}</style>")
    out.append('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
               'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#78909c"/></marker>'
               '<marker id="arrow-crit" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
               'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#d32f2f"/></marker></defs>')
    for k, label in enumerate(rows):
        y = TOP + k * ROW_H
        out.append(f'<rect class="lane{" odd" if k % 2 else ""}" x="0" y="{y}" width="{width}" height="{ROW_H}"/>')
        out.append(f'<text class="lane-label" x="8" y="{y + ROW_H / 2 + 4:.1f}">{_e(label)}</text>')
    step = _step(span)
    k = 0
    while k * step <= span + 1e-9:
        gx = x(t0 + k * step)
        out.append(f'<line class="grid" x1="{gx:.1f}" y1="{TOP - 6}" x2="{gx:.1f}" y2="{height - 12}"/>')
        out.append(f'<text class="tick" x="{gx:.1f}" y="{TOP - 10}" text-anchor="middle">{_tick(k * step)}</text>')
        k += 1
    if not rows:
        out.append(f'<text x="{LABEL_W}" y="{TOP + 18}">no attempt has started yet</text>')
    # where each task's attempts sit: the arrows go from a dependency's last attempt to the
    # task's first one
    first_i: dict[str, int] = {}
    last_i: dict[str, int] = {}
    for i, a in enumerate(attempts):
        if i not in row_of:
            continue
        if a.task not in first_i or a.start < attempts[first_i[a.task]].start:
            first_i[a.task] = i
        if a.task not in last_i or (a.end or now) >= (attempts[last_i[a.task]].end or now):
            last_i[a.task] = i
    mid = lambda i: TOP + row_of[i] * ROW_H + ROW_H / 2    # noqa: E731
    deps = []
    for task in run.plan.tasks:
        if task.id not in first_i:
            continue
        for d in [*task.deps, *task.soft_deps]:
            if d not in last_i:
                continue
            a, b = attempts[last_i[d]], attempts[first_i[task.id]]
            x1, y1 = x(a.end if a.end is not None else now), mid(last_i[d])
            x2, y2 = x(b.start), mid(first_i[task.id])
            dx = max(14.0, abs(x2 - x1) / 2)
            cls = "dep critical" if (d, task.id) in crit_edges else "dep"
            mk = "arrow-crit" if (d, task.id) in crit_edges else "arrow"
            deps.append((cls == "dep critical", f'<path class="{cls}" d="M{x1:.1f},{y1:.1f} C{x1 + dx:.1f},{y1:.1f} '
                         f'{x2 - dx:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" marker-end="url(#{mk})">'
                         f'<title>{_e(d)} → {_e(task.id)}</title></path>'))
    by_row: dict[int, list[int]] = {}
    for i, r in row_of.items():
        by_row.setdefault(r, []).append(i)
    for r in by_row:
        by_row[r].sort(key=lambda i: attempts[i].start)
    for r, idxs in by_row.items():
        prev_end = float(LABEL_W)
        for n, i in enumerate(idxs):
            a = attempts[i]
            end = a.end if a.end is not None else now
            bx, bw = x(a.start), max(2.0, x(end) - x(a.start))
            by = TOP + r * ROW_H + (ROW_H - BAR_H) / 2
            colour = OUTCOME_COLOURS.get(a.outcome, "#e53935")
            cls = ["bar", a.outcome] + (["critical"] if a.task in on_path and a.outcome == "done" else [])
            label = a.task + (f" #{a.attempt}" if a.attempt > 1 else "")
            tip = (f"{a.task} attempt {a.attempt}: {a.outcome}\nworker {a.worker or '?'}\n"
                   f"start +{fmt_s(a.start - t0)}, {fmt_s(end - a.start)}"
                   + (f"\nexit code {a.exit_code}" if a.exit_code not in (None, 0) else "")
                   + (f"\n{a.reason}" if a.reason else ""))
            out.append(f'<g class="{" ".join(cls)}" data-task="{_e(a.task)}">'
                       f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bw:.1f}" height="{BAR_H}" rx="3" fill="{colour}"/>')
            tw = 7.0 * len(label) + 8
            nxt = x(attempts[idxs[n + 1]].start) if n + 1 < len(idxs) else LABEL_W + PLOT_W + RIGHT
            if tw <= bw:
                out.append(f'<text x="{bx + 5:.1f}" y="{by + BAR_H / 2 + 4:.1f}">{_e(label)}</text>')
            elif tw <= nxt - (bx + bw):
                out.append(f'<text class="outside" x="{bx + bw + 4:.1f}" y="{by + BAR_H / 2 + 4:.1f}">'
                           f'{_e(label)}</text>')
            elif tw <= bx - prev_end:
                out.append(f'<text class="outside" x="{bx - 4:.1f}" y="{by + BAR_H / 2 + 4:.1f}" '
                           f'text-anchor="end">{_e(label)}</text>')
            else:          # no room anywhere: the label, cut to the widest gap (full text in the tooltip)
                room = max(bw, nxt - (bx + bw))
                keep = max(int((room - 8) / 7.0), 1)
                short = label if len(label) <= keep else label[:max(keep - 1, 1)] + "…"
                inside = room == bw
                out.append(f'<text class="{"" if inside else "outside "}small" x="{bx + (5 if inside else bw + 4):.1f}" '
                           f'y="{by + BAR_H / 2 + 4:.1f}">{_e(short)}</text>')
            prev_end = bx + bw
            out.append(f"<title>{_e(tip)}</title></g>")
    # arrows above the bars, the critical ones on top
    out += [p for c, p in deps if not c] + [p for c, p in deps if c]
    out.append("</svg>")
    return "\n".join(out)


def _card(label: str, value: str) -> str:
    return f'<div class="card"><div class="v">{_e(value)}</div><div class="k">{_e(label)}</div></div>'


def html_page(rep: Report) -> str:
    s, run = rep.summary, rep.run
    plan = run.plan
    crit = s["critical_path"]
    by_task = run.by_task()
    spans = run.spans()
    t0 = run.window()[0] if run.window() else None
    cards = [
        _card("outcome", s["outcome"]),
        _card("tasks", f"{s['counts'].get('done', 0)}/{s['tasks']} done"),
        _card("makespan", fmt_s(s["makespan"])),
        _card("agent time", fmt_s(s["agent_time"])),
        _card("parallelism", f"{s['parallelism']:.2f}×" if s["parallelism"] else "-"),
        _card("critical path", fmt_s(crit["duration"])),
        _card("repeats", str(s["repeat_total"])),
        _card("blocked", str(s["blocked_total"])),
    ]
    usage_total, usage_by = run.usage(), run.usage_by_task()
    if usage_total:
        cards.append(_card("agent usage", fmt_usage(usage_total)))
    rows = []
    for t in plan.ids():
        att = by_task.get(t, [])
        st = rep.states.get(t, "waiting")
        note = ""
        if st == "blocked" and rep.blocked_by.get(t):
            note = f"blocked by {rep.blocked_by[t]}"
        elif st == "skipped":
            note = rep.skip_reasons.get(t) or (f"{rep.blocked_by[t]} was skipped" if rep.blocked_by.get(t) else "skipped")
        elif att and att[-1].reason and att[-1].outcome != "done":
            note = att[-1].reason
        start = f"+{fmt_s(spans[t][0] - t0)}" if t in spans and t0 is not None else "-"
        dur = fmt_s(spans[t][1] - spans[t][0]) if t in spans else "-"
        workers = ", ".join(sorted({a.worker for a in att if a.worker})) or "-"
        deps = ", ".join([*plan.task(t).deps, *(f"{d} (soft)" for d in plan.task(t).soft_deps)]) or "-"
        mark = '<span class="crit">●</span>' if t in crit["tasks"] else ""
        rows.append(f'<tr class="{_e(st)}{" critical" if t in crit["tasks"] else ""}"><td class="task">'
                    f'{mark}{_e(t)}</td><td><span class="state" style="background:{STATE_COLOURS.get(st, "#9e9e9e")}">'
                    f'{_e(st)}</span></td><td class="n">{len(att)}</td><td>{_e(workers)}</td><td class="n">{start}</td>'
                    f'<td class="n">{dur}</td><td>{_e(deps)}</td>'
                    + (f'<td class="n">{_e(fmt_usage(usage_by.get(t)))}</td>' if usage_total else "")
                    + f'<td class="note">{_e(note[:160])}</td></tr>')
    legend = "".join(f'<span><i style="background:{c}"></i>{_e(k)}</span>' for k, c in
                     (("done", "#43a047"), ("running", "#039be5"), ("failed / timeout / stalled", "#e53935"),
                      ("lost / interrupted", "#fb8c00"), ("cancelled", "#9e9e9e"),
                      ("blocked (never ran; in the table)", STATE_COLOURS["blocked"]),
                      ("skipped (never ran, by its condition; in the table)", STATE_COLOURS["skipped"])))
    path_txt = " → ".join(crit["tasks"]) if crit["tasks"] else "(nothing ran yet)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dagrun report: {_e(plan.goal)}</title>
<style>
body {{ margin: 24px; font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif;
       color: #263238; background: #fff; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
.sub {{ color: #607d8b; margin-bottom: 16px; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 14px; }}
.card {{ border: 1px solid #cfd8dc; border-radius: 6px; padding: 8px 14px; min-width: 96px; }}
.card .v {{ font-size: 18px; font-weight: 600; }}
.card .k {{ color: #607d8b; font-size: 12px; }}
.path {{ margin: 6px 0 14px; }}
.path b {{ color: #c62828; }}
.legend span {{ margin-right: 16px; font-size: 12.5px; color: #455a64; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 5px;
            vertical-align: -1px; }}
.legend i.crit {{ background: #fff; border: 3px solid #b71c1c; width: 8px; height: 8px; }}
.chart {{ overflow-x: auto; border: 1px solid #cfd8dc; border-radius: 6px; margin: 8px 0 20px; }}
table.tasks {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
table.tasks th {{ text-align: left; color: #607d8b; font-weight: 600; border-bottom: 2px solid #cfd8dc;
                 padding: 5px 8px; }}
table.tasks td {{ border-bottom: 1px solid #eceff1; padding: 5px 8px; vertical-align: top; }}
table.tasks td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.tasks td.task {{ font-family: ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace; }}
table.tasks tr.critical td.task {{ font-weight: 700; }}
.state {{ color: #fff; border-radius: 3px; padding: 1px 6px; font-size: 12px; }}
.crit {{ color: #c62828; margin-right: 5px; }}
td.note {{ color: #607d8b; }}
{SVG_STYLE}
</style></head>
<body>
<h1>Goal {_e(plan.goal)}</h1>
<div class="sub">{_e(s['outcome'])} · {len(plan.tasks)} tasks · {s['attempts']} attempts by {len(s['workers'])} worker(s)
· {_e(_when(s['started']))} → {_e(_when(s['ended']))} UTC · report made {_e(_when(now_iso(run.now)))} UTC</div>
<div class="cards">{''.join(cards)}</div>
<div class="path">Critical path ({fmt_s(crit['duration'])} of actual run time):
<b id="critical-path">{_e(path_txt)}</b></div>
<div class="legend">{legend}<span><i class="crit"></i>critical path</span></div>
<div class="chart">
{svg(rep)}
</div>
<table class="tasks">
<thead><tr><th>task</th><th>state</th><th>attempts</th><th>worker</th><th>start</th><th>span</th>
<th>depends on</th>{"<th>usage</th>" if usage_total else ""}<th>note</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""


def render(home: Home, goal: str, fmt: str) -> str:
    rep = collect(home, goal)
    if fmt == "svg":
        return svg(rep, standalone=True)
    return html_page(rep)
