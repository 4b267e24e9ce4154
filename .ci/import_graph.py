"""nettrain's import graph, read with `ast`: fails when the modules import each other in a cycle,
when an import goes up the layers, or when an import sits inside a function without a reason.

- The layers (LAYERS below), top to bottom: commands -> engine -> run, models, optim, data,
  insight -> config -> errors, files. A module imports from its own package and from the layers
  below its own; packages side by side in one layer do not import each other.

- Outside nettrain/commands/, an import inside a function needs its reason in LAZY below.
- nettrain/commands/ is the boundary: its modules stay torch-free at import and import the work
  inside their functions. There an import inside a function is for what needs torch (a nettrain
  module that imports torch, directly or through the modules and packages it imports) or another
  package; the standard library and nettrain's torch-free modules are imported at the top.

Every import counts, at the top of a module or inside a function: a function-level import is still
a dependency, only a later one. `from nettrain.x import y` depends on nettrain.x, and on
nettrain.x.y too when that is a module. Imports under `if TYPE_CHECKING:` never run and are left
out. A package's __init__.py importing its own modules is an ordinary edge: it makes a cycle only
when one of those modules imports the package back.

    python .ci/import_graph.py            # the check (exit 1 and each problem when it fails)
    python .ci/import_graph.py --counts   # also the counts: modules, edges, function-level imports
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The imports allowed inside functions outside nettrain/commands/: (module, what it imports) ->
# why it is not at the top. An entry covers the target's submodules too (mlflow -> mlflow.entities).
# docs/dev/imports.md lists the same entries; an entry that no longer matches an import fails.
LAZY: dict[tuple[str, str], str] = {
    # optional extras: a core install runs without them, so an import at the top would fail
    ("nettrain.insight.loggers", "torch.utils.tensorboard"): "extra [tensorboard], only with loggers=[tensorboard]",
    ("nettrain.insight.loggers", "mlflow"): "extra [mlflow], only with loggers=[mlflow]",
    ("nettrain.insight.loggers", "wandb"): "extra [wandb], only with loggers=[wandb]",
    ("nettrain.data.tabular", "pandas"): "extra [tables], only to read a Parquet file",
    ("nettrain.engine.exporting", "onnxruntime"): "extra [onnx], only to check an export with --format onnx",
    # heavy packages that most runs never need
    ("nettrain.data", "torchvision"): "about 1 s to import; only data=mnist/fashion_mnist/kmnist need it",
    ("nettrain.data.augment", "torchvision"): "about 1 s; only runs with augment=... (its image transforms) need it",
    ("nettrain.models.from_torchvision", "torchvision"): "about 1 s; only model=torchvision needs it, and "
    "every run imports nettrain.models",
    ("nettrain.insight.figures", "matplotlib"): "about 0.5 s; plots=false runs and the finders draw nothing",
    ("nettrain.engine.metrics", "torchmetrics"): "seconds to import (it loads scipy); only runs with metrics=[...] "
    "need it",
    # torch-free layers: the commands import config/ and run/ before they know whether torch is needed
    ("nettrain.config.trust", "torch"): "only to judge a torch.* target in a config read from a file",
    ("nettrain.run.checkpoint", "torch"): "only to save or load a checkpoint file",
    ("nettrain.run.launch", "torch.distributed"): "only for the rendezvous store under torchrun or SLURM",
    # the package's own Python API: `from nettrain import fit` stays torch- and Hydra-free at import
    ("nettrain", "nettrain.commands.api"): "nettrain.fit runs the command layer when called; an entry point "
    "above commands/ like a console script, so it is no edge of the graph (entry_points)",
}


# Top to bottom; a module belongs to the entry naming its package (nettrain itself: __version__).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("nettrain.commands",),  # the console scripts: torch-free at import
    ("nettrain.engine",),  # torch: build, state, loop, step, checkpointing, the end of a run
    ("nettrain.run", "nettrain.models", "nettrain.optim", "nettrain.data", "nettrain.insight"),
    ("nettrain.config",),  # the settings, their checks and trust: no torch
    ("nettrain", "nettrain.errors", "nettrain.files"),
)


@dataclass(frozen=True)
class Import:
    """One import statement's dependency: `module` (at `line`) imports `target`; `function` is the
    enclosing function's name, or None at module level."""

    module: str
    line: int
    target: str
    function: str | None


