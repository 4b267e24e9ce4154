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
check's result. :func:`model_from_sidecar` rebuilds the model from a safetensors export's sidecar
alone. Each export is loaded back from disk and run on one batch; its output must match the eager
model's within the tolerance. The weights are the EMA's when the run kept one. Exit status: 0
checked, 1 the check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nettrain.config import trust as trust_lib
from nettrain.config.renames import upgrade
from nettrain.errors import BadInput, ExportError
from nettrain.files import atomic_write, write_json
from nettrain.run.checkpoint import pick
from nettrain.run.folder import refuse_target_symlinks

FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx", "exported": ".pt2"}
RTOL, ATOL = 1e-4, 1e-5
CHECK_BATCH = 2


def export(target: str | Path, fmt: str, out: str | Path | None = None, trust: bool = False) -> dict[str, Any]:
    """Write `fmt` for the checkpoint at `target`, load it back, compare with the eager model."""
    import torch

    from nettrain.engine.build import build_trained

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
    import torch

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
    from nettrain.engine.build import model_node

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
    rebuild = "nettrain.commands.export.model_from_sidecar(this sidecar)"
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
    import torch
    from safetensors.torch import load_model

    from nettrain.engine.build import build_model_for

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
    from safetensors.torch import save_model

    atomic_write(file, lambda tmp: save_model(model, tmp))


def _write_torchscript(model, example, file: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, example)
        atomic_write(file, lambda tmp: traced.save(tmp))


def _write_onnx(model, example, file: Path) -> None:
    import torch

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
    import torch

    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, not the temporary file
    torch.export.save(program, buffer)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(buffer.getvalue())

    atomic_write(file, write)


# -- runners: load the file back and run it on the example batch ----------------------------------
def _run_safetensors(file: Path, model, example):
    from safetensors.torch import load_model

    fresh = copy.deepcopy(model)
    for p in fresh.parameters():
        p.data.zero_()  # every weight must come from the file
    load_model(fresh, str(file))
    return fresh.eval()(example)


def _run_torchscript(file: Path, model, example):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(file), map_location="cpu")(example)


def _run_onnx(file: Path, model, example):
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": example.numpy()})[0])


def _run_exported(file: Path, model, example):
    import torch

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nettrain-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run dir (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS), help="what to write")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export/)")
    trust_lib.add_trust_flag(parser)
    args = parser.parse_args(argv)

    try:
        result = export(args.target, args.format, args.out, trust=args.trust)
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
