"""Your own code in the loop: `callbacks=[...]`, each a class with any of the hooks below.

    callbacks='[{_target_: mycallbacks.PrintLoss, every: 10}]'

A callback is built from its `_target_` dict like a model of your own (a module in the working
directory, nettrain/config/usermodules.py; from a file nettrain reads, such as a resumed run's
saved config, only when you allow it: nettrain/config/trust.py). Each hook it defines is called
with a :class:`RunView`, a read-only view of the run at that point:

- `on_fit_start`: before the first step (of this session, for a resumed run)
- `on_epoch_start`: as each epoch starts
- `on_step_end`: after every n-th training step of the run (its `every_n_steps` attribute, else
  `callbacks_every_n_steps`); `view.loss` is that batch's mean loss (one host sync, on those steps only)
- `on_validation_end`: after each epoch's validation, its row of metrics.csv in `view.metrics`
- `on_checkpoint`: after a checkpoint is written (`view.checkpoint`: last.pt)
- `on_fit_end`: when training ends (finished, stopped early or interrupted), before the test

The hooks run on rank 0 only (under torchrun: the process that writes the run folder). A run
without callbacks calls nothing: the loop holds None and tests `if hooks:` at each point.

A hook that raises ends the run like Ctrl+C does: the step in progress finishes, a checkpoint is
written, no hook is called again, and then the run stops with a CallbackError naming the
callback's class and the hook (`nettrain-train`: one line, exit 1). `resume=RUN_DIR` continues it.
Callbacks keep no state in the checkpoint: one that counts across a resume saves its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from nettrain.engine.build import instantiate
from nettrain.errors import CallbackError, ConfigError
from nettrain.run import launch

HOOKS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_validation_end", "on_checkpoint", "on_fit_end")


@dataclass(frozen=True)
class RunView:
    """The run as a hook sees it. Its fields cannot be set; the model is the one being trained
    (read it, evaluate it, save it: changing its weights changes the run)."""

    epoch: int  # the epoch in progress; fit start and end: the epochs done; validation: the epoch just done
    step: int  # training steps (batches) done in the run so far, over every epoch
    steps_per_epoch: int  # training steps in one epoch
    metrics: Mapping[str, Any]  # the latest epoch's row of metrics.csv ({} before the first)
    history: tuple[Mapping[str, Any], ...]  # every epoch's row so far, oldest first
    model: torch.nn.Module  # the model being trained
    run_dir: Path  # the run folder
    loss: float | None = None  # on_step_end: this batch's mean training loss; else None
    checkpoint: Path | None = None  # on_checkpoint: the file written (checkpoints/last.pt); else None


class Callbacks:
    """The run's callbacks, called by the loop at its named points (`if hooks: hooks.step_end(...)`).

    `every`: callbacks_every_n_steps, the on_step_end interval of a callback without its own
    `every_n_steps`. `stop`: the run's StopRequest, asked to stop when a hook raises."""

    def __init__(
        self,
        callbacks: Sequence[Any],
        every: int,
        state: Any,
        run_dir: Path,
        steps_per_epoch: int,
        stop: Any,
        enabled: bool = True,
    ):
        self.callbacks = list(callbacks)
        self.state, self.run_dir, self.steps_per_epoch, self.stop = state, Path(run_dir), steps_per_epoch, stop
        self.active = enabled and bool(self.callbacks)
        self.stepping = [
            (cb, _interval(cb, every, i)) for i, cb in enumerate(self.callbacks) if _has(cb, "on_step_end")
        ]
        self.failure: CallbackError | None = None
        self.done = 0  # training steps of the run done at the latest hook

    def __bool__(self) -> bool:
        return self.active

    # -- the hooks, as the loop and the recipe call them ------------------------------------------

    def fit_start(self, epochs_done: int, step_in_epoch: int = 0) -> None:
        self.done = epochs_done * self.steps_per_epoch + step_in_epoch
        self._call("on_fit_start", self._view(epochs_done))

    def epoch_start(self, epoch: int, step_in_epoch: int) -> None:
        self.done = (epoch - 1) * self.steps_per_epoch + step_in_epoch
        self._call("on_epoch_start", self._view(epoch))

    def step_end(self, epoch: int, step_in_epoch: int, batch_loss: torch.Tensor, batch_size: int) -> None:
        """After a training step: the on_step_end of each callback due at this step of the run."""
        self.done = done = (epoch - 1) * self.steps_per_epoch + step_in_epoch
        due = [cb for cb, every in self.stepping if done % every == 0]
        if due and self.active:
            self._call("on_step_end", self._view(epoch, loss=batch_loss.item() / batch_size), due)  # the host sync

    def validation_end(self, epoch: int, step_in_epoch: int | None = None) -> None:
        """After a validation: at an epoch's end, or `step_in_epoch` steps into it (trainer.val_every_n_steps)."""
        if step_in_epoch is None:
            self.done = epoch * self.steps_per_epoch
            self._call("on_validation_end", self._view(epoch))
            return
        self.done = (epoch - 1) * self.steps_per_epoch + step_in_epoch
        latest = self.state.extras["step_validations"].rows[-1]  # the row this validation wrote
        self._call("on_validation_end", self._view(epoch, metrics=MappingProxyType(dict(latest))))

    def checkpoint(self, position: Any, path: Path) -> None:
        """After a checkpoint is written at `position` (a state.Position: epochs done, steps into the next)."""
        if self.active:
            self.done = position.epoch * self.steps_per_epoch + position.step_in_epoch
            epoch = position.epoch + 1 if position.step_in_epoch else position.epoch
            self._call("on_checkpoint", self._view(epoch, checkpoint=path))

    def fit_end(self, epochs_done: int) -> None:
        self._call("on_fit_end", self._view(epochs_done))

    def raise_failure(self) -> None:
        """Raise the first hook's failure, once the run has stopped and saved."""
        if self.failure is not None:
            raise self.failure

    # -- inside -----------------------------------------------------------------------------------

    def _view(self, epoch: int, **extra: Any) -> RunView:
        history = tuple(MappingProxyType(dict(row)) for row in self.state.history)
        return RunView(
            epoch=epoch,
            step=self.done,
            steps_per_epoch=self.steps_per_epoch,
            history=history,
            model=self.state.model,
            run_dir=self.run_dir,
            **({"metrics": history[-1] if history else MappingProxyType({})} | extra),
        )

    def _call(self, hook: str, view: RunView, callbacks: Sequence[Any] | None = None) -> None:
        if not self.active:
            return
        for cb in self.callbacks if callbacks is None else callbacks:
            method = getattr(cb, hook, None)
            if method is None:
                continue
            try:
                method(view)
            except Exception as exc:
                name = f"{type(cb).__module__}.{type(cb).__qualname__}"
                where = f"epoch {view.epoch}, step {view.step}"
                failure = CallbackError(f"callback {name} raised in {hook} ({where}): {type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                self.failure, self.active = failure, False  # no hook is called again
                self.stop.request()  # the loop finishes the step, saves and leaves
                return


def _has(cb: Any, hook: str) -> bool:
    return callable(getattr(cb, hook, None))


def _interval(cb: Any, every: int, index: int) -> int:
    """A callback's on_step_end interval: its own `every_n_steps`, else `every`."""
    own = getattr(cb, "every_n_steps", None)
    if own is None:
        return every
    if isinstance(own, bool) or not isinstance(own, int) or own < 1:
        raise ConfigError(
            [
                f"callbacks[{index}]: {type(cb).__qualname__}.every_n_steps={own!r}: must be an integer >= 1 (1 = every step)"
            ]
        )
    return own


def build_callbacks(
    nodes: ListConfig | Sequence[Any], every: int, state: Any, run_dir: Path, steps_per_epoch: int, stop: Any
) -> Callbacks | None:
    """The configured callbacks (each built like a component: a module of your own from the
    working directory), or None when there are none: the loop then calls nothing."""
    if not nodes:
        return None
    built = []
    for i, node in enumerate(nodes):
        plain = cast(
            dict[str, Any], OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        )
        cb = instantiate(plain, f"callbacks[{i}]")
        if not any(_has(cb, hook) for hook in HOOKS):
            others = sorted(name for name in dir(cb) if name.startswith("on_") and callable(getattr(cb, name)))
            found = f" (it has {', '.join(others)})" if others else ""
            raise ConfigError(
                [f"callbacks[{i}]: {plain.get('_target_')} has none of the hooks{found}; allowed: {', '.join(HOOKS)}"]
            )
        built.append(cb)
    return Callbacks(built, every, state, run_dir, steps_per_epoch, stop, enabled=launch.context().is_main)
