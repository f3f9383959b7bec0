"""The per-worker training loop of one trial (runs inside a Ray Train worker).

build task and model → DeepSpeed engine → stream micro-batches until the data
budget is consumed → at log-spaced eval points: evaluate, log to MLflow (rank 0),
checkpoint every rank's DeepSpeed state and report to Ray Train.
A restarted worker group resumes from the latest readable checkpoint: same step,
same data position (batches are a pure function of seed, rank, step), same
optimizer and schedule state, same objective weights.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist

from reliscale.evaluation.evaluators import eval_schedule
from reliscale.models.build import build_model
from reliscale.tasks import build_evaluator, build_task
from reliscale.tracking import DIVERGED_WHY, OUTCOME, TrialLogger
from reliscale.worker.engine import build_engine, init_deepspeed_comm
from reliscale.worker.faults import maybe_kill_worker
from reliscale.worker.objectives import build_objective
from reliscale.worker.ranks import several_ranks

log = logging.getLogger("reliscale.worker.loop")
CKPT_TAG = "ds"
# Between eval points a trial reports its progress (data seen, running loss) this many times,
# at most every MIN_PROGRESS_STEPS steps, so that the live view moves during long stretches.
PROGRESS_REPORTS = 20
MIN_PROGRESS_STEPS = 50


def _restore(engine, objective) -> int:
    """Load the latest readable checkpoint; returns the number of optimizer steps already done."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    latest = Path(ckpt.path)
    # Kept checkpoints sit side by side in the trial's storage folder, newest last.
    candidates = sorted(p for p in latest.parent.glob("step_*") if p.is_dir())[::-1] or [latest]
    for path in candidates:
        try:
            _, client = engine.load_checkpoint(str(path), tag=CKPT_TAG)
            if client is None:
                raise RuntimeError("no DeepSpeed state in it")
        except Exception as e:
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path.name, e)
            continue
        if path != candidates[0]:
            log.warning("resumed from %s instead of the newest checkpoint %s", path.name, candidates[0].name)
        objective.load_state_dict(client["objective"])
        return int(client["step"])
    log.warning("no readable checkpoint; starting from scratch")
    return 0


def _mean_over_ranks(total: float, count: int) -> float:
    t = torch.tensor([total, count], dtype=torch.float64)
    if several_ranks():
        dist.all_reduce(t)
    return float(t[0] / max(t[1], 1))


def _position(step: int, trial) -> dict:
    """Where the trial is after `step` steps: what every report to Tune carries."""
    return {"step": step, "data_seen": step * trial.data_per_step, "data_size": trial.data_size}


class Divergence:
    """Whether a trial has diverged, checked wherever the loop reduces its loss over ranks.

    Diverged: the mean training loss is not finite, or (without fp16's loss scaling, which
    skips steps by design) DeepSpeed skipped every optimizer step since the last check because
    the gradients were not finite: the weights no longer move, so the rest of the budget would
    train nothing. Both quantities are the same on every rank, so every rank stops together.
    """

    def __init__(self, engine, precision: str, step: int):
        self.engine, self.scaled = engine, precision == "fp16"
        self.step, self.skipped = step, engine.skipped_steps

    def check(self, step: int, loss: float) -> str | None:
        """Why the trial diverged by optimizer step `step`, or None."""
        skipped = self.engine.skipped_steps - self.skipped
        steps = step - self.step
        self.step, self.skipped = step, self.engine.skipped_steps
        if not math.isfinite(loss):
            return f"training loss {loss}"
        if not self.scaled and steps > 0 and skipped == steps:
            return f"non-finite gradients: DeepSpeed skipped all {steps} steps since step {step - steps}"
        return None


