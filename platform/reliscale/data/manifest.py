"""`manifest.json` of a text dataset: written last, so a folder without one is never taken for a dataset."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = "reliscale.text"
VERSION = 1


class NotADatasetError(ValueError):
    pass


def content_digest(files: dict[str, str]) -> str:
    """sha256 over the (relative path, sha256) of every content file: equal for equal datasets
    wherever they lie, and independent of the manifest's own bookkeeping (command line)."""
    lines = "".join(f"{path} {files[path]}\n" for path in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST)


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise NotADatasetError(f"{folder}: not a prepared dataset: no {MANIFEST}; run `reliscale data "
                               f"prepare {folder} --domain NAME=PATH ... --train-bpe VOCAB` first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise NotADatasetError(f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                               f"allowed: {FORMAT!r} version {VERSION} (prepare it again with this version)")
    return manifest
