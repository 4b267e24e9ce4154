"""Configs read from files are data, not code: the `_target_`s nettrain builds from them.

A `_target_` names a Python callable that Hydra imports and calls. On the user's own command
line and in the user's own config dirs that is the point; in a file someone else may have
written (the config stored in a checkpoint, a run folder's saved `.hydra/config.yaml` used by
`resume=RUN_DIR`) it would let that file run code. So every `_target_` in a config that comes
from a file is checked, before anything is built, against what nettrain itself builds:

- nettrain's own components (nettrain.models, nettrain.data, nettrain.optim, nettrain.schedulers)
  and its Hydra callback (nettrain.sweep_callback.SweepSummaryCallback);
- `torch.nn` modules and losses (classes derived from torch.nn.Module);
- `torch.optim` optimizers and `torch.optim.lr_scheduler` schedulers (classes);
- torchvision model builders (listed by torchvision.models.list_models()) and datasets;
- under `hydra.launcher` / `hydra.sweeper`: Hydra's own launchers and sweepers and those of its
  plugin packages, and Optuna's samplers.

Anything else is refused with a message naming the key and the target. A user who trusts the
file allows it deliberately: `nettrain-eval --trust` (everything in that file), or
`trust_targets=[mypkg.MyModel]` on the command line (fnmatch patterns, such as `mypkg.*`).
Some targets are refused even then (:data:`NEVER`): `torch.load`, `builtins.*`, `os.*`,
`subprocess.*` and nettrain's file writers are never a component, only a way to run code or
write files.

Names are checked as strings first; a module is imported only when it is on the list above (to
tell, say, a torch.nn class from a function), never a module the file names.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import re
from collections.abc import Iterable, Iterator
from typing import Any

from nettrain.config import ConfigError

# nettrain modules whose classes and functions a config may build
NETTRAIN_MODULES = ("nettrain.models", "nettrain.data", "nettrain.optim", "nettrain.schedulers")
NETTRAIN_CALLBACKS = (
    "nettrain.sweep_callback.SweepSummaryCallback",
    "nettrain.callbacks.SweepSummaryCallback",  # its name in runs written before the rename
)
# Hydra's own launchers and sweepers, and those of the plugin packages nettrain supports
HYDRA_PLUGINS = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    "hydra_plugins.hydra_ax_sweeper.ax_sweeper.AxSweeper",
    "hydra_plugins.hydra_nevergrad_sweeper.nevergrad_sweeper.NevergradSweeper",
    "hydra_plugins.hydra_ray_launcher.ray_aws_launcher.RayAWSLauncher",
    "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
    "hydra_plugins.hydra_rq_launcher.rq_launcher.RQLauncher",
)
# logging handlers a saved hydra.job_logging / hydra.hydra_logging may name (`class:`)
LOGGING_HANDLERS = (
    "logging.StreamHandler",
    "logging.FileHandler",
    "logging.NullHandler",
    "logging.handlers.RotatingFileHandler",
    "logging.handlers.TimedRotatingFileHandler",
    "rich.logging.RichHandler",
)
# never built from a file, whatever the user trusts: they run code, unpickle, or write files
NEVER = (
    "torch.load",
    "torch.*.load",
    "torch.hub.*",
    "torch.jit.*",
    "torch.package.*",
    "torch.save",
    "torch.utils.cpp_extension.*",
    "builtins.*",
    "__builtin__.*",
    "os.*",
    "posix.*",
    "nt.*",
    "subprocess.*",
    "shutil.*",
    "pathlib.*",
    "io.*",
    "_io.*",
    "codecs.*",
    "tempfile.*",
    "pickle.*",
    "_pickle.*",
    "dill.*",
    "cloudpickle.*",
    "joblib.load",
    "marshal.*",
    "shelve.*",
    "importlib.*",
    "runpy.*",
    "ctypes.*",
    "sys.*",
    "pty.*",
    "socket.*",
    "urllib.*",
    "http.*",
    "requests.*",
    "webbrowser.*",
    "code.*",
    "numpy.load",
    "numpy.save*",
    "numpy.*.load*",
    "numpy.tofile",
    "pandas.read_pickle",
    "hydra.utils.*",
    "hydra._internal.utils.*",
    "omegaconf.*",
    "nettrain.files.*",
    "nettrain.checkpoint.*",
    "nettrain.train.*",
    "eval",
    "exec",
    "open",
    "compile",
    "__import__",
    "getattr",
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class UntrustedTargetError(ConfigError):
    """A `_target_` in a config read from a file that nettrain does not build without being told."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        self.args = (f"Refused: a config read from a file names code nettrain does not run unasked:\n{lines}",)


def targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) of a `_target_` in a plain nested config, lists included; also a
    logging dictConfig's `()` factories and handler `class` names (what they would call)."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_" or key == "()" or key == "class" and "_logging" in path:
                yield where, value
            else:
                yield from targets(value, where)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from targets(value, f"{path}[{i}]")


def _import_attr(module_name: str, rest: list[str]) -> Any:
    obj: Any = importlib.import_module(module_name)
    for part in rest:
        obj = getattr(obj, part)
        if inspect.ismodule(obj):  # `torch.nn.functional.torch.load`: a way around the lists
            raise AttributeError(part)
    return obj


def _resolve_within(target: str, modules: Iterable[str]) -> Any | None:
    """The object `target` names, when it lies in one of `modules` (imported, they are on the list);
    None when it does not, or does not exist."""
    for module in modules:
        if target.startswith(module + "."):
            rest = target[len(module) + 1 :].split(".")
            # a submodule of an allowed package (nettrain.models.resnet.ResNet): import the package
            # path as far as it exists inside the allowed one, then attributes
            for cut in range(len(rest) - 1, -1, -1):
                name = ".".join([module, *rest[:cut]])
                try:
                    return _import_attr(name, rest[cut:])
                except ImportError:
                    continue
                except AttributeError:
                    return None
            return None
    return None


