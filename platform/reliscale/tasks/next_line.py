"""A multiple-choice task built from local text: which choice is the real next line?

Every machine has the Python standard library's sources, so the task needs no download.
An item's context is ``context_lines`` consecutive non-empty lines (joined and ended by
"\\n"), the right choice is the next non-empty line, and the distractors are non-empty
lines from elsewhere in the corpus (not from the item's own window, and differing from the
true line and from each other once stripped). Lines keep their indentation; only trailing
whitespace is removed. Items are JSONL records ``{context, choices, label, source}``.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_DRAWS = 1000  # distractor draws per item before giving up on a too-small corpus


def stdlib_sources() -> list[Path]:
    """The top-level ``*.py`` files of this interpreter's standard library, sorted."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def _nonempty_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, line without trailing whitespace) of each non-empty line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path} as UTF-8 text: {e}") from None
    return [(n, line.rstrip()) for n, line in enumerate(text.splitlines(), start=1)
            if line.strip()]


def build_next_line_task(files: Sequence[str | Path], n_items: int, n_choices: int = 4,
                         context_lines: int = 3, seed: int = 0) -> list[dict]:
    """``n_items`` items from ``files``; the same files (in any order) and seed give the
    same items."""
    if n_items < 1 or n_choices < 2 or context_lines < 1:
        raise ValueError(f"need n_items >= 1, n_choices >= 2, context_lines >= 1; got "
                         f"{n_items}, {n_choices}, {context_lines}")
    paths = sorted(Path(f) for f in files)
    lines = [_nonempty_lines(p) for p in paths]
    # every (file, index) of a line that has context_lines non-empty lines before it
    targets = [(f, i) for f, ls in enumerate(lines) for i in range(context_lines, len(ls))]
    if len(targets) < n_items:
        raise ValueError(f"the {len(paths)} files have {len(targets)} lines with "
                         f"{context_lines} lines of context; n_items={n_items} asks for more")
    pool = [(f, i) for f, ls in enumerate(lines) for i in range(len(ls))]
    rng = np.random.default_rng(seed)
    items = []
    for t in rng.choice(len(targets), size=n_items, replace=False):
        f, i = targets[t]
        lineno, true = lines[f][i]
        distractors = []
        taken = {true.strip()}
        for _ in range(MAX_DRAWS):
            g, j = pool[rng.integers(len(pool))]
            line = lines[g][j][1]
            if (g == f and i - context_lines <= j <= i) or line.strip() in taken:
                continue
            taken.add(line.strip())
            distractors.append(line)
            if len(distractors) == n_choices - 1:
                break
        else:
            raise ValueError(f"found too few distinct distractor lines for {paths[f]}:{lineno} "
                             f"in {MAX_DRAWS} draws; the corpus is too small for "
                             f"n_choices={n_choices}")
        label = int(rng.integers(n_choices))
        items.append({
            "context": "".join(text + "\n" for _, text in lines[f][i - context_lines:i]),
            "choices": [*distractors[:label], true, *distractors[label:]],
            "label": label,
            "source": f"{paths[f].name}:{lineno}",
        })
    return items


def heldout_next_line_task(dataset: Path, domain: str, items: int, choices: int, context_lines: int,
                           seed: int) -> list[dict]:
    """Next-line items from the held-out documents of `domain` of a prepared text dataset: text no
    trial of the dataset trains on."""
    import tempfile

    from reliscale.data.text_dataset import TextDataset
    from reliscale.data.tokenizer import load_encoder

    ds = TextDataset(dataset)
    encoder = load_encoder(ds.tokenizer_path / "tokenizer.json")
    tokens = ds.tokens(domain, "heldout")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (start, end) in enumerate(ds.documents(domain, "heldout")):
            text = encoder.decode([int(t) for t in tokens[start:end - 1]])  # without the EOS
            (Path(tmp) / f"{domain}_{i:05d}.txt").write_text(text, encoding="utf-8")
        return build_next_line_task(sorted(Path(tmp).glob("*.txt")), items, choices, context_lines, seed)


def _check_item(item: object) -> str | None:
    """Why ``item`` is not a valid choice record, or None."""
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    for key in ("context", "choices", "label"):
        if key not in item:
            return f"missing key {key!r}"
    if not isinstance(item["context"], str):
        return f"'context' must be a string, got {type(item['context']).__name__}"
    choices = item["choices"]
    if not isinstance(choices, list) or len(choices) < 2:
        return f"'choices' must be a list of at least 2 strings, got {choices!r}"
    bad = [c for c in choices if not isinstance(c, str) or not c]
    if bad:
        return f"'choices' must be non-empty strings, got {bad[0]!r}"
    label = item["label"]
    if isinstance(label, bool) or not isinstance(label, int):
        return f"'label' must be an integer, got {label!r}"
    if not 0 <= label < len(choices):
        return f"'label' {label} is out of range for {len(choices)} choices (0..{len(choices) - 1})"
    return None


def write_jsonl(items: Sequence[dict], path: str | Path) -> None:
    """One JSON record per line (UTF-8), after checking every record."""
    for n, item in enumerate(items):
        why = _check_item(item)
        if why:
            raise ValueError(f"item {n}: {why}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items),
                    encoding="utf-8")


def read_choice_task(path: str | Path) -> list[dict]:
    """The records of a JSONL choice task, each checked; blank lines are skipped."""
    path = Path(path)
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {n}: not valid JSON ({e.msg})") from None
        why = _check_item(item)
        if why:
            raise ValueError(f"{path} line {n}: {why}")
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no items")
    return items
