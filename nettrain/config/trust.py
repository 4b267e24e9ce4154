"""Configs read from files are data, not code: what nettrain builds from them.

A `_target_` names a Python callable that Hydra imports and calls, and an interpolation such as
`${oc.create:...}` can turn a plain value into a `_target_` when Hydra resolves it. On the user's
own command line and in the user's own config dirs that is the point; in a file someone else may
have written (the config stored in a checkpoint, a run folder's saved `.hydra/config.yaml` used
by `resume=RUN_DIR`) it would let that file run code. So a config that comes from a file is
checked, before anything is built, in two steps:

1. **Interpolations.** Every `${...}` in it, wherever it stands (nested, in lists, `_args_`, the
   `hydra:` section), may only refer to another key (`${lr}`, `${..x}`) or call one of the
   resolvers in :data:`SAFE_RESOLVERS`, which return plain text or numbers. Any other resolver
   (`oc.create`, `oc.decode`, `oc.select`, `oc.dict.*`, `oc.env`, `oc.deprecated`, a plugin's)
   is refused, `--trust` or not: override that key on the command line instead.
2. **Targets, per slot, as Hydra would build them.** The config is walked with every reference
   followed, so a `_target_` is checked at the key where Hydra would build it. Each slot takes
   exactly what nettrain ships there (:func:`shipped`, read from the option files in conf/), so
   every option in conf/ is trusted by construction:
   - `model`, `data`: the `_target_` of an option in conf/model/, conf/data/;
   - `optimizer`: conf/optimizer/'s, or any `torch.optim` optimizer class;
   - `scheduler`: conf/scheduler/'s, or any `torch.optim.lr_scheduler` scheduler class;
   - `loss`: a `torch.nn` loss class;
   - `callbacks`: nothing (nettrain ships none): a user's callback from a file needs trust;
   - `hydra.callbacks.*`: the callbacks conf/train.yaml sets; `hydra.launcher`, `hydra.sweeper`:
     Hydra's own and its plugins' (:data:`HYDRA_PLUGINS`); `hydra.sweeper.sampler`: Optuna's
     samplers; Hydra's logging: the handlers and formatter in :data:`LOGGING_HANDLERS`.
   Anything else, anywhere else (a nested `_target_` included), is refused with a message naming
   the key and the target.

A user who trusts the file allows a target deliberately: `nettrain-eval --trust` (every target in
that file), or `trust_targets=[mypkg.MyModel]` on the command line (fnmatch patterns, such as
`mypkg.*`). Some targets are refused even then (:data:`NEVER`): `torch.load`, `builtins.*`,
`os.*`, `subprocess.*` and nettrain's file writers are never a component, only a way to run code
or write files.

Names are checked as strings first; a module is imported only when it is torch's own (to tell,
say, a torch.optim class from a function), never a module the file names.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import re
from collections.abc import Iterable, Iterator
from importlib.resources import files
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import Container, DictConfig, ListConfig, OmegaConf, ValueNode, grammar_parser
from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as Grammar

from nettrain.config.renames import renamed
from nettrain.errors import UntrustedTargetError

# resolvers a config read from a file may call: each returns plain text or a number
SAFE_RESOLVERS = (
    "now",  # Hydra's: the time, formatted (the run dir's name)
    "nettrain_help",  # nettrain-train --help's page (hydra.help.template)
    "nettrain.at_least_one",  # conf/hydra/launcher/slurm.yaml: one task per GPU, at least one
)
# the config groups whose options conf/ ships, each the slot of the same name
GROUP_SLOTS = ("model", "optimizer", "scheduler", "data")
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
# the samplers hydra-optuna-sweeper's sampler options name (hydra/sweeper/sampler/*.yaml)
OPTUNA_SAMPLERS = tuple(
    f"optuna.samplers.{name}"
    for name in ("TPESampler", "RandomSampler", "CmaEsSampler", "NSGAIISampler", "MOTPESampler", "GridSampler")
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
    "nettrain.run.checkpoint.*",
    "nettrain.commands.train.*",
    "eval",
    "exec",
    "open",
    "compile",
    "__import__",
    "getattr",
)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


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


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (dotted key, value) of a string value in a plain nested config, lists included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _why_unsafe(text: str) -> str | None:
    """Why the interpolations in `text` may not come from a file, or None when they are plain
    references to other keys and calls of :data:`SAFE_RESOLVERS` only."""
    if "\\${" in text:  # resolves to a `${...}`, which Hydra resolves again when it builds
        return "escapes an interpolation (\\${...})"
    try:
        tree = grammar_parser.parse(text, parser_rule="configValue")
    except GrammarParseError as exc:
        return f"not a valid interpolation ({exc})"
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Grammar.InterpolationResolverContext):
            name = node.resolverName().getText()
            if name not in SAFE_RESOLVERS:
                return f"calls the resolver {name!r}"
        elif isinstance(node, Grammar.InterpolationNodeContext) and node.getText().count("${") > 1:
            return "refers to a key named by another interpolation"
        stack.extend(getattr(node, "children", None) or [])
    return None


def interpolation_problems(config: Any, source: str) -> list[str]:
    """One line per value of `config` (a plain container, unresolved) whose `${...}` may not come
    from a file: anything but a reference to another key or a call of :data:`SAFE_RESOLVERS`."""
    found = []
    for key, text in _strings(config):
        why = "${" in text and _why_unsafe(text)
        if why:
            found.append(
                f"{key}={_short(text)} in {source}: {why}; a config read from a file may only refer to other "
                f"keys (${{a.b}}) or call {', '.join(SAFE_RESOLVERS)}, because another resolver can build a "
                f"hidden _target_ (oc.create, oc.decode, oc.select, ...). If the value is yours, give it on the "
                f"command line instead ({key}=...)"
            )
    return found


def reinterpolations(config: Any, source: str) -> list[str]:
    """One line per value of `config` (a DictConfig whose interpolations passed
    :func:`interpolation_problems`) that resolves to text holding `${`: nettrain builds from the
    resolved config, and Hydra's instantiate resolves what it is given once more, so such a value
    (`${d}{oc.create:...}` with `d: $`) would become an interpolation only then. The help page
    (hydra.help) is never built and not resolved here."""
    found = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, DictConfig) and not (node._is_none() or node._is_missing() or node._is_interpolation()):
            for key in node.keys():
                walk(node._get_node(key), f"{path}.{key!s}" if path else str(key))
        elif isinstance(node, ListConfig) and not (node._is_none() or node._is_missing() or node._is_interpolation()):
            for i in range(len(node)):
                walk(node._get_node(i), f"{path}[{i}]")
        elif node._is_interpolation() and not path.startswith("hydra.help."):
            try:
                value = node._dereference_node()._value()
            except Exception:  # noqa: BLE001 - unresolvable here (a key Hydra sets later): no text to check
                return
            if isinstance(value, str) and "${" in value:
                found.append(
                    f"{path}={_short(node._value())} in {source}: resolves to {_short(value)}, an interpolation "
                    "Hydra would resolve again when it builds; a config read from a file may not assemble one"
                )

    walk(config, "")
    return found


def resolved_view(config: Any) -> Any:
    """`config` (a DictConfig whose interpolations passed :func:`interpolation_problems`) as plain
    containers, each value that is a single reference (`${a.b}`) replaced by what it refers to: the
    nodes Hydra would build, at the keys where it would build them. Other interpolations stay text
    (they give text); a reference that does not resolve stays text (nothing can be built from it)."""
    expanding: set[int] = set()

    def view(node: Any) -> Any:
        if node._is_interpolation():
            text = node._value()
            if not _SINGLE_REFERENCE.fullmatch(text) or id(node) in expanding:
                return text
            expanding.add(id(node))
            try:
                return view(node._dereference_node())
            except Exception:  # noqa: BLE001 - unresolvable here (a key set later, a cycle): text
                return text
            finally:
                expanding.discard(id(node))
        if isinstance(node, DictConfig):
            if node._is_none() or node._is_missing():
                return None
            return {key: view(node._get_node(key)) for key in node.keys()}
        if isinstance(node, ListConfig):
            if node._is_none() or node._is_missing():
                return None
            return [view(node._get_node(i)) for i in range(len(node))]
        assert isinstance(node, (ValueNode, Container))
        return node._value()

    return view(config)


_SINGLE_REFERENCE = re.compile(r"\$\{[^${}:]+\}")


@functools.cache
def shipped() -> dict[str, frozenset[str]]:
    """The `_target_`s nettrain ships, by slot: each option of conf/model, conf/optimizer,
    conf/scheduler and conf/data, and conf/train.yaml's Hydra callbacks ('hydra.callbacks')."""
    conf = files("nettrain.conf")
    found: dict[str, set[str]] = {slot: set() for slot in GROUP_SLOTS}
    for slot in GROUP_SLOTS:
        for option in conf.joinpath(slot).iterdir():
            if option.name.endswith(".yaml"):
                target = (yaml.safe_load(option.read_text(encoding="utf-8")) or {}).get("_target_")
                if target:
                    found[slot].add(target)
    primary = yaml.safe_load(conf.joinpath("train.yaml").read_text(encoding="utf-8"))
    callbacks = primary.get("hydra", {}).get("callbacks", {}).values()
    found["hydra.callbacks"] = {node["_target_"] for node in callbacks}
    return {slot: frozenset(names) for slot, names in found.items()}


