"""`reliscale data prepare | inspect | local-corpus | local-images | next-line`.

    python -m reliscale.data.cli prepare OUT --domain code=src/**/*.py --domain prose=docs/ --train-bpe 8192
    python -m reliscale.data.cli inspect OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reliscale.data.local_images import LAYOUTS, write_digits
from reliscale.data.local_text import DOMAINS, write_local_corpus
from reliscale.data.manifest import MANIFEST, NotADatasetError
from reliscale.data.prepare import PrepareError, PrepareOptions, prepare
from reliscale.data.shards import SPLITS
from reliscale.data.text_dataset import TextDataset
from reliscale.data.tokenizer import TokenizerError, load_encoder
from reliscale.tasks.next_line import heldout_next_line_task, write_jsonl

SAMPLE_CHARS = 200


def add_data_parser(subparsers) -> None:
    """Add the `data` command (with `prepare` and `inspect`) to a CLI's sub-parsers."""
    data = subparsers.add_parser("data", help="prepare a text dataset (token shards) or inspect a dataset")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("prepare", help="tokenize text corpora into token shards per domain and split, on Ray")
    p.add_argument("out", type=Path, help="dataset folder to write (an interrupted one is resumed)")
    p.add_argument("--domain", action="append", nargs="+", required=True, metavar="NAME=PATH",
                   help="a domain and its files, folders or globs (`**` recurses): NAME=PATH [PATH ...]; "
                        "repeatable. .jsonl and .parquet hold one document per record, any other file is one")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", type=Path, metavar="DIR", help="a local Hugging Face tokenizer folder")
    tok.add_argument("--train-bpe", type=int, metavar="VOCAB",
                     help="train a byte-level BPE of VOCAB ids (EOS included) on the train split")
    p.add_argument("--heldout-fraction", type=float, default=0.05,
                   help="share of documents held out, chosen by a hash of their content (default 0.05)")
    p.add_argument("--text-field", default="text", help="the text field of .jsonl records (default text)")
    p.add_argument("--text-column", default="text", help="the text column of .parquet files (default text)")
    p.add_argument("--on-bad-input", choices=("skip", "refuse"), default="skip",
                   help="skip bad files/records with a summary (default), or refuse before writing anything")
    p.add_argument("--unit-mb", type=float, default=8.0,
                   help="MB of text per work unit (one Ray task, one shard per split; default 8)")

    p = sub.add_parser("inspect", help="a dataset's contents: per-domain table, tokenizer, a decoded sample")
    p.add_argument("dir", type=Path)

    p = sub.add_parser("local-corpus", help="write text every machine has (stdlib and package sources, their "
                       "documentation, torch's C++ headers) as domain folders, to prepare as a dataset")
    p.add_argument("out", type=Path)
    p.add_argument("--max-mb", type=float, default=2.0, help="MB of text per domain (default 2)")
    p.add_argument("--domains", default=",".join(DOMAINS), help=f"comma-separated (default {','.join(DOMAINS)})")

    p = sub.add_parser("local-images", help="write scikit-learn's 1,797 handwritten digits (8x8) as an "
                       "ImageFolder tree (train/ and test/, a folder per digit) or as parquet files")
    p.add_argument("out", type=Path)
    p.add_argument("--layout", choices=LAYOUTS, default="folder",
                   help="folder: <split>/<digit>/*.png; parquet: <split>-00000-of-00001.parquet (image, label)")

    p = sub.add_parser("next-line", help="a multiple-choice task from a dataset's held-out documents: which "
                       "line is the real next one")
    p.add_argument("out", type=Path, help="the JSONL file to write ({context, choices, label} per line)")
    p.add_argument("--dataset", type=Path, required=True, help="a prepared text dataset")
    p.add_argument("--domain", required=True, help="the domain whose held-out documents the items come from")
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--choices", type=int, default=4)
    p.add_argument("--context-lines", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)