def _quiet_report_lines() -> None:
    """Ray Train 2.60 logs every report at INFO on a logger named by its source file, outside
    `ray.train` where `LoggingConfig` would reach it: a line per report and rank in the console."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop(config: dict) -> None:
    t_start = time.perf_counter()
    _quiet_report_lines()
    trial, run_id, uri = config["trial"], config["run_id"], config["tracking_uri"]
    spec = trial.spec
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(spec.resources.threads_per_worker)
    timings: dict[str, float] = defaultdict(float)

    init_deepspeed_comm()
    torch.manual_seed(trial.seed)  # identical initial weights on every rank
    task = build_task(trial, world, config.get("cache_dir"))
    model = build_model(trial)
    if config.get("init_from"):  # a fine-tune starts from a trained (or patched) model's full weights
        from reliscale.patch.interpolate import checkpoint_weights

        model.load_state_dict(checkpoint_weights(config["init_from"]))
    if spec.train.activation_checkpointing:
        for module in model.modules():  # the transformers stacks; older releases name it gradient_...
            enable = (getattr(module, "activation_checkpointing_enable", None)
                      or getattr(module, "gradient_checkpointing_enable", None))
            if enable is not None:
                enable()
    t0 = time.perf_counter()
    engine = build_engine(model, spec, trial.steps, trial.lr)
    timings["time/deepspeed_init_s"] = time.perf_counter() - t0
    objective = build_objective(trial.objective, task.num_groups, spec.objective_options.step_size)
    evaluator = build_evaluator(task, trial)
    start = _restore(engine, objective)

    logger = TrialLogger(uri, run_id) if rank == 0 else None
    already = logger.logged_steps("train/loss") if logger else set()
    finished_before = logger.finished() if logger else False
    if logger and not finished_before:
        logger.start()
        logger.set_tags({"reliscale.node_id": ray.get_runtime_context().get_node_id()})
    evals = [s for s in eval_schedule(trial.steps, spec.eval.points) if s > start]
    micro, accum = spec.micro_batch(), spec.grad_accumulation()
    loss_sum, loss_n = 0.0, 0
    progress_every = max(MIN_PROGRESS_STEPS, trial.steps // PROGRESS_REPORTS)
    divergence = Divergence(engine, spec.train.precision, start)
    timings["time/setup_s"] = time.perf_counter() - t_start

    engine.train()
    for step in range(start, trial.steps):
        t0 = time.perf_counter()
        for m in range(accum):
            batch = {k: torch.as_tensor(v, device=engine.device)
                     for k, v in task.train_batch(step, m, rank, micro).items()}
            loss = objective(engine(batch), batch["group"])
            engine.backward(loss)
            engine.step()
            loss_sum += loss.item()
            loss_n += 1
        timings["time/train_s"] += time.perf_counter() - t0
        maybe_kill_worker(trial.study, trial.trial_id, rank, step + 1)
        if step + 1 not in evals and (step + 1) % progress_every:
            continue
        t0 = time.perf_counter()
        train_loss = _mean_over_ranks(loss_sum, loss_n)
        why = divergence.check(step + 1, train_loss)
        if why is not None:
            _stop_diverged(None if finished_before else logger, evaluator, trial, step + 1, train_loss, why, timings)
            return
        if step + 1 not in evals:  # a report with no checkpoint and nothing logged: only the live view reads it
            ray.train.report({**_position(step + 1, trial), "train/loss": train_loss})
            timings["time/progress_report_s"] += time.perf_counter() - t0  # the loss reduce included, as before
            continue

        t0 = time.perf_counter()
        engine.eval()
        metrics = evaluator.run(engine.module, engine.device, rank, world)
        timings["time/eval_s"] += time.perf_counter() - t0
        metrics["train/loss"] = train_loss
        metrics["train/lr"] = engine.get_lr()[0]
        metrics["train/skipped_steps"] = engine.skipped_steps
        if task.num_groups > 1:
            for name, w, g_loss in zip(task.group_names, objective.weights(), objective.group_loss.tolist(),
                                       strict=True):
                metrics[f"train/group_weight/{name}"] = w
                metrics[f"train/group_loss/{name}"] = g_loss
        loss_sum, loss_n = 0.0, 0
        seen = (step + 1) * trial.data_per_step

        t0 = time.perf_counter()
        if logger and seen not in already:
            logger.log_metrics(metrics, step=seen)
        timings["time/log_s"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag=CKPT_TAG,
                                   client_state={"step": step + 1, "objective": objective.state_dict()})
            report = {**_position(step + 1, trial), **metrics}
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step_{step + 1:09d}")
        timings["time/checkpoint_report_s"] += time.perf_counter() - t0
        engine.train()

    if logger and not finished_before:
        _finish(logger, evaluator, trial.steps * trial.data_per_step, timings)


def _stop_diverged(logger: TrialLogger | None, evaluator, trial, step: int, loss: float, why: str,
                   timings: dict[str, float]) -> None:
    """End a diverged trial as done, not failed: a retry from its checkpoint would diverge again.

    Rank 0 logs the loss and `train/diverged_at` (data seen), tags the run
    `reliscale.outcome=diverged` (the analysis leaves such trials out of fits) and finishes it;
    every rank then reports `diverged` to Tune, with no checkpoint.
    """
    seen = step * trial.data_per_step
    if logger:
        log.warning("trial %s diverged at step %d (%d / %d seen): %s", trial.trial_id, step, seen,
                    trial.data_size, why)
        logger.log_metrics({"train/loss": loss, "train/diverged_at": seen}, step=seen)
        logger.set_tags({OUTCOME: "diverged", DIVERGED_WHY: why})
        _finish(logger, evaluator, seen, timings)
    ray.train.report({**_position(step, trial), "train/loss": loss, "diverged": why})


def _finish(logger: TrialLogger, evaluator, seen: int, timings: dict[str, float]) -> None:
    """Artifacts (curves, plots, predictions) and the timing breakdown at `seen`; then close the run."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in evaluator.write_artifacts(Path(tmp)):
            logger.log_artifact(path, "eval")
    logger.log_metrics({k: float(np.round(v, 4)) for k, v in timings.items()}, step=seen)
    logger.finish()
