"""The run's folder: what Hydra records there, and an earlier run's results set aside.

Each run writes only inside its own folder (Hydra's `hydra.run.dir`, or a sweep job's folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from nettrain.files import timestamp


def hydra_output_subdir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf.errors import MissingMandatoryValue

        hc = HydraConfig.get()
        output_dir = hc.runtime.output_dir
    except (ValueError, MissingMandatoryValue):  # not running under Hydra (a composed config has no runtime)
        return None
    return Path(output_dir) / hc.output_subdir if hc.output_subdir else None


def rerun_source() -> Path | None:
    """The --config-dir a re-run composed its primary config from, if any."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf.errors import MissingMandatoryValue

        sources = HydraConfig.get().runtime.config_sources
    except (ValueError, MissingMandatoryValue):
        return None
    for source in sources:
        if source.provider == "command-line" and source.schema == "file":
            return Path(source.path)
    return None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def set_aside_old_results(output_dir: Path, reporter) -> None:
    """A fresh run in a folder that holds an earlier run's results (a failed sweep job run again,
    a reused hydra.run.dir) moves them to previous-<time>/ first: nothing is lost, and resume can
    never pick up the other run's checkpoints."""
    old = [name for name in ("checkpoints", "metrics.csv", "plots", "summary.json") if (output_dir / name).exists()]
    if not old:
        return
    aside = output_dir / f"previous-{timestamp()}"
    aside.mkdir(parents=True)
    for name in old:
        os.replace(output_dir / name, aside / name)
    reporter.note(f"an earlier run's results were in {output_dir}; moved to {aside.name}/")
