"""metrics.csv: one row per epoch, rewritten atomically after each epoch."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from nettrain.files import write_text


class MetricsWriter:
    def __init__(self, path: str | Path, rows: list[dict] | None = None):
        """`rows`: the epochs already recorded (when resuming); the file is rewritten from them."""
        self.path = Path(path)
        self.rows: list[dict] = list(rows or [])

    def append(self, row: dict) -> None:
        self.rows.append(row)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buffer.getvalue())
