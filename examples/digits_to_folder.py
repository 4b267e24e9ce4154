"""Write the bundled MNIST digits as PNG files in class folders, the layout `data=image_folder`
reads: OUT/train/<digit>/*.png and OUT/test/<digit>/*.png.

    python examples/digits_to_folder.py digits                 # 40 train and 10 test images per digit
    python examples/digits_to_folder.py digits --per-class 400
    nettrain-train data=image_folder data.root=digits model=cnn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from nettrain.data import mnist_sample_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (created)")
    parser.add_argument("--per-class", type=int, default=40, help="training images per digit (default 40)")
    parser.add_argument("--test-per-class", type=int, default=10, help="test images per digit (default 10)")
    args = parser.parse_args()
    table = np.loadtxt(mnist_sample_path(), delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    for digit in range(10):
        found = np.flatnonzero(labels == digit)
        take = {"train": found[: args.per_class], "test": found[args.per_class : args.per_class + args.test_per_class]}
        for split, rows in take.items():
            folder = args.out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i, row in enumerate(rows):
                Image.fromarray(images[row]).save(folder / f"{i:03d}.png")
    print(f"wrote {args.out}/train and {args.out}/test: {args.per_class} + {args.test_per_class} images per digit")


if __name__ == "__main__":
    main()
