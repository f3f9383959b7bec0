"""Reader of a prepared text dataset (torch-free): numpy memmaps of the token shards.

A (domain, split) is the concatenation of its shards in manifest order; documents are whole, each
ending with the EOS id. Windows are cut from that stream and may span documents and shards
(nanoGPT / OLMo-core style).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from reliscale.data.manifest import read_manifest


class TextDataset:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)  # refuses a folder without manifest.json
        self.domains: list[str] = sorted(self.manifest["domains"])
        tok = self.manifest["tokenizer"]
        self.vocab_size: int = tok["vocab_size"]
        self.eos_id: int = tok["eos_id"]
        self.tokenizer_path = self.path / tok["path"]
        self.digest: str = self.manifest["digest"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self._shards: dict[tuple[str, str], tuple[list[np.ndarray], np.ndarray]] = {}

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes per id, 0 for special tokens (for bits per byte)."""
        return np.load(self.path / self.manifest["token_bytes"]["path"])

    def _split(self, domain: str, split: str) -> dict:
        if domain not in self.manifest["domains"]:
            raise KeyError(f"domain {domain!r} not in {self.path}; allowed: {', '.join(self.domains)}")
        splits = self.manifest["domains"][domain]["splits"]
        if split not in splits:
            raise KeyError(f"split {split!r}; allowed: {', '.join(splits)}")
        return splits[split]

    def shards(self, domain: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """The shards' token memmaps and their start offsets in the concatenated stream (+ the total)."""
        if (domain, split) not in self._shards:
            maps = []
            for shard in self._split(domain, split)["shards"]:
                tokens = np.load(self.path / shard["tokens_file"], mmap_mode="r")
                if tokens.dtype != self.dtype or len(tokens) != shard["tokens"]:
                    raise ValueError(f"{self.path / shard['tokens_file']}: {tokens.dtype} x {len(tokens)}, the "
                                     f"manifest says {self.dtype} x {shard['tokens']}; prepare it again")
                maps.append(tokens)
            offsets = np.cumsum([0, *(len(m) for m in maps)], dtype=np.int64)
            self._shards[(domain, split)] = (maps, offsets)
        return self._shards[(domain, split)]

    def num_tokens(self, domain: str, split: str) -> int:
        return int(self.shards(domain, split)[1][-1])

    def tokens(self, domain: str, split: str) -> np.ndarray:
        """All tokens of a split: the memmap itself for one shard, an in-memory copy for several."""
        maps, _ = self.shards(domain, split)
        return maps[0] if len(maps) == 1 else np.concatenate(maps)

    def documents(self, domain: str, split: str) -> np.ndarray:
        """(documents, 2) int64 [start, end) in the concatenated stream; the token at end - 1 is EOS."""
        bounds = []
        for shard, offset in zip(self._split(domain, split)["shards"], self.shards(domain, split)[1], strict=False):
            starts = np.load(self.path / shard["docs_file"]) + offset
            bounds.append(np.stack([starts[:-1], starts[1:]], axis=1))
        return np.concatenate(bounds) if bounds else np.zeros((0, 2), dtype=np.int64)

    def window(self, domain: str, split: str, start: int, length: int) -> np.ndarray:
        """`length` tokens from `start` of the concatenated stream, as int64, across shards if needed."""
        maps, offsets = self.shards(domain, split)
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(offsets, start, side="right")) - 1
        while filled < length:
            lo = start + filled - offsets[shard]
            piece = maps[shard][lo:lo + length - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out

    def _starts_range(self, domain: str, split: str, length: int) -> int:
        total = self.num_tokens(domain, split)
        if length < 1 or total < length:
            raise ValueError(f"{domain}/{split} has {total:,} tokens; a window of {length} does not fit")
        return total - length

    def sample_windows(self, domain: str, split: str, rng: np.random.Generator, n: int,
                       length: int) -> np.ndarray:
        """(n, length) int64 windows at uniform random starts drawn from `rng`."""
        last = self._starts_range(domain, split, length)
        return self._windows(domain, split, rng.integers(0, last + 1, size=n), length)

    def eval_windows(self, domain: str, split: str, n: int, length: int) -> np.ndarray:
        """(n, length) int64 windows at evenly spaced starts: the same every call, for held-out evaluation."""
        last = self._starts_range(domain, split, length)
        return self._windows(domain, split, np.linspace(0, last, n).round().astype(np.int64), length)

    def _windows(self, domain: str, split: str, starts: np.ndarray, length: int) -> np.ndarray:
        out = np.empty((len(starts), length), dtype=np.int64)
        for i, start in enumerate(starts):
            out[i] = self.window(domain, split, int(start), length)
        return out
