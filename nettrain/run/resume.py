"""Re-run and resume: a run's saved config as a config of its own, and what may change on resume.

- `make_rerunnable` turns Hydra's saved `.hydra/config.yaml` into a primary config, so
  `nettrain-train --config-dir RUN_DIR/.hydra --config-name config` re-runs a run faithfully.
- `resume_argv` turns `nettrain-train resume=RUN_DIR [overrides]` into exactly that re-run,
  pinned to the run's own folder.
- `load_resume_point` finds the newest valid checkpoint and refuses overrides that would change
  the run being resumed (`config_changes`). The settings that may change are those the schema
  marks `[resume: may change]` (nettrain/config/schema.py), read by `resume_safe_keys`.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nettrain.config.help import resume_safe_keys
from nettrain.config.renames import renamed, renamed_overrides, upgrade
from nettrain.config.schema import ADDED_OPTION_KEYS, flatten, matches, schema_config
from nettrain.errors import ConfigError, RunFolderError, UntrustedTargetError
from nettrain.files import timestamp, write_text
from nettrain.run import checkpoint as ckpt
from nettrain.run.folder import refuse_symlinks
from nettrain.run.summary import FINISHED, read_summary


def run_dir_of(resume: str) -> Path:
    """A run dir, or a checkpoint file inside RUN_DIR/checkpoints/ -> the run dir. A checkpoint's
    run dir is found from the path as given, not through a link at the file (or at checkpoints/):
    such a link belongs to the run folder, which refuse_symlinks then refuses."""
    path = Path(resume).expanduser()
    if path.is_file() or (path.is_symlink() and not path.is_dir()):
        return Path(os.path.abspath(path)).parent.parent.resolve()
    return path.resolve()


def schema_defaults() -> dict[str, Any]:
    """Every schema key's default, flattened (the groups' own keys, which the schema leaves open, excepted),
    and the group keys added since runs were saved (ADDED_OPTION_KEYS). A copy of what one process reads once."""
    return copy.deepcopy(_schema_defaults())


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    defaults = flatten(OmegaConf.to_container(schema_config()))
    return {**{key: value for key, value in defaults.items() if value != MISSING}, **ADDED_OPTION_KEYS}


def follows_epochs(a: dict, b: dict) -> bool:
    """True when the scheduler's T_max is the epochs (cosine's `T_max: ${epochs}`) before and after,
    in the flattened old and new configs: a resume with more epochs then stretches the cosine."""
    return (
        "scheduler.T_max" in a and a["scheduler.T_max"] == a.get("epochs") and b.get("scheduler.T_max") == b["epochs"]
    )


def config_changes(old: dict, new: dict, safe: tuple[str, ...] | None = None) -> list[str]:
    """'key: old -> new' for every resolved setting that differs, except the safe ones (by default
    those the schema marks `[resume: may change]`: resume_safe_keys). A key that
    the old run's config lacks (a setting added to nettrain since) counts as unchanged while it
    keeps its default; a T_max that follows the epochs may change with them."""
    safe = resume_safe_keys() if safe is None else safe
    a, b = flatten(old), flatten(new)
    defaults = schema_defaults()
    changed = []
    for key in sorted(set(a) | set(b)):
        if matches(key, safe) or (key == "scheduler.T_max" and follows_epochs(a, b)):
            continue
        if key not in a and key in defaults and b.get(key) == defaults[key]:
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            changed.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return changed


def finished_already(
    summary_path: Path, epochs: int, resume_from: Path | None = None, plain_config: dict | None = None
) -> dict[str, Any] | None:
    """The summary of a run that has nothing left to do at `epochs` (printing why), else None.
    Given the resumed checkpoint or run (`resume_from`) and the command's config, a setting that
    would change the run is refused here as when it resumes (`refused_changes`): a finished run
    does not ignore `lr=0.1` silently."""
    previous = read_summary(summary_path)
    if previous.get("status") not in FINISHED:
        return None
    found = []
    if previous.get("epochs_run", 0) > epochs:
        found.append(
            f"epochs={epochs}: the run already trained {previous['epochs_run']} epochs; "
            f"allowed: epochs >= {previous['epochs_run']} (a larger value trains longer)"
        )
    elif not (previous["stopped_early"] or previous["epochs_run"] >= epochs):
        return None  # it trains on: load_resume_point compares the config
    if resume_from is not None and plain_config is not None:
        old = finished_run_config(resume_from, summary_path.parent)
        found = (refused_changes(resume_from, old, plain_config) if old is not None else []) + found
    if found:
        raise ConfigError(found)
    how = (
        "it stopped early: early_stopping.patience ran out"
        if previous["stopped_early"]
        else f"it ran all {previous['epochs_run']} epochs; give a larger epochs=N to train longer"
    )
    print(
        f"{summary_path.parent} already finished ({previous['status']} after {previous['epochs_run']} "
        f"epochs); nothing to do: {how}."
    )
    return {**previous, "already_finished": True}


def finished_run_config(resume_from: Path, output_dir: Path) -> dict[str, Any] | None:
    """The config a finished run trained with: its checkpoint's (the one given, or the run's newest
    valid one), else its saved .hydra/config.yaml; None when neither can be read."""
    try:
        if resume_from.is_file():
            return ckpt.load_checkpoint(resume_from)["config"]
        return ckpt.newest_valid(output_dir / "checkpoints", report=lambda line: None)[1]["config"]
    except ckpt.CheckpointError:
        pass
    try:  # checkpoint.enabled=false: the config Hydra saved, already checked (saved_config_problems)
        saved = OmegaConf.load(output_dir / ".hydra" / "config.yaml")
        if not isinstance(saved, DictConfig):
            return None
        for key in ("defaults", "hydra"):  # Hydra's own settings resolve only inside Hydra
            saved.pop(key, None)
        container = OmegaConf.to_container(saved, resolve=True)
    except (OSError, ValueError, OmegaConfBaseException):
        return None
    return cast(dict[str, Any], upgrade(container)) if isinstance(container, dict) else None


def refused_changes(resume_from: Path, old: dict, new: dict) -> list[str]:
    """The problem line for the settings that differ from the resumed run and would change it (none: [])."""
    changes = config_changes(old, new)
    if not changes:
        return []
    return [
        f"resume={str(resume_from)!r}: these settings differ from the run being resumed "
        f"and would change it: {'; '.join(changes)}. Allowed to change on resume: "
        + ", ".join(s.rstrip(".") + ("*" if s.endswith(".") else "") for s in resume_safe_keys())
    ]


def load_resume_point(resume_from: Path, output_dir: Path, plain_config: dict, report) -> dict[str, Any]:
    """The newest valid checkpoint to resume (a file, or the best of a run's checkpoints/), after
    checking that the config changes nothing but the settings that are safe to change."""
    try:
        if resume_from.is_file():
            path, saved = resume_from, ckpt.load_checkpoint(resume_from)
        else:
            path, saved = ckpt.newest_valid(output_dir / "checkpoints", report=report.warn)
    except ckpt.CheckpointError as exc:
        raise ConfigError(
            [
                f"resume={str(resume_from)!r}: {exc}; allowed: a run dir with a valid "
                "checkpoints/last.pt, previous.pt or best.pt, or one such file"
            ]
        ) from None
    found = refused_changes(resume_from, saved["config"], plain_config)
    if found:
        raise ConfigError(found)
    report.note(
        f"resuming {output_dir} from {path.name}: epoch {saved['epoch']} done, "
        f"step {saved['progress']['step_in_epoch']} of the next"
    )
    old, new = flatten(saved["config"]), flatten(plain_config)
    if follows_epochs(old, new) and old["scheduler.T_max"] != new["epochs"]:
        report.note(
            f"scheduler.T_max follows epochs: {old['scheduler.T_max']} -> {new['epochs']}; the cosine goes on from "
            "the current learning rate and reaches eta_min at the new last epoch"
        )
    return saved


RERUN_DEFAULTS = ["nettrain_schema", "_self_"]  # the defaults list make_rerunnable writes


SAVED_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml", "provenance.json")  # what a run's .hydra/ holds


def saved_hydra_folder(config_dir: str | Path) -> bool:
    """`config_dir` is a run's saved Hydra folder (RUN_DIR/.hydra: a config.yaml, in a folder named
    .hydra or beside another file Hydra or nettrain writes there), not a config dir of the user's
    own: what is composed from it is a file's, checked as data."""
    folder = Path(config_dir).expanduser()
    if not (folder / "config.yaml").is_file():
        return False
    return folder.name == ".hydra" or any((folder / name).exists() for name in SAVED_FILES[1:])


