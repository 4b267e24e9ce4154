"""One exit status for bad input: Hydra's own composition errors become nettrain's (exit 2).

Hydra reports an unknown key, an unknown group option, a value of the wrong type or an override
that does not parse with its own text and exit status 1, which a script cannot tell from a run
that failed. :func:`composition_errors_exit_2` wraps Hydra's config composition for one command
so that each of these ends like every other invalid config: one `Error: Invalid config:` message
naming the key, the value and what is allowed (the closest known key for a typo, the options of
a group, which optimizer options have a setting), and exit status 2. Run configs are also
validated (nettrain.config.schema.problems) right after composing, before Hydra creates the run folder,
so a rejected command leaves no empty folder behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra._internal.hydra import Hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import configure_log
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

import nettrain
from nettrain.config import trust
from nettrain.config.schema import TrainConfig, flatten, problems
from nettrain.errors import BadInput, CallbackError, ConfigError, DataError, UntrustedTargetError
from nettrain.run import launch
from nettrain.run.checkpoint import NAMES, verify_checkpoint
from nettrain.run.folder import RunWriter, in_multirun, refuse_symlinks, remove_if_unused, unsafe_run_dir
from nettrain.run.resume import saved_config_problems, saved_hydra_folder
from nettrain.run.summary import RunStatus, write_failure

# options of Hydra's plugin packages, and the nettrain extra that installs each (pyproject.toml)
PLUGIN_EXTRAS = {
    "hydra/launcher/joblib": "sweep",
    "hydra/sweeper/optuna": "sweep",
    "hydra/launcher/submitit_local": "slurm",
    "hydra/launcher/submitit_slurm": "slurm",
}
INSPECT_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--package", "-p")


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _override_text(overrides: list[str], key: str) -> str:
    for text in reversed(overrides):  # the last one wins, as in Hydra
        if text.lstrip("+~").split("=", 1)[0] == key:
            return _short(text)
    return key


def _group_options(hydra: Any, group: str) -> list[str]:
    try:
        return sorted(hydra.config_loader.get_group_options(group))
    except Exception:  # noqa: BLE001 - only for a hint
        return []


def _option_keys(hydra: Any, group: str) -> dict[str, set[str]]:
    """Each option of `group` and the keys of its config (a hint's material: sgd -> momentum, ...).

    Read from each option's file through Hydra's config repository (the same search path as the
    run's): a group node is typed Any in the schema, so its keys are its file's. Composing the
    whole run config for each option instead took ~0.4 s an option, 4 s for a typo's message."""
    found = {}
    for option in _group_options(hydra, group):
        try:
            loaded = hydra.config_loader.repository.load_config(f"{group}/{option}")
        except Exception:  # noqa: BLE001 - only for a hint
            continue
        if loaded is not None and isinstance(loaded.config, DictConfig):
            found[option] = {str(key) for key in loaded.config if key != "defaults"}
    return found


def _options_with_key(hydra: Any, group: str, key: str) -> list[str]:
    """The options of `group` whose config has `key` (e.g. the optimizers with momentum)."""
    return [option for option, keys in _option_keys(hydra, group).items() if key in keys]


def _group_keys(hydra: Any, group: str) -> list[str]:
    """`group.key` for every key of every option of `group` (a hint for a key of another option)."""
    return sorted({f"{group}.{key}" for keys in _option_keys(hydra, group).values() for key in keys})


def _known_keys(hydra: Any, config_name: str | None, overrides: Sequence[str] = ()) -> list[str]:
    """Every key of the config composed with the command's group choices (optimizer=sgd: sgd's
    keys, not the default option's); with the defaults where those do not compose."""
    choices = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0] and not o.startswith(("+", "~"))]
    cfg = None
    for tried in dict.fromkeys((tuple(choices), ())):
        try:
            cfg = hydra.config_loader.load_configuration(
                config_name=config_name, overrides=list(tried), run_mode=RunMode.RUN
            )
            break
        except Exception:  # noqa: BLE001 - only for a hint
            continue
    if cfg is None:
        return []
    plain = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(plain, dict):
        return []
    plain.pop("hydra", None)
    keys = set(flatten(plain))
    for key in list(keys):  # sections too (early_stopping, regularization), for a misspelt one
        parts = key.split(".")
        keys.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(keys)


