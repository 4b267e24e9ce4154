"""Before training: a dry run, the LR range test and the batch-size finder.

    nettrain-train dry_run=true [overrides]     build everything, show the model and the memory
                                                estimate, one forward + backward, no training
    nettrain-train find=lr [overrides]          Smith's LR range test -> lr_find.json, lr_find.png
                                                (unless plots=false), a suggested lr
    nettrain-train find=batch_size [overrides]  the largest batch that fits, confirmed by one step

Each builds the parts a training run is made of, as the run builds them (nettrain.engine.build.build_parts:
the data, its per-batch input transform, a fresh model, the loss for the data's task, the
optimizer, the precision), trains nothing, and writes no metrics and no checkpoints: only its
report (lr_find.png/.json, batch_size.json) in the run's output folder.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from torch import nn

from nettrain.engine.balance import loss_name
from nettrain.engine.build import Parts, build_parts
from nettrain.engine.distributed import resolve_device
from nettrain.insight.figures import pyplot, save_png
from nettrain.insight.memory import free_memory
from nettrain.insight.report import Reporter
from nettrain.run.folder import RunWriter
from nettrain.run.reproducibility import seed_everything
from nettrain.run.summary import RunStatus

# -- the model summary ------------------------------------------------------------------------


def model_summary(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, str, str, int]]:
    """(layer, type, output shape with the batch as B, parameters) per leaf layer, from a forward pass."""
    rows: list[tuple[str, str, str, int]] = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: Any) -> None:
            shape = list(out.shape[1:]) if isinstance(out, torch.Tensor) else []
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append((name, type(module).__name__, "[B, " + ", ".join(map(str, shape)) + "]", params))

        return record

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return rows


def summary_lines(rows: list[tuple[str, str, str, int]]) -> list[str]:
    width = [max(len(str(r[i])) for r in rows + [("layer", "type", "output shape", 0)]) for i in range(3)]
    lines = [f"  {'layer':<{width[0]}}  {'type':<{width[1]}}  {'output shape':<{width[2]}}  {'parameters':>12}"]
    lines += [f"  {n:<{width[0]}}  {t:<{width[1]}}  {s:<{width[2]}}  {p:>12,}" for n, t, s, p in rows]
    lines.append(f"  {'total':<{width[0]}}  {'':<{width[1]}}  {'':<{width[2]}}  {sum(r[3] for r in rows):>12,}")
    return lines


# -- the LR range test ----------------------------------------------------------------------------


@dataclass
class LrFind:
    lrs: list[float]
    losses: list[float]  # smoothed (bias-corrected exponential moving average)
    raw: list[float]
    suggestion: float | None
    min_lr: float | None  # the lr at the smoothed loss's minimum
    steepest_lr: float | None  # where the smoothed loss fell fastest
    diverged: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggested_lr": self.suggestion,
            "min_loss_lr": self.min_lr,
            "steepest_lr": self.steepest_lr,
            "diverged": self.diverged,
            "steps": len(self.lrs),
            "lr": self.lrs,
            "loss": self.losses,
            "raw_loss": self.raw,
        }


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 200,
    smoothing: float = 0.9,
    diverge: float = 4.0,
    read_every: int = 10,
    autocast: Callable[[], Any] | None = None,
) -> LrFind:
    """Smith's range test: train `model` for up to `steps` steps while the lr grows exponentially
    from start_lr to end_lr; stop once the smoothed loss exceeds `diverge` x its minimum.

    The suggestion is a tenth of the lr at the smoothed loss's minimum (Smith's rule: an order of
    magnitude below where the loss stops falling). Losses stay on the device and are read every
    `read_every` steps, not every step. `autocast`: the run's mixed precision for the forward pass."""
    growth = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs: list[float] = []
    pending: list[torch.Tensor] = []
    record = _SmoothedLoss(smoothing, diverge, read_every)
    diverged = False
    model.train()
    for step in range(steps):
        lr = start_lr * growth**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        with (autocast or contextlib.nullcontext)():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lrs.append(lr)
        pending.append(loss.detach())
        if len(pending) < read_every and step < steps - 1:
            continue
        diverged = record.add(torch.stack(pending).float().tolist())  # one host sync per read_every steps
        pending = []
        if diverged:
            break
    return record.result(lrs[: len(record.smoothed)], diverged)


