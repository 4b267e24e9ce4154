"""nettrain-export: every format is written, loaded back and compared with the eager model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_cfg, needs_extra
from nettrain.commands.export import main as export_main
from nettrain.commands.train import train
from nettrain.engine import exporting as export_lib
from nettrain.errors import ConfigError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    train(
        make_cfg(
            "model=cnn",
            "model.channels=[4]",
            "model.hidden=8",
            "model.norm=batchnorm",
            "data=synthetic",
            "data.num_samples=120",
            "data.input_shape=[1,8,8]",
            "data.num_classes=3",
            "epochs=1",
        ),
        output_dir=out,
    )
    return out


ONNX = pytest.param("onnx", marks=needs_extra("onnx", "onnx", "onnxruntime"))


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", ONNX, "exported"])
def test_each_format_round_trips_and_the_command_says_it_was_checked(run_dir, fmt, capsys):
    assert export_main([str(run_dir), "--format", fmt]) == 0
    said = capsys.readouterr().out
    assert "checked: loaded back and run on a batch of 2, it matches the eager model" in said
    file = run_dir / "export" / f"best{export_lib.FORMATS[fmt]}"
    sidecar = json.loads((run_dir / "export" / f"best.{fmt}.json").read_text())
    assert sidecar["check"]["passed"] and sidecar["input_shape"] == [1, 8, 8] and sidecar["num_classes"] == 3
    assert sidecar["model"]["_target_"] == "nettrain.models.CNN" and sidecar["file"] == file.name
    saved = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["preprocessing"]
    assert sidecar["preprocessing"] == saved and sidecar["class_names"] == saved.get("class_names")
    # loaded by the format's own reader, independent of nettrain, it gives the checkpoint's outputs
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    from nettrain.models import CNN

    eager = CNN((1, 8, 8), 3, channels=[4], hidden=8, norm="batchnorm").eval()
    eager.load_state_dict(state["model"])
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = eager(x)
        if fmt == "safetensors":
            from safetensors.torch import load_file

            fresh = CNN((1, 8, 8), 3, channels=[4], hidden=8, norm="batchnorm").eval()
            fresh.load_state_dict(load_file(str(file)))
            got = fresh(x)
        elif fmt == "torchscript":
            got = torch.jit.load(str(file))(x)
        elif fmt == "onnx":
            import onnxruntime

            got = torch.from_numpy(onnxruntime.InferenceSession(str(file)).run(None, {"input": x.numpy()})[0])
        else:
            got = torch.export.load(str(file)).module()(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # batch 5: the batch size is free


def test_a_mismatch_fails_the_check_and_out_picks_the_folder(run_dir, tmp_path, monkeypatch, capsys):
    real = export_lib.RUNNERS["torchscript"]
    monkeypatch.setitem(export_lib.RUNNERS, "torchscript", lambda f, m, x: real(f, m, x) + 1e-2)
    assert (
        export_main(
            [str(run_dir / "checkpoints" / "last.pt"), "--format", "torchscript", "--out", str(tmp_path / "deploy")]
        )
        == 1
    )
    assert "DOES NOT MATCH the eager model" in capsys.readouterr().out
    assert (tmp_path / "deploy" / "last.torchscript.pt").is_file()
    assert not json.loads((tmp_path / "deploy" / "last.torchscript.json").read_text())["check"]["passed"]


def test_bad_input_exits_2_with_one_line(run_dir, tmp_path, monkeypatch, capsys):
    assert export_main([str(tmp_path / "nowhere"), "--format", "safetensors"]) == 2
    assert "no such run dir or checkpoint file" in capsys.readouterr().err
    monkeypatch.setattr(export_lib.importlib.util, "find_spec", lambda name: None)
    assert export_main([str(run_dir), "--format", "onnx"]) == 2
    assert 'pip install "nettrain[onnx]"' in capsys.readouterr().err


# -- the sidecar: enough to rebuild the model and to prepare its input ------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three tiny runs exported as safetensors: RGB images resized 10 -> 8 through a CNN with
    batchnorm, and a table with one-hot and with embedded categories. {name: (run dir, inputs)}."""
    from made_data import image_folder, table

    base = tmp_path_factory.mktemp("sidecar")
    images = image_folder(base / "imgs", per_class=8, size=10, channels=3)
    rows = table(base / "rows.csv", n=120)
    image = ["data=image_folder", f"data.root={images}", "data.cache=false", "data.image_size=8", "model=cnn"]
    runs = {
        "image": ([*image, "model.channels=[4]", "model.hidden=8", "model.norm=batchnorm"], images / "train"),
        "onehot": (["data=csv", f"data.path={rows}", "data.target=label", "model.hidden=[8]"], rows),
        "embed": (["data=csv", f"data.path={rows}", "data.target=label", "data.categorical=embed"], rows),
    }
    for name, (options, _) in runs.items():
        train(make_cfg(*options, "epochs=1"), output_dir=base / name)
        assert export_main([str(base / name), "--format", "safetensors"]) == 0  # embed: valid codes checked
    return {name: (base / name, inputs) for name, (_, inputs) in runs.items()}


