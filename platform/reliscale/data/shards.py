"""Work units of a prepare and the token shards each one writes.

A unit is a run of a domain's files (sorted by path) of about `unit_bytes` of text. It writes, per
split, `shards/<domain>/<unit>.<split>.tokens.npy` (every document's ids followed by the EOS id) and
`.docs.npy` (document start offsets plus the end, int64), each to a temporary name then renamed, and
last `shards/<domain>/<unit>.json`: a unit with that file and an unchanged key is finished, so a
resumed prepare skips it and never rewrites its shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from reliscale.data.text_sources import SourceFile, read_documents
from reliscale.data.tokenizer import load_encoder

SPLITS = ("train", "heldout")
ENCODE_BATCH = 256  # documents per encode_batch call: bounds the Python lists held at once


def plan_units(domain: str, files: list[SourceFile], unit_bytes: int) -> list[list[SourceFile]]:
    """Consecutive files of a domain, each group closed once it reaches `unit_bytes`."""
    units: list[list[SourceFile]] = [[]]
    size = 0
    for f in sorted(files, key=lambda f: f.path):
        if units[-1] and size + f.bytes > unit_bytes:
            units.append([])
            size = 0
        units[-1].append(f)
        size += f.bytes
    return [u for u in units if u]


def unit_key(files: list[SourceFile], settings: dict) -> str:
    """What a unit's output depends on: its files' contents and the prepare settings."""
    doc = {"files": [(f.path, f.sha256) for f in files], **settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def unit_stem(domain: str, index: int) -> str:
    return f"shards/{domain}/{index:05d}"


def unit_files(domain: str, index: int) -> list[str]:
    """Every file a unit writes, relative to the dataset folder; its record (.json) last."""
    stem = unit_stem(domain, index)
    return [*(f"{stem}.{split}.{kind}.npy" for split in SPLITS for kind in ("tokens", "docs")), f"{stem}.json"]


def is_heldout(text: str, fraction: float) -> bool:
    """Held out by a hash of the document's content (hashlib, the same in every process), so a
    document's split does not move when files are added."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    return h < fraction * 2**64


def save_npy(path: Path, array: np.ndarray) -> str:
    """Write `array` to `path` atomically (a temporary name, then rename); returns the file's sha256."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _encode(tok, docs: list[str], eos: int, vocab_size: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    parts, starts, pos = [], [0], 0
    for i in range(0, len(docs), ENCODE_BATCH):
        for enc in tok.encode_batch_fast(docs[i:i + ENCODE_BATCH], add_special_tokens=False):
            ids = np.array([*enc.ids, eos], dtype=np.int64)
            parts.append(ids)
            pos += len(ids)
            starts.append(pos)
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(ids) and not 0 <= ids.min() <= ids.max() < vocab_size:  # never let a cast wrap an id
        raise ValueError(f"token id {ids.max()} outside the vocabulary of {vocab_size}")
    return ids.astype(dtype), np.array(starts, dtype=np.int64)


def write_unit(out: str, unit: dict) -> dict:
    """Tokenize one unit and write its shards; returns (and stores) the unit's record."""
    root = Path(out)
    tok = load_encoder(root / "tokenizer" / "tokenizer.json")
    dtype = np.dtype(unit["dtype"])
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for f in unit["files"]:
        docs, digest, _ = read_documents(Path(f["path"]), unit["text_field"], unit["text_column"])
        if digest != f["sha256"]:
            raise RuntimeError(f"{f['path']} changed while the dataset was being prepared; run it again")
        for d in docs:
            texts["heldout" if is_heldout(d, unit["heldout_fraction"]) else "train"].append(d)
    stem = unit_stem(unit["domain"], unit["index"])
    (root / stem).parent.mkdir(parents=True, exist_ok=True)
    record = {"key": unit["key"], "domain": unit["domain"], "index": unit["index"], "splits": {}}
    for split, docs in texts.items():
        ids, starts = _encode(tok, docs, unit["eos_id"], unit["vocab_size"], dtype)
        tokens_file, docs_file = f"{stem}.{split}.tokens.npy", f"{stem}.{split}.docs.npy"
        record["splits"][split] = {
            "tokens": len(ids), "documents": len(docs), "bytes": sum(len(d.encode("utf-8")) for d in docs),
            "tokens_file": tokens_file, "tokens_sha256": save_npy(root / tokens_file, ids),
            "docs_file": docs_file, "docs_sha256": save_npy(root / docs_file, starts),
        }
    meta = root / f"{stem}.json"
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, meta)
    return record


def finished(out: Path, domain: str, index: int, key: str) -> dict | None:
    """The stored record of a unit whose key matches and whose shards are all there, else None."""
    meta = out / f"{unit_stem(domain, index)}.json"
    if not meta.is_file():
        return None
    record = json.loads(meta.read_text())
    files = [s[k] for s in record["splits"].values() for k in ("tokens_file", "docs_file")]
    if record.get("key") != key or not all((out / f).is_file() for f in files):
        return None
    return record
