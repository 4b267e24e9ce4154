"""profile=true: where a training step's time goes, measured on the run as it is configured.

    nettrain-train profile=true [overrides]                  # profiler.warmup=3 profiler.steps=10

The run is built as training builds it (nettrain.engine.build.build_run: the data and its batches,
the augmentation, the model, the loss, the optimizer, the precision, the schedule). Then
`profiler.warmup` steps run unmeasured (allocations, lazy initialisation, autotuning) and
`profiler.steps` steps run under torch.profiler, each phase of each step in a
`torch.profiler.record_function` range of its own:

- data: the next batch drawn, gathered, moved to the device and normalised
- augment: the training augmentation (data.augment, data.mix, augment=...), when the run has any
- forward: the model and the loss
- backward: the gradients zeroed and the backward pass
- optimizer: unscaling, clipping, the optimizer step, the schedule, the EMA
- host sync: time the step spends waiting for the device (`.item()`, GradScaler's check of the
  gradients), taken out of the phase it happens in

On CUDA each phase ends by waiting for the device, so a phase's time includes its kernels (the
normal step overlaps them; the profile shows what each phase costs, not how they overlap).

It writes profile/trace.json (open it in https://ui.perfetto.dev or chrome://tracing) and
profile/summary.json (the table below), prints a one-screen table with the advice it implies, and
stops: nothing is trained that is kept. No checkpoint, metrics.csv or summary.json is written; the
few steps' changes to the weights are dropped with the process. The step the loop runs has no
ranges and no waits: this is an instrumented copy of nettrain.engine.loop.train_step, so training
pays nothing for the profiler.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from nettrain.engine.build import Run, build_run
from nettrain.engine.distributed import resolve_device
from nettrain.engine.loop import l1_penalty, make_update
from nettrain.errors import ConfigError
from nettrain.files import atomic_write
from nettrain.insight.report import Reporter
from nettrain.run import launch
from nettrain.run.folder import RunWriter
from nettrain.run.reproducibility import seed_everything
from nettrain.run.summary import RunStatus

FOLDER = "profile"  # in the run folder: trace.json, summary.json
STEP = "nettrain: step"
PHASES = ("data", "augment", "forward", "backward", "optimizer")  # each a range "nettrain: NAME"
HOST_SYNC = "host sync"
# the profiler's events in which the host waits for the device: a tensor read on the host
# (.item(), .tolist(), bool(t)), an op whose output size depends on the values, a stream or event
# synchronisation; the profile's own wait at each phase's end (cudaDeviceSynchronize) is not one
SYNC_EVENTS = ("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize", "cudaEventSynchronize")
SHARE_DATA = 0.3  # the data's share of the step above which it is the bottleneck named first
SHARE_AUGMENT = 0.3
SHARE_SYNC = 0.1


def profile_run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """profile=true: build the run, time `profiler.steps` steps phase by phase, write the trace
    and the table, print the table and the advice; return the table (with status "profile")."""
    if launch.context().distributed:
        raise ConfigError(["profile=True: profiles one process; run it without torchrun or SLURM"])
    reporter = Reporter(**cfg.console)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    run = build_run(cfg, device)
    warmup, steps = cfg.profiler.warmup, cfg.profiler.steps
    writer = RunWriter(output_dir)
    reporter.note(
        f"profiling {steps} training steps after {warmup} unmeasured ones (batch {cfg.batch_size}, device {device}); "
        "nothing is trained or saved but the profile"
    )
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's backend: no "no GPU" error line on a CPU run
    prof = profiled_steps(run, warmup, steps, settings_of(cfg))
    table = step_table(prof.events(), steps)
    table.update(device=str(device), batch_size=cfg.batch_size, warmup=warmup, steps=steps)
    table["samples_per_s"] = round(cfg.batch_size / (table["step_ms"] / 1000), 1) if table["step_ms"] else None
    table["advice"] = advice(table["shares"], cfg, device)
    trace = writer.path(FOLDER) / "trace.json"
    writer.run(atomic_write, trace, prof.export_chrome_trace)
    table["trace"] = f"{FOLDER}/trace.json"
    writer.json(f"{FOLDER}/summary.json", table)
    for line in table_lines(table):
        reporter.note(line)
    for line in table["advice"]:
        reporter.note(f"advice: {line}")
    reporter.note(f"trace: {trace} (open it in https://ui.perfetto.dev); table: {trace.parent / 'summary.json'}")
    return {"status": RunStatus.PROFILE, "best_val_loss": None, **table}


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """What the step does besides forward and backward, as the loop's settings take it."""
    return {"l1": cfg.regularization.l1, "grad_clip": cfg.regularization.grad_clip}


