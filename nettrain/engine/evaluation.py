"""Saved weights evaluated on a split of their run's data, or on any labelled images or table
(nettrain-eval's work); the result is written to RUN_DIR/eval/, with the `metrics=[...]` of the
run's config (or of the overrides) and, for a classifier, the per-class report beside it
(<result>-report.json; its confusion matrix as <result>-confusion_matrix.png when `plots` is on)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import torch

from nettrain.data import Batches, Split
from nettrain.data.image_folder import IMAGE_EXTENSIONS, SPLITS, ImageFiles, list_images
from nettrain.data.preprocessing import input_transform
from nettrain.data.tabular import encode_rows, label_columns
from nettrain.engine.build import build_data, build_trained, trained_loss
from nettrain.engine.loop import evaluate
from nettrain.engine.metrics import Measures
from nettrain.engine.prediction import table_records
from nettrain.errors import ConfigError, DataError
from nettrain.files import write_json
from nettrain.insight.class_report import class_report, plot_confusion_matrix
from nettrain.run import checkpoint as ckpt
from nettrain.run.folder import refuse_target_symlinks


def evaluate_checkpoint(
    target: str | Path,
    split: str = "test",
    overrides: list[str] | None = None,
    trust: bool = False,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate the checkpoint at `target` on `split` of its run's data, or on the labelled
    folder or table `data`; write the result to RUN_DIR/eval/ and return it."""
    overrides = list(overrides or [])
    refuse_target_symlinks(target, "eval")  # before anything is read: no link inside the run folder is followed
    path, state = ckpt.pick(target, report=lambda line: print(line, file=sys.stderr))
    # RUN_DIR/eval/ for a run's checkpoint; beside the file for a checkpoint outside a run
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    trained = build_trained(state, str(path), overrides, trust=trust)  # the stored config is checked first
    cfg, prep, device = trained.cfg, trained.preprocessing, trained.device
    if data is None:
        chosen, loader = run_split(trained, split)
        name, out = split, f"{path.stem}-{split}.json"
    else:
        chosen = labelled_split(Path(data).expanduser(), prep)
        loader = {"in_memory": cfg.data.get("in_memory", True), "num_workers": cfg.data.get("num_workers", 0)}
        where = str(Path(data).expanduser().resolve())
        name, out = "data", f"{path.stem}-{Path(where).name}-{hashlib.sha256(where.encode()).hexdigest()[:8]}.json"
    transform = input_transform(prep, chosen.x, device)  # uint8 images: normalised per batch, as in training
    batches = Batches(chosen, cfg.batch_size, device, transform=transform, **loader)
    task, target_std = prep.get("task", "classification"), prep.get("target_std", 1.0)
    loss_fn = trained_loss(cfg, state, task).to(device)  # weighted by class as in training, if it was
    measures = Measures(cfg.metrics, task, prep["num_classes"], device, target_std, confusion=True)
    metrics = evaluate(trained.model, loss_fn, batches, task, target_std, measures)
    report = None
    if measures.confusion_matrix is not None:  # a classifier: the per-class report beside the result
        report = class_report(measures.confusion_matrix, prep.get("class_names"))
        stem = out.removesuffix(".json")
        write_json(run_dir / "eval" / f"{stem}-report.json", {"checkpoint": str(path), "split": name, **report})
        if cfg.plots:
            plot_confusion_matrix(report, run_dir / "eval" / f"{stem}-confusion_matrix.png", f"{name} of {path.stem}")
    result = {
        "checkpoint": str(path),
        "epoch": state["epoch"],
        "split": name,
        **({"data": where} if data is not None else {}),
        "samples": batches.n,
        **{f"{name}_{key}": value for key, value in metrics.items()},  # loss, acc or r2, mae; metrics=[...]
        **({"report": str(run_dir / "eval" / f"{out.removesuffix('.json')}-report.json")} if report else {}),
        "device": str(device),
        "overrides": overrides,
    }
    write_json(run_dir / "eval" / out, result)
    return result