def _sidecar(run_dir):
    return json.loads((run_dir / "export" / "best.safetensors.json").read_text())


def test_the_sidecar_states_the_preprocessing_exactly(exported):
    saved = torch.load(exported["image"][0] / "checkpoints" / "best.pt", weights_only=True)["preprocessing"]
    image = _sidecar(exported["image"][0])
    assert "sync_bn" not in image["model"] and image["model"]["_target_"] == "nettrain.models.CNN"
    spec = image["input"]
    assert spec["dtype"] == "float32" and spec["shape"] == [3, 8, 8] and spec["channel_order"] == "RGB"
    assert spec["divide_by"] == 255.0 and spec["resize_hw"] == [8, 8] and spec["pixels"] == "uint8, 0..255"
    assert spec["mean"] == saved["mean"] and spec["std"] == saved["std"] and len(spec["mean"]) == 3
    assert image["output"]["class_names"] == saved["class_names"] == ["circle", "square", "stripe"]
    for name, widths in (("onehot", [1, 1, 3, 1]), ("embed", [1, 1, 1, 1])):
        table = _sidecar(exported[name][0])
        columns = table["input"]["columns"]
        assert [c["name"] for c in columns] == ["a", "b", "colour", "noise"] and [c["width"] for c in columns] == widths
        assert table["input"]["shape"] == [sum(widths)] and columns[2]["categories"] == ["blue", "green", "red"]
        assert columns[0]["formula"] == "(value - mean) / std" and table["input"].get("divide_by") is None


# A program that knows nothing of nettrain's data code: it prepares each input from the sidecar's
# `input` alone and rebuilds the model with model_from_sidecar. argv: (sidecar, inputs, out) triples.
FROM_SIDECAR = """
import csv, json, sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from hydra.utils import instantiate
from safetensors.torch import load_model, save_file

from nettrain.engine.exporting import model_from_sidecar


def image(file, spec):
    height, width = spec["resize_hw"]
    img = Image.open(file).convert("RGB" if spec["channel_order"] == "RGB" else "L")
    if (img.height, img.width) != (height, width):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32).reshape(height, width, -1)).permute(2, 0, 1)
    mean, std = (torch.tensor(spec[k], dtype=torch.float32).view(-1, 1, 1) for k in ("mean", "std"))
    return (pixels / spec["divide_by"] - mean) / std


def row(cells, spec):
    values = []
    for column in spec["columns"]:
        cell = cells[column["name"]].strip()
        if column["type"] == "numeric":
            values.append((float(cell) - column["mean"]) / column["std"])
        elif column["encoding"] == "onehot":
            values += [1.0 if cell == category else 0.0 for category in column["categories"]]
        else:
            values.append(float(column["categories"].index(cell) + 1) if cell in column["categories"] else 0.0)
    return torch.tensor(values, dtype=torch.float32)


args = sys.argv[1:]
for sidecar, inputs, out in zip(args[::3], args[1::3], args[2::3]):
    spec = json.loads(Path(sidecar).read_text())["input"]
    if spec["kind"] == "image":
        x = torch.stack([image(f, spec) for f in sorted(Path(inputs).rglob("*.png"))])
    else:
        with open(inputs, newline="") as f:
            x = torch.stack([row(cells, spec) for cells in csv.DictReader(f)])
    assert list(x.shape[1:]) == spec["shape"], x.shape
    with torch.no_grad():
        outputs = {"x": x, "out": model_from_sidecar(sidecar)(x)}
        content = json.loads(Path(sidecar).read_text())
        if "hydra.utils.instantiate" in content["build"]:  # the sidecar's other recipe, without nettrain's code
            shape, classes = content["input_shape"], content["num_classes"]
            model = instantiate(content["model"], input_shape=shape, num_classes=classes)
            load_model(model, str(Path(sidecar).with_name(content["file"])))
            outputs["by_hand"] = model.eval()(x)
    save_file(outputs, out)
"""


