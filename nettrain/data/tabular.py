"""`data=csv`: a table (CSV, or Parquet when pandas and pyarrow are installed) -> feature tensors.

`target` names the label column; `features` lists the input columns (null: all the others).
A column whose every non-missing value parses as a number is numeric, and is standardised
with the train split's mean and std; any other column is categorical, one-hot encoded
(`categorical: onehot`) or given a learned embedding (`categorical: embed`, see
:class:`EmbeddedInputs`). Empty cells and NA/N/A/NaN/null/None are missing: each column with
missing values is named in an error, unless `impute: mean` fills numeric ones with the train
mean (categorical ones then get their own "<missing>" category). A numeric cell that is not a
finite number (inf, -inf, Infinity, 1e999 which overflows to inf, -nan) is an error naming the
file, the column and the first such row, with either `impute` setting: it is not a missing value.

`task: classification` (class names: the target's distinct values) or `task: regression`
(the target is standardised with train statistics; the loss is MSE of the standardised target,
and R² and MAE are reported in the target's own units), or `task: multilabel`: `target` is a
list of columns, each holding 0 or 1 for every row (a sample may have any number of labels);
the column names are the label names (`class_names`), and y is float32 (N, labels).

All the statistics and categories go to `DataSplits.meta`, so that `nettrain-predict`
encodes new rows exactly as the training rows were (:func:`encode_rows`).
"""

from __future__ import annotations

import csv as csv_module
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nettrain.data import DataSplits, Split, _split_indices
from nettrain.errors import DataError

MISSING = {"", "na", "n/a", "nan", "null", "none"}
MISSING_CATEGORY = "<missing>"
TASKS = ("classification", "regression", "multilabel")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return str(value).strip().lower() in MISSING


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


FINITE_ONLY = (
    "numeric columns need finite numbers (not inf, -inf or beyond a float's range, like 1e999); "
    "data.impute=mean fills missing cells only, not these"
)


def _first_not_finite(values: list[Any]) -> tuple[int, Any, int] | None:
    """(0-based index of the first, its value, how many) for the cells of a numeric column (every
    non-missing cell a number) that are not finite numbers; None if there are none, or if the column
    is not numeric (then its values are categories, or, for a regression target, named elsewhere)."""
    numbers = [(i, v, _number(v)) for i, v in enumerate(values) if not _is_missing(v)]
    if any(n is None for _, _, n in numbers):
        return None
    bad = [(i, v) for i, v, n in numbers if n is not None and not math.isfinite(n)]
    return (bad[0][0], bad[0][1], len(bad)) if bad else None


def _check_finite(path: str, header: list[str], table: list[list[Any]], columns: list[str]) -> None:
    """A DataError naming the file, the column and the first row of a numeric cell that is not finite."""
    csv_file = Path(path).suffix.lower() not in (".parquet", ".pq")
    for name in columns:
        found = _first_not_finite([row[header.index(name)] for row in table])
        if found is None:
            continue
        index, value, count = found
        where = f"row {index + 1}" + (f" (line {index + 2} of the file)" if csv_file else "")
        more = f"; {count} such rows in all" if count > 1 else ""
        raise DataError(
            f"data.path={str(path)!r}: column {name!r} = {str(value).strip()!r} in {where} is not a finite number{more}; "
            f"{FINITE_ONLY}"
        )


def read_table(path: str | Path) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of a CSV file, or of a Parquet file when pandas and pyarrow are installed."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise DataError(f"data.path={str(path)!r}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        missing = [m for m in ("pandas", "pyarrow") if importlib.util.find_spec(m) is None]
        if missing:
            raise DataError(
                f"data.path={str(path)!r}: reading Parquet needs pandas and pyarrow ({', '.join(missing)} not "
                'installed): pip install "nettrain[tables]", or save the table as CSV'
            )
        import pandas as pd

        frame = pd.read_parquet(path, engine="pyarrow")
        return [str(c) for c in frame.columns], frame.astype(object).values.tolist()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv_module.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"data.path={str(path)!r}: empty file (a header row is needed)")
        rows = [row for row in reader if row]
    bad = [i + 2 for i, row in enumerate(rows) if len(row) != len(header)]
    if bad:
        raise DataError(
            f"data.path={str(path)!r}: line(s) {bad[:5]} have a different number of fields "
            f"than the header ({len(header)})"
        )
    return header, rows


