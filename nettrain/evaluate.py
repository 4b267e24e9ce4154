"""`nettrain-eval RUN_DIR_or_CHECKPOINT [overrides]`: evaluate saved weights on the test or val split.

The model is rebuilt from the checkpoint (its config and saved preprocessing, nettrain.build.
build_trained) and the run's data from its config; overrides such as `data.root=...`,
`device=cuda` or `batch_size=512` apply on top. The result is printed and written to
RUN_DIR/eval/<checkpoint>-<split>.json.

    nettrain-eval outputs/2026-01-01/12-00-00-000000                # best.pt on the test split
    nettrain-eval outputs/.../checkpoints/last.pt --split val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def evaluate_checkpoint(
    target: str | Path,
    split: str = "test",
    overrides: list[str] | None = None,
    trust: bool = False,
) -> dict[str, Any]:
    """Evaluate the checkpoint at `target` on `split` of its run's data; write the result to
    RUN_DIR/eval/ and return it."""
    from nettrain import checkpoint as ckpt
    from nettrain.build import build_loss, build_trained
    from nettrain.data import Batches
    from nettrain.data.preprocessing import input_transform
    from nettrain.files import write_json
    from nettrain.loop import evaluate_metrics
    from nettrain.run_dir import refuse_target_symlinks

    overrides = list(overrides or [])
    refuse_target_symlinks(target, "eval")  # before anything is read: no link inside the run folder is followed
    path, state = ckpt.pick(target, report=lambda line: print(line, file=sys.stderr))
    # RUN_DIR/eval/ for a run's checkpoint; beside the file for a checkpoint outside a run
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    trained = build_trained(state, str(path), overrides, trust=trust)  # the stored config is checked first
    cfg, prep, device = trained.cfg, trained.preprocessing, trained.device
    chosen, loader = run_split(trained, split)
    transform = input_transform(prep, chosen.x, device)  # uint8 images: normalised per batch, as in training
    batches = Batches(chosen, cfg.batch_size, device, transform=transform, **loader)
    task = prep.get("task", "classification")
    metrics = evaluate_metrics(trained.model, build_loss(cfg, task), batches, task, prep.get("target_std", 1.0))
    result = {
        "checkpoint": str(path),
        "epoch": state["epoch"],
        "split": split,
        "samples": batches.n,
        **{f"{split}_{key}": value for key, value in metrics.items()},  # loss, then acc or r2, mae
        "device": str(device),
        "overrides": overrides,
    }
    write_json(run_dir / "eval" / f"{path.stem}-{split}.json", result)
    return result


def run_split(trained, split: str):
    """(`split` of the run's own data, built from the config as training built it; the loader
    settings); data that does not fit the model is a ConfigError naming both."""
    from nettrain.build import build_data
    from nettrain.config import ConfigError

    prep = trained.preprocessing
    data, loader = build_data(trained.cfg)
    model_side = describe_input(prep["input_shape"], prep["num_classes"], prep.get("class_names"))
    data_side = describe_input(list(data.input_shape), data.num_classes, data.meta.get("class_names"))
    if model_side != data_side:
        raise ConfigError([f"data {data.name!r} gives {data_side}, but the model was trained on {model_side}"])
    return getattr(data, split), loader


def describe_input(shape: list[int], num_classes: int, class_names: list[str] | None) -> str:
    return f"input shape {list(shape)} and {num_classes} classes" + (f" {class_names}" if class_names else "")


def main(argv: list[str] | None = None) -> int:
    from nettrain import trust as trust_lib

    parser = argparse.ArgumentParser(prog="nettrain-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run dir (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=... device=cuda")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    trust_lib.add_trust_flag(parser)
    args = parser.parse_intermixed_args(argv)
    from omegaconf.errors import OmegaConfBaseException

    from nettrain.checkpoint import CheckpointError
    from nettrain.config import ConfigError
    from nettrain.data import DataError
    from nettrain.run_dir import RunFolderError

    try:
        result = evaluate_checkpoint(args.target, args.split, args.overrides, trust=args.trust)
    except (ConfigError, CheckpointError, DataError, OmegaConfBaseException, RunFolderError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"nettrain-eval: {result['split']} split", show_header=False)
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return diverged_exit(args.target)


def diverged_exit(target: str) -> int:
    """0, or 3 when the evaluated run diverged: its checkpoints hold its last finite state, which
    is what was evaluated, but the run failed, and eval says so as training did (exit 3)."""
    from nettrain.resume import read_summary, run_dir_of

    summary = read_summary(run_dir_of(target) / "summary.json")
    if summary.get("status") != "diverged":
        return 0
    print(
        f"Error: {summary.get('error', 'the run diverged')}. The figures above are of that last finite "
        "checkpoint, not of a finished run",
        file=sys.stderr,
    )
    return 3


def cli() -> None:
    sys.exit(main())
