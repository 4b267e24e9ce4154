"""Runs the shell commands the docs show (README.md, docs/**/*.md), on tiny data.

The convention, for whoever writes the docs:

- Only ```bash blocks are run. ```console, ```text, ```sh and every other block are shown, never
  run: put there what cannot run on a laptop in seconds (installs, torchrun, SLURM, servers such as
  tensorboard or mlflow ui, GPU-only settings, downloads, placeholders such as outputs/<date>/<time>).
- One command per line; a `\\` at the end of a line continues it; `#` starts a comment; a heredoc
  (`cat > FILE <<'EOF'` ... `EOF`) is part of its command.
- A page's commands run in order, in one working folder of its own, which is also $HOME. It holds
  the sample files of `sample_files` (table.csv, images/, digits/, ...), so the docs can use them.
- nettrain-* commands run in this process, each alone on its line (no pipe, redirection or &&).
  To keep them tiny, nettrain-train and nettrain-verify-resume get `epochs=1 plots=false device=cpu`
  where the command does not set these keys, `data.num_samples=200` with data=synthetic,
  `lr_find.steps=20` with find=lr and `hydra.sweeper.n_trials=3` with hydra/sweeper=optuna_search
  (each unless the command sets it); `epochs` above 2 is brought down to 2 and n_trials above 3 to 3
  (so a resume that trains longer still trains); a multirun (-m) gets
  `hydra.callbacks.sweep_summary.plot=false`, and nettrain-summarize `--no-plot`. The default data
  (mnist_sample) is cut to 300 of its digits. A sweep runs every job: keep bash-block sweeps to a
  few jobs.
- A command that uses an earlier run names its folder: the earlier one trains with
  `hydra.run.dir=outputs/NAME` (a sweep: `hydra.sweep.dir=outputs/NAME`), the later one reads
  `outputs/NAME`.
- Any other command must start with one of SHELL_WORDS (mkdir, cat, printf, python, ...); it runs
  in bash, in the working folder, with this checkout's nettrain importable.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import REPO, in_process

SHELL_WORDS = (
    "cat",
    "cp",
    "diff",
    "echo",
    "find",
    "grep",
    "head",
    "ls",
    "mkdir",
    "mv",
    "printf",
    "python",
    "python3",
    "rm",
    "sort",
    "tail",
    "touch",
    "wc",
)
CONTROL = {"|", "||", "&", "&&", ";", ";;", "(", ")", ">", ">>", "<", "<<", ">&", "<&", "|&", "&>"}
# What keeps nettrain-train and nettrain-verify-resume quick: each of TINY where the command does
# not set that key; each of WHEN where the command makes that choice and does not set that key;
# each of CAPS where the command sets a larger value (a resume that trains longer still trains).
TINY = {"epochs": "1", "plots": "false", "device": "cpu"}
WHEN = {
    ("data", "synthetic"): "data.num_samples=200",
    ("find", "lr"): "lr_find.steps=20",
    ("hydra/sweeper", "optuna_search"): "hydra.sweeper.n_trials=3",
}
CAPS = {"epochs": 2, "hydra.sweeper.n_trials": 3}
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i")
MNIST_SAMPLE_DIGITS = 300
SHELL_TIMEOUT = 120  # seconds, for one shell command
OUTPUT_LINES = 40  # of a failed command's output, in the message
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1")
_PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\s]*(?: [^<>]*)?>")


@dataclass(frozen=True)
class Command:
    """One command of a ```bash block: where it is and its text (continuations joined, heredoc included)."""

    path: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        try:
            shown = self.path.relative_to(REPO)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]


@dataclass
class Ran:
    """What running a command gave: the argv it ran as (nettrain commands), exit code, output, time."""

    command: Command
    argv: list[str] = field(default_factory=list)
    code: int = 0
    output: str = ""
    seconds: float = 0.0


class DocCommandError(AssertionError):
    """A documented command that cannot run, or that failed: the message names file, line and command."""


def blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Every fenced block of a Markdown text: (language, line number of its first content line, lines),
    each line with the fence's indentation taken off."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        language = (match["info"].split() or [""])[0].lower()
        body, start = [], i + 2
        i += 1
        while i < len(lines):
            closing = _FENCE.match(lines[i])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence):
                if not closing["info"].strip():
                    break
            line = lines[i]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            i += 1
        found.append((language, start, body))
        i += 1
    return found


def commands(path: Path, text: str | None = None) -> list[Command]:
    """The commands of every ```bash block of the Markdown file `path`, in order."""
    text = path.read_text(encoding="utf-8") if text is None else text
    found = []
    for language, start, body in blocks(text):
        if language != "bash":
            continue
        i = 0
        while i < len(body):
            first = i
            line = body[i]
            if not line.strip() or line.strip().startswith("#"):
                i += 1
                continue
            while line.rstrip().endswith("\\") and i + 1 < len(body):
                i += 1
                line = line.rstrip()[:-1].rstrip() + " " + body[i].strip()
            heredoc = _HEREDOC.search(line)
            if heredoc:
                end = heredoc.group(2)
                while i + 1 < len(body):
                    i += 1
                    line += "\n" + body[i]
                    if body[i].strip() == end:
                        break
            found.append(Command(path, start + first, line.strip()))
            i += 1
    return found


def tokens(line: str) -> list[str]:
    """The line's words and shell operators (quotes removed, comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def refusal(command: Command) -> str | None:
    """Why the docs test does not run `command` (None: it runs)."""
    line = command.first_line
    try:
        words = tokens(line)
    except ValueError as exc:
        return f"cannot be read as a shell command ({exc})"
    if not words:
        return "no command"
    console = "show it in a ```console block"
    if words[0].startswith("nettrain-"):
        if words[0] not in scripts():
            return f"{words[0]} is not one of nettrain's commands ({', '.join(scripts())})"
        if _PLACEHOLDER.search(line):
            return (
                f"{_PLACEHOLDER.search(line).group(0)} is a placeholder: name a folder an earlier command made "
                f"(hydra.run.dir=outputs/NAME, then outputs/NAME), or {console}"
            )
        operators = [w for w in words if w in CONTROL]
        if operators:
            return (
                f"a nettrain command stands alone on its line (found {' '.join(operators)}); write it on its own line"
            )
        return None
    simple, starts = [], True
    for word in words:
        if starts and not re.match(r"^[A-Za-z_]\w*=", word):
            simple.append(word)
            starts = False
        elif word in CONTROL and word not in (">", ">>", "<", "<<", ">&", "<&", "&>"):
            starts = True
    for word in simple:
        if word.startswith("nettrain-"):
            return f"a nettrain command stands alone on its line (here after a shell operator); write {word} on its own line"
        if word == "cd":
            return "cd: each command runs in the page's working folder; use paths relative to it instead"
        if word not in SHELL_WORDS:
            return (
                f"{word} is not run by the docs test; {console}, or use nettrain-* and {', '.join(SHELL_WORDS)} "
                "in ```bash blocks"
            )
    if re.search(r"\bpython3?\s+-m\s+(pip|venv)\b", line):
        return f"installs are not run by the docs test; {console}"
    return None