def _column_spec(name: str, values: list[Any], train_idx: list[int], impute: str) -> dict[str, Any]:
    """numeric (with the train mean and std) or categorical (with the train categories)."""
    present = [v for v in values if not _is_missing(v)]
    if present and all(_number(v) is not None for v in present):
        train = [float(values[i]) for i in train_idx if not _is_missing(values[i])]
        mean = sum(train) / len(train) if train else 0.0
        var = sum((v - mean) ** 2 for v in train) / len(train) if train else 1.0
        return {"name": name, "type": "numeric", "mean": mean, "std": math.sqrt(var) if var > 0 else 1.0}
    categories = sorted({str(values[i]).strip() for i in train_idx if not _is_missing(values[i])})
    if impute == "mean" and any(_is_missing(v) for v in values):
        categories.append(MISSING_CATEGORY)
    return {"name": name, "type": "categorical", "categories": categories}


def encode_rows(rows: list[dict[str, Any]], meta: dict[str, Any]) -> torch.Tensor:
    """Feature rows ({column: value}) -> float32 (N, F) with the saved statistics and categories.

    Numeric columns are standardised; categorical ones become one-hot blocks (`onehot`) or one
    column of category codes each (`embed`, embedded by the model's :class:`EmbeddedInputs`).
    An unseen category is all zeros (onehot) or the reserved code 0 (embed)."""
    columns = []
    for spec in meta["features"]:
        name = spec["name"]
        if spec["type"] == "numeric":
            values = []
            for r, row in enumerate(rows):
                v = row.get(name)
                if _is_missing(v):
                    if not meta.get("impute") == "mean":
                        raise DataError(f"row {r + 1}: column {name!r} is missing; set data.impute=mean or fill it in")
                    values.append(0.0)  # the mean, standardised
                else:
                    number = _number(v)
                    if number is None:
                        raise DataError(f"row {r + 1}: column {name!r} = {v!r} is not a number")
                    if not math.isfinite(number):
                        raise DataError(f"row {r + 1}: column {name!r} = {v!r} is not a finite number; {FINITE_ONLY}")
                    values.append((number - spec["mean"]) / spec["std"])
            columns.append(torch.tensor(values, dtype=torch.float32).unsqueeze(1))
            continue
        index = {c: i for i, c in enumerate(spec["categories"])}
        codes = [
            index.get(MISSING_CATEGORY if _is_missing(row.get(name)) else str(row.get(name)).strip(), -1)
            for row in rows
        ]
        code_t = torch.tensor(codes, dtype=torch.int64)
        if meta["categorical"] == "embed":
            columns.append((code_t + 1).to(torch.float32).unsqueeze(1))  # 0 = unseen
        else:
            onehot = torch.zeros(len(rows), len(spec["categories"]))
            known = code_t >= 0
            onehot[known.nonzero().squeeze(1), code_t[known]] = 1.0
            columns.append(onehot)
    return torch.cat(columns, dim=1) if columns else torch.zeros(len(rows), 0)


def _check_missing(header: list[str], table: list[list[Any]], used: list[str], impute: str) -> None:
    counts = {name: sum(_is_missing(row[header.index(name)]) for row in table) for name in used}
    missing = {name: n for name, n in counts.items() if n}
    if missing and impute != "mean":
        listed = ", ".join(f"{name!r} ({n} rows)" for name, n in missing.items())
        raise DataError(
            f"data.impute={impute!r}: missing values in column(s) {listed}; "
            "set data.impute=mean to fill them (numeric: the train mean; categorical: "
            f"a {MISSING_CATEGORY!r} category), or fill them in"
        )


