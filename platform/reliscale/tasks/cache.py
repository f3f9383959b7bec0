"""Generated splits are cached on disk: build once, then read the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def default_cache_dir() -> Path:
    return Path(os.environ.get("RELISCALE_CACHE", Path.home() / ".cache" / "reliscale" / "tasks"))


def cached_arrays(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load `path` if it exists, else build the arrays and write them atomically."""
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # concurrent writers produce identical files; last rename wins
    return arrays
