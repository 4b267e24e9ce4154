"""The working directory is never on the module search path: a received folder holding files named
like the optional modules torch and Hydra look for (`pydot.py`, `opt_einsum.py`, `pynvml.py`,
`tqdm.py`, a `hydra_plugins/` package) runs none of them. From the working directory nettrain
imports only the module a `_target_` names, when the builder builds it: after a file's config
passed its trust check, in every process that builds (torchrun ranks, sweep jobs)."""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import made_data
import pytest
import torch

from conftest import QUIET, REPO, cli, in_process
from nettrain.config import usermodules

MODEL, OPTION = made_data.USER_MODEL, made_data.USER_OPTION
# modules torch, Hydra and their libraries import if they can: none may come from the working directory
BAITS = ("tqdm", "opt_einsum", "pynvml", "pydot")
SMALL = ["data=synthetic", "data.num_samples=300", "epochs=1"]


def _payload(sentinels: Path, name: str) -> str:
    return f"open({str(sentinels / name)!r}, 'w').write('ran')\n"


def plant_baits(folder: Path, sentinels: Path) -> None:
    """A module file for each name in BAITS and a `hydra_plugins/` plugin (a portion of Hydra's
    namespace package, as an installed plugin is), each writing its own sentinel when imported."""
    sentinels.mkdir(exist_ok=True)
    for name in BAITS:
        (folder / f"{name}.py").write_text(_payload(sentinels, name))
    plugin = folder / "hydra_plugins" / "evil_plugin"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(_payload(sentinels, "hydra_plugins"))


def home_with_model(folder: Path) -> Path:
    """A working directory with a model module of the user's own, its config option and a table."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mymodels.py").write_text(MODEL)
    (folder / "myconf" / "model").mkdir(parents=True)
    (folder / "myconf" / "model" / "twolayer.yaml").write_text(OPTION)
    made_data.table(folder / "t.csv", n=120)
    return folder


def user_model_args(home: Path) -> list[str]:
    return ["--config-dir", "myconf", "model=twolayer", "data=csv", f"data.path={home / 't.csv'}", "data.target=label"]


def console(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script NAME (next to this interpreter) as a process of its own, with
    this checkout first on PYTHONPATH (prepended: what the environment had stays)."""
    exe = Path(sys.executable).with_name(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=240, env=env)


