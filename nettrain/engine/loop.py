"""The training loop: data -> forward -> loss -> backward -> update, epoch after epoch.

`fit` is the whole loop, top to bottom. The side concerns are small objects it calls at named
points: the gradient monitor after backward, the schedule after each step and epoch, early
stopping, the checkpointer, the metrics writer and the reporter after each epoch, and the stop
request (a signal, or a test) after each step. Losses and accuracy accumulate on the device and
are read once per epoch: no host sync per step. The step-level keys (trainer.max_steps, max_time,
val_every_n_steps, checkpoint.every_n_steps: nettrain/engine/steps.py) add a validation, a
checkpoint or the budget's end after an optimizer step inside the epoch, only when they are set.

A run can stop mid-epoch and resume bit for bit: the checkpoint carries the epoch's sample order,
the step reached, the partial loss sum and every RNG state (see checkpoint.snapshot/restore).

`evaluate` is the one evaluation (validation, the test at the end of a run, `nettrain-eval`), the
same figures on 1 or N processes: each rank sums on the device what its task's metrics need over
its share of every batch; one all-reduce adds every rank's sums, one host sync reads them, and the
task's `finish` turns the totals into the metrics. A new metric is one change to its task in
`TASKS`: the sums it needs per batch and its formula from the totals. The metrics these sums do
not give (F1, AUROC, top-k, RMSE: `metrics=[...]`) are torchmetrics' (nettrain/engine/metrics.py),
added to the same pass when a run asks for them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from nettrain.engine import distributed
from nettrain.engine.divergence import LossWatch
from nettrain.engine.interrupt import StopRequest
from nettrain.engine.metrics import Measures
from nettrain.engine.state import Position, TrainState
from nettrain.engine.steps import Steps, StepSettings, StepValidations
from nettrain.run import launch

__all__ = [
    "FitResult",
    "LoopSettings",
    "Position",
    "RunOutputs",
    "StopRequest",
    "TASKS",
    "evaluate",
    "fit",
    "train_step",
]


@dataclass
class FitResult:
    epochs_run: int
    stopped_early: bool
    best_epoch: int
    best_value: float
    interrupted: bool = False
    ended_by: str | None = None  # the budget that ended the run: "max_steps=N" or "max_time=HH:MM:SS"
    best_step: int | None = None  # the optimizer steps done at the best validation

    @classmethod
    def now(cls, early_stopping, epochs_run: int, interrupted: bool = False, ended_by: str | None = None) -> FitResult:
        """Where training stands after `epochs_run` epochs, with early stopping's best so far."""
        stopped_early = early_stopping.should_stop and not interrupted
        best = early_stopping.best_epoch, early_stopping.best
        return cls(epochs_run, stopped_early, *best, interrupted, ended_by, early_stopping.best_step)


Sums = dict[str, torch.Tensor]  # per batch: name -> a 0-d tensor on the device


