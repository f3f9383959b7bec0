"""Text inputs of `reliscale data prepare`: domain specs -> files -> documents.

A document is a whole file for plain text and source code, one record for `.jsonl` and `.parquet`.
Every bad input comes back as a `Problem` naming the file (or file:line / file:row) and the reason,
so the caller can skip it with a summary or refuse the whole run before writing anything.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Problem:
    where: str  # a file, file:line, file:row, or the --domain argument
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute
    sha256: str
    bytes: int  # UTF-8 bytes of the documents kept from it
    documents: int


def parse_domains(args: list[list[str]]) -> tuple[dict[str, list[str]], list[Problem]]:
    """`--domain NAME=PATH [PATH ...]` (repeatable; a repeated NAME adds paths) -> {name: patterns}."""
    domains: dict[str, list[str]] = {}
    problems = []
    for group in args:
        head, *rest = group
        name, eq, first = head.partition("=")
        if not eq:
            problems.append(Problem(f"--domain {head}", "no '='; allowed: NAME=PATH [PATH ...]"))
            continue
        if not DOMAIN_NAME.match(name):
            problems.append(Problem(f"--domain {head}", f"domain name {name!r} is not allowed; allowed: "
                                    "letters, digits, '_', '.', '-', starting with a letter or digit"))
            continue
        domains.setdefault(name, []).extend(p for p in (first, *rest) if p)
    return domains, problems


def resolve_paths(patterns: list[str]) -> tuple[list[Path], list[Problem]]:
    """Files named by paths, folders (every non-hidden file below) or globs (`**` recurses)."""
    files: set[Path] = set()
    problems = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        else:
            found = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
        if not found:
            problems.append(Problem(pattern, "matches no file"))
        files.update(p.resolve() for p in found)
    return sorted(files), problems


def _decode(data: bytes, where: str) -> tuple[str | None, Problem | None]:
    if not data:
        return None, Problem(where, "empty file")
    if b"\0" in data:
        return None, Problem(where, f"binary file (NUL byte at offset {data.index(0)})")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, Problem(where, f"invalid UTF-8 at byte {e.start}")


def _jsonl_documents(text: str, where: str, field: str) -> tuple[list[str], list[Problem]]:
    docs, problems = [], []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(Problem(f"{where}:{lineno}", f"not JSON ({e.msg})"))
            continue
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            problems.append(Problem(f"{where}:{lineno}", f"no string field {field!r}"))
        elif not value:
            problems.append(Problem(f"{where}:{lineno}", f"empty {field!r}"))
        else:
            docs.append(value)
    return docs, problems


def _parquet_documents(path: Path, column: str) -> tuple[list[str], list[Problem]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = str(path)
    try:
        pfile = pq.ParquetFile(path)
    except Exception as e:
        return [], [Problem(where, f"not a parquet file ({type(e).__name__}: {str(e)[:120]})")]
    schema = pfile.schema_arrow
    if column not in schema.names:
        return [], [Problem(where, f"no column {column!r} (columns: {', '.join(schema.names)})")]
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return [], [Problem(where, f"column {column!r} has type {kind}, not string")]
    docs, problems = [], []
    for row, value in enumerate(pfile.read(columns=[column]).column(column).to_pylist()):
        if not value:
            problems.append(Problem(f"{where}:row {row}", f"{'null' if value is None else 'empty'} {column!r}"))
        else:
            docs.append(value)
    return docs, problems


def read_documents(path: Path, text_field: str = "text",
                   text_column: str = "text") -> tuple[list[str], str, list[Problem]]:
    """The file's documents, the sha256 of its bytes, and what was wrong with it."""
    where = str(path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".parquet":
        docs, problems = _parquet_documents(path, text_column)
        return docs, digest, problems
    text, problem = _decode(data, where)
    if problem:
        return [], digest, [problem]
    if path.suffix == ".jsonl":
        docs, problems = _jsonl_documents(text, where, text_field)
        return docs, digest, problems
    return [text], digest, []


def scan(files: list[Path], text_field: str, text_column: str) -> tuple[list[SourceFile], list[Problem]]:
    """Read every file once: its hash, its usable documents and their bytes; files with none are dropped."""
    kept, problems = [], []
    for path in files:
        docs, digest, found = read_documents(path, text_field, text_column)
        problems.extend(found)
        if docs:
            kept.append(SourceFile(str(path), digest, sum(len(d.encode("utf-8")) for d in docs), len(docs)))
        elif not found:
            problems.append(Problem(str(path), "no documents"))
    return kept, problems
