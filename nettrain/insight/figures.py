"""Figures: matplotlib, imported when the first figure is drawn, and a figure saved as PNG.

matplotlib takes about half a second to import, more than a small run's training: a run with
`plots=false` (and every command that draws nothing) never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nettrain.files import atomic_write


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ticker() -> Any:
    """matplotlib.ticker, for the axes of a figure drawn with :func:`pyplot`."""
    import matplotlib.ticker

    return matplotlib.ticker


def save_png(fig: Any, path: Path, crop: bool = True) -> None:
    """`fig` as a PNG file at `path`, written atomically (nettrain/files.py). crop: trim the
    margins to what is drawn (`bbox_inches="tight"`, which lays the whole figure out once more
    before drawing it); False for a figure whose layout already fits it (`fig.tight_layout()`)."""
    extra = {"bbox_inches": "tight"} if crop else {}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, **extra))
