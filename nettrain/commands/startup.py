"""Start-up: compose the run config once, not twice, and draw `--help` without scanning every group.

For every command, Hydra 1.3 first composes the whole config only to read `hydra.mode` (run or
multirun; `Hydra.get_mode`), then composes it again for the run. nettrain's configs never set
`hydra.mode`, so when the command line cannot set it either, the first composition can only
answer "not set", which Hydra then treats as a single run. For those commands the probe is
skipped: a tenth of the time between `import torch` and the first step on a CPU.

For `--help`, Hydra lists the options of every config group (its own and the app's) for the
page's `$HYDRA_CONFIG_GROUPS` and `$APP_CONFIG_GROUPS`, composing each group's options to do
so: most of the help's time. nettrain's page (nettrain/config/help.py) lists the groups itself,
so a page that names neither placeholder is drawn without that scan; `--hydra-help`, and a help
template of the user's own that lists the groups, are Hydra's as before.
"""

from __future__ import annotations

import contextlib
import string
from argparse import ArgumentParser
from collections.abc import Iterator
from typing import Any

from hydra._internal.hydra import Hydra
from omegaconf import DictConfig, OmegaConf

# Arguments that can make the mode something else, or choose a primary config of the user's own.
_MAY_SET_MODE = ("-m", "--multirun", "hydra.mode", "+hydra.mode", "--config-name", "-cn", "--config-dir", "-cd")


def mode_is_run(argv: list[str]) -> bool:
    """True when the command is certainly a single run of nettrain's own primary config."""
    return not any(
        arg == flag or arg.startswith((flag + "=", flag + " ")) for arg in argv[1:] for flag in _MAY_SET_MODE
    )


@contextlib.contextmanager
def single_composition(argv: list[str]) -> Iterator[None]:
    """While Hydra starts the app: skip its mode probe when `argv` is a plain single run, and its
    scan of every config group when the help page does not show it."""
    probe, help_page = getattr(Hydra, "get_mode", None), getattr(Hydra, "get_help", None)
    if probe is not None and mode_is_run(argv):
        Hydra.get_mode = lambda self, config_name, overrides: None  # type: ignore[method-assign]
    if help_page is not None:
        Hydra.get_help = _help_without_group_scan(help_page)  # type: ignore[method-assign]
    try:
        yield
    finally:
        if probe is not None:
            Hydra.get_mode = probe  # type: ignore[method-assign]
        if help_page is not None:
            Hydra.get_help = help_page  # type: ignore[method-assign]


def _help_without_group_scan(hydras: Any) -> Any:
    """Hydra.get_help, with the group lists made only for a template that shows them."""

    def get_help(self: Any, help_cfg: DictConfig, cfg: DictConfig, args_parser: ArgumentParser, resolve: bool) -> str:
        template = help_cfg.template  # nettrain's page is rendered here, once
        if "CONFIG_GROUPS" in template:
            return hydras(self, help_cfg, cfg, args_parser, resolve)
        return string.Template(template).substitute(
            FLAGS_HELP=self.format_args_help(args_parser),
            HYDRA_CONFIG_GROUPS="",
            APP_CONFIG_GROUPS="",
            CONFIG=OmegaConf.to_yaml(cfg, resolve=resolve),
        )

    get_help.__name__ = "get_help"
    return get_help
