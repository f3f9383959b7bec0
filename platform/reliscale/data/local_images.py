"""Real images every machine with the platform installed has: scikit-learn's handwritten digits
(1,797 8x8 scans, `sklearn.datasets.load_digits`), written as an ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_digits(root: str | Path) -> Path:
    """The digits as PNGs under `root/<split>/<digit>/`: every fifth image in test/, the rest in train/;
    pixel values 0-16 scaled to 0-255."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        folder = root / ("test" if i % 5 == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root
