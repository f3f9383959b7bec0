"""Real text that every machine with the platform installed has, written out as a corpus.

Three domains, for smoke studies, tests and the reference ladder, with no download:
- `code`: Python sources of the standard library (`sysconfig`'s stdlib folder), then of the
  installed packages (`purelib`), each in sorted path order;
- `prose`: English documentation: the standard library's help topics (`pydoc_data.topics`) and the
  long descriptions of the installed packages (their `METADATA`);
- `headers`: the C/C++ headers shipped with torch.
Each domain is capped at `max_mb` of text, taken in a fixed order, so the corpus is the same on
every machine with the same Python, packages and torch. Documents over `MAX_DOC_BYTES` (generated
files, mostly) are left out: a held-out split is whole documents, so one giant would be most of it.
"""

from __future__ import annotations

import email
import sysconfig
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

DOMAINS = ("code", "prose", "headers")
MAX_DOC_BYTES = 100_000


def _code() -> Iterator[tuple[str, str]]:
    paths = sysconfig.get_paths()
    for where in ("stdlib", "purelib"):
        root = Path(paths[where])
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if rel.parts[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in rel.parts:
                continue
            yield f"{where}/{rel}", path.read_text(encoding="utf-8", errors="replace")


def _prose() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"topics/{name}.txt", topics[name]
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        text = dist.read_text("METADATA")
        body = email.message_from_string(text).get_payload() if text else ""
        if isinstance(body, str) and len(body) > 2000:
            yield f"packages/{dist.metadata['Name']}.md", body


def _headers() -> Iterator[tuple[str, str]]:
    import torch

    root = Path(torch.__file__).parent / "include"
    for path in sorted(root.rglob("*.h")):
        yield str(path.relative_to(root)), path.read_text(encoding="utf-8", errors="replace")


SOURCES = {"code": _code, "prose": _prose, "headers": _headers}


def write_local_corpus(out: str | Path, max_mb: float = 2.0, domains: tuple[str, ...] = DOMAINS) -> dict[str, Path]:
    """Write each domain's documents as files under `out/<domain>/`; returns the domain folders."""
    out = Path(out)
    folders = {}
    for domain in domains:
        folder = out / domain
        budget = int(max_mb * 1e6)
        for name, text in SOURCES[domain]():
            if budget <= 0:
                break
            size = len(text.encode("utf-8"))
            if not text.strip() or size > MAX_DOC_BYTES:
                continue
            path = folder / name.replace("/", "__")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            budget -= size
        folders[domain] = folder
    return folders


def prepare_local_dataset(root: str | Path, max_mb: float = 0.6, vocab: int = 1024,
                          next_line_items: int = 48) -> tuple[Path, Path]:
    """A small dataset of the local corpus under `root`: `ds/` prepared with a BPE of `vocab`
    tokens (10 % of documents held out), and `next_line.jsonl`, a 4-way next-line task from its
    held-out code. Returns both paths. Preparing runs on Ray Data: call it inside a Ray session."""
    from reliscale.data.prepare import PrepareOptions, prepare
    from reliscale.tasks.next_line import heldout_next_line_task, write_jsonl

    root = Path(root)
    folders = write_local_corpus(root / "corpus", max_mb=max_mb)
    prepare(PrepareOptions(out=root / "ds", domains=[[f"{d}={f}"] for d, f in folders.items()],
                           train_bpe=vocab, heldout_fraction=0.1))
    items = heldout_next_line_task(root / "ds", "code", next_line_items, choices=4, context_lines=3, seed=0)
    write_jsonl(items, root / "next_line.jsonl")
    return root / "ds", root / "next_line.jsonl"
