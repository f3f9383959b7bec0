"""Image classification on a dataset on disk: an ImageFolder tree or a Hugging Face parquet export.

`data.images.root` holds a training split and a held-out split (`train_split`, `eval_split`;
read by `reliscale.data.image_sources`). The classes named in `ood_classes` are never trained
on: the model's classes are the others, numbered in the dataset's class order.

Training data. A trial of data size D sees D examples (D // batch_size optimizer steps). Its
distinct images are the first min(D, N) of a permutation, seeded by the trial seed, of the N
training images of the trained classes: for one seed, the image sets of growing D are nested.
When D > N the trial passes over those images again; each pass visits them in its own seeded
order and ranks take disjoint slices of every global batch. Augmentation (random resized crop
and flip, `image_transforms.TrainTransform`) draws from `augment_rng(seed, rank, index, 0)`,
`index` being the global micro-batch count (step x accumulation + micro): every batch is a pure
function of (seed, rank, step, micro-batch). Each rank decodes its own slices, on
`resources.threads_per_worker` threads, and decodes the next micro-batch in the background while
the current one trains.

Eval splits: the same images and pixels for every trial (fixed subsets, not the trial seed).

- `id`: up to `eval.examples` held-out images of the trained classes;
- `<corruption>_<severity>`, e.g. `gaussian_noise_3`: the `id` images resized to `image_size`
  (small images are upscaled first, so that blur and pixelate act at the size the model sees),
  then corrupted ImageNet-C style (`reliscale.data.corruptions`); every corruption x severity
  of `data.images.corruptions` and `severities` by default;
- `ood`: up to `eval.examples` held-out images of the `ood_classes` (labels: dataset class indices);
- `ood_far`: up to `eval.examples` images of the `eval_split` of a second dataset, `ood_root`;
- `fewshot`: a linear probe on frozen features (`evaluation.fewshot`) over every class of `root`
  (the `ood_classes` are the unseen ones), or of `downstream_root` (every class unseen). Support
  pool: up to 100 training images per class; query: up to `eval.examples` held-out images.

Logged keys (`evaluation.classification`): `eval/<split>/<metric>` for every split, with the gap
to `id` on corrupted splits (`eval/gaussian_noise_3/gap_accuracy`); per corruption, each metric
averaged over its severities (`eval/gaussian_noise/accuracy`); over every corrupted split
`eval/shifted/mean_<metric>` and `eval/shifted/worst_split_accuracy`; OOD detection against `id`
as `eval/ood/ood_auroc_msp`, `eval/ood_far/ood_auroc_msp`, ...
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reliscale.data.corruptions import SEVERITIES
from reliscale.evaluation.fewshot import SHOTS
from reliscale.tasks.base import TaskInfo, TaskKind
from reliscale.tasks.classification import CLASSIFICATION_METRICS, TECHNIQUES, ClassificationStream
from reliscale.tasks.registry import register

if TYPE_CHECKING:
    from reliscale.data.image_sources import EvalImages

SUBSET_STREAM, EPOCH_STREAM = 1, 2  # draws seeded by the trial seed
EVAL_SEED = 0  # held-out subsets and corruption noise: one for every trial
FEWSHOT_POOL = 100  # support images per class: 25 shots x a few draws
DIGEST_CONTENT_BYTES = 64 << 20  # datasets up to this size are digested by content
# The training loader's rate on one core: decode + random resized crop + flip + normalise of
# 224x224 JPEGs, about 580 images per CPU-second on a loaded machine (bench/images.md, "224 JPEG,
# train"; 1,700 on an idle one): the lower figure, so that `plan` errs towards a warning. Another
# image_size s is scaled by pixels: 580 * (224 / s)**2. Decode cost follows the stored images'
# pixels, so larger stored images (ImageNet's average about 400x350) decode slower than this.
LOADER_IMAGES_PER_CPU_S = 580.0
LOADER_BENCH_SIZE = 224


def corruption_split(name: str) -> tuple[str, int] | None:
    """(corruption, severity) of a split named like `gaussian_noise_3`, else None."""
    base, _, severity = name.rpartition("_")
    return (base, int(severity)) if base in SEVERITIES and severity in ("1", "2", "3", "4", "5") else None


def fixed_subset(ids: np.ndarray, n: int) -> np.ndarray:
    """Up to `n` of `ids`, the same for every trial, in dataset order."""
    return ids[np.sort(np.random.default_rng(EVAL_SEED).permutation(len(ids))[:n])]


def per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to `n` examples of every class, the same for every trial."""
    rng = np.random.default_rng(EVAL_SEED)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n]
                                   for c in np.unique(labels)]))


