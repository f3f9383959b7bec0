"""A readable report of an image dataset on disk, before anyone trains on it.

    python -m reliscale.data.image_inspect ROOT [--check header]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from reliscale.data.image_sources import CHECKS, open_split


def find_splits(root: Path) -> list[str]:
    """Sub-folders of ``root`` and the ``<split>[-*].parquet`` files directly in it."""
    if not root.is_dir():
        raise FileNotFoundError(f"image dataset root {root} is not a folder")
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    files = {p.name.removesuffix(".parquet").split("-")[0] for p in root.glob("*.parquet")}
    return sorted(folders | files)


def inspect_images(root: str | Path, check: str = "decode") -> str:
    """Splits, classes with counts, image sizes and modes as stored, and bad inputs per split."""
    root = Path(root)
    lines = [f"image dataset {root} (check={check})"]
    for name in find_splits(root):
        try:
            split = open_split(root, name, channels=3, on_bad_input="skip", check=check)
        except (FileNotFoundError, ValueError) as e:
            lines.append(f"split {name}: unusable: {e}")
            continue
        counts = np.bincount(split.labels, minlength=split.num_classes)
        s = split.survey
        lines += [
            f"split {name}: {len(split)} images, {split.num_classes} classes",
            "  classes: " + ", ".join(f"{c} {n}"
                                      for c, n in zip(split.classes, counts, strict=True)),
            "  sizes: " + ", ".join(f"{w}x{h} {n}" for (w, h), n in s.sizes.most_common()),
            "  modes: " + ", ".join(f"{m} {n}" for m, n in s.modes.most_common()),
            f"  bad inputs: {len(s.problems)}",
        ]
        lines += [f"    {line}" for line in s.summary()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--check", choices=CHECKS, default="decode")
    args = ap.parse_args()
    print(inspect_images(args.root, args.check))


if __name__ == "__main__":
    main()
