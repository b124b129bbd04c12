"""`dagrun graph` (Mermaid / dot, coloured by state, critical path red) and `dagrun report`
(a self-contained HTML or SVG timeline of every attempt)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import EXAMPLES, run, run_goal

TASKS = [
    {"id": "a", "prompt": "p", "agent": "sleep 0.4; echo a"},
    {"id": "b", "prompt": "p", "deps": ["a"], "agent": "sleep 0.4; echo b"},
    {"id": "c", "prompt": "p", "agent": "sleep 0.1; echo c"},
    {"id": "end", "prompt": "p", "deps": ["c"], "soft_deps": ["b"], "agent": "echo e"},   # `end`: a Mermaid keyword
    {"id": "d.x", "prompt": "p", "agent": "echo boom >&2; exit 3", "retries": 1, "retry_backoff": 0.05},
    {"id": "e-1", "prompt": "p", "deps": ["d.x"]},
]
IDS = [t["id"] for t in TASKS]

MERMAID_LINE = re.compile(
    r'^(flowchart LR'
    r'|    t\d+\["[A-Za-z0-9._-]+(<br/>[a-z]+)?"\]'
    r'|    t\d+ (-->|-\.->) t\d+'
    r'|    classDef [a-z]+ fill:#[0-9a-f]{6},stroke:#[0-9a-f]{6},color:#000'
    r'|    class t\d+(,t\d+)* [a-z]+'
    r'|    linkStyle \d+(,\d+)* stroke:#[0-9a-f]{6},stroke-width:3px'
    r'|    style t\d+ stroke-width:3px)$')


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    return run_goal(tmp_path_factory.mktemp("pics"), TASKS, check=1, goal="pics", defaults={"agent": "true"},
                    max_parallel=3)


def _check_mermaid(text: str) -> dict[str, str]:
    lines = text.splitlines()
    bad = [ln for ln in lines if not MERMAID_LINE.match(ln)]
    assert not bad, bad
    nodes = dict(re.findall(r'^    (t\d+)\["([A-Za-z0-9._-]+)', text, re.M))
    for a, b in re.findall(r"^    (t\d+) -\.?-> (t\d+)$", text, re.M):
        assert a in nodes and b in nodes
    return nodes


def test_graph_of_a_plan_file(ran):
    _, plan = ran
    text = run("graph", plan, home=ran[0]).stdout
    nodes = _check_mermaid(text)
    assert sorted(nodes.values()) == sorted(IDS)
    by = {v: k for k, v in nodes.items()}
    assert f"    {by['b']} -.-> {by['end']}" in text          # soft dependency dashed
    assert f"    {by['c']} --> {by['end']}" in text
    assert "classDef" not in text and "linkStyle" not in text  # no states without a goal
    dot = run("graph", plan, "--format", "dot", home=ran[0]).stdout
    assert dot.startswith('digraph "pics" {') and dot.rstrip().endswith("}")
    assert '"b" -> "end" [style=dashed];' in dot and '"d.x" -> "e-1";' in dot


def test_graph_of_a_goal_is_coloured_with_the_critical_path(ran):
    home, _ = ran
    text = run("graph", "pics", home=home).stdout
    nodes = _check_mermaid(text)
    by = {v: k for k, v in nodes.items()}
    assert f'{by["e-1"]}["e-1<br/>blocked"]' in text and f'{by["d.x"]}["d.x<br/>failed"]' in text
    assert re.search(rf"class [t\d,]*\b{by['a']}\b[t\d,]* done", text)
    assert f"style {by['a']} stroke-width:3px" in text and f"style {by['b']} stroke-width:3px" in text
    assert f"style {by['end']} stroke-width:3px" in text and f"style {by['c']} " not in text
    dot = run("graph", "pics", "--format", "dot", home=home).stdout
    assert '"a" -> "b" [color="#d32f2f", penwidth=2.5];' in dot
    assert '"b" -> "end" [style=dashed, color="#d32f2f", penwidth=2.5];' in dot
    assert '"c" -> "end";' in dot
    assert re.search(r'"e-1" \[label="e-1\\nblocked", fillcolor="#[0-9a-f]{6}"', dot)


@pytest.mark.skipif(not shutil.which("dot"), reason="graphviz is not installed (.ci/run installs it)")
def test_dot_output_renders_with_graphviz(ran, tmp_path):
    home, plan = ran
    for src in (str(plan), "pics"):
        dot = run("graph", src, "--format", "dot", home=home).stdout
        r = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stderr, r.stderr
        svg = ET.fromstring(r.stdout)
        titles = {el.text for el in svg.iter("{http://www.w3.org/2000/svg}title")}
        assert set(IDS) <= titles


def test_graph_errors(home, tmp_path):
    r = run("graph", "nope", home=home, check=2)
    assert r.stderr.startswith("dagrun: ") and "no plan file and no goal" in r.stderr
    r = run("graph", EXAMPLES / "add-auth" / "dag.json", "--format", "png", home=home, check=2)
    assert "--format" in r.stderr and len(r.stderr.splitlines()) == 1


def _no_network(text: str) -> None:
    for pat in (r"<script", r"<link", r"<img", r"@import", r"url\((?!#)", r"\bsrc=", r"href=\"(?!#)"):
        assert not re.search(pat, text, re.I), pat


def test_report_html_has_every_task_attempt_and_the_critical_path(ran, tmp_path):
    home, _ = ran
    out = tmp_path / "r.html"
    assert run("report", "pics", "--out", out, home=home).stdout.strip() == str(out)
    page = out.read_text()
    _no_network(page)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # every task is in the table, with its state
    rows = dict(re.findall(r'<td class="task">(?:<span class="crit">●</span>)?([^<]+)</td><td><span class="state"[^>]*>'
                           r'([a-z]+)</span>', page))
    assert rows == {"a": "done", "b": "done", "c": "done", "end": "done", "d.x": "failed", "e-1": "blocked"}
    # every attempt is a bar (d.x twice: the failure and its retry); e-1 never ran
    bars = re.findall(r'<g class="bar ([a-z_]+)( critical)?" data-task="([^"]+)"', page)
    assert sorted((t, o) for o, _, t in bars) == sorted(
        [("a", "done"), ("b", "done"), ("c", "done"), ("end", "done"), ("d.x", "failed"), ("d.x", "failed")])
    assert sorted(t for _, crit, t in bars if crit) == ["a", "b", "end"]
    assert re.search(r'<b id="critical-path">a → b → end</b>', page)
    assert page.count('class="dep critical"') == 2          # a->b, b->end
    assert "d.x #2" in page                                  # the retry is labelled with its attempt
    lanes = re.findall(r'<text class="lane-label"[^>]*>([^<]+)</text>', page)
    assert 1 <= len(lanes) <= 3 and all("slot" in ln for ln in lanes)
    svg_part = page[page.index("<svg"):page.index("</svg>") + 6]
    ET.fromstring(svg_part)                                  # well-formed XML


def test_report_svg_and_errors(ran, tmp_path):
    home, _ = ran
    out = tmp_path / "r.svg"
    run("report", "pics", "-o", out, home=home)
    text = out.read_text()
    _no_network(text)
    root = ET.fromstring(text)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert {g.get("data-task") for g in root.iter("{http://www.w3.org/2000/svg}g")} >= {"a", "b", "c", "end", "d.x"}
    assert run("report", "pics", "--out", tmp_path / "x.png", home=home, check=2).stderr.startswith("dagrun: ")
    assert run("report", "nope", "--out", tmp_path / "x.html", home=home, check=2).stderr.startswith("dagrun: ")
    r = run("report", "pics", "--out", tmp_path / "no" / "x.html", home=home, check=5)
    assert len(r.stderr.splitlines()) == 1


def test_report_of_a_goal_that_has_not_run(home, tmp_path):
    run("submit", EXAMPLES / "add-auth" / "dag.json", home=home)
    out = tmp_path / "r.html"
    run("report", "add-auth", "--out", out, home=home)
    page = out.read_text()
    assert "no attempt has started yet" in page
    for t in ("research-api", "research-auth", "design-schema", "implement", "test", "review"):
        assert f'<td class="task">{t}</td>' in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(ran, tmp_path):
    home, _ = ran
    out = tmp_path / "r.html"
    run("report", "pics", "--out", out, home=home)
    png = tmp_path / "r.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1280,700",
                        f"--screenshot={png}", out.as_uri()], capture_output=True, timeout=120)
    assert png.exists(), r.stderr.decode()[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000      # a real picture, not a blank page


@pytest.mark.skipif(not (CHROMIUM and os.environ.get("MERMAID_JS")),
                    reason="set MERMAID_JS to a mermaid.min.js (npm package mermaid) to render Mermaid in chromium")
def test_mermaid_renders_in_chromium(ran, tmp_path):
    import json
    home, plan = ran
    srcs = [run("graph", str(plan), home=home).stdout, run("graph", "pics", home=home).stdout]
    page = tmp_path / "m.html"
    page.write_text(f"""<!doctype html><html><body><div id=out>pending</div>
<script>{Path(os.environ['MERMAID_JS']).read_text()}</script><script>
mermaid.initialize({{startOnLoad: false}});
(async () => {{ const res = [];
  for (const [i, s] of {json.dumps(srcs)}.entries()) {{
    try {{ await mermaid.render('g' + i, s); res.push('ok'); }} catch (e) {{ res.push('ERR ' + e.message); }} }}
  document.getElementById('out').textContent = 'RESULT ' + res.join('|'); }})();
</script></body></html>""")
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                        page.as_uri()], capture_output=True, text=True, timeout=120)
    assert '<div id="out">RESULT ok|ok</div>' in r.stdout
