"""A trial's training loop, step for step, in five environments: where its slowdown comes from.

bench_platform.py finds a trial's loop 1.14-1.32x slower than the plain loop. Here the same
loop — the platform's task sampler, model, objective and DeepSpeed engine, one worker per trial:
two trials of one thread side by side, or `--trials 1`, one of two threads — runs
  (a) in plain processes,
  (b) in Ray actors on a local Ray without its dashboard,
  (c) in Ray actors beside the dashboard (the local Ray that `reliscale run` starts),
  (d) as (c) with as many idle actors beside them as the helper actors a training trial keeps
      alive (HELPERS_PER_TRIAL, HELPERS_PER_STUDY): every idle Ray worker process still wakes
      ~100 times a second (the core worker's 10 ms signal check), and on two busy cores each
      wake-up preempts the loop; the run records how often one of them woke,
  (e) as reliscale trials: Ray Tune + Ray Train + MLflow, their helper actors beside them.
Per-step time is the loop's own time over all its steps (a trial's `time/train_s`: evals, logging
and reports are outside it). Environments run in turn, `--repeats` rounds.

    .venv/bin/python bench/bench_loop.py [--steps 1500] [--model S1] [--trials 2] [--repeats 2] [--out bench/loop.md]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from local_group import free_port, set_rank_env
from record import machine, write_run

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENTS = ("plain", "ray", "ray+dashboard", "ray+idle helpers", "trial")
# Actors that stay alive, mostly idle, while a trial trains: Ray Train's SynchronizationActor;
# and, once per Ray cluster, Ray Train's _AutoscalingCoordinatorActor (bench/platform.md has the
# census). Four a trial on 2026-12-02 until trials stopped starting Ray Train's
# PlacementGroupCleaner, three until their controller ran in the Tune trial actor, which took
# Tune's result queue (_QueueActor) along (reliscale.trial.trainer).
HELPERS_PER_TRIAL = 1
HELPERS_PER_STUDY = 1


def loop_ms(trial, port: int) -> float:
    """Mean step time of `trial`'s loop as `train.train_loop` runs it on a lone rank."""
    set_rank_env(0, 1, port)
    spec = trial.spec
    torch.set_num_threads(spec.resources.threads_per_worker)
    from reliscale.tasks import build_model, build_task
    from reliscale.worker.engine import build_engine, init_deepspeed_comm
    from reliscale.worker.objectives import build_objective

    init_deepspeed_comm()
    torch.manual_seed(trial.seed)
    task = build_task(trial, 1)
    engine = build_engine(build_model(trial), spec, trial.steps, trial.lr)
    objective = build_objective(trial.objective, task.num_groups, spec.objective_options.step_size)
    engine.train()
    t0 = time.perf_counter()
    for step in range(trial.steps):
        batch = {k: torch.as_tensor(v) for k, v in task.train_batch(step, 0, 0, spec.micro_batch()).items()}
        loss = objective(engine(batch), batch["group"])
        engine.backward(loss)
        engine.step()
        loss.item()
    return (time.perf_counter() - t0) / trial.steps * 1e3


def _loop_in_fresh_process(trial) -> float:
    return loop_ms(trial, free_port())


def in_processes(trials) -> list[float]:
    with multiprocessing.get_context("spawn").Pool(len(trials)) as pool:
        return pool.map(_loop_in_fresh_process, trials)


class IdleActor:
    def pid(self) -> int:
        return os.getpid()