@dataclass
class _SmoothedLoss:
    """The range test's losses as read: raw, and their bias-corrected exponential average."""

    smoothing: float
    diverge: float
    read_every: int
    raw: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    avg: float = 0.0
    best: float = math.inf

    def add(self, values: list[float]) -> bool:
        """Record the losses read; True once the smoothed loss is not finite or above `diverge` x its minimum."""
        for value in values:
            self.raw.append(value)
            self.avg = self.smoothing * self.avg + (1 - self.smoothing) * value if math.isfinite(value) else math.inf
            current = self.avg / (1 - self.smoothing ** len(self.raw))
            self.smoothed.append(current)
            if not math.isfinite(current) or (len(self.raw) > self.read_every and current > self.diverge * self.best):
                return True
            self.best = min(self.best, current)
        return False

    def result(self, lrs: list[float], diverged: bool) -> LrFind:
        """The suggestion (a tenth of the lr at the smoothed minimum), the minimum and the steepest drop."""
        smoothed, raw = self.smoothed, self.raw
        finite = [(loss, lr) for loss, lr in zip(smoothed, lrs) if math.isfinite(loss)]
        if len(finite) < 2:
            return LrFind(lrs, smoothed, raw, None, None, None, diverged)
        _, min_lr = min(finite)
        drops = [(smoothed[i] - smoothed[i - 1], lrs[i]) for i in range(1, len(smoothed)) if math.isfinite(smoothed[i])]
        return LrFind(lrs, smoothed, raw, min_lr / 10, min_lr, min(drops)[1] if drops else None, diverged)


def forever(make_epoch: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]) -> Iterator[tuple[Any, Any]]:
    """Batches epoch after epoch."""
    while True:
        yield from make_epoch()


