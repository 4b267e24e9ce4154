"""Training by steps and time: trainer.max_steps, trainer.max_time, trainer.val_every_n_steps and
checkpoint.every_n_steps.

A step here is an optimizer step: one batch, or under gradient accumulation one group of
trainer.accumulate_steps batches (the scheduler counts the same steps). Validation, step
checkpoints and the budget's end fall only on those steps, never inside a group, so a checkpoint
they write never holds partial gradient sums (an interruption by a signal still may, and resumes
exactly all the same: nettrain/engine/accumulate.py).

`Steps` counts the run's optimizer steps (across epochs and resumes: the count is saved in every
checkpoint's position, and derived from the epoch and step for a checkpoint written before it was)
and the time spent in the loop (max_time counts it across resumes too). After each batch the loop
asks `after_batch`: plain Python ints, with no host sync; the clock is read only when max_time is
set. A run that sets none of these keys does exactly what it did before.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nettrain.engine import distributed
from nettrain.engine.accumulate import optimizer_steps
from nettrain.engine.state import Position


@dataclass(frozen=True)
class StepSettings:
    """The step-level settings of a run (None: not set)."""

    max_steps: int | None = None  # trainer.max_steps: stop once the run has made this many optimizer steps
    max_time: float | None = None  # trainer.max_time, in seconds: stop once the loop has run this long
    val_every: int | None = None  # trainer.val_every_n_steps: validate after every this many optimizer steps
    checkpoint_every: int | None = None  # checkpoint.every_n_steps: save last.pt after every this many steps
    accumulate: int = 1  # trainer.accumulate_steps: batches per optimizer step

    @property
    def any(self) -> bool:
        """Whether any of the step-level keys is set (else the loop works by epochs only)."""
        return any(v is not None for v in (self.max_steps, self.max_time, self.val_every, self.checkpoint_every))


class Steps:
    """The run's optimizer steps and loop time so far, and what falls due after a batch."""

    def __init__(
        self,
        settings: StepSettings,
        batches_per_epoch: int,
        start: Position,
        history: list[dict[str, Any]],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings, self.batches, self.clock = settings, batches_per_epoch, clock
        k = self.accumulate = settings.accumulate
        self.any_set = settings.any  # read after every batch: computed once
        derived = start.epoch * optimizer_steps(batches_per_epoch, k) + math.ceil(start.step_in_epoch / k)
        self.done = start.global_step if start.global_step is not None else derived  # optimizer steps so far
        # time in the loop before this session: saved, or else the recorded epochs' times
        recorded = sum(row.get("epoch_time_s", 0.0) for row in history) + start.train_time
        self.before: float = start.elapsed if start.elapsed is not None else recorded
        self.started = clock()
        self.ended_by: str | None = None  # the budget that ended the run: "max_steps=N" or "max_time=HH:MM:SS"

    def after_batch(self, step: int) -> bool:
        """Count the batch that took the epoch to `step`; True when it closed an optimizer step and
        a step-level key is set (then `validate_now`, `checkpoint_now` and `out_of_budget` say what is due)."""
        if step % self.accumulate and step != self.batches:
            return False  # inside an accumulation group: nothing falls due
        self.done += 1
        return self.any_set

    def validate_now(self) -> bool:
        every = self.settings.val_every
        return every is not None and self.done % every == 0

    def checkpoint_now(self) -> bool:
        every = self.settings.checkpoint_every
        return every is not None and self.done % every == 0

    def out_of_budget(self) -> bool:
        """Whether max_steps or max_time is spent (the same answer on every rank); `ended_by` says which."""
        s = self.settings
        if s.max_steps is not None and self.done >= s.max_steps:
            self.ended_by = f"max_steps={s.max_steps}"
        elif s.max_time is not None and distributed.agree(int(self.elapsed() >= s.max_time)):  # rank clocks differ
            self.ended_by = f"max_time={duration(s.max_time)}"
        return self.ended_by is not None

    def elapsed(self) -> float:
        """Seconds in the loop so far, earlier sessions of a resumed run included."""
        return self.before + self.clock() - self.started

    def row_step(self) -> int | None:
        """The step column of an epoch's metrics.csv row: the run's optimizer steps when it
        validates inside epochs too, else None (no such column: the rows of every earlier run)."""
        return self.done if self.settings.val_every is not None else None

    def mark(self, position: Position) -> Position:
        """`position` with the run's step count and time, for a checkpoint."""
        return dataclasses.replace(position, global_step=self.done, elapsed=self.elapsed())


def duration(seconds: float) -> str:
    """Seconds as max_time writes them: HH:MM:SS, or DD:HH:MM:SS from a day on."""
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days:02d}:{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"


class StepValidations:
    """The rows of the validations made inside an epoch (trainer.val_every_n_steps), checkpointed
    as TrainState.extras["step_validations"]; metrics.csv interleaves them with the epochs' rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])
