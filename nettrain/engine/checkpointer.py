"""Saving a run's TrainState and restoring it: the snapshot a checkpoint holds (every stateful
part, the position in the epoch, every RNG state, the metrics so far and the config) and the
`Checkpointer` that writes last.pt, previous.pt and best.pt. The files themselves (their format,
checksums and safe loading) are nettrain/run/checkpoint.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nettrain.engine.divergence import finite_state
from nettrain.engine.state import Position
from nettrain.errors import CheckpointError
from nettrain.run.checkpoint import FORMAT_VERSION, save_checkpoint, serialize, verify_checkpoint
from nettrain.run.folder import RunWriter
from nettrain.run.reproducibility import capture_rng, restore_rng


class Checkpointer:
    """Writes last.pt (keeping the one before as previous.pt) and best.pt through `writer` (nothing
    on the ranks other than 0); `enabled=False` (checkpoint.enabled=false): nothing at all."""

    def __init__(
        self, directory: str | Path, config: dict[str, Any], enabled: bool = True, writer: RunWriter | None = None
    ):
        self.directory, self.config, self.enabled = Path(directory), config, enabled
        self.writer = writer or RunWriter(self.directory)
        self.wrote_last = False  # whether last.pt is this session's (else it is checked before keeping it)
        self.after_save: Any = None  # called as after_save(position, last.pt) once a checkpoint is written

    def save(self, state, position, *, is_best: bool = False) -> None:
        """Snapshot `state` (a TrainState) at `position` (a state.Position)."""
        if self.enabled:
            self.writer.run(self._save, state, position, is_best)

    def _save(self, state, position, is_best: bool) -> None:
        if not finite_state(state.model.state_dict().values()):  # never save a diverged state
            return
        saved = serialize(snapshot(state, position, self.config))  # once, also when best.pt gets it too
        last = self.directory / "last.pt"
        if last.exists() and (self.wrote_last or _is_valid(last)):
            _link_over(last, self.directory / "previous.pt")  # keep it: at every moment one is valid
        save_checkpoint(last, saved)
        self.wrote_last = True
        if is_best:  # its own file: damage to one never reaches the other
            save_checkpoint(self.directory / "best.pt", saved)
        if self.after_save is not None:  # the callbacks' on_checkpoint
            self.after_save(position, last)


def snapshot(state, position, config: dict[str, Any]) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly, as tensors and plain data: every part
    of the TrainState (by its checkpoint key), the position, the RNG states and the config."""
    saved = {key: part.state_dict() for key, part in state.checkpointed()}
    return {
        "format": FORMAT_VERSION,
        "epoch": position.epoch,  # epochs completed
        "progress": {
            "step_in_epoch": position.step_in_epoch,
            "order": position.order,
            "loss_sum": position.loss_sum,
            "train_time": position.train_time,
            "global_step": position.global_step,
            "elapsed": position.elapsed,
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
        global_step=progress.get("global_step"),  # None in a checkpoint older than the step count
        elapsed=progress.get("elapsed"),
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
