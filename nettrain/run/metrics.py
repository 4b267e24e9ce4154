"""metrics.csv: one row per epoch (and per validation inside one, with a `step` column), rewritten atomically after each epoch. (How a run ended is
summary.json's: nettrain.run.summary.RunStatus.)

This module imports neither torch nor numpy, so `nettrain-summarize` can read runs quickly.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from nettrain.files import write_text
from nettrain.run.folder import RunWriter


class MetricsWriter:
    def __init__(self, path: str | Path, writer: RunWriter | None = None):
        """Writes through `writer` (nothing on the ranks other than 0; by default one for the file's folder)."""
        self.path = Path(path)
        self.writer = writer or RunWriter(self.path.parent)

    def write(self, rows: list[dict]) -> None:
        """Rewrite the file from all rows so far (a resumed run's rows included); the columns are
        every row's, in the order they first appear (a validation inside an epoch has fewer)."""
        buffer = io.StringIO()
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.writer.run(write_text, self.path, buffer.getvalue())


def _number(text: str | None) -> int | float | str | None:
    """A metrics.csv cell as the value that was written: an int, a float (nan and inf included),
    None for an empty cell; any other text as it is."""
    if text is None or text == "":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.csv (a file, or a run dir holding one), one dict per epoch, each cell
    converted back to the number written (floats are written at full precision, so they compare
    exactly)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(f)]
