"""Smaller defects: Unix-only modules, a shadowing `nettrain` folder, `~` in path keys, a
launcher without its command, the loss fitting the task, and the compile/estimate order."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import QUIET, make_cfg, needs_extra

SMALL = ["data=synthetic", "data.num_samples=300", "model.hidden=[16]", "epochs=1"]


@pytest.mark.slow
def test_the_entry_points_import_without_unix_only_modules(tmp_path):
    """As on Windows: `resource` and `fcntl` do not exist; the entry points still import and work."""
    code = textwrap.dedent("""
        import sys
        sys.modules["resource"] = None  # import resource -> ImportError
        sys.modules["fcntl"] = None
        import nettrain.commands.train, nettrain.run.sweep, nettrain.run.folder, nettrain.commands.evaluate, nettrain.commands.summarize
        import nettrain.insight.memory
        assert nettrain.insight.memory.peak_rss_mb() is None  # no `resource`: the figure is unknown, not a crash
        from nettrain.run.folder import RunLock
        with RunLock(sys.argv[1]):
            pass
        from nettrain.run.sweep import _locked
        from pathlib import Path
        with _locked(Path(sys.argv[1])):
            pass
        print("imported")
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "imported" in proc.stdout


@pytest.mark.slow
def test_a_folder_named_nettrain_on_the_path_is_detected(tmp_path):
    (tmp_path / "nettrain").mkdir()  # a checkout folder named like the package
    (tmp_path / "nettrain" / "README.md").write_text("a checkout\n")
    exe = Path(sys.executable).with_name("nettrain-train")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [str(exe), *QUIET, *SMALL], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path / 'nettrain'}" in proc.stderr and "shadows the installed nettrain package" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tilde_is_expanded_in_path_keys(tmp_path, monkeypatch, mnist_root):
    from nettrain.commands.train import train

    monkeypatch.setenv("HOME", str(mnist_root.parent))
    summary = train(
        make_cfg("data=mnist", f"data.root='~/{mnist_root.name}'", "epochs=1", "model.hidden=[16]"),
        output_dir=tmp_path / "r",
    )
    assert summary["status"] == "completed"


@needs_extra("slurm", "hydra_plugins.hydra_submitit_launcher")
def test_slurm_without_srun_is_one_clear_message(tmp_path, monkeypatch, capsys):
    from nettrain.commands.train import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nettrain-train", "-m", "hydra/launcher=slurm", *QUIET, *SMALL, "seed=0,1"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "hydra/launcher=slurm" in err and "sbatch" in err and "submitit_local" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        ("torch.nn.MSELoss", "loss=torch.nn.MSELoss"),
        ("torch.nn.BCEWithLogitsLoss", "loss=torch.nn.BCEWithLogitsLoss"),
    ],
)
def test_a_loss_that_does_not_fit_classification_is_refused(run, loss, message):
    from nettrain.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        run(*SMALL, f"loss._target_={loss}", "~loss.label_smoothing")
    assert message in str(info.value) and "class labels" in str(info.value)


def test_the_loss_plot_is_labelled_with_the_losss_name(run, monkeypatch):
    """loss.png's y axis names the run's loss. The figures are drawn as a run draws them and
    read where they would be saved: PNG encoding and the gradients figure (most of the time
    plotting takes, tested in test_metrics.py and test_diagnosis.py) are left out."""
    from nettrain.insight import report

    labels = {}
    monkeypatch.setattr(report, "save_png", lambda fig, path: labels.update({path.name: fig.axes[0].get_ylabel()}))
    monkeypatch.setattr(report, "plot_gradients", lambda rows, path: False)
    run(*SMALL, "loss._target_=torch.nn.NLLLoss", "~loss.label_smoothing", "plots=true")
    assert labels == {
        "loss.png": "NLLLoss",
        "accuracy.png": "accuracy",
        "lr.png": "lr",
        "grad_means.png": "mean |grad| (log)",
    }


def test_the_memory_estimate_runs_before_compiling(run, monkeypatch):
    """The estimate's forward pass runs on the eager model: torch.compile comes after it."""
    import torch

    from nettrain.engine import build

    order = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: order.append("compile"))
    real = build.memory_estimate

    def estimate(*args, **kwargs):
        order.append("estimate")
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "memory_estimate", estimate)
    run(*SMALL, "trainer.compile=true")
    assert order == ["estimate", "compile"]
