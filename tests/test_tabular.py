"""data=csv: column types, train-split statistics, categorical encodings, missing values."""

from __future__ import annotations

import pytest
import torch
from made_data import table

from nettrain.data import DataError
from nettrain.data.tabular import EmbeddedInputs, csv, encode_rows


def test_numeric_columns_are_standardised_with_train_statistics_and_categories_one_hot(tmp_path):
    data = csv(str(table(tmp_path / "t.csv")), target="label")
    assert data.input_shape == (6,)  # a, b, colour (3 one-hot columns), noise
    assert data.meta["class_names"] == ["high", "low"] and data.num_classes == 2
    numeric = data.train.x[:, [0, 1, 5]]
    assert torch.allclose(numeric.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(numeric.std(0, correction=0), torch.ones(3), atol=1e-4)
    assert torch.equal(data.train.x[:, 2:5].sum(1), torch.ones(len(data.train)))
    kinds = {s["name"]: s["type"] for s in data.meta["features"]}
    assert kinds == {"a": "numeric", "b": "numeric", "colour": "categorical", "noise": "numeric"}


def test_encoding_new_rows_uses_the_saved_statistics(tmp_path):
    data = csv(str(table(tmp_path / "t.csv")), target="label", features=["a", "colour"])
    spec = data.meta["features"][0]
    x = encode_rows(
        [{"a": str(spec["mean"] + spec["std"]), "colour": "blue"}, {"a": str(spec["mean"]), "colour": "purple"}],
        data.meta,
    )
    assert torch.allclose(x, torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]]), atol=1e-6)


def test_regression_target_is_standardised_and_kept_in_meta(tmp_path):
    data = csv(str(table(tmp_path / "r.csv", task="regression")), target="value", task="regression")
    assert data.num_classes == 1 and data.train.y.shape == (len(data.train), 1)
    assert abs(data.train.y.mean().item()) < 1e-5 and data.meta["target_std"] > 1
    with pytest.raises(DataError, match=r"data.task='regression': target 'label' has a non-number value"):
        csv(str(table(tmp_path / "c.csv")), target="label", task="regression")


def test_missing_values_are_named_by_column_or_imputed(tmp_path):
    path = table(tmp_path / "m.csv", missing=4)
    with pytest.raises(DataError, match=r"missing values in column\(s\) 'b' \(4 rows\); set data.impute=mean"):
        csv(str(path), target="label")
    data = csv(str(path), target="label", impute="mean")
    assert torch.isfinite(data.train.x).all()


def test_unknown_columns_are_named(tmp_path):
    path = table(tmp_path / "t.csv")
    with pytest.raises(DataError, match=r"data.target='price': no such column"):
        csv(str(path), target="price")
    with pytest.raises(DataError, match=r"data.features: \['size'\] are not feature columns"):
        csv(str(path), target="label", features=["a", "size"])


def test_embedded_categories_feed_a_learned_embedding(tmp_path):
    data = csv(str(table(tmp_path / "t.csv")), target="label", categorical="embed")
    assert data.input_shape == (4,)  # one code column for colour
    assert set(data.train.x[:, 2].tolist()) == {1.0, 2.0, 3.0}  # 0 is kept for unseen categories
    model = EmbeddedInputs(data.meta["features"], lambda shape: torch.nn.Linear(shape[0], 2))
    assert model.model.in_features == 3 + 2  # three numeric columns + a 2-wide embedding
    assert model(data.train.x[:5]).shape == (5, 2)


def test_parquet_is_read_when_pandas_and_pyarrow_are_installed(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.read_csv(table(tmp_path / "t.csv"))
    frame.to_parquet(tmp_path / "t.parquet")
    a = csv(str(tmp_path / "t.csv"), target="label")
    b = csv(str(tmp_path / "t.parquet"), target="label")
    assert torch.allclose(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
