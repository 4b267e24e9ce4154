"""nettrain-export: every format is written, loaded back and compared with the eager model."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_cfg, needs_extra
from nettrain import export as export_lib
from nettrain.export import main as export_main
from nettrain.train import train


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


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_checkpoint_without_its_preprocessing_is_named_with_exit_2(run_dir, tmp_path, capsys, command):
    from nettrain.checkpoint import save_checkpoint
    from nettrain.evaluate import main as eval_main
    from nettrain.predict import main as predict_main

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
