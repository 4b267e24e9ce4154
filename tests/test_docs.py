"""The layout and the code's size limits."""

from __future__ import annotations

from conftest import REPO

LAYOUT = {"commands", "config", "run", "engine", "insight", "models", "optim", "data", "conf"}


def test_every_module_lives_in_a_named_package():
    """The layout says where things live: nothing flat in nettrain/ but errors.py and files.py
    (the bottom layer), and no subpackage beyond the ones the developer guide names."""
    flat = {p.name for p in (REPO / "nettrain").glob("*.py")}
    assert flat == {"__init__.py", "errors.py", "files.py"}
    packages = {p.name for p in (REPO / "nettrain").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages <= LAYOUT, packages - LAYOUT
    for package in packages - {"conf"}:
        assert (REPO / "nettrain" / package / "__init__.py").is_file(), package


def test_the_code_keeps_its_size_limits():
    """train.py stays a short recipe (< 250 lines), no function in nettrain/ is over 80 lines,
    and the loop takes the state plus at most 6 other arguments."""
    import ast
    import inspect

    from nettrain.engine.loop import fit

    assert len((REPO / "nettrain" / "commands" / "train.py").read_text().splitlines()) < 250
    long = []
    for path in (REPO / "nettrain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(REPO)}::{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
    params = list(inspect.signature(fit).parameters)
    assert params[0] == "state" and len(params) - 1 <= 6
