"""Your own Python modules as `_target_`s: importable from every nettrain command.

`python -m nettrain.train` can import `mymodels.py` from the working directory because Python
puts that directory on the module search path; a console script (`nettrain-train`) gets its own
bin folder there instead. Every nettrain command therefore calls `add_working_dir()` first. The
directory goes after the installed packages, so a local folder never shadows one (a `data/` or
`torch/` folder in the working directory stays a folder).

When a `_target_` still cannot be imported, `import_problem` says which module, where it was
looked for and how to fix it, instead of Hydra's "Error locating target".
"""

from __future__ import annotations

import importlib
import os
import sys


def add_working_dir() -> None:
    """Make modules in the working directory importable, as under `python -m`."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _search_path() -> str:
    entries = [p or os.getcwd() for p in sys.path if not p.endswith(".zip")]
    return ", ".join(entries)


def import_problem(target: str) -> str | None:
    """Why `target` (module.attr) cannot be imported, or None when it can."""
    parts = target.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except ModuleNotFoundError as exc:
        if exc.name != parts[0]:
            return _failed(parts[0], exc)
        return (
            f"cannot import module {parts[0]!r} for _target_ {target!r}: no {parts[0]}.py or {parts[0]}/ "
            f"package in the working directory ({os.getcwd()}) or on the module search path "
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
    return (
        f"module {module!r} was found but failed to import: {type(exc).__name__}: {exc}. "
        "Fix the error in that module (or install what it imports)"
    )
