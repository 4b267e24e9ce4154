"""`nettrain-predict RUN_DIR_or_CHECKPOINT INPUT... [--out FILE] [--top-k K]`: use a trained model.

INPUT is image files, folders of images (searched recursively), a CSV/Parquet table with the
training table's feature columns (the target column may be there; it is ignored), or, for a
model trained on tensors (data=synthetic), a .safetensors file holding one float tensor of shape
(N, *input_shape), taken as it is. The
checkpoint's saved preprocessing (image size, channels, normalisation, feature statistics and
categories, class names) is applied, so the data set itself is not needed. One row per input:

    input, prediction, probability, top1, top1_probability, ..., topK, topK_probability

`input` is the file path or, for a table or a tensor file, FILE:ROW (row 1 is the first row); `prediction`
is the class name (the value, for regression; then there are no probability columns). A multi-label
model (data.task=multilabel) gives instead

    input, prediction, LABEL, LABEL_probability, ... (one pair per label)

with each label's probability (its sigmoid), its 0/1 decision (probability above --threshold,
default 0.5), and `prediction` the labels decided 1, joined by ';'.
Written to --out, by default RUN_DIR/predict/<checkpoint>-<time>.csv; the first rows are printed.

    nettrain-predict outputs/2026-01-01/12-00-00-000000 new_images/ --top-k 3
    nettrain-predict outputs/.../checkpoints/last.pt rows.csv --out rows-predicted.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from nettrain.commands import reader_may_stop_early
from nettrain.config import trust as trust_lib
from nettrain.errors import BadInput
from nettrain.files import write_text
from nettrain.run.folder import refuse_target_symlinks


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def default_out(checkpoint: Path) -> Path:
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / "predict" / f"{checkpoint.stem}-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S-%f')}.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nettrain-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run dir (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, or a CSV/Parquet table")
    parser.add_argument("--out", help="the CSV to write (default: RUN_DIR/predict/<checkpoint>-<time>.csv)")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to list per input (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) | auto | cuda | cuda:N | mps")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="multi-label models: a label is predicted when its probability is above this, 0 < t < 1 (default 0.5)",
    )
    trust_lib.add_trust_flag(parser)
    args = parser.parse_args(argv)

    if args.top_k < 1:
        print(f"Error: --top-k={args.top_k}: must be an integer >= 1", file=sys.stderr)
        return 2
    if args.threshold is not None and not 0 < args.threshold < 1:
        print(f"Error: --threshold={args.threshold:g}: must be a number in (0, 1), e.g. 0.5", file=sys.stderr)
        return 2
    try:
        refuse_target_symlinks(args.target, None if args.out else "predict")  # before anything is read
        from nettrain.engine import prediction  # torch: once the arguments are read

        path, rows = prediction.predict(
            args.target, args.inputs, args.top_k, args.device, trust=args.trust, threshold=args.threshold
        )
    except (BadInput, OmegaConfBaseException) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser() if args.out else default_out(path)
    write_rows(out, rows)
    show_rows(rows, path, out)
    return 0


def show_rows(rows: list[dict[str, Any]], checkpoint: Path, out: Path) -> None:
    """On a terminal, the first 20 rows as a table; piped or redirected, every row as plain CSV
    (whole file names, nothing cut to a width), with the `wrote` line on stderr."""
    console = Console()
    if not console.is_terminal:
        with reader_may_stop_early():  # `| head`: every row is in the file already
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {out}", file=sys.stderr)
        return
    table = Table(title=f"nettrain-predict: {len(rows)} inputs, {checkpoint}")
    for key in rows[0]:
        table.add_column(key)
    for row in rows[:20]:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    if len(rows) > 20:
        console.print(f"... {len(rows) - 20} more rows")
    console.print(f"wrote {out}")


def cli() -> None:
    sys.exit(main())
