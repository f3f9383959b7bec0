"""What the platform costs: the same ICL trials as (a) a plain PyTorch loop in one process and
(b) through reliscale (Ray Tune + Ray Train + DeepSpeed ZeRO-2 + MLflow), in one run.

(a) uses reliscale's own task, model, schedule and evaluator, with torch using both cores;
(b) runs the trials one after another (max_concurrent_trials=1) so each trial's overhead
is its own, unless `--set resources.max_concurrent_trials=N` asks for the platform's
concurrency (e.g. two one-thread trials side by side against (a)'s one two-thread loop).
The breakdown of (b) comes from the `time/*` metrics every trial logs. With N > 1 the plain
loop also runs as N one-thread processes side by side, (a2): the same use of the cores as (b),
so b / a2 is the platform's cost alone and b / a what a researcher gains or loses against the
one-process loop.

    .venv/bin/python bench/bench_platform.py [--sizes 3.2e4,6.4e4] [--model S1] [--set KEY=VALUE ...]
        [--repeats 1] [--out bench/platform.md]

`--set` overrides any other key of the job, as `reliscale submit --set` does (e.g. one worker
with both cores: `--set resources.workers=1 --set resources.cpus_per_worker=1.99 --set train.zero_stage=0`).

On a shared machine the plain loop alone moves 15-23 % between runs minutes apart, so a ratio from
one round of (a) then (b) carries that drift: `--repeats N` runs N rounds, alternating which of the
two goes first, and reports each round and the median ratio.

Each run is appended to the output file, so earlier runs stay beside the new one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from record import machine

REPO = Path(__file__).resolve().parents[1]
PARTS = ("time/setup_s", "time/deepspeed_init_s", "time/train_s", "time/eval_s", "time/log_s",
         "time/checkpoint_report_s")


def plain_loop(trial) -> float:
    """One trial in one process: same data, model, optimizer, schedule and eval points."""
    from reliscale.evaluation.predict import eval_schedule
    from reliscale.tasks import build_evaluator, build_model, build_task
    from reliscale.worker.engine import lr_lambda
    from reliscale.worker.objectives import build_objective

    t0 = time.perf_counter()
    spec = trial.spec
    torch.manual_seed(trial.seed)
    task = build_task(trial, 1)
    model = build_model(trial)
    o = spec.train.optimizer
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(trial.steps, spec.train.schedule.warmup_frac,
                                                             spec.train.schedule.min_lr_frac))
    objective = build_objective(trial.objective, task.num_groups, spec.objective_options.step_size)
    evaluator = build_evaluator(task, trial)
    evals = set(eval_schedule(trial.steps, spec.eval.points))
    for step in range(trial.steps):
        model.train()
        batch = {k: torch.as_tensor(v) for k, v in task.train_batch(step, 0, 0, spec.data.batch_size).items()}
        loss = objective(model(batch), batch["group"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        if step + 1 in evals:
            model.eval()
            evaluator.run(model, "cpu", 0, 1)
    return time.perf_counter() - t0


def _one_thread() -> None:
    torch.set_num_threads(1)


def plain_side_by_side(trials, n: int) -> float:
    """The plain loop of every trial in n one-thread processes at once; returns total wall time."""
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(n, multiprocessing.get_context("spawn"),
                                                initializer=_one_thread) as pool:
        list(pool.map(plain_loop, trials))
    return time.perf_counter() - t0


def plain_round(trials, concurrent_trials: int) -> tuple[dict[str, float], float | None]:
    """(a) every trial's plain loop, one process of 2 threads; (a2) with N > 1, N one-thread processes."""
    torch.set_num_threads(2)
    plain = {t.trial_id: plain_loop(t) for t in trials}
    torch.set_num_threads(1)
    return plain, plain_side_by_side(trials, concurrent_trials) if concurrent_trials > 1 else None