OPTION_GROUPS = ("optimizer", "scheduler", "model", "data", "regularization")


def _closest(key: str, known: list[str]) -> str | None:
    """The known key closest to `key`: among its siblings (optimizer.momentun -> optimizer.momentum,
    never a sibling that merely shares the section's name), else among every key (a misspelt section)."""
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known if parent and k.rpartition(".")[0] == parent]
    if siblings:
        close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
        return f"{parent}.{close[0]}" if close else None
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key(hydra: Any, config_name: str | None, overrides: list[str], key: str) -> str:
    text = _override_text(overrides, key)
    group, _, leaf = key.partition(".")
    grouped = bool(leaf) and "." not in leaf and group in OPTION_GROUPS
    if grouped:
        chosen = _chosen_option(overrides, group, hydra, config_name)
        having = _options_with_key(hydra, group, leaf)
        if chosen and having:
            return (
                f"{text}: {group}={chosen} has no {leaf}; the {group} options with {leaf}: "
                f"{', '.join(having)} (e.g. {group}={having[0]} {_short(text)})"
            )
    close = _closest(key, _known_keys(hydra, config_name, overrides))
    if close is None and grouped:  # a typo of a key that another option has (adam: optimizer.momentun)
        elsewhere = _closest(key, _group_keys(hydra, group))
        having = _options_with_key(hydra, group, elsewhere.partition(".")[2]) if elsewhere else []
        if elsewhere and having:
            chosen = _chosen_option(overrides, group, hydra, config_name)
            return (
                f"{text}: unknown key {key!r}; did you mean {elsewhere}? {group}={chosen} has no "
                f"{elsewhere.partition('.')[2]}; the {group} options with it: {', '.join(having)}"
            )
    hint = f"did you mean {close}?" if close else "see `nettrain-train --help` for the settings"
    return f"{text}: unknown key {key!r}; {hint}"


def _chosen_option(overrides: list[str], group: str, hydra: Any, config_name: str | None) -> str | None:
    for text in reversed(overrides):
        name, _, value = text.partition("=")
        if name.lstrip("+~") == group:
            return value

    try:
        cfg = hydra.config_loader.load_configuration(config_name=config_name, overrides=[], run_mode=RunMode.RUN)
        return str(cfg.hydra.runtime.choices.get(group))
    except Exception:  # noqa: BLE001
        return None


def explain(exc: BaseException, hydra: Any, config_name: str | None, overrides: list[str]) -> list[str] | None:
    """nettrain's problem lines for one of Hydra's composition errors; None for any other error."""
    if isinstance(exc, OverrideParseException):
        first = str(exc).splitlines()[0]
        if any("=~" in o for o in overrides):
            return [
                f"cannot parse the overrides ({first}); a value starting with ~ needs quotes: "
                "'data.root=\"~/datasets\"' (or write $HOME/datasets); nettrain expands ~ in path keys"
            ]
        return [
            f"cannot parse the overrides ({first}); each is key=value, and values with spaces, "
            "brackets or special characters need quotes, e.g. 'data.root=\"~/my data\"'"
        ]
    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or ""
        if missing in PLUGIN_EXTRAS:  # an option a Hydra plugin brings, not installed
            group, _, plugin = missing.rpartition("/")
            return [
                f"{_override_text(overrides, group)}: needs Hydra's {plugin} plugin, which is not installed; "
                f'install the [{PLUGIN_EXTRAS[missing]}] extra: pip install "nettrain[{PLUGIN_EXTRAS[missing]}]"'
            ]
        if "/" in missing and exc.options:
            group, _, option = missing.rpartition("/")
            return [f"{group}={_short(option)}: no such {group} option; allowed: {', '.join(exc.options)}"]
        return [str(exc).splitlines()[0]]
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # Hydra looks for group/<name>.yaml
        for text in overrides:
            group, _, option = text.partition("=")
            if len(option) > 200 and "." not in group:
                allowed = ", ".join(_group_options(hydra, group.lstrip("+~"))) or "see nettrain-train --help"
                return [
                    f"{_short(text)}: no such {group} option (the name is {len(option)} characters); allowed: {allowed}"
                ]
        return None
    if not isinstance(exc, ConfigCompositionException):
        return None
    cause = exc.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        key = str(cause.full_key)
        for text in overrides:  # the whole key typed (early_stoping.patience, not early_stoping)
            typed = text.lstrip("+~").split("=", 1)[0]
            if typed.startswith(key + "."):
                key = typed
                break
        return [_unknown_key(hydra, config_name, overrides, key)]
    if isinstance(cause, ValidationError) and cause.full_key:
        key = str(cause.full_key)
        message = str(cause).splitlines()[0]
        return [f"{_override_text(overrides, key)}: wrong type for {key} ({_short(message, 120)})"]
    ambiguous = re.match(r"Ambiguous value for argument '([^=']+)=(.*)'$", str(exc).splitlines()[0])
    if ambiguous:  # a comma-separated value without brackets: Hydra's hint, for this key
        key, value = ambiguous.groups()
        return [
            f"{key}={_short(value)}: ambiguous value; a list needs brackets: '{key}=[{_short(value)}]'; "
            f"a string needs quotes: \"{key}='{_short(value)}'\"; to sweep over the values, add --multirun"
        ]
    return [str(exc).splitlines()[0]]