def _import_attr(module_name: str, rest: list[str]) -> Any:
    obj: Any = importlib.import_module(module_name)
    for part in rest:
        obj = getattr(obj, part)
        if inspect.ismodule(obj):  # `torch.nn.functional.torch.load`: a way around the lists
            raise AttributeError(part)
    return obj


def _resolve_within(target: str, module: str) -> Any | None:
    """The object `target` names, when it lies in `module` (one of torch's own); None when it
    does not, or does not exist."""
    if not target.startswith(module + "."):
        return None
    rest = target[len(module) + 1 :].split(".")
    # a submodule (torch.nn.modules.loss.MSELoss): import the package path as far as it exists, then attributes
    for cut in range(len(rest) - 1, -1, -1):
        try:
            return _import_attr(".".join([module, *rest[:cut]]), rest[cut:])
        except ImportError:
            continue
        except AttributeError:
            return None
    return None


def _torch_class(target: str, module: str, base: Any) -> bool:
    """`target` is a class of torch's, found in `module`, derived from `base`."""
    obj = _resolve_within(target, module)
    return inspect.isclass(obj) and issubclass(obj, base) and obj.__module__.startswith("torch.")


def why_allowed(target: str, key: str) -> str | None:
    """What `target`, to be built at `key` (`model._target_`, `hydra.callbacks.x._target_`, a
    logging handler's `class`), is in the slot's list; None when the slot does not take it."""
    target = renamed(target)  # a run saved before a module moved names it as it was then
    slot = key.rsplit(".", 1)[0]
    if key.endswith(".class") and re.fullmatch(r"hydra\.(job|hydra)_logging\.handlers\.[^.]+", slot):
        return "a logging handler" if target in LOGGING_HANDLERS else None
    if key.endswith(".class") and re.fullmatch(r"hydra\.(job|hydra)_logging\.formatters\.[^.]+", slot):
        return "a logging formatter" if target == "logging.Formatter" else None
    if not key.endswith("._target_"):
        return None
    ships = shipped()
    if slot in GROUP_SLOTS and target in ships[slot]:
        return f"a {slot} option in conf/{slot}/"
    if re.fullmatch(r"hydra\.callbacks\.[^.]+", slot) and target in ships["hydra.callbacks"]:
        return "nettrain's Hydra callback"
    if slot in ("hydra.launcher", "hydra.sweeper") and target in HYDRA_PLUGINS:
        return "a Hydra launcher or sweeper"
    if slot == "hydra.sweeper.sampler" and target in OPTUNA_SAMPLERS:
        return "an Optuna sampler"
    if slot in ("optimizer", "scheduler", "loss") and target.startswith("torch."):
        import torch

        if slot == "optimizer" and _torch_class(target, "torch.optim", torch.optim.Optimizer):
            return "a torch.optim optimizer"
        schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if slot == "scheduler" and _torch_class(target, "torch.optim.lr_scheduler", schedulers):
            return "a torch.optim.lr_scheduler scheduler"
        if slot == "loss" and _torch_class(target, "torch.nn", torch.nn.modules.loss._Loss):
            return "a torch.nn loss"
    return None


