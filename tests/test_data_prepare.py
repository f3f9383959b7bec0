"""`reliscale data prepare | inspect` on real text: stdlib sources and the stdlib's documentation topics."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from transformers import AutoTokenizer

from reliscale.data.cli import main
from reliscale.data.manifest import NotADatasetError
from reliscale.data.prepare import PrepareError, PrepareOptions, prepare
from reliscale.data.text_dataset import TextDataset
from reliscale.data.tokenizer import TokenizerError, token_dtype

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE = [*sorted((STDLIB / "json").glob("*.py")), *(STDLIB / f for f in ("getopt.py", "heapq.py", "shlex.py"))]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """`code/`: stdlib modules (some non-ASCII); `prose/`: 30 documentation topics as .txt files."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("corpus")
    (root / "code").mkdir()
    for f in CODE:
        shutil.copy(f, root / "code" / f"{f.parent.name}_{f.name}")
    (root / "prose").mkdir()
    for name in sorted(topics)[:30]:
        (root / "prose" / f"{name}.txt").write_text(topics[name], encoding="utf-8")
    return root


def prepare_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", str(out), "--domain", f"code={corpus}/code/*.py", "--domain", f"prose={corpus}/prose",
            "--heldout-fraction", "0.2", "--unit-mb", "0.05", *extra]


@pytest.fixture(scope="module")
def dataset(corpus, local_ray, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "ds"
    assert main(prepare_args(corpus, out, "--train-bpe", "512")) == 0
    return out


def domain_files(corpus: Path, domain: str) -> list[Path]:
    return sorted((corpus / domain).iterdir())


def shard_arrays(ds: Path, domain: str, split: str, kind: str) -> list[np.ndarray]:
    return sorted(((p.name, np.load(p)) for p in (ds / "shards" / domain).glob(f"*.{split}.{kind}.npy")),
                  key=lambda t: t[0])


def split_documents(ds: Path, domain: str, split: str) -> list[list[int]]:
    """Every document's ids (EOS dropped), read from the shard files without the reader."""
    docs = []
    for (_, tokens), (_, starts) in zip(shard_arrays(ds, domain, split, "tokens"),
                                        shard_arrays(ds, domain, split, "docs"), strict=True):
        docs += [tokens[a:b - 1].tolist() for a, b in itertools.pairwise(starts)]
    return docs


def test_manifest_counts_match_shards_and_source_files(dataset, corpus):
    manifest = json.loads((dataset / "manifest.json").read_text())
    eos = manifest["tokenizer"]["eos_id"]
    for domain in ("code", "prose"):
        files = domain_files(corpus, domain)
        entry = manifest["domains"][domain]
        assert [s["sha256"] for s in entry["sources"]] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
        splits = entry["splits"]
        assert splits["train"]["bytes"] + splits["heldout"]["bytes"] == sum(f.stat().st_size for f in files)
        assert splits["train"]["documents"] + splits["heldout"]["documents"] == len(files)
        for split in ("train", "heldout"):
            tokens = shard_arrays(dataset, domain, split, "tokens")
            assert splits[split]["tokens"] == sum(len(t) for _, t in tokens)
            assert splits[split]["documents"] == sum(int((t == eos).sum()) for _, t in tokens)
            assert all(t.dtype == np.uint16 for _, t in tokens) and manifest["dtype"] == "uint16"
        assert splits["heldout"]["documents"] > 0 and len(entry["splits"]["train"]["shards"]) > 1


def test_heldout_documents_decode_to_whole_source_files(dataset, corpus):
    tok = AutoTokenizer.from_pretrained(dataset / "tokenizer")
    for domain in ("code", "prose"):
        sources = {f.read_text(encoding="utf-8") for f in domain_files(corpus, domain)}
        heldout = [tok.decode(ids) for ids in split_documents(dataset, domain, "heldout")]
        assert heldout and all(text in sources for text in heldout)
        manifest = TextDataset(dataset).manifest
        assert sum(len(t.encode("utf-8")) for t in heldout) == manifest["domains"][domain]["splits"]["heldout"]["bytes"]


def test_token_bytes_sum_to_each_documents_utf8_bytes(dataset, corpus):
    ds = TextDataset(dataset)
    assert ds.manifest["token_bytes"]["exact"] and ds.token_bytes[ds.eos_id] == 0
    tok = AutoTokenizer.from_pretrained(dataset / "tokenizer")
    non_ascii = 0
    for domain in ("code", "prose"):
        for split in ("train", "heldout"):
            for ids in split_documents(dataset, domain, split):
                text = tok.decode(ids)
                assert ds.token_bytes[ids].sum() == len(text.encode("utf-8"))
                non_ascii += len(text.encode("utf-8")) != len(text)
    assert non_ascii >= 3  # heapq/shlex/getopt and several topics hold non-ASCII text


def test_token_dtype_follows_olmo_cores_rule():
    assert token_dtype(512) == np.uint16
    assert token_dtype(50_257) == np.uint16
    assert token_dtype(65_536) == np.uint16  # the largest id, 65,535, still fits
    assert token_dtype(65_537) == np.uint32
    assert token_dtype(100_278) == np.uint32


def test_reader_refuses_a_shard_whose_dtype_differs_from_the_manifest(dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    shard = sorted((copy / "shards" / "code").glob("*.train.tokens.npy"))[0]
    np.save(shard, np.load(shard).astype(np.uint32))
    with pytest.raises(ValueError, match=r"uint32 .*manifest says uint16"):
        TextDataset(copy).tokens("code", "train")


def test_a_fresh_prepare_is_byte_identical(dataset, corpus, tmp_path):
    """BPE training, unit planning, splitting and tokenizing are deterministic across runs."""
    out = tmp_path / "again"
    assert main(prepare_args(corpus, out, "--train-bpe", "512")) == 0
    assert TextDataset(out).digest == TextDataset(dataset).digest
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (dataset / "tokenizer" / "tokenizer.json").read_bytes()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_after_a_kill_is_byte_identical_and_keeps_finished_shards(dataset, corpus, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    assert main(prepare_args(corpus, out, "--train-bpe", "512")) == 0  # the manifest now names `out`
    done = snapshot(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    # what a kill during unit 1 of code leaves: its shard half-written, no unit record, no manifest
    victim = out / "shards" / "code" / "00001.train.tokens.npy"
    victim.rename(victim.with_name(victim.name + ".tmp"))
    (out / "shards" / "code" / "00001.json").unlink()
    (out / "manifest.json").unlink()
    with pytest.raises(NotADatasetError, match="not a prepared dataset"):
        TextDataset(out)
    assert main(prepare_args(corpus, out, "--train-bpe", "512")) == 0
    assert snapshot(out) == done  # stray .tmp removed, every byte as before
    rewritten = {p for p, t in mtimes.items() if p.stat().st_mtime_ns != t}
    assert rewritten == {p for p in mtimes if p.name.startswith("00001.") and p.parent.name == "code"}


def test_a_dropped_domain_loses_its_shards_and_the_rest_is_kept(dataset, corpus, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "shards" / "code").iterdir()}
    assert main(["prepare", str(out), "--domain", f"code={corpus}/code/*.py", "--heldout-fraction", "0.2",
                 "--unit-mb", "0.05", "--train-bpe", "512"]) == 0
    assert not list((out / "shards" / "prose").iterdir())
    assert {p: p.stat().st_mtime_ns for p in (out / "shards" / "code").iterdir()} == mtimes
    assert TextDataset(out).domains == ["code"]


def test_hf_tokenizer_folder_gives_the_same_shards(dataset, corpus, tmp_path):
    out = tmp_path / "hf"
    assert main(prepare_args(corpus, out, "--tokenizer", str(dataset / "tokenizer"))) == 0
    ds, ref = TextDataset(out), TextDataset(dataset)
    assert ds.manifest["tokenizer"]["kind"] == "hf" and ds.digest == ref.digest
    tok = AutoTokenizer.from_pretrained(dataset / "tokenizer")
    first = domain_files(corpus, "code")[0]
    docs = split_documents(out, "code", "train") + split_documents(out, "code", "heldout")
    assert tok.encode(first.read_text(encoding="utf-8"), add_special_tokens=False) in docs


def test_heldout_split_is_stable_when_a_file_is_added(dataset, corpus, tmp_path):
    more = tmp_path / "more"
    shutil.copytree(corpus / "code", more)
    added = STDLIB / "fractions.py"
    shutil.copy(added, more / "added.py")
    out = tmp_path / "grown"
    assert main(["prepare", str(out), "--domain", f"code={more}", "--heldout-fraction", "0.2",
                 "--unit-mb", "0.05", "--tokenizer", str(dataset / "tokenizer")]) == 0
    before = {tuple(d) for d in split_documents(dataset, "code", "heldout")}
    after = {tuple(d) for d in split_documents(out, "code", "heldout")}
    tok = AutoTokenizer.from_pretrained(dataset / "tokenizer")
    assert before <= after
    assert after - before <= {tuple(tok.encode(added.read_text(encoding="utf-8"), add_special_tokens=False))}


def bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (--domain arguments, what the error must say)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "binary.txt").write_bytes(Path(sys.executable).resolve().read_bytes()[:4096])  # ELF header
    (root / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    (root / "records.jsonl").write_text('{"text": "a good record"}\nnot json\n{"body": "no text field"}\n')
    pq.write_table(pa.table({"body": ["x"]}), root / "nocolumn.parquet")
    return {
        "empty": ([f"bad={root}/empty.txt"], "empty.txt: empty file"),
        "binary": ([f"bad={root}/binary.txt"], "binary.txt: binary file (NUL byte"),
        "utf8": ([f"bad={root}/latin1.txt"], "latin1.txt: invalid UTF-8 at byte 2"),
        "json": ([f"bad={root}/records.jsonl"], "records.jsonl:2: not JSON"),
        "field": ([f"bad={root}/records.jsonl"], "records.jsonl:3: no string field 'text'"),
        "column": ([f"bad={root}/nocolumn.parquet"], "nocolumn.parquet: no column 'text' (columns: body)"),
        "no_equals": ([str(root / "empty.txt")], "no '='; allowed: NAME=PATH"),
        "no_match": ([f"bad={root}/nothing-*.txt"], "nothing-*.txt: matches no file"),
    }


@pytest.mark.parametrize("case", ["empty", "binary", "utf8", "json", "field", "column", "no_equals", "no_match"])
def test_each_bad_input_is_refused_before_anything_is_written(case, corpus, tmp_path):
    domain, message = bad_inputs(tmp_path / "bad")[case]
    out = tmp_path / "out"
    opt = PrepareOptions(out=out, domains=[[f"code={corpus}/code/json_*.py"], domain], train_bpe=300,
                         on_bad_input="refuse")
    with pytest.raises(PrepareError, match="refused") as e:
        prepare(opt)
    assert message in str(e.value)
    assert not out.exists()


def test_bad_inputs_are_skipped_named_and_counted(dataset, corpus, tmp_path):
    cases = bad_inputs(tmp_path / "bad")
    good = tmp_path / "bad" / "good.parquet"
    pq.write_table(pa.table({"text": ["first parquet record", None, "second"]}), good)
    out = tmp_path / "out"
    domains = [[f"code={corpus}/code/json_*.py"], *(d for d, _ in cases.values()), [f"pq={good}"]]
    manifest = prepare(PrepareOptions(out=out, domains=domains, tokenizer=dataset / "tokenizer"))
    skipped = "\n".join(manifest["skipped"]["items"])
    assert all(message in skipped for _, message in cases.values())
    assert "good.parquet:row 1: null 'text'" in skipped
    assert manifest["skipped"]["count"] == 9  # 4 files, 2 records, a null row, the pattern, the `=`
    assert manifest["domains"]["bad"]["splits"]["train"]["documents"] + \
        manifest["domains"]["bad"]["splits"]["heldout"]["documents"] == 1  # the good jsonl record
    assert sum(s["documents"] for s in manifest["domains"]["pq"]["splits"].values()) == 2


@pytest.mark.parametrize("mode", ["skip", "refuse"])
def test_a_folder_that_is_not_a_tokenizer_is_refused(mode, corpus, tmp_path):
    folder = tmp_path / "not-a-tokenizer"
    folder.mkdir()
    (folder / "README.md").write_text("a folder, but no tokenizer files\n")
    out = tmp_path / "out"
    opt = PrepareOptions(out=out, domains=[[f"code={corpus}/code"]], tokenizer=folder, on_bad_input=mode)
    with pytest.raises(TokenizerError, match=r"not-a-tokenizer: not a tokenizer folder"):
        prepare(opt)
    assert not out.exists()


def test_inspect_prints_the_table_tokenizer_and_a_heldout_sample(dataset, capsys):
    assert main(["inspect", str(dataset)]) == 0
    text = capsys.readouterr().out
    manifest = TextDataset(dataset).manifest
    train = manifest["domains"]["prose"]["splits"]["train"]
    assert f"prose            train    {train['documents']:>10,} {train['tokens']:>14,} {train['bytes']:>14,}" in text
    assert "tokenizer: bpe, 512 ids, eos '<|endoftext|>' = 0, byte-level True" in text
    tok = AutoTokenizer.from_pretrained(dataset / "tokenizer")
    first = tok.decode(split_documents(dataset, "code", "heldout")[0])
    assert f"sample (code, first heldout document):\n{first[:200]}" in text


def test_inspect_refuses_a_folder_that_is_no_dataset(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "neither a prepared text dataset" in capsys.readouterr().err
