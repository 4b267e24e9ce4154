"""`nettrain-export RUN_DIR_or_CHECKPOINT --format FORMAT [--out DIR]`: the trained model as a file
other programs can load, checked against the eager model.

    nettrain-export outputs/2026-01-01/12-00-00-000000 --format safetensors   # RUN_DIR/export/best.safetensors
    nettrain-export outputs/.../checkpoints/last.pt --format onnx --out deploy/

Formats:
- safetensors: the weights (`safetensors.torch.load_model` loads them into the model class)
- torchscript: a traced program (`torch.jit.load`)
- onnx: an ONNX graph (optional extra: `pip install "nettrain[onnx]"`; checked with ONNX Runtime)
- exported: a torch.export program (`torch.export.load(path).module()`), `.pt2`

Beside every file, a JSON sidecar `<stem>.<format>.json` says all a program needs to use it: the
model config (as the model class takes it), the exact preprocessing of an input (`input`: dtype
and shape, for images the channel order, the resize, the division of uint8 pixels by 255 and the
per-channel mean and std; for tables each feature column's standardisation or categories), what
the output means (`output`), the class names, the checkpoint's preprocessing record and the
check's result. `nettrain.engine.exporting.model_from_sidecar` rebuilds the model from a
safetensors export's sidecar alone. Each export is loaded back from disk and run on one batch; its output must match the eager
model's within the tolerance. The weights are the EMA's when the run kept one. Exit status: 0
checked, 1 the check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf.errors import OmegaConfBaseException

from nettrain.config import trust as trust_lib
from nettrain.config.export_formats import ATOL, CHECK_BATCH, FORMATS, RTOL
from nettrain.errors import BadInput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nettrain-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run dir (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS), help="what to write")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export/)")
    trust_lib.add_trust_flag(parser)
    args = parser.parse_args(argv)

    from nettrain.engine import exporting  # torch: once the arguments are read

    try:
        result = exporting.export(args.target, args.format, args.out, trust=args.trust)
    except (BadInput, OmegaConfBaseException) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    verdict = "matches" if result["passed"] else "DOES NOT MATCH"
    print(f"wrote {result['file']} ({result['format']}) and {Path(result['sidecar']).name}")
    print(
        f"checked: loaded back and run on a batch of {CHECK_BATCH}, it {verdict} the eager model "
        f"(max |diff| {result['max_abs_diff']:.2g}; tolerance rtol {RTOL:g}, atol {ATOL:g})"
    )
    return 0 if result["passed"] else 1


def cli() -> None:
    sys.exit(main())
