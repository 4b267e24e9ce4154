"""metrics.csv: one row per epoch, rewritten atomically after each epoch."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from nettrain.files import write_text


class MetricsWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, rows: list[dict]) -> None:
        """Rewrite the file from all rows so far (a resumed run's rows included)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, buffer.getvalue())
