"""The training loop: data -> forward -> loss -> backward -> update, epoch after epoch.

`fit` is the whole loop, top to bottom. The side concerns are small objects it calls at named
points: the gradient monitor after backward, the schedule after each step and epoch, early
stopping, the checkpointer, the metrics writer and the reporter after each epoch.
Losses and accuracy accumulate on the device and are read once per epoch: no host sync per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FitResult:
    epochs_run: int
    stopped_early: bool
    best_epoch: int
    best_value: float


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
        grad_monitor, early_stopping, checkpointer, metrics, reporter,
        l1: float = 0.0, grad_clip: float | None = None, restore_best: bool = True,
        start_epoch: int = 0) -> FitResult:
    l1_params = [p for p in model.parameters() if p.dim() > 1]  # weight matrices and conv kernels
    device = next(model.parameters()).device
    best_weights = None
    epoch = start_epoch
    for epoch in range(start_epoch + 1, epochs + 1):
        # -- train ---------------------------------------------------------------------------
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        with reporter.progress(len(train_batches), epoch) as advance:
            for x, y in train_batches:
                loss = loss_fn(model(x), y)  # forward + data loss
                loss_sum += loss.detach() * len(y)
                if l1:
                    loss = loss + l1 * l1_penalty(l1_params)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # backward
                grad_monitor.accumulate()  # raw gradients, before clipping
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()  # update
                schedule.after_step()
                advance()
        train_loss = (loss_sum / train_batches.n).item()  # the epoch's one host sync for training
        train_time = time.perf_counter() - started

        # -- validate, record, decide --------------------------------------------------------
        val_loss, val_acc = evaluate(model, loss_fn, val_batches)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
               "lr": schedule.lr, "epoch_time_s": time.perf_counter() - started,
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
        checkpointer.save(epoch=epoch, model=model, optimizer=optimizer, schedule=schedule,
                          early_stopping=early_stopping, metrics=row, is_best=is_best)
        if early_stopping.should_stop:
            reporter.note(f"early stopping: {early_stopping.monitor} has not improved for "
                          f"{early_stopping.patience} epochs (best {early_stopping.best:.4f} "
                          f"at epoch {early_stopping.best_epoch})")
            break

    if best_weights is not None:
        model.load_state_dict(best_weights)
    return FitResult(epochs_run=epoch, stopped_early=early_stopping.should_stop,
                     best_epoch=early_stopping.best_epoch, best_value=early_stopping.best)
