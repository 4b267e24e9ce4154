"""`nettrain-verify-resume [overrides]`: prove that interrupting and resuming changes nothing.

Trains the configured run twice in a fresh folder, `outputs/verify-resume/<date>/<time>/`:
`straight/` without a break, and `resumed/` stopped in the middle (by the same stop request
that SIGINT/SIGTERM use), then resumed from its checkpoint. It then compares the per-epoch
metrics (all but the timing columns), every tensor of the final checkpoint (model, optimizer,
scheduler) and the test result, and prints "identical" or exactly what differs and by how much.
Exit status: 0 identical, 1 different, 2 bad config.

Use it on your own model: nettrain-verify-resume --config-dir myconf model=mine epochs=2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module

from nettrain.commands.train import train
from nettrain.config.schema import is_finite_number
from nettrain.config.store import register_schema
from nettrain.errors import BadInput, RunFolderError
from nettrain.files import timestamp, write_json
from nettrain.run import launch
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.folder import refuse_symlinks
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
    import torch

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
    import torch

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


def verify_resume(
    overrides: list[str],
    workdir: Path,
    config_dir: str | None = None,
    stop_after: int | None = None,
    quiet: bool = True,
) -> tuple[list[str], dict[str, Any]]:
    """Run straight and interrupted+resumed in `workdir`; return (differences, facts)."""
    from nettrain.engine import distributed
    from nettrain.engine.loop import StopRequest

    register_schema()
    base = ["console.show_config=false", "console.show_model=false", "console.progress=off"]
    if config_dir:  # the user's own options, searched as `--config-dir` does
        base.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")

    def config(*extra: str):
        with initialize_config_module("nettrain.conf", version_base="1.3"):
            return compose("train", overrides=[*base, *overrides, *extra])

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
    facts = {"total_steps": total_steps, "stopped_after": stop_after, "resumed": resumed_too}
    return compare_runs(workdir / "straight", workdir / "resumed"), facts


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; allowed: an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: allowed: an integer >= 1 (steps before the interruption)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nettrain-verify-resume", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, as for nettrain-train (key=value, group=option)"
    )
    parser.add_argument("--config-dir", help="a folder of your own config options, as for nettrain-train")
    parser.add_argument("--stop-after", type=_positive, help="interrupt after this many steps (default: half the run)")
    parser.add_argument("--out", help="output folder (default outputs/verify-resume/<date>/<time>)")
    args = parser.parse_intermixed_args(argv)
    env = launch.detect_or_exit()
    default = Path("outputs/verify-resume") / timestamp(sep="/")
    workdir = Path(args.out or launch.rank_zeros(env, "verify_dir", str(default)))  # one folder for all ranks

    try:  # an existing --out folder: its runs are written in it, none through a link
        refuse_symlinks(workdir)
    except RunFolderError as exc:
        print(f"Error: --out={str(args.out or workdir)!r}: {exc}", file=sys.stderr)
        return 2
    overrides = args.overrides or []
    if not any(o.startswith("epochs=") for o in overrides):
        overrides = ["epochs=2", *overrides]  # a few steps are enough; the user can ask for more
    try:
        differences, facts = verify_resume(overrides, workdir, args.config_dir, args.stop_after)
    except BadInput as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # composition errors (unknown option, wrong type) name the key
        from hydra.errors import HydraException

        if not isinstance(exc, HydraException):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return 2

    if env is not None and env.rank != 0:  # rank 0 compares, writes and reports
        return 0
    write_json(workdir / "verify.json", {**facts, "identical": not differences, "differences": differences})
    if not facts["resumed"]:
        print(
            f"NOT VERIFIED: the run ended after {facts['total_steps']} steps, before the interruption at step "
            f"{facts['stopped_after']}; allowed: --stop-after below {facts['total_steps']}"
        )
        return 1
    how = f"interrupted after step {facts['stopped_after']} of {facts['total_steps']} and resumed"
    if differences:
        print(f"DIFFERENT: straight vs {how}; {len(differences)} difference(s):")
        for line in differences:
            print(f"  {line}")
        print(f"runs kept in {workdir}")
        return 1
    print(f"identical: straight vs {how} (metrics, model, optimizer, scheduler, test result); runs in {workdir}")
    return 0


def cli() -> None:
    sys.exit(main())