def platform_round(spec) -> tuple[float, float, dict[str, float], dict[str, dict[str, float]]]:
    """(b) the grid as a reliscale study on a fresh local Ray: Ray's start, the total, each trial's
    wall time and its logged `time/*` metrics."""
    import ray

    from reliscale.driver.study import StudyPaths, run_study
    from reliscale.tracking import StudyRuns

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # A fresh local cluster (never one another user started on this machine), short temp dir.
        ray.init(address="local", _temp_dir="/tmp/rs_bench", runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
        ray_start = time.perf_counter() - t0
        try:
            results = run_study(spec, Path(tmp), progress_interval_s=3600)
            total = time.perf_counter() - t0
        finally:
            ray.shutdown()
        assert not [r for r in results if r.error]
        runs = StudyRuns(StudyPaths(spec, Path(tmp)).tracking_uri, spec.name).trial_runs()
        wall = {r.config["trial_id"]: r.metrics["time_total_s"] for r in results}
        metrics = {trial_id: dict(run.data.metrics) for trial_id, run in runs.items()}
    return ray_start, total, wall, metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="3.2e4,6.4e4")
    ap.add_argument("--model", default="S1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of (a) and (b), their order alternating: (a) first in the first round")
    ap.add_argument("--out", default="bench/platform.md")
    args = ap.parse_args()
    from reliscale.spec.schema import expand, load_spec

    overrides = [f"data.sizes=[{args.sizes}]", f"model.sizes=[{args.model}]", "resources.max_concurrent_trials=1",
                 "name=bench_platform", *args.set]
    spec = load_spec(REPO / "jobs" / "icl_smoke.yaml", overrides)
    trials = expand(spec)
    concurrent_trials = spec.resources.max_concurrent_trials

    load_before = os.getloadavg()
    rounds = []
    for i in range(args.repeats):
        done = {}
        for part in (("a", "b") if i % 2 == 0 else ("b", "a")):
            done[part] = plain_round(trials, concurrent_trials) if part == "a" else platform_round(spec)
        rounds.append(done)

    r = spec.resources
    sets = "".join(f" --set {kv}" for kv in args.set)
    together = ("trials one at a time" if concurrent_trials == 1
                else f"up to {concurrent_trials} trials at a time in (b)")
    load = " / ".join(f"{x:.1f}" for x in (*load_before, *os.getloadavg()))
    lines = [
        "## Run of " + f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n",
        f"- load average (1/5/15 min) at start / end: {load} on {os.cpu_count()} cores (shared machine)",
        f"- machine: {machine()}, torch {torch.__version__}",
        f"- command: `.venv/bin/python bench/bench_platform.py --sizes {args.sizes} --model {args.model}{sets}"
        + (f" --repeats {args.repeats}`" if args.repeats > 1 else "`"),
        f"- grid: jobs/icl_smoke.yaml with the sizes above, {together}; (a) one process, 2 torch "
        f"threads; (b) {r.workers} Ray Train worker(s) x {r.cpus_per_worker:g} CPU, DeepSpeed "
        f"ZeRO-{spec.train.zero_stage}, MLflow sqlite, checkpoint at every eval point"
        + (f"; {args.repeats} rounds, (a) first in odd rounds, (b) first in even ones\n" if args.repeats > 1 else "\n"),
        "| round | trial | steps | (a) plain s | (b) trial wall s | ratio | setup s | DS init s | train s | "
        "eval s | log s | ckpt+report s | outside loop s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary, study_ratios, trial_ratios = [], [], {t.trial_id: [] for t in trials}
    for i, done in enumerate(rounds, 1):
        (plain, side_by_side), (ray_start, total, wall, metrics) = done["a"], done["b"]
        for t in trials:
            m = metrics[t.trial_id]
            inside = sum(m[p] for p in PARTS if p != "time/deepspeed_init_s")  # DS init is inside setup
            ratio = wall[t.trial_id] / plain[t.trial_id]
            trial_ratios[t.trial_id].append(ratio)
            lines.append(f"| {i} | {t.trial_id} | {t.steps} | {plain[t.trial_id]:.1f} | {wall[t.trial_id]:.1f} | "
                         f"{ratio:.2f} | " + " | ".join(f"{m[p]:.1f}" for p in PARTS)
                         + f" | {wall[t.trial_id] - inside:.1f} |")
        total_plain = sum(plain.values())
        study_ratios.append(total / total_plain)
        line = (f"Round {i}: Ray start {ray_start:.1f} s. Study total: (a) {total_plain:.1f} s, (b) {total:.1f} s, "
                f"ratio b/a = {total / total_plain:.2f}; overhead per trial "
                f"(b - a) / trials = {(total - total_plain) / len(trials):.1f} s.")
        if side_by_side is not None:
            line += (f" (a2) the plain loops as {concurrent_trials} one-thread processes side by side: "
                     f"{side_by_side:.1f} s, ratio b/a2 = {total / side_by_side:.2f}; "
                     f"(b - a2) / trials = {(total - side_by_side) / len(trials):.1f} s.")
        summary.append(line)
    lines += ["", *summary]
    if args.repeats > 1:
        lines += ["", f"Median over {args.repeats} rounds: study b/a {statistics.median(study_ratios):.2f}; "
                  + "; ".join(f"{tid} {statistics.median(v):.2f}" for tid, v in trial_ratios.items()) + "."]
    out = Path(args.out)
    old = out.read_text() if out.exists() else "# Platform overhead: plain PyTorch loop vs reliscale\n"
    out.write_text(old.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")  # runs accumulate, newest last
    print("\n".join(lines))


if __name__ == "__main__":
    main()
