"""`nettrain-predict RUN_DIR_or_CHECKPOINT INPUT... [--out FILE] [--top-k K]`: use a trained model.

INPUT is image files, folders of images (searched recursively), a CSV/Parquet table with the
training table's feature columns (the target column may be there; it is ignored), or, for a
model trained on tensors (data=synthetic), a .safetensors file holding one float tensor of shape
(N, *input_shape), taken as it is. The
checkpoint's saved preprocessing (image size, channels, normalisation, feature statistics and
categories, class names) is applied, so the data set itself is not needed. One row per input:

    input, prediction, probability, top1, top1_probability, ..., topK, topK_probability

`input` is the file path or, for a table or a tensor file, FILE:ROW (row 1 is the first row); `prediction`
is the class name (the value, for regression; then there are no probability columns).
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

from nettrain.config import trust as trust_lib
from nettrain.errors import BadInput, DataError, PredictError
from nettrain.files import write_text
from nettrain.run.checkpoint import pick
from nettrain.run.folder import refuse_target_symlinks

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
TENSOR_SUFFIXES = (".safetensors",)  # the model's inputs as they are, for data with no file form (data=synthetic)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """(image files, table and tensor files) from the command line; folders give their images."""
    from nettrain.data.image_folder import IMAGE_EXTENSIONS, list_images

    images, tables = [], []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise PredictError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            images += found
        elif not path.is_file():
            raise PredictError(f"{path}: no such file or folder")
        elif path.suffix.lower() in TABLE_SUFFIXES + TENSOR_SUFFIXES:
            tables.append(path)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            raise PredictError(
                f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}), a table (.csv, .parquet) or a tensor "
                "file (.safetensors)"
            )
    return images, tables


def image_inputs(paths: list[Path], prep: dict[str, Any]):
    """Decoded, resized uint8 images (N, C, H, W), decoded as the training images were."""
    import torch

    from nettrain.data.image_folder import decode_image

    if prep.get("kind") != "image":
        raise PredictError(f"{paths[0]}: an image, but {_trained_on(prep)}")
    decoded = []
    for path in paths:
        try:
            decoded.append(decode_image(path, tuple(prep["image_size"]), prep["channels"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is named
            raise PredictError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return torch.stack(decoded)


def table_records(path: Path, prep: dict[str, Any], with_target: bool = False) -> list[dict[str, Any]]:
    """The rows of a table as {column: value}; a DataError when it lacks a feature column the
    model was trained on (or, `with_target`, the target column)."""
    from nettrain.data.tabular import read_table

    header, rows = read_table(path)
    needed = [s["name"] for s in prep["features"]] + ([prep["target"]] if with_target else [])
    missing = [name for name in needed if name not in header]
    if missing:
        what = "column(s)" if with_target else "feature column(s)"
        raise DataError(f"lacks the {what} {missing} the model was trained on")
    return [dict(zip(header, row)) for row in rows]


def table_inputs(path: Path, prep: dict[str, Any]):
    """(row labels, encoded feature tensor) for a table with the training table's feature columns."""
    from nettrain.data.tabular import encode_rows

    if path.suffix.lower() in TENSOR_SUFFIXES:
        return tensor_inputs(path, prep)
    if prep.get("kind") != "table":
        raise PredictError(f"{path}: a table, but {_trained_on(prep)}")
    try:
        records = table_records(path, prep)
        return [f"{path}:{i + 1}" for i in range(len(records))], encode_rows(records, prep)
    except DataError as exc:
        raise PredictError(f"{path}: {exc}") from None


def _trained_on(prep: dict[str, Any]) -> str:
    """'the model was trained on ...' and what it takes instead, for an input of the wrong kind."""
    kind = prep.get("kind")
    if kind == "tensor":
        shape = ", ".join(str(d) for d in prep["input_shape"])
        return f"the model was trained on tensors (data=synthetic); give a .safetensors file with one tensor of shape (N, {shape})"
    return f"the model was trained on {kind} data"


def tensor_inputs(path: Path, prep: dict[str, Any]):
    """(row labels, inputs) from a .safetensors file holding one float tensor of shape
    (N, *input_shape): a model trained on tensors takes them as they are (no preprocessing)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if prep.get("kind") != "tensor":
        raise PredictError(f"{path}: a tensor file, but {_trained_on(prep)}")
    shape = tuple(prep["input_shape"])
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise PredictError(f"{path}: not a readable .safetensors file ({exc})") from None
    x = next(iter(tensors.values())) if len(tensors) == 1 else None
    if x is None or tuple(x.shape[1:]) != shape or not x.is_floating_point():
        found = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in tensors.items()) or "no tensor"
        raise PredictError(
            f"{path}: holds {found}; allowed: one float tensor of shape (N, {', '.join(map(str, shape))})"
        )
    return [f"{path}:{i + 1}" for i in range(len(x))], x.to(torch.float32)


def predict(
    target: str | Path,
    inputs: list[str],
    top_k: int = 3,
    device_name: str = "cpu",
    batch_size: int = 256,
    trust: bool = False,
) -> tuple[Path, list[dict[str, Any]]]:
    """(checkpoint path, one result row per input)."""
    import torch

    from nettrain.data.preprocessing import input_transform
    from nettrain.engine.build import build_trained

    path, state = pick(target, report=lambda line: print(line, file=sys.stderr))
    trained = build_trained(state, str(path), device=device_name, trust=trust)  # the stored config is checked first
    model, prep, device = trained.model, trained.preprocessing, trained.device
    images, tables = expand_inputs(inputs)
    names: list[str] = [str(p) for p in images]
    blocks = [image_inputs(images, prep)] if images else []
    for table in tables:
        labels, x = table_inputs(table, prep)
        names += labels
        blocks.append(x)
    x = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    transform = input_transform(prep, x, device)
    outputs = []
    with torch.no_grad():
        for chunk in x.split(batch_size):
            chunk = chunk.to(device)
            outputs.append(model(transform(chunk) if transform else chunk).float().cpu())
    out = torch.cat(outputs)
    return path, result_rows(names, out, prep, top_k)


def result_rows(names: list[str], out, prep: dict[str, Any], top_k: int) -> list[dict[str, Any]]:
    """input, prediction, probability and the top-k columns (regression: input, prediction)."""
    if prep.get("task") == "regression":
        values = (out.squeeze(1) * prep["target_std"] + prep["target_mean"]).tolist()
        return [{"input": n, "prediction": round(v, 6)} for n, v in zip(names, values)]
    classes = prep.get("class_names") or [str(i) for i in range(out.shape[1])]
    probs = out.softmax(dim=1)
    k = min(top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    rows = []
    for n, ps, idx in zip(names, top_p.tolist(), top_i.tolist()):
        row: dict[str, Any] = {"input": n, "prediction": classes[idx[0]], "probability": round(ps[0], 6)}
        for j in range(k):
            row[f"top{j + 1}"] = classes[idx[j]]
            row[f"top{j + 1}_probability"] = round(ps[j], 6)
        rows.append(row)
    return rows


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
    trust_lib.add_trust_flag(parser)
    args = parser.parse_args(argv)

    if args.top_k < 1:
        print(f"Error: --top-k={args.top_k}: must be an integer >= 1", file=sys.stderr)
        return 2
    try:
        refuse_target_symlinks(args.target, None if args.out else "predict")  # before anything is read
        path, rows = predict(args.target, args.inputs, args.top_k, args.device, trust=args.trust)
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
