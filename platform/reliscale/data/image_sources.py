"""Image datasets on disk, opened and checked once: ImageFolder trees and Hugging Face parquet.

Two layouts are read:

- ImageFolder: ``root/<split>/<class>/*.png|jpg|jpeg``; classes are the sorted folder names.
- parquet as Hugging Face ``datasets`` exports it: ``root/<split>.parquet``,
  ``root/<split>-*.parquet`` or ``root/<split>/*.parquet``, with an image column stored as
  ``struct{bytes, path}`` and an integer label column. Class names come from the schema
  metadata ``b"huggingface"`` -> ``info.features.<label>.names``, else ``"0".."max label"``.

Decoding is Pillow's. torchvision would be the ecosystem's choice, but the PyPI wheel of
torchvision 0.28.0 (the release for torch 2.13.0) is the CUDA build: its ``_C.so`` links
``libtorch_cuda.so``/``libc10_cuda.so``, which the CPU torch here does not ship, so
``import torchvision`` fails ("operator torchvision::nms does not exist"). Pillow is what
torchvision's and Ray Data's image readers call for decoding anyway.

Every bad input is found when the split is opened, never mid-trial, and each one is a line
naming its file or folder. ``on_bad_input="refuse"`` raises :class:`BadInputError` listing
them all; ``"skip"`` drops them and logs one summary line per kind. A missing split and a
split with nothing usable left raise in both modes: there is nothing to skip to.

Batches decode on ``threads`` threads (a worker's CPU share): Pillow releases the GIL while it
decodes and resizes, so they run in parallel. Example k of a batch still gets row k of the
batch's uniforms, so the pixels do not depend on the thread count.

``check="decode"`` (the default) decodes every image once, which catches truncated files
and costs one epoch of decoding: right for the small sets this platform trains on.
``check="header"`` only runs Pillow's ``Image.open`` + ``verify()`` (header, and chunk CRCs
for PNG): much faster for large sets, but a JPEG truncated mid-scan passes it and would fail
when loaded.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MODES = {1: "L", 3: "RGB"}  # channels -> the Pillow mode every image is converted to
ON_BAD_INPUT = ("skip", "refuse")
CHECKS = ("decode", "header")
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Problem:
    """One bad input: its kind, the file/folder (or ``file#row``) and what is wrong."""

    kind: str  # not_a_class_folder | unknown_extension | empty_class | corrupt_image
    where: str  # | label_out_of_range | missing_column
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


class BadInputError(ValueError):
    """A split refused because of bad inputs; ``problems`` lists every one found."""

    def __init__(self, split: str, problems: list[Problem]):
        self.problems = problems
        lines = [str(p) for p in problems[:20]]
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"split {split!r}: {len(problems)} bad input(s) (on_bad_input='refuse'; "
                         f"'skip' drops them):\n" + "\n".join(lines) + more)


@dataclass
class Survey:
    """What the opening pass saw: the bad inputs, and the sizes and modes of the good images."""

    check: str
    problems: list[Problem] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    modes: Counter = field(default_factory=Counter)  # Pillow mode as stored -> images

    def summary(self) -> list[str]:
        """One line per kind of bad input: how many, and the first one."""
        kinds = Counter(p.kind for p in self.problems)
        first = {p.kind: p for p in reversed(self.problems)}
        return [f"skipped {n} {kind} (first: {first[kind].where}: {first[kind].detail})"
                for kind, n in kinds.items()]


def decode(src: Path | bytes, channels: int) -> np.ndarray:
    """Decode one image to uint8 HWC with ``channels`` channels (L or RGB; Pillow's conversion:
    RGB->L is ITU-R 601 luma, L->RGB repeats the plane, alpha is dropped)."""
    with Image.open(src if isinstance(src, Path) else io.BytesIO(src)) as im:
        arr = np.asarray(im if im.mode == MODES[channels] else im.convert(MODES[channels]))
    return arr[..., None] if arr.ndim == 2 else arr


def survey_image(src: Path | bytes, where: str, check: str, survey: Survey) -> bool:
    """Check one image as ``check`` says; record its size and mode, or the problem."""
    try:
        with Image.open(src if isinstance(src, Path) else io.BytesIO(src)) as im:
            size, mode = im.size, im.mode
            if check == "header":
                im.verify()
            else:
                im.load()
    except DECODE_ERRORS as e:
        survey.problems.append(Problem("corrupt_image", where, f"{type(e).__name__}: {e}"))
        return False
    survey.sizes[size] += 1
    survey.modes[mode] += 1
    return True


def uniforms(rng: np.random.Generator | None, n: int, draws: int) -> np.ndarray:
    """The (n, draws) uniforms of a batch's transforms; (n, 0) when nothing is random."""
    if draws == 0:
        return np.empty((n, 0))
    if rng is None:
        raise ValueError("a random transform needs rng=augment_rng(seed, rank, step, micro)")
    return rng.random((n, draws))