# -- the instrumented step -------------------------------------------------------------------------


def profiled_steps(run: Run, warmup: int, steps: int, settings: dict[str, Any]) -> profile:
    """`warmup` + `steps` training steps of `run`, the last `steps` under torch.profiler; the profiler."""
    device = run.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step = instrumented_step(run, **settings)
    batches = endless(run.train_batches)
    run.state.model.train()
    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1)) as prof:
        for _ in range(warmup + steps):
            step(batches)
            prof.step()
    return prof


def endless(train_batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches epoch after epoch, each epoch in a fresh order (eager batches: a run with
    the CUDA graph step is profiled as its eager step)."""
    batches = getattr(train_batches, "inner", train_batches)  # cuda_graph.IndexBatches wraps the Batches
    while True:
        yield from batches.batches(batches.order())


def instrumented_step(run: Run, l1: float = 0.0, grad_clip: float | None = None) -> Callable[[Iterator], None]:
    """One training step as nettrain.engine.loop.train_step takes it, each phase in a range of its
    own that ends by waiting for the device: step(batches) takes its batch from `batches`."""
    state = run.state
    model, optimizer, precision, loss_fn = state.model, state.optimizer, state.precision, state.loss_fn
    accumulation, augment = state.extras.get("accumulation"), run.augment
    update = make_update(state, grad_clip)
    l1_params: list[torch.Tensor] = [p for p in model.parameters() if p.dim() > 1]
    wait = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        with record_function(f"nettrain: {name}"):
            yield
            wait()

    def step(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> None:
        with record_function(STEP):
            with phase("data"):
                x, y = next(batches)
            if augment is not None:
                with phase("augment"):
                    x, y = augment(x, y)
            with phase("forward"):
                with precision.autocast():
                    loss = loss_fn(state.train_model(x), y)
                if l1:
                    loss = loss + l1 * l1_penalty(l1_params)
            if accumulation is None:
                with phase("backward"):
                    optimizer.zero_grad(set_to_none=True)
                    precision.backward(loss)
                with phase("optimizer"):
                    update()
                return
            opens_group, group_samples = accumulation.begin()
            with phase("backward"):
                if opens_group:
                    optimizer.zero_grad(set_to_none=True)
                precision.backward(loss * (len(y) / group_samples))
            if accumulation.end():
                with phase("optimizer"):
                    update()

    return step


# -- the table ---------------------------------------------------------------------------------


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping intervals joined (a sync event inside another counts once)."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(span: tuple[float, float], intervals: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(span[1], end) - max(span[0], start)) for start, end in intervals)


def step_table(events, steps: int) -> dict[str, Any]:
    """From the profiler's events: the mean step time and each part's mean time per step (ms) and
    share of the step; the host syncs taken out of the phases they happen in."""
    spans: dict[str, list[tuple[float, float]]] = {name: [] for name in (STEP, *(f"nettrain: {p}" for p in PHASES))}
    syncs: list[tuple[float, float]] = []
    for event in events:
        interval = (float(event.time_range.start), float(event.time_range.end))  # µs, the profiler's clock
        if event.name in spans:
            spans[event.name].append(interval)
        elif event.name in SYNC_EVENTS:
            syncs.append(interval)
    syncs = _merged(syncs)
    measured = len(spans[STEP]) or 1
    step_us = sum(end - start for start, end in spans[STEP]) / measured
    parts_us: dict[str, float] = {}
    sync_us = 0.0
    for name in PHASES:
        intervals = spans[f"nettrain: {name}"]
        if not intervals:
            continue
        waited = sum(_overlap(span, syncs) for span in intervals)
        parts_us[name] = (sum(end - start for start, end in intervals) - waited) / measured
        sync_us += waited / measured
    parts_us[HOST_SYNC] = sync_us
    parts = {name: round(us / 1000, 4) for name, us in parts_us.items()}
    return {
        "step_ms": round(step_us / 1000, 4),
        "parts_ms": parts,
        "parts_sum_ms": round(sum(parts_us.values()) / 1000, 4),
        "shares": {name: round(us / step_us, 4) if step_us else 0.0 for name, us in parts_us.items()},
        "measured_steps": len(spans[STEP]),
    }


def table_lines(table: dict[str, Any]) -> list[str]:
    """The console's table: each part's time per step, its share and a bar; the step at the end."""
    lines = [f"{'part':<10}  {'ms/step':>9}  {'share':>6}"]
    for name, ms in table["parts_ms"].items():
        share = table["shares"][name]
        lines.append(f"{name:<10}  {ms:>9.3f}  {share:>6.1%}  {'#' * round(share * 40)}")
    lines.append(f"{'step':<10}  {table['step_ms']:>9.3f}  {'':>6}  (parts sum {table['parts_sum_ms']:.3f} ms)")
    if table.get("samples_per_s"):
        lines.append(
            f"{table['measured_steps']} steps of batch {table['batch_size']}: {table['samples_per_s']:,.0f} samples/s"
        )
    return lines


def advice(shares: dict[str, float], cfg: DictConfig, device: torch.device) -> list[str]:
    """What the shares imply, naming the settings to change; one line when nothing stands out."""
    found = []
    data = cfg.data
    if shares.get("data", 0.0) >= SHARE_DATA:
        share = f"data loading is {shares['data']:.0%} of the step"
        if data.get("in_memory") is False:
            found.append(
                f"{share}: set data.in_memory=true (the split held on the device) or more workers "
                f"(data.num_workers={data.get('num_workers', 0)} now)"
            )
        else:
            found.append(
                f"{share} with the split on the device (data.in_memory=true): a larger batch_size "
                f"(now {cfg.batch_size}) spreads each batch's fixed cost over more samples"
            )
    if shares.get("augment", 0.0) >= SHARE_AUGMENT:
        found.append(
            f"augmentation is {shares['augment']:.0%} of the step: augment=... transforms each image on its own; "
            "a lighter setting (augment.policy=none) or data.augment=flip_crop (per batch) costs less"
        )
    if shares.get(HOST_SYNC, 0.0) >= SHARE_SYNC:
        why = (
            "trainer.precision=fp16's GradScaler checks the gradients each step: trainer.precision=bf16 needs no scaler"
            if cfg.trainer.precision == "fp16"
            else "a value read on the host each step (.item() in the model or the loss) stops the device's queue"
        )
        found.append(f"host syncs are {shares[HOST_SYNC]:.0%} of the step: {why}")
    if shares.get("optimizer", 0.0) >= 0.4 and device.type == "cuda" and cfg.trainer.fused_optimizer == "off":
        found.append(
            f"the optimizer step is {shares['optimizer']:.0%} of the step: trainer.fused_optimizer=auto uses fused kernels"
        )
    if not found:
        compute = shares.get("forward", 0.0) + shares.get("backward", 0.0)
        found.append(f"nothing stands out: forward + backward are {compute:.0%} of the step, the data keeps up")
    return found
