"""The README is the first hour (two set-up commands first, short), .ci/run runs the same
commands, and the docs site builds with `mkdocs build --strict` and reads offline."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SETUP = ["python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/dagrun run examples/add-auth/dag.json",
         ".venv/bin/python -m pytest -q"]


def test_readme_starts_with_the_two_setup_commands_and_stays_short():
    text = (REPO / "README.md").read_text()
    first = re.search(r"```sh\n(.*?)```", text, re.S)
    assert text.index(first.group(0)) < text.index("\n## ")          # before any section
    assert first.group(1).strip().splitlines() == SETUP
    assert len(text.splitlines()) <= 200
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert SETUP[0] in ci and SETUP[1] in ci
    assert "|| echo" not in (REPO / ".ci" / "run").read_text()         # apt-get failures fail CI


def test_docs_links_in_readme_exist():
    text = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), target


def test_mkdocs_builds_strict_and_offline(tmp_path):
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs-material is not installed (pip install -e '.[docs]')")
        pytest.skip("mkdocs-material is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert p.returncode == 0, p.stderr
    pages = list(site.glob("*.html"))
    assert len(pages) >= 10
    for page in pages:
        html = page.read_text()
        assert not re.search(r'<script[^>]+src="https?://', html), page.name
        assert not re.search(r'<link[^>]+href="https?://[^"]*(fonts|css)', html), page.name
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page.name