def classification_sums(out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> Sums:
    return {"loss": loss * len(y), "correct": (out.argmax(dim=1) == y).sum()}


def classification_finish(total: dict[str, float], n: int, target_std: float) -> dict[str, float]:
    return {"loss": total["loss"] / n, "acc": total["correct"] / n}


def multilabel_sums(out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> Sums:
    """Each sample's share of right 0/1 label decisions (logit > 0, i.e. sigmoid > 0.5): "acc"."""
    return {"loss": loss * len(y), "correct": ((out > 0) == (y > 0.5)).float().mean(dim=1).sum()}


def regression_sums(out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> Sums:
    err = out - y
    return {
        "loss": loss * len(y),
        "abs_err": err.abs().sum(),
        "sq_err": err.square().sum(),
        "y": y.sum(),
        "y_sq": y.square().sum(),
    }


def regression_finish(total: dict[str, float], n: int, target_std: float) -> dict[str, float]:
    """Mean loss, R² and MAE in the target's units (the standardised error x target_std)."""
    spread = total["y_sq"] - total["y"] ** 2 / n
    return {
        "loss": total["loss"] / n,
        "r2": 1 - total["sq_err"] / spread if spread > 0 else 0.0,
        "mae": total["abs_err"] / n * target_std,
    }


@dataclass(frozen=True)
class Task:
    """What one task measures: the `names` of its sums, `sums(out, y, loss)` -> those sums over one
    batch, and `finish(totals, n, target_std)` -> the metrics (loss first) from the totals."""

    names: tuple[str, ...]
    sums: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Sums]
    finish: Callable[[dict[str, float], int, float], dict[str, float]]


TASKS = {
    "classification": Task(("loss", "correct"), classification_sums, classification_finish),  # loss, acc
    "regression": Task(("loss", "abs_err", "sq_err", "y", "y_sq"), regression_sums, regression_finish),  # loss, r2, mae
    "multilabel": Task(("loss", "correct"), multilabel_sums, classification_finish),  # loss, acc (label decisions)
}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: nn.Module,
    batches,
    task: str = "classification",
    target_std: float = 1.0,
    measures: Measures | None = None,
) -> dict[str, float]:
    """The task's metrics over every batch of `batches` (every rank's share under torchrun), in
    eval mode (dropout off, BatchNorm running statistics: rank 0's, on every rank):
    {"loss", "acc"} for classification, {"loss", "r2", "mae"} for regression, then the
    `measures` of `metrics=[...]` (nettrain/engine/metrics.py) when given, by name."""
    measure = TASKS[task]
    model.eval()
    distributed.broadcast_buffers(model)
    device = next(model.parameters()).device
    sums = {name: torch.zeros((), device=device) for name in measure.names}  # zeros on a rank without samples
    extra = measures if measures else None
    for x, y in batches:  # this rank's share of the split
        out = model(x)
        batch = measure.sums(out, y, loss_fn(out, y))
        for name in measure.names:
            sums[name] += batch[name]
        if extra is not None:
            extra.update(out, y)
    stacked = torch.stack(list(sums.values()))
    distributed.all_reduce_sum(stacked)  # every rank's sums, in one call
    total = dict(zip(measure.names, stacked.tolist()))  # the pass's one host sync
    figures = measure.finish(total, batches.n, target_std)
    if extra is not None:
        figures |= extra.compute()  # torchmetrics gathers every rank's states
    return figures


def l1_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    """sum |w| over the given tensors, with one fused multi-tensor op."""
    return torch.stack(torch._foreach_norm(params, 1)).sum()


@dataclass
class LoopSettings:
    """What the loop does besides the update itself (from the run config)."""

    epochs: int  # train up to this epoch
    l1: float = 0.0  # weight of the L1 penalty l1 * sum|w| added to the loss
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    restore_best: bool = True  # load the best epoch's weights when training ends
    make_step: Callable | None = None  # builds the per-batch update; None = train_step (eager)
    augment: Callable | None = None  # per-batch training augmentation (nettrain/data/augment.py), or None
    task: str = "classification"  # the validation metrics: classification (acc) | regression (r2, mae)
    target_std: float = 1.0  # regression: the target's std, to report MAE in its own units
    unfreeze: Callable[[int], str | None] | None = None  # model.unfreeze_at_epoch: called as each epoch starts
    measures: Measures | None = None  # the validation's metrics=[...] beyond the task's own (torchmetrics)
    steps: StepSettings = field(
        default_factory=StepSettings
    )  # max_steps, max_time, validation and checkpoints by steps


@dataclass
class RunOutputs:
    """Where the loop reports: checkpoints, metrics.csv and the console (the gradient diagnosis and
    the experiment loggers, when built, are in TrainState.extras: 'diagnosis', 'loggers')."""

    checkpointer: Any  # nettrain.run.checkpoint.Checkpointer
    metrics: Any  # nettrain.run.metrics.MetricsWriter
    reporter: Any  # nettrain.insight.report.Reporter
    callbacks: Any = None  # callbacks=[...] (nettrain/engine/callbacks.Callbacks); None: the loop calls nothing


def make_update(state: TrainState, grad_clip: float | None) -> Callable[[], None]:
    """The update after backward, as one call: unscale (fp16), gradient monitor, clipping to
    `grad_clip`, optimizer step, schedule, EMA (the loop's step and the profiler's share it)."""
    model, optimizer, precision, schedule = state.model, state.optimizer, state.precision, state.schedule
    grad_monitor, ema = state.grad_monitor, state.extras.get("ema")

    def update() -> None:
        precision.unscale_(optimizer)  # true gradients (fp16 scales them)
        grad_monitor.accumulate()  # raw gradients, before clipping
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        precision.step(optimizer)  # update
        schedule.after_step()
        if ema is not None:
            ema.update()

    return update


def train_step(state: TrainState, settings: LoopSettings) -> Callable[..., torch.Tensor]:
    """The update for one batch: forward, loss, backward, gradient monitor, clipping, optimizer
    step, schedule. Returns step(x, y, weight=1.0) -> the batch's loss sum (detached, on the
    device); `weight` scales the loss for backward (a rank's share of a global batch)."""
    model, optimizer, precision, loss_fn = state.model, state.optimizer, state.precision, state.loss_fn
    accumulation = state.extras.get("accumulation")
    l1_params: list[torch.Tensor] = [p for p in model.parameters() if p.dim() > 1]  # weight matrices, conv kernels
    update = make_update(state, settings.grad_clip)

    def step(x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        if settings.augment is not None:
            x, y = settings.augment(x, y)  # flips, crops, mixup/cutmix (soft targets), from the data generator
        with precision.autocast():
            loss = loss_fn(state.train_model(x), y)  # forward + data loss (under DDP through its wrapper)
        batch_loss_sum = loss.detach() * len(y)
        if weight != 1.0:
            loss = loss * weight
        if settings.l1:
            loss = loss + settings.l1 * l1_penalty(l1_params)
        if accumulation is None:
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)  # backward
            update()
            return batch_loss_sum
        opens_group, group_samples = accumulation.begin()
        if opens_group:
            optimizer.zero_grad(set_to_none=True)
        precision.backward(loss * (len(y) / group_samples))  # this batch's share of the group's mean
        if accumulation.end():  # the group's last batch: one optimizer step for the whole group
            update()
        return batch_loss_sum

    return step


def weights_to_evaluate(state: TrainState) -> contextlib.AbstractContextManager:
    """The EMA weights swapped into the model for validation, when the run keeps an EMA."""
    ema = state.extras.get("ema")
    return ema.swapped_in() if ema is not None else contextlib.nullcontext()


def record_epoch(state: TrainState, row: dict[str, Any], is_best: bool, out: RunOutputs) -> None:
    """Add the epoch's gradient statistics and diagnosis to its row; write, report and log it."""
    row.update(state.grad_monitor.end_epoch())
    diagnosis, loggers = state.extras.get("diagnosis"), state.extras.get("loggers")  # per-epoch side concerns
    verdict = diagnosis.end_epoch(row, state.history) if diagnosis else None  # adds its statistics
    state.history.append(row)
    out.metrics.write(metrics_rows(state))
    out.reporter.epoch(row, is_best)
    if verdict is not None:
        out.reporter.diagnosis(row["epoch"], verdict.verdict, verdict.findings)  # findings: one line at most
    if loggers:
        loggers.log_epoch(row, state.model)
    if out.callbacks:
        out.callbacks.validation_end(row["epoch"])


def metrics_rows(state: TrainState) -> list[dict[str, Any]]:
    """metrics.csv's rows: the epochs', and the validations inside them in step order, if any."""
    inside = state.extras.get("step_validations")
    if inside is None:
        return state.history
    return sorted([*state.history, *inside.rows], key=lambda row: row["step"])


def loss_so_far(loss_sum: torch.Tensor, step: int, train_batches) -> float:
    """The epoch's mean training loss over its first `step` batches, every rank's (one host sync)."""
    samples = min(step * train_batches.batch_size, train_batches.n)
    return (distributed.all_reduce_sum(loss_sum.clone())[0] / samples).item()


def validate_in_epoch(
    state: TrainState,
    val_batches,
    settings: LoopSettings,
    out: RunOutputs,
    at: tuple[int, int, float],
    best_weights: dict | None,
) -> tuple[bool, dict | None]:
    """A validation inside an epoch (trainer.val_every_n_steps), `at` = (epoch, the run's optimizer
    steps, the epoch's mean training loss so far): its row into metrics.csv beside the epochs' and
    one console line; early stopping counts it. Returns whether it is the best so far, and the best weights."""
    epoch, step, train_loss = at
    val, is_best, best_weights = validate(state, val_batches, settings, epoch, best_weights, step)
    row = {"epoch": epoch, "step": step, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}}
    state.extras.setdefault("step_validations", StepValidations()).rows.append(row | {"lr": state.schedule.lr})
    out.metrics.write(metrics_rows(state))
    figures = ", ".join(f"{name} {value:.4f}" for name, value in row.items() if name.startswith("val_"))
    out.reporter.note(f"step {step} (epoch {epoch}): {figures}" + ("  *best" if is_best else ""))
    state.model.train()  # evaluation left it in eval mode
    return is_best, best_weights