def _planted(folder: Path) -> list[str]:
    """Entries of a run's .hydra/ that Hydra could load by name when it composes from that folder
    (it is first on the search path): a config other than nettrain's and Hydra's own files, or a
    folder other than a resumed session's record, i.e. a schema or group option put there."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            if not entry.name.startswith("resume-"):
                found.append(
                    f"{entry}/: a folder of config options in a run's .hydra/ (nettrain writes only resume-*/ there)"
                )
        elif entry.suffix in (".yaml", ".yml") and entry.name not in SAVED_FILES:
            found.append(f"{entry}: a config file in a run's .hydra/ that Hydra would load by its name")
    if found:
        found[-1] += "; nettrain composes a run folder's saved config with nothing planted beside it. Remove it"
    return found


_WROTE = "allowed: the config.yaml nettrain wrote for this run"


def saved_config_problems(config_yaml: Path) -> list[str]:
    """What in a run folder's saved `.hydra/config.yaml` nettrain did not write there, before Hydra
    composes it: a file that does not parse, a defaults list other than make_rerunnable's (it
    would pull in options from the folder), and a `hydra:` section that differs from nettrain's own
    (callbacks, logging, search path, environment: all of it runs or loads something). A file that
    does not parse raises a ConfigError."""
    try:
        saved = OmegaConf.to_container(OmegaConf.load(config_yaml), resolve=False)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{config_yaml}: not valid YAML ({exc.problem}{where}); {_WROTE}"]) from None
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError([f"{config_yaml}: not readable ({' '.join(str(exc).split())[:160]}); {_WROTE}"]) from None
    if not isinstance(saved, dict):
        raise ConfigError([f"{config_yaml}: holds a {type(saved).__name__}, not a config; {_WROTE}"])
    found = _planted(config_yaml.parent)
    defaults = saved.get("defaults", RERUN_DEFAULTS)
    if defaults != RERUN_DEFAULTS:
        found.append(
            f"defaults={defaults!r} in {config_yaml}: nettrain writes {RERUN_DEFAULTS!r} there; another "
            "defaults list would pull in options from the run folder"
        )
    own = flatten({"hydra": _own_hydra_section()})
    for key, value in flatten({"hydra": saved.get("hydra") or {}}).items():
        if key not in own:
            found.append(f"{key}={value!r} in {config_yaml}: not one of nettrain's own Hydra settings")
        elif value != own[key] and renamed(value) != own[key]:
            found.append(f"{key}={value!r} in {config_yaml}: nettrain writes {own[key]!r} there")
    if found:
        found[-1] += (
            "; a run folder's Hydra settings are nettrain's own, and the file was changed after the run "
            "wrote it. Give Hydra settings of your own on the command line (hydra.KEY=VALUE)"
        )
    return found


def _own_hydra_section() -> dict[str, Any]:
    """conf/train.yaml's `hydra:` section, as make_rerunnable writes it into a run's config.yaml."""
    primary = OmegaConf.create(files("nettrain.conf").joinpath("train.yaml").read_text(encoding="utf-8"))
    return cast(dict[str, Any], OmegaConf.to_container(primary.hydra, resolve=False))


@functools.cache
def _rerun_parts() -> tuple[str, str]:
    """The YAML make_rerunnable puts before and after the saved config: the defaults list, and
    nettrain's own `hydra:` section."""
    return OmegaConf.to_yaml({"defaults": RERUN_DEFAULTS}), OmegaConf.to_yaml({"hydra": _own_hydra_section()})


