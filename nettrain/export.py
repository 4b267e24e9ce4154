"""`nettrain-export RUN_DIR_or_CHECKPOINT --format FORMAT [--out DIR]`: the trained model as a file
other programs can load, checked against the eager model.

    nettrain-export outputs/2026-01-01/12-00-00-000000 --format safetensors   # RUN_DIR/export/best.safetensors
    nettrain-export outputs/.../checkpoints/last.pt --format onnx --out deploy/

Formats:
- safetensors: the weights (`safetensors.torch.load_model` loads them into the model class)
- torchscript: a traced program (`torch.jit.load`)
- onnx: an ONNX graph (optional extra: `pip install "nettrain[onnx]"`; checked with ONNX Runtime)
- exported: a torch.export program (`torch.export.load(path).module()`), `.pt2`

Beside every file, a JSON sidecar holds the model config, the input shape, the class names, the
preprocessing the inputs need (from the checkpoint) and the check's result. Each export is loaded
back from disk and run on one batch; its output must match the eager model's within the tolerance.
The weights are the EMA's when the run kept one. Exit status: 0 checked, 1 the check failed,
2 bad input.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any

FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx", "exported": ".pt2"}
RTOL, ATOL = 1e-4, 1e-5
CHECK_BATCH = 2


class ExportError(ValueError):
    """Input the export cannot use; the message says what is allowed."""


def export(target: str | Path, fmt: str, out: str | Path | None = None, trust: bool = False) -> dict[str, Any]:
    """Write `fmt` for the checkpoint at `target`, load it back, compare with the eager model."""
    import torch

    from nettrain.build import build_trained, model_node
    from nettrain.files import write_json

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    if fmt == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        raise ExportError('--format onnx needs onnx and onnxruntime: pip install "nettrain[onnx]"')
    from nettrain.checkpoint import pick
    from nettrain.run_dir import refuse_target_symlinks

    refuse_target_symlinks(target, None if out is not None else "export")  # before anything is read
    path, state = pick(target, report=lambda line: print(line, file=sys.stderr))
    trained = build_trained(state, str(path), device="cpu", trust=trust)  # the stored config is checked first
    model, io = trained.model, trained.preprocessing
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    out_dir = Path(out) if out is not None else run_dir / "export"
    file = out_dir / f"{path.stem}{FORMATS[fmt]}"
    example = torch.randn((CHECK_BATCH, *io["input_shape"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example)
        WRITERS[fmt](model, example, file)
        got = RUNNERS[fmt](file, model, example)
    diff = (got.double() - expected.double()).abs().max().item()
    ok = bool(torch.allclose(got.float(), expected.float(), rtol=RTOL, atol=ATOL))
    preprocessing = state.get("preprocessing") or {}
    sidecar = {
        "format": fmt,
        "file": file.name,
        "checkpoint": str(path.resolve()),
        "epoch": state["epoch"],
        "weights": "ema" if "ema" in state else "model",
        "model": model_node(trained.cfg),  # resolved, without the keys nettrain reads itself (sync_bn)
        "input_shape": list(io["input_shape"]),
        "input_dtype": "float32",
        "num_classes": io["num_classes"],
        "class_names": preprocessing.get("class_names"),
        "preprocessing": preprocessing,
        "output": "logits (N, num_classes)",
        "check": {"batch": CHECK_BATCH, "max_abs_diff": diff, "rtol": RTOL, "atol": ATOL, "passed": ok},
    }
    write_json(file.with_name(f"{path.stem}.{fmt}.json"), sidecar)
    return {
        "file": str(file),
        "sidecar": str(file.with_name(f"{path.stem}.{fmt}.json")),
        "format": fmt,
        "max_abs_diff": diff,
        "passed": ok,
    }


# -- writers: model, example batch, path -> file on disk (atomically) -----------------------------
def _write_safetensors(model, example, file: Path) -> None:
    from safetensors.torch import save_model

    from nettrain.files import atomic_write

    atomic_write(file, lambda tmp: save_model(model, tmp))


def _write_torchscript(model, example, file: Path) -> None:
    import warnings

    import torch

    from nettrain.files import atomic_write

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, example)
        atomic_write(file, lambda tmp: traced.save(tmp))


def _write_onnx(model, example, file: Path) -> None:
    import warnings

    import torch

    from nettrain.files import atomic_write

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

    from nettrain.files import atomic_write

    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, not the temporary file
    torch.export.save(program, buffer)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(buffer.getvalue())

    atomic_write(file, write)


# -- runners: load the file back and run it on the example batch ----------------------------------
def _run_safetensors(file: Path, model, example):
    import copy

    from safetensors.torch import load_model

    fresh = copy.deepcopy(model)
    for p in fresh.parameters():
        p.data.zero_()  # every weight must come from the file
    load_model(fresh, str(file))
    return fresh.eval()(example)


def _run_torchscript(file: Path, model, example):
    import warnings

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
    from nettrain import trust as trust_lib

    parser = argparse.ArgumentParser(prog="nettrain-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run dir (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS), help="what to write")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export/)")
    trust_lib.add_trust_flag(parser)
    args = parser.parse_args(argv)
    from omegaconf.errors import OmegaConfBaseException

    from nettrain.checkpoint import CheckpointError
    from nettrain.config import ConfigError
    from nettrain.run_dir import RunFolderError

    try:
        result = export(args.target, args.format, args.out, trust=args.trust)
    except (ExportError, ConfigError, CheckpointError, OmegaConfBaseException, RunFolderError) as exc:
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