@pytest.fixture(autouse=True)
def _forget_user_modules(tmp_path_factory):
    """Modules a test imported from its folders are gone afterwards, as in a new process."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(base):
            del sys.modules[name]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory) -> Path:
    """A run of `mymodels.TwoLayer` from the working directory `home` (a CSV table): home/run."""
    home = home_with_model(tmp_path_factory.mktemp("home"))
    done = cli(*user_model_args(home), *QUIET, "epochs=1", "hydra.run.dir=run", cwd=home)
    assert done.returncode == 0, done.stderr
    return home / "run"


# -- what a received folder holds runs no code ---------------------------------------------------


@pytest.mark.slow
def test_eval_in_a_received_run_folder_imports_none_of_its_module_named_files(tmp_path):
    """`cd run && nettrain-eval .`, the installed console script, in a run folder that also holds
    files named like the optional modules torch probes for."""
    done = cli(*QUIET, *SMALL, "model.hidden=[16]", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run, sentinels = tmp_path / "run", tmp_path / "sentinels"
    plant_baits(run, sentinels)
    proc = console("nettrain-eval", ".", cwd=run)
    assert sorted(p.name for p in sentinels.iterdir()) == []
    assert proc.returncode == 0, proc.stderr
    assert (run / "eval" / "best-test.json").is_file()


@pytest.mark.slow
def test_train_in_a_folder_of_module_named_files_imports_only_the_model_its_target_names(tmp_path):
    """`nettrain-train` (the console script) in a folder with the bait files and the user's own
    model module: the model trains from the working directory, no bait runs."""
    home = home_with_model(tmp_path / "home")
    sentinels = tmp_path / "sentinels"
    plant_baits(home, sentinels)
    proc = console("nettrain-train", *user_model_args(home), *QUIET, "epochs=1", "hydra.run.dir=run", cwd=home)
    assert sorted(p.name for p in sentinels.iterdir()) == []
    assert proc.returncode == 0, proc.stderr
    state = torch.load(home / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["_target_"] == "mymodels.TwoLayer"
    assert state["model"]["3.weight"].shape == (2, 12)  # width 12 from the option, 2 classes from the table


# -- every command: the working directory stays off sys.path, a user model still builds -------------

SEEN: dict = {}
ENTRIES = {
    "nettrain-train": "nettrain.commands.train:main",
    "nettrain-eval": "nettrain.commands.evaluate:cli",
    "nettrain-predict": "nettrain.commands.predict:cli",
    "nettrain-export": "nettrain.commands.export:cli",
    "nettrain-verify-resume": "nettrain.commands.verify_resume:cli",
    "nettrain-summarize": "nettrain.commands.summarize:main",
}


def observed_command() -> None:
    """The console script sys.argv[0] names; what the command left on sys.path and where its
    `mymodels` came from are kept in SEEN (in_process puts sys.path and sys.modules back)."""
    module, function = ENTRIES[sys.argv[0]].split(":")
    try:
        code = getattr(importlib.import_module(module), function)()
        if code:
            sys.exit(code)
    finally:
        SEEN["path"] = list(sys.path)
        SEEN["mymodels"] = getattr(sys.modules.get("mymodels"), "__file__", None)


@pytest.mark.parametrize(
    "command, builds",
    [
        (["nettrain-train", "HOME_MODEL", *QUIET, "epochs=1", "hydra.run.dir=again"], True),
        (["nettrain-eval", "run", "trust_targets=[mymodels.TwoLayer]"], True),
        (["nettrain-predict", "run", "t.csv", "--out", "p.csv", "--trust"], True),
        (["nettrain-export", "run", "--format", "safetensors", "--out", "exported", "--trust"], True),
        (["nettrain-verify-resume", "HOME_MODEL", *QUIET, "epochs=1", "plots=false", "--out", "verify"], True),
        (["nettrain-summarize", "run", "--no-plot", "--out", "summary"], False),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_no_command_puts_the_working_directory_on_sys_path(user_run, command, builds, monkeypatch):
    home = user_run.parent
    argv = [a for c in command for a in (user_model_args(home) if c == "HOME_MODEL" else [c])]
    # `python -m pytest` would have '' (the working directory) on the path: not what a console script has
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(home))])
    assert "mymodels" not in sys.modules
    SEEN.clear()
    done = in_process("test_working_dir:observed_command", *argv, cwd=home)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "" not in SEEN["path"] and str(home) not in SEEN["path"]
    # the model's module came from the working directory all the same, registered under its name
    assert SEEN["mymodels"] == (str(home / "mymodels.py") if builds else None)


# -- only after the trust check; never an installed module; siblings -----------------------------


def test_a_received_runs_module_in_the_working_directory_is_imported_only_when_trusted(
    user_run, tmp_path, capsys, monkeypatch
):
    """A received run whose checkpoint names `evilmod.Net`, with evilmod.py next to it: refused
    (exit 2) and not imported; with trust_targets=[evilmod.Net] it is imported and builds."""
    from nettrain.commands.evaluate import main
    from nettrain.run.checkpoint import save_checkpoint

    received, sentinel = tmp_path / "received", tmp_path / "SENTINEL"
    state = torch.load(user_run / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["model"]["_target_"] = "evilmod.Net"
    save_checkpoint(received / "run" / "checkpoints" / "best.pt", state)
    (received / "evilmod.py").write_text(_payload(tmp_path, "SENTINEL") + MODEL.replace("TwoLayer", "Net"))
    monkeypatch.chdir(received)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(received))])
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "model._target_='evilmod.Net'" in err and "trust_targets=[evilmod.Net]" in err
    assert "Traceback" not in err
    assert not sentinel.exists() and "evilmod" not in sys.modules
    assert not (received / "run" / "eval").exists()
    assert main(["run", "trust_targets=[evilmod.Net]"]) == 0  # the user's deliberate choice
    assert sentinel.read_text() == "ran"
    assert sys.modules["evilmod"].__file__ == str(received / "evilmod.py")


def test_a_job_that_changes_into_its_run_folder_still_finds_the_model_where_the_command_started(tmp_path):
    """hydra.job.chdir=true: the job runs in the run folder; the working directory is where it started."""
    home = home_with_model(tmp_path / "home")
    done = cli(*user_model_args(home), *QUIET, "epochs=1", "hydra.run.dir=run", "hydra.job.chdir=true", cwd=home)
    assert done.returncode == 0, done.stderr
    assert (home / "run" / "checkpoints" / "last.pt").is_file()


def test_a_file_in_the_working_directory_never_shadows_an_installed_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "colorsys.py").write_text(_payload(tmp_path, "SENTINEL"))
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    assert usermodules.import_from_working_dir("colorsys.rgb_to_hsv") is False
    assert "colorsys" not in sys.modules and not (tmp_path / "SENTINEL").exists()
    # a module that is nowhere else is loaded, under its name
    (tmp_path / "mine.py").write_text("VALUE = 7\n")
    assert usermodules.import_from_working_dir("mine.VALUE") is True
    assert sys.modules["mine"].VALUE == 7 and str(tmp_path) not in sys.path


def test_a_package_of_the_users_own_imports_its_submodules(tmp_path):
    """`mymodels/` with `__init__.py`: its submodules import each other as in any package, and a
    `_target_` may name one (mymodels.nets.Net)."""
    package = tmp_path / "mymodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(MODEL.replace("TwoLayer", "Block"))
    (package / "nets.py").write_text(
        "from mymodels.layers import Block\nfrom . import layers\n\n\nclass Net(layers.Block):\n    pass\n"
    )
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "nets.yaml").write_text("_target_: mymodels.nets.Net\nwidth: 12\n")
    done = cli("--config-dir", "myconf", *QUIET, *SMALL, "model=nets", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["_target_"] == "mymodels.nets.Net"
    assert state["model"]["3.weight"].shape == (10, 12)


def test_a_nested_target_names_a_module_of_its_own(tmp_path, monkeypatch):
    """Hydra builds nested `_target_`s too: the module each names is loaded, not only the outer one's."""
    from nettrain.engine.build import instantiate

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mylin.py").write_text("from torch import nn\n\n\ndef make(width):\n    return nn.Linear(width, 3)\n")
    built = instantiate(
        {"_target_": "torch.nn.Sequential", "_args_": [{"_target_": "mylin.make", "width": 5}]}, "model"
    )
    assert isinstance(built[0], torch.nn.Linear) and built[0].in_features == 5
    assert sys.modules["mylin"].__file__ == str(tmp_path / "mylin.py") and str(tmp_path) not in sys.path