@pytest.mark.slow
def test_a_fresh_process_rebuilds_the_model_and_its_input_from_the_sidecar_alone(exported, tmp_path):
    from probes import python_main
    from safetensors.torch import load_file

    from nettrain.data.preprocessing import input_transform
    from nettrain.engine.build import build_trained
    from nettrain.engine.prediction import image_inputs, table_inputs

    args = []
    for name, (run_dir, inputs) in exported.items():
        args += [str(run_dir / "export" / "best.safetensors.json"), str(inputs), str(tmp_path / f"{name}.safetensors")]
    done = python_main(FROM_SIDECAR, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name, (run_dir, inputs) in exported.items():
        fresh = load_file(str(tmp_path / f"{name}.safetensors"))
        trained = build_trained(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True), "best.pt")
        prep = trained.preprocessing
        if name == "image":  # nettrain's own preprocessing of the same files, as nettrain-predict does it
            stored = image_inputs(sorted(inputs.rglob("*.png")), prep)
            ours = input_transform(prep, stored, torch.device("cpu"))(stored)
        else:
            ours = table_inputs(inputs, prep)[1]
        assert len(ours) == len(fresh["x"]) >= 24
        assert torch.allclose(fresh["x"], ours, rtol=1e-5, atol=1e-5), name
        with torch.no_grad():
            eager = trained.model(fresh["x"])
        assert torch.allclose(fresh["out"], eager, rtol=1e-5, atol=1e-6), name
        if name != "embed":  # built by hand from the sidecar's model config: the same model
            assert torch.equal(fresh["by_hand"], fresh["out"]), name
        assert fresh["out"].std() > 0  # not a constant output that would match anything


def _crafted_sidecar(exported, tmp_path, model: dict) -> Path:
    """A copy of the image run's sidecar and weights whose model config is `model`."""
    import shutil

    export_dir = exported["image"][0] / "export"
    content = _sidecar(exported["image"][0])
    content["model"] = model
    folder = tmp_path / "received"
    folder.mkdir()
    shutil.copy(export_dir / "best.safetensors", folder / "best.safetensors")
    (folder / "best.safetensors.json").write_text(json.dumps(content))
    return folder / "best.safetensors.json"


@pytest.mark.parametrize("payload", ["builtins.open", "nested", "resolver", "unknown"])
@pytest.mark.parametrize("trust", [False, True])
def test_a_crafted_sidecar_is_refused_before_anything_is_built(exported, tmp_path, payload, trust):
    from nettrain.errors import UntrustedTargetError

    sentinel = tmp_path / "SENTINEL"
    cnn = dict(_sidecar(exported["image"][0])["model"])
    write = f"{{_target_: nettrain.files.write_text, path: '{sentinel}', text: ran}}"
    model = {
        "builtins.open": {"_target_": "builtins.open", "file": str(sentinel), "mode": "w"},
        "nested": {**cnn, "extra": {"_target_": "nettrain.files.write_text", "path": str(sentinel), "text": "ran"}},
        "resolver": {**cnn, "extra": f"${{oc.create:{write}}}"},
        "unknown": {**cnn, "_target_": "mypkg.Model"},
    }[payload]
    sidecar = _crafted_sidecar(exported, tmp_path, model)
    if payload == "unknown" and trust:  # allowed deliberately: then it is built, and its module is missing
        with pytest.raises(ConfigError, match="cannot import module 'mypkg'"):
            export_lib.model_from_sidecar(sidecar, trust=True)
        return
    with pytest.raises(UntrustedTargetError) as refused:
        export_lib.model_from_sidecar(sidecar, trust=trust)
    said = str(refused.value)
    assert str(sidecar) in said and ("calls the resolver 'oc.create'" if payload == "resolver" else "_target_=" in said)
    assert not sentinel.exists()
    # the sidecar as written is accepted
    assert isinstance(
        export_lib.model_from_sidecar(exported["image"][0] / "export" / "best.safetensors.json"), torch.nn.Module
    )


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_checkpoint_without_its_preprocessing_is_named_with_exit_2(run_dir, tmp_path, capsys, command):
    from nettrain.commands.evaluate import main as eval_main
    from nettrain.commands.predict import main as predict_main
    from nettrain.run.checkpoint import save_checkpoint

    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    del state["preprocessing"]
    old = tmp_path / "old" / "checkpoints" / "best.pt"
    old.parent.mkdir(parents=True)
    save_checkpoint(old, state)
    code = {
        "eval": lambda: eval_main([str(old)]),
        "predict": lambda: predict_main([str(old), str(tmp_path / "x.png")]),
        "export": lambda: export_main([str(old), "--format", "safetensors"]),
    }[command]()
    err = capsys.readouterr().err
    assert code == 2 and f"{old}: holds no preprocessing (it was written by an older nettrain)" in err
    assert "Traceback" not in err and sorted(p.name for p in old.parent.parent.iterdir()) == ["checkpoints"]
