"""Checkpoints: plain tensors and plain data, written atomically, checksummed, loaded safely.

A checkpoint is a dict of state dicts (model, optimizer, scheduler, early stopping, gradient
monitor), every RNG state, the position in the epoch, the metrics so far and the run config as
plain containers. It is saved with torch.save and always loaded with
torch.load(..., weights_only=True), which refuses anything but tensors and plain data.

Each file NAME.pt has a sidecar NAME.pt.sha256 holding its SHA-256; loading checks it, so a
truncated or corrupted file is reported by name instead of being half-read.
The checkpoints folder holds:
- last.pt      the newest state (every epoch end, and when a run is interrupted)
- previous.pt  the state before that (last.pt is moved here before a new one is written)
- best.pt      the state at the best epoch by early_stopping.monitor

What goes into a checkpoint, and the writer of these files during a run, are
nettrain/engine/checkpointer.py. This module imports torch only to save or load a file: the
commands import it before they know whether they need torch.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from nettrain.config.renames import upgrade
from nettrain.errors import CheckpointError
from nettrain.files import atomic_write, write_text

FORMAT_VERSION = 1
NAMES = ("last.pt", "previous.pt", "best.pt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def serialize(state: dict[str, Any]) -> memoryview:
    """torch.save `state` into memory: one serialization for each file that holds it."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer()


def save_checkpoint(path: str | Path, state: dict[str, Any] | memoryview) -> Path:
    """torch.save `state` (or its `serialize`d bytes) atomically and durably, then its checksum
    beside it. The bytes are made in memory first, so a full disk is an OSError naming the file,
    not torch's stream error."""
    path = Path(path)
    data = state if isinstance(state, memoryview) else serialize(state)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)
    write_text(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest() + "\n")
    return path


def verify_checkpoint(path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    checksum = path.with_name(path.name + ".sha256")
    if not checksum.is_file():
        raise CheckpointError(f"checkpoint {path}: its checksum file {checksum.name} is missing")
    try:
        expected = checksum.read_text(encoding="ascii").strip()
    except (UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: its checksum file {checksum.name} is unreadable "
            f"({type(exc).__name__}); the checkpoint counts as corrupt"
        ) from None
    if _sha256(path) != expected:
        raise CheckpointError(f"checkpoint {path}: checksum mismatch (the file is corrupted or truncated)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True, after checking its checksum."""
    import torch

    if verify:
        verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported by name
        raise CheckpointError(f"checkpoint {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    version = state.get("format") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {version!r}, but this nettrain reads "
            f"format version {FORMAT_VERSION}"
            + (
                " (written by a newer nettrain: upgrade to load it)"
                if isinstance(version, int) and version > FORMAT_VERSION
                else ""
            )
        )
    missing = [key for key in REQUIRED if key not in state]
    if missing or not isinstance(state["progress"], dict) or "step_in_epoch" not in state["progress"]:
        raise CheckpointError(
            f"checkpoint {path}: not a nettrain checkpoint (no {', '.join(missing) or 'position in the run'})"
        )
    state["config"] = upgrade(state["config"])  # a checkpoint written before a module moved: today's names
    return state


REQUIRED = ("format", "epoch", "progress", "model", "optimizer", "config", "history")


def newest_valid(directory: str | Path, report=print) -> tuple[Path, dict[str, Any]]:
    """The most advanced loadable checkpoint in `directory`; each unusable one is reported."""
    directory = Path(directory)
    found, skipped = [], []
    for name in NAMES:
        path = directory / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            report(f"skipping {exc}")
            skipped.append(f"{name}: {str(exc).split(': ', 1)[-1]}")
            continue
        found.append(((state["epoch"], state["progress"]["step_in_epoch"], -NAMES.index(name)), path, state))
    if not found:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise CheckpointError(f"no valid checkpoint in {directory}{why}")
    _, path, state = max(found, key=lambda item: item[0])
    return path, state


def pick(target: str | Path, report=print) -> tuple[Path, dict[str, Any]]:
    """(path, state) for what a command was given: a checkpoint file, or a run folder's best.pt,
    falling back (with a warning through `report`) to its newest valid checkpoint."""
    target = Path(target).expanduser()
    if target.is_file():
        return target, load_checkpoint(target)
    if not target.exists():
        raise CheckpointError(f"{str(target)!r}: no such run dir or checkpoint file")
    folder = target / "checkpoints"
    if not folder.is_dir():
        raise CheckpointError(f"{target}: not a run folder (no checkpoints/) or a checkpoint file")
    try:
        return folder / "best.pt", load_checkpoint(folder / "best.pt")
    except CheckpointError as exc:
        path, state = newest_valid(folder, report=lambda line: None)
        report(f"warning: {exc}; using {path.name} (epoch {state['epoch']}) instead")
        return path, state
