"""Data pipeline: examples/s of each task sampler against what a training step consumes.

The sampler must not be the bottleneck: its time per micro-batch should stay under 5 % of
the step time of the smallest model that would train on it (measured here, same process,
one thread, as a Ray Train worker with 0.49 CPU runs).

The image task decodes the next micro-batch in a background thread while the current one
trains: its row also gives the time a step actually waits for its batch with that prefetch
(the smoke job's digits at 32 px, read from an ImageFolder written to a temporary folder).

    .venv/bin/python bench/bench_data.py [--out bench/data.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from record import machine, write_run

from reliscale.models.build import Classifier, ICLDecoder, ViTBackbone
from reliscale.spec.ladder import DECODER_LADDER, VIT_LADDER, ModelSize
from reliscale.tasks.classification import ClassificationStream
from reliscale.tasks.icl import ICLTask
from reliscale.tasks.mnist1d import NUM_CLASSES, SIGNAL_LEN, SIGNAL_PATCH, MNIST1DTask

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


def image_rows(tmp: Path) -> list[tuple[str, str, float, float, float]]:
    """(name, model, sampler s decoding on the spot, step s, s a step waits for its prefetched batch)."""
    from reliscale.data.local_images import write_digits
    from reliscale.spec.schema import load_spec
    from reliscale.tasks.images import ImageTask

    root = write_digits(tmp / "digits")
    spec = load_spec(Path(__file__).parent.parent / "jobs" / "images_smoke.yaml",
                     [f"data.images.root={root}", "finetune=null", "data.images.downstream_root=null"])
    size = ModelSize("S0", VIT_LADDER["S0"])
    rows = []
    for cache in (True, False):
        im = spec.data.images.model_copy(update={"cache": cache})
        task = ImageTask(im, 0, 12800, 64)
        stream = ClassificationStream(task, world=1, accumulation=1)
        sample = per_call_s(lambda i, t=task: t._load_train(i, 0, 1, MICRO))
        model = Classifier(ViTBackbone(size, im.image_size, im.patch_size, 1, image=True), VIT_LADDER["S0"].width,
                           task.num_classes, "none", {})
        step = step_s(model, lambda i, s=stream: s.train_batch(i, 0, 0, MICRO))
        opt = torch.optim.AdamW(model.parameters(), fused=True)
        waits = []
        for i in range(100, 130):  # the loop's order: fetch (the prefetched batch), then train on it
            t0 = time.perf_counter()
            batch = stream.train_batch(i, 0, 0, MICRO)
            waits.append(time.perf_counter() - t0)
            loss = model({k: torch.as_tensor(v) for k, v in batch.items()}).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        rows.append((f"digits 32 px ({'cached' if cache else 'decoded per batch'})", "vit S0", sample, step,
                     sum(waits[1:]) / len(waits[1:])))
    return rows


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
        model = Classifier(ViTBackbone(size, SIGNAL_LEN, SIGNAL_PATCH), VIT_LADDER["S0"].width, NUM_CLASSES,
                           "none", {})
        step = step_s(model, lambda i: stream.train_batch(i, 0, 0, MICRO))
        rows.append(("mnist1d (cached)", "vit S0", sample, step))
        images = image_rows(Path(tmp))
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
    lines += ["", "| images, decoded | model | sampler ms | step ms | wait ms with prefetch | wait / step |",
              "|---|---|---|---|---|---|"]
    for name, model, sample, step, wait in images:
        lines.append(f"| {name} | {model} | {1000 * sample:.2f} | {1000 * step:.1f} | {1000 * wait:.2f} | "
                     f"{100 * wait / step:.1f} % |")
    write_run(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
