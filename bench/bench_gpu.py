"""Tokens/s and MFU of the platform's LM trial path on one GPU (issue 8, item 4).

For each decoder ladder size: the trial's own model (`build_model`), DeepSpeed engine
(`build_engine`: ZeRO stage, precision and AdamW from jobs/lm_ladder_1b.yaml) and data
(`build_task`: the synthetic Markov language), one process, world size 1. After `--warmup`
steps, `--steps` optimizer steps are timed between CUDA synchronisations.

    tokens/s = micro_batch · seq_len / step time
    MFU      = 6 · N · tokens/s / peak      (N: all parameters, embeddings included)

The peak is the device's dense bf16 number (H100/H200 SXM: 989 TFLOP/s) unless
`--peak-tflops` is given. A CPU check of the script itself (no GPU needed):

    .venv/bin/python bench/bench_gpu.py --sizes S0 --seq-len 64 --micro-batch 2 --steps 2 \
        --warmup 1 --precision fp32 --out /tmp/gpu.md

On the device machine (its python3 has torch and transformers; deepspeed and pydantic travel
as wheels, see bench/gpu.md): `python3 bench/bench_gpu.py --out $OUT/gpu.md`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def device_peak(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def trial_for(size: str, seq_len: int, micro_batch: int, precision: str, extra: list[str]):
    """The job's trial of `size`, on one GPU, reading the synthetic language instead of a token file."""
    from reliscale.spec import expand, load_spec

    spec = load_spec(REPO / "jobs" / "lm_ladder_1b.yaml", [
        f"model.sizes=[{size}]", "data.sizes=[1.0e9]", "data.path=null", f"data.seq_len={seq_len}",
        f"data.batch_size={micro_batch}", f"train.micro_batch={micro_batch}", f"train.precision={precision}",
        "resources.workers=1", *extra])
    (trial,) = expand(spec)
    return trial


def measure(trial, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    from reliscale.engine import build_engine
    from reliscale.models import build_model, count_params
    from reliscale.tasks import build_task

    torch.manual_seed(trial.seed)
    model = build_model(trial)
    n_params = count_params(model)[0]
    engine = build_engine(model, trial.spec, steps + warmup, trial.lr)
    task = build_task(trial, 1)
    mb = trial.spec.micro_batch()
    times = []
    for step in range(warmup + steps):
        batch = {k: torch.as_tensor(v, device=device) for k, v in task.train_batch(step, 0, 0, mb).items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.backward(engine(batch).mean())
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = sum(times[warmup:]) / steps
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    engine.destroy()
    return {"n_params": n_params, "step_s": step_s, "tokens_per_s": mb * trial.spec.data.seq_len / step_s,
            "peak_mem_gib": peak_mem}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="S6,S7,S8")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--set", action="append", default=[], help="more spec overrides, KEY=VALUE")
    ap.add_argument("--out", default="bench/gpu.md")
    args = ap.parse_args()

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29531"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    import transformers

    from reliscale.engine import init_deepspeed_comm

    init_deepspeed_comm()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops or device_peak(name)
    rows = []
    for size in args.sizes.split(","):
        trial = trial_for(size, args.seq_len, args.micro_batch, args.precision, args.set)
        r = measure(trial, args.steps, args.warmup, device)
        flops = 6 * r["n_params"] * r["tokens_per_s"]
        mfu = f"{100 * flops / (peak * 1e12):.1f} %" if peak else "n/a"
        rows.append(f"| {size} | {r['n_params'] / 1e6:.0f}M | {r['step_s'] * 1000:.0f} | {r['tokens_per_s']:,.0f} | "
                    f"{flops / 1e12:.1f} | {mfu} | {r['peak_mem_gib']:.1f} |")
        print(rows[-1], flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    header = (f"\n## Run of {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n\n"
              f"- device: {name}; peak used for MFU: {peak} TFLOP/s (dense bf16)\n"
              f"- versions: torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
              f"transformers {transformers.__version__}, Python {platform.python_version()}\n"
              f"- settings: jobs/lm_ladder_1b.yaml (ZeRO-3, AdamW, activation checkpointing), overrides "
              f"{args.set or 'none'}, precision {args.precision}, one GPU, "
              f"micro-batch {args.micro_batch} x {args.seq_len} tokens, no accumulation; mean of {args.steps} "
              f"steps after {args.warmup} warm-up steps\n"
              f"- command: `bench/bench_gpu.py --sizes {args.sizes} --seq-len {args.seq_len} --micro-batch "
              f"{args.micro_batch} --steps {args.steps} --precision {args.precision}"
              + "".join(f" --set {o}" for o in args.set) + "`\n\n"
              "| size | params | step ms | tokens/s | model TFLOP/s (6·N·tokens/s) | MFU | peak GPU memory GiB |\n"
              "|---|---|---|---|---|---|---|\n")
    with open(args.out, "a") as f:
        f.write(header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
