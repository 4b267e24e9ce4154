"""Class imbalance: balanced class weights for the loss (loss.class_weights) and the weighted
sampler (data.sampler=balanced), on data the tests write: the weights equal scikit-learn's, a
95/5 table's rare class is found far more often with either, a run with the sampler resumes bit
for bit, and nettrain-eval weighs the loss as training did."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from made_data import image_folder

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.config.schema import plain, validate
from nettrain.data import Batches, Split
from nettrain.engine.balance import balanced_weights, class_counts, loss_name, loss_weights, sample_weights
from nettrain.engine.build import build_data, build_loss, build_trained
from nettrain.engine.evaluation import evaluate_checkpoint
from nettrain.engine.interrupt import StopRequest
from nettrain.errors import ConfigError
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.resume import config_changes

RARE = 0.05  # the rare class's share of the table
TABLE = ["epochs=3", "batch_size=32", "early_stopping.enabled=false", "data.test_fraction=0.3"]


def imbalanced_table(path: Path, n: int = 400, seed: int = 0) -> Path:
    """A CSV with two numeric columns; 5% of rows are 'rare', shifted by 2 in both columns from
    the 'common' rows (the classes overlap: a model that ignores the rare class is 95% right)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=int)
    labels[: round(n * RARE)] = 1
    rng.shuffle(labels)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "label"])
        for y in labels:
            writer.writerow(
                [f"{rng.normal(2.0 * y, 1.0):.4f}", f"{rng.normal(2.0 * y, 1.0):.4f}", "rare" * y or "common"]
            )
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> list[str]:
    path = imbalanced_table(tmp_path_factory.mktemp("table") / "imbalanced.csv")
    return ["data=csv", f"data.path={path}", "data.target=label", *TABLE]


def rare_recall(cfg, run: Path) -> float:
    """The rare class's recall on the test rows: the predictions of the run's best weights."""
    trained = build_trained(load_checkpoint(run / "checkpoints" / "best.pt"), str(run))
    data, _ = build_data(cfg)
    rare = data.meta["class_names"].index("rare")
    with torch.no_grad():
        predicted = trained.model(data.test.x).argmax(dim=1)
    y = data.test.y
    return ((predicted == rare) & (y == rare)).sum().item() / (y == rare).sum().item()


@pytest.fixture(scope="module")
def runs(table, tmp_path_factory) -> dict[str, tuple[dict, Path, float]]:
    """The table trained three ways: plain, with balanced loss weights, with the balanced sampler."""
    found = {}
    for name, extra in (
        ("plain", []),
        ("weights", ["loss.class_weights=balanced"]),
        ("sampler", ["data.sampler=balanced"]),
    ):
        out = tmp_path_factory.mktemp(name) / "run"
        cfg = make_cfg(*table, *extra)
        summary = train(cfg, output_dir=out)
        found[name] = (summary, out, rare_recall(cfg, out))
    return found


def test_balanced_weights_equal_scikit_learns_from_the_training_split_alone(table, runs):
    utils = pytest.importorskip("sklearn.utils")
    labels = np.random.default_rng(1).choice(3, size=500, p=[0.7, 0.25, 0.05])
    counts = class_counts(torch.from_numpy(labels), 3)
    expected = utils.compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert balanced_weights(counts) == pytest.approx(expected.tolist(), rel=1e-12)

    data, _ = build_data(make_cfg(*table))
    train_y = data.train.y.numpy()
    from_train = utils.compute_class_weight("balanced", classes=np.arange(2), y=train_y).tolist()
    recorded = runs["weights"][0]["class_weights"]
    assert recorded["loss"] == pytest.approx(from_train, rel=1e-12)
    assert recorded["train_counts"] == np.bincount(train_y, minlength=2).tolist()
    every_row = np.concatenate([train_y, data.val.y.numpy(), data.test.y.numpy()])
    assert recorded["loss"] != pytest.approx(utils.compute_class_weight("balanced", classes=np.arange(2), y=every_row))
    assert runs["plain"][0]["class_weights"] == {
        "train_counts": recorded["train_counts"],
        "loss": None,
        "sampler": None,
    }
    assert (
        runs["sampler"][0]["class_weights"]["sampler"] == recorded["loss"]
    )  # each sample drawn with its class's weight


