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


def test_the_code_keeps_its_size_limits():
    """train.py stays a short recipe (< 250 lines), no function in nettrain/ is over 80 lines,
    and the loop takes the state plus at most 6 other arguments."""
    import ast
    import inspect

    from nettrain.loop import fit

    assert len((REPO / "nettrain" / "train.py").read_text().splitlines()) < 250
    long = []
    for path in (REPO / "nettrain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(REPO)}::{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
    params = list(inspect.signature(fit).parameters)
    assert params[0] == "state" and len(params) - 1 <= 6