class InEpoch(NamedTuple):
    """Where the epoch in progress stands: its number, the steps done in it, its sample order, its
    training-loss sum so far (on the device, this rank's), its training seconds so far and the best weights."""

    epoch: int
    step: int
    order: torch.Tensor | None
    loss_sum: torch.Tensor
    train_time: float
    best_weights: dict | None  # the best validation's weights so far (restore_best)


def position_in_epoch(now: InEpoch, steps: Steps) -> Position:
    """Where a run stands inside an epoch, for a checkpoint that resumes exactly: the epoch's order,
    its loss sum over every rank, its training time, and the run's step count and time."""
    loss_sum = distributed.all_reduce_sum(now.loss_sum.clone())[0]  # the sum over every rank
    return steps.mark(Position(now.epoch - 1, now.step, now.order, loss_sum, now.train_time, now.best_weights))


def inside_epoch(
    state: TrainState,
    steps: Steps,
    batches: tuple[Any, Any],
    settings: LoopSettings,
    out: RunOutputs,
    now: InEpoch,
    interrupted: bool,
) -> tuple[dict | None, bool, float]:
    """After a step inside an epoch: an interruption's checkpoint (a signal, or a test's StopRequest),
    or what the step-level keys ask after an optimizer step (nettrain/engine/steps.py): validate
    (val_every_n_steps), then checkpoint (every_n_steps; on a new best; before leaving). Returns
    the best weights, whether to leave the epoch (max_steps or max_time spent, early stopping, an
    interruption), and the seconds spent validating."""
    train_batches, val_batches = batches
    is_best, best_weights, started = False, now.best_weights, time.perf_counter()
    if not interrupted and steps.validate_now():
        at = (now.epoch, steps.done, loss_so_far(now.loss_sum, now.step, train_batches))
        is_best, best_weights = validate_in_epoch(state, val_batches, settings, out, at, best_weights)
        if out.callbacks:
            out.callbacks.validation_end(now.epoch, now.step)
    validating = time.perf_counter() - started
    leave = interrupted or steps.out_of_budget() or state.early_stopping.should_stop
    if leave or is_best or steps.checkpoint_now():  # `now.train_time`: up to the validation
        out.checkpointer.save(state, position_in_epoch(now._replace(best_weights=best_weights), steps), is_best=is_best)
    return best_weights, leave, validating


