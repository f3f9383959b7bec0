"""`TextDataset`: the reader trials use, checked against the shard files read directly with numpy."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import ray

from reliscale.data.manifest import NotADatasetError
from reliscale.data.prepare import PrepareOptions, prepare
from reliscale.data.text_dataset import TextDataset

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> TextDataset:
    """Stdlib `email` and `json` modules in units of ~30 KB, so every split has several shards."""
    src = tmp_path_factory.mktemp("src")
    for f in [*sorted((STDLIB / "email").glob("*.py"))[:12], *sorted((STDLIB / "json").glob("*.py"))]:
        shutil.copy(f, src / f"{f.parent.name}_{f.name}")
    out = tmp_path_factory.mktemp("ds") / "ds"
    ray.init(num_cpus=2)
    try:
        prepare(PrepareOptions(out=out, domains=[[f"code={src}"]], train_bpe=400, heldout_fraction=0.3,
                               unit_mb=0.03))
    finally:
        ray.shutdown()
    return TextDataset(out)


def shard_concat(ds: TextDataset, split: str) -> np.ndarray:
    return np.concatenate([np.load(ds.path / s["tokens_file"]) for s in
                           ds.manifest["domains"]["code"]["splits"][split]["shards"]])


def test_tokens_concatenate_the_shards_in_manifest_order(dataset):
    for split in ("train", "heldout"):
        assert len(dataset.manifest["domains"]["code"]["splits"][split]["shards"]) > 1
        np.testing.assert_array_equal(dataset.tokens("code", split), shard_concat(dataset, split))


def test_documents_are_whole_and_end_with_eos(dataset):
    tokens = shard_concat(dataset, "train")
    docs = dataset.documents("code", "train")
    assert docs[0, 0] == 0 and docs[-1, 1] == len(tokens) and (docs[1:, 0] == docs[:-1, 1]).all()
    assert (tokens[docs[:, 1] - 1] == dataset.eos_id).all()
    assert (tokens == dataset.eos_id).sum() == len(docs) == dataset.manifest["domains"]["code"]["splits"]["train"]["documents"]


def test_sample_windows_follow_the_generator_and_cross_shards(dataset):
    tokens = shard_concat(dataset, "train")
    length, n = 300, 64
    got = dataset.sample_windows("code", "train", np.random.default_rng(7), n, length)
    starts = np.random.default_rng(7).integers(0, len(tokens) - length + 1, size=n)
    np.testing.assert_array_equal(got, np.stack([tokens[s:s + length] for s in starts]))
    assert got.dtype == np.int64
    _, offsets = dataset.shards("code", "train")
    boundary = int(offsets[1]) - 5  # a window that starts 5 tokens before the second shard
    np.testing.assert_array_equal(dataset.window("code", "train", boundary, length), tokens[boundary:boundary + length])


def test_eval_windows_are_fixed_and_evenly_spaced(dataset):
    tokens = shard_concat(dataset, "heldout")
    got = dataset.eval_windows("code", "heldout", 5, 128)
    starts = np.linspace(0, len(tokens) - 128, 5).round().astype(int)
    np.testing.assert_array_equal(got, np.stack([tokens[s:s + 128] for s in starts]))
    np.testing.assert_array_equal(got, dataset.eval_windows("code", "heldout", 5, 128))


def test_bad_requests_are_refused_with_what_is_allowed(dataset):
    with pytest.raises(ValueError, match="a window of"):
        dataset.eval_windows("code", "heldout", 1, dataset.num_tokens("code", "heldout") + 1)
    with pytest.raises(KeyError, match="allowed: code"):
        dataset.tokens("prose", "train")
    with pytest.raises(KeyError, match="allowed: heldout, train"):
        dataset.tokens("code", "validation")


def test_a_folder_without_manifest_is_not_a_dataset(tmp_path):
    with pytest.raises(NotADatasetError, match=r"not a prepared dataset: no manifest.json; run `reliscale data prepare"):
        TextDataset(tmp_path)


def test_vocabulary_facts_come_from_the_manifest(dataset):
    assert dataset.domains == ["code"] and dataset.vocab_size == 400 and dataset.eos_id == 0
    assert len(dataset.token_bytes) == 400 and dataset.dtype == np.uint16 and len(dataset.digest) == 64
