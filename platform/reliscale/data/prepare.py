"""`reliscale data prepare`: text corpora -> token shards per domain and split, one Ray task per unit.

Order of work, so that a killed run resumes to the same bytes: check every input (refuse mode stops
here, before anything is written), save the tokenizer (trained once, reused on resume), tokenize
the units not finished yet, drop stale files, then write `token_bytes.npy` and `manifest.json` last.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from reliscale.data import shards, tokenizer
from reliscale.data.manifest import FORMAT, MANIFEST, VERSION, content_digest, write_manifest
from reliscale.data.text_sources import (
    Problem,
    SourceFile,
    parse_domains,
    read_documents,
    resolve_paths,
    scan,
)

# One tokenizer thread per task: Ray already runs one task per CPU (DATA_NOTES §2, oversubscription).
TASK_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}}
BAD_INPUT = ("skip", "refuse")
SKIPPED_LISTED = 1000  # bad inputs listed in the manifest (all are counted)


class PrepareError(ValueError):
    pass


@dataclass(frozen=True)
class PrepareOptions:
    out: Path
    domains: list[list[str]]  # each: ["NAME=PATH", "PATH", ...] as given to --domain
    tokenizer: Path | None = None
    train_bpe: int | None = None
    heldout_fraction: float = 0.05
    text_field: str = "text"
    text_column: str = "text"
    on_bad_input: str = "skip"
    unit_mb: float = 8.0
    command: tuple[str, ...] = ()


def _check_options(opt: PrepareOptions) -> None:
    errors = []
    if (opt.tokenizer is None) == (opt.train_bpe is None):
        errors.append("tokenizer: give exactly one of --tokenizer DIR or --train-bpe VOCAB")
    if opt.train_bpe is not None and not 258 <= opt.train_bpe <= 2**32:
        errors.append(f"--train-bpe: {opt.train_bpe}; allowed: 258 (256 bytes + EOS + one merge) to 2**32")
    if not 0 <= opt.heldout_fraction < 1:
        errors.append(f"--heldout-fraction: {opt.heldout_fraction}; allowed: 0 <= f < 1")
    if opt.on_bad_input not in BAD_INPUT:
        errors.append(f"--on-bad-input: {opt.on_bad_input!r}; allowed: {', '.join(BAD_INPUT)}")
    if not opt.unit_mb > 0:
        errors.append(f"--unit-mb: {opt.unit_mb}; allowed: > 0")
    if not opt.domains:
        errors.append("--domain: none given; allowed: one or more NAME=PATH [PATH ...]")
    if errors:
        raise PrepareError("; ".join(errors))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out}: exists and is not a folder; allowed: a new or a text-dataset folder")
    ours = {MANIFEST, "tokenizer", "shards", "token_bytes.npy"}
    foreign = [p.name for p in out.iterdir() if p.name not in ours and not p.name.endswith(".tmp")] \
        if out.is_dir() else []
    if foreign:
        raise PrepareError(f"{out}: holds {', '.join(sorted(foreign)[:5])}, which a text dataset does not; "
                           "allowed: a new folder, or one an earlier prepare wrote")


def format_problems(problems: list[Problem], limit: int = 20) -> str:
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def _gather(opt: PrepareOptions) -> tuple[dict[str, list[SourceFile]], list[Problem]]:
    domains, problems = parse_domains(opt.domains)
    sources = {}
    for name, patterns in sorted(domains.items()):
        files, missing = resolve_paths(patterns)
        kept, bad = scan(files, opt.text_field, opt.text_column)
        problems += missing + bad
        if kept:
            sources[name] = kept
        elif not missing:
            problems.append(Problem(f"--domain {name}", "no usable document in its files"))
    return sources, problems


def _training_documents(sources: dict[str, list[SourceFile]], opt: PrepareOptions):
    """The train split's documents, in a fixed order (domains, paths, records): BPE sees no held-out text."""
    for files in sources.values():
        for f in files:
            docs, _, _ = read_documents(Path(f.path), opt.text_field, opt.text_column)
            yield from (d for d in docs if not shards.is_heldout(d, opt.heldout_fraction))


def _ensure_tokenizer(opt: PrepareOptions, sources: dict[str, list[SourceFile]], hf_tok) -> Path:
    folder = opt.out / "tokenizer"
    want = ({"kind": "bpe", "vocab_size": opt.train_bpe} if opt.train_bpe is not None
            else {"kind": "hf", "from": str(opt.tokenizer.resolve())})
    if folder.exists():
        saved = tokenizer.saved_source(folder)
        if saved != want:
            raise PrepareError(f"{folder}: holds a tokenizer made as {saved}, this run asks for {want}; "
                               "allowed: the same tokenizer options, or a new output folder")
        return folder
    if hf_tok is None:
        n_docs = sum(f.documents for files in sources.values() for f in files)
        print(f"training a byte-level BPE of {opt.train_bpe:,} ids on the train split", file=sys.stderr)
        hf_tok = tokenizer.as_hf(tokenizer.train_bpe(_training_documents(sources, opt), opt.train_bpe, n_docs))
    tokenizer.save_tokenizer(hf_tok, folder, want)
    return folder


