"""AdamW's three torch implementations on CPU, on the tensors a trial's optimizer steps over.

DDP and ZeRO-0 step over the model's own parameters; ZeRO-1/2 step over one flat fp32
partition per rank (half the model on 2 workers). `single` is torch's default on CPU,
`foreach` batches the per-tensor loop, `fused` is one kernel per tensor with no temporaries.
One thread, as in a trial worker; median of `--steps` optimizer steps after 3 warm-up steps.
The last column is the largest difference from `single` after those steps (rounding only).

    .venv/bin/python bench/bench_optimizer.py [--sizes S1,S4,S5] [--steps 10] [--out bench/optimizer.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch
from record import machine

from reliscale.models.build import ICLDecoder
from reliscale.spec.ladder import DECODER_LADDER

KINDS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def layouts(size: str) -> dict[str, list[torch.Size]]:
    shapes = [p.shape for p in ICLDecoder(DECODER_LADDER[size], 8, 16).parameters()]
    n = sum(s.numel() for s in shapes)
    return {"per-parameter (DDP, ZeRO-0)": shapes, "flat half (ZeRO-1/2, 2 ranks)": [torch.Size([n // 2])]}


def time_steps(shapes: list[torch.Size], kind: str, steps: int) -> tuple[float, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, **KINDS[kind])
    times = []
    for i in range(steps + 3):
        for p, g in zip(params, grads, strict=True):
            p.grad = g * (1 + 0.01 * i)
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:]), torch.cat([p.detach().flatten() for p in params])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="S1,S4,S5")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="bench/optimizer.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for size in args.sizes.split(","):
        for layout, shapes in layouts(size).items():
            n = sum(s.numel() for s in shapes)
            ms, final = {}, {}
            for kind in KINDS:
                t, final[kind] = time_steps(shapes, kind, args.steps)
                ms[kind] = 1000 * t
            diff = max((final[k] - final["single"]).abs().max().item() for k in KINDS)
            rows.append(f"| {size} | {layout} | {n / 1e6:.2f}M | {ms['single']:.2f} | {ms['foreach']:.2f} | "
                        f"{ms['fused']:.2f} | {ms['single'] / ms['fused']:.1f}x | {diff:.1e} |")
            print(rows[-1], flush=True)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    text = "\n".join([
        f"## Run of {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n",
        f"- machine: {machine()}, torch {torch.__version__}, 1 thread; "
        f"load average at end {load}",
        f"- command: `.venv/bin/python bench/bench_optimizer.py --sizes {args.sizes} --steps {args.steps}`\n",
        "| size | tensors | elements | single ms | foreach ms | fused ms | single / fused | max diff vs single |",
        "|---|---|---|---|---|---|---|---|",
        *rows, "", ""])
    header = "" if os.path.exists(args.out) else "# AdamW on CPU: single-tensor vs foreach vs fused\n\n"
    with open(args.out, "a") as f:
        f.write(header + text)


if __name__ == "__main__":
    main()
