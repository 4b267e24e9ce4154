"""Atomic, durable file writes: every file a run leaves is written to a temporary name in the same
folder, flushed to disk (fsync), then moved into place with os.replace, and the folder is fsynced
so the new name survives a power cut; a reader (or a crash) never sees half a file.

JSON is strict: NaN and infinity are not JSON, so a non-finite number is written as null with
the reason beside it (`"best_val_loss": null, "best_val_loss_reason": "nan"`).

A write that fails (a full disk, a read-only folder, a file-size limit) raises OSError whose
message names the file, with no temporary file left behind."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class WriteError(OSError):
    """A file that could not be written; str() names the file and the reason, in one line."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, fsync it, move it over `path`,
    fsync the folder. `write` must close its file; an OSError becomes a WriteError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); give the usual mode
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        _discard(tmp)
        if isinstance(exc, WriteError):
            raise
        raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def strict(data: Any) -> Any:
    """`data` with every non-finite float replaced by None, and in a dict a `<key>_reason` beside it
    ("nan", "inf" or "-inf"); everything else unchanged."""
    if isinstance(data, dict):
        out: dict[Any, Any] = {}
        for key, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
                out[f"{key}_reason"] = str(value)
            else:
                out[key] = strict(value)
        return out
    if isinstance(data, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else strict(v) for v in data]
    return data


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (allow_nan=False): non-finite numbers become null with their reason."""
    return write_text(path, json.dumps(strict(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def timestamp(sep: str = "_") -> str:
    """Now, to the microsecond, as a folder name: `2026-01-31_12-00-00-123456` (`sep="/"`: a date
    folder with a time folder inside, as Hydra's outputs/ has them)."""
    return datetime.now().strftime(f"%Y-%m-%d{sep}%H-%M-%S-%f")
