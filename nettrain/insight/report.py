"""What a person sees: the console (rich) during a run, and the plots (matplotlib) after it.

On a terminal: the run folder, the composed config, the model, a one-line memory estimate, a
transient progress bar per epoch, one row per epoch and, at the end, one short table: status,
epochs, best epoch, test figures, wall time, speed, the run folder and the commands to try next.
Anywhere else (CI, a log file): the same lines, no progress bar. The details (every part of the
memory estimate, every epoch's diagnosis, every summary key) go to the run's log file and
summary.json, not to the console.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nettrain.config.schema import metric_mode
from nettrain.insight.diagnosis import plot_gradients
from nettrain.insight.figures import pyplot, save_png

if TYPE_CHECKING:
    from nettrain.run.summary import RunSummary

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


STATIC = {key for key, _, _ in _COLUMNS}


def columns_of(row: dict) -> list[tuple[str, str, str]]:
    """The console's columns for `row`: the task's metrics, with each further val_NAME of
    `metrics=[...]` (headed by its name, 4 decimals) after them, before the lr."""
    columns = [c for c in _COLUMNS if c[0] in row]
    extra = [(key, key, f"{{:>{max(len(key), 7)}.4f}}") for key in row if key.startswith("val_") and key not in STATIC]
    at = next((i for i, c in enumerate(columns) if c[0] == "lr"), len(columns))
    return columns[:at] + extra + columns[at:]


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
        self._verdict: str | None = None  # the last diagnosis verdict shown

    def start(self, config_yaml: Callable[[], str], model, param_count: int, device: str, output_dir: Path) -> None:
        """The run folder first, then the config (`config_yaml()`, rendered only when shown) and the
        model (when shown), the device."""
        self.console.print(f"run folder: {Path(output_dir).resolve()}", markup=False)
        if self.show_config:
            self.console.rule("config")
            self.console.print(config_yaml().rstrip(), markup=False)
        if self.show_model:
            self.console.rule("model")
            self.console.print(str(model), markup=False)
        self.console.print(f"parameters: {param_count:,}   device: {device}", markup=False)
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
        columns = columns_of(row)  # the task's metrics, and metrics=[...]
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

    def memory(self, estimate) -> None:
        """The training-memory estimate (nettrain.insight.memory.MemoryEstimate): its total and
        parts on one console line; each part with its meaning in the log."""
        parts = ", ".join(f"{name} {size / 2**20:.2f}" for name, size in estimate.parts.items())
        self.console.print(
            f"memory estimate at batch {estimate.batch_size}: {estimate.total / 2**20:.2f} MiB ({parts} MiB)",
            markup=False,
        )
        log.info("training memory estimate at batch %d:\n%s", estimate.batch_size, "\n".join(estimate.lines()))

    def diagnosis(self, epoch: int, verdict: str, findings: list[str]) -> None:
        """One epoch's gradient diagnosis: every finding to the log; on the console one line, when
        the verdict differs from the last one shown (a run that stays unhealthy says so once)."""
        for finding in findings:
            log.warning("epoch %d: %s", epoch, finding)
        shown, self._verdict = self._verdict, verdict if findings else None
        if not findings or verdict == shown:
            return
        more = f" (+{len(findings) - 1} more in train.log)" if len(findings) > 1 else ""
        self.console.print(f"warning: epoch {epoch}: {findings[0]}{more}", style="yellow", markup=False)

    def class_report(self, lines: list[str], title: str) -> None:
        """The per-class table of a classification test (nettrain/insight/class_report.py), under `title`."""
        self.console.print(title + ":", markup=False)
        for line in lines:
            self.console.print("  " + line, markup=False)

    def end(self, summary: RunSummary, epochs: int, run_dir: Path, status_note: str | None = None) -> None:
        """The end of the run: one short table, whatever the number of epochs (`epochs`: the epochs
        asked for; `status_note`: what the status says beyond its name). summary.json has the rest."""
        rows = end_rows(summary, epochs, Path(run_dir).resolve(), status_note)
        width = max(len(label) for label, _ in rows)
        self.console.rule(f"run {summary.status}")
        for label, value in rows:
            for i, line in enumerate(value.splitlines()):
                self.console.print(f"  {label if i == 0 else '':<{width}}  {line}", markup=False)
        log.info("summary %s", summary.to_dict())


def end_rows(summary: RunSummary, epochs: int, run_dir: Path, status_note: str | None = None) -> list[tuple[str, str]]:
    """(label, value) rows of the end-of-run table; a value may span lines (`next`)."""
    status, best, test = str(summary.status), summary.best_epoch, summary.test
    rows = [("status", f"{status} {status_note}" if status_note else status)]
    rows.append(("epochs", f"{summary.epochs_run} of {epochs}" + (" (stopped early)" if summary.stopped_early else "")))
    if best is not None:
        best_figures = {k.removeprefix("best_"): v for k, v in summary.figures.items() if k.startswith("best_")}
        rows.append(("best epoch", f"{best}: " + _figures({"val_loss": summary.best_val_loss, **best_figures})))
    extra = {name: value for name, value in test.items() if name not in ("loss", "acc", "r2", "mae")}  # metrics=[...]
    if "r2" in test:  # regression
        shown = {"R²": test.get("r2"), "MAE": test.get("mae"), **extra, "loss": test.get("loss")}
    else:
        shown = {"accuracy": test.get("acc"), **extra, "loss": test.get("loss")}
    rows.append(("test", _figures(shown) if test.get("loss") is not None else "not run: " + _no_test(status)))
    rows.append(("wall time", _duration(summary.wall_time_s)))
    if summary.samples_per_s is not None:
        rows.append(("samples/s", f"{summary.samples_per_s:,.0f} (training, mean over the epochs)"))
    if summary.diagnosis and summary.diagnosis.get("verdict"):
        verdict = summary.diagnosis["verdict"]
        rows.append(("diagnosis", verdict + ("" if verdict == "healthy" else ': findings in summary.json "diagnosis"')))
    rows.append(("run folder", str(run_dir)))
    rows.append(("next", "\n".join(next_commands(summary, epochs, run_dir, status_note))))
    rows.append(
        (
            "details",
            "summary.json, metrics.csv, train.log"
            + "".join(f", {name}/" for name in ("eval", "plots") if (run_dir / name).is_dir()),
        )
    )
    return rows


def next_commands(summary: RunSummary, epochs: int, run_dir: Path, status_note: str | None = None) -> list[str]:
    """The commands worth trying after this run (`status_note` "at max_steps=N" or "at max_time=T":
    a budget ended it, and a larger one trains longer)."""
    status = str(summary.status)
    if status == "interrupted":
        if not any((run_dir / "checkpoints").glob("*.pt")):
            return ["train again: this run saved no checkpoint to resume from"]
        return [f"nettrain-train resume={run_dir}   (continues to epoch {epochs})"]
    if status == "diverged":
        return ["lower lr, or set regularization.grad_clip=1.0, then train again (the warning above says more)"]
    commands = [
        f"nettrain-eval {run_dir}",
        f"nettrain-predict {run_dir} INPUT...",
        f"nettrain-export {run_dir} --format onnx",
    ]
    budget = (status_note or "").removeprefix("at ").partition("=")
    if status == "completed" and budget[0] == "max_steps":
        commands.append(f"nettrain-train resume={run_dir} trainer.max_steps={2 * int(budget[2])}   (trains longer)")
    elif status == "completed" and budget[0] == "max_time":
        commands.append(f"nettrain-train resume={run_dir} trainer.max_time=null   (trains on, to epoch {epochs})")
    elif status == "completed":
        commands.append(f"nettrain-train resume={run_dir} epochs={2 * epochs}   (trains longer)")
    return commands


def _figures(figures: dict[str, Any]) -> str:
    """`name value, ...`: fractions (accuracy, R², F1, AUROC) to 4 decimals, losses and errors
    (loss, MAE, RMSE) to 4 digits."""
    return ", ".join(
        f"{name} {value:.4g}" if metric_mode(name.lower()) == "min" else f"{name} {value:.4f}"
        for name, value in figures.items()
        if isinstance(value, (int, float))
    )


def _no_test(status: str) -> str:
    return "the run diverged" if status == "diverged" else "the run did not reach its end"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


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
