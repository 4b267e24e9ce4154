"""Files a user receives are data, not code: a crafted checkpoint given to nettrain-eval and an
edited run config given to `resume=` are refused, and a sentinel file proves no payload ran."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import QUIET

SMALL = ["data=synthetic", "data.num_samples=300", "epochs=1", "model.hidden=[16]"]


class Payload:
    """Unpickling this writes the sentinel file: what `torch.load(weights_only=False)` would run."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def _train(monkeypatch, tmp_path, *extra: str) -> Path:
    from nettrain.commands.train import main

    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nettrain-train", *QUIET, *SMALL, f"hydra.run.dir={run}", *extra])
    main()
    assert (run / "summary.json").is_file()
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        yield _train(mp, tmp_path_factory.mktemp("trained"))
    finally:
        mp.undo()


def _craft(run: Path, tmp_path: Path, group: str, node: dict) -> Path:
    """A copy of the run's best.pt whose stored config builds `node` as `group`, with a valid .sha256."""
    from nettrain.run.checkpoint import save_checkpoint

    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["config"][group] = node
    path = tmp_path / "crafted" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, state)
    return path


def _payloads(tmp_path: Path, sentinel: Path) -> dict[str, tuple[str, dict]]:
    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload(sentinel)}, evil)
    return {
        "torch.load": ("data", {"_target_": "torch.load", "f": str(evil), "weights_only": False}),
        "write_text": ("data", {"_target_": "nettrain.files.write_text", "path": str(sentinel), "text": "ran"}),
        "builtins.open": ("model", {"_target_": "builtins.open", "file": str(sentinel), "mode": "w"}),
        "nested": (
            "model",
            {
                "_target_": "nettrain.models.MLP",
                "hidden": [16],
                "extra": {"_target_": "pathlib.Path.touch", "self": str(sentinel)},
            },
        ),
    }


@pytest.mark.parametrize("payload", ["torch.load", "write_text", "builtins.open", "nested"])
@pytest.mark.parametrize("trust", [[], ["--trust"]])
def test_eval_refuses_a_crafted_checkpoint_and_runs_no_payload(trained, tmp_path, capsys, payload, trust):
    from nettrain.commands.evaluate import main

    sentinel = tmp_path / "SENTINEL"
    group, node = _payloads(tmp_path, sentinel)[payload]
    crafted = _craft(trained, tmp_path, group, node)
    assert main([str(crafted), *trust]) == 2
    err = capsys.readouterr().err
    target = node["extra"]["_target_"] if payload == "nested" else node["_target_"]
    assert f"_target_={target!r} in {crafted}" in err
    assert "Traceback" not in err
    assert not sentinel.exists()
    assert not (crafted.parent.parent / "eval").exists()  # nothing written either


def test_eval_allows_a_trusted_target_deliberately(trained, tmp_path, capsys):
    from nettrain.commands.evaluate import main

    crafted = _craft(trained, tmp_path, "loss", {"_target_": "mytorchext.FocalLoss"})
    assert main([str(crafted)]) == 2
    err = capsys.readouterr().err
    assert "loss._target_='mytorchext.FocalLoss'" in err and "trust_targets=[mytorchext.FocalLoss]" in err
    # trusted: the check passes, and the (missing) module is then reported as a build error
    assert main([str(crafted), "--trust"]) == 2
    assert "cannot import module 'mytorchext' for _target_ 'mytorchext.FocalLoss'" in capsys.readouterr().err
    # the user's own override replaces the file's target: nothing to trust
    assert main([str(crafted), "loss._target_=torch.nn.CrossEntropyLoss"]) == 0


def test_eval_of_an_ordinary_checkpoint_still_works(trained, capsys):
    from nettrain.commands.evaluate import main

    assert main([str(trained)]) == 0


def test_a_checkpoint_with_an_unknown_task_is_one_line_not_a_traceback(trained, tmp_path, capsys):
    from nettrain.commands.evaluate import main
    from nettrain.run.checkpoint import save_checkpoint

    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    state["preprocessing"]["task"] = "segmentation"
    crafted = tmp_path / "crafted" / "checkpoints" / "best.pt"
    crafted.parent.mkdir(parents=True)
    save_checkpoint(crafted, state)
    assert main([str(crafted)]) == 2
    err = capsys.readouterr().err
    assert "preprocessing.task='segmentation'; allowed: classification, regression" in err and "Traceback" not in err