def never(target: str) -> bool:
    """Targets refused from files even when the user trusts them (see :data:`NEVER`)."""
    return any(fnmatch.fnmatchcase(target, pattern) for pattern in NEVER)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


# settings of a run's saved config that send or write the run's data outside the run folder when it
# is resumed or re-run: the user's to choose (where the decoded-image cache and a download go,
# data.cache_dir and data.root, stay the file's: they write data nettrain decoded or fetched, in
# files of its own naming, and a run's own data settings are needed to evaluate it)
PLACES = {"logger.mlflow.uri": "where MLflow writes or sends the run's config and metrics"}


def places_chosen(config: Any, source: str, given: Iterable[str] = ()) -> list[str]:
    """One line per setting of :data:`PLACES` that `config` (read from `source`) sets to other
    than its default (null or false) and the command line (`given`: its keys) does not."""
    given = set(given)
    found = []
    for key, what in PLACES.items():
        value = OmegaConf.select(config, key, default=None, throw_on_missing=False)
        if value not in (None, False) and key not in given:
            found.append(
                f"{key}={_short(value)} in {source}: {what}, outside the run folder, is yours to choose, not a "
                f"file's; if it is yours, give it on the command line ({key}=...)"
            )
    return found


def given_keys(overrides: Iterable[str]) -> list[str]:
    """The keys the command line sets (`key=value`, `+key=value`)."""
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]