def _is_subclass(obj: Any, base: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, base)


def why_allowed(target: str, key: str) -> str | None:
    """Which of nettrain's lists `target` (at `key`) is on, or None when it is on none."""
    if target in NETTRAIN_CALLBACKS and key.startswith("hydra.callbacks."):
        return "nettrain's Hydra callback"
    root = key.split(".")[0]
    if root == "hydra" and (key.startswith("hydra.launcher.") or key.startswith("hydra.sweeper.")):
        if target in HYDRA_PLUGINS:
            return "a Hydra launcher or sweeper"
        if key.startswith("hydra.sweeper.") and target.startswith("optuna.samplers."):
            try:
                from optuna import samplers
            except ImportError:
                return None
            obj = _resolve_within(target, ("optuna.samplers",))
            return "an Optuna sampler" if _is_subclass(obj, samplers.BaseSampler) else None
    if root == "hydra" and key.endswith(".class") and target in LOGGING_HANDLERS:
        return "a logging handler"
    if root == "hydra" and key.endswith(".class") and target.startswith("logging.") and "formatters" in key:
        return "a logging formatter" if target == "logging.Formatter" else None
    if root == "hydra":
        return None  # anything else under hydra.* is not nettrain's to build
    obj = _resolve_within(target, NETTRAIN_MODULES)
    if obj is not None:
        own = getattr(obj, "__module__", "") or ""
        ours = any(own == m or own.startswith(m + ".") for m in NETTRAIN_MODULES)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and ours:
            return "a nettrain component"
        return None
    if target.startswith("torch."):
        import torch

        obj = _resolve_within(target, ("torch.nn", "torch.optim.lr_scheduler", "torch.optim"))
        if _is_subclass(obj, torch.nn.Module):
            return "a torch.nn module"
        if _is_subclass(obj, torch.optim.Optimizer):
            return "a torch.optim optimizer"
        schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if _is_subclass(obj, schedulers):
            return "a torch.optim.lr_scheduler scheduler"
        return None
    if target.startswith("torchvision."):
        return _torchvision(target)
    return None


def _torchvision(target: str) -> str | None:
    try:
        import torch.utils.data
        import torchvision.models
    except ImportError:
        return None
    obj = _resolve_within(target, ("torchvision.models",))
    if obj is not None and inspect.isfunction(obj) and obj.__name__ in torchvision.models.list_models():
        try:
            if torchvision.models.get_model_builder(obj.__name__) is obj:
                return "a torchvision model builder"
        except ValueError:
            return None
    obj = _resolve_within(target, ("torchvision.datasets",))
    if _is_subclass(obj, torch.utils.data.Dataset):
        return "a torchvision dataset"
    return None


def never(target: str) -> bool:
    """Targets refused from files even when the user trusts them (see :data:`NEVER`)."""
    return any(fnmatch.fnmatchcase(target, pattern) for pattern in NEVER)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def problems(config: Any, source: str, trusted: Iterable[str] = (), trust_all: bool = False) -> list[str]:
    """One line per `_target_` in `config` (read from `source`) that nettrain will not build.

    `trusted`: fnmatch patterns the user allowed (trust_targets=[...]); `trust_all`: the user
    trusts the whole file (--trust). Neither lifts :data:`NEVER`."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=False)
    trusted = list(trusted)
    found = []
    for key, target in targets(config):
        if target is None and key.endswith("._target_"):
            continue  # `_target_: null`: nothing is built (scheduler=none)
        if not isinstance(target, str) or not _NAME.match(target):
            found.append(
                f"{key}={_short(target)} in {source}: not a plain dotted name "
                "(an interpolation or other value could name anything); nettrain does not build it"
            )
            continue
        if never(target):
            found.append(
                f"{key}={target!r} in {source}: nettrain never builds this from a file, "
                "trusted or not: it can run code, load pickles or write files"
            )
            continue
        if trust_all or any(fnmatch.fnmatchcase(target, p) for p in trusted):
            continue
        if why_allowed(target, key) is None:
            found.append(
                f"{key}={target!r} in {source}: not one of the components nettrain builds from "
                "files (nettrain's own, torch.nn modules, torch.optim optimizers and schedulers, "
                "torchvision models and datasets), so it could run any code. If you trust this "
                f"file, allow it deliberately: trust_targets=[{target}] on the command line "
                "(nettrain-eval/nettrain-predict: --trust)"
            )
    return found


def check(config: Any, source: str, trusted: Iterable[str] = (), trust_all: bool = False) -> None:
    """Raise UntrustedTargetError listing every `_target_` of `config` nettrain will not build."""
    found = problems(config, source, trusted, trust_all)
    if found:
        raise UntrustedTargetError(found)


def add_trust_flag(parser: Any) -> None:
    """`--trust` for the commands that open a checkpoint (nettrain-eval, -predict, -export)."""
    parser.add_argument(
        "--trust",
        action="store_true",
        help="build any _target_ the checkpoint's config names (only for a file you trust; "
        "torch.load, os.*, builtins.* and file writers are refused even then)",
    )


def trusted_from_overrides(overrides: Iterable[str]) -> list[str]:
    """The `trust_targets=[...]` patterns given on the command line, and every `_target_` the
    command line itself sets (the user's own choice, not the file's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    found: list[str] = []
    for override in parsed:
        key = override.key_or_group
        value = override.value()
        if key.lstrip("+~") == "trust_targets":
            found.extend(str(v) for v in (value if isinstance(value, list) else [value]))
        elif key.endswith("_target_") and isinstance(value, str):
            found.append(value)
    return found
