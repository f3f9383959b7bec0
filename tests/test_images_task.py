"""The image task on real files: scikit-learn's digits written as an ImageFolder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reliscale.data.local_images import write_digits
from reliscale.spec.schema import SpecError, expand, load_spec
from reliscale.tasks import TASKS, build_model
from reliscale.tasks.images import ImageTask, split_digest

IMAGES = TASKS["images"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"))


def smoke_spec(repo: Path, root: Path | str, *overrides: str):
    """The smoke job without its downstream dataset: few-shot over every class of `root`."""
    return load_spec(repo / "jobs" / "images_smoke.yaml", [f"data.images.root={root}", "finetune=null",
                                                            "data.images.downstream_root=null", *overrides])


def task(spec, seed: int = 0, data_size: int = 9600) -> ImageTask:
    return ImageTask(spec.data.images, seed, data_size, spec.eval.examples)


def test_batches_are_a_pure_function_of_seed_rank_and_micro_batch(repo, digits):
    spec = smoke_spec(repo, digits)
    a, b = task(spec), task(spec)
    for index, rank in ((0, 0), (7, 1), (123, 0)):
        xa, ya = a.train_examples(index, rank, 2, 16)
        xb, yb = b.train_examples(index, rank, 2, 16)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(a.train_examples(1, 0, 2, 16)[0], a.train_examples(2, 0, 2, 16)[0])
    assert not np.array_equal(a.train_examples(1, 0, 2, 16)[0], task(spec, seed=1).train_examples(1, 0, 2, 16)[0])
    x, y = a.train_examples(0, 0, 2, 16)
    assert x.shape == (16, 1, 32, 32) and x.dtype == np.float32 and set(y) <= set(range(8))


def test_batches_are_the_same_pixels_on_any_number_of_decode_threads_and_call_order(repo, digits):
    spec = smoke_spec(repo, digits, "data.images.cache=false")
    one, three = task(spec), ImageTask(spec.data.images, 0, 9600, spec.eval.examples, threads=3)
    assert three.train._pool is not None and one.train._pool is None
    # in order (each call hands back the prefetched batch), then jumps (a resume: decoded on the spot)
    for index in (0, 1, 2, 40, 3, 3, 4):
        x1, y1 = one.train_examples(index, 1, 2, 16)
        x3, y3 = three.train_examples(index, 1, 2, 16)
        assert np.array_equal(x1, x3) and np.array_equal(y1, y3), index
        assert np.array_equal(x1, task(spec)._load_train(index, 1, 2, 16)[0]), index  # no prefetch
        assert three._next[0] == (index + 1, 1, 2, 16)  # the next one is on its way
    assert np.array_equal(one.split("gaussian_noise_3")[0], three.split("gaussian_noise_3")[0])


def test_an_epoch_shows_each_trained_image_once_and_data_sizes_are_nested(repo, digits):
    spec = smoke_spec(repo, digits)
    full = task(spec)
    assert full.train_size == 1166  # train/ images of digits 0-7: the whole set at D=9600 > N
    small, smaller = task(spec, data_size=640), task(spec, data_size=320)
    assert small.train_size == 640 and set(smaller.train_ids) < set(small.train_ids)
    seen = []
    for index in range(640 // 32):  # one epoch of global batches of 2 ranks x 16
        for rank in range(2):
            start = (index * 2 + rank) * 16
            seen += list(small.train_ids[small._epoch_permutation(0)[start:start + 16]])
            _, y = small.train_examples(index, rank, 2, 16)
            labels = small.relabel[small.train.labels[small.train_ids[small._epoch_permutation(0)[start:start + 16]]]]
            assert np.array_equal(y, labels)
    assert sorted(seen) == sorted(small.train_ids)
    assert not np.isin(small.train.labels[small.train_ids], [8, 9]).any()


def test_default_splits_are_every_corruption_at_every_severity_plus_ood_and_fewshot(repo):
    spec = smoke_spec(repo, "/nowhere")  # spec checks never open the folder
    names = IMAGES.splits(spec)
    assert names[0] == "id" and names[-2:] == ("ood", "fewshot") and len(names) == 15
    assert "gaussian_noise_3" in names and "contrast_5" in names
    assert IMAGES.allows_split(spec, "pixelate_2") and not IMAGES.allows_split(spec, "ood_far")
    assert not IMAGES.allows_split(spec, "gaussian_noise_6")
    with_far = smoke_spec(repo, "/nowhere", "data.images.ood_root=/elsewhere")
    assert IMAGES.splits(with_far)[-2:] == ("ood_far", "fewshot")


@pytest.mark.parametrize(("override", "key", "words"), [
    ("eval.splits=[id, gaussian_noise_9]", "eval.splits[1]", "<corruption>_<severity 1-5>"),
    ("data.images.corruptions=[gaussian_nois]", "data.images.corruptions[0]", "did you mean 'gaussian_noise'"),
    ("data.images.patch_size=5", "data.images.patch_size", "does not divide image_size=32"),
    ("data.images.severities=[0, 3]", "data.images.severities[0]", "allowed: 1..5"),
    ("data.images.mean=[0.1, 0.2, 0.3]", "data.images.mean", "num_channels=1"),
    ("data.images=null", "data.images", "required for task 'images'"),
])
def test_bad_image_specs_fail_before_anything_runs(repo, override, key, words):
    with pytest.raises(SpecError) as e:
        smoke_spec(repo, "/nowhere", override)
    assert any(p.startswith(f"{key}:") and words in p for p in e.value.problems), e.value.problems


def test_preflight_names_the_bad_folder_and_file_in_one_line(repo, digits, tmp_path):
    assert IMAGES.preflight(smoke_spec(repo, digits)) is None
    missing = IMAGES.preflight(smoke_spec(repo, tmp_path / "absent"))
    assert missing.startswith("data.images.root: split 'train' not found under") and "\n" not in missing
    bad = write_digits(tmp_path / "bad")
    (bad / "train" / "3" / "0003.png").write_bytes(b"not a png")
    problem = IMAGES.preflight(smoke_spec(repo, bad))
    assert problem.startswith("data.images.root: split 'train': 1 bad input(s)")
    assert "corrupt_image" in problem and "0003.png" in problem and "\n" not in problem
    assert IMAGES.preflight(smoke_spec(repo, bad, "data.images.on_bad_input=skip")) is None
    unknown = IMAGES.preflight(smoke_spec(repo, digits, "data.images.ood_classes=[8, ten]"))
    assert unknown == f"data.images.ood_classes: 'ten' is not a class of {digits}; allowed: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    count = IMAGES.preflight(smoke_spec(repo, digits, "data.images.num_classes=10"))
    assert count.startswith("data.images.num_classes: 10, but") and "8 classes to train" in count


def test_corrupted_split_is_the_upscaled_id_images_through_imagenet_c_contrast(repo, digits):
    t = task(smoke_spec(repo, digits))
    (x_id, y_id), (x_c, y_c) = ((np.asarray(x), y) for x, y in (t.split("id"), t.split("contrast_5")))
    assert np.array_equal(y_id, y_c) and x_id.shape == (277, 1, 32, 32)  # 277 test images of 0-7
    # Reference: undo Normalize(0.5, 0.5) on the upscaled id image, then (x - mean) * 0.05 + mean.
    clean = x_id * 0.5 + 0.5
    mean = clean.mean(axis=(2, 3), keepdims=True)
    expected = (clean - mean) * 0.05 + mean
    assert np.abs((x_c * 0.5 + 0.5) - expected).max() <= 1 / 255 + 1e-6
    noisy = [np.asarray(t.split(f"gaussian_noise_{s}")[0]) for s in (1, 5)]
    assert np.abs(noisy[0] - x_id).mean() < np.abs(noisy[1] - x_id).mean()  # severity 5 is noisier
    assert np.array_equal(noisy[1], task(smoke_spec(repo, digits), seed=3).split("gaussian_noise_5")[0])


def test_each_rank_decodes_only_its_shard_of_an_eval_split_and_keeps_it_as_uint8(repo, digits):
    from reliscale.evaluation.predict import _shard

    t = task(smoke_spec(repo, digits))
    whole = np.asarray(t.split("gaussian_noise_3")[0])
    x, _ = t.split("gaussian_noise_3")
    shards = [_shard({"x": x}, rank, 3)["x"] for rank in range(3)]
    assert len(x._rows) == len(x) == 277 and x._rows[0].dtype == np.uint8
    assert np.array_equal(np.concatenate(shards)[:277], whole)  # 93 rows a rank, the last row repeated
    assert np.array_equal(shards[2][-1], whole[-1]) and len(shards[2]) == 93
    one_rank, _ = t.split("gaussian_noise_3")
    _shard({"x": one_rank}, 1, 3)
    assert sorted(one_rank._rows) == list(range(93, 186))  # rank 1 of 3 decoded rows 93-185 only
    assert np.array_equal(one_rank[100:102], whole[100:102]) and one_rank.shape == (277, 1, 32, 32)


def test_ood_split_holds_the_held_out_classes_and_fewshot_all_ten(repo, digits):
    t = task(smoke_spec(repo, digits))
    _, y_ood = t.split("ood")
    assert set(y_ood) == {8, 9} and len(y_ood) == 83  # every test image of 8 and 9
    xs, ys, xq, yq = t.fewshot()
    assert np.array_equal(np.bincount(ys), [100] * 10) and len(yq) == 360
    assert xs.shape[1:] == xq.shape[1:] == (1, 32, 32)
    assert t.unseen_classes == (8, 9)


def test_datasets_carry_a_digest_that_changes_with_the_files(repo, digits, tmp_path):
    spec = smoke_spec(repo, digits)
    train, held_out = task(spec).datasets()
    assert train["context"] == "training" and held_out["context"] == "evaluation"
    assert train["profile"] == {"images": 1437, "classes": 10, "skipped": 0, "examples": 1166,
                                "trained_classes": 8}
    assert len(train["digest"]) == 32 and train["digest"] == split_digest(digits, "train")
    copy = write_digits(tmp_path / "copy")
    assert split_digest(copy, "train") == train["digest"]  # content, not place or time
    image = copy / "train" / "1" / "0001.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)
    assert split_digest(copy, "train") != train["digest"]


def test_image_vit_sees_the_tokens_the_planner_counts(repo, digits):
    trial = expand(smoke_spec(repo, digits))[0]
    model = build_model(trial)
    x = torch.zeros(2, 1, 32, 32)
    tokens = model.backbone.vit.embeddings(pixel_values=x).shape[1]
    assert tokens == IMAGES.sequence_lengths(trial)[0] == (32 // 8) ** 2 + 1
    assert model.predict({"x": x}).probs.shape == (2, 8)  # digits 0-7


def test_a_second_dataset_is_scored_as_far_ood_beside_the_held_out_classes(repo, digits, tmp_path):
    from reliscale.tasks import build_evaluator, build_task

    far = tmp_path / "far"
    for label in ("a", "b"):  # 40 random-noise images in two classes
        (far / "test" / label).mkdir(parents=True)
        for i in range(20):
            pixels = np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(far / "test" / label / f"{i}.png")
    spec = smoke_spec(repo, digits, f"data.images.ood_root={far}", "eval.splits=[id, ood, ood_far]")
    assert IMAGES.preflight(spec) is None
    trial = expand(spec)[0]
    stream = build_task(trial, world=1)
    assert [d["name"] for d in stream.task.datasets()] == [f"{digits.name}/train", f"{digits.name}/test", "far/test"]
    torch.manual_seed(0)
    out = build_evaluator(stream, trial).run(build_model(trial).eval(), "cpu", 0, 1)
    for split in ("ood", "ood_far"):
        assert 0 <= out[f"eval/{split}/ood_auroc_msp"] <= 1 and f"eval/{split}/fpr95" in out
    assert not any(k.startswith("eval/shifted/") for k in out)  # no corrupted split was asked for
