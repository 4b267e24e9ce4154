"""A trained model's predictions for new inputs (nettrain-predict's work): image files and folders,
tables with the training table's feature columns, and .safetensors tensors, each read with the
checkpoint's saved preprocessing; one result row per input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nettrain.data.image_folder import IMAGE_EXTENSIONS, decode_image, list_images
from nettrain.data.preprocessing import input_transform
from nettrain.data.tabular import encode_rows, read_table
from nettrain.engine.build import build_trained
from nettrain.errors import DataError, PredictError
from nettrain.run.checkpoint import pick

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
TENSOR_SUFFIXES = (".safetensors",)  # the model's inputs as they are, for data with no file form (data=synthetic)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """(image files, table and tensor files) from the command line; folders give their images."""
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
    header, rows = read_table(path)
    target = prep["target"] if isinstance(prep["target"], list) else [prep["target"]]  # multilabel: the label columns
    needed = [s["name"] for s in prep["features"]] + (target if with_target else [])
    missing = [name for name in needed if name not in header]
    if missing:
        what = "column(s)" if with_target else "feature column(s)"
        raise DataError(f"lacks the {what} {missing} the model was trained on")
    return [dict(zip(header, row)) for row in rows]


def table_inputs(path: Path, prep: dict[str, Any]):
    """(row labels, encoded feature tensor) for a table with the training table's feature columns."""
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
    threshold: float | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """(checkpoint path, one result row per input). `threshold`: a multi-label model's cut on each
    label's probability (None: 0.5); a PredictError for a model of another task."""
    path, state = pick(target, report=lambda line: print(line, file=sys.stderr))
    trained = build_trained(state, str(path), device=device_name, trust=trust)  # the stored config is checked first
    model, prep, device = trained.model, trained.preprocessing, trained.device
    task = prep.get("task", "classification")
    if threshold is not None and task != "multilabel":
        raise PredictError(
            f"--threshold={threshold:g}: cuts each label's probability of a multi-label model "
            f"(data.task=multilabel); {path} is a {task} model"
        )
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
    return path, result_rows(names, out, prep, top_k, DEFAULT_THRESHOLD if threshold is None else threshold)


DEFAULT_THRESHOLD = 0.5  # a multi-label model's cut: the one its metrics and label accuracy use


def result_rows(
    names: list[str], out, prep: dict[str, Any], top_k: int, threshold: float = DEFAULT_THRESHOLD
) -> list[dict[str, Any]]:
    """input, prediction, probability and the top-k columns (regression: input, prediction;
    multi-label: label_rows)."""
    if prep.get("task") == "multilabel":
        return label_rows(names, out, prep, threshold)
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


def label_rows(names: list[str], out, prep: dict[str, Any], threshold: float) -> list[dict[str, Any]]:
    """A multi-label model's rows: input; prediction, the labels whose probability (the sigmoid of
    its logit) is above `threshold`, joined by ';' (empty: none); then for each label its 0/1
    decision (column LABEL) and its probability (LABEL_probability)."""
    labels = [str(name) for name in prep.get("class_names") or range(out.shape[1])]
    rows = []
    for name, ps in zip(names, out.sigmoid().tolist()):
        row: dict[str, Any] = {
            "input": name,
            "prediction": ";".join(lab for lab, p in zip(labels, ps) if p > threshold),
        }
        for label, p in zip(labels, ps):
            row[label] = int(p > threshold)
            row[f"{label}_probability"] = round(p, 6)
        rows.append(row)
    return rows
