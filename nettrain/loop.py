"""The training loop: data -> forward -> loss -> backward -> update, epoch after epoch.

`fit` is the whole loop, top to bottom. The side concerns are small objects it calls at named
points: the gradient monitor after backward, the schedule after each step and epoch, early
stopping, the checkpointer, the metrics writer and the reporter after each epoch, and the stop
request (a signal, or a test) after each step. Losses and accuracy accumulate on the device and
are read once per epoch: no host sync per step.

A run can stop mid-epoch and resume bit for bit: the checkpoint carries the epoch's sample order,
the step reached, the partial loss sum and every RNG state (see checkpoint.snapshot/restore).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nettrain.interrupt import StopRequest
from nettrain.state import Position, TrainState

__all__ = ["FitResult", "LoopSettings", "Position", "RunOutputs", "StopRequest", "evaluate", "fit", "train_step"]


@dataclass
class FitResult:
    epochs_run: int
    stopped_early: bool
    best_epoch: int
    best_value: float
    interrupted: bool = False


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: nn.Module, batches) -> tuple[float, float]:
    """Mean loss and accuracy over all batches, in eval mode (dropout off, BatchNorm running stats)."""
    model.eval()
    loss_sum = correct = None
    for x, y in batches:
        out = model(x)
        batch_loss = loss_fn(out, y) * len(y)
        batch_correct = (out.argmax(dim=1) == y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
    return (loss_sum / batches.n).item(), (correct / batches.n).item()


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


@dataclass
class RunOutputs:
    """Where the loop reports: checkpoints, metrics.csv and the console (the gradient diagnosis and
    the experiment loggers, when built, are in TrainState.extras: 'diagnosis', 'loggers')."""

    checkpointer: Any  # nettrain.checkpoint.Checkpointer
    metrics: Any  # nettrain.metrics.MetricsWriter
    reporter: Any  # nettrain.report.Reporter


def train_step(state: TrainState, settings: LoopSettings) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The update for one batch: forward, loss, backward, gradient monitor, clipping, optimizer
    step, schedule. Returns step(x, y) -> the batch's loss sum (detached, on the device)."""
    model, optimizer, precision, schedule = state.model, state.optimizer, state.precision, state.schedule
    loss_fn, grad_monitor = state.loss_fn, state.grad_monitor
    l1_params: list[torch.Tensor] = [p for p in model.parameters() if p.dim() > 1]  # weight matrices, conv kernels

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            loss = loss_fn(model(x), y)  # forward + data loss
        batch_loss_sum = loss.detach() * len(y)
        if settings.l1:
            loss = loss + settings.l1 * l1_penalty(l1_params)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)  # backward
        precision.unscale_(optimizer)  # true gradients (fp16 scales them)
        grad_monitor.accumulate()  # raw gradients, before clipping
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        precision.step(optimizer)  # update
        schedule.after_step()
        return batch_loss_sum

    return step


def fit(
    state: TrainState,
    train_batches,
    val_batches,
    settings: LoopSettings,
    out: RunOutputs,
    start: Position | None = None,
    stop: StopRequest | None = None,
) -> FitResult:
    """Train `state` from `start` (a fresh run, or a resumed position) up to settings.epochs."""
    model, early_stopping, grad_monitor, schedule = (
        state.model,
        state.early_stopping,
        state.grad_monitor,
        state.schedule,
    )
    start, stop = start or Position(), stop or StopRequest()
    step_fn = train_step(state, settings)
    diagnosis, loggers = state.extras.get("diagnosis"), state.extras.get("loggers")  # per-epoch side concerns
    best_weights = start.best_weights
    epoch = start.epoch
    for epoch in range(start.epoch + 1, settings.epochs + 1):
        # -- train (from the saved position when resuming mid-epoch) --------------------------
        resuming = epoch == start.epoch + 1 and start.order is not None
        order = start.order if resuming else train_batches.order()
        step = start.step_in_epoch if resuming else 0
        loss_sum = start.loss_sum if resuming and start.loss_sum is not None else torch.zeros((), device=state.device)
        train_time = start.train_time if resuming else 0.0
        model.train()
        started = time.perf_counter()
        with out.reporter.progress(len(train_batches), epoch, done=step) as advance:
            for x, y in train_batches.batches(order, first_step=step):
                loss_sum += step_fn(x, y)
                step += 1
                advance()
                if stop.tick() and step < len(train_batches):  # interrupted mid-epoch: save and leave
                    train_time += time.perf_counter() - started
                    out.checkpointer.save(state, Position(epoch - 1, step, order, loss_sum, train_time, best_weights))
                    return FitResult(epoch - 1, False, early_stopping.best_epoch, early_stopping.best, True)
        train_loss = (loss_sum / train_batches.n).item()  # the epoch's one host sync for training
        train_time += time.perf_counter() - started

        # -- validate, record, decide --------------------------------------------------------
        val_started = time.perf_counter()
        val_loss, val_acc = evaluate(model, state.loss_fn, val_batches)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": schedule.lr,
            "epoch_time_s": train_time + time.perf_counter() - val_started,
            "samples_per_s": train_batches.n / train_time,
        }
        row.update(grad_monitor.end_epoch())
        verdict = diagnosis.end_epoch(row, state.history) if diagnosis else None  # adds its statistics
        is_best = early_stopping.update(row[early_stopping.monitor], epoch)
        if is_best and settings.restore_best:
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state.history.append(row)
        out.metrics.write(state.history)
        out.reporter.epoch(row, is_best)
        for finding in verdict.findings if verdict else []:
            out.reporter.warn(f"epoch {epoch}: {finding}")
        if loggers:
            loggers.log_epoch(row, model)
        schedule.after_epoch(val_loss)
        out.checkpointer.save(state, Position(epoch, best_weights=best_weights), is_best=is_best)
        if early_stopping.should_stop:
            out.reporter.note(
                f"early stopping: {early_stopping.monitor} has not improved for "
                f"{early_stopping.patience} epochs (best {early_stopping.best:.4f} "
                f"at epoch {early_stopping.best_epoch})"
            )
            break
        if stop.signum is not None:
            return FitResult(epoch, False, early_stopping.best_epoch, early_stopping.best, True)

    if best_weights is not None:
        model.load_state_dict(best_weights)
    return FitResult(
        epochs_run=epoch,
        stopped_early=early_stopping.should_stop,
        best_epoch=early_stopping.best_epoch,
        best_value=early_stopping.best,
    )