def fit_ended(state: TrainState, steps: Steps, out: RunOutputs, best_weights: dict | None) -> FitResult:
    """A run that reached its end: say why when early stopping or a budget ended it, load the final
    weights (load_final_weights), and sum it up (the epochs completed: one row each in the history)."""
    early_stopping = state.early_stopping
    if early_stopping.should_stop:
        out.reporter.note(early_stopping.reason("validations" if steps.settings.val_every else "epochs"))
    elif steps.ended_by is not None:
        out.reporter.note(f"stopped: {steps.ended_by} reached; resume with a larger budget to train on")
    load_final_weights(state, best_weights)
    epochs = state.history[-1]["epoch"] if state.history else 0
    return FitResult.now(early_stopping, epochs, ended_by=steps.ended_by)


def begin_epoch(state: TrainState, settings: LoopSettings, out: RunOutputs, start: Position, epoch: int, train_batches):
    """An epoch's start: model.unfreeze_at_epoch (the frozen parameters train from here on), the
    callbacks' on_epoch_start, and where the epoch starts (epoch_start)."""
    if settings.unfreeze is not None and (note := settings.unfreeze(epoch)):
        out.reporter.note(note)
    return epoch_start(start, epoch, train_batches, state.device, out.callbacks)


def epoch_start(start: Position, epoch: int, train_batches, device: torch.device, hooks=None):
    """Where `epoch` starts: its batch order, first step, loss sum so far and training time so far
    (the saved position's when resuming mid-epoch, else a fresh order from step 0); the callbacks'
    on_epoch_start (`hooks`) is called first."""
    resuming = epoch == start.epoch + 1 and start.order is not None
    if hooks:
        hooks.epoch_start(epoch, start.step_in_epoch if resuming else 0)
    if not resuming:
        return train_batches.order(), 0, torch.zeros((), device=device), 0.0
    loss_sum = torch.zeros((), device=device)
    if start.loss_sum is not None and launch.context().is_main:
        loss_sum = start.loss_sum  # the saved sum is every rank's: counted once, on rank 0
    return start.order, start.step_in_epoch, loss_sum, start.train_time


