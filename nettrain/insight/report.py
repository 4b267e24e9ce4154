"""What a person sees: the console (rich) during a run, and the plots (matplotlib) after it.

On a terminal: the composed config, the model, a transient progress bar per epoch, one row per
epoch and a closing summary table. Anywhere else (CI, a log file): the same rows as plain lines,
no progress bar. Every epoch line and warning also goes to the run's log file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nettrain.insight.diagnosis import plot_gradients
from nettrain.insight.figures import pyplot, save_png

log = logging.getLogger("nettrain")

_COLUMNS = [
    ("epoch", "epoch", "{:>5d}"),
    ("train_loss", "train_loss", "{:>10.4f}"),
    ("val_loss", "val_loss", "{:>8.4f}"),
    ("val_acc", "val_acc", "{:>7.4f}"),  # classification
    ("val_r2", "val_r2", "{:>7.4f}"),  # regression
    ("val_mae", "val_mae", "{:>9.4g}"),
    ("lr", "lr", "{:>9.2e}"),
    ("epoch_time_s", "time_s", "{:>6.2f}"),
    ("samples_per_s", "samples/s", "{:>9.0f}"),
]


class Reporter:
    def __init__(
        self,
        progress: str = "auto",
        show_config: bool = True,
        show_model: bool = True,
        console: Console | None = None,
        rank: int = 0,
    ):
        """`rank` > 0 (another process of a distributed run): only warnings, to stderr, prefixed with the rank."""
        self.rank = rank
        if rank:
            console = Console(file=io.StringIO())
        self.console = console or Console(highlight=False, soft_wrap=True)  # long lines stay whole
        self.show_progress = progress == "on" or (progress == "auto" and self.console.is_terminal)
        self.show_config, self.show_model = show_config, show_model
        self._header_done = False

    def start(self, config_yaml: str, model, param_count: int, device: str, output_dir: Path) -> None:
        if self.show_config:
            self.console.rule("config")
            self.console.print(config_yaml.rstrip(), markup=False)
        if self.show_model:
            self.console.rule("model")
            self.console.print(str(model), markup=False)
            self.console.print(f"parameters: {param_count:,}")
        self.console.print(f"device: {device}   run dir: {output_dir}", markup=False)
        log.info("device %s, %d parameters, run dir %s", device, param_count, output_dir)

    @contextlib.contextmanager
    def progress(self, total: int, epoch: int, done: int = 0) -> Iterator[Callable[[], None]]:
        """A transient per-step progress bar on a terminal (`done` steps already taken); a no-op elsewhere."""
        if not self.show_progress:
            yield lambda: None
            return
        with Progress(
            TextColumn(f"epoch {epoch}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task("train", total=total, completed=done)
            yield lambda: bar.advance(task)

    def epoch(self, row: dict, is_best: bool) -> None:
        columns = [c for c in _COLUMNS if c[0] in row]  # the task's metrics
        if not self._header_done:
            header = "  ".join(
                f"{title:>{len(fmt.format(0 if key == 'epoch' else 0.0))}}" for key, title, fmt in columns
            )
            self.console.print(header, style="bold", markup=False)
            self._header_done = True
        line = "  ".join(fmt.format(row[key]) for key, _, fmt in columns)
        self.console.print(line + ("  *best" if is_best else ""), markup=False)
        log.info("epoch %s", {k: row[k] for k, _, _ in columns} | {"best": is_best})

    def warn(self, message: str) -> None:
        if self.rank:
            print(f"[rank {self.rank}] warning: {message}", file=sys.stderr)
        self.console.print(f"warning: {message}", style="yellow", markup=False)
        log.warning(message)

    def note(self, message: str) -> None:
        self.console.print(message, markup=False)
        log.info(message)

    def summary(self, summary: dict) -> None:
        table = Table(title="summary", show_header=False)
        for key, value in summary.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        self.console.print(table)
        log.info("summary %s", summary)


def save_plots(rows: list[dict], directory: str | Path, loss_name: str = "loss") -> list[Path]:
    """loss.png (its axis named after the loss, e.g. CrossEntropyLoss), accuracy.png, lr.png and
    grad_means.png (log scale) from the metrics rows."""
    if not rows:
        return []
    plt = pyplot()
    directory = Path(directory)
    epochs = [r["epoch"] for r in rows]
    written = []

    def plot(name: str, title: str, ylabel: str, series: dict[str, list[float]], log_y: bool = False) -> None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, values in series.items():
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        save_png(fig, directory / name)
        plt.close(fig)
        written.append(directory / name)

    plot(
        "loss.png",
        "loss",
        loss_name,
        {"train_loss": [r["train_loss"] for r in rows], "val_loss": [r["val_loss"] for r in rows]},
    )
    if "val_acc" in rows[0]:
        plot("accuracy.png", "validation accuracy", "accuracy", {"val_acc": [r["val_acc"] for r in rows]})
    if "val_r2" in rows[0]:
        plot("r2.png", "validation R²", "R²", {"val_r2": [r["val_r2"] for r in rows]})
    plot("lr.png", "learning rate (end of epoch)", "lr", {"lr": [r["lr"] for r in rows]})
    grad_keys = [k for k in rows[0] if k.startswith("grad_mean/")]
    if grad_keys:
        plot(
            "grad_means.png",
            "mean |grad| per parameter",
            "mean |grad| (log)",
            {k.removeprefix("grad_mean/"): [max(r[k], math.ulp(0.0)) for r in rows] for k in grad_keys},
            log_y=True,
        )
    if plot_gradients(rows, directory / "gradients.png"):  # every per-layer statistic over the epochs
        written.append(directory / "gradients.png")
    return written
