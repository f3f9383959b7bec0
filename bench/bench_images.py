"""Image loader throughput: decode + augment, images per CPU-second, against a plain PIL loop.

Inputs are real scans: scikit-learn's 8x8 digits, as PNG files (the originals) and upscaled to
224 x 224 RGB JPEGs (quality 90), in an ImageFolder tree and in one parquet file. The loader is
``ImageSplit.load_batch`` with the train transform (random resized crop + flip, seeded per
micro-batch) or the eval transform (resize + centre crop); the baseline is the loop one would
write by hand over the same files: ``Image.open``, ``convert``, a crop box from Python's
``random``, ``resize``, flip, normalise. One process, one thread; rates are per second of
this process's CPU time (the machine is shared), best of 3 interleaved passes. A last table
runs in parallel, per wall-clock second: the loader on k decode threads against torch's
``DataLoader`` with k worker processes over the same files and the same transform.

    .venv/bin/python bench/bench_images.py [--out bench/images.md]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from record import machine, write_run
from sklearn.datasets import load_digits

from reliscale.data.image_sources import open_split
from reliscale.data.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    augment_rng,
)

N_LARGE = 500
MICRO = 32


def write_sets(root: Path) -> None:
    """root/png8/train/<digit>/*.png (all 1,797), root/jpeg224/train/<digit>/*.jpg (500) and
    root/parquet224/train.parquet (the same 500 JPEGs)."""
    d = load_digits()
    images = np.rint(d.images * 255 / 16).astype(np.uint8)
    blobs, labels = [], []
    for i, (im, y) in enumerate(zip(images, d.target, strict=True)):
        small = root / "png8" / "train" / str(y)
        small.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(small / f"{i:04d}.png")
        if i < N_LARGE:
            big = Image.fromarray(im).resize((224, 224), Image.Resampling.BICUBIC).convert("RGB")
            buf = io.BytesIO()
            big.save(buf, format="JPEG", quality=90)
            (root / "jpeg224" / "train" / str(y)).mkdir(parents=True, exist_ok=True)
            (root / "jpeg224" / "train" / str(y) / f"{i:04d}.jpg").write_bytes(buf.getvalue())
            blobs.append({"bytes": buf.getvalue(), "path": f"{i:04d}.jpg"})
            labels.append(int(y))
    (root / "parquet224").mkdir()
    pq.write_table(pa.table({"image": pa.array(blobs), "label": pa.array(labels)}),
                   root / "parquet224" / "train.parquet")


def best_rates(fns: list, n_images: int, reps: int = 3) -> list[float]:
    """Images per CPU-second (this process's CPU time, so other processes on the machine do not
    count) of the fastest of ``reps`` passes of each of ``fns``, the passes interleaved."""
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times, strict=True):
            t0 = time.process_time()
            fn()
            t.append(time.process_time() - t0)
    return [n_images / min(t) for t in times]


def loader_pass(split, transform, train: bool) -> None:
    for step, start in enumerate(range(0, len(split) - MICRO + 1, MICRO)):
        rng = augment_rng(0, 0, step, 0) if train else None
        split.load_batch(range(start, start + MICRO), transform, rng)


def plain_pil_pass(paths: list[Path], size: int, mode: str, train: bool, flip: bool,
                   crop_fraction: float | None) -> None:
    """The hand-written loop: same decode, same kind of crop, resize, flip and normalisation."""
    rnd = random.Random(0)
    mean = np.asarray(IMAGENET_MEAN if mode == "RGB" else (0.5,), np.float32)
    std = np.asarray(IMAGENET_STD if mode == "RGB" else (0.5,), np.float32)
    for p in paths:
        with Image.open(p) as f:
            im = f.convert(mode)
        w, h = im.size
        if train:
            cw = ch = max(1, int(min(w, h) * rnd.uniform(0.3, 1.0)))
            left, top = rnd.randint(0, w - cw), rnd.randint(0, h - ch)
            box = (left, top, left + cw, top + ch)
            im = im.resize((size, size), Image.Resampling.BILINEAR, box=box)
            if flip and rnd.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif crop_fraction is None:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        else:
            short = int(size / crop_fraction)
            im = im.resize((short, short), Image.Resampling.BILINEAR)  # square inputs
            off = (short - size) // 2
            im = im.crop((off, off, off + size, off + size))
        x = np.asarray(im, np.float32).reshape(size, size, -1).transpose(2, 0, 1) / 255.0
        (x - mean[:, None, None]) / std[:, None, None]


class FolderDataset:
    """The same files for torch's DataLoader: PIL decode and the loader's train transform per item."""

    def __init__(self, paths: list[Path], transform: TrainTransform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as f:
            image = np.asarray(f.convert("RGB"))
        return self.transform(image, np.random.default_rng([0, i]).random(self.transform.draws)), 0


def thread_scaling(root: Path, threads: tuple[int, ...] = (1, 2), reps: int = 3
                   ) -> list[tuple[int, float, float]]:
    """(k, images per wall-clock second of the loader on k decode threads, of torch's DataLoader
    with k worker processes over the same files) for the 224 JPEG train pass; the fastest of
    ``reps`` interleaved passes, the DataLoader's workers started before timing."""
    from torch.utils.data import DataLoader

    tf = TrainTransform(224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    splits = [open_split(root / "jpeg224", "train", channels=3, check="header", threads=k) for k in threads]
    n = (len(splits[0]) // MICRO) * MICRO
    paths = sorted((root / "jpeg224" / "train").glob("*/*"))[:n]
    loaders = [DataLoader(FolderDataset(paths, tf), batch_size=MICRO, num_workers=k, persistent_workers=True)
               for k in threads]
    for loader in loaders:
        list(loader)  # start the workers
    ours, plain = [float("inf")] * len(threads), [float("inf")] * len(threads)
    for _ in range(reps):
        for j, (split, loader) in enumerate(zip(splits, loaders, strict=True)):
            t0 = time.perf_counter()
            loader_pass(split, tf, True)
            t1 = time.perf_counter()
            list(loader)
            ours[j], plain[j] = min(ours[j], t1 - t0), min(plain[j], time.perf_counter() - t1)
    return [(k, n / a, n / b) for k, a, b in zip(threads, ours, plain, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/images.md")
    args = ap.parse_args()
    rows, opens = [], []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_sets(root)
        cases = [  # name, layout dir, channels, size, train, flip, crop_fraction, cache
            ("224 JPEG, train (RRC + flip)", "jpeg224", 3, 224, True, True, None, False),
            ("224 JPEG, eval (256 + centre 224)", "jpeg224", 3, 224, False, False, 0.875, False),
            ("224 JPEG from parquet, train", "parquet224", 3, 224, True, True, None, False),
            ("8x8 PNG, train (RRC, no flip)", "png8", 1, 8, True, False, None, False),
            ("8x8 PNG, train, decoded once (cache=True)", "png8", 1, 8, True, False, None, True),
            ("8x8 PNG, eval (plain resize)", "png8", 1, 8, False, False, None, False),
        ]
        for name, layout, channels, size, train, flip, crop, cache in cases:
            for check in ("decode", "header"):
                t0 = time.process_time()
                split = open_split(root / layout, "train", channels=channels, check=check,
                                   cache=cache)
                if train and not cache:
                    opens.append((layout, check, len(split), time.process_time() - t0))
            stats = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD) if channels == 3 else {}
            tf = (TrainTransform(size, flip=0.5 if flip else 0.0, **stats) if train
                  else EvalTransform(size, crop_fraction=crop, **stats))
            n = (len(split) // MICRO) * MICRO
            fns = [lambda s=split, t=tf, tr=train: loader_pass(s, t, tr)]
            if layout != "parquet224":
                paths = sorted((root / layout / "train").glob("*/*"))[:n]
                mode = "RGB" if channels == 3 else "L"
                fns.append(lambda p=paths, m=mode, z=size, tr=train, fl=flip, c=crop:
                           plain_pil_pass(p, z, m, tr, fl, c))
            rates = best_rates(fns, n)
            rows.append((name, n, rates[0], rates[1] if len(rates) > 1 else None))
        scaling = thread_scaling(root)
    lines = [
        "# Image loader: decode + augment throughput on one core\n",
        f"- machine: {machine()}, Pillow {Image.__version__}, numpy {np.__version__}; one process, "
        "one thread; images per CPU-second of the process (best of 3 interleaved passes); "
        f"1-min load average {load_before:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end",
        "- command: `.venv/bin/python bench/bench_images.py`",
        f"- data: scikit-learn digits as 8x8 PNGs (1,797) and upscaled to 224x224 RGB JPEG q90 "
        f"({N_LARGE}); micro-batch {MICRO}, float32 NCHW out",
        "- plain PIL = the same decode/crop/resize/flip/normalise written as a bare loop over the "
        "files (torchvision does not import beside the CPU torch)\n",
        "| input | images | loader images/CPU-s | plain PIL images/CPU-s | loader / plain |",
        "|---|---|---|---|---|",
    ]
    for name, n, ours, plain in rows:
        ratio = f"{ours / plain:.2f}" if plain else "-"
        plain_s = f"{plain:,.0f}" if plain else "-"
        lines.append(f"| {name} | {n} | {ours:,.0f} | {plain_s} | {ratio} |")
    lines += ["", "Opening a split (listing + the validation pass, once per trial):", "",
              "| input | check | images | CPU seconds | images/CPU-s |", "|---|---|---|---|---|"]
    for layout, check, n, s in opens:
        lines.append(f"| {layout} | {check} | {n} | {s:.3f} | {n / s:,.0f} |")
    lines += ["", f"In parallel (224 JPEG, train; images per wall-clock second, best of 3; {os.cpu_count()} cores): "
              "the loader on k decode threads against torch's DataLoader with k worker processes over the "
              "same files and transform:", "",
              "| k | loader images/s | vs k = 1 | DataLoader images/s | loader / DataLoader |", "|---|---|---|---|---|"]
    for k, rate, plain in scaling:
        lines.append(f"| {k} | {rate:,.0f} | {rate / scaling[0][1]:.2f} | {plain:,.0f} | {rate / plain:.2f} |")
    write_run(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