def _run_units(out: Path, pending: list[dict]) -> list[dict]:
    """Run `shards.write_unit` on Ray, one task per unit; ray.init() only when not connected yet."""
    import ray
    from tqdm import tqdm

    started = not ray.is_initialized()
    if started:
        ray.init()  # under `ray job submit` this joins the job's cluster
    try:
        task = ray.remote(num_cpus=1)(shards.write_unit).options(runtime_env=TASK_ENV)
        refs = [task.remote(str(out), unit) for unit in pending]
        records = []
        with tqdm(total=len(refs), desc="tokenize", unit="unit", file=sys.stderr) as bar:
            while refs:
                done, refs = ray.wait(refs, num_returns=1)
                records.append(ray.get(done[0]))
                bar.update(1)
        return records
    finally:
        if started:
            ray.shutdown()


def _remove_temporaries(out: Path) -> None:
    """What a killed run left half-written: every write goes to `<name>.tmp` first."""
    for path in sorted(out.rglob("*.tmp")):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _stale_shards(out: Path, planned: set[str]) -> list[Path]:
    """Shards of units the current inputs no longer have (fewer files, a dropped domain)."""
    root = out / "shards"
    return [p for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(out).as_posix() not in planned] \
        if root.is_dir() else []


def _split_totals(records: list[dict], split: str) -> dict:
    parts = [r["splits"][split] for r in sorted(records, key=lambda r: r["index"])]
    return {
        "tokens": sum(p["tokens"] for p in parts), "documents": sum(p["documents"] for p in parts),
        "bytes": sum(p["bytes"] for p in parts),
        "shards": [{k: p[k] for k in ("tokens_file", "docs_file", "tokens", "documents")} for p in parts],
    }


def prepare(opt: PrepareOptions) -> dict:
    """Prepare (or finish, or refresh) the dataset folder `opt.out`; returns its manifest."""
    _check_options(opt)
    _check_out(opt.out)
    sources, problems = _gather(opt)
    if problems and opt.on_bad_input == "refuse":
        raise PrepareError(f"refused (--on-bad-input refuse), nothing written: {len(problems)} bad "
                           f"input(s):\n{format_problems(problems)}")
    if not sources:
        raise PrepareError(f"no usable document in any domain; bad inputs:\n{format_problems(problems)}")
    hf_tok = tokenizer.load_hf_tokenizer(opt.tokenizer) if opt.tokenizer is not None else None

    opt.out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(opt.out)
    tok_dir = _ensure_tokenizer(opt, sources, hf_tok)
    tok_json = tok_dir / "tokenizer.json"
    if not (opt.out / "token_bytes.npy").is_file():  # made once, with the tokenizer it describes
        shards.save_npy(opt.out / "token_bytes.npy", tokenizer.token_bytes(tok_json))
    vocab = tokenizer.load_encoder(tok_json).get_vocab_size(with_added_tokens=True)
    dtype, eos = tokenizer.token_dtype(vocab), tokenizer.eos_id(tok_dir)
    settings = {"version": VERSION, "tokenizer_sha256": tokenizer.file_sha256(tok_json), "dtype": dtype.name,
                "heldout_fraction": opt.heldout_fraction, "text_field": opt.text_field,
                "text_column": opt.text_column}

    units, records, planned = [], {}, set()
    for domain, files in sources.items():
        for index, group in enumerate(shards.plan_units(domain, files, int(opt.unit_mb * 2**20))):
            planned.update(shards.unit_files(domain, index))
            key = shards.unit_key(group, settings)
            record = shards.finished(opt.out, domain, index, key)
            if record:
                records[(domain, index)] = record
            else:
                units.append({"domain": domain, "index": index, "key": key, "eos_id": eos, "vocab_size": vocab,
                              "files": [{"path": f.path, "sha256": f.sha256} for f in group], **settings})
    print(f"{len(units)} unit(s) to tokenize, {len(records)} already done", file=sys.stderr)
    stale = _stale_shards(opt.out, planned)
    if units or stale:
        (opt.out / MANIFEST).unlink(missing_ok=True)  # the old manifest no longer describes the shards
    for path in stale:
        path.unlink()
    if units:
        for record in _run_units(opt.out, units):
            records[(record["domain"], record["index"])] = record

    content = {}  # every content file -> its sha256, for the digest
    for r in records.values():
        for part in r["splits"].values():
            content[part["tokens_file"]], content[part["docs_file"]] = part["tokens_sha256"], part["docs_sha256"]
    content["token_bytes.npy"] = tokenizer.file_sha256(opt.out / "token_bytes.npy")
    content["tokenizer/tokenizer.json"] = settings["tokenizer_sha256"]

    manifest = {
        "format": FORMAT, "version": VERSION, "dtype": dtype.name, "heldout_fraction": opt.heldout_fraction,
        "tokenizer": {**tokenizer.saved_source(tok_dir), "path": "tokenizer", "vocab_size": vocab, "eos_id": eos,
                      "eos_token": tokenizer.load_encoder(tok_json).id_to_token(eos),
                      "sha256": settings["tokenizer_sha256"], "byte_level": tokenizer.is_byte_level(tok_json)},
        "token_bytes": {"path": "token_bytes.npy", "exact": tokenizer.is_byte_level(tok_json)},
        "domains": {domain: {
            "sources": [vars(f) for f in files],
            "splits": {s: _split_totals([r for (d, _), r in records.items() if d == domain], s)
                       for s in shards.SPLITS},
        } for domain, files in sources.items()},
        "skipped": {"count": len(problems), "items": [str(p) for p in problems[:SKIPPED_LISTED]]},
        "command": list(opt.command),
        "digest": content_digest(content),
    }
    write_manifest(opt.out, manifest)
    if problems:
        print(f"skipped {len(problems)} bad input(s):\n{format_problems(problems)}", file=sys.stderr)
    return manifest
