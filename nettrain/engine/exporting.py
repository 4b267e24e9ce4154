"""The trained model written as a file other programs load (safetensors, TorchScript, ONNX,
torch.export), loaded back and checked against the eager model, with a JSON sidecar describing
its input and output (nettrain-export's work); :func:`model_from_sidecar` rebuilds the model of a
safetensors export from its sidecar alone."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import load_model, save_model

from nettrain.config import trust as trust_lib
from nettrain.config.export_formats import ATOL, CHECK_BATCH, FORMATS, RTOL
from nettrain.config.renames import upgrade
from nettrain.engine.build import build_model_for, build_trained, model_node
from nettrain.errors import ExportError
from nettrain.files import atomic_write, write_json
from nettrain.run.checkpoint import pick
from nettrain.run.folder import refuse_target_symlinks


def export(target: str | Path, fmt: str, out: str | Path | None = None, trust: bool = False) -> dict[str, Any]:
    """Write `fmt` for the checkpoint at `target`, load it back, compare with the eager model."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    if fmt == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        raise ExportError('--format onnx needs onnx and onnxruntime: pip install "nettrain[onnx]"')

    refuse_target_symlinks(target, None if out is not None else "export")  # before anything is read
    path, state = pick(target, report=lambda line: print(line, file=sys.stderr))
    trained = build_trained(state, str(path), device="cpu", trust=trust)  # the stored config is checked first
    model = trained.model
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    out_dir = Path(out) if out is not None else run_dir / "export"
    file = out_dir / f"{path.stem}{FORMATS[fmt]}"
    example = check_example(trained.preprocessing)
    with torch.no_grad():
        expected = model(example)
        WRITERS[fmt](model, example, file)
        got = RUNNERS[fmt](file, model, example)
    diff = (got.double() - expected.double()).abs().max().item()
    ok = bool(torch.allclose(got.float(), expected.float(), rtol=RTOL, atol=ATOL))
    check = {"batch": CHECK_BATCH, "max_abs_diff": diff, "rtol": RTOL, "atol": ATOL, "passed": ok}
    sidecar = file.with_name(f"{path.stem}.{fmt}.json")
    write_json(sidecar, sidecar_content(fmt, file, path, state, trained, check))
    return {"file": str(file), "sidecar": str(sidecar), "format": fmt, "max_abs_diff": diff, "passed": ok}


def check_example(prep: dict[str, Any]):
    """A seeded batch of CHECK_BATCH inputs the model takes: normal values, and for a table with
    embedded categories (categorical=embed) valid category codes in those columns."""
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((CHECK_BATCH, *prep["input_shape"]), generator=generator)
    if prep.get("kind") == "table" and prep.get("categorical") == "embed":  # one column per feature
        for i, column in enumerate(prep["features"]):
            if column["type"] == "categorical":
                codes = torch.randint(0, len(column["categories"]) + 1, (CHECK_BATCH,), generator=generator)
                example[:, i] = codes.float()
    return example


def sidecar_content(fmt: str, file: Path, path: Path, state: dict[str, Any], trained, check: dict) -> dict[str, Any]:
    """What the sidecar of `file` holds: enough to rebuild the model and to prepare its input."""
    prep = trained.preprocessing
    return {
        "format": fmt,
        "file": file.name,
        "checkpoint": str(path.resolve()),
        "epoch": state["epoch"],
        "weights": "ema" if "ema" in state else "model",
        "model": model_node(trained.cfg),  # resolved, without the keys nettrain reads itself (sync_bn)
        "build": build_recipe(fmt, prep),
        "input_shape": list(prep["input_shape"]),
        "input_dtype": "float32",
        "num_classes": prep["num_classes"],
        "class_names": prep.get("class_names"),
        "input": input_spec(prep),
        "output": output_spec(prep),
        "preprocessing": prep,
        "check": check,
    }


