"""Real images every machine with the platform installed has: scikit-learn's handwritten digits
(1,797 8x8 scans, `sklearn.datasets.load_digits`), written in either on-disk layout the image task
reads: an ImageFolder tree or Hugging Face-style parquet files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

LAYOUTS = ("folder", "parquet")


def digit_splits() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """split -> (indices into load_digits, uint8 images [n, 8, 8], labels): every fifth image in
    test, the rest in train; pixel values 0-16 scaled to 0-255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    test = np.arange(len(pixels)) % 5 == 0
    return {split: (np.flatnonzero(keep), pixels[keep], digits.target[keep])
            for split, keep in (("train", ~test), ("test", test))}


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_digits(root: str | Path, layout: str = "folder") -> Path:
    """The digits under `root`: `<split>/<digit>/<index>.png` (folder), or `<split>-00000-of-00001.parquet`
    with an image column {bytes, path} and a ClassLabel `label` named "0".."9" (parquet)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: allowed {', '.join(LAYOUTS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, (ids, images, labels) in digit_splits().items():
        if layout == "folder":
            for i, image, label in zip(ids, images, labels, strict=True):
                folder = root / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i:04d}.png").write_bytes(_png(image))
        else:
            _write_parquet(root / f"{split}-00000-of-00001.parquet", images, labels, ids)
    return root


def _write_parquet(path: Path, images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array([{"bytes": _png(im), "path": f"{i:04d}.png"} for i, im in zip(ids, images, strict=True)])
    table = pa.table({"image": column, "label": pa.array(labels, pa.int64())})
    features = {"image": {"_type": "Image"},
                "label": {"names": [str(c) for c in range(10)], "_type": "ClassLabel"}}
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}),
                   path)
