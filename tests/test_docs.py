"""The README's "Where things live" table names every module, and only modules that exist."""

from __future__ import annotations

import re

from conftest import REPO


def test_where_things_live_matches_the_files():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(nettrain/[\w/]+\.py)`", section))
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "nettrain").rglob("*.py") if p.name != "__init__.py"}
    on_disk.add("nettrain/data/__init__.py")  # the data package's own module
    assert named - on_disk == set(), "named in the README but missing"
    assert on_disk - named == set(), "modules the README's table does not name"