def test_a_module_importing_a_sibling_from_the_working_directory_is_one_message_saying_what_to_do(tmp_path):
    (tmp_path / "mylayers.py").write_text(MODEL)
    (tmp_path / "mymodels.py").write_text("from mylayers import TwoLayer\n")
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "twolayer.yaml").write_text(OPTION)
    done = cli("--config-dir", "myconf", *QUIET, *SMALL, "model=twolayer", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "module 'mymodels' imports 'mylayers', which is a module in the working directory" in done.stderr
    assert "make them one package (mymodels/__init__.py with mymodels/mylayers.py" in done.stderr
    assert "PYTHONPATH" in done.stderr and "pip install" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_module_that_fails_while_importing_is_named_with_its_error(tmp_path):
    (tmp_path / "mymodels.py").write_text("raise RuntimeError('half-written module')\n")
    done = cli(*QUIET, *SMALL, "model._target_=mymodels.Net", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "module 'mymodels' was found but failed to import: RuntimeError: half-written module" in done.stderr
    assert "mymodels" not in sys.modules


# -- processes that build on their own ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH is read from Python 3.11 on")
def test_a_sweep_job_in_a_process_of_its_own_imports_the_users_model_there_and_no_bait(tmp_path):
    """submitit starts each job as `python -m submitit.core._submit` in the working directory, an
    interpreter of its own that never ran nettrain-train's main(): the job's builder loads mymodels
    from the working directory itself, and `-m` does not put that directory on its path. This is
    also the test of submitit's local executor running a two-job sweep to its summary."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    home = home_with_model(tmp_path / "home")
    sentinels = tmp_path / "sentinels"
    plant_baits(home, sentinels)
    record = "import os\nopen('imported_by', 'a').write(f'{os.getpid()}\\n')\n"
    (home / "mymodels.py").write_text(record + MODEL)
    done = cli("-m", *user_model_args(home), *QUIET, "epochs=1", "model.width=6", "hydra/launcher=submitit_local",
               "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "hydra.sweep.dir=sweep",
               "batch_size=32,64", cwd=home)  # fmt: skip
    assert sorted(p.name for p in sentinels.iterdir()) == []
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for job in ("0", "1"):
        state = torch.load(home / "sweep" / job / "checkpoints" / "last.pt", weights_only=True)
        assert state["model"]["1.weight"].shape[0] == 6
    assert (home / "sweep" / ".submitit").is_dir()
    rows = list(csv.DictReader((home / "sweep" / "summary.csv").open()))
    assert [(r["batch_size"], r["status"]) for r in rows] == [("32", "ok"), ("64", "ok")]
    importers = (home / "imported_by").read_text().split()
    assert len(set(importers)) == 2 and str(os.getpid()) not in importers  # in the jobs' processes, not the sweep's


def test_the_multirun_sets_pythonsafepath_for_its_jobs_and_puts_it_back(monkeypatch):
    from omegaconf import OmegaConf

    from nettrain.commands.sweep_callback import SweepSummaryCallback

    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    callback, config = SweepSummaryCallback(enabled=False), OmegaConf.create({})
    callback.on_multirun_start(config)
    assert os.environ["PYTHONSAFEPATH"] == "1"  # what the launcher's job processes inherit
    callback.on_multirun_end(config)
    assert "PYTHONSAFEPATH" not in os.environ