def label_columns(path: str, header: list[str], table: list[list[Any]], target: Any) -> torch.Tensor:
    """data.task=multilabel: the 0/1 label columns `target` (a list of at least 2 names) as float32
    (N, labels); a column that is not in the file, or a cell that is not 0 or 1, is a DataError."""
    columns = [target] if isinstance(target, str) else list(target)
    if len(columns) < 2 or len(set(columns)) != len(columns) or not all(isinstance(c, str) for c in columns):
        raise DataError(
            f"data.target={columns}: data.task=multilabel takes a list of 2 or more distinct 0/1 columns, "
            "e.g. 'data.target=[a,b,c]'"
        )
    unknown = [c for c in columns if c not in header]
    if unknown:
        raise DataError(f"data.target: {unknown} are not columns of {path}; allowed: {header}")
    rows = []
    for r, row in enumerate(table):
        values = [_number(row[header.index(c)]) for c in columns]
        bad = [(c, row[header.index(c)]) for c, v in zip(columns, values) if v not in (0.0, 1.0)]
        if bad:
            column, value = bad[0]
            raise DataError(
                f"data.target: column {column!r} = {str(value).strip()!r} in row {r + 1} (line {r + 2} of the "
                "file); data.task=multilabel allowed: 0 or 1 in every row"
            )
        rows.append(values)
    return torch.tensor(rows, dtype=torch.float32)


