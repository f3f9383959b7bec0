"""Tokenization throughput of `reliscale data prepare` against `tokenizers`' own encode_batch.

Corpus: the standard library's top-level `*.py` files (~5 MB). A byte-level BPE of 8,192 ids is
trained once on them and saved as a Hugging Face folder; every measurement then tokenizes the same
files with it, each in a fresh subprocess (rayon reads RAYON_NUM_THREADS once per process):

- reference: `Tokenizer.encode_batch_fast` over all documents in one process, 1 and 2 threads;
- prepare: `prepare(--tokenizer ...)` on a local Ray with num_cpus 1 and 2 (one task per unit and
  per CPU, one tokenizer thread per task), timed from the call to the manifest: scanning and
  hashing the files, the tasks, writing the shards. The table's time is the second prepare on the
  same Ray (workers running, as in a long prepare); the first one, which also starts them, is
  shown apart.

    .venv/bin/python bench/bench_tokenize.py [--out bench/tokenize.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from record import machine, write_run

VOCAB = 8192
UNIT_MB = 0.5


def corpus() -> list[Path]:
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def reference(tokenizer_dir: str) -> dict:
    from tokenizers import Tokenizer

    docs = [p.read_text(encoding="utf-8") for p in corpus()]
    tok = Tokenizer.from_file(f"{tokenizer_dir}/tokenizer.json")
    tok.encode_special_tokens = True
    times = []
    for _ in range(2):  # the faster of two passes: the machine is shared
        t0 = time.perf_counter()
        tokens = sum(len(e.ids) + 1 for e in tok.encode_batch_fast(docs, add_special_tokens=False))
        times.append(time.perf_counter() - t0)
    return {"s": min(times), "tokens": tokens}


def run_prepare(tokenizer_dir: str, cpus: int) -> dict:
    """Two prepares on one fresh Ray: `cold` starts the worker processes, `warm` finds them running."""
    import ray

    from reliscale.data.prepare import PrepareOptions, prepare

    ray.init(num_cpus=cpus, include_dashboard=False)
    result = {}
    for run in ("cold", "warm"):
        with tempfile.TemporaryDirectory() as tmp:
            opt = PrepareOptions(out=Path(tmp) / "ds", domains=[[f"code={corpus()[0]}", *map(str, corpus()[1:])]],
                                 tokenizer=Path(tokenizer_dir), heldout_fraction=0.05, unit_mb=UNIT_MB)
            t0 = time.perf_counter()
            manifest = prepare(opt)
            result[run] = time.perf_counter() - t0
    ray.shutdown()
    splits = manifest["domains"]["code"]["splits"].values()
    return {"s": result["warm"], "cold_s": result["cold"], "tokens": sum(s["tokens"] for s in splits),
            "units": len(next(iter(splits))["shards"])}


def measure(kind: str, tokenizer_dir: str, threads: int) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--tokenizer", tokenizer_dir,
                          "--threads", str(threads)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/tokenize.md")
    ap.add_argument("--worker", choices=("reference", "prepare"))
    ap.add_argument("--tokenizer")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.worker == "reference":
        print(json.dumps(reference(args.tokenizer)))
        return
    if args.worker == "prepare":
        print(json.dumps(run_prepare(args.tokenizer, args.threads)))
        return

    from reliscale.data.tokenizer import as_hf, train_bpe

    load_start = os.getloadavg()[0]
    files = corpus()
    mb = sum(p.stat().st_size for p in files) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        docs = [p.read_text(encoding="utf-8") for p in files]
        t0 = time.perf_counter()
        as_hf(train_bpe(iter(docs), VOCAB, len(docs))).save_pretrained(tmp)
        train_s = time.perf_counter() - t0
        for threads in (1, 2):
            rows.append((f"tokenizers encode_batch_fast, one process, {threads} thread(s)", threads,
                         measure("reference", tmp, threads)))
        for cpus in (1, 2):
            r = measure("prepare", tmp, cpus)
            rows.append((f"reliscale data prepare, Ray num_cpus={cpus} ({r['units']} units)", cpus, r))
    ref = {threads: r["s"] for name, threads, r in rows if name.startswith("tokenizers")}
    lines = [
        "# Tokenization throughput: `reliscale data prepare` vs tokenizers' encode_batch\n",
        f"- machine: {machine()}; load average at start {load_start:.1f}",
        "- command: `.venv/bin/python bench/bench_tokenize.py`",
        f"- corpus: {len(files)} top-level stdlib `*.py` files, {mb:.2f} MB of UTF-8 text; byte-level BPE of "
        f"{VOCAB:,} ids trained on them in {train_s:.1f} s (one process, both cores); prepare units of "
        f"{UNIT_MB} MB, 5 % held out\n",
        "| run | s | MB/s | M tokens/s | tokens | time / encode_batch (same cores) | first run on a fresh Ray, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cores, r in rows:
        cold = f"{r['cold_s']:.2f}" if "cold_s" in r else "-"
        lines.append(f"| {name} | {r['s']:.2f} | {mb / r['s']:.2f} | {r['tokens'] / r['s'] / 1e6:.2f} | "
                     f"{r['tokens']:,} | {r['s'] / ref[cores]:.2f}x | {cold} |")
    p1, p2 = (r["s"] for name, _, r in rows if name.startswith("reliscale"))
    lines.append(f"\nprepare speed-up from 1 to 2 Ray CPUs (warm): {p1 / p2:.2f}x; load average at the end "
                 f"{os.getloadavg()[0]:.1f}")
    write_run(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
