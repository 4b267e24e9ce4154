"""The import graph (.ci/import_graph.py): no cycles, imports down the layers, imports inside
functions only with a reason, and the commands free of torch when they are imported."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO


def _load_check():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / ".ci" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


check = _load_check()


def package(root: Path, files: dict[str, str]) -> Path:
    """A package `pkg` under `root` with these modules (path inside pkg -> source)."""
    for name, source in {"__init__.py": "", **files}.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / "pkg"


def test_nettrain_has_no_cycle_and_a_reason_for_every_import_inside_a_function():
    assert check.problems(REPO / "nettrain", check.LAZY) == []


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    root = package(
        tmp_path,
        {
            "a.py": "from pkg.b import g\n\ndef f():\n    return g()\n",
            "b.py": "def g():\n    from pkg import c\n    return c.h()\n",
            "c.py": "import pkg.a\n\ndef h():\n    return 1\n",
            "d.py": "from pkg import a\n",  # imports into the cycle, is not part of it
        },
    )
    found = check.problems(root, {("pkg.b", "pkg"): "planted"})
    assert found == ["import cycle: pkg.a -> pkg.b -> pkg.c -> pkg.a"]
    edges, _ = check.graph(root)
    assert edges["pkg.b"] == {"pkg", "pkg.c"}  # `from pkg import c`: the package and its module c


def test_a_knot_of_several_cycles_names_every_module_in_it(tmp_path):
    root = package(
        tmp_path, {"a.py": "import pkg.b\n", "b.py": "import pkg.a\nimport pkg.c\n", "c.py": "import pkg.b\n"}
    )
    assert check.problems(root, {}) == [
        "import cycle: pkg.a -> pkg.b -> pkg.a (one cycle of several through pkg.a, pkg.b, pkg.c)"
    ]


def test_a_relative_import_and_a_packages_own_init_are_edges_too(tmp_path):
    root = package(
        tmp_path,
        {
            "__init__.py": "from pkg.sub.x import X\n",  # a package re-exporting its module: no cycle
            "sub/__init__.py": "",
            "sub/x.py": "from ..y import Y\n\nclass X(Y):\n    pass\n",
            "y.py": "class Y:\n    pass\n",
        },
    )
    edges, _ = check.graph(root)
    assert edges["pkg"] == {"pkg.sub.x"} and edges["pkg.sub.x"] == {"pkg.y"}
    assert check.problems(root, {}) == []
    (root / "y.py").write_text("import pkg\n\nclass Y:\n    pass\n")  # the module imports its package back
    assert check.problems(root, {}) == ["import cycle: pkg -> pkg.sub.x -> pkg.y -> pkg"]


def test_an_import_up_the_layers_or_across_one_is_found(tmp_path):
    root = package(
        tmp_path,
        {
            "top/__init__.py": "",
            "top/cli.py": "from pkg.mid import a\n",  # down: fine
            "mid/__init__.py": "",
            "mid/a.py": "from pkg.mid import b\nfrom pkg import base\n",  # its own package, and down
            "mid/b.py": "def f():\n    from pkg.top import cli\n",  # up, even inside a function
            "side/__init__.py": "",
            "side/c.py": "from pkg.mid import b\n",  # across, to a package beside its own
            "base.py": "",
        },
    )
    layers = (("pkg.top",), ("pkg.mid", "pkg.side"), ("pkg.base",))
    found = [
        line for line in check.problems(root, {("pkg.mid.b", "pkg.top"): "planted"}, layers) if "cycle" not in line
    ]
    assert found == [
        "layers: pkg.mid.b imports pkg.top; pkg.mid may import its own modules and pkg.base",
        "layers: pkg.mid.b imports pkg.top.cli; pkg.mid may import its own modules and pkg.base",
        "layers: pkg.side.c imports pkg.mid; pkg.side may import its own modules and pkg.base",
        "layers: pkg.side.c imports pkg.mid.b; pkg.side may import its own modules and pkg.base",
    ]


def test_an_import_inside_a_function_needs_its_reason_and_a_reason_its_import(tmp_path):
    root = package(
        tmp_path,
        {
            "core.py": "def f():\n    import json\n    return json\n",
            "extra.py": "def g():\n    import mlflow.entities\n    return mlflow\n",
            "types.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import pkg.core\n",
        },
    )
    found = check.problems(root, {("pkg.extra", "mlflow"): "an optional extra", ("pkg.core", "yaml"): "stale"})
    assert found == [
        "LAZY lists ('pkg.core', 'yaml'), but pkg.core imports yaml inside no function: remove it",
        "pkg/core.py:2: f() imports json inside a function: move it to the top of the module, "
        "or list ('pkg.core', 'json') with its reason in LAZY",
    ]
    edges, _ = check.graph(root)
    assert edges["pkg.types"] == set()  # a type-only import never runs


def test_the_commands_import_inside_functions_only_what_imports_torch(tmp_path):
    root = package(
        tmp_path,
        {
            "commands/__init__.py": "",
            "commands/run.py": """\
                def main():
                    import shutil
                    from pkg import light
                    from pkg.engine import work
                    import torch
                    from pkg import engine, light  # engine/__init__.py imports no torch
                    from pkg.engine import step as graph
                    return shutil, light, work, torch, engine, graph
            """,
            "light.py": "import json\n",
            "engine/__init__.py": "",
            "engine/work.py": "from pkg.engine import step\n",
            "engine/step.py": "import torch\n",  # torch two imports down: work is heavy too
        },
    )
    found = check.problems(root, {})
    assert [line.split(": ")[0] for line in found] == [f"pkg/commands/run.py:{n}" for n in (2, 3, 6)]
    assert "main() imports pkg.light inside a function, but it does not import torch" in found[1]
    edges, every = check.graph(root)
    assert check.heavy_modules(every, set(edges)) == {"pkg.engine.step", "pkg.engine.work"}


@pytest.mark.slow
def test_the_check_runs_from_the_command_line_with_its_counts():
    proc = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "import_graph.py"), "--counts"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cycles: 0" in proc.stdout
    assert proc.stdout.strip().endswith("every one inside a function has a reason")


@pytest.mark.parametrize("extra", [[], ["nettrain.config.help", "nettrain.run.resume", "nettrain.run.launch"]])
@pytest.mark.slow
def test_importing_the_commands_imports_neither_torch_nor_matplotlib(extra):
    """The six console scripts, the sweep callback, and the config/ and run/ modules they import at
    the top, import no torch: `--help` and a config error answer before torch would load."""
    commands = sorted(p.stem for p in (REPO / "nettrain" / "commands").glob("*.py") if p.stem != "__init__")
    names = [f"nettrain.commands.{c}" for c in commands] + extra
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'torchvision', 'matplotlib', 'numpy')}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"torch": False, "torchvision": False, "matplotlib": False, "numpy": False}
    assert len(commands) >= 8  # the six scripts, their error handling and start-up, the sweep callback


@pytest.mark.slow
def test_the_tests_conftest_imports_no_torch():
    """pytest-xdist's controller imports tests/conftest.py before it starts the workers, and does
    no test itself: a torch import there (~3 s) would hold every worker back that long."""
    code = "import sys; sys.path.insert(0, 'tests'); import conftest; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]


def test_an_api_function_of_the_package_itself_is_an_entry_point_not_an_edge(tmp_path):
    """`nettrain.fit` imports the command layer when called: listed in LAZY, it is left out of the
    graph (modules below import the package for its __version__); unlisted, it is reported."""
    root = package(
        tmp_path,
        {
            "__init__.py": "__version__ = '1'\n\ndef fit():\n    from pkg.commands.api import fit\n    return fit()\n",
            "commands/__init__.py": "",
            "commands/api.py": "import pkg\n\ndef fit():\n    return pkg.__version__\n",
        },
    )
    layers = (("pkg.commands",), ("pkg",))
    assert check.problems(root, {("pkg", "pkg.commands.api"): "the API"}, layers) == []
    found = check.problems(root, {}, layers)
    assert found[0] == "import cycle: pkg -> pkg.commands.api -> pkg"
    assert "layers: pkg imports pkg.commands.api" in found[1]
