"""Data pipeline: examples/s of each task sampler against what a training step consumes.

The sampler must not be the bottleneck: its time per micro-batch should stay under 5 % of
the step time of the smallest model that would train on it (measured here, same process,
one thread, as a Ray Train worker with 0.49 CPU runs).

    .venv/bin/python bench/bench_data.py [--out bench/data.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from record import machine, write_run

from reliscale.models.build import SIGNAL_LENGTH, SIGNAL_PATCH, Classifier, ICLDecoder, ViTBackbone
from reliscale.spec.ladder import DECODER_LADDER, VIT_LADDER, ModelSize
from reliscale.tasks.classification import ClassificationStream
from reliscale.tasks.icl import ICLTask
from reliscale.tasks.mnist1d import NUM_CLASSES, MNIST1DTask

MICRO = 32


def per_call_s(fn, n: int = 50) -> float:
    fn(0)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return (time.perf_counter() - t0) / n


def step_s(model, batch_fn, n: int = 10) -> float:
    opt = torch.optim.AdamW(model.parameters(), fused=True)  # as the trials (engine.build_engine)

    def step(i):
        loss = model({k: torch.as_tensor(v) for k, v in batch_fn(i).items()}).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return per_call_s(step, n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/data.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, mix in (("icl dense_linear", {"dense_linear": 1.0}),
                          ("icl 4-class mixture", {c: 1.0 for c in ("dense_linear", "sparse_linear",
                                                                    "relu2nn", "sinusoid")})):
            task = ICLTask(mix, dim=8, points=16, noise_std=0.0, seed=0, eval_examples=64, cache_dir=Path(tmp))
            sample = per_call_s(lambda i, t=task: t.train_batch(i, 0, 0, MICRO))
            model = ICLDecoder(DECODER_LADDER["S0"], 8, 16)
            step = step_s(model, lambda i, t=task: t.train_batch(i, 0, 0, MICRO))
            rows.append((name, "decoder S0", sample, step))
        stream = ClassificationStream(MNIST1DTask(0, 65536, 64, tmp), world=1, accumulation=1)
        stream.train_batch(0, 0, 0, MICRO)  # generate + cache the training set once
        sample = per_call_s(lambda i: stream.train_batch(i, 0, 0, MICRO))
        size = ModelSize("S0", VIT_LADDER["S0"])
        model = Classifier(ViTBackbone(size, SIGNAL_LENGTH, SIGNAL_PATCH), VIT_LADDER["S0"].width, NUM_CLASSES,
                           "none", {})
        step = step_s(model, lambda i: stream.train_batch(i, 0, 0, MICRO))
        rows.append(("mnist1d (cached)", "vit S0", sample, step))
    lines = [
        "# Data pipeline: sampler time vs training-step time\n",
        f"- machine: {machine()}, torch {torch.__version__}, 1 thread",
        "- command: `.venv/bin/python bench/bench_data.py`",
        f"- micro-batch {MICRO}; step = forward + backward + fused AdamW (as the trials) on the smallest ladder rung\n",
        "| task | model | sampler ms | examples/s | step ms | sampler / step |",
        "|---|---|---|---|---|---|",
    ]
    for name, model, sample, step in rows:
        lines.append(f"| {name} | {model} | {1000 * sample:.2f} | {MICRO / sample:,.0f} | {1000 * step:.1f} | "
                     f"{100 * sample / step:.1f} % |")
    write_run(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