def csv(
    path: str = "???",
    target: Any = "???",
    features: list[str] | None = None,
    task: str = "classification",
    categorical: str = "onehot",
    impute: str = "none",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """A table as DataSplits: x float32 (N, F), y int64 class indices, float32 (N, 1) values or
    float32 (N, labels) 0/1 labels (task=multilabel, `target` a list of columns)."""
    header, table = read_table(path)
    if task == "multilabel":
        return _multilabel_csv(
            path, header, table, target, features, categorical, impute, val_fraction, test_fraction, split_seed
        )
    if target not in header:
        raise DataError(f"data.target={target!r}: no such column in {path}; allowed: {header}")
    features = [c for c in header if c != target] if features is None else list(features)
    unknown = [c for c in features if c not in header or c == target]
    if unknown:
        raise DataError(
            f"data.features: {unknown} are not feature columns of {path}; allowed: {[c for c in header if c != target]}"
        )
    _check_rows(path, table)
    target_values = [row[header.index(target)] for row in table]
    if any(_is_missing(v) for v in target_values):
        rows_missing = [i + 1 for i, v in enumerate(target_values) if _is_missing(v)]
        raise DataError(f"data.target={target!r}: missing in row(s) {rows_missing[:5]}; every row needs a target")
    _check_missing(header, table, features, impute)
    _check_finite(path, header, table, features + ([target] if task == "regression" else []))
    val_idx, test_idx, train_idx = _split_indices(len(table), [val_fraction, test_fraction], split_seed)
    specs = _feature_specs(path, header, table, features, train_idx.tolist(), impute)
    meta: dict[str, Any] = {
        "kind": "table",
        "task": task,
        "target": target,
        "features": specs,
        "categorical": categorical,
        "impute": impute,
    }
    x = encode_rows([dict(zip(header, row)) for row in table], meta)
    if task == "classification":
        numeric = all(_number(v) is not None for v in target_values)
        names = sorted({str(v).strip() for v in target_values}, key=lambda v: (float(v), v) if numeric else (0.0, v))
        lookup = {name: i for i, name in enumerate(names)}
        y = torch.tensor([lookup[str(v).strip()] for v in target_values], dtype=torch.int64)
        meta["class_names"] = names
        num_classes = len(names)
    else:
        values = [_number(v) for v in target_values]
        if any(v is None for v in values):
            bad = next(v for v in target_values if _number(v) is None)
            raise DataError(
                f"data.task='regression': target {target!r} has a non-number value {bad!r}; "
                "use data.task=classification for class labels"
            )
        t = torch.tensor(values, dtype=torch.float64)
        mean, std = t[train_idx].mean().item(), t[train_idx].std(correction=0).item() or 1.0
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise DataError(
                f"data.path={str(path)!r}: target {target!r} has values too large to standardise (its train mean "
                "or standard deviation overflows a float); rescale the column"
            )
        meta.update(target_mean=mean, target_std=std)
        y = ((t - mean) / std).to(torch.float32).unsqueeze(1)
        num_classes = 1
    if categorical == "embed":
        meta["cardinalities"] = [len(s["categories"]) + 1 for s in specs if s["type"] == "categorical"]
    train, val, test = (Split(x[idx], y[idx]) for idx in (train_idx, val_idx, test_idx))
    return DataSplits("csv", train, val, test, num_classes=num_classes, meta=meta)


def _check_rows(path: str, table: list[list[Any]]) -> None:
    if len(table) < 10:
        raise DataError(f"data.path={str(path)!r}: {len(table)} rows; at least 10 are needed to split")


def _feature_specs(
    path: str, header: list[str], table: list[list[Any]], features: list[str], train_list: list[int], impute: str
) -> list[dict[str, Any]]:
    """Each feature column's encoding, from the train rows (numeric statistics or categories)."""
    specs = [_column_spec(name, [row[header.index(name)] for row in table], train_list, impute) for name in features]
    for spec in specs:
        if spec["type"] == "numeric" and not (math.isfinite(spec["mean"]) and math.isfinite(spec["std"])):
            raise DataError(
                f"data.path={str(path)!r}: column {spec['name']!r} has values too large to standardise (its train "
                "mean or standard deviation overflows a float); rescale the column"
            )
    return specs


def _multilabel_csv(
    path: str,
    header: list[str],
    table: list[list[Any]],
    target: Any,
    features: list[str] | None,
    categorical: str,
    impute: str,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
) -> DataSplits:
    """data.task=multilabel: the feature columns encoded as for classification, y the 0/1 label
    columns `target` (float32 (N, labels)); the labels' names are the columns'."""
    _check_rows(path, table)
    y = label_columns(path, header, table, target)
    labels = [target] if isinstance(target, str) else [str(c) for c in target]
    features = [c for c in header if c not in labels] if features is None else list(features)
    unknown = [c for c in features if c not in header or c in labels]
    if unknown:
        raise DataError(
            f"data.features: {unknown} are not feature columns of {path}; "
            f"allowed: {[c for c in header if c not in labels]}"
        )
    _check_missing(header, table, features, impute)
    _check_finite(path, header, table, features)
    val_idx, test_idx, train_idx = _split_indices(len(table), [val_fraction, test_fraction], split_seed)
    specs = _feature_specs(path, header, table, features, train_idx.tolist(), impute)
    meta: dict[str, Any] = {
        "kind": "table",
        "task": "multilabel",
        "target": labels,
        "features": specs,
        "categorical": categorical,
        "impute": impute,
        "class_names": labels,  # the label names
    }
    if categorical == "embed":
        meta["cardinalities"] = [len(s["categories"]) + 1 for s in specs if s["type"] == "categorical"]
    x = encode_rows([dict(zip(header, row)) for row in table], meta)
    train, val, test = (Split(x[idx], y[idx]) for idx in (train_idx, val_idx, test_idx))
    return DataSplits("csv", train, val, test, num_classes=len(labels), meta=meta)


class EmbeddedInputs(nn.Module):
    """Learned embeddings for the categorical code columns, then the wrapped model.

    The input holds each numeric column standardised and each categorical column as a code
    (0 = unseen); each code column is replaced by an embedding of min(16, (cardinality + 1) // 2)
    dimensions, and the result goes to `model`, built for that wider input."""

    def __init__(self, features: list[dict[str, Any]], model_factory):
        super().__init__()
        self.categorical = [i for i, s in enumerate(features) if s["type"] == "categorical"]
        self.numeric = [i for i, s in enumerate(features) if s["type"] == "numeric"]
        sizes = [len(features[i]["categories"]) + 1 for i in self.categorical]
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_width(n)) for n in sizes)
        width = len(self.numeric) + sum(embedding_width(n) for n in sizes)
        self.register_buffer("numeric_index", torch.tensor(self.numeric, dtype=torch.int64), persistent=False)
        self.model = model_factory([width])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        numeric_index: torch.Tensor = self.numeric_index  # type: ignore[assignment]
        parts = [x.index_select(1, numeric_index)]
        parts += [emb(x[:, i].long()) for emb, i in zip(self.embeddings, self.categorical)]
        return self.model(torch.cat(parts, dim=1))


def embedding_width(cardinality: int) -> int:
    return max(1, min(16, (cardinality + 1) // 2))