def fit(
    state: TrainState,
    train_batches,
    val_batches,
    settings: LoopSettings,
    out: RunOutputs,
    start: Position | None = None,
    stop: StopRequest | None = None,
) -> FitResult:
    """Train `state` from `start` (a fresh run, or a resumed position) up to settings.epochs or the
    budget of settings.steps (max_steps; max_time, on `stop.clock`).

    `settings.make_step(state, settings)` builds the per-batch update, `step(*batch) -> loss sum`: the
    eager `train_step`, or the CUDA graph step (nettrain.engine.cuda_graph), which is captured here,
    after a resume has restored the state and before the first epoch's clock starts."""
    early_stopping, start, stop = state.early_stopping, start or Position(), stop or StopRequest()
    step_fn = (settings.make_step or train_step)(state, settings)
    best_weights = start.best_weights
    watch = LossWatch(len(train_batches), state.device)  # the epoch's loss sum step by step, on the device
    steps = Steps(settings.steps, len(train_batches), start, state.history, stop.clock)  # optimizer steps, time
    batches = train_batches, val_batches
    for epoch in range(start.epoch + 1, settings.epochs + 1):
        if steps.out_of_budget():  # max_steps or max_time spent at the end of the last epoch (or before a resume)
            break
        # -- train (from the saved position when resuming mid-epoch) --------------------------
        order, step, loss_sum, train_time = begin_epoch(state, settings, out, start, epoch, train_batches)
        watch.start_epoch(step, loss_sum)
        state.model.train()
        started = time.perf_counter()
        with out.reporter.progress(len(train_batches), epoch, done=step) as advance:
            for x, y in train_batches.batches(order, first_step=step):
                batch_loss = step_fn(x, y, train_batches.loss_weight(step, len(y)))
                watch.record(step, batch_loss)  # into the epoch's loss sum, watch.total
                step += 1
                if out.callbacks:
                    out.callbacks.step_end(epoch, step, batch_loss, len(y))
                advance()
                step_level, interrupted = steps.after_batch(step), stop.tick()  # step_level: a key is due now
                if (step_level or interrupted) and step < len(train_batches):  # -- inside the epoch --------
                    seconds = train_time + time.perf_counter() - started
                    now = InEpoch(epoch, step, order, watch.total, seconds, best_weights)
                    best_weights, leave, paused = inside_epoch(state, steps, batches, settings, out, now, interrupted)
                    if interrupted:  # by a signal: saved, now leave
                        return FitResult.now(early_stopping, epoch - 1, interrupted=True)
                    started += paused  # validating is not training time
                    if leave:  # the budget is spent, or early stopping
                        break
        if step < len(train_batches):  # left mid-epoch: the budget is spent, or early stopping
            break
        train_loss = epoch_loss(train_batches.n, watch, epoch)  # the epoch's one host sync for training
        train_time += time.perf_counter() - started
        # -- validate, record, decide --------------------------------------------------------
        best_weights = end_epoch(state, steps, batches, settings, out, (epoch, train_loss, train_time), best_weights)
        if early_stopping.should_stop:
            break
        if stop.signum is not None:
            return FitResult.now(early_stopping, epoch, interrupted=True)

    return fit_ended(state, steps, out, best_weights)  # why it ended, and the weights the test uses