def build_recipe(fmt: str, prep: dict[str, Any]) -> str:
    """How to get the model back from the sidecar, in one line."""
    if fmt != "safetensors":
        return {"torchscript": "torch.jit.load(file)", "onnx": "onnxruntime.InferenceSession(file)"}.get(
            fmt, "torch.export.load(file).module()"
        )
    rebuild = "nettrain.engine.exporting.model_from_sidecar(this sidecar)"
    if prep.get("categorical") == "embed":
        return f"{rebuild}: the model config is wrapped in nettrain.data.tabular.EmbeddedInputs for the category codes"
    return (
        f"{rebuild}, or: hydra.utils.instantiate(model, input_shape=input_shape, num_classes=num_classes), "
        "then safetensors.torch.load_model(it, file) and .eval()"
    )


def input_spec(prep: dict[str, Any]) -> dict[str, Any]:
    """The exact preparation of one input, from the saved preprocessing record: what nettrain-predict
    does to a new image or table row (nettrain/data/preprocessing.py, image_folder.decode_image,
    tabular.encode_rows), spelled out."""
    shape = list(prep["input_shape"])
    spec: dict[str, Any] = {"kind": prep.get("kind"), "dtype": "float32", "shape": shape, "batch": "(N, *shape)"}
    if prep.get("kind") == "image":
        rgb = prep["channels"] == 3
        spec.update(
            layout="C, H, W (channels first)",
            channel_order="RGB" if rgb else "grayscale",
            decode=f"Pillow: Image.open(file).convert({'RGB' if rgb else 'L'!r})",
            resize_hw=list(prep["image_size"]),
            resize_method="Pillow: img.resize((W, H), Image.Resampling.BILINEAR), when the size differs",
            pixels="uint8, 0..255",
            divide_by=255.0,
            mean=list(prep["mean"]),
            std=list(prep["std"]),
            formula="x[c, h, w] = (pixel[c, h, w] / 255 - mean[c]) / std[c]",
        )
    elif prep.get("kind") == "table":
        spec.update(
            layout="one row of F values: the columns below in order, each giving `width` values",
            columns=[_column_spec(column, prep) for column in prep["features"]],
            cell="text stripped of spaces; empty, NA, N/A, NaN, null, None (any case) are missing",
        )
    else:
        spec.update(divide_by=None, formula="none: the model takes the inputs as they are")
    return spec


def _column_spec(column: dict[str, Any], prep: dict[str, Any]) -> dict[str, Any]:
    """One feature column's encoding (nettrain.data.tabular.encode_rows)."""
    impute = prep.get("impute") == "mean"
    if column["type"] == "numeric":
        missing = "0.0 (the train mean)" if impute else "not allowed"
        return {**column, "width": 1, "formula": "(value - mean) / std", "missing": missing}
    categories = column["categories"]
    missing = "the category '<missing>'" if "<missing>" in categories else "not allowed"
    if prep.get("categorical") == "embed":
        rule = "1 + the value's index in categories, as a float; 0.0 for a value not in categories"
        return {**column, "encoding": "code", "width": 1, "formula": rule, "missing": missing}
    rule = "one value per category, in order: 1.0 for the cell's category, else 0.0 (all 0.0 for an unknown value)"
    return {**column, "encoding": "onehot", "width": len(categories), "formula": rule, "missing": missing}


def output_spec(prep: dict[str, Any]) -> dict[str, Any]:
    """What the model's output (N, num_classes) means."""
    if prep.get("task") == "regression":
        return {
            "shape": ["N", 1],
            "meaning": "the standardised target: value = output * target_std + target_mean",
            "target": prep.get("target"),
            "target_mean": prep["target_mean"],
            "target_std": prep["target_std"],
        }
    if prep.get("task") == "multilabel":
        return {
            "shape": ["N", prep["num_classes"]],
            "meaning": "logits, one per label in class_names order: sigmoid gives each label's probability; "
            "a label is predicted when it is above 0.5 (its logit above 0), the cut the run's metrics used",
            "class_names": prep.get("class_names"),
        }
    return {
        "shape": ["N", prep["num_classes"]],
        "meaning": "logits, one per class in class_names order: softmax gives the probabilities, argmax the class",
        "class_names": prep.get("class_names"),
    }