def problems(
    config: Any, source: str, trusted: Iterable[str] = (), trust_all: bool = False, given: Iterable[str] | None = None
) -> list[str]:
    """One line per thing in `config` (read from `source`) that nettrain will not build: an
    interpolation a file may not hold, or a `_target_` its slot does not take (checked where Hydra
    would build it, references followed).

    `trusted`: fnmatch patterns the user allowed (trust_targets=[...]); `trust_all`: the user
    trusts the whole file (--trust). Neither lifts :data:`NEVER` nor the interpolation rule.
    `given`: the keys the command line sets, when the file is a run's saved config to resume or
    re-run: then where it would send the run's data (:data:`PLACES`) is checked too."""
    plain = OmegaConf.to_container(config, resolve=False) if isinstance(config, (DictConfig, ListConfig)) else config
    found = interpolation_problems(plain, source)
    if found:  # nothing is resolved while a value could build something on resolving
        return found
    if not isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.create(config)
    found = reinterpolations(config, source)
    if found:
        return found
    trusted = list(trusted)
    for key, target in targets(resolved_view(config)):
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
                f"{key}={target!r} in {source}: {_what_slot_takes(key)}, and this could run any code. If you "
                f"trust this file, allow it deliberately: trust_targets=[{target}] on the command line "
                "(nettrain-eval, -predict, -export: --trust)"
            )
    if given is not None and not trust_all:
        found += places_chosen(config, source, given)
    return found


def _what_slot_takes(key: str) -> str:
    """What a config read from a file may build at `key`, for the message refusing something else."""
    slot = key.rsplit(".", 1)[0]
    takes = {
        "model": "the model options in conf/model/",
        "data": "the data options in conf/data/",
        "optimizer": "the options in conf/optimizer/ or a torch.optim optimizer",
        "scheduler": "the options in conf/scheduler/ or a torch.optim.lr_scheduler scheduler",
        "loss": "a torch.nn loss",
        "hydra.launcher": "Hydra's launchers and those of its plugins",
        "hydra.sweeper": "Hydra's sweepers and those of its plugins",
        "hydra.sweeper.sampler": "Optuna's samplers",
    }
    if slot in takes:
        return f"from a file, {slot} takes only {takes[slot]}"
    if re.fullmatch(r"callbacks\[\d+\]", slot):
        return "nettrain ships no callbacks: from a file, callbacks build only what you allow"
    if re.fullmatch(r"hydra\.callbacks\.[^.]+", slot):
        return "from a file, hydra.callbacks takes only the callbacks conf/train.yaml sets"
    if "_logging." in slot:
        return f"from a file, Hydra's logging takes only these handlers: {', '.join(LOGGING_HANDLERS)}"
    return f"nettrain builds nothing at {slot} from a file"


def check(
    config: Any, source: str, trusted: Iterable[str] = (), trust_all: bool = False, given: Iterable[str] | None = None
) -> None:
    """Raise UntrustedTargetError listing everything in `config` nettrain will not build (:func:`problems`)."""
    found = problems(config, source, trusted, trust_all, given)
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
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    found: list[str] = []
    for override in parsed:
        key = override.key_or_group
        value = override.value()
        if key.lstrip("+~") == "trust_targets":
            found.extend(str(v) for v in (value if isinstance(value, list) else [value]))
        elif key.endswith("_target_") and isinstance(value, str):
            found.append(value)
        elif isinstance(value, (dict, list)):  # callbacks='[{_target_: mymod.Cb}]': the targets inside
            found.extend(str(v) for k, v in targets(value) if k.endswith("_target_") and isinstance(v, str))
    return found
