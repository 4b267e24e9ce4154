"""nettrain-verify-resume's work: a run trained straight and one interrupted and resumed, and
every difference between the two folders (metrics, the final checkpoint's tensors, the test result)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nettrain.config.schema import is_finite_number
from nettrain.engine import distributed
from nettrain.engine.loop import StopRequest
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.metrics import read_metrics
from nettrain.run.summary import RunStatus

TIMING = ("epoch_time_s", "samples_per_s")
# the summary's results, classification's and regression's (a key neither run has compares equal)
SUMMARY_KEYS = (
    "status",
    "best_epoch",
    "epochs_run",
    "best_val_loss",
    "best_val_acc",
    "best_val_r2",
    "best_val_mae",
    "test_loss",
    "test_acc",
    "test_r2",
    "test_mae",
)


def _tensors(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, torch.Tensor):
        return {prefix: node}
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, (list, tuple)):
        out = {}
        for i, value in enumerate(node):
            out.update(_tensors(value, f"{prefix}[{i}]"))
        return out
    return {prefix: node} if isinstance(node, (int, float)) and prefix else {}


def _same(a: Any, b: Any) -> bool:
    """Equal, counting NaN as equal to NaN (a diverged run diverges the same way when resumed)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare_runs(straight: Path, resumed: Path) -> list[str]:
    """Every difference between two finished run folders: metrics, final state, test result."""
    differences = []
    rows_a, rows_b = read_metrics(straight / "metrics.csv"), read_metrics(resumed / "metrics.csv")
    if len(rows_a) != len(rows_b):
        differences.append(f"metrics: {len(rows_a)} epochs straight vs {len(rows_b)} resumed")
    for ra, rb in zip(rows_a, rows_b):
        for key in ra:
            if key in TIMING or _same(ra[key], rb.get(key)):
                continue
            numbers = is_finite_number(ra[key]) and is_finite_number(rb.get(key))
            delta = abs(ra[key] - rb[key]) if numbers else math.nan
            differences.append(f"metrics epoch {ra['epoch']} {key}: {ra[key]} vs {rb.get(key)} (|diff| {delta:.3g})")
    state_a = load_checkpoint(straight / "checkpoints" / "last.pt")
    state_b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    for part in ("model", "optimizer", "scheduler", "ema"):  # ema: only in runs that keep one
        ta, tb = _tensors(state_a.get(part), part), _tensors(state_b.get(part), part)
        for key in sorted(set(ta) | set(tb)):
            va, vb = ta.get(key), tb.get(key)
            if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor):
                if va.shape != vb.shape:
                    differences.append(f"{key}: shape {tuple(va.shape)} vs {tuple(vb.shape)}")
                elif not (
                    torch.equal(va, vb)
                    or (
                        va.is_floating_point()
                        and vb.dtype == va.dtype
                        and torch.equal(va.isnan(), vb.isnan())
                        and torch.equal(va.nan_to_num(0.0), vb.nan_to_num(0.0))
                    )
                ):
                    diff = (va.double() - vb.double()).abs().max().item()
                    differences.append(f"{key}: max |diff| {diff:.3g}")
            elif not _same(va, vb):
                differences.append(f"{key}: {va!r} vs {vb!r}")
    sa = json.loads((straight / "summary.json").read_text())
    sb = json.loads((resumed / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        a, b = sa.get(key), sb.get(key)
        if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            differences.append(f"summary {key}: {sa.get(key)} vs {sb.get(key)}")
    return differences


def straight_and_resumed(
    config: Callable[..., Any],
    train: Callable[..., dict[str, Any]],
    workdir: Path,
    stop_after: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Train `config()` straight into workdir/straight, then into workdir/resumed stopped after
    `stop_after` steps (default: half the straight run's) and resumed from its checkpoint; return
    the facts (total_steps, stopped_after, resumed). `train` is nettrain-train's entry point."""
    sink = io.StringIO() if quiet else None
    # under torchrun/SLURM: one process group for the three runs, and stops decided alike on every rank
    with distributed.group(config()) as device, contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        make_stop = distributed.SharedStop if device is not None else StopRequest
        counter = make_stop()
        train(config(), output_dir=workdir / "straight", stop=counter)
        total_steps = counter.steps
        stop_after = stop_after or max(1, total_steps // 2)
        first = train(config(), output_dir=workdir / "resumed", stop=make_stop(after_steps=stop_after))
        resumed_too = first["status"] == RunStatus.INTERRUPTED
        if resumed_too:
            train(config(f"resume={workdir / 'resumed'}"), output_dir=workdir / "resumed")
    return {"total_steps": total_steps, "stopped_after": stop_after, "resumed": resumed_too}