class ImageSplit:
    """One split: ``len``, ``classes``, ``labels`` (int64), ``load(i)`` -> uint8 HWC."""

    def __init__(self, name: str, classes: list[str], labels: np.ndarray,
                 fetch: Callable[[int], Path | bytes], channels: int, survey: Survey,
                 cache: bool = False, threads: int = 1):
        self.name, self.classes, self.labels = name, classes, labels
        self.channels, self.survey, self._fetch = channels, survey, fetch
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=f"decode-{name}") if threads > 1 else None
        self._images: list[np.ndarray] | None = None
        if cache:  # shared by every batch: safe because Pillow's arrays are read-only
            self._images = self.map(self.load, range(len(labels)))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, i: int) -> np.ndarray:
        if self._images is not None:
            return self._images[i]
        return decode(self._fetch(int(i)), self.channels)

    def load_batch(self, indices: Sequence[int], transform, rng: np.random.Generator | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Decode and transform ``indices``: (float32 NCHW, int64 labels). Example k gets row k of
        ``rng.random((len(indices), transform.draws))``, so its augmentation depends only on how
        ``rng`` was seeded and on k: pass a fresh ``image_transforms.augment_rng`` per batch."""
        u = uniforms(rng, len(indices), transform.draws)
        x = np.stack(self.map(lambda i, row: transform(self.load(i), row), indices, u))
        return x, self.labels[np.asarray(indices, dtype=np.int64)]

    def eval_pixels(self, indices: Sequence[int], transform) -> list[np.ndarray]:
        """uint8 HWC images after ``transform.geometry`` (an eval transform), not yet normalised."""
        return self.map(lambda i: transform.geometry(self.load(i)), indices)

    def map(self, fn: Callable, *items) -> list:
        """``fn`` over ``items`` in order, on the split's threads when it has more than one."""
        return list(map(fn, *items) if self._pool is None else self._pool.map(fn, *items))


class EvalImages:
    """A fixed eval split's images (``source`` rows ``ids``), decoded when first indexed and kept
    as uint8; indexing returns them normalised, float32 NCHW, as ``load_batch`` does.

    Each rank predicts only its own shard of an eval split (``evaluation.predict``), so a rank
    decodes and keeps only those rows: at 224 px, 150 KB a row on one rank instead of 600 KB of
    float32 for every row on every rank. ``np.asarray`` gives the whole split.
    """

    def __init__(self, source, ids: Sequence[int], transform, channels: int):
        self.source, self.transform = source, transform
        self.ids = np.asarray(ids, dtype=np.int64)
        self.shape = (len(self.ids), channels, transform.size, transform.size)
        self._rows: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self.ids))[index]
        todo = [r for r in dict.fromkeys(np.atleast_1d(rows).tolist()) if r not in self._rows]
        if todo:
            pixels = self.source.eval_pixels(self.ids[todo], self.transform)
            self._rows.update(zip(todo, pixels, strict=True))
        if rows.ndim == 0:
            return self.transform.norm(self._rows[int(rows)])
        return np.stack([self.transform.norm(self._rows[r]) for r in rows.tolist()]).reshape(
            (len(rows), *self.shape[1:]))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = self[:]
        return x if dtype is None else x.astype(dtype)


def open_split(root: str | Path, split: str, channels: int = 3, on_bad_input: str = "refuse",
               check: str = "decode", cache: bool = False, threads: int = 1) -> ImageSplit:
    """Open ``split`` under ``root`` (ImageFolder or parquet, found by what is on disk).
    ``cache`` keeps the decoded images in memory (``len * H * W * channels`` bytes): for small
    sets, where decoding is most of the cost of a batch. ``threads`` decode each batch."""
    if channels not in MODES:
        raise ValueError(f"channels={channels!r}: allowed {sorted(MODES)} (L or RGB)")
    if on_bad_input not in ON_BAD_INPUT:
        raise ValueError(f"on_bad_input={on_bad_input!r}: allowed {ON_BAD_INPUT}")
    if check not in CHECKS:
        raise ValueError(f"check={check!r}: allowed {CHECKS}")
    root = Path(root)
    survey = Survey(check)
    files = parquet_files(root, split)
    if files:
        classes, labels, fetch = open_parquet(files, channels, survey)
    elif (root / split).is_dir():
        classes, labels, fetch = open_folder(root / split, survey)
    else:
        present = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise FileNotFoundError(f"split {split!r} not found under {root}: expected the folder "
                                f"{root / split} or {split}[-*].parquet files; present: {present}")
    if survey.problems and on_bad_input == "refuse":
        raise BadInputError(split, survey.problems)
    for line in survey.summary():
        log.warning("%s/%s: %s", root, split, line)
    if len(labels) == 0:
        raise ValueError(f"split {split!r} under {root} has no usable images"
                         + "".join(f"\n{line}" for line in survey.summary()))
    return ImageSplit(split, classes, labels, fetch, channels, survey, cache, threads)


def open_splits(root: str | Path, splits: Sequence[str], **kwargs) -> dict[str, ImageSplit]:
    """Open several splits and check they share one class list (labels mean the same)."""
    opened = {s: open_split(root, s, **kwargs) for s in splits}
    first = opened[splits[0]]
    for s, sp in opened.items():
        if sp.classes != first.classes:
            raise ValueError(f"{root}: split {s!r} has classes {sp.classes}, but split "
                             f"{first.name!r} has {first.classes}")
    return opened