def scripts() -> dict[str, str]:
    """nettrain's console scripts, from pyproject.toml's [project.scripts]: name -> module:function."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^(nettrain-[\w-]+)\s*=\s*"([\w.]+:\w+)"', section, re.MULTILINE))


def _value(args: list[str], key: str) -> str | None:
    """The value the command gives `key` (the last one, as Hydra takes it); None when it sets none."""
    values = [a.split("=", 1)[1] if "=" in a else "" for a in args if a.lstrip("+~").split("=", 1)[0] == key]
    return values[-1] if values else None


def tiny(prog: str, args: list[str]) -> list[str]:
    """`args` with the overrides that keep a documented command quick (TINY, WHEN, CAPS). They go
    after the command's own: Hydra takes the last value of a key, so a default is added only where
    the command sets no value of its own, and a cap only where its value is larger."""
    if prog == "nettrain-summarize":
        return args if "--no-plot" in args else [*args, "--no-plot"]
    if prog not in ("nettrain-train", "nettrain-verify-resume") or any(a in INFO_FLAGS for a in args):
        return args
    extra = [f"{k}={v}" for k, v in TINY.items() if _value(args, k) is None]
    for (key, choice), setting in WHEN.items():
        if _value(args, key) == choice and _value(args, setting.split("=")[0]) is None:
            extra.append(setting)
    for key, cap in CAPS.items():
        value = _value(args, key)
        if value is not None and value.isdigit() and int(value) > cap:
            extra.append(f"{key}={cap}")
    if "-m" in args or "--multirun" in args:
        extra.append("hydra.callbacks.sweep_summary.plot=false")
    return [*args, *extra]


def environment(workdir: Path) -> dict[str, str]:
    """What a documented command sees beyond the test's own environment: the working folder as home."""
    return {"HOME": str(workdir), "XDG_CACHE_HOME": str(workdir / ".cache"), "NO_COLOR": "1"}


