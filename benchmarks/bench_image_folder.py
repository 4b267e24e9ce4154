#!/usr/bin/env python
"""image_folder speed benchmark: training from a folder of PNGs vs the MNIST tensor path.

    python benchmarks/bench_image_folder.py              # 60,000 images, 5 alternated runs each
    python benchmarks/bench_image_folder.py --images 12000 --runs 3   # a smaller set on a busy machine
    python benchmarks/bench_image_folder.py --quick      # 6,000 images, 2 runs each, writes nothing

The same 28x28 grayscale digits (the 5,000 bundled real digits, tiled, as in bench.py) are
written twice: as MNIST IDX files (`data=mnist`, normalised float32 tensors held on the device)
and as a PNG folder train/<digit>/*.png + test/<digit>/*.png (`data=image_folder`: decoded
once into the cache, uint8 tensors on the device, normalised per batch). The first image_folder
run builds the cache and is not timed. Then `nettrain-train` runs one epoch of each, alternated
(mnist, image_folder, mnist, ...), each in a fresh process with the same settings; samples/s is
read from metrics.csv (the training pass only). Other work may share the machine, and it only
ever slows a run down: the ratio of each contender's best run is the figure reported, with the
medians beside it. The result is appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the IDX writer, machine info, quiet-CPU wait and nettrain command)


def write_png_folder(idx_root: Path, out: Path) -> Path:
    """train/<digit>/NNNNN.png and test/<digit>/NNNNN.png from the IDX files bench.build_mnist wrote."""
    import numpy as np
    from PIL import Image

    raw = idx_root / "MNIST" / "raw"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = np.fromfile(raw / f"{prefix}-images-idx3-ubyte", dtype=np.uint8, offset=16).reshape(-1, 28, 28)
        labels = np.fromfile(raw / f"{prefix}-labels-idx1-ubyte", dtype=np.uint8, offset=8)
        for i, (img, label) in enumerate(zip(images, labels)):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png", compress_level=1)
    return out


def run(args, data: list[str], work: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    cmd = [
        *bench.nettrain_cmd(),
        *data,
        "epochs=1",
        f"threads={args.threads}",
        f"batch_size={args.batch_size}",
        f"device={args.device}",
        "checkpoint.enabled=false",
        "console.progress=off",
        f"hydra.run.dir={run_dir}",
    ]
    proc = bench.run_checked(cmd, cwd=work)
    with open(run_dir / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"samples_per_s": float(row["samples_per_s"]), "test_acc": summary["test_acc"], "log": proc.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=60000, help="training images (test: a sixth of it)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    n_train, n_test, runs = (6000, 1000, 2) if args.quick else (args.images, args.images // 6, args.runs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nettrain-bench-images-") as tmp:
        work = Path(tmp)
        idx_root = bench.build_mnist(work / "idx", n_train, n_test)
        t = time.perf_counter()
        png_root = write_png_folder(idx_root, work / "png")
        print(f"wrote {n_train + n_test:,} PNGs in {time.perf_counter() - t:.1f} s", flush=True)
        contenders = {
            "mnist": ["data=mnist", f"data.root={idx_root}"],
            "image_folder": ["data=image_folder", f"data.root={png_root}", f"data.cache_dir={work / 'cache'}"],
        }
        t = time.perf_counter()
        first = run(args, contenders["image_folder"], work)  # builds the cache: not timed
        build_s = time.perf_counter() - t
        assert "image cache: built" in first["log"], first["log"][-2000:]
        results: dict[str, list[float]] = {k: [] for k in contenders}
        for i in range(runs):
            for name, data in contenders.items():
                bench.wait_quiet(20)
                result = run(args, data, work)
                results[name].append(result["samples_per_s"])
                print(f"run {i + 1}: {name:<13} {result['samples_per_s']:>10,.0f} samples/s", flush=True)
        t = time.perf_counter()
        cached = run(args, contenders["image_folder"], work)
        cached_s = time.perf_counter() - t
        assert "image cache: used" in cached["log"]
    best = max(results["image_folder"]) / max(results["mnist"])
    median = statistics.median(results["image_folder"]) / statistics.median(results["mnist"])
    info = bench.machine(args)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        "## image_folder vs the MNIST path (same 28x28x1 tensors)",
        "",
        f"Measured {now} with `python benchmarks/bench_image_folder.py{' --quick' if args.quick else ''}` "
        f"({(time.perf_counter() - started) / 60:.1f} min) on {info['cpu']}, {info['cores']}, torch {info['torch']}, "
        f"nettrain {info['code']}. {n_train:,} train / {n_test:,} test images; one epoch, batch {args.batch_size}, "
        f"threads={args.threads}, device={args.device}; {runs} alternated runs each. The machine was shared with "
        "other work, so each contender's best run (its least disturbed one) is compared; medians beside it.",
        "",
        "| contender | best samples/s | median | all runs |",
        "|---|---:|---:|---|",
    ]
    for name, values in results.items():
        lines.append(
            f"| `data={name}` | {max(values):,.0f} | {statistics.median(values):,.0f} | "
            + ", ".join(f"{v:,.0f}" for v in values)
            + " |"
        )
    lines += [
        "",
        f"image_folder / mnist: **{best:.3f}x** (best runs), {median:.3f}x (medians); "
        f"target >= 0.9x: {'met' if best >= 0.9 else 'NOT met'}.",
        f"Start-up: the first image_folder run (decoding {n_train + n_test:,} PNGs into the cache) took "
        f"{build_s:.1f} s in all; a run reading the cache took {cached_s:.1f} s in all.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.quick:
        path = Path(__file__).resolve().parent / "RESULTS.md"
        path.write_text(path.read_text() + report)
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