def module_name(path: Path, root: Path) -> str:
    """nettrain/run/folder.py -> nettrain.run.folder; nettrain/run/__init__.py -> nettrain.run."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(root: Path) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name (files reached through a link left out)."""
    inside = root.resolve()
    paths = [path for path in sorted(root.rglob("*.py")) if path.resolve().is_relative_to(inside)]
    return {module_name(path, root): path for path in paths}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, function: str | None = None) -> Iterator[tuple[ast.Import | ast.ImportFrom, str | None]]:
    """Each import statement with its enclosing function (None at module level)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (pair for child in node.orelse for pair in _statements(ast.Module([child], []), function))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, function
        inner = node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
        yield from _statements(node, inner)


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, node.module] if node.module else package)


def imports_of(path: Path, module: str, known: set[str]) -> list[Import]:
    """The dependencies of one module; `known` are the package's module names (to tell
    `from nettrain.x import y` of a module y from that of a name y)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node, function in _statements(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _base(node, module, path.name == "__init__.py")
            targets = [base, *(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)]
        found += [Import(module, node.lineno, target, function) for target in targets]
    return found


def graph(root: Path) -> tuple[dict[str, set[str]], list[Import]]:
    """The package's own import graph (module -> the package's modules it imports) and every import."""
    modules = modules_of(root)
    every = [imp for name, path in modules.items() for imp in imports_of(path, name, set(modules))]
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for imp in every:
        if imp.target in modules and imp.target != imp.module:
            edges[imp.module].add(imp.target)
    return edges, every


def cycles(edges: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """The strongly connected components of more than one module (Tarjan): for each, a shortest
    cycle through its first module, and all its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[list[str], list[str]]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append((_loop(sorted(component), edges), sorted(component)))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _loop(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path inside the component from its first module back to it (breadth-first)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges[node] & members):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return component


HEAVY = ("torch", "torchvision")  # what the commands must not import at the top


def _top_level_targets(every: list[Import]) -> dict[str, set[str]]:
    """module -> what its top-level imports load: each target, and each package above a target
    of the same package (importing nettrain.data.idx runs nettrain/data/__init__.py first)."""
    found: dict[str, set[str]] = {}
    for imp in every:
        if imp.function is None:
            parts = imp.target.split(".")
            found.setdefault(imp.module, set()).update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def heavy_modules(every: list[Import], modules: set[str]) -> set[str]:
    """The package's modules whose import loads a HEAVY package (torch), through any chain of
    top-level imports."""
    loads = _top_level_targets(every)
    heavy: set[str] = set()
    changed = True
    while changed:
        changed = False
        for module in modules - heavy:
            targets = loads.get(module, set()) | {p for p in _parents(module) if p in modules}
            if any(t.split(".")[0] in HEAVY or t in heavy for t in targets):
                heavy.add(module)
                changed = True
    return heavy


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def boundary_problems(every: list[Import], modules: set[str], package: str) -> list[Import]:
    """Import statements inside functions of `package`.commands that could be at the top: those
    that load only the standard library, or only modules of the package that do not load torch
    (`from nettrain.engine import build` loads nettrain.engine.build, which does)."""
    heavy = heavy_modules(every, modules)
    boundary = f"{package}.commands"
    statements: dict[tuple[str, int], list[Import]] = {}
    for imp in every:
        if imp.function and (imp.module == boundary or imp.module.startswith(boundary + ".")):
            statements.setdefault((imp.module, imp.line), []).append(imp)

    def light(target: str) -> bool:
        return target.split(".")[0] in sys.stdlib_module_names or (target in modules and target not in heavy)

    return [imps[-1] for imps in statements.values() if all(light(imp.target) for imp in imps)]


def unlisted_lazy(every: list[Import], package: str, lazy: dict[tuple[str, str], str]) -> list[Import]:
    """Function-level imports outside `package`.commands that LAZY does not list."""
    boundary = f"{package}.commands"
    return [
        imp
        for imp in every
        if imp.function
        and not (imp.module == boundary or imp.module.startswith(boundary + "."))
        and (imp.module, imp.target) not in lazy
        and not _submodule_of_listed(imp, lazy)
    ]


def _submodule_of_listed(imp: Import, lazy: dict[tuple[str, str], str]) -> bool:
    """`from onnx import checker` is covered by the entry for onnx (the derived edge to onnx.checker)."""
    return any(imp.module == module and imp.target.startswith(target + ".") for module, target in lazy)


def _layer(module: str, layers: tuple[tuple[str, ...], ...]) -> tuple[int, str] | None:
    """(rank from the top, the entry of `layers` naming the module's package), or None for none."""
    best: tuple[int, str] | None = None
    for rank, names in enumerate(layers):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (rank, name)
    return best


def layer_problems(edges: dict[str, set[str]], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """Each import that goes up the layers, or across to a package beside the module's own."""
    found = []
    for module in sorted(edges):
        here = _layer(module, layers)
        for target in sorted(edges[module]):
            there = _layer(target, layers)
            if here is None or there is None or here[1] == there[1] or there[0] > here[0]:
                continue
            below = [name for names in layers[here[0] + 1 :] for name in names]
            found.append(
                f"layers: {module} imports {target}; {here[1]} may import its own modules and "
                f"{', '.join(below) or 'nothing else'}"
            )
    return found


def stale(every: list[Import], lazy: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
    """LAZY's entries that match no import inside a function (the import moved or went)."""
    used = {(imp.module, imp.target) for imp in every if imp.function}
    return [
        (module, target)
        for module, target in lazy
        if not any(m == module and (t == target or t.startswith(target + ".")) for m, t in used)
    ]


def entry_points(edges: dict[str, set[str]], lazy: dict[tuple[str, str], str], package: str) -> None:
    """Drop from `edges` the imports LAZY lists for the package itself (`nettrain.fit`): functions
    of the package's __init__ that run a command's code when called. Modules below import the
    package (its __version__), so such an import would be a cycle and an import up the layers, yet
    it never runs while anything is imported: an entry point, on top of the graph like a console script."""
    for module, target in lazy:
        if module == package:
            edges.get(package, set()).discard(target)


def problems(root: Path, lazy: dict[tuple[str, str], str], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Each cycle, each import up the layers, each function-level import without a reason and
    each reason without its import, as one line; empty when the check passes."""
    edges, every = graph(root)
    package = root.name
    entry_points(edges, lazy, package)
    lines = [
        f"import cycle: {' -> '.join(loop)}"
        + (f" (one cycle of several through {', '.join(members)})" if len(members) > len(loop) - 1 else "")
        for loop, members in cycles(edges)
    ]
    lines += layer_problems(edges, layers)
    lines += [
        f"LAZY lists ({m!r}, {t!r}), but {m} imports {t} inside no function: remove it" for m, t in stale(every, lazy)
    ]
    paths = modules_of(root)
    for imp in unlisted_lazy(every, package, lazy):
        path = paths[imp.module].relative_to(root.parent)
        lines.append(
            f"{path}:{imp.line}: {imp.function}() imports {imp.target} inside a function: move it to the "
            f"top of the module, or list ({imp.module!r}, {imp.target!r}) with its reason in LAZY"
        )
    for imp in boundary_problems(every, set(paths), package):
        path = paths[imp.module].relative_to(root.parent)
        lines.append(
            f"{path}:{imp.line}: {imp.function}() imports {imp.target} inside a function, but it does not "
            "import torch: import it at the top of the module"
        )
    return lines


def counts(root: Path) -> dict[str, int]:
    """Modules, edges, cycles and function-level import statements (all, and of the package's own)."""
    edges, every = graph(root)
    package = root.name
    entry_points(edges, LAZY, package)
    statements = {(imp.module, imp.line) for imp in every if imp.function}
    own = {(imp.module, imp.line) for imp in every if imp.function and imp.target.split(".")[0] == package}
    boundary = {key for key in statements if key[0].startswith(f"{package}.commands")}
    return {
        "modules": len(edges),
        "edges": sum(len(v) for v in edges.values()),
        "cycles": len(cycles(edges)),
        "function-level imports": len(statements),
        f"  of {package}'s own modules": len(own),
        "  in commands/ (the boundary)": len(boundary),
        "  outside commands/ (each listed in LAZY)": len(statements - boundary),
        f"  outside commands/, of {package}'s own": len(own - boundary),
    }


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1] / "nettrain"
    if "--counts" in argv:
        for key, value in counts(root).items():
            print(f"{key}: {value}")
    found = problems(root, LAZY)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} import problem(s)", file=sys.stderr)
        return 1
    print("imports: no cycles, every import goes down the layers, every one inside a function has a reason")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