def split_files(root: Path, split: str) -> list[Path]:
    """The files a split is read from: its parquet files, or every file under its folder."""
    from reliscale.data.image_sources import parquet_files

    files = parquet_files(root, split)
    if files:
        return files
    return sorted(p for p in (root / split).rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def split_digest(root: Path, split: str) -> str:
    """sha256 over the sorted (relative path, size) of the split's files, and over their contents
    when they total at most 64 MiB; 32 hex digits (MLflow keeps dataset digests of <= 36)."""
    files = split_files(root, split)
    sizes = [f.stat().st_size for f in files]
    by_content = sum(sizes) <= DIGEST_CONTENT_BYTES
    h = hashlib.sha256()
    for f, size in zip(files, sizes, strict=True):
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\n".encode())
        if by_content:
            h.update(f.read_bytes())
    return h.hexdigest()[:32]


@lru_cache(maxsize=8)
def dataset_classes(root: str, split: str) -> tuple[str, ...]:
    """A split's class names, read without decoding an image (to size the model's head)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from reliscale.data.image_sources import column_names, hf_features, parquet_files

    files = parquet_files(Path(root), split)
    if not files:
        folder = Path(root) / split
        if not folder.is_dir():
            raise FileNotFoundError(f"data.images: no split {split!r} under {root}, so the number "
                                    "of classes is unknown; set data.images.num_classes to plan "
                                    "without the dataset")
        return tuple(sorted(p.name for p in folder.iterdir()
                            if p.is_dir() and not p.name.startswith(".")))
    schema = pq.read_schema(files[0])
    label = column_names(schema)[1]
    names = hf_features(schema).get(label, {}).get("names")
    if names:
        return tuple(names)
    top = max(pc.max(pq.read_table(f, columns=[label]).column(label)).as_py() for f in files)
    return tuple(str(c) for c in range(top + 1))


def trained_classes(images) -> int:
    """Classes the model predicts: `num_classes`, else the dataset's less the `ood_classes`."""
    if images.num_classes is not None:
        return images.num_classes
    return len(dataset_classes(images.root, images.train_split)) - len(images.ood_classes)


class ImageTask:
    """A trial's images: the training stream (`ClassificationData`) and the fixed eval splits.

    Arrays are numpy: x float32 (n, channels, image_size, image_size), y int64.
    """

    def __init__(self, images, seed: int, train_size: int, eval_size: int, threads: int = 1):
        from concurrent.futures import ThreadPoolExecutor

        from reliscale.data.image_transforms import EvalTransform, TrainTransform

        self.images, self.seed, self.eval_size, self.threads = images, seed, eval_size, threads
        self._opened: dict[tuple[str, str], object] = {}
        # the next micro-batch, decoded while the current one trains (`train_examples`)
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._next: tuple[tuple[int, int, int, int], object] | None = None
        self.train = self.open(images.root, images.train_split)
        self.held_out = self.open(images.root, images.eval_split)
        classes = self.train.classes
        if self.held_out.classes != classes:
            raise ValueError(f"data.images.root: split {images.eval_split!r} has classes "
                             f"{self.held_out.classes}, split {images.train_split!r} {classes}")
        self.ood_labels = np.array([classes.index(c) for c in images.ood_classes], np.int64)
        kept = np.setdiff1d(np.arange(len(classes)), self.ood_labels)
        self.num_classes = len(kept)
        self.relabel = np.full(len(classes), -1, np.int64)  # dataset label -> model label
        self.relabel[kept] = np.arange(len(kept))
        pool = np.flatnonzero(self.relabel[self.train.labels] >= 0)
        order = np.random.default_rng([seed, SUBSET_STREAM]).permutation(len(pool))
        self.train_ids = pool[order[:train_size]]
        self.train_size = len(self.train_ids)
        self.train_transform = TrainTransform(images.image_size, images.crop_scale, flip=images.flip,
                                              mean=images.mean, std=images.std)
        self.eval_transform = EvalTransform(images.image_size, images.eval_crop, images.mean,
                                            images.std)
        self._epoch: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def open(self, root: str, split: str):
        """An `ImageSplit`, opened once per task."""
        from reliscale.data.image_sources import open_split

        if (root, split) not in self._opened:
            im = self.images
            self._opened[root, split] = open_split(root, split, im.num_channels, im.on_bad_input,
                                                   cache=im.cache, threads=self.threads)
        return self._opened[root, split]

    @property
    def unseen_classes(self) -> tuple[int, ...]:
        """Few-shot labels training never showed: the `ood_classes`, or every downstream class."""
        im = self.images
        if im.downstream_root:
            return tuple(range(self.open(im.downstream_root, im.train_split).num_classes))
        return tuple(int(c) for c in self.ood_labels)

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        cached = self._epoch  # one read: the prefetch thread may replace it meanwhile
        if cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, EPOCH_STREAM, epoch]).permutation(self.train_size))
            self._epoch = cached
        return cached[1]

    def train_examples(self, index: int, rank: int, world: int, size: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Rank `rank`'s `size` examples of global micro-batch `index` (see the module docstring).

        The loop asks for micro-batches in order, so each call hands back the batch decoded in the
        background since the last one (or decodes it now, after a resume) and starts on the next."""
        key = (index, rank, world, size)
        if self._next is not None and self._next[0] == key:
            batch = self._next[1].result()
        else:
            batch = self._load_train(*key)
        following = (index + 1, rank, world, size)
        self._next = (following, self._prefetcher.submit(self._load_train, *following))
        return batch

    def _load_train(self, index: int, rank: int, world: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        from reliscale.data.image_transforms import augment_rng

        if not 0 <= rank < world or index < 0 or size < 1:
            raise ValueError(f"bad index/rank/world/size: {index}/{rank}/{world}/{size}")
        per_epoch = self.train_size // (world * size)
        if per_epoch == 0:
            raise ValueError(f"a global batch of {world * size} exceeds the {self.train_size} "
                             f"training images of {self.images.root}")
        epoch, within = divmod(index, per_epoch)
        start = within * world * size + rank * size
        ids = self.train_ids[self._epoch_permutation(epoch)[start:start + size]]
        x, y = self.train.load_batch(ids, self.train_transform, augment_rng(self.seed, rank, index, 0))
        return x, self.relabel[y]

    def split(self, name: str) -> tuple[EvalImages, np.ndarray]:
        """An eval split (see the module docstring): images decoded on first use, labels."""
        from reliscale.data.corruptions import CorruptedSplit

        labels, im = self.held_out.labels, self.images
        corruption = corruption_split(name)
        if name == "id" or corruption:
            ids = fixed_subset(np.flatnonzero(self.relabel[labels] >= 0), self.eval_size)
            source = CorruptedSplit(self.held_out, *corruption, EVAL_SEED) if corruption else self.held_out
            return self._eval_images(source, ids), self.relabel[labels[ids]]
        if name == "ood" and im.ood_classes:
            ids = fixed_subset(np.flatnonzero(np.isin(labels, self.ood_labels)), self.eval_size)
            return self._eval_images(self.held_out, ids), labels[ids]
        if name == "ood_far" and im.ood_root:
            far = self.open(im.ood_root, im.eval_split)
            ids = fixed_subset(np.arange(len(far)), self.eval_size)
            return self._eval_images(far, ids), far.labels[ids]
        raise ValueError(f"unknown split {name!r}; allowed: id, <corruption>_<severity>"
                         + ", ood" * bool(im.ood_classes) + ", ood_far" * bool(im.ood_root))

    def fewshot(self) -> tuple[EvalImages, np.ndarray, EvalImages, np.ndarray]:
        """The few-shot task: support pool x, y and query x, y, labels the dataset's classes."""
        support, query = self._fewshot_splits()
        s_ids = per_class(support.labels, FEWSHOT_POOL)
        q_ids = fixed_subset(np.arange(len(query)), self.eval_size)
        return (self._eval_images(support, s_ids), support.labels[s_ids],
                self._eval_images(query, q_ids), query.labels[q_ids])

    def _eval_images(self, source, ids: np.ndarray) -> EvalImages:
        from reliscale.data.image_sources import EvalImages

        return EvalImages(source, ids, self.eval_transform, self.images.num_channels)

    def _fewshot_splits(self):
        im = self.images
        if im.downstream_root:
            return (self.open(im.downstream_root, im.train_split),
                    self.open(im.downstream_root, im.eval_split))
        return self.train, self.held_out

    def datasets(self) -> list[dict]:
        """The trial's datasets as MLflow inputs: name, digest (`split_digest`), source, context
        ("training" or "evaluation") and a profile of counts."""
        im = self.images

        def entry(root: str, split: str, context: str, **profile: int) -> dict:
            opened = self.open(root, split)
            return {"name": f"{Path(root).name}/{split}", "digest": split_digest(Path(root), split),
                    "source": str(Path(root).resolve()), "context": context,
                    "profile": {"images": len(opened), "classes": opened.num_classes,
                                "skipped": len(opened.survey.problems), **profile}}

        out = [entry(im.root, im.train_split, "training", examples=self.train_size,
                     trained_classes=self.num_classes),
               entry(im.root, im.eval_split, "evaluation")]
        if im.ood_root:
            out.append(entry(im.ood_root, im.eval_split, "evaluation"))
        if im.downstream_root:
            out += [entry(im.downstream_root, s, "evaluation") for s in (im.train_split, im.eval_split)]
        return out


def _one_line(e: Exception) -> str:
    """An error as one line: the first line, and the first of the listed problems."""
    lines = str(e).splitlines()
    return lines[0] + (f" first: {lines[1]}" if len(lines) > 1 else "")


def dataset_problem(spec) -> str | None:
    """What is wrong with the spec's image datasets on this machine, as one line, or None."""
    from reliscale.data.image_sources import open_split, open_splits

    im = spec.data.images
    opts = {"channels": im.num_channels, "on_bad_input": im.on_bad_input}
    splits = (im.train_split, im.eval_split)
    opened = {}
    for key in ("root", "ood_root", "downstream_root"):
        root = getattr(im, key)
        if root is None:
            continue
        try:
            opened[key] = (open_splits(root, splits, **opts) if key != "ood_root"
                           else {im.eval_split: open_split(root, im.eval_split, **opts)})
        except (OSError, ValueError) as e:
            return f"data.images.{key}: {_one_line(e)}"
    batch = int(max(np.atleast_1d(spec.data.batch_size)))
    problem = classes_problem(opened["root"], im, "root", "data.images", im.ood_classes, im.num_classes, batch, "train")
    if problem:
        return problem
    train = opened["root"][im.train_split]
    key, support = ("downstream_root", opened["downstream_root"][im.train_split]) \
        if im.downstream_root else ("root", train)
    counts = np.bincount(support.labels, minlength=support.num_classes)
    if counts.min() < max(SHOTS):
        c = int(counts.argmin())
        return (f"data.images.{key}: few-shot support needs {max(SHOTS)} {im.train_split!r} images "
                f"of every class; class {support.classes[c]!r} has {counts[c]}")
    return finetune_problem(spec, opened.get("downstream_root"))


def finetune_problem(spec, downstream: dict | None) -> str | None:
    """What keeps the spec's fine-tunes from training on the downstream dataset, or None."""
    f = spec.finetune
    if f is None or downstream is None:
        return None
    im = spec.data.images
    batch = f.batch_size or int(max(np.atleast_1d(spec.data.batch_size)))
    return classes_problem(downstream, im, "downstream_root", "finetune", f.ood_classes, f.num_classes, batch,
                           "fine-tune")


def classes_problem(opened: dict, im, root_key: str, prefix: str, ood_classes: tuple[str, ...],
                    num_classes: int | None, batch: int, verb: str) -> str | None:
    """What keeps the dataset at `data.images.<root_key>` (its `opened` splits) from training
    (`verb`: train or fine-tune) with `ood_classes` held out: an unknown class, fewer than 2 left, a
    `num_classes` that differs, too few images of either kind. One line naming the key
    (`<prefix>.ood_classes`, `<prefix>.num_classes` or the root)."""
    root, train_split, eval_split = getattr(im, root_key), im.train_split, im.eval_split
    train, held_out = opened[train_split], opened[eval_split]
    classes = train.classes
    unknown = [c for c in ood_classes if c not in classes]
    if unknown:
        return f"{prefix}.ood_classes: {unknown[0]!r} is not a class of {root}; allowed: {', '.join(classes)}"
    kept = len(classes) - len(ood_classes)
    if kept < 2:
        return f"{prefix}.ood_classes: leave {kept} class(es) of {root} to {verb}; need >= 2"
    if num_classes is not None and num_classes != kept:
        return (f"{prefix}.num_classes: {num_classes}, but {root} has {kept} classes to {verb} "
                f"({len(classes)} less {len(ood_classes)} {prefix}.ood_classes)")
    ood = np.isin(np.asarray(classes)[held_out.labels], ood_classes)
    trained = np.isin(np.asarray(classes)[train.labels], ood_classes, invert=True).sum()
    for what, n, need in ((f"held-out images of the classes to {verb} in {eval_split!r}", (~ood).sum(), 1),
                          (f"held-out images of {prefix}.ood_classes in {eval_split!r}", ood.sum(),
                           1 if ood_classes else 0),
                          (f"training images of the classes to {verb} in {train_split!r}", trained, batch)):
        if n < need:
            return f"data.images.{root_key}: {n} {what}; need >= {need}"
    return None


@register
class Images(TaskKind):
    """Images on disk: held-out, ImageNet-C-style corrupted and OOD splits, and few-shot."""

    name = "images"
    info = TaskInfo(
        kind="classification", unit="examples", families=("vit",), techniques=TECHNIQUES,
        splits=("id", "ood", "ood_far", "fewshot"), metrics=CLASSIFICATION_METRICS,
        extra_split=lambda name: corruption_split(name) is not None,
        extra_split_help=", or <corruption>_<severity 1-5> of " + ", ".join(SEVERITIES),
    )

    def build(self, trial, world: int, cache_dir: Path) -> ClassificationStream:
        spec = trial.spec
        task = ImageTask(spec.data.images, trial.seed, trial.data_size, spec.eval.examples,
                         spec.resources.threads_per_worker)
        return ClassificationStream(task, world, spec.grad_accumulation())

    def model(self, trial):
        from reliscale.models.build import image_classifier

        im = trial.spec.data.images
        return image_classifier(trial, im.image_size, im.patch_size, im.num_channels,
                                trained_classes(im))

    def evaluator(self, task, trial):
        from reliscale.evaluation.classification import ClassificationEvaluator

        splits = trial.spec.splits()
        groups: dict[str, tuple[str, ...]] = {}
        for name in splits:
            if corruption := corruption_split(name):
                groups[corruption[0]] = (*groups.get(corruption[0], ()), name)
        return ClassificationEvaluator(task, splits, trial.spec.eval.metrics, groups)

    def sequence_lengths(self, trial) -> tuple[int, int]:
        im = trial.spec.data.images
        patches = (im.image_size // im.patch_size) ** 2
        return patches + 1, (patches + 2 if trial.size.dec else 0)

    def splits(self, spec) -> tuple[str, ...]:
        im = spec.data.images
        if im is None:
            return ("id", "fewshot")
        shifted = [f"{c}_{s}" for c in im.corruptions for s in im.severities]
        ood = ["ood"] if im.ood_classes else []
        far = ["ood_far"] if im.ood_root else []
        return ("id", *shifted, *ood, *far, "fewshot")

    def allows_split(self, spec, name: str) -> bool:
        return name in self.splits(spec) or corruption_split(name) is not None

    def check(self, spec) -> tuple[str, str] | None:
        if spec.data.images is None:
            return ("data.images", "is required for task 'images'; allowed: {root: <dataset folder>, "
                    "image_size, patch_size, num_channels, ood_classes, ...}")
        return None

    def preflight(self, spec) -> str | None:
        return dataset_problem(spec)

    def loader_rate(self, trial) -> float:
        size = trial.spec.data.images.image_size
        return LOADER_IMAGES_PER_CPU_S * (LOADER_BENCH_SIZE / size) ** 2