def end_epoch(
    state: TrainState,
    steps: Steps,
    batches: tuple[Any, Any],
    settings: LoopSettings,
    out: RunOutputs,
    done: tuple[int, float, float],
    best_weights: dict | None,
) -> dict | None:
    """The end of an epoch, `done` = (epoch, its mean training loss, its training seconds): validate,
    record its row (metrics.csv, console, loggers), step the schedule, checkpoint. Returns the best weights."""
    (train_batches, val_batches), (epoch, train_loss, train_time) = batches, done
    val_started = time.perf_counter()
    val, is_best, best_weights = validate(state, val_batches, settings, epoch, best_weights, steps.done)
    seconds = train_time + time.perf_counter() - val_started
    row = epoch_row(epoch, train_loss, val, state.schedule.lr, seconds, train_batches.n / train_time, steps.row_step())
    record_epoch(state, row, is_best, out)
    state.schedule.after_epoch(row["val_loss"])
    out.checkpointer.save(state, steps.mark(Position(epoch, best_weights=best_weights)), is_best=is_best)
    return best_weights


def epoch_loss(n: int, watch: LossWatch, epoch: int) -> float:
    """The epoch's mean training loss over every rank's samples (one host sync); a non-finite one
    raises Diverged naming the first non-finite step (`watch`), and nothing is saved."""
    loss_sum = distributed.all_reduce_sum(watch.total.clone())[0]  # every rank's shares
    train_loss = (loss_sum / n).item()
    if not math.isfinite(train_loss):
        watch.check(epoch)
    return train_loss


def epoch_row(
    epoch: int,
    train_loss: float,
    val: dict[str, float],
    lr: float,
    seconds: float,
    samples_per_s: float,
    step: int | None = None,
) -> dict[str, Any]:
    """One epoch's row of metrics.csv, in its column order (the diagnosis and the gradient
    monitor add their columns after these); `step`: the run's optimizer steps, a column only
    when validations inside epochs need it (trainer.val_every_n_steps)."""
    return {
        "epoch": epoch,
        **({"step": step} if step is not None else {}),
        "train_loss": train_loss,
        **{f"val_{name}": value for name, value in val.items()},  # val_loss, val_acc or val_r2, val_mae; metrics=[...]
        "lr": lr,
        "epoch_time_s": seconds,
        "samples_per_s": samples_per_s,
    }


def validate(
    state: TrainState,
    val_batches,
    settings: LoopSettings,
    epoch: int,
    best_weights: dict | None,
    step: int | None = None,
) -> tuple[dict[str, float], bool, dict | None]:
    """The validation metrics (with the EMA's weights, when kept) in `epoch` after `step` optimizer
    steps, whether they are the best so far (early stopping decides), and the best weights so far
    (a copy, for restore_best)."""
    model, early_stopping = state.model, state.early_stopping
    with weights_to_evaluate(state):  # the EMA's, when kept: for validation and best_weights
        val = evaluate(model, state.loss_fn, val_batches, settings.task, settings.target_std, settings.measures)
        is_best = early_stopping.update(val[early_stopping.monitor.removeprefix("val_")], epoch, step)
        if is_best and settings.restore_best:
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return val, is_best, best_weights


def load_final_weights(state: TrainState, best_weights: dict | None) -> None:
    """The weights the test uses: the best epoch's (restore_best), or else the averaged ones (EMA)."""
    weights = best_weights if best_weights is not None else getattr(state.extras.get("ema"), "weights", None)
    if weights is not None:
        state.model.load_state_dict(weights)
