"""Your own Python modules as `_target_`s, from the working directory, and nothing else from there.

The working directory is never put on the module search path: torch, Hydra and the libraries
they use probe for optional modules (`pydot`, `opt_einsum`, `pynvml`, `hydra_plugins.*`, ...),
and a file of that name in a folder you received would run on `cd run && nettrain-eval .`.
Instead, the builder (nettrain/engine/build.py) imports from the working directory exactly the module a
`_target_` names (`mymodels` for `model._target_=mymodels.Net`), just before it builds that
target, which is after the trust check of a config read from a file has passed, and only when
the module cannot be imported from the module search path: a file in the working directory
never shadows an installed module. `mymodels.py`, or a package `mymodels/__init__.py` (whose
submodules `mymodels.layers` then import as usual), is registered in `sys.modules` under its name.
Every process that builds (torchrun ranks, sweep jobs) does the same.

A module loaded this way cannot import a sibling module from the working directory (`from
mylayers import X`); the error says to make them one package, install it or set PYTHONPATH.
`python -m nettrain.commands.train` keeps Python's own behaviour: there the working directory is first on
the search path (`sys.path[0]`), as for any `python -m`.

When a `_target_` still cannot be imported, `import_problem` says which module, where it was
looked for and how to fix it, instead of Hydra's "Error locating target".
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from nettrain.config.trust import targets


def working_dir() -> Path:
    """Where the command was started: the current directory, or Hydra's `runtime.cwd` inside a
    job that changed into its run folder (hydra.job.chdir=true)."""
    try:
        if HydraConfig.initialized() and getattr(HydraConfig.get().job, "chdir", None):
            return Path(HydraConfig.get().runtime.cwd)
    except Exception:  # noqa: BLE001 - no Hydra job: the current directory
        pass
    return Path(os.getcwd())


def _file_in_working_dir(name: str) -> tuple[Path, bool] | None:
    """(file, is a package) for module `name` in the working directory, package first as in Python."""
    folder = working_dir()
    package = folder / name / "__init__.py"
    if package.is_file():
        return package, True
    module = folder / f"{name}.py"
    if module.is_file():
        return module, False
    return None


def _importable(name: str) -> bool:
    """Whether `name` is imported already or can be found on the module search path."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return True  # Python has an opinion about it: not ours to replace


def import_from_working_dir(target: str) -> bool:
    """Import the top-level module of `target` (`mymodels` for `mymodels.Net`) from the working
    directory when it is there and nowhere on the module search path; True when it was loaded.
    Raises what the module raises while it runs."""
    name = target.split(".")[0]
    if not name.isidentifier() or _importable(name):
        return False
    found = _file_in_working_dir(name)
    if found is None:
        return False
    path, package = found
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if package else None
    )
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return True


def targets_in(node: Any) -> Iterator[str]:
    """Every `_target_` string in a config node (a DictConfig or plain dicts and lists), nested ones included."""
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except Exception:  # noqa: BLE001 - a value that does not resolve: building reports it
            node = OmegaConf.to_container(node, resolve=False)
    return (value for key, value in targets(node) if key.endswith("_target_") and isinstance(value, str))


def load_problem(target: str) -> str | None:
    """Import `target`'s module from the working directory where that is where it is (see the
    module's doc); why that failed, or None."""
    try:
        import_from_working_dir(target)
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        return _failed(target.split(".")[0], exc)
    return None


def _search_path() -> str:
    entries = [p or os.getcwd() for p in sys.path if not p.endswith(".zip")]
    return ", ".join(entries)


def import_problem(target: str) -> str | None:
    """Why `target` (module.attr) cannot be imported, or None when it can."""
    parts = target.split(".")
    try:
        import_from_working_dir(target)
        obj = importlib.import_module(parts[0])
    except ModuleNotFoundError as exc:
        if exc.name != parts[0]:
            return _failed(parts[0], exc)
        return (
            f"cannot import module {parts[0]!r} for _target_ {target!r}: no {parts[0]}.py or {parts[0]}/ "
            f"package in the working directory ({working_dir()}) or on the module search path "
            f"({_search_path()}). Fix: run the command from the folder that holds {parts[0]}.py, or add "
            f"that folder to PYTHONPATH (PYTHONPATH=/path/to/folder nettrain-train ...), or pip install it"
        )
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        return _failed(parts[0], exc)
    for i in range(1, len(parts)):
        if hasattr(obj, parts[i]):
            obj = getattr(obj, parts[i])
            continue
        name = ".".join(parts[: i + 1])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                return _failed(name, exc)
            where = getattr(obj, "__file__", None) or ".".join(parts[:i])
            return (
                f"_target_ {target!r}: {'.'.join(parts[:i])} ({where}) has no {parts[i]!r}. "
                "Fix: check the spelling of the class or function name in _target_"
            )
        except Exception as exc:  # noqa: BLE001
            return _failed(name, exc)
    return None


def _failed(module: str, exc: BaseException) -> str:
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and _file_in_working_dir(missing.split(".")[0]) is not None:
        sibling = missing.split(".")[0]
        top = module.split(".")[0]
        return (
            f"module {module!r} imports {sibling!r}, which is a module in the working directory "
            f"({working_dir()}) but not on the module search path: nettrain imports from the working "
            "directory only the module a _target_ names, never others next to it (a file there named "
            "like a module a library looks for would run). Fix: make them one package "
            f"({top}/__init__.py with {top}/{sibling}.py, imported as `from {top} import {sibling}` or "
            f"`from . import {sibling}`), or pip install it, or add the folder to PYTHONPATH "
            "(PYTHONPATH=/path/to/folder nettrain-train ...)"
        )
    return (
        f"module {module!r} was found but failed to import: {type(exc).__name__}: {exc}. "
        "Fix the error in that module (or install what it imports)"
    )