def make_rerunnable(config_yaml: Path) -> None:
    """Turn Hydra's saved config.yaml into a primary config of its own: the schema in its defaults
    list, and nettrain's output and logging settings, so that
    `nettrain-train --config-dir RUN_DIR/.hydra --config-name config` re-runs it faithfully.

    The file is Hydra's YAML of the composed config, whose top level has neither `defaults` nor
    `hydra`: the defaults list goes before it and the `hydra:` section after it, as text (the
    same YAML as merging the three and printing the merge, without parsing the file again)."""
    text = config_yaml.read_text(encoding="utf-8")
    if re.search(r"^defaults:", text, re.M):
        return
    head, tail = _rerun_parts()
    write_text(
        config_yaml,
        "# The composed config of this run. Re-run it with:\n"
        f"#   nettrain-train --config-dir {config_yaml.parent} --config-name config\n" + head + text + tail,
    )


def resume_argv(argv: list[str]) -> list[str]:
    """`nettrain-train resume=RUN_DIR [overrides]` -> compose that run's saved config, in its folder.

    This is Hydra's re-run (`--config-dir RUN_DIR/.hydra --config-name config`) with the run dir
    pinned to RUN_DIR; the resumed session's own Hydra files go to RUN_DIR/.hydra/resume-<time>/."""
    args = argv[1:]
    resume = [a for a in args if a.startswith("resume=")]
    if not resume or "-m" in args or "--multirun" in args:
        return argv
    value = resume[-1].split("=", 1)[1]
    run_dir = run_dir_of(value)
    saved = run_dir / ".hydra" / "config.yaml"
    if not value or not saved.is_file():
        print(
            f"Error: resume={value!r}: not a nettrain run folder or checkpoint (no {saved}); "
            "allowed: a run dir such as outputs/2026-01-01/12-00-00-000000, or a checkpoint in its "
            "checkpoints/ folder",
            file=sys.stderr,
        )
        sys.exit(2)

    try:  # before anything in the run folder is read (a stat aside) or written: no link in it is followed
        refuse_symlinks(run_dir)
        found = saved_config_problems(saved)  # a file that does not parse raises
    except (RunFolderError, ConfigError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    if found:
        print(f"Error: {UntrustedTargetError(found)}", file=sys.stderr)
        sys.exit(2)
    return [
        argv[0],
        "--config-dir",
        str(saved.parent),
        "--config-name",
        "config",
        *args,
        f"hydra.run.dir='{run_dir}'",
        f"hydra.output_subdir=.hydra/resume-{timestamp()}",
    ]


def with_renames(argv: list[str]) -> list[str]:
    """A command that composes a run folder's saved config (`resume=`, or `--config-dir RUN/.hydra`)
    with an override for each `_target_` that config names by an old name (config/renames.py):
    a run saved before a module moved resumes and re-runs as it was. Other commands are unchanged."""
    flags = [i for i, arg in enumerate(argv) if arg in ("--config-dir", "-cd")]
    if not flags or flags[-1] + 1 >= len(argv) or not saved_hydra_folder(argv[flags[-1] + 1]):
        return argv
    try:
        saved = OmegaConf.to_container(OmegaConf.load(Path(argv[flags[-1] + 1]) / "config.yaml"), resolve=False)
    except Exception:  # noqa: BLE001 - an unreadable file is reported where it is checked
        return argv
    given = {arg.split("=", 1)[0] for arg in argv[1:] if "=" in arg}
    extra = [o for o in renamed_overrides(saved) if o.split("=", 1)[0] not in given] if isinstance(saved, dict) else []
    return [*argv, *extra]
