"""`nettrain-eval RUN_DIR_or_CHECKPOINT [overrides]`: evaluate saved weights on the test or val split.

The run's own config (stored in the checkpoint) rebuilds the data and the model; overrides such
as `data.root=...`, `device=cuda` or `batch_size=512` apply on top. The result is printed and
written to RUN_DIR/eval/<checkpoint>-<split>.json.

    nettrain-eval outputs/2026-01-01/12-00-00-000000                # best.pt on the test split
    nettrain-eval outputs/.../checkpoints/last.pt --split val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _load_weights(model, weights: dict, path: Path, overrides: list[str]) -> None:
    from nettrain.config import ConfigError

    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        mismatch = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()][:3]
        given = f" (overrides: {' '.join(overrides)})" if overrides else ""
        raise ConfigError(
            [
                f"the model built from the config{given} does not fit the weights in {path}: "
                + "; ".join(mismatch)
                + ". Drop the model overrides; eval rebuilds the model "
                "the checkpoint was trained with"
            ]
        ) from None


def evaluate_checkpoint(
    target: str | Path, split: str = "test", overrides: list[str] | None = None, trust: bool = False
) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    from nettrain import checkpoint as ckpt
    from nettrain import trust as trust_lib
    from nettrain.build import build_data_and_model, build_loss, resolve_device
    from nettrain.config import TrainConfig, validate
    from nettrain.data import Batches
    from nettrain.data.preprocessing import input_transform
    from nettrain.ema import inference_weights
    from nettrain.loop import evaluate
    from nettrain.run_dir import refuse_target_symlinks

    overrides = list(overrides or [])
    refuse_target_symlinks(target, "eval")  # before anything is read: no link inside the run folder is followed
    path, state = ckpt.pick(target, report=lambda line: print(line, file=sys.stderr))
    # RUN_DIR/eval/ for a run's checkpoint; beside the file for a checkpoint outside a run
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), state["config"], OmegaConf.from_dotlist(overrides))
    assert isinstance(cfg, DictConfig)  # merged onto the schema: a mapping
    # the stored config is data from a file: build only what nettrain builds, unless trusted
    trust_lib.check(cfg, str(path), trust_lib.trusted_from_overrides(overrides), trust_all=trust)
    validate(cfg)
    device = resolve_device(cfg.device)
    data, loader, model = build_data_and_model(cfg, device)
    _load_weights(model, inference_weights(state), path, overrides)
    chosen = getattr(data, split)
    transform = input_transform(data.meta, chosen.x, device)  # uint8 images: normalised per batch
    batches = Batches(chosen, cfg.batch_size, device, transform=transform, **loader)
    target_std = data.meta.get("target_std", 1.0)
    metrics = evaluate(model, build_loss(cfg, data.task), batches, data.task, target_std)
    result = {
        "checkpoint": str(path),
        "epoch": state["epoch"],
        "split": split,
        "samples": batches.n,
        **{f"{split}_{name}": value for name, value in metrics.items()},  # loss, then acc or r2, mae
        "device": str(device),
        "overrides": list(overrides or []),
    }
    from nettrain.files import write_json

    write_json(run_dir / "eval" / f"{path.stem}-{split}.json", result)
    return result


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