def test_resume_refuses_an_edited_callback_and_runs_no_payload(monkeypatch, tmp_path, capsys):
    from nettrain.commands.train import main

    run = _train(monkeypatch, tmp_path)
    sentinel = tmp_path / "SENTINEL"
    saved = run / ".hydra" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    config["hydra"]["callbacks"]["evil"] = {
        "_target_": "nettrain.files.write_text",
        "path": str(sentinel),
        "text": "ran",
    }
    saved.write_text(yaml.safe_dump(config))
    summary_before = (run / "summary.json").read_text()
    monkeypatch.setattr(sys, "argv", ["nettrain-train", f"resume={run}", "epochs=2"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "hydra.callbacks.evil._target_='nettrain.files.write_text'" in err
    assert "trust_targets=[nettrain.files.write_text]" not in err  # a file writer is never allowed
    assert not sentinel.exists()
    assert (run / "summary.json").read_text() == summary_before


def _resume(monkeypatch, run: Path, *extra: str) -> int:
    from nettrain.commands.train import main

    monkeypatch.setattr(sys, "argv", ["nettrain-train", f"resume={run}", "epochs=2", *extra])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code


def _edit_saved_config(run: Path, edit) -> None:
    saved = run / ".hydra" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    edit(config)
    saved.write_text(yaml.safe_dump(config))


def test_resume_refuses_a_group_option_planted_in_the_run_folder(monkeypatch, tmp_path, capsys):
    """--config-dir RUN/.hydra puts the run folder on the search path: a defaults list that pulls a
    planted option in is refused, and so is the planted option's folder itself, even when only the
    user's own override would pick it."""
    run = _train(monkeypatch, tmp_path)
    sentinel = tmp_path / "SENTINEL"
    (run / ".hydra" / "hydra" / "launcher").mkdir(parents=True)
    (run / ".hydra" / "hydra" / "launcher" / "evil.yaml").write_text(
        f"_target_: nettrain.files.write_text\npath: {sentinel}\ntext: ran\n"
    )
    _edit_saved_config(
        run, lambda c: c.update(defaults=["nettrain_schema", {"override /hydra/launcher": "evil"}, "_self_"])
    )
    assert _resume(monkeypatch, run) == 2
    err = capsys.readouterr().err
    assert "defaults=['nettrain_schema', {'override /hydra/launcher': 'evil'}, '_self_'] in " in err
    assert "Traceback" not in err and not sentinel.exists()
    _edit_saved_config(run, lambda c: c.pop("defaults"))
    assert _resume(monkeypatch, run, "hydra/launcher=evil") == 2
    assert f"{run / '.hydra' / 'hydra'}/: a folder of config options in a run's .hydra/" in capsys.readouterr().err
    assert not sentinel.exists()


def _hidden(sentinel: Path) -> str:
    """A value that becomes a `_target_` when Hydra resolves it: the resolver attack's payload."""
    return f"${{oc.create:{{_target_: nettrain.files.write_text, path: '{sentinel}', text: ran}}}}"


HIDDEN_AT = {
    "hydra.callbacks.evil": lambda config, value: config["hydra"]["callbacks"].update(evil=value),
    "model.extra": lambda config, value: config["model"].update(extra=value),
    "hydra.job_logging.handlers.file.filename": lambda config, value: config["hydra"].update(
        job_logging={"handlers": {"file": {"class": "logging.FileHandler", "filename": value}}}
    ),
}


@pytest.mark.parametrize("where", list(HIDDEN_AT))
def test_resume_and_rerun_refuse_a_resolver_in_the_saved_config(monkeypatch, tmp_path, capsys, where):
    """An edited `.hydra/config.yaml` whose value builds a hidden target through `${oc.create:...}`
    (in the hydra section too, which resume does not compare) runs nothing: `resume=RUN_DIR` and
    the re-run through `--config-dir RUN_DIR/.hydra` both refuse it, naming the key."""
    from nettrain.commands.train import main

    run = _train(monkeypatch, tmp_path)
    sentinel = tmp_path / "SENTINEL"
    _edit_saved_config(run, lambda config: HIDDEN_AT[where](config, _hidden(sentinel)))
    before = sorted(p.name for p in run.rglob("*"))
    summary = (run / "summary.json").read_text()
    assert _resume(monkeypatch, run) == 2
    err = capsys.readouterr().err
    assert f"  - {where}=" in err and "Traceback" not in err, err
    assert err.count("Error:") == 1
    rerun = ["nettrain-train", "--config-dir", str(run / ".hydra"), "--config-name", "config", *QUIET]
    monkeypatch.setattr(sys, "argv", [*rerun, f"hydra.run.dir={tmp_path / 'rerun'}"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"  - {where}=" in err and "Traceback" not in err, err
    assert not sentinel.exists()
    assert (run / "summary.json").read_text() == summary
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written in the run folder
    assert not (tmp_path / "rerun").exists()


def test_resume_of_a_malformed_saved_config_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    run = _train(monkeypatch, tmp_path)
    (run / ".hydra" / "config.yaml").write_text("model: [unclosed\n  lr: 1\n")
    assert _resume(monkeypatch, run) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("Error: ") == 1
    assert f"{run / '.hydra' / 'config.yaml'}: not valid YAML (expected ',' or ']', but got ':' at line 2" in err
    (run / ".hydra" / "config.yaml").write_text("- a list\n- not a config\n")
    assert _resume(monkeypatch, run) == 2
    assert "config.yaml: holds a list, not a config; allowed: the config.yaml nettrain wrote" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
@pytest.mark.parametrize("where", ["model.extra", "loss._args_"])
def test_a_resolver_in_a_checkpoint_builds_nothing(trained, tmp_path, capsys, command, where):
    """The critical one: a checkpoint whose stored config holds `${oc.create:...}` would have Hydra
    build a hidden target when it resolves the node, in each command that rebuilds the model, with
    or without --trust. Refused before anything resolves."""
    from nettrain.commands.evaluate import main as eval_main
    from nettrain.commands.export import main as export_main
    from nettrain.commands.predict import main as predict_main

    sentinel = tmp_path / "SENTINEL"
    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    group, key = where.split(".")
    node = dict(state["config"][group])
    node[key] = _hidden(sentinel) if key == "extra" else [_hidden(sentinel)]
    crafted = _craft(trained, tmp_path, group, node)
    run = {
        "eval": lambda *a: eval_main([str(crafted), *a]),
        "predict": lambda *a: predict_main([str(crafted), str(tmp_path / "no-such-image.png"), *a]),
        "export": lambda *a: export_main([str(crafted), "--format", "safetensors", *a]),
    }[command]
    for trust in ([], ["--trust"]):
        assert run(*trust) == 2
        err = capsys.readouterr().err
        assert f"  - {where}{'[0]' if key == '_args_' else ''}=" in err and "calls the resolver 'oc.create'" in err
        assert "Traceback" not in err and err.count("Error:") == 1
    assert not sentinel.exists()
    assert sorted(p.name for p in crafted.parent.parent.iterdir()) == ["checkpoints"]


@pytest.mark.parametrize("payload", ["builtins.open", "nested"])
@pytest.mark.parametrize("command", ["export", "predict"])
def test_export_and_predict_refuse_a_crafted_checkpoint_and_run_no_payload(trained, tmp_path, capsys, payload, command):
    """nettrain-export and nettrain-predict rebuild the model from the checkpoint's config: the
    same allowlist as nettrain-eval, even with --trust for what is never allowed."""
    from nettrain.commands.export import main as export_main
    from nettrain.commands.predict import main as predict_main

    sentinel = tmp_path / "SENTINEL"
    group, node = _payloads(tmp_path, sentinel)[payload]
    crafted = _craft(trained, tmp_path, group, node)
    target = node["extra"]["_target_"] if payload == "nested" else node["_target_"]
    for trust in ([], ["--trust"]):
        if command == "export":
            code = export_main([str(crafted), "--format", "safetensors", *trust])
        else:
            code = predict_main([str(crafted), str(tmp_path / "no-such-image.png"), *trust])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"_target_={target!r}" in err and "Traceback" not in err
    assert not sentinel.exists()
    assert not (crafted.parent.parent / "export").exists() and not (crafted.parent.parent / "predict").exists()


@pytest.mark.parametrize("how", ["escaped", "assembled"])
def test_a_checkpoint_value_that_becomes_an_interpolation_builds_nothing(trained, tmp_path, capsys, how):
    """nettrain builds from the resolved config and Hydra resolves it again: `\\${oc.create:...}`,
    or `${model.d}{oc.create:...}` with `d: $`, turns into the payload only then. Refused first."""
    from nettrain.commands.evaluate import main

    sentinel = tmp_path / "SENTINEL"
    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    node = dict(state["config"]["model"])
    payload = _hidden(sentinel)
    node.update(extra="\\" + payload) if how == "escaped" else node.update(d="$", extra="${model.d}" + payload[1:])
    crafted = _craft(trained, tmp_path, "model", node)
    for trust in ([], ["--trust"]):
        assert main([str(crafted), *trust]) == 2
        err = capsys.readouterr().err
        assert "  - model.extra=" in err and "Traceback" not in err and err.count("Error:") == 1
    assert not sentinel.exists()


def test_resume_and_rerun_check_a_saved_config_whose_hydra_yaml_was_removed(monkeypatch, tmp_path, capsys):
    """Which files sit beside config.yaml does not decide whether it is checked: without hydra.yaml
    a resume and a re-run of the folder still refuse the planted resolver."""
    from nettrain.commands.train import main

    run = _train(monkeypatch, tmp_path)
    sentinel = tmp_path / "SENTINEL"
    _edit_saved_config(run, lambda config: config["model"].update(extra=_hidden(sentinel)))
    (run / ".hydra" / "hydra.yaml").unlink()
    assert _resume(monkeypatch, run) == 2
    assert "  - model.extra=" in capsys.readouterr().err
    rerun = ["nettrain-train", "--config-dir", str(run / ".hydra"), "--config-name", "config", *QUIET]
    monkeypatch.setattr(sys, "argv", [*rerun, f"hydra.run.dir={tmp_path / 'rerun'}"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2 and "  - model.extra=" in capsys.readouterr().err
    assert not sentinel.exists() and not (tmp_path / "rerun").exists()


@pytest.mark.parametrize("planted", ["nettrain_schema.yaml", "hydra/env/evil.yaml", "hydra/job_logging/default.yaml"])
def test_resume_refuses_a_config_planted_beside_the_saved_one(monkeypatch, tmp_path, capsys, planted):
    """The run's .hydra/ is first on Hydra's search path while resuming: a schema or an option file
    of Hydra's own groups put there would replace nettrain's and Hydra's (hydra.job.env_set, a log
    file anywhere). Anything but the files nettrain and Hydra write there is refused."""
    run = _train(monkeypatch, tmp_path)
    sentinel = tmp_path / "SENTINEL"
    path = run / ".hydra" / planted
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"job:\n  env_set:\n    PLANTED: '{sentinel}'\n")
    before = sorted(p.name for p in run.rglob("*"))
    assert _resume(monkeypatch, run) == 2
    err = capsys.readouterr().err
    first = planted.split("/")[0]
    assert f"{run / '.hydra' / first}" in err and "Traceback" not in err and err.count("Error:") == 1
    assert sorted(p.name for p in run.rglob("*")) == before


def _git(cwd: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _received_repository(home: Path, sentinel: Path, how: str) -> None:
    """A git repository as someone could send it, naming a command that git would run: an
    fsmonitor and a filter driver in its config, a post-index-change hook (run when status
    refreshes a stale index, as after unpacking an archive), or a filter in its worktree config."""
    import os

    hook = home / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {sentinel}\n")
    hook.chmod(0o755)
    _git(home, "init", "-q")
    _git(home, "config", "user.email", "a@b.c")
    _git(home, "config", "user.name", "a")
    (home / "notes.txt").write_text("one\n")
    (home / ".gitattributes").write_text("*.txt filter=evil\n")
    _git(home, "add", "-A")
    _git(home, "commit", "-q", "-m", "c")
    if how == "config":
        _git(home, "config", "core.fsmonitor", str(hook))
        _git(home, "config", "filter.evil.clean", f"touch {sentinel}; cat")
        (home / "notes.txt").write_text("two\n")  # a changed file: status would run its clean filter
    elif how == "worktree config":
        _git(home, "config", "extensions.worktreeConfig", "true")
        _git(home, "config", "--worktree", "filter.evil.clean", f"touch {sentinel}; cat")
        (home / "notes.txt").write_text("two\n")
    else:  # an index hook, and an index whose recorded file times no longer match
        (home / ".git" / "hooks" / "post-index-change").symlink_to(hook)
        os.utime(home / "notes.txt", (1, 1))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("how", ["config", "worktree config", "index hook"])
def test_a_received_git_repository_runs_no_command_when_nettrain_records_provenance(monkeypatch, tmp_path, how):
    """nettrain records the working directory's commit and dirty flag; a folder someone sent may
    be a repository that makes `git status` run a command. None runs; the commit is still recorded."""
    import json

    from nettrain.commands.train import main

    home, sentinel = tmp_path / "received", tmp_path / "SENTINEL"
    home.mkdir()
    _received_repository(home, sentinel, how)
    run = home / "run"
    monkeypatch.chdir(home)
    monkeypatch.setattr(sys, "argv", ["nettrain-train", *QUIET, *SMALL, f"hydra.run.dir={run}"])
    main()
    assert not sentinel.exists()
    record = json.loads((run / ".hydra" / "provenance.json").read_text())["git"]
    assert len(record["commit"]) == 40
    assert record["dirty"] is (None if "config" in how else False)  # not checked where a filter would run


def test_a_saved_config_does_not_choose_where_the_run_is_sent(monkeypatch, tmp_path, capsys):
    """An MLflow tracking URI in a run's saved config would send the run (or write a database)
    wherever the file says when it is resumed or re-run: refused unless the command line gives it."""
    from nettrain.commands.train import main

    run = _train(monkeypatch, tmp_path)
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'evil.db'}"
    _edit_saved_config(run, lambda config: config["logger"]["mlflow"].update(uri=uri))
    assert _resume(monkeypatch, run) == 2
    err = capsys.readouterr().err
    assert "  - logger.mlflow.uri='sqlite:///" in err and "is yours to choose, not a file's" in err
    rerun = ["nettrain-train", "--config-dir", str(run / ".hydra"), "--config-name", "config", *QUIET]
    monkeypatch.setattr(sys, "argv", [*rerun, f"hydra.run.dir={tmp_path / 'rerun'}"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2 and "logger.mlflow.uri=" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "rerun").exists()
    monkeypatch.setattr(sys, "argv", [*rerun, f"hydra.run.dir={tmp_path / 'rerun'}", f"logger.mlflow.uri={uri}"])
    main()  # the user's own choice: the re-run trains (MLflow is not among its loggers, so nothing is sent)
    assert (tmp_path / "rerun" / "summary.json").is_file()


def test_hydras_pickle_rerun_is_refused_and_unpickles_nothing(monkeypatch, tmp_path, capsys):
    """Hydra's --experimental-rerun loads a config.pickle: a pickle handed to nettrain-train would
    run its payload. nettrain refuses the flag before Hydra sees it."""
    import pickle

    from nettrain.commands.train import main

    sentinel = tmp_path / "SENTINEL"
    evil = tmp_path / "config.pickle"
    evil.write_bytes(pickle.dumps(Payload(sentinel)))
    monkeypatch.chdir(tmp_path)
    for flag in (["--experimental-rerun", str(evil)], [f"--experimental-rerun={evil}"]):
        monkeypatch.setattr(sys, "argv", ["nettrain-train", *flag])
        with pytest.raises(SystemExit) as info:
            main()
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "--experimental-rerun: Hydra's re-run unpickles the file it is given" in err and "Traceback" not in err
    assert not sentinel.exists()
