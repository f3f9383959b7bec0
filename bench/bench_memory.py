"""Peak memory per worker of a DeepSpeed ZeRO-0/2/3 trial vs the plan's estimate, term by term.

Two CPU workers (gloo; `--workers 1` for a lone rank) run the platform's own engine
(`engine.build_engine`: the spec's DeepSpeed config, fused AdamW, schedule) on the ICL decoder
for a few steps. Rank 0 records its resident set (RSS) after imports and process-group set-up
(the baseline), after the model is built, after `deepspeed.initialize`, and its peak over the
steps; the plan's estimate (`plan.plan_trial`, the number the planner warns with) is printed
beside it with its terms.

    .venv/bin/python bench/bench_memory.py [--size S4] [--stages 0,2,3] [--steps 4] [--workers 2]
        [--out bench/memory.md]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
import torch.multiprocessing as mp
from local_group import free_port, set_rank_env
from record import machine, write_run

DOC = {
    "name": "bench_memory",
    "model": {"family": "decoder", "sizes": ["S4"]},
    "data": {"task": "icl", "dim": 8, "points": 16, "sizes": [6400], "batch_size": 64},
    "train": {"zero_stage": 2, "precision": "fp32"},
    "resources": {"workers": 2, "cpus_per_worker": 0.49},
}
MB = 2**20


def spec_for(size: str, stage: int, workers: int = 2):
    from reliscale.spec.schema import expand, validate

    doc = {**DOC, "model": {"family": "decoder", "sizes": [size]},
           "train": {**DOC["train"], "zero_stage": stage},
           "resources": {**DOC["resources"], "workers": workers}}
    return expand(validate(doc))[0]


def rss_now() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(rank: int, port: int, size: str, stage: int, steps: int, workers: int, out) -> None:
    set_rank_env(rank, workers, port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    from reliscale.tasks import build_model, build_task
    from reliscale.worker.engine import build_engine, init_deepspeed_comm

    init_deepspeed_comm()
    trial = spec_for(size, stage, workers)
    task = build_task(trial, workers)
    phases = {"base": rss_now()}
    torch.manual_seed(0)
    model = build_model(trial)
    phases["model"] = rss_now()
    engine = build_engine(model, trial.spec, steps, trial.lr)
    phases["engine"] = rss_now()
    micro = trial.spec.micro_batch()
    for step in range(steps):
        batch = {k: torch.as_tensor(v) for k, v in task.train_batch(step, 0, rank, micro).items()}
        engine.backward(engine(batch).mean())
        engine.step()
    phases["peak"] = rss_peak()
    if rank == 0:
        out.put(phases)
    dist.destroy_process_group()


def measure(size: str, stage: int, steps: int, workers: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, size, stage, steps, workers, q)) for r in range(workers)]
    for p in procs:
        p.start()
    while q.empty():
        if any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError(f"a worker of {size}/ZeRO-{stage} died: exit codes {[p.exitcode for p in procs]}")
        time.sleep(0.5)
    phases = q.get()
    for p in procs:
        p.join()
    return phases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="S4")
    ap.add_argument("--stages", default="0,2,3")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench/memory.md")
    args = ap.parse_args()
    from reliscale.driver.plan import memory_terms, param_counts

    rows = []
    for stage in (int(s) for s in args.stages.split(",")):
        trial = spec_for(args.size, stage, args.workers)
        counts = param_counts([trial])[trial.trial_id]
        terms = memory_terms(trial, counts)
        est = sum(terms.values())
        ph = measure(args.size, stage, args.steps, args.workers)
        grown = ph["peak"] - ph["base"]
        rows.append(f"| {args.size} | {counts['n_params'] / 1e6:.2f}M | {stage} | {ph['base'] / MB:.0f} | "
                    f"{(ph['model'] - ph['base']) / MB:.0f} | {(ph['engine'] - ph['model']) / MB:.0f} | "
                    f"{(ph['peak'] - ph['engine']) / MB:.0f} | {grown / MB:.0f} | "
                    + " | ".join(f"{v / MB:.0f}" for v in terms.values())
                    + f" | {est / MB:.0f} | {100 * (est / grown - 1):+.0f} % |")
        print(rows[-1], flush=True)
    head = " | ".join(f"est. {k} MB" for k in terms)
    text = (
        "# Memory per worker: measured peak RSS vs the plan's estimate\n\n"
        f"- machine: {machine()}, torch {torch.__version__}, "
        f"{args.workers} worker(s) x 1 thread, gloo, fp32\n"
        f"- command: `.venv/bin/python bench/bench_memory.py --size {args.size} --stages {args.stages} "
        f"--steps {args.steps}" + (f" --workers {args.workers}" if args.workers != 2 else "") + "`\n"
        "- workload: ICL decoder, d=8, 16 pairs (32 tokens), batch 64 split over the workers, the platform's "
        "own DeepSpeed config and fused AdamW\n"
        "- measured (rank 0): RSS after imports + process group (base); growth while building the model, "
        "in `deepspeed.initialize`, and up to the peak over the steps; total = peak RSS - base\n\n"
        f"| size | params | ZeRO | base MB | model MB | DS init MB | steps MB | measured total MB | {head} "
        "| estimate MB | estimate vs measured |\n"
        "|---|---|---|---|---|---|---|---|" + "---|" * len(terms) + "---|---|\n"
    )
    write_run(args.out, text + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
