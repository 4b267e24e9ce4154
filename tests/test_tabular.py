"""data=csv: column types, train-split statistics, categorical encodings, missing values,
and cells that are not finite numbers (refused by nettrain-train and nettrain-predict alike)."""

from __future__ import annotations

import csv as csv_module
from pathlib import Path

import pytest
import torch
from made_data import table

from conftest import cli, in_process, needs_extra
from nettrain.data.tabular import EmbeddedInputs, csv, encode_rows
from nettrain.errors import DataError


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


@needs_extra("tables", "pandas", "pyarrow")
def test_parquet_is_read_when_pandas_and_pyarrow_are_installed(tmp_path):
    import pandas as pd

    frame = pd.read_csv(table(tmp_path / "t.csv"))
    frame.to_parquet(tmp_path / "t.parquet")
    a = csv(str(tmp_path / "t.csv"), target="label")
    b = csv(str(tmp_path / "t.parquet"), target="label")
    assert torch.allclose(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)


# -- cells that are not finite numbers ------------------------------------------------------------
SMALL_RUN = ["epochs=1", "model.hidden=[8]", "console.show_config=false", "console.show_model=false"]
SMALL_RUN += ["console.progress=off", "device=cpu"]


def with_cell(path: Path, row: int, column: str, value: str) -> Path:
    """The CSV at `path` with data row `row` (1 = the first after the header) of `column` set to `value`."""
    with open(path, newline="") as f:
        rows = list(csv_module.reader(f))
    rows[row][rows[0].index(column)] = value
    with open(path, "w", newline="") as f:
        csv_module.writer(f).writerows(rows)
    return path


def assert_refused(result, *parts: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("Error:") == 1, result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


def no_run_folder(cwd: Path) -> bool:
    return not (cwd / "outputs").exists() or not any((cwd / "outputs").iterdir())


@pytest.mark.parametrize(
    ("cell", "impute"), [("inf", "none"), ("-inf", "none"), ("Infinity", "none"), ("1e999", "none"), ("inf", "mean")]
)
def test_an_infinite_feature_cell_is_refused_naming_file_column_and_row(tmp_path, cell, impute):
    # with impute=mean, 2 missing cells in 'b' too: those are filled, the infinite one is not
    path = with_cell(table(tmp_path / "t.csv", missing=2 if impute == "mean" else 0), 5, "a", cell)
    result = cli(
        "data=csv", f"data.path={path}", "data.target=label", f"data.impute={impute}", *SMALL_RUN, cwd=tmp_path
    )
    assert_refused(
        result,
        f"data.path={str(path)!r}: column 'a' = {cell!r} in row 5 (line 6 of the file) is not a finite number",
        "numeric columns need finite numbers",
        "data.impute=mean fills missing cells only",
    )
    assert no_run_folder(tmp_path), list((tmp_path / "outputs").rglob("*"))


def test_an_infinite_regression_target_is_refused_and_a_class_label_inf_is_a_name(tmp_path):
    path = with_cell(
        with_cell(table(tmp_path / "r.csv", task="regression"), 7, "value", "-Infinity"), 9, "value", "inf"
    )
    result = cli("data=csv", f"data.path={path}", "data.target=value", "data.task=regression", *SMALL_RUN, cwd=tmp_path)
    assert_refused(result, "column 'value' = '-Infinity' in row 7 (line 8 of the file)", "2 such rows in all")
    assert no_run_folder(tmp_path)
    # a class label is a name, not a number to standardise: 'inf' is one more class
    labels = with_cell(table(tmp_path / "c.csv"), 3, "label", "inf")
    assert csv(str(labels), target="label").meta["class_names"] == ["high", "inf", "low"]


def test_values_whose_statistics_overflow_are_refused(tmp_path):
    path = table(tmp_path / "t.csv")
    for row in range(1, 301):
        with_cell(path, row, "noise", "1.7e308")  # finite, but their sum is not
    with pytest.raises(DataError, match=r"column 'noise' has values too large to standardise"):
        csv(str(path), target="label")


def test_predict_refuses_an_infinite_cell_naming_file_column_and_row(tmp_path):
    path = table(tmp_path / "t.csv")
    trained = cli("data=csv", f"data.path={path}", "data.target=label", "data.impute=mean", *SMALL_RUN, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    (run,) = (p.parent.parent for p in (tmp_path / "outputs").rglob("checkpoints/best.pt"))
    new = with_cell(table(tmp_path / "new.csv", n=20, seed=1), 4, "b", "-1e999")
    out = tmp_path / "pred.csv"
    result = in_process(
        "nettrain.commands.predict:cli", "nettrain-predict", str(run), str(new), "--out", str(out), cwd=tmp_path
    )
    assert_refused(result, f"{new}: row 4: column 'b' = '-1e999' is not a finite number", "finite numbers")
    assert not out.exists()
    with_cell(new, 4, "b", "-1e3")  # the same table with that cell finite is predicted
    result = in_process(
        "nettrain.commands.predict:cli", "nettrain-predict", str(run), str(new), "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 1 + 20


@needs_extra("tables", "pandas", "pyarrow")
def test_an_infinite_parquet_cell_is_refused_naming_column_and_row(tmp_path):
    import pandas as pd

    frame = pd.read_csv(table(tmp_path / "t.csv"))
    frame.loc[3, "noise"] = float("-inf")  # a float cell, not a spelling: the 4th data row
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet': column 'noise' = '-inf' in row 4 is not a finite number"):
        csv(str(tmp_path / "t.parquet"), target="label")


def test_parquet_without_pyarrow_names_the_extra_in_one_line(tmp_path, monkeypatch):
    import importlib.util

    from nettrain.data import tabular

    real = importlib.util.find_spec
    monkeypatch.setattr(
        tabular.importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    (tmp_path / "t.parquet").write_bytes(b"PAR1")  # never opened: the missing package is named first
    with pytest.raises(DataError) as err:
        csv(str(tmp_path / "t.parquet"), target="label")
    assert "reading Parquet needs pandas and pyarrow (pyarrow not installed)" in str(err.value)
    assert 'pip install "nettrain[tables]"' in str(err.value) and "\n" not in str(err.value)