def model_from_sidecar(path: str | Path, trust: bool = False, trusted: list[str] | tuple[str, ...] = ()):
    """The model of a safetensors export, rebuilt from its sidecar alone (`best.safetensors.json`),
    in eval mode on the CPU, with the weights of the file the sidecar names (beside it).

    The sidecar is a file someone may hand you, so its model config is checked as a checkpoint's is
    (nettrain.config.trust.check): only the model options nettrain ships are built, no resolver such as
    `${oc.create:...}`, unless you trust it (`trust=True`, or `trusted` fnmatch patterns; never
    torch.load, os, builtins or a file writer). The input the model takes is the sidecar's `input`
    (see :func:`input_spec`); a refused config raises UntrustedTargetError, a sidecar that is not
    one ExportError, before anything is built."""
    source = Path(path)
    content = _read_sidecar(source)
    described = {**(content.get("preprocessing") or {}), **{k: content[k] for k in ("input_shape", "num_classes")}}
    try:
        config = OmegaConf.create({"model": upgrade(content["model"])})  # a sidecar written before a module moved
        trust_lib.check(config, str(source), trusted, trust_all=trust)  # before anything is resolved or built
        model = build_model_for(config, described, torch.device("cpu"), context=f" from {source}")
    except OmegaConfBaseException as exc:  # a reference to a key it does not have, say
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ExportError(f"{source}: its model config cannot be read ({type(exc).__name__}: {first})") from None
    weights = source.with_name(content["file"])
    if not weights.is_file():
        raise ExportError(f"{source}: the weights file it names, {weights}, is missing")
    try:
        load_model(model, str(weights))  # strict: every tensor of the model, and only those
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ExportError(f"{weights}: does not fit the model {source} describes ({first})") from None
    return model.eval()


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's JSON, checked to be a safetensors export's, naming a file beside it."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable sidecar ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict):
        raise ExportError(f"{path}: not an export sidecar (no `model` config); allowed: the JSON nettrain-export wrote")
    if content.get("format") != "safetensors":
        raise ExportError(
            f"{path}: format={content.get('format')!r}; only a safetensors export's sidecar rebuilds the model "
            "(the other formats load by themselves: torch.jit.load, ONNX Runtime, torch.export.load)"
        )
    file, shape, classes = content.get("file"), content.get("input_shape"), content.get("num_classes")
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
        raise ExportError(f"{path}: file={file!r}; allowed: the name of a file beside the sidecar")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape) and shape):
        raise ExportError(f"{path}: input_shape={shape!r}; allowed: a list of positive integers")
    if not (isinstance(classes, int) and classes > 0):
        raise ExportError(f"{path}: num_classes={classes!r}; allowed: a positive integer")
    return content


# -- writers: model, example batch, path -> file on disk (atomically) -----------------------------
def _write_safetensors(model, example, file: Path) -> None:
    atomic_write(file, lambda tmp: save_model(model, tmp))


def _write_torchscript(model, example, file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, example)
        atomic_write(file, lambda tmp: traced.save(tmp))


def _write_onnx(model, example, file: Path) -> None:
    dynamo = importlib.util.find_spec("onnxscript") is not None  # the new exporter needs onnxscript

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                tmp,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=dynamo,
            )

    atomic_write(file, write)


def _write_exported(model, example, file: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, not the temporary file
    torch.export.save(program, buffer)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(buffer.getvalue())

    atomic_write(file, write)


# -- runners: load the file back and run it on the example batch ----------------------------------
def _run_safetensors(file: Path, model, example):
    fresh = copy.deepcopy(model)
    for p in fresh.parameters():
        p.data.zero_()  # every weight must come from the file
    load_model(fresh, str(file))
    return fresh.eval()(example)


def _run_torchscript(file: Path, model, example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(file), map_location="cpu")(example)


def _run_onnx(file: Path, model, example):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": example.numpy()})[0])


def _run_exported(file: Path, model, example):
    return torch.export.load(str(file)).module()(example)


WRITERS = {
    "safetensors": _write_safetensors,
    "torchscript": _write_torchscript,
    "onnx": _write_onnx,
    "exported": _write_exported,
}
RUNNERS = {
    "safetensors": _run_safetensors,
    "torchscript": _run_torchscript,
    "onnx": _run_onnx,
    "exported": _run_exported,
}
