"""Bad input: the one exception base that every command turns into one message and exit status 2.

Anything derived from `BadInput` is the user's to fix (a setting, a file, a folder); its message
names the key or file, the value and what is allowed. Anything else is a fault (exit 1) or a
failed run (a diverged loss: exit 3). This module imports nothing of nettrain's.
"""

from __future__ import annotations

from pathlib import Path


class BadInput(Exception):
    """Input nettrain cannot use; str() is the whole message, without a traceback."""


class ConfigError(BadInput, ValueError):
    """One or more invalid settings; the message lists each key, its value and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        head = "Invalid config" if len(problems) == 1 else f"Invalid config ({len(problems)} problems)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


class UntrustedTargetError(ConfigError):
    """A config read from a file that names code nettrain does not run without being told."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        self.args = (f"Refused: a config read from a file names code nettrain does not run unasked:\n{lines}",)


class CallbackError(Exception):
    """A hook of the user's callbacks (`callbacks=[...]`) raised: not bad input but the user's code
    failing, so a fault (exit 1); str() names the callback's class and the hook, and `__cause__`
    is what it raised."""


class RunFolderError(BadInput, RuntimeError):
    """A run folder that cannot or must not be written; the message says which and why."""


class RunFolderLinkError(RunFolderError):
    """A run folder that holds symlinks (or pipes, sockets, devices): `folder` (resolved) and `found`,
    one 'REL -> TARGET' or 'REL (what it is)' per entry; str() is the whole message."""

    def __init__(self, message: str, folder: Path, found: list[str]):
        super().__init__(message)
        self.folder, self.found = folder, found


class CheckpointError(BadInput, ValueError):
    """A checkpoint file that is missing, corrupted or truncated; the message names the file."""


class DataError(BadInput, ValueError):
    """Data that cannot be loaded; the message names the key to change."""


class IdxError(DataError):
    """An IDX file that cannot be used; the message names the file."""


class PredictError(BadInput, ValueError):
    """An input or checkpoint that cannot be used; the message names it."""


class ExportError(BadInput, ValueError):
    """Input the export cannot use; the message says what is allowed."""