def test_the_rare_class_is_found_far_more_often_with_balanced_weights_or_the_sampler(runs):
    plain, weighted, sampled = (runs[name][2] for name in ("plain", "weights", "sampler"))
    assert weighted >= plain + 0.5, (plain, weighted)
    assert sampled >= plain + 0.5, (plain, sampled)


def test_the_weighted_loss_is_the_mean_over_samples_and_eval_weighs_it_as_training_did(table, runs):
    """A split's loss is mean_i w_(y_i) * loss_i over all its samples, whatever its batches (torch's
    own weighted reduction divides each batch by its weight sum, which the batches would change)."""
    summary, out, _ = runs["weights"]
    result = evaluate_checkpoint(out)  # best.pt on the test split: the weights the summary's test used
    assert result["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    data, _ = build_data(make_cfg(*table))
    trained = build_trained(load_checkpoint(out / "checkpoints" / "best.pt"), str(out))
    with torch.no_grad():
        each = torch.nn.functional.cross_entropy(trained.model(data.test.x), data.test.y, reduction="none")
    weight = torch.tensor(summary["class_weights"]["loss"])[data.test.y]
    assert len(data.test) % 32 and result["samples"] == len(data.test)  # a last batch smaller than the others
    assert result["test_loss"] == pytest.approx((weight * each).mean().item(), rel=1e-5)
    unweighted = evaluate_checkpoint(out, overrides=["loss.class_weights=null"])
    assert unweighted["test_loss"] == pytest.approx(each.mean().item(), rel=1e-5)


def test_the_sampler_draws_every_class_about_equally_and_every_rank_the_same_order():
    y = torch.tensor([1] * 50 + [0] * 950)
    split = Split(torch.arange(1000, dtype=torch.float32).unsqueeze(1), y)
    weights = sample_weights(y, balanced_weights(class_counts(y, 2)))

    def batches(rank: int = 0, world_size: int = 1, in_memory: bool = True) -> Batches:
        generator = torch.Generator().manual_seed(0)
        place = {"rank": rank, "world_size": world_size, "in_memory": in_memory}
        return Batches(split, 100, torch.device("cpu"), True, generator, sample_weights=weights, **place)

    order = batches().order()
    assert len(order) == 1000 and len(order.unique()) < 1000  # drawn with replacement
    assert 0.4 < y[order].float().mean().item() < 0.6  # the rare class: about half the draws, not 5%
    one = [x for x, _ in batches()]
    ranks = [[x for x, _ in batches(rank, 2)] for rank in (0, 1)]
    loaded = [x for x, _ in batches(in_memory=False)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == len(loaded) == 10
    assert all(torch.equal(torch.cat([a, b]), whole) for a, b, whole in zip(*ranks, one))  # shares of one order
    assert all(torch.equal(a, b) for a, b in zip(loaded, one))  # through a DataLoader too


def imbalanced_folder(root: Path) -> Path:
    """3 classes of PNGs, 30 + 30 + 6 in train/: the third class rare."""
    image_folder(root, per_class=30)
    for extra in sorted((root / "train" / "stripe").iterdir())[6:]:
        extra.unlink()
    return root


def test_a_run_with_the_sampler_and_weights_resumes_mid_epoch_bit_for_bit(tmp_path, capsys):
    """Every imbalance option at once, with mixup's soft targets and label smoothing: the order the
    sampler drew is the saved position, so the resumed run equals the uninterrupted one."""
    folder = imbalanced_folder(tmp_path / "images")
    common = [
        "data=image_folder",
        f"data.root={folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.sampler=balanced",
        "loss.class_weights=balanced",
        "loss.label_smoothing=0.1",
        "data.mix=mixup",
        "regularization=dropout",
        "epochs=2",
        "batch_size=16",
        "early_stopping.enabled=false",
    ]
    straight = tmp_path / "straight"
    train(make_cfg(*common), output_dir=straight)
    said = capsys.readouterr().out
    assert "class balance: training split circle " in said and "sampler: balanced" in said
    out = tmp_path / "run"
    first = train(make_cfg(*common), output_dir=out, stop=StopRequest(after_steps=6))  # 54 samples: 4 steps/epoch
    saved = load_checkpoint(out / "checkpoints" / "last.pt")
    assert first["status"] == "interrupted" and saved["progress"]["step_in_epoch"] == 2
    order = saved["progress"]["order"]
    assert len(order.unique()) < len(order)  # the sampler's draw (with replacement), not a permutation
    train(make_cfg(*common, f"resume={out}"), output_dir=out)
    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    counts = json.loads((out / "summary.json").read_text())["class_weights"]["train_counts"]
    assert sum(counts) == 54 and counts[2] == min(counts) <= 6  # the rare class stays rare in the training split


def test_soft_targets_and_label_smoothing_weigh_each_class_term():
    """With mixup's class probabilities as targets, each class's term is scaled by its weight and
    the mean is over the samples; label smoothing spreads its share before the weights apply."""
    weight = [1.0, 3.0, 0.5]
    loss_fn = build_loss(make_cfg("loss.label_smoothing=0.1"), weight=weight)
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    smoothed = soft * 0.9 + 0.1 / 3
    expected = -(torch.tensor(weight) * smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert loss_fn(logits, soft).item() == pytest.approx(expected.item(), rel=1e-6)
    labels = torch.tensor([1, 2])
    expected = (torch.tensor(weight) * -(smoothed_one_hot(labels) * logits.log_softmax(dim=1))).sum(dim=1).mean()
    assert loss_fn(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)  # mean over the samples
    torchs = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weight), label_smoothing=0.1)
    assert loss_fn(logits, labels).item() != pytest.approx(torchs.item(), rel=1e-3)  # not divided by the weights' sum
    assert (
        loss_name(loss_fn) == "CrossEntropyLoss, class-weighted"
        and loss_name(build_loss(make_cfg())) == "CrossEntropyLoss"
    )


def smoothed_one_hot(labels: torch.Tensor, classes: int = 3, smoothing: float = 0.1) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes) * (1 - smoothing) + smoothing / classes


