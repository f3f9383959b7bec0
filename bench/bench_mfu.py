"""Tokens/s and MFU of the platform's LM trial path on one device: a GPU (issue 8, item 4), or
this machine's CPU when no GPU is lent.

For each decoder ladder size and precision: the trial's own model (`build_model`), DeepSpeed
engine (`build_engine`: ZeRO stage, AdamW and activation checkpointing from
jobs/lm_ladder_1b.yaml) and data (`build_task`: the synthetic Markov language), one process,
world size 1. After `--warmup` steps, `--steps` optimizer steps are timed (between CUDA
synchronisations on a GPU).

    model FLOPs per token = 6·(N + V·d) + 12·L·T·d      (Narayanan et al. 2021, eq. 3; PaLM's count)
    MFU = model FLOPs per token · tokens/s / peak
    HFU = the same plus the forward pass of the layers that activation checkpointing recomputes
          (2·N + 4·L·T·d)

N: non-embedding parameters (the layers); V·d: the untied output projection, the other matmul
(the input embedding table is a lookup and does not count); L, T, d: layers, sequence length, width.
Peak: on a GPU the datasheet's dense bf16 number (H100/H200 SXM: 989 TFLOP/s) unless
`--peak-tflops`; on a CPU the best of square matmuls (1024-4096) in the run's precision on the
same threads, measured in the run: an achievable peak (a VM exposes no clock to compute a
datasheet one from).

    .venv/bin/python bench/bench_mfu.py --sizes S4,S5,S6 --seq-len 256 --precision bf16,fp32  # CPU
    python3 bench/bench_mfu.py --out $OUT/mfu.md          # on the device machine (see bench/mfu.md)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch
from record import cpu_model

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def trial_for(size: str, seq_len: int, micro_batch: int, precision: str, extra: list[str]):
    """The job's trial of `size` on one device, reading the synthetic language instead of a token file."""
    from reliscale.spec.schema import expand, load_spec

    spec = load_spec(REPO / "jobs" / "lm_ladder_1b.yaml", [
        f"model.sizes=[{size}]", "data.sizes=[1.0e9]", "data.path=null", f"data.seq_len={seq_len}",
        f"data.batch_size={micro_batch}", f"train.micro_batch={micro_batch}", f"train.precision={precision}",
        "resources.workers=1", *extra])
    (trial,) = expand(spec)
    return trial


def flops_per_token(n_layers: int, n_head: int, depth: int, seq_len: int, width: int,
                    recompute: bool) -> tuple[float, float]:
    """(model, hardware) FLOPs per trained token; with `recompute` (activation checkpointing) the
    hardware also runs the layers' forward pass again."""
    attention = 2 * depth * seq_len * width  # QK^T and AV, forward, per token
    model = 6 * (n_layers + n_head) + 6 * attention
    return model, model + (2 * n_layers + 2 * attention if recompute else 0)


def cpu_matmul_peak(dtype: torch.dtype) -> float:
    """Best FLOP/s of square matmuls on this process's torch threads."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        reps = max(2, int(2e10 / (2 * n**3)))
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def measure(trial, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    from reliscale.models.build import count_params
    from reliscale.tasks import build_model, build_task
    from reliscale.worker.engine import build_engine

    torch.manual_seed(trial.seed)
    model = build_model(trial)
    n_params, n_layers = count_params(model)
    n_head = model.lm_head.weight.numel()
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
    peak_mem = None  # on a CPU see bench/memory.md: a process's peak RSS spans every run before
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    engine.destroy()
    return {"n_params": n_params, "n_layers": n_layers, "n_head": n_head, "step_s": step_s,
            "tokens_per_s": mb * trial.spec.data.seq_len / step_s, "peak_mem_gib": peak_mem}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="S6,S7,S8")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="bf16", help="one or more of fp32, bf16, fp16, comma-separated")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (else see above)")
    ap.add_argument("--set", action="append", default=[], help="more spec overrides, KEY=VALUE")
    ap.add_argument("--out", default="bench/mfu.md")
    args = ap.parse_args()
    unknown = [p for p in args.precision.split(",") if p not in DTYPES]
    if unknown:
        ap.error(f"--precision {args.precision}: {', '.join(unknown)} is not one of {', '.join(DTYPES)}")

    from local_group import set_rank_env  # here: tests load this file for its FLOP count alone

    set_rank_env(0, 1, int(os.environ.get("MASTER_PORT", "29531")))
    from reliscale.worker.engine import init_deepspeed_comm

    init_deepspeed_comm()  # names DeepSpeed's accelerator before its first import on a CPU
    import deepspeed
    import transformers

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        name = torch.cuda.get_device_name(0)
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        peaks = {p: peak for p in args.precision.split(",")}
        peak_note = f"{peak} TFLOP/s (dense bf16)"
    else:
        name = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
        peaks = {p: args.peak_tflops or cpu_matmul_peak(DTYPES[p]) / 1e12 for p in args.precision.split(",")}
        peak_note = ", ".join(f"{p} {v:.3f} TFLOP/s" for p, v in peaks.items()) + (
            " (given)" if args.peak_tflops else " (best square matmul, measured in this run)")
    rows = []
    for size in args.sizes.split(","):
        for precision, peak in peaks.items():
            trial = trial_for(size, args.seq_len, args.micro_batch, precision, args.set)
            r = measure(trial, args.steps, args.warmup, device)
            shape = trial.size.enc
            model_f, hw_f = flops_per_token(r["n_layers"], r["n_head"], shape.depth, args.seq_len, shape.width,
                                            trial.spec.train.activation_checkpointing)
            tflops = model_f * r["tokens_per_s"] / 1e12
            mfu = f"{100 * tflops / peak:.1f} %" if peak else "n/a"
            hfu = f"{100 * hw_f * r['tokens_per_s'] / 1e12 / peak:.1f} %" if peak else "n/a"
            mem = "—" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
            rows.append(f"| {size} | {precision} | {r['n_params'] / 1e6:.0f}M | {r['n_layers'] / 1e6:.0f}M | "
                        f"{r['step_s'] * 1000:.0f} | {r['tokens_per_s']:,.0f} | {tflops:.3f} | {mfu} | {hfu} | "
                        f"{mem} |")
            print(rows[-1], flush=True)
    header = (f"\n## Run of {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n\n"
              f"- device: {name}; peak used for MFU: {peak_note}\n"
              f"- versions: torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
              f"transformers {transformers.__version__}, Python {platform.python_version()}\n"
              f"- settings: jobs/lm_ladder_1b.yaml (ZeRO-3, AdamW, activation checkpointing), overrides "
              f"{', '.join(args.set) or 'none'}, one process, micro-batch {args.micro_batch} x {args.seq_len} tokens, "
              f"no accumulation; mean of {args.steps} steps after {args.warmup} warm-up steps\n"
              f"- command: `bench/bench_mfu.py --sizes {args.sizes} --seq-len {args.seq_len} --micro-batch "
              f"{args.micro_batch} --steps {args.steps} --warmup {args.warmup} --precision {args.precision}"
              + (f" --peak-tflops {args.peak_tflops}" if args.peak_tflops else "")
              + "".join(f" --set {o}" for o in args.set) + "`\n\n"
              "| size | precision | params | non-embedding | step ms | tokens/s | model TFLOP/s | MFU | HFU | "
              "peak GPU memory GiB |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    with open(args.out, "a") as f:
        f.write(header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
