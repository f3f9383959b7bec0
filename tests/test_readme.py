"""The README stays a README, and the project's markdown speaks of the project only.

Checked over README.md, docs/ and bench/ markdown: links stay inside the repository and resolve
(file and heading), no URL leaves the machine, no text about how the project is developed, and
every docs page is reachable from the README (or a docs index).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKDOWN = [README, *sorted(DOCS.rglob("*.md")), *sorted((ROOT / "bench").rglob("*.md"))]

MAX_README_LINES = 200
# Text about how the project is developed, not about the software.
FORBIDDEN = re.compile(r"(this|no|every|each|earlier|later|previous|next|a) session|lent (to|a)"
                       r"|device (tool|machine)|\(issue [0-9]+\)", re.IGNORECASE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]\n]+\]:\s*(\S+)", re.MULTILINE)
SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:", re.IGNORECASE)
HTTP_URL = re.compile(r"https?://([^/\s`'\")<>]+)", re.IGNORECASE)
LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """The text outside code blocks and inline code, where a link is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def link_targets(path: Path) -> list[str]:
    text = prose(path.read_text())
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def heading_slugs(path: Path) -> set[str]:
    """GitHub's anchors of a file's headings: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            title = m[1].strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def test_markdown_files_are_found():
    assert README.is_file()
    assert len(MARKDOWN) > 3, MARKDOWN


def test_readme_is_at_most_200_lines():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; allowed: at most {MAX_README_LINES} (move depth to docs/)"


def test_readme_shows_the_two_commands():
    text = README.read_text()
    for command in ("make demo", "make test"):
        assert command in text, f"README.md does not show `{command}`"


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_every_link_is_relative_and_resolves_inside_the_repository(path: Path):
    problems = []
    for target in link_targets(path):
        if SCHEME.match(target) or target.startswith("/"):
            problems.append(f"{target}: leaves the repository; allowed: a relative path")
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if ROOT not in (dest, *dest.parents):
            problems.append(f"{target}: points outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: {rel(dest)} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in heading_slugs(dest):
            problems.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    assert not problems, f"{rel(path)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_no_url_leaves_the_machine(path: Path):
    """Code blocks may show a local address (a dashboard, an MLflow UI); nothing else."""
    hosts = [m[1] for m in HTTP_URL.finditer(path.read_text())]
    remote = [h for h in hosts if h.split(":")[0].lower() not in LOCAL_HOSTS]
    assert not remote, f"{rel(path)} names URLs off this machine: {remote}"


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_text_speaks_of_the_software_only(path: Path):
    hits = [f"line {n}: {m[0]!r}" for n, line in enumerate(path.read_text().splitlines(), 1)
            for m in FORBIDDEN.finditer(line)]
    assert not hits, f"{rel(path)}: " + "; ".join(hits)


def test_every_docs_page_is_linked_from_the_readme_or_the_docs_index():
    linked = set()
    for index in (README, DOCS / "index.md", DOCS / "README.md"):
        if index.is_file():
            linked |= {(index.parent / t.partition("#")[0]).resolve() for t in link_targets(index)
                       if t.partition("#")[0]}
    pages = sorted(p.resolve() for p in DOCS.glob("*.md") if p.name not in ("index.md", "README.md"))
    assert pages, "docs/ has no pages"
    orphans = [rel(p) for p in pages if p not in linked]
    assert not orphans, f"docs pages linked from neither README.md nor a docs index: {orphans}"


def test_the_link_checker_catches_a_dangling_link(tmp_path: Path):
    """The checks above can fail: a broken target, an outside URL and a development phrase."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[gone](missing.md) [web](https://example.org) `[code](ignored.md)`\n"
                    "Measured in a session of its own.\n")
    assert link_targets(page) == ["missing.md", "https://example.org"]
    assert [m[1] for m in HTTP_URL.finditer(page.read_text())] == ["example.org"]
    assert FORBIDDEN.search(page.read_text())
    assert heading_slugs(page) == {"title"}
