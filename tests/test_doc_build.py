"""The docs as a reader meets them: a README short enough to read, and the MkDocs site, built with
--strict as .ci/run builds it, showing the generated reference's tables intact."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, needs_extra

README_LINES = 300


def test_the_readme_is_at_most_300_lines():
    lines = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_LINES, f"README.md has {lines} lines, at most {README_LINES}: move the details to docs/"


@pytest.mark.slow
@needs_extra("docs", "mkdocs", "material")
def test_the_docs_build_strict_and_show_the_reference_tables_intact(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        cwd=REPO,  # the snippets extension reads the conf/ files it includes from the repository root
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    source = (REPO / "docs" / "reference" / "settings.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in source if line.startswith("|") and not line.startswith("|---")]
    page = (site / "reference" / "settings" / "index.html").read_text(encoding="utf-8")
    assert page.count("<tr>") == len(rows)  # every table row of the Markdown is a row of a table
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    for shown in (
        "32 | bf16 (autocast) | fp16 (autocast + GradScaler)",  # escaped pipes inside a cell
        "ROOT/train/<class>/*.{png,jpg,jpeg,bmp,webp}",  # no tag swallowed, no emphasis
        "extra _target_s a file may name: [mypkg.MyModel] [resume: may change]",
        "${regularization.weight_decay}",
    ):
        assert shown in text, shown