def open_folder(folder: Path, survey: Survey) -> tuple[list[str], np.ndarray, Callable]:
    """ImageFolder: class = sorted sub-folder names; hidden entries (``.*``) are ignored."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for p in entries:
        if not p.is_dir():
            survey.problems.append(Problem("not_a_class_folder", str(p),
                                           "a file directly in the split folder"))
    classes = [p.name for p in entries if p.is_dir()]
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = 0
        for f in sorted(p for p in (folder / name).iterdir() if not p.name.startswith(".")):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                survey.problems.append(Problem("unknown_extension", str(f),
                                               f"allowed {', '.join(IMAGE_EXTENSIONS)}"))
            elif survey_image(f, str(f), survey.check, survey):
                paths.append(f)
                labels.append(label)
                found += 1
        if found == 0:
            survey.problems.append(Problem("empty_class", str(folder / name),
                                           "class folder has no usable image"))
    return classes, np.asarray(labels, dtype=np.int64), paths.__getitem__


def parquet_files(root: Path, split: str) -> list[Path]:
    """``root/<split>/*.parquet``, else ``root/<split>.parquet`` + ``root/<split>-*.parquet``."""
    if (root / split).is_dir():
        return sorted((root / split).glob("*.parquet"))
    return sorted(p for p in root.glob(f"{split}*.parquet")
                  if p.name == f"{split}.parquet" or p.name.startswith(f"{split}-"))


def hf_features(schema: pa.Schema) -> dict:
    """``info.features`` of the Hugging Face schema metadata, or {} when there is none."""
    raw = (schema.metadata or {}).get(b"huggingface")
    return json.loads(raw).get("info", {}).get("features", {}) if raw else {}


def column_names(schema: pa.Schema) -> tuple[str | None, str | None]:
    """The image and label columns: by the HF feature types, else the names image/img, label."""
    feats = hf_features(schema)
    typed = {feats[c].get("_type"): c for c in schema.names if isinstance(feats.get(c), dict)}
    image = typed.get("Image") or next((c for c in ("image", "img") if c in schema.names), None)
    label = typed.get("ClassLabel") or ("label" if "label" in schema.names else None)
    return image, label


def column_type_problem(schema: pa.Schema, image: str, label: str) -> str | None:
    """Why the image/label columns cannot be read, or None: images must be binary or a
    struct with binary ``bytes``, labels integers."""
    img = schema.field(image).type
    if pa.types.is_struct(img):
        img = img.field("bytes").type if img.get_field_index("bytes") >= 0 else None
    if img is None or not (pa.types.is_binary(img) or pa.types.is_large_binary(img)):
        return (f"image column {image!r} has type {schema.field(image).type}: need binary or "
                "struct{bytes, path}")
    if not pa.types.is_integer(schema.field(label).type):
        return f"label column {label!r} has type {schema.field(label).type}: need integers"
    return None


def open_parquet(files: list[Path], channels: int, survey: Survey
                 ) -> tuple[list[str], np.ndarray, Callable]:
    """Read the image bytes (kept as Arrow buffers, memory-mapped) and labels of ``files``."""
    blobs: list[pa.Array] = []
    rows: list[tuple[int, int]] = []
    raw_labels: list[int] = []
    where: list[str] = []
    names: list[str] | None = None
    for f in files:
        schema = pq.read_schema(f)
        image, label = column_names(schema)
        missing = [what for what, col in (("image", image), ("label", label)) if col is None]
        if missing:
            survey.problems.append(Problem("missing_column", str(f), f"no {' or '.join(missing)} "
                                           f"column; columns are {schema.names}"))
            continue
        wrong = column_type_problem(schema, image, label)
        if wrong:
            survey.problems.append(Problem("missing_column", str(f), wrong))
            continue
        names = names or hf_features(schema).get(label, {}).get("names")
        table = pq.read_table(f, columns=[image, label], memory_map=True)
        col = table.column(image).combine_chunks()
        data = col.field("bytes") if pa.types.is_struct(col.type) else col
        blobs.append(data)
        for r, (blob, y) in enumerate(zip(data.to_pylist(), table.column(label).to_pylist(),
                                          strict=True)):
            at = f"{f}#row{r}"
            if blob is None:
                survey.problems.append(Problem("corrupt_image", at, "no image bytes"))
            elif survey_image(blob, at, survey.check, survey):
                rows.append((len(blobs) - 1, r))
                raw_labels.append(-1 if y is None else int(y))
                where.append(at)
    labels = np.asarray(raw_labels, dtype=np.int64)
    classes = list(names) if names else [str(c) for c in range(int(labels.max(initial=-1)) + 1)]
    good = (labels >= 0) & (labels < len(classes))
    for i in np.flatnonzero(~good):
        survey.problems.append(Problem("label_out_of_range", where[i], f"label {labels[i]}, "
                                       f"allowed 0..{len(classes) - 1} ({len(classes)} classes)"))
    kept = [rows[i] for i in np.flatnonzero(good)]
    return classes, labels[good], lambda i: blobs[kept[i][0]][kept[i][1]].as_py()