def wakeups(pid: int) -> int:
    """Times any thread of process `pid` went to sleep and woke again (voluntary context switches)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def in_ray_actors(trials, dashboard: bool, idle_actors: int = 0,
                  wakeup_rates: list[float] | None = None) -> list[float]:
    """The loops in Ray actors; with `idle_actors` more actors doing nothing beside them, and the
    wake-ups a second of one of those appended to `wakeup_rates`."""
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=dashboard, _temp_dir="/tmp/rs_bench")
    try:
        idle = [ray.remote(num_cpus=0)(IdleActor).remote() for _ in range(idle_actors)]
        pids = ray.get([a.pid.remote() for a in idle])
        cpus = trials[0].spec.resources.cpus_per_worker
        remote = ray.remote(num_cpus=cpus)(loop_ms)
        t0, before = time.perf_counter(), wakeups(pids[0]) if pids else 0
        ms = ray.get([remote.remote(t, free_port()) for t in trials])
        if pids and wakeup_rates is not None:
            wakeup_rates.append((wakeups(pids[0]) - before) / (time.perf_counter() - t0))
        return ms
    finally:
        ray.shutdown()


def as_trials(spec, trials) -> list[float]:
    import ray

    from reliscale.driver.study import StudyPaths, run_study
    from reliscale.tracking import StudyRuns

    ray.init(address="local", num_cpus=os.cpu_count(), _temp_dir="/tmp/rs_bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = run_study(spec, Path(tmp), progress_interval_s=3600)
            assert not [r for r in results if r.error]
            runs = StudyRuns(StudyPaths(spec, Path(tmp)).tracking_uri, spec.name).trial_runs()
            return [runs[t.trial_id].data.metrics["time/train_s"] / t.steps * 1e3 for t in trials]
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--model", default="S1")
    ap.add_argument("--trials", type=int, choices=(1, 2), default=2,
                    help="trials side by side: 2 of one thread each, or 1 of two threads")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench/loop.md")
    args = ap.parse_args()
    from reliscale.spec.schema import expand, load_spec

    # jobs/icl_smoke.yaml's task, one seed per trial: the 2 cores shared by one-worker trials
    cpus = 1.99 if args.trials == 1 else 0.99
    overrides = [f"model.sizes=[{args.model}]", f"data.sizes=[{args.steps * 64}]", "data.batch_size=64",
                 "train.zero_stage=0", "resources.workers=1", f"resources.cpus_per_worker={cpus}",
                 f"resources.max_concurrent_trials={args.trials}", "eval.points=2", f"seeds={args.trials}",
                 "name=bench_loop"]
    spec = load_spec(REPO / "jobs" / "icl_smoke.yaml", overrides)
    trials = expand(spec)
    helpers = HELPERS_PER_TRIAL * len(trials) + HELPERS_PER_STUDY
    wakeup_rates: list[float] = []
    run = {
        "plain": lambda: in_processes(trials),
        "ray": lambda: in_ray_actors(trials, dashboard=False),
        "ray+dashboard": lambda: in_ray_actors(trials, dashboard=True),
        "ray+idle helpers": lambda: in_ray_actors(trials, True, helpers, wakeup_rates),
        "trial": lambda: as_trials(spec, trials),
    }
    load_before = os.getloadavg()
    ms: dict[str, list[float]] = {e: [] for e in ENVIRONMENTS}  # per round: mean over the side-by-side loops
    for _ in range(args.repeats):
        for env in ENVIRONMENTS:
            ms[env].append(statistics.mean(run[env]()))
            print(env, f"{ms[env][-1]:.2f} ms", flush=True)

    load = " / ".join(f"{x:.1f}" for x in (*load_before, *os.getloadavg()))
    lines = [
        "# A trial's training loop in five environments\n",
        f"- load average (1/5/15 min) at start / end: {load}",
        f"- machine: {machine()}, torch {torch.__version__}",
        f"- command: `.venv/bin/python bench/bench_loop.py --steps {args.steps} --model {args.model} "
        f"--trials {args.trials} --repeats {args.repeats}`",
        f"- loop: jobs/icl_smoke.yaml's task at {args.model}, {len(trials)} trial(s) (seeds) side by side, each "
        f"one worker of {spec.resources.threads_per_worker} thread(s), DeepSpeed ZeRO-0; per-step time over all "
        f"{args.steps} steps, mean over the trials, median over {args.repeats} rounds",
        f"- ray+idle helpers: {helpers} idle actors ({HELPERS_PER_TRIAL} a trial + {HELPERS_PER_STUDY}); one of "
        "them woke " + ", ".join(f"{w:.0f}" for w in wakeup_rates) + " times a second (each round)\n",
        "| environment | step ms | ratio to plain | per-round ratios |",
        "|---|---|---|---|",
    ]
    for env in ENVIRONMENTS:
        ratios = [m / p for m, p in zip(ms[env], ms["plain"], strict=True)]
        lines.append(f"| {env} | {statistics.median(ms[env]):.2f} | {statistics.median(ratios):.3f} | "
                     + ", ".join(f"{r:.3f}" for r in ratios) + " |")
    write_run(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