def run_split(trained, split: str):
    """(`split` of the run's own data, built from the config as training built it; the loader
    settings); data that does not fit the model is a ConfigError naming both."""
    prep = trained.preprocessing
    try:
        data, loader = build_data(trained.cfg)
    except ConfigError as exc:  # e.g. data.root=FOLDER without the train/ an image_folder needs
        if prep.get("kind") not in LABELLED:
            raise
        hint = f"; to evaluate on {LABELLED[prep['kind']]} alone, without the run's data: nettrain-eval RUN --data PATH"
        raise ConfigError([*exc.problems[:-1], exc.problems[-1] + hint]) from None
    model_side = describe_input(prep["input_shape"], prep["num_classes"], prep.get("class_names"))
    data_side = describe_input(list(data.input_shape), data.num_classes, data.meta.get("class_names"))
    if model_side != data_side:
        other = LABELLED.get(prep.get("kind"), "other data")
        raise ConfigError(
            [
                f"data {data.name!r} gives {data_side}, but the model was trained on {model_side}; "
                f"nettrain-eval RUN --data PATH evaluates on {other}"
            ]
        )
    return getattr(data, split), loader


LABELLED = {"image": "a folder of class folders (<class>/*.png)", "table": "a labelled table (.csv, .parquet)"}


def labelled_split(path: Path, prep: dict[str, Any]):
    """A Split of the labelled data at `path`, read with the saved preprocessing `prep`."""
    kind = prep.get("kind")
    if kind not in LABELLED:
        raise DataError(f"--data {path}: takes images or a table; this model was trained on {kind} data")
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder; allowed: {LABELLED[kind]}")
    if kind == "image":
        if prep.get("task") == "multilabel":
            raise DataError(
                f"--data {path}: a multi-label image model is evaluated on its run's own splits "
                "(nettrain-eval RUN --split test|val, or overrides such as data.root=DIR data.labels_file=FILE)"
            )
        return image_split(path, prep)
    return table_split(path, prep)


def image_split(root: Path, prep: dict[str, Any]):
    """ROOT/<class>/* (any depth below each class folder), labelled by the model's class names and
    decoded as the training images were (channels, image size) when batched."""
    if not root.is_dir():
        raise DataError(f"--data {root}: not a folder; this image model takes {LABELLED['image']}")
    known = list(prep.get("class_names") or [])
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = [c for c in classes if c not in known]
    if unknown:
        hint = f" (a split folder: give --data {root / unknown[0]})" if set(unknown) <= set(SPLITS) else ""
        raise DataError(
            f"--data {root}: class folder(s) {unknown} are not classes of the model{hint}; allowed: {known}"
        )
    rels, labels = [], []
    for name in classes:
        found = list_images(root / name)
        rels += [str(p.relative_to(root)) for p in found]
        labels += [known.index(name)] * len(found)
    if not rels:
        raise DataError(f"--data {root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {LABELLED['image']}")
    files: Any = ImageFiles(root, rels, tuple(prep["image_size"]), prep["channels"])  # decoded when batched
    return Split(files, torch.tensor(labels, dtype=torch.int64))


def table_split(path: Path, prep: dict[str, Any]):
    """The rows of a table with the model's feature columns and its target column, encoded with
    the saved statistics and categories; the target as the model's class index (or standardised value)."""
    target = prep["target"]
    try:
        records = table_records(path, prep, with_target=True)
        x = encode_rows(records, prep)
    except DataError as exc:
        raise DataError(f"--data {path}: {exc}") from None
    if prep.get("task") == "multilabel":  # target: the label columns
        header = list(records[0]) if records else list(target)
        try:
            y = label_columns(str(path), header, [[r[c] for c in header] for r in records], target)
        except DataError as exc:
            raise DataError(f"--data {path}: {exc}") from None
        return Split(x, y)
    values = [str(r[target]).strip() for r in records]
    if prep.get("task") == "regression":
        try:
            numbers = torch.tensor([float(v) for v in values], dtype=torch.float64)
        except ValueError:
            raise DataError(f"--data {path}: target {target!r} holds a value that is not a number") from None
        y = ((numbers - prep["target_mean"]) / prep["target_std"]).to(torch.float32).unsqueeze(1)
    else:
        known = list(prep.get("class_names") or [])
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise DataError(
                f"--data {path}: target {target!r} has classes {unknown[:5]} the model lacks; allowed: {known}"
            )
        index = {name: i for i, name in enumerate(known)}
        y = torch.tensor([index[v] for v in values], dtype=torch.int64)
    return Split(x, y)


def describe_input(shape: list[int], num_classes: int, class_names: list[str] | None) -> str:
    return f"input shape {list(shape)} and {num_classes} classes" + (f" {class_names}" if class_names else "")