def inspect_text(folder: str | Path) -> str:
    """The manifest as a table, the tokenizer, and the start of one held-out document per domain."""
    ds = TextDataset(folder)
    tok = ds.manifest["tokenizer"]
    lines = [f"text dataset {ds.path} ({ds.dtype.name} tokens, digest {ds.digest[:16]})",
             f"tokenizer: {tok['kind']}, {tok['vocab_size']:,} ids, eos {tok['eos_token']!r} = {tok['eos_id']}, "
             f"byte-level {tok['byte_level']}, at {ds.tokenizer_path}",
             "",
             f"{'domain':<16} {'split':<8} {'documents':>10} {'tokens':>14} {'bytes':>14} {'bytes/token':>11}"]
    for domain in ds.domains:
        for split in SPLITS:
            s = ds.manifest["domains"][domain]["splits"][split]
            ratio = f"{s['bytes'] / s['tokens']:.2f}" if s["tokens"] else "-"
            lines.append(f"{domain:<16} {split:<8} {s['documents']:>10,} {s['tokens']:>14,} {s['bytes']:>14,} "
                         f"{ratio:>11}")
    skipped = ds.manifest["skipped"]["count"]
    if skipped:
        lines.append(f"\nskipped bad inputs: {skipped} (listed in {ds.path / MANIFEST})")
    encoder = load_encoder(ds.tokenizer_path / "tokenizer.json")
    for domain in ds.domains:
        split = "heldout" if len(ds.documents(domain, "heldout")) else "train"
        start, end = ds.documents(domain, split)[0]
        text = encoder.decode(ds.window(domain, split, int(start), int(end - start - 1)).tolist())
        lines += ["", f"sample ({domain}, first {split} document):", text[:SAMPLE_CHARS]]
    return "\n".join(lines)


def inspect_dataset(folder: Path) -> str:
    """Dispatch on what the folder holds: a text dataset (manifest.json, or the start of one) or images."""
    if any((folder / name).exists() for name in (MANIFEST, "shards", "tokenizer")):
        return inspect_text(folder)
    from reliscale.data.image_inspect import find_splits, inspect_images

    if folder.is_dir() and find_splits(folder):
        return inspect_images(folder)
    raise NotADatasetError(f"{folder}: neither a prepared text dataset (no {MANIFEST}; run `reliscale data "
                           "prepare`) nor an image dataset (no split folders or <split>.parquet files)")


def run_data_command(args: argparse.Namespace) -> int:
    try:
        if args.data_command == "inspect":
            print(inspect_dataset(args.dir))
            return 0
        if args.data_command == "local-corpus":
            for domain, folder in write_local_corpus(args.out, args.max_mb, tuple(args.domains.split(","))).items():
                print(f"{domain}: {folder}")
            return 0
        if args.data_command == "local-images":
            print(f"digits: {write_digits(args.out, args.layout)}")
            return 0
        if args.data_command == "next-line":
            items = heldout_next_line_task(args.dataset, args.domain, args.items, args.choices,
                                           args.context_lines, args.seed)
            write_jsonl(items, args.out)
            print(f"{len(items)} items from the held-out {args.domain} documents of {args.dataset}: {args.out}")
            return 0
        prepare(PrepareOptions(
            out=args.out, domains=args.domain, tokenizer=args.tokenizer, train_bpe=args.train_bpe,
            heldout_fraction=args.heldout_fraction, text_field=args.text_field, text_column=args.text_column,
            on_bad_input=args.on_bad_input, unit_mb=args.unit_mb,
            command=tuple(getattr(args, "argv", sys.argv))))
        print(inspect_text(args.out))
        return 0
    except (PrepareError, TokenizerError, NotADatasetError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reliscale")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["data", *argv])
    args.argv = ["reliscale", "data", *argv]
    return run_data_command(args)


if __name__ == "__main__":
    sys.exit(main())
