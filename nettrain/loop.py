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
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Position:
    """Where training stands: `epoch` epochs done, plus `step_in_epoch` steps of the next one."""

    epoch: int = 0
    step_in_epoch: int = 0
    order: torch.Tensor | None = None  # the sample order of the epoch in progress
    loss_sum: torch.Tensor | None = None  # its training-loss sum so far
    train_time: float = 0.0  # its training seconds so far
    best_weights: dict | None = None  # the best epoch's weights, for restore_best
    history: list[dict] = field(default_factory=list)  # the metrics rows of the epochs done


@dataclass
class FitResult:
    epochs_run: int
    stopped_early: bool
    best_epoch: int
    best_value: float
    interrupted: bool = False


class StopRequest:
    """Asks the loop to stop after the current step (set by a signal handler, or a test)."""

    def __init__(self, after_steps: int | None = None):
        self.signum: int | None = None
        self.after_steps = after_steps  # stop on its own after this many steps (verify-resume)
        self.steps = 0

    def request(self, signum: int = 0) -> None:
        self.signum = signum

    def tick(self) -> bool:
        """Call once per step; True when the loop should stop now."""
        self.steps += 1
        if self.after_steps is not None and self.steps >= self.after_steps:
            self.request()
        return self.signum is not None


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


def fit(*, model, loss_fn, optimizer, schedule, train_batches, val_batches, epochs: int,
        grad_monitor, early_stopping, checkpointer, metrics, reporter, l1: float = 0.0,
        grad_clip: float | None = None, restore_best: bool = True, start: Position | None = None,
        stop: StopRequest | None = None, precision=None) -> FitResult:
    l1_params = [p for p in model.parameters() if p.dim() > 1]  # weight matrices and conv kernels
    device = next(model.parameters()).device
    start, stop = start or Position(), stop or StopRequest()
    if precision is None:
        from nettrain.precision import Precision

        precision = Precision("32", device)
    best_weights = start.best_weights
    parts = dict(model=model, optimizer=optimizer, schedule=schedule, early_stopping=early_stopping,
                 grad_monitor=grad_monitor, precision=precision, data_generator=train_batches.generator,
                 history=metrics.rows)
    epoch = start.epoch
    for epoch in range(start.epoch + 1, epochs + 1):
        # -- train (from the saved position when resuming mid-epoch) --------------------------
        resuming = epoch == start.epoch + 1 and start.order is not None
        order = start.order if resuming else train_batches.order()
        step = start.step_in_epoch if resuming else 0
        loss_sum = start.loss_sum if resuming else torch.zeros((), device=device)
        train_time = start.train_time if resuming else 0.0
        model.train()
        started = time.perf_counter()
        with reporter.progress(len(train_batches), epoch, done=step) as advance:
            for x, y in train_batches.batches(order, first_step=step):
                with precision.autocast():
                    loss = loss_fn(model(x), y)  # forward + data loss
                loss_sum += loss.detach() * len(y)
                if l1:
                    loss = loss + l1 * l1_penalty(l1_params)
                optimizer.zero_grad(set_to_none=True)
                precision.backward(loss)  # backward
                precision.unscale_(optimizer)  # true gradients (fp16 scales them)
                grad_monitor.accumulate()  # raw gradients, before clipping
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                precision.step(optimizer)  # update
                schedule.after_step()
                step += 1
                advance()
                if stop.tick() and step < len(train_batches):  # interrupted mid-epoch: save and leave
                    train_time += time.perf_counter() - started
                    checkpointer.save(Position(epoch - 1, step, order, loss_sum, train_time, best_weights), **parts)
                    return FitResult(epoch - 1, False, early_stopping.best_epoch, early_stopping.best, True)
        train_loss = (loss_sum / train_batches.n).item()  # the epoch's one host sync for training
        train_time += time.perf_counter() - started

        # -- validate, record, decide --------------------------------------------------------
        val_started = time.perf_counter()
        val_loss, val_acc = evaluate(model, loss_fn, val_batches)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
               "lr": schedule.lr, "epoch_time_s": train_time + time.perf_counter() - val_started,
               "samples_per_s": train_batches.n / train_time}
        grad_means = grad_monitor.end_epoch()
        row.update(grad_means)
        is_best = early_stopping.update(row[early_stopping.monitor], epoch)
        if is_best and restore_best:
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics.append(row)
        reporter.epoch(row, is_best)
        for warning in grad_monitor.check(grad_means):
            reporter.warn(f"epoch {epoch}: {warning}")
        schedule.after_epoch(val_loss)
        checkpointer.save(Position(epoch, best_weights=best_weights), is_best=is_best, **parts)
        if early_stopping.should_stop:
            reporter.note(f"early stopping: {early_stopping.monitor} has not improved for "
                          f"{early_stopping.patience} epochs (best {early_stopping.best:.4f} "
                          f"at epoch {early_stopping.best_epoch})")
            break
        if stop.signum is not None:
            return FitResult(epoch, False, early_stopping.best_epoch, early_stopping.best, True)

    if best_weights is not None:
        model.load_state_dict(best_weights)
    return FitResult(epochs_run=epoch, stopped_early=early_stopping.should_stop,
                     best_epoch=early_stopping.best_epoch, best_value=early_stopping.best)
