"""`from nettrain import fit`: a run from Python (a notebook, a script), as `nettrain-train` runs it.

    summary = fit("optimizer=sgd", "lr=0.05", "epochs=3")            # overrides, as on the command line
    summary = fit(cfg)                                               # a config composed already
    summary = fit("epochs=3", output_dir="runs/first")               # a run folder of your choice
    summary = fit("resume=runs/first", "epochs=6")                   # continue a run (its saved config)

The config is composed with Hydra's compose API from nettrain's packaged config (or, for
`resume=RUN_DIR`, from that run's saved `.hydra/config.yaml`, checked as data as the command
checks it), then validated: a bad override raises a ConfigError (a BadInput) whose message is
the one `nettrain-train` prints, never SystemExit. The run folder is `output_dir`, else
`hydra.run.dir` (outputs/<date>/<time> as for the command), relative to the working directory;
it gets the same files as a command's run (`.hydra/config.yaml`, so `nettrain-train resume=` and
the re-run work on it, and train.log).

Hydra's global state is left as it was found: a GlobalHydra already initialised (inside a Hydra
app, or a notebook that composed a config itself) is put back afterwards, so fit runs any number
of times in one process. The return value is the run's summary as a dict: summary.json's content.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf, open_dict

from nettrain.commands.errors import explain, unknown_top_level
from nettrain.commands.train import train
from nettrain.config import trust
from nettrain.config.schema import problems
from nettrain.config.store import register_schema
from nettrain.errors import ConfigError, UntrustedTargetError
from nettrain.files import write_text
from nettrain.run.folder import RunWriter, no_follow_log_files, refuse_symlinks, unsafe_run_dir
from nettrain.run.resume import make_rerunnable, run_dir_of, saved_config_problems

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, as in a command's train.log


def fit(*overrides: str | DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train as `nettrain-train OVERRIDES` would, in this process; return the run's summary (a dict,
    summary.json's content). `overrides`: `key=value` strings, or one composed DictConfig.
    `output_dir`: the run folder (default: `hydra.run.dir`, outputs/<date>/<time>; for
    `resume=RUN_DIR`, that run's folder). Bad input raises a BadInput naming the key."""
    if len(overrides) == 1 and isinstance(overrides[0], DictConfig):
        cfg, given, default_dir = _job_config(overrides[0])
    elif all(isinstance(o, str) for o in overrides):
        given = [str(o) for o in overrides]
        cfg, default_dir = compose_run_config(given)
    else:
        raise TypeError("fit takes key=value strings, or one composed DictConfig (fit(cfg))")
    if cfg.get("resume"):
        folder = Path(output_dir) if output_dir is not None else run_dir_of(cfg.resume)
    else:
        folder = Path(output_dir if output_dir is not None else default_dir or _now_run_dir())
        why = unsafe_run_dir(folder)
        if why:
            raise ConfigError([why if output_dir is None else why.replace("hydra.run.dir", "output_dir", 1)])
        RunWriter(folder).run(_save_config, cfg, given, folder)
    with _hydra_job_cleared(), _logged_to(folder / "train.log"):
        return train(cfg, output_dir=folder)


def compose_run_config(overrides: Sequence[str]) -> tuple[DictConfig, str | None]:
    """(the run config `nettrain-train OVERRIDES` would run, its resolved hydra.run.dir), composed
    and validated; raises the ConfigError the command would print (UntrustedTargetError for a
    resumed run's saved config that names code nettrain does not run unasked)."""
    overrides = list(overrides)
    register_schema()
    resume = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("resume=")), None)
    saved = _saved_config(resume) if resume else None
    with _own_global_hydra():
        if saved is None:
            context: Any = initialize_config_module("nettrain.conf", version_base="1.3")
        else:
            context = initialize_config_dir(str(saved.parent), version_base="1.3")
        with context:
            name = "train" if saved is None else "config"
            try:
                cfg = compose(name, overrides=overrides, return_hydra_config=True)
            except Exception as exc:
                found = explain(exc, GlobalHydra.instance().hydra, name, overrides)
                if found is None:
                    raise
                raise ConfigError(found) from None
    if saved is not None:
        source = f"the run folder's saved config ({saved})"
        found = trust.problems(cfg, source, trust.trusted_from_overrides(overrides), given=trust.given_keys(overrides))
        if found:
            raise UntrustedTargetError(found)
    found = unknown_top_level(cfg) + problems(cfg)
    if found:
        raise ConfigError(found)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir", default=None) if saved is None else None
    with open_dict(cfg):
        del cfg["hydra"]  # the job's config, as a command's task function gets it
    return cfg, run_dir


def _saved_config(resume: str) -> Path:
    """The saved `.hydra/config.yaml` of the run `resume` names, checked as the command checks it."""
    run_dir = run_dir_of(resume)
    saved = run_dir / ".hydra" / "config.yaml"
    if not resume or not saved.is_file():
        raise ConfigError(
            [
                f"resume={resume!r}: not a nettrain run folder or checkpoint (no {saved}); allowed: a run dir "
                "such as outputs/2026-01-01/12-00-00-000000, or a checkpoint in its checkpoints/ folder"
            ]
        )
    refuse_symlinks(run_dir)
    found = saved_config_problems(saved)
    if found:
        raise UntrustedTargetError(found)
    return saved


def _job_config(cfg: DictConfig) -> tuple[DictConfig, list[str], str | None]:
    """A config composed by the caller: (the job's config, no overrides, its hydra.run.dir if it
    holds Hydra's section, composed with return_hydra_config=True)."""
    if "hydra" not in cfg:
        return cfg, [], None
    run_dir = OmegaConf.select(cfg, "hydra.run.dir", default=None)
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, [], run_dir


def _now_run_dir() -> str:
    """outputs/<date>/<time>, as conf/train.yaml's hydra.run.dir names a command's run folder."""
    return datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S-%f")


def _save_config(cfg: DictConfig, overrides: list[str], folder: Path) -> None:
    """`.hydra/config.yaml` and `overrides.yaml`, as Hydra writes them for a command's run, the
    config made re-runnable (nettrain-train --config-dir RUN/.hydra, resume=RUN)."""
    record = folder / ".hydra"
    write_text(record / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(record / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    make_rerunnable(record / "config.yaml")


@contextlib.contextmanager
def _own_global_hydra() -> Iterator[None]:
    """Compose with a GlobalHydra of nettrain's own; the caller's (if any) is put back afterwards."""
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


@contextlib.contextmanager
def _hydra_job_cleared() -> Iterator[None]:
    """No HydraConfig during the run (fit called inside a Hydra app is not that app's job); the
    caller's is put back afterwards."""
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = None
    try:
        yield
    finally:
        HydraConfig.instance().cfg = saved


@contextlib.contextmanager
def _logged_to(path: Path) -> Iterator[None]:
    """nettrain's log lines in the run's train.log, as a command's Hydra logging writes them; the
    console shows what the Reporter prints, nothing twice."""
    log = logging.getLogger("nettrain")
    level = log.level
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        no_follow_log_files(path.parent)  # opened with O_NOFOLLOW: no line through a link
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()
