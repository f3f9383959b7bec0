"""Step time and memory of a DeepSpeed ZeRO engine vs plain PyTorch DDP, 2 CPU workers (gloo).

For three ICL decoder sizes: median optimizer-step time of plain DDP + AdamW, and of
DeepSpeed ZeRO-0/2/3 with the same AdamW and the platform's ZeRO settings
(`engine.deepspeed_config`; `--zero-extra` overrides them), measured in one run (ratios are
what count on a shared machine). Peak RSS growth per worker (after imports, before the model
is built) is set beside the plan's estimate (`plan.memory_terms`; bench_memory.py breaks it down).

    .venv/bin/python bench/bench_step.py [--steps 30] [--sizes S2,S4,S5] [--out bench/step.md]
        [--modes ddp,zero0,zero2,zero3] [--repeats 3] [--zero-extra '{"contiguous_gradients": true}']
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from local_group import free_port, set_rank_env
from record import machine, write_run

DIM, POINTS, BATCH = 8, 16, 32  # per worker
WARMUP = 5  # steps left out of the median


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(rank: int, port: int, size: str, mode: str, steps: int, zero_extra: dict, out) -> None:
    set_rank_env(rank, 2, port)
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    import deepspeed
    import numpy as np
    from bench_memory import spec_for

    from reliscale.models.build import ICLDecoder
    from reliscale.spec.ladder import DECODER_LADDER
    from reliscale.tasks.icl import sample_prompts
    from reliscale.worker.engine import deepspeed_config, init_deepspeed_comm, merge

    init_deepspeed_comm()
    base_rss = rss_mb()
    torch.manual_seed(0)
    model = ICLDecoder(DECODER_LADDER[size], DIM, POINTS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trials (engine.build_engine)
    if mode == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
    else:
        stage = int(mode[-1])
        zero = merge(deepspeed_config(spec_for(size, stage).spec)["zero_optimization"], zero_extra)
        net, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config={
            "train_batch_size": 2 * BATCH, "train_micro_batch_size_per_gpu": BATCH,
            "zero_optimization": zero, "steps_per_print": 10**9})
    times = []
    for step in range(steps):
        batch = sample_prompts(np.random.default_rng([rank, step]), BATCH, {"dense_linear": 1}, DIM, POINTS)
        batch = {k: torch.as_tensor(v) for k, v in batch.items()}
        dist.barrier()
        t0 = time.perf_counter()
        loss = net(batch).mean()
        if mode == "ddp":
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            net.backward(loss)
            net.step()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        n = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        out.put({"size": size, "mode": mode, "step_ms": 1000 * statistics.median(times[WARMUP:]),
                 "rss_growth_mb": rss_mb() - base_rss, "n_params": n})
    dist.destroy_process_group()
    # Once the result is in the pipe, leave without running destructors: freeing DDP's Reducer
    # can deadlock joining gloo's thread (seen twice at S0, torch 2.13).
    out.close()
    out.join_thread()
    os._exit(0)


def run(size: str, mode: str, steps: int, zero_extra: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, size, mode, steps, zero_extra, q)) for r in range(2)]
    for p in procs:
        p.start()
    while q.empty():
        if any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError(f"a worker of {size}/{mode} died: exit codes {[p.exitcode for p in procs]}")
        time.sleep(0.5)
    result = q.get()
    for p in procs:
        p.join()
    return result


def estimate_mb(size: str, stage: int) -> float:
    """The plan's estimate for the same workload (bench_memory's spec: d=8, 16 pairs, micro-batch 32)."""
    from bench_memory import spec_for

    from reliscale.driver.plan import memory_terms, param_counts

    trial = spec_for(size, stage)
    return sum(memory_terms(trial, param_counts([trial])[trial.trial_id]).values()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--sizes", default="S2,S4,S5")
    ap.add_argument("--modes", default="ddp,zero0,zero2,zero3")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all modes, interleaved")
    ap.add_argument("--zero-extra", default="{}", help="JSON merged into the platform's zero_optimization (A/B trials)")
    ap.add_argument("--out", default="bench/step.md")
    args = ap.parse_args()
    if args.steps <= WARMUP:
        ap.error(f"--steps {args.steps}: the first {WARMUP} steps are warm-up, give at least {WARMUP + 1}")
    zero_extra = json.loads(args.zero_extra)
    modes = args.modes.split(",")
    rows = []
    for size in args.sizes.split(","):
        rounds = [{m: run(size, m, args.steps, zero_extra) for m in modes} for _ in range(args.repeats)]
        for mode in modes:
            ratios = [r[mode]["step_ms"] / r["ddp"]["step_ms"] for r in rounds]
            last = rounds[-1][mode]
            est = "" if mode == "ddp" else f"{estimate_mb(size, int(mode[-1])):.0f}"
            rows.append(f"| {size} | {last['n_params'] / 1e6:.2f}M | {mode} | "
                        f"{statistics.median(r[mode]['step_ms'] for r in rounds):.1f} | "
                        f"{statistics.median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} | "
                        f"{last['rss_growth_mb']:.0f} | {est} |")
            print(rows[-1], flush=True)
    header = (f"# Step time and memory: DeepSpeed ZeRO vs plain PyTorch DDP\n\n"
              f"- machine: {machine()}, torch {torch.__version__}, 2 workers x 1 thread, gloo, fp32, fused AdamW (as the trials)\n"
              f"- command: `.venv/bin/python bench/bench_step.py --steps {args.steps} --sizes {args.sizes} "
              f"--modes {args.modes} --repeats {args.repeats}"
              + (f" --zero-extra '{args.zero_extra}'" if args.zero_extra != "{}" else "") + "`\n"
              f"- model: ICL decoder, d={DIM}, {POINTS} pairs (32 tokens), micro-batch {BATCH} per worker\n"
              f"- step: forward + backward + optimizer step, median of steps {WARMUP + 1}..{args.steps}; with several\n"
              f"  rounds (all modes in turn, so each ratio compares runs minutes apart), the median over\n"
              f"  rounds and the range of the per-round ratios\n"
              f"- RSS growth (last round): peak RSS of rank 0 minus its RSS after imports and process-group\n"
              f"  setup; estimate: the plan's estimate (`plan.memory_terms`, see bench/memory.md)\n\n"
              "| size | params | engine | step ms | ratio to DDP | ratio range | RSS growth MB | plan estimate MB |\n"
              "|---|---|---|---|---|---|---|---|\n")
    write_run(args.out, header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
