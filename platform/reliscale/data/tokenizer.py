"""The dataset's tokenizer: a byte-level BPE trained here, or a local Hugging Face tokenizer folder.

Either way it is saved as a Hugging Face folder inside the dataset (`tokenizer/`), so trials load it
with `AutoTokenizer.from_pretrained` and a later prepare into the same folder reuses it. Nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"
SOURCE_FILE = "source.json"  # how the saved tokenizer was made: checked when a prepare resumes


class TokenizerError(ValueError):
    pass


def token_dtype(vocab_size: int) -> np.dtype:
    """OLMo-core's rule: the smallest unsigned type that holds the largest id (vocab_size - 1)."""
    for dtype in (np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise TokenizerError(f"vocabulary of {vocab_size:,} ids does not fit uint32")


def train_bpe(docs: Iterable[str], vocab_size: int, n_docs: int):
    """Byte-level BPE with `EOT` as id 0; deterministic for the same documents in the same order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # its default is True
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer, length=n_docs)
    return tok


def load_hf_tokenizer(folder: Path):
    """A local Hugging Face tokenizer folder, refused clearly when it is not one or has no EOS."""
    from transformers import AutoTokenizer

    hint = "allowed: a folder holding tokenizer.json + tokenizer_config.json (as save_pretrained writes)"
    if not folder.is_dir():
        raise TokenizerError(f"--tokenizer {folder}: not a folder; {hint}")
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise TokenizerError(f"--tokenizer {folder}: not a tokenizer folder ({type(e).__name__}: "
                             f"{str(e)[:200]}); {hint}") from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise TokenizerError(f"--tokenizer {folder}: not a fast (tokenizers-backed) tokenizer; {hint}")
    if tok.eos_token_id is None:
        raise TokenizerError(f"--tokenizer {folder}: the tokenizer has no eos_token to end documents with; "
                             "allowed: a tokenizer with an eos_token")
    return tok


def save_tokenizer(hf_tok, folder: Path, source: dict) -> None:
    """Write `hf_tok` (transformers) and `source` into `folder` atomically (a temp folder, then rename)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_tok.save_pretrained(tmp)
    (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder)


def as_hf(tok):
    """Wrap a trained `tokenizers.Tokenizer` as a transformers tokenizer with `EOT` as its EOS."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT)


def saved_source(folder: Path) -> dict | None:
    path = folder / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_encoder(tokenizer_json: str | Path):
    """The fast tokenizer of a saved folder, matching special-token text as ordinary text (like
    nanoGPT's encode_ordinary): a document that contains "<|endoftext|>" cannot end itself early."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.encode_special_tokens = True
    return tok


def eos_id(folder: Path) -> int:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    tid = load_encoder(folder / "tokenizer.json").token_to_id(eos) if eos else None
    if tid is None:
        raise TokenizerError(f"{folder}: tokenizer_config.json names no eos_token of the vocabulary")
    return tid


def is_byte_level(tokenizer_json: Path) -> bool:
    decoder = json.loads(tokenizer_json.read_text()).get("decoder") or {}
    return decoder.get("type") == "ByteLevel"


def token_bytes(tokenizer_json: Path) -> np.ndarray:
    """UTF-8 bytes each id stands for, 0 for special tokens.

    Exact for byte-level BPE (`is_byte_level`), where every character of a vocabulary entry is one byte. Other
    tokenizers get the length of each id decoded alone, which misses the spaces some decoders
    add or strip: use the manifest's per-split byte counts for their bits per byte.
    """
    from tokenizers import pre_tokenizers

    tok = load_encoder(tokenizer_json)
    n = tok.get_vocab_size(with_added_tokens=True)
    out = np.zeros(n, dtype=np.int32)
    exact = is_byte_level(tokenizer_json)
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = tok.get_added_tokens_decoder()
    for tid in range(n):
        if tid in added:
            out[tid] = 0 if added[tid].special else len(added[tid].content.encode("utf-8"))
        elif exact:
            piece = tok.id_to_token(tid)
            if not set(piece) <= alphabet:
                raise TokenizerError(f"{tokenizer_json}: id {tid} ({piece!r}) is not byte-level")
            out[tid] = len(piece)
        else:
            out[tid] = len(tok.decode([tid], skip_special_tokens=False).encode("utf-8"))
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
