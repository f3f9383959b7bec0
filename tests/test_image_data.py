"""Image readers and transforms on real scans: scikit-learn's 1,797 8x8 digits written to disk
as an ImageFolder tree of PNGs and as Hugging Face-style parquet shards."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from reliscale.data.image_inspect import inspect_images
from reliscale.data.image_sources import BadInputError, open_split, open_splits
from reliscale.data.image_transforms import (
    CROP_DRAWS,
    EvalTransform,
    TrainTransform,
    augment_rng,
    crop_box,
)

# Word names: sorted folder order (eight, five, four, ...) differs from the digit order.
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path: Path, images: np.ndarray, labels: np.ndarray, names: list[str] | None,
                  label_col: str = "label") -> None:
    """A parquet file as `datasets` exports one: image struct{bytes, path} + ClassLabel."""
    image = pa.array([{"bytes": png(im), "path": f"{i}.png"} for i, im in enumerate(images)])
    table = pa.table({"image": image, label_col: pa.array(labels, pa.int64())})
    if names is not None:
        feats = {"image": {"_type": "Image"}, label_col: {"names": names, "_type": "ClassLabel"}}
        meta = {"huggingface": json.dumps({"info": {"features": feats}})}
        table = table.replace_schema_metadata(meta)
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    """The digits as uint8 (0-16 scaled to 0-255), split 4:1, written in both layouts."""
    d = load_digits()
    images = np.rint(d.images * 255 / 16).astype(np.uint8)
    test = np.arange(len(images)) % 5 == 0
    split_idx = {"train": np.flatnonzero(~test), "test": np.flatnonzero(test)}
    root = tmp_path_factory.mktemp("digits")
    for split, idx in split_idx.items():
        for i in idx:
            folder = root / "folder" / split / NAMES[d.target[i]]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:04d}.png").write_bytes(png(images[i]))
    (root / "parquet").mkdir()
    halves = np.array_split(split_idx["train"], 2)
    for k, idx in enumerate(halves):
        write_parquet(root / "parquet" / f"train-{k:05d}-of-00002.parquet", images[idx],
                      d.target[idx], NAMES)
    write_parquet(root / "parquet" / "test-00000-of-00001.parquet", images[split_idx["test"]],
                  d.target[split_idx["test"]], NAMES)
    return {"root": root, "images": images, "target": d.target, "split_idx": split_idx}


def folder_order(digits, split: str) -> list[int]:
    """Source indices in ImageFolder order: sorted class names, then sorted file names."""
    idx = digits["split_idx"][split]
    return [i for name in sorted(NAMES) for i in idx if NAMES[digits["target"][i]] == name]


def test_folder_pixels_equal_the_source_digits(digits):
    split = open_split(digits["root"] / "folder", "train", channels=1)
    order = folder_order(digits, "train")
    assert len(split) == len(order) == 1437
    decoded = np.stack([split.load(i) for i in range(len(split))])
    np.testing.assert_array_equal(decoded[..., 0], digits["images"][order])
    assert decoded.dtype == np.uint8 and decoded.shape == (1437, 8, 8, 1)
    rgb = open_split(digits["root"] / "folder", "test", channels=3)
    first = folder_order(digits, "test")[0]
    np.testing.assert_array_equal(rgb.load(0), np.repeat(digits["images"][first][..., None], 3, -1))


def test_parquet_pixels_equal_the_source_digits_across_shards(digits):
    split = open_split(digits["root"] / "parquet", "train", channels=1)
    idx = digits["split_idx"]["train"]  # shard 0 rows, then shard 1 rows
    decoded = np.stack([split.load(i)[..., 0] for i in range(len(split))])
    np.testing.assert_array_equal(decoded, digits["images"][idx])
    np.testing.assert_array_equal(split.labels, digits["target"][idx])


def test_class_names_order_and_counts_in_both_layouts(digits):
    folder = open_splits(digits["root"] / "folder", ["train", "test"], channels=1)
    parquet = open_splits(digits["root"] / "parquet", ["train", "test"], channels=1)
    assert folder["train"].classes == sorted(NAMES)
    assert parquet["train"].classes == NAMES
    for split in ("train", "test"):
        source = np.bincount(digits["target"][digits["split_idx"][split]], minlength=10)
        np.testing.assert_array_equal(np.bincount(parquet[split].labels, minlength=10), source)
        by_name = dict(zip(folder[split].classes, np.bincount(folder[split].labels), strict=True))
        assert [by_name[n] for n in NAMES] == source.tolist()
    labels = folder["test"].labels
    assert [folder["test"].classes[y] for y in labels] == [
        NAMES[digits["target"][i]] for i in folder_order(digits, "test")]


def test_parquet_without_names_metadata_numbers_its_classes(digits, tmp_path):
    idx = digits["split_idx"]["test"][:30]
    write_parquet(tmp_path / "test.parquet", digits["images"][idx], digits["target"][idx], None)
    split = open_split(tmp_path, "test", channels=1)
    assert split.classes == [str(c) for c in range(digits["target"][idx].max() + 1)]


def test_splits_with_different_classes_are_refused(digits, tmp_path):
    shutil.copytree(digits["root"] / "folder", tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "test" / "nine")
    with pytest.raises(ValueError, match="split 'test' has classes"):
        open_splits(tmp_path, ["train", "test"], channels=1)


def test_train_batches_are_a_function_of_seed_rank_step_micro(digits):
    split = open_split(digits["root"] / "parquet", "train", channels=1)
    tf = TrainTransform(8, scale=(0.3, 1.0), flip=0.0)
    idx = list(range(16))

    def batch(seed=0, rank=0, step=0, micro=0):
        return split.load_batch(idx, tf, augment_rng(seed, rank, step, micro))

    x, y = batch()
    assert x.shape == (16, 1, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(y, split.labels[:16])
    np.testing.assert_array_equal(x, batch()[0])
    for other in (dict(step=1), dict(micro=1), dict(rank=1), dict(seed=1)):
        assert not np.array_equal(x, batch(**other)[0]), other
    # example k's augmentation depends on its position only, not on the rest of the batch
    head = split.load_batch(idx[:5], tf, augment_rng(0, 0, 0, 0))[0]
    np.testing.assert_array_equal(head, x[:5])


def test_eval_transform_has_no_randomness(digits):
    split = open_split(digits["root"] / "folder", "test", channels=3)
    tf = EvalTransform(16, crop_fraction=None, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    a = split.load_batch(range(10), tf, augment_rng(0, 0, 0, 0))[0]
    b = split.load_batch(range(10), tf, augment_rng(9, 9, 9, 9))[0]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (10, 3, 16, 16)


def test_normalisation_is_per_channel_affine():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = EvalTransform(8, crop_fraction=None, mean=mean, std=std)(img)
    for c in range(3):
        np.testing.assert_allclose(out[c], (img[..., c] / 255.0 - mean[c]) / std[c], rtol=1e-5)


def test_centre_crop_keeps_the_middle_of_the_long_side():
    img = np.arange(8 * 12, dtype=np.uint8).reshape(8, 12, 1)
    out = EvalTransform(8, crop_fraction=1.0).geometry(img)
    np.testing.assert_array_equal(out, img[:, 2:10])
    big = np.zeros((300, 400, 3), np.uint8)
    assert EvalTransform(224).geometry(big).shape == (224, 224, 3)  # 256 short side, then 224


def test_full_crop_with_certain_flip_mirrors_the_image():
    img = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    u = np.random.default_rng(0).random(TrainTransform.draws)
    flipped = TrainTransform(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0).geometry(img, u)
    np.testing.assert_array_equal(flipped, img[:, ::-1])
    kept = TrainTransform(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0).geometry(img, u)
    np.testing.assert_array_equal(kept, img)


def test_random_crop_boxes_respect_scale_ratio_and_bounds():
    rng = np.random.default_rng(0)
    h, w = 120, 160
    draws = rng.random((2000, CROP_DRAWS))
    boxes = np.array([crop_box(h, w, (0.2, 0.6), (0.75, 4 / 3), u) for u in draws])
    cw, ch = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    area = cw * ch / (h * w)
    assert area.min() > 0.19 and area.max() < 0.61  # rounding to whole pixels
    assert (cw / ch).min() > 0.74 and (cw / ch).max() < 1.35
    assert area.std() > 0.1  # spread over the range (uniform on (0.2, 0.6): 0.115)
    assert np.abs(np.median(boxes[:, 0] / (w - cw + 1)) - 0.5) < 0.05  # offsets uniform
    impossible = crop_box(10, 100, (0.9, 1.0), (0.75, 4 / 3), rng.random(CROP_DRAWS))
    assert impossible == (43, 0, 56, 10)  # nothing fits a 10x100 strip: centred 13x10 (4/3)


def test_cached_split_loads_the_same_images_read_only(digits):
    split = open_split(digits["root"] / "parquet", "test", channels=1, cache=True)
    fresh = open_split(digits["root"] / "parquet", "test", channels=1)
    tf = TrainTransform(8, flip=0.0)
    np.testing.assert_array_equal(split.load_batch(range(32), tf, augment_rng(3, 0, 1, 0))[0],
                                  fresh.load_batch(range(32), tf, augment_rng(3, 0, 1, 0))[0])
    with pytest.raises(ValueError, match="read-only"):
        split.load(0)[0, 0] = 1


def test_random_transform_without_rng_is_refused(digits):
    split = open_split(digits["root"] / "parquet", "test", channels=1)
    with pytest.raises(ValueError, match="augment_rng"):
        split.load_batch([0], TrainTransform(8))


# --- bad inputs: each named, counted, skipped or refused ------------------------------------


@pytest.fixture
def small(digits, tmp_path) -> Path:
    """A copy of the folder layout with 3 train images per class, and a parquet of 30 images."""
    for name in NAMES:
        src = digits["root"] / "folder" / "train" / name
        dst = tmp_path / "folder" / "train" / name
        dst.mkdir(parents=True)
        for f in sorted(src.iterdir())[:3]:
            shutil.copy(f, dst / f.name)
    idx = digits["split_idx"]["train"][:30]
    (tmp_path / "parquet").mkdir()
    write_parquet(tmp_path / "parquet" / "train.parquet", digits["images"][idx],
                  digits["target"][idx], NAMES)
    return tmp_path


def truncated_png(small: Path) -> Path:
    f = small / "folder" / "train" / "one" / "bad.png"
    f.write_bytes(next((small / "folder" / "train" / "two").iterdir()).read_bytes()[:40])
    return f


def garbage_jpeg(small: Path) -> Path:
    f = small / "folder" / "train" / "one" / "bad.jpg"
    f.write_bytes(b"not an image at all")
    return f


def empty_class(small: Path) -> Path:
    f = small / "folder" / "train" / "ten"
    f.mkdir()
    return f


def unknown_extension(small: Path) -> Path:
    f = small / "folder" / "train" / "one" / "notes.gif"
    f.write_bytes(b"GIF89a")
    return f


def stray_file(small: Path) -> Path:
    f = small / "folder" / "train" / "labels.csv"
    f.write_text("a,b\n")
    return f


def rewrite_parquet(small: Path, labels=None, blob=None, drop_label=False) -> Path:
    f = small / "parquet" / "train.parquet"
    table = pq.read_table(f)
    if labels is not None:
        table = table.set_column(1, "label", pa.array(labels, pa.int64()))
    if blob is not None:
        images = table.column("image").to_pylist()
        images[3]["bytes"] = blob
        table = table.set_column(0, "image", pa.array(images))
    if drop_label:
        table = table.drop_columns(["label"])
    pq.write_table(table, f)
    return f


def label_out_of_range(small: Path) -> Path:
    labels = pq.read_table(small / "parquet" / "train.parquet").column("label").to_numpy().copy()
    labels[[4, 7]] = [10, -1]
    return rewrite_parquet(small, labels=labels)


def corrupt_parquet_image(small: Path) -> Path:
    return rewrite_parquet(small, blob=b"\x89PNG garbage")


def missing_label_column(small: Path) -> Path:
    return rewrite_parquet(small, drop_label=True)


# (make the bad input, layout, kind, problems, usable images left when skipped)
BAD_CASES = {
    "truncated_png": (truncated_png, "folder", "corrupt_image", 1, 30),
    "garbage_jpeg": (garbage_jpeg, "folder", "corrupt_image", 1, 30),
    "empty_class": (empty_class, "folder", "empty_class", 1, 30),
    "unknown_extension": (unknown_extension, "folder", "unknown_extension", 1, 30),
    "stray_file": (stray_file, "folder", "not_a_class_folder", 1, 30),
    "label_out_of_range": (label_out_of_range, "parquet", "label_out_of_range", 2, 28),
    "corrupt_parquet_image": (corrupt_parquet_image, "parquet", "corrupt_image", 1, 29),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_refused_naming_the_file(small, case):
    make, layout, kind, count, _ = BAD_CASES[case]
    where = make(small)
    with pytest.raises(BadInputError, match=f"{count} bad input") as err:
        open_split(small / layout, "train", on_bad_input="refuse")
    assert [p.kind for p in err.value.problems] == [kind] * count
    assert str(where) in str(err.value)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_skipped_with_a_summary_line(small, case, caplog):
    make, layout, kind, count, left = BAD_CASES[case]
    where = make(small)
    with caplog.at_level(logging.WARNING, logger="reliscale.data.image_sources"):
        split = open_split(small / layout, "train", on_bad_input="skip")
    assert len(split) == left
    lines = [m for m in caplog.messages if "skipped" in m]
    assert len(lines) == 1 and f"skipped {count} {kind}" in lines[0]
    assert str(where) in caplog.text
    # an empty class folder keeps its label: the label space stays that of the other splits
    assert split.num_classes == (11 if case == "empty_class" else 10)
    for i in range(len(split)):
        split.load(i)


def test_header_check_also_catches_non_images(small):
    garbage_jpeg(small)
    with pytest.raises(BadInputError, match=r"bad\.jpg"):
        open_split(small / "folder", "train", check="header")


@pytest.mark.parametrize("mode", ["skip", "refuse"])
def test_parquet_without_a_label_column_is_named(small, mode):
    f = missing_label_column(small)
    with pytest.raises(ValueError, match=r"missing_column|no usable images") as err:
        open_split(small / "parquet", "train", on_bad_input=mode)
    assert "no label column" in str(err.value) and str(f) in str(err.value)


def test_parquet_columns_of_the_wrong_type_are_named(small, tmp_path):
    f = tmp_path / "test.parquet"
    pq.write_table(pa.table({"image": ["a.png"], "label": [0]}), f)
    with pytest.raises(BadInputError, match="image column 'image' has type string"):
        open_split(tmp_path, "test")
    pq.write_table(pa.table({"image": [png(np.zeros((2, 2), np.uint8))], "label": ["cat"]}), f)
    with pytest.raises(BadInputError, match="label column 'label' has type string"):
        open_split(tmp_path, "test")


@pytest.mark.parametrize("mode", ["skip", "refuse"])
def test_missing_split_is_refused_in_both_modes(small, mode):
    with pytest.raises(FileNotFoundError, match="split 'validation' not found"):
        open_split(small / "folder", "validation", on_bad_input=mode)


def test_bad_arguments_are_named(small):
    for kwargs, key in ((dict(channels=2), "channels"), (dict(on_bad_input="warn"), "on_bad_input"),
                        (dict(check="full"), "check")):
        with pytest.raises(ValueError, match=key):
            open_split(small / "folder", "train", **kwargs)
    with pytest.raises(ValueError, match="mean/std have 3 values for a 1-channel"):
        tf = EvalTransform(8, crop_fraction=None, mean=(0.5,) * 3, std=(0.5,) * 3)
        tf(np.zeros((8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="scale"):
        TrainTransform(8, scale=(0.5, 0.1))


def test_inspect_reports_splits_classes_sizes_and_bad_files(digits, tmp_path):
    shutil.copytree(digits["root"] / "folder", tmp_path, dirs_exist_ok=True)
    (tmp_path / "test" / "one" / "bad.png").write_bytes(b"nope")
    report = inspect_images(tmp_path)
    assert "split train: 1437 images, 10 classes" in report
    assert "split test: 360 images, 10 classes" in report
    counts = np.bincount(digits["target"][digits["split_idx"]["test"]], minlength=10)
    assert f"eight {counts[8]}, five {counts[5]}" in report
    assert "sizes: 8x8 1437" in report and "modes: L 360" in report
    assert "bad inputs: 1" in report and "skipped 1 corrupt_image" in report
    assert "split test: 360" in inspect_images(digits["root"] / "parquet", check="header")
