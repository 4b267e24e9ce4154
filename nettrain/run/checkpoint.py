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
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from nettrain.config.renames import upgrade
from nettrain.errors import CheckpointError
from nettrain.files import atomic_write, write_text
from nettrain.run.folder import RunWriter

FORMAT_VERSION = 1
NAMES = ("last.pt", "previous.pt", "best.pt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save `state` atomically and durably, then its checksum beside it. The bytes are made
    in memory first, so a full disk is an OSError naming the file, not torch's stream error."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()

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


class Checkpointer:
    """Writes last.pt (keeping the one before as previous.pt) and best.pt through `writer` (nothing
    on the ranks other than 0); `enabled=False` (checkpoint.enabled=false): nothing at all."""

    def __init__(
        self, directory: str | Path, config: dict[str, Any], enabled: bool = True, writer: RunWriter | None = None
    ):
        self.directory, self.config, self.enabled = Path(directory), config, enabled
        self.writer = writer or RunWriter(self.directory)
        self.wrote_last = False  # whether last.pt is this session's (else it is checked before keeping it)

    def save(self, state, position, *, is_best: bool = False) -> None:
        """Snapshot `state` (a TrainState) at `position` (a state.Position)."""
        if self.enabled:
            self.writer.run(self._save, state, position, is_best)

    def _save(self, state, position, is_best: bool) -> None:
        from nettrain.engine.divergence import finite_state

        if not finite_state(state.model.state_dict().values()):  # never save a diverged state
            return
        saved = snapshot(state, position, self.config)
        last = self.directory / "last.pt"
        if last.exists() and (self.wrote_last or _is_valid(last)):
            _link_over(last, self.directory / "previous.pt")  # keep it: at every moment one is valid
        save_checkpoint(last, saved)
        self.wrote_last = True
        if is_best:  # its own file: damage to one never reaches the other
            save_checkpoint(self.directory / "best.pt", saved)


def snapshot(state, position, config: dict[str, Any]) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly, as tensors and plain data: every part
    of the TrainState (by its checkpoint key), the position, the RNG states and the config."""
    from nettrain.run.reproducibility import capture_rng

    saved = {key: part.state_dict() for key, part in state.checkpointed()}
    return {
        "format": FORMAT_VERSION,
        "epoch": position.epoch,  # epochs completed
        "progress": {
            "step_in_epoch": position.step_in_epoch,
            "order": position.order,
            "loss_sum": position.loss_sum,
            "train_time": position.train_time,
        },
        **saved,
        "rng": capture_rng(state.data_generator),
        "history": list(state.history),
        "best_weights": position.best_weights,
        "config": config,
    }


def restore(saved: dict[str, Any], state, device: torch.device):
    """Load a snapshot into a freshly built TrainState; returns the loop.Position to continue from.
    An optional part (in `state.extras`) that the checkpoint does not hold keeps its fresh state."""
    from nettrain.engine.state import Position
    from nettrain.run.reproducibility import restore_rng

    for key, part in state.checkpointed():
        if key in saved:
            part.load_state_dict(saved[key])
        elif key not in state.extras:
            raise CheckpointError(f"checkpoint has no {key!r} state")
    restore_rng(saved["rng"], state.data_generator)
    state.history[:] = saved["history"]
    progress = saved["progress"]
    best = saved["best_weights"]
    return Position(
        epoch=saved["epoch"],
        step_in_epoch=progress["step_in_epoch"],
        order=progress["order"],
        loss_sum=None if progress["loss_sum"] is None else progress["loss_sum"].to(device),
        train_time=progress["train_time"],
        best_weights=None if best is None else {k: v.to(device) for k, v in best.items()},
    )


def _is_valid(path: Path) -> bool:
    try:
        verify_checkpoint(path)
        return True
    except CheckpointError:
        return False


def _link_over(source: Path, target: Path) -> None:
    """Make `target` (and its checksum file) hard links to `source`'s current content, each
    replaced atomically; the checkpoint first, so a crash in between leaves a mismatch that
    loading reports, never a silently wrong file."""
    for suffix in ("", ".sha256"):
        src, dst = Path(str(source) + suffix), Path(str(target) + suffix)
        tmp = dst.with_name(f".{dst.name}.link.tmp")
        if tmp.exists():
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