def shell_env(workdir: Path) -> dict[str, str]:
    env = {**os.environ, **environment(workdir)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def expanded(line: str, workdir: Path) -> list[str]:
    """The words of `line` after the shell's quoting and expansion ($HOME, ~), as bash would pass them."""
    script = "printf '%s\\0' SENTINEL " + line.split(None, 1)[1] if " " in line.strip() else "printf '%s\\0' SENTINEL"
    proc = subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=shell_env(workdir), capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        raise DocCommandError(f"bash could not expand the line: {proc.stderr.strip()}")
    return proc.stdout.split("\0")[1:-1]


def run(command: Command, workdir: Path) -> Ran:
    """Run one documented command in `workdir` (refusals raise DocCommandError)."""
    why = refusal(command)
    if why:
        raise DocCommandError(f"{command.where}: `{command.first_line}`: {why}")
    start = time.perf_counter()
    words = tokens(command.first_line)
    if words[0].startswith("nettrain-"):
        prog = words[0]
        argv = tiny(prog, expanded(command.first_line, workdir))
        proc = in_process(scripts()[prog], prog, *argv, cwd=workdir, env_extra=environment(workdir))
        ran = Ran(command, [prog, *argv], proc.returncode, proc.stdout + proc.stderr)
    else:
        try:
            proc = subprocess.run(
                ["bash", "-c", command.text],
                cwd=workdir,
                env=shell_env(workdir),
                capture_output=True,
                text=True,
                timeout=SHELL_TIMEOUT,
            )
            ran = Ran(command, ["bash", "-c", command.text], proc.returncode, proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            ran = Ran(command, ["bash", "-c", command.text], 124, f"{out}\n(timed out after {SHELL_TIMEOUT} s)")
    ran.seconds = time.perf_counter() - start
    return ran


def failure(ran: Ran, workdir: Path) -> str:
    """The message for a documented command that exited non-zero."""
    tail = "\n".join("    " + line for line in ran.output.rstrip().splitlines()[-OUTPUT_LINES:])
    how = "in this process" if ran.argv[0].startswith("nettrain-") else "in bash"
    return (
        f"{ran.command.where}: `{ran.command.first_line}` exited {ran.code}\n"
        f"  ran {how} as: {shlex.join(ran.argv)}\n  in: {workdir}\n  output (last {OUTPUT_LINES} lines):\n{tail}"
    )


def run_page(page_commands: list[Command], workdir: Path) -> list[Ran]:
    """Run a page's commands in order in `workdir`; the first that cannot run or fails raises
    DocCommandError naming its file, line and command (the ones after it depend on it)."""
    done = []
    for command in page_commands:
        ran = run(command, workdir)
        done.append(ran)
        if ran.code != 0:
            raise DocCommandError(failure(ran, workdir))
    return done


def pages() -> list[Path]:
    """The Markdown the docs test reads: README.md and every page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def sample_files(workdir: Path, digits: Path) -> Path:
    """The files a page's commands may use, written into its working folder (also its $HOME):

    - table.csv: 200 rows, columns a, b, colour, noise and `label` (high | low): data=csv data.target=label
    - regression.csv: the same columns with `value` instead of `label`: data.task=regression data.target=value
    - new_rows.csv: 5 rows of a, b, colour, noise, for nettrain-predict on a table run
    - tags.csv: 200 rows, columns x, y, z, noise and the 0/1 labels red, round, large:
      data.task=multilabel 'data.target=[red,round,large]'
    - tagged/train/*.png and tagged/labels.csv (file, left, right): 12x12 grayscale, 40 images:
      data=image_folder data.root=tagged data.task=multilabel data.labels_file=labels.csv
    - images/train/<circle|square|stripe>/*.png: 16x16 RGB, 12 per class: data=image_folder data.root=images
    - new_images/*.png: 4 such images, for nettrain-predict on an image_folder run
    - digits/*.png: 4 MNIST digits (28x28 grayscale, from `digits`: digits_file), for nettrain-predict
      on a run of the default data
    - data/ and datasets/ (~/datasets): tiny MNIST, FashionMNIST (IDX files) and CIFAR-10, for
      data=mnist, data=fashion_mnist, data=cifar10 with data.root=data (their default) or ~/datasets
    """
    import csv

    import numpy as np
    from made_data import class_image, image_folder, multilabel_images, multilabel_table, table, tiny_cifar, write_png

    from conftest import write_mnist_raw

    workdir.mkdir(parents=True, exist_ok=True)
    table(workdir / "table.csv", n=200)
    table(workdir / "regression.csv", n=200, task="regression")
    with open(workdir / "table.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(workdir / "new_rows.csv", "w", newline="") as f:
        csv.writer(f).writerows(row[:-1] for row in rows[:6])
    multilabel_table(workdir / "tags.csv", n=200)
    multilabel_images(workdir / "tagged", n=40)
    image_folder(workdir / "images", per_class=12, size=16, channels=3)
    rng = np.random.default_rng(1)
    for i in range(4):
        write_png(workdir / "new_images" / f"{i}.png", class_image(i % 3, rng, size=16, channels=3))
    for i, row in enumerate(np.loadtxt(digits, delimiter=",", dtype=np.uint8, max_rows=4)):
        write_png(workdir / "digits" / f"{i}.png", row[:-1].reshape(28, 28))
    for root in (workdir / "data", workdir / "datasets"):
        write_mnist_raw(root, "MNIST")
        write_mnist_raw(root, "FashionMNIST", seed=1)
        tiny_cifar(root, "CIFAR10")
    return workdir


def digits_file(folder: Path) -> Path:
    """MNIST_SAMPLE_DIGITS rows of the default data's file (every n-th: its rows are sorted by
    class), as a file of the same format in `folder`."""
    import gzip

    from nettrain.data import mnist_sample_path

    with gzip.open(mnist_sample_path(), "rt") as source:
        rows = source.readlines()
    path = folder / "mnist_sample_digits.csv.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(rows[:: len(rows) // MNIST_SAMPLE_DIGITS][:MNIST_SAMPLE_DIGITS])
    return path


def tiny_data(monkeypatch, digits: Path) -> None:
    """For a page's commands: the default data cut to the digits of `digits` (digits_file), and
    the tiny CIFAR accepted."""
    from made_data import accept_tiny_cifar

    import nettrain.data

    monkeypatch.setattr(nettrain.data, "mnist_sample_path", lambda: digits)
    accept_tiny_cifar(monkeypatch)
