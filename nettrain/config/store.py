"""What Hydra needs before it composes nettrain's config: the schema, stored as `nettrain_schema`
for conf/train.yaml's defaults list, and the resolvers the config files call."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from nettrain.config import help as help_page
from nettrain.config.schema import TrainConfig


def register_schema() -> None:
    """Make the schema available to conf/train.yaml's defaults list as `nettrain_schema`, and
    the `${nettrain_help:}` resolver its `hydra.help.template` calls (nettrain/config/help.py)."""
    store = ConfigStore.instance()
    if "nettrain_schema.yaml" not in store.repo:  # once a process: building it from the dataclasses takes ~50 ms
        store.store(name="nettrain_schema", node=TrainConfig)
    help_page.register()
    # conf/hydra/launcher/slurm.yaml: one task per GPU, and one for a CPU-only job
    OmegaConf.register_new_resolver("nettrain.at_least_one", lambda n: max(1, int(n or 0)), replace=True)