def _user_overrides(overrides: list[str]) -> list[str]:
    """The command line's own overrides, without those nettrain adds for resume (hydra.run.dir, ...)."""
    return [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.output_subdir="))]


def _shadowing_folder() -> str | None:
    if getattr(nettrain, "__file__", None) is None:  # a namespace package: a folder named nettrain
        return ", ".join(str(p) for p in getattr(nettrain, "__path__", []))
    return None


def _argv_value(argv: list[str], key: str) -> str | None:
    for arg in reversed(argv[1:]):
        name, sep, value = arg.partition("=")
        if sep and name.lstrip("+") == key:
            return value.strip("'\"")
    return None


def config_dir(argv: list[str]) -> str | None:
    """The folder `--config-dir DIR` (`--config-dir=DIR`, `-cd DIR`) names, if any."""
    for i, arg in enumerate(argv[1:], start=1):
        for flag in ("--config-dir", "-cd"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return None


def from_saved_run(argv: list[str]) -> str | None:
    """The saved config this command composes from, when it re-runs a run folder
    (`--config-dir RUN_DIR/.hydra`, as `resume=RUN_DIR` does): a file, checked as data."""
    folder = config_dir(argv)
    return folder if folder is not None and saved_hydra_folder(folder) else None


def before_hydra(argv: list[str]) -> None:
    """Problems found from the command line alone, before Hydra makes a run folder: a folder named
    `nettrain` shadowing the package, an unusable `hydra.run.dir`, a SLURM launcher without SLURM.
    Also expands `~` in hydra.run.dir and hydra.sweep.dir (in place)."""
    _dashed_settings(argv)
    shadow = _shadowing_folder()
    if shadow:
        print(
            f"Error: a folder named nettrain ({shadow}) shadows the installed nettrain package: "
            "Python finds it first on the path (PYTHONPATH or the current folder). Remove its parent "
            "from PYTHONPATH, or run from another folder",
            file=sys.stderr,
        )
        sys.exit(2)
    for i, arg in enumerate(argv):
        for key in ("hydra.run.dir=", "hydra.sweep.dir="):
            if arg.startswith(key) and arg[len(key) :].startswith("~"):
                argv[i] = key + os.path.expanduser(arg[len(key) :])
    multirun = "-m" in argv or "--multirun" in argv
    run_dir = _argv_value(argv, "hydra.run.dir")
    if run_dir is not None and not multirun and "${" not in run_dir and not _argv_value(argv, "resume"):
        why = unsafe_run_dir(run_dir)
        if why:
            _report([why])
    _received_folders(argv, multirun)
    if any(arg.split("=", 1)[0] == "--experimental-rerun" for arg in argv[1:]):
        _report(
            [
                "--experimental-rerun: Hydra's re-run unpickles the file it is given, and a pickle can run "
                "any code; nettrain never unpickles a file. Re-run a run from its saved YAML instead: "
                "nettrain-train --config-dir RUN_DIR/.hydra --config-name config"
            ]
        )
    launcher = _argv_value(argv, "hydra/launcher")
    if multirun and launcher in ("slurm", "submitit_slurm") and shutil.which("sbatch") is None:
        _report(
            [
                f"hydra/launcher={launcher}: there is no `sbatch` (nor `srun`) command here, so no SLURM "
                "job can be submitted from this machine. Run the sweep on the cluster's login node, or "
                "try it on this machine with hydra/launcher=submitit_local"
            ]
        )


HYDRA_FLAGS = (
    *INSPECT_FLAGS,
    *("--version", "--run", "-r", "--multirun", "-m", "--shell-completion", "-sc", "--experimental-rerun"),
    *("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"),
)


def _dashed_settings(argv: list[str]) -> None:
    """`--epochs 3` (or `--epochs=3`, `--dry-run`) for a setting: nettrain-train takes key=value,
    so say `epochs=3` in one line (exit 2) instead of argparse's usage page."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    found = []
    args = argv[1:]
    for i, arg in enumerate(args):
        name, sep, value = arg.partition("=")
        if not name.startswith("--") or name in HYDRA_FLAGS:
            continue
        key = name[2:].replace("-", "_")
        if key.split(".")[0] not in known:
            continue
        if not sep:
            following = args[i + 1] if i + 1 < len(args) else ""
            # `--epochs 3` takes the next word; `--dry-run` (last, or before an option or an override) is true
            value = following if following and not following.startswith("-") and "=" not in following else "true"
        found.append(f"{key}={value} (not {arg}{'' if sep or value == 'true' else ' ' + value})")
    if found:
        print(
            f"Error: nettrain-train takes settings as key=value, not --options: write {'; '.join(found)}",
            file=sys.stderr,
        )
        sys.exit(2)


def _received_folders(argv: list[str], multirun: bool) -> None:
    """A run folder this command reads or writes into that may have come from someone else, checked
    before Hydra opens anything in it: a re-run's saved `.hydra/` (its run folder holds no symlink,
    its config.yaml is nettrain's as written), and the existing folder a sweep is launched into
    again (no symlink in any job folder, which Hydra would write `.hydra/*.yaml` through)."""
    saved = from_saved_run(argv)
    sweep_dir = _argv_value(argv, "hydra.sweep.dir") if multirun else None
    try:
        if saved is not None and not _argv_value(argv, "resume"):  # resume checked it already
            refuse_symlinks(Path(saved).expanduser().parent)
            found = saved_config_problems(Path(saved).expanduser() / "config.yaml")
            if found:
                _report(found, UntrustedTargetError)
        if sweep_dir is not None and "${" not in sweep_dir:
            refuse_symlinks(sweep_dir)
    except BadInput as exc:  # a file that does not parse, a link
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


def _report(found: list[str], kind: type[ConfigError] = ConfigError) -> None:
    print(f"Error: {kind(found)}", file=sys.stderr)
    sys.exit(2)  # SystemExit passes through Hydra's error handler: exit 2, not Hydra's 1


def unknown_top_level(cfg: Any) -> list[str]:
    """Keys added with `+key=value` that the schema does not have (they would be ignored)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {"hydra"}
    return [f"{key}: unknown key (added with +{key}=...); nettrain would ignore it" for key in cfg if key not in known]


@contextlib.contextmanager
def composition_errors_exit_2(argv: list[str]) -> Iterator[None]:
    """For one nettrain-train command: Hydra's composition errors and invalid run configs end with
    nettrain's message and exit 2, before any run folder is made. HYDRA_FULL_ERROR=1 keeps Hydra's."""
    original = Hydra.compose_config
    inspecting = any(arg.split("=")[0] in INSPECT_FLAGS for arg in argv[1:])

    def compose_config(self: Any, config_name: Any, overrides: list[str], run_mode: Any, *args: Any, **kwargs: Any):
        with_log = kwargs.pop("with_log_configuration", args[0] if args else False)
        args = args[1:]
        try:  # without logging: a saved config's log handlers are checked before they are built
            cfg = original(self, config_name, overrides, run_mode, False, *args, **kwargs)
        except Exception as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            found = explain(exc, self, config_name, list(overrides))
            if found is None:
                raise
            _report(found)
        if cfg.get("resume") or from_saved_run(argv):  # a run folder's saved config (resume, a re-run): data
            source = f"the run folder's saved config ({config_dir(argv)}/config.yaml)"
            own = _user_overrides(overrides)
            found = trust.problems(cfg, source, trust.trusted_from_overrides(own), given=trust.given_keys(own))
            if found:
                _report(found, trust.UntrustedTargetError)
        if run_mode == RunMode.RUN and not inspecting and os.environ.get("HYDRA_FULL_ERROR") != "1":
            found = unknown_top_level(cfg) + problems(cfg)
            if found:
                _report(found)
        if with_log:
            configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        return cfg

    Hydra.compose_config = compose_config  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.compose_config = original  # type: ignore[method-assign]


def kept_checkpoints() -> str:
    """'; the earlier checkpoints are intact (...)' for this process's run folder."""
    folder = Path(HydraConfig.get().runtime.output_dir) / "checkpoints"
    kept = []
    for name in NAMES:
        with contextlib.suppress(Exception):
            verify_checkpoint(folder / name)
            kept.append(name)
    if not kept:
        return "; no checkpoint had been written yet"
    return f"; the earlier checkpoints are intact ({', '.join(kept)} in {folder})"


def data_problem(exc: BaseException) -> str | None:
    """'Data: ...' in one line when `exc` comes from a DataError (nettrain/data: files missing or
    unreadable, a download that failed), which the builder reports as the data group's config error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DataError):
            return "Data: " + " ".join(str(seen).split()).replace(" )", ")")
        seen = seen.__cause__ or seen.__context__
    return None


def failed_run(exc: Exception, cfg: Any) -> None:
    """End a run that raised `exc` (inside its `except`): bad input (a BadInput: an invalid config,
    an unusable run folder, data or a checkpoint that cannot be read) is one message and exit 2,
    and a rejected config leaves no folder behind; a fault
    writing a file, or a callback's hook that raised, is one line naming it and the checkpoints kept, exit 1. In a multirun the
    failure is recorded in the job's summary.json and None returned, so the sweep goes on (not
    NaN: the Optuna sweeper fails on NaN; None marks the trial failed). Anything else propagates."""
    full_error, multirun = os.environ.get("HYDRA_FULL_ERROR") == "1", in_multirun()
    if isinstance(exc, BadInput) and not full_error:
        data = data_problem(exc)  # data that cannot be loaded (a failed download): not an invalid config
        print(f"{launch.rank_prefix()}Error: {data or exc}", file=sys.stderr)
        if multirun:  # one bad job must not take the sweep down; the summary records it
            first = data or (exc.problems[0] if isinstance(exc, ConfigError) else str(exc))
            write_failure(RunWriter(HydraConfig.get().runtime.output_dir), cfg, f"{type(exc).__name__}: {first}")
            return None
        if isinstance(exc, ConfigError) and not cfg.resume:
            remove_if_unused(HydraConfig.get().runtime.output_dir)  # a rejected config leaves no empty folder
        sys.exit(2)
    if isinstance(exc, CallbackError) and not (full_error or multirun):  # the user's hook raised: one line
        kept, run_dir = kept_checkpoints(), HydraConfig.get().runtime.output_dir
        again = "" if kept.startswith("; no checkpoint") else f"; continue it with nettrain-train resume={run_dir}"
        print(f"Error: {exc}{kept}{again}", file=sys.stderr)
        sys.exit(1)
    if isinstance(exc, OSError) and not (full_error or multirun):  # one line naming the file, and what is kept
        print(f"Error: {exc}{kept_checkpoints()}", file=sys.stderr)
        sys.exit(1)
    if multirun and not isinstance(exc, (BadInput, OSError)):  # a failed job; the sweep goes on
        print(f"Error: job failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    raise exc


def exit_for(summary: dict[str, Any]) -> float | None:
    """The end of a run that returned: a diverged run exits 3 (None in a multirun), an interrupted
    one 128 + the signal (a preempted SLURM job hands over to be requeued); a finished run returns
    its best validation loss, the objective a hyperparameter sweeper minimises."""
    if summary.get("status") == RunStatus.DIVERGED:  # a non-finite loss: a failed run
        print(f"Error: {summary['error']}", file=sys.stderr)
        return None if in_multirun() else sys.exit(3)
    if summary.get("status") == RunStatus.INTERRUPTED:
        if summary.get("signal") and summary["signal"] == launch.preemption_signal():
            launch.hand_over(summary["signal"])  # submitit requeues the job; it resumes from the checkpoint
        sys.exit(128 + (summary.get("signal") or signal.SIGINT))
    return summary["best_val_loss"]