def test_class_weights_and_the_sampler_are_refused_where_they_cannot_apply(tmp_path):
    with pytest.raises(
        ConfigError, match=r"loss.class_weights=\[1, 2, 3\]: 3 weight\(s\) for 10 classes; allowed: one"
    ):
        train(make_cfg("data=synthetic", "data.num_samples=100", "loss.class_weights=[1,2,3]"), output_dir=tmp_path)
    cfg = make_cfg(
        "data=csv",
        "data.path=t.csv",
        "data.target=v",
        "data.task=regression",
        "loss.class_weights=balanced",
        "data.sampler=balanced",
    )
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.problems == [
        "loss.class_weights='balanced': weighs classes, and data.task='regression' has none",
        "data.sampler='balanced': weighs classes, and data.task='regression' has none",
    ]
    with pytest.raises(ConfigError, match=r"class 'b' has no sample in the training split.*in order: a, b, c"):
        loss_weights("balanced", [5, 0, 3], ["a", "b", "c"])
    assert loss_weights([1, 2.5, 1], [5, 0, 3]) == [1.0, 2.5, 1.0]  # given weights need no sample of each class


def test_neither_setting_may_change_on_resume_and_runs_saved_before_the_sampler_resume():
    old = plain(make_cfg("data=synthetic"))
    del old["data"]["sampler"], old["loss"]["class_weights"]  # a run saved before these settings
    assert config_changes(old, plain(make_cfg("data=synthetic"))) == []
    changed = plain(make_cfg("data=synthetic", "data.sampler=balanced", "loss.class_weights=balanced"))
    assert config_changes(old, changed) == [
        "data.sampler: '<unset>' -> 'balanced'",
        "loss.class_weights: '<unset>' -> 'balanced'",
    ]
