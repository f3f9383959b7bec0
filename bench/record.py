"""Where a benchmark run goes in its bench/*.md file."""

from __future__ import annotations

from pathlib import Path


def write_run(path: str | Path, run: str) -> None:
    """Replace the file's first section (the previous run) with `run`, keeping every `## ` section
    below it: the analyses and older runs written there by hand survive `make bench`."""
    out = Path(path)
    old = out.read_text() if out.exists() else ""
    kept = old[old.index("\n## "):] if "\n## " in old else ""
    out.write_text(run.rstrip("\n") + "\n" + kept)
