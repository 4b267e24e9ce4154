"""Start-up: compose the run config once, not twice.

For every command, Hydra 1.3 first composes the whole config only to read `hydra.mode` (run or
multirun; `Hydra.get_mode`), then composes it again for the run. nettrain's configs never set
`hydra.mode`, so when the command line cannot set it either, the first composition can only
answer "not set", which Hydra then treats as a single run. For those commands the probe is
skipped: a tenth of the time between `import torch` and the first step on a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hydra._internal.hydra import Hydra

# Arguments that can make the mode something else, or choose a primary config of the user's own.
_MAY_SET_MODE = ("-m", "--multirun", "hydra.mode", "+hydra.mode", "--config-name", "-cn", "--config-dir", "-cd")


def mode_is_run(argv: list[str]) -> bool:
    """True when the command is certainly a single run of nettrain's own primary config."""
    return not any(
        arg == flag or arg.startswith((flag + "=", flag + " ")) for arg in argv[1:] for flag in _MAY_SET_MODE
    )


@contextlib.contextmanager
def single_composition(argv: list[str]) -> Iterator[None]:
    """While Hydra starts the app, skip its mode probe when `argv` is a plain single run."""
    probe = getattr(Hydra, "get_mode", None)
    if probe is None or not mode_is_run(argv):
        yield
        return
    Hydra.get_mode = lambda self, config_name, overrides: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_mode = probe  # type: ignore[method-assign]
