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


def function_lengths() -> dict[str, int]:
    """`path::name` -> lines, for every function and method in nettrain/."""
    import ast

    lengths = {}
    for path in sorted((REPO / "nettrain").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{path.relative_to(REPO).as_posix()}::{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_the_code_keeps_its_size_limits():
    """No function in nettrain/commands/ or nettrain/engine/ is over 60 lines, none elsewhere over
    80; commands/train.py is the command boundary only (< 150 lines); the loop takes the state
    plus at most 6 other arguments."""
    import inspect

    from nettrain.engine.loop import fit

    def limit(name: str) -> int:
        return 60 if name.startswith(("nettrain/commands/", "nettrain/engine/")) else 80

    lengths = function_lengths()
    assert {name: n for name, n in lengths.items() if n > limit(name)} == {}
    assert len((REPO / "nettrain" / "commands" / "train.py").read_text().splitlines()) < 150
    params = list(inspect.signature(fit).parameters)
    assert params[0] == "state" and len(params) - 1 <= 6


def test_the_recipe_names_each_phase_in_order_on_one_screen():
    """One function of at most 60 lines tells the whole run: resume -> build -> fit -> test -> record,
    each phase a call of its own helper, in that order."""
    import ast
    import inspect

    from nettrain.engine import recipe

    assert function_lengths()["nettrain/engine/recipe.py::train_run"] <= 60
    tree = ast.parse(inspect.getsource(recipe.train_run))
    calls = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    phases = {"read_checkpoint", "build", "train_epochs", "test_best", "record"}
    assert [c.func.id for c in calls if c.func.id in phases] == [
        "read_checkpoint",  # resume
        "build",
        "train_epochs",  # fit
        "record",  # a diverged run is recorded without a test
        "test_best",
        "record",
    ]