def plot_lr_find(result: LrFind, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result.lrs, result.raw[: len(result.lrs)], color="0.8", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.losses, label="smoothed loss")
    if result.suggestion:
        ax.axvline(result.suggestion, color="green", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    if result.min_lr:
        ax.axvline(result.min_lr, color="red", linestyle=":", label=f"minimum {result.min_lr:.2g}")
    finite = [v for v in result.losses if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    plt.close(fig)


# -- the batch-size finder ------------------------------------------------------------------------


def largest_batch(fits: Callable[[int], bool], limit: int) -> int:
    """The largest b in [1, limit] with fits(b) (fits is monotone: true up to some b); 0 if none."""
    if not fits(1):
        return 0
    low, high = 1, limit
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def one_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Callable[[], Any] | None = None,
) -> float:
    """One real training step (forward, backward, update); the loss."""
    model.train()
    with (autocast or contextlib.nullcontext)():
        loss = loss_fn(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# -- the recipes behind dry_run=true, find=lr and find=batch_size ----------------------------------


def _overrides(drop: tuple[str, ...]) -> list[str]:
    """The command line's overrides (under Hydra), less the keys in `drop`."""
    try:
        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (tests call train() directly)
        return []
    return [o for o in task if o.split("=", 1)[0].lstrip("+~") not in drop]


def next_command(**settings: Any) -> str:
    """`nettrain-train` with this command's overrides, the finder's keys replaced by `settings`."""
    keep = _overrides(("find", "dry_run", "batch_size", "lr", *settings))
    return " ".join(["nettrain-train", *keep, *(f"{k}={v}" for k, v in settings.items())])


def run_tool(cfg: Any, output_dir: Path) -> dict[str, Any]:
    """dry_run=true, find=lr or find=batch_size; returns what it found (also in the output folder)."""
    reporter = Reporter(**cfg.console)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    parts = build_parts(cfg, device)  # as a training run builds them: data, transform, model, loss, ...
    if cfg.find == "lr":
        return find_lr(cfg, parts, output_dir, reporter)
    if cfg.find == "batch_size":
        return find_batch_size(cfg, parts, output_dir, reporter)
    return dry_run(cfg, parts, reporter)


def dry_run(cfg: Any, parts: Parts, reporter: Any) -> dict[str, Any]:
    """Show the model and the memory estimate, then one forward + backward on a training batch
    as the run would serve it (inputs transformed, the task's loss, the precision); no training."""
    model, est = parts.model, parts.memory
    if reporter.show_config:
        reporter.note(OmegaConf.to_yaml(cfg).rstrip())
    x, y = next(iter(parts.training_batches(cfg.batch_size, torch.Generator().manual_seed(cfg.seed))))
    rows = model_summary(model, x[:2])
    reporter.note(f"model ({type(model).__name__}), device {parts.device}:\n" + "\n".join(summary_lines(rows)))
    reporter.note(f"training memory estimate at batch {est.batch_size}:\n" + "\n".join(est.lines()))
    model.train()
    with parts.precision.autocast():
        loss = parts.loss_fn(model(x), y)
    loss.backward()  # no optimizer step: the model is left as built
    finite = all(bool(p.grad.isfinite().all()) for p in model.parameters() if p.grad is not None)
    loss_value = float(loss.detach())
    reporter.note(
        f"one forward + backward on a batch of {len(y)}: loss {loss_value:.4f} ({loss_name(parts.loss_fn)}), "
        f"gradients {'finite' if finite else 'NOT finite'}. Dry run done: nothing trained, nothing saved. Train with:\n"
        f"  {next_command()}"
    )
    return {
        "status": RunStatus.DRY_RUN,
        "best_val_loss": None,
        "loss": loss_value,
        "loss_fn": loss_name(parts.loss_fn),
        "gradients_finite": finite,
        "param_count": sum(r[3] for r in rows),
        "memory_estimate": est.to_dict(),
    }


def find_lr(cfg: Any, parts: Parts, output_dir: Path, reporter: Any) -> dict[str, Any]:
    """Smith's LR range test on a fresh model; lr_find.png and lr_find.json in the output folder."""
    batches = parts.training_batches(cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    s = cfg.lr_find
    reporter.note(
        f"LR range test: lr from {s.start_lr:g} to {s.end_lr:g} over up to {s.steps} steps "
        f"(batch {cfg.batch_size}), a fresh model; stops when the loss diverges"
    )
    result = lr_range_test(
        parts.model,
        parts.optimizer,
        parts.loss_fn,
        forever(lambda: iter(batches)),
        start_lr=s.start_lr,
        end_lr=s.end_lr,
        steps=s.steps,
        smoothing=s.smoothing,
        diverge=s.diverge,
        autocast=parts.precision.autocast,
    )
    plot, writer = output_dir / "lr_find.png", RunWriter(output_dir)  # rank 0 writes, under torchrun too
    if cfg.plots:  # plots=false: no PNG (matplotlib is most of a short test's time); the curve is in the JSON
        writer.run(plot_lr_find, result, plot)
    writer.json("lr_find.json", result.to_dict())
    if result.suggestion is None:
        reporter.warn(f"the loss was never finite: lower lr_find.start_lr (now {s.start_lr:g})")
    else:
        where = f"Plot: {plot}" if cfg.plots else "plots=false: no plot; the curve is in lr_find.json"
        reporter.note(
            f"{len(result.lrs)} steps{' (stopped: the loss diverged)' if result.diverged else ''}; "
            f"lowest loss at lr {result.min_lr:.2g}, fastest fall at lr {result.steepest_lr:.2g}.\n"
            f"suggested lr: {result.suggestion:.2g} (a tenth of the lowest-loss lr). "
            f"{where}\nTrain with:\n  {next_command(lr=f'{result.suggestion:.2g}')}"
        )
    return {
        "status": RunStatus.LR_FIND,
        "best_val_loss": None,
        **{k: v for k, v in result.to_dict().items() if k not in ("lr", "loss", "raw_loss")},
    }


def find_batch_size(cfg: Any, parts: Parts, output_dir: Path, reporter: Any) -> dict[str, Any]:
    """The largest batch the estimate fits into free memory (90% of it), confirmed by one real step."""
    est, device = parts.memory, parts.device
    free, source = free_memory(device)
    budget = int(0.9 * free)
    limit = len(parts.data.train)
    best = largest_batch(lambda b: est.at(b) <= budget, limit)
    reporter.note(f"free memory: {free / 2**20:,.0f} MiB ({source}); using 90%: {budget / 2**20:,.0f} MiB")
    if best == 0:
        reporter.warn(f"even batch 1 is estimated at {est.at(1) / 2**20:,.1f} MiB: more than fits")
        return {"status": RunStatus.BATCH_SIZE, "best_val_loss": None, "batch_size": None, "free_bytes": free}
    confirmed, peak = _confirm(cfg, parts, best)
    while confirmed is False and best > 1:  # out of memory after all: step down by a quarter
        best = max(1, best * 3 // 4)
        confirmed, peak = _confirm(cfg, parts, best)
    capped = " (the whole training split: no larger batch exists)" if best == limit else ""
    reporter.note(
        f"largest batch expected to fit: {best}{capped}, estimated {est.at(best) / 2**20:,.1f} MiB; "
        + (
            f"one real step at {best} ran, peak {peak / 2**20:,.1f} MiB"
            if peak
            else f"one real step at {best} ran"
            if confirmed
            else "not confirmed"
        )
        + f".\nTrain with:\n  {next_command(batch_size=best)}\n"
        "(a larger batch often wants a larger lr: try nettrain-train find=lr batch_size="
        f"{best})"
    )
    found = {
        "status": RunStatus.BATCH_SIZE,
        "best_val_loss": None,
        "batch_size": best,
        "estimate_bytes": est.at(best),
        "free_bytes": free,
        "free_source": source,
        "confirmed": bool(confirmed),
        "measured_peak_bytes": peak,
    }
    RunWriter(output_dir).json("batch_size.json", found)  # rank 0 writes, under torchrun too
    return found


def _confirm(cfg: Any, parts: Parts, batch: int) -> tuple[bool, int | None]:
    """One real training step on a training batch of `batch`, served as a run serves it, on a copy
    of the model with its own optimizer (the parts stay as built): (ran, CUDA peak bytes)."""
    device = parts.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = optimizer = x = y = None
    try:
        model, optimizer = parts.fresh_copy(cfg)
        x, y = next(iter(parts.training_batches(batch, torch.Generator().manual_seed(cfg.seed))))
        one_step(model, optimizer, parts.loss_fn, x, y, parts.precision.autocast)
    except torch.OutOfMemoryError:
        return False, None
    finally:
        del model, optimizer, x, y
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return True, int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
