"""MNIST-1D task: determinism, caching, sharding, split semantics, and a linear-probe check
that the shifts shift something."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from reliscale.tasks import mnist1d as images
from reliscale.tasks.mnist1d import MNIST1DTask

SHIFTS = ("noise", "scale", "shift", "blur")


def test_splits_are_deterministic_per_seed(tmp_path):
    a = MNIST1DTask(seed=0, train_size=256, eval_size=128, cache_dir=tmp_path / "a")
    b = MNIST1DTask(seed=0, train_size=256, eval_size=128, cache_dir=tmp_path / "b")
    c = MNIST1DTask(seed=1, train_size=256, eval_size=128, cache_dir=tmp_path / "c")
    for name in a.split_names:
        xa, ya = a.split(name)
        xb, yb = b.split(name)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert not np.allclose(xa, c.split(name)[0])
    np.testing.assert_array_equal(a.train_examples(3, 0, 1, 32)[0], b.train_examples(3, 0, 1, 32)[0])
    assert not np.allclose(a.train_examples(3, 0, 1, 32)[0], c.train_examples(3, 0, 1, 32)[0])


def test_shapes_and_dtypes(tmp_path):
    task = MNIST1DTask(seed=0, train_size=64, eval_size=50, cache_dir=tmp_path)
    assert task.input_shape == (1, 1, 40)
    assert task.num_classes == 8
    assert task.split_names == ("id", "noise", "scale", "shift", "blur", "ood")
    x, y = task.split("id")
    assert x.shape == (50, 1, 1, 40) and x.dtype == np.float32
    assert y.shape == (50,) and y.dtype == np.int64
    assert abs(float(x.std()) - 1.0) < 0.15  # normalised by a fixed constant
    with pytest.raises(ValueError, match="allowed: id, noise"):
        task.split("train")


def test_fewshot_task_holds_every_digit_in_its_support_pool_and_its_queries(tmp_path):
    task = MNIST1DTask(seed=0, train_size=64, eval_size=300, cache_dir=tmp_path)
    xs, ys, xq, yq = task.fewshot()
    assert xs.shape == (images.SUPPORT_POOL, 1, 1, 40) and xq.shape == (300, 1, 1, 40)
    assert set(yq) == set(range(10))
    assert np.bincount(ys, minlength=10).min() >= 25 * 2  # 25 shots, room for draws to differ
    x_id, _ = task.split("id")
    assert not np.isin(xq[:, 0, 0, 0], x_id[:, 0, 0, 0]).any()  # its own stream, not the id split's
    again = MNIST1DTask(seed=0, train_size=64, eval_size=300, cache_dir=tmp_path / "b").fewshot()
    for a, b in zip((xs, ys, xq, yq), again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_second_load_reads_the_cache_file(tmp_path, monkeypatch):
    first = MNIST1DTask(seed=0, train_size=64, eval_size=32, cache_dir=tmp_path)
    x, _ = first.split("noise")
    x_train, _ = first.train_examples(0, 0, 1, 64)
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 2

    def fail(*args, **kwargs):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(images, "render", fail)
    second = MNIST1DTask(seed=0, train_size=64, eval_size=32, cache_dir=tmp_path)
    np.testing.assert_array_equal(second.split("noise")[0], x)
    np.testing.assert_array_equal(second.train_examples(0, 0, 1, 64)[0], x_train)


def test_eval_splits_and_training_prefix_do_not_depend_on_train_size(tmp_path):
    small = MNIST1DTask(seed=0, train_size=100, eval_size=64, cache_dir=tmp_path)
    large = MNIST1DTask(seed=0, train_size=3000, eval_size=64, cache_dir=tmp_path)
    np.testing.assert_array_equal(small.split("id")[0], large.split("id")[0])
    np.testing.assert_array_equal(
        small.train_examples(0, 0, 1, 100)[0], large.train_examples(0, 0, 1, 100)[0]
    )


def rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def test_rank_shards_are_disjoint_and_cover_the_budget(tmp_path):
    task = MNIST1DTask(seed=0, train_size=96, eval_size=16, cache_dir=tmp_path)
    full = rows(task.train_examples(0, 0, 1, 96)[0])
    assert len(full) == 96  # examples are distinct
    steps = 96 // (2 * 8)
    shards = {r: [task.train_examples(s, r, 2, 8)[0] for s in range(steps)] for r in (0, 1)}
    seen = [rows(np.concatenate(shards[r])) for r in (0, 1)]
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == full
    # the next epoch covers the same examples again, in another order
    epoch2 = np.concatenate(
        [task.train_examples(steps + s, r, 2, 8)[0] for s in range(steps) for r in (0, 1)]
    )
    assert rows(epoch2) == full
    assert not np.array_equal(epoch2[:8], shards[0][0])
    with pytest.raises(ValueError, match="exceeds train_size"):
        task.train_examples(0, 0, 4, 32)


def test_ood_classes_are_absent_from_training(tmp_path):
    task = MNIST1DTask(seed=0, train_size=2000, eval_size=500, cache_dir=tmp_path)
    _, y_train = task.train_examples(0, 0, 1, 2000)
    assert set(np.unique(y_train)) == set(range(8))
    _, y_ood = task.split("ood")
    assert set(np.unique(y_ood)) == {8, 9}
    assert set(np.unique(task.split("id")[1])) <= set(range(8))


def test_shifted_splits_differ_from_id_but_keep_labels(tmp_path):
    task = MNIST1DTask(seed=0, train_size=64, eval_size=200, cache_dir=tmp_path)
    x_id, y_id = task.split("id")
    for name in SHIFTS:
        x, y = task.split(name)
        np.testing.assert_array_equal(y, y_id)
        assert np.abs(x - x_id).mean() > 0.1, name


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    task = MNIST1DTask(
        seed=0, train_size=4000, eval_size=1000, cache_dir=tmp_path_factory.mktemp("c")
    )
    x, y = task.train_examples(0, 0, 1, 4000)
    return task, x.reshape(len(x), -1), y


def test_linear_probe_drops_on_shifted_splits(probe_data):
    task, x, y = probe_data
    clf = LogisticRegression(max_iter=500).fit(x, y)

    def acc(name):
        xs, ys = task.split(name)
        return clf.score(xs.reshape(len(xs), -1), ys)

    id_acc = acc("id")
    assert id_acc > 0.3  # chance is 1/8; MNIST-1D is hard for a linear model (~0.4)
    # a linear model on smooth signals is nearly blur-invariant: blur is probed by k-NN below
    for name in ("noise", "scale", "shift"):
        assert acc(name) < id_acc - 0.04, name


def test_knn_probe_drops_on_every_shifted_split(probe_data):
    task, x, y = probe_data
    knn = KNeighborsClassifier(5).fit(x, y)

    def acc(name):
        xs, ys = task.split(name)
        return knn.score(xs.reshape(len(xs), -1), ys)

    id_acc = acc("id")
    assert id_acc > 0.5
    for name in SHIFTS:
        assert acc(name) < id_acc - 0.05, name


def test_hf_vit_takes_the_input_layout(tmp_path):
    from transformers import ViTConfig, ViTModel  # slow import, only here

    task = MNIST1DTask(seed=0, train_size=64, eval_size=4, cache_dir=tmp_path)
    config = ViTConfig(
        image_size=(1, 40),
        patch_size=(1, 4),
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    out = ViTModel(config)(pixel_values=torch.from_numpy(task.split("id")[0]))
    assert out.last_hidden_state.shape == (4, 1 + 10, 16)  # CLS + 40/4 patches
