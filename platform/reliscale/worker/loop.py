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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist

from reliscale.compat.ray_train import quiet_report_lines
from reliscale.evaluation.predict import eval_schedule
from reliscale.tasks import build_evaluator, build_model, build_task
from reliscale.tracking import DIVERGED, DIVERGED_WHY, NODE_ID, OUTCOME, TrialLogger
from reliscale.worker import checkpoints
from reliscale.worker.engine import build_engine, init_deepspeed_comm
from reliscale.worker.faults import maybe_kill_worker
from reliscale.worker.objectives import build_objective
from reliscale.worker.ranks import several_ranks

log = logging.getLogger("reliscale.worker.loop")
# Between eval points a trial reports its progress (data seen, running loss) this many times,
# at most every MIN_PROGRESS_STEPS steps, so that the live view moves during long stretches.
PROGRESS_REPORTS = 20
MIN_PROGRESS_STEPS = 50


class Timings(defaultdict):
    """Seconds spent per phase, logged as `time/<phase>_s` when the trial finishes."""

    def __init__(self) -> None:
        super().__init__(float)

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self[f"time/{phase}_s"] += time.perf_counter() - t0


class RunningLoss:
    """The training loss since the last report, kept on the device: read (one sync) at reports only."""

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.total = self.total + loss.detach()
        self.count += 1

    def mean_over_ranks(self) -> float:
        """The mean over every rank's micro-batches since the last `reset` (a collective)."""
        t = torch.stack([torch.as_tensor(self.total, dtype=torch.float64).cpu(),
                         torch.tensor(self.count, dtype=torch.float64)])
        if several_ranks():
            dist.all_reduce(t)
        return float(t[0] / max(t[1], 1))

    def reset(self) -> None:
        self.total, self.count = 0.0, 0


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


@dataclass
class Trial:
    """One worker's view of its trial: what the loop steps and what its handlers read."""

    trial: Any
    rank: int
    world: int
    task: Any
    engine: Any
    objective: Any
    evaluator: Any
    logger: TrialLogger | None  # rank 0 of a trial not finished before; None elsewhere
    logged: set[int]  # data-seen steps already in MLflow (a resumed trial logs nothing twice)
    timings: Timings = field(default_factory=Timings)
    start: int = 0  # optimizer steps done before this run of the loop (a resumed trial)

    def position(self, step: int) -> dict:
        """Where the trial is after `step` steps: what every report to Tune carries."""
        return {"step": step, "data_seen": step * self.trial.data_per_step, "data_size": self.trial.data_size,
                "progress": step / self.trial.steps}  # of the budget: ASHA's time, 1.0 exactly at the end


def train_loop(config: dict) -> None:
    t_start = time.perf_counter()
    quiet_report_lines()
    t = setup(config)
    trial, engine, task, objective = t.trial, t.engine, t.task, t.objective
    evals = {s for s in eval_schedule(trial.steps, trial.spec.eval.points) if s > t.start}
    progress_every = max(MIN_PROGRESS_STEPS, trial.steps // PROGRESS_REPORTS)
    micro, accum = trial.spec.micro_batch(), trial.spec.grad_accumulation()
    running = RunningLoss()
    divergence = Divergence(engine, trial.spec.train.precision, t.start)
    t.timings["time/setup_s"] = time.perf_counter() - t_start

    engine.train()
    for step in range(t.start + 1, trial.steps + 1):  # `step` counts optimizer steps done
        with t.timings("train"):
            for m in range(accum):
                batch = {k: torch.as_tensor(v, device=engine.device)
                         for k, v in task.train_batch(step - 1, m, t.rank, micro).items()}
                loss = objective(engine(batch), batch["group"])
                engine.backward(loss)
                engine.step()
                running.add(loss)
        maybe_kill_worker(trial.study, trial.trial_id, t.rank, step)
        if step not in evals and step % progress_every:
            continue
        progress_only = step not in evals
        with t.timings("progress_report") if progress_only else nullcontext():
            train_loss = running.mean_over_ranks()
            why = divergence.check(step, train_loss)
            if why is None and progress_only:  # only the live view reads this report
                ray.train.report({**t.position(step), "train/loss": train_loss})
        if why is not None:
            stop_diverged(t, step, train_loss, why)
            return
        if step in evals:
            eval_point(t, step, train_loss)
            running.reset()
    if t.logger:
        finish(t, trial.steps * trial.data_per_step)


def setup(config: dict) -> Trial:
    """Task, model, engine, objective and evaluator of this worker; the step to resume from."""
    trial, run_id, uri = config["trial"], config["run_id"], config["tracking_uri"]
    spec = trial.spec
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(spec.resources.threads_per_worker)
    timings = Timings()

    init_deepspeed_comm()
    torch.manual_seed(trial.seed)  # identical initial weights on every rank
    task = build_task(trial, world, config.get("cache_dir"))
    model = build_model(trial)
    if config.get("init_from"):  # a fine-tune starts from a trained (or patched) model's weights
        checkpoints.load_start(model, config["init_from"])
    if spec.train.activation_checkpointing:
        for module in model.modules():  # the transformers stacks; older releases name it gradient_...
            enable = (getattr(module, "activation_checkpointing_enable", None)
                      or getattr(module, "gradient_checkpointing_enable", None))
            if enable is not None:
                enable()
    with timings("deepspeed_init"):
        engine = build_engine(model, spec, trial.steps, trial.lr)
    objective = build_objective(trial.objective, task.num_groups, spec.objective_options.step_size)
    evaluator = build_evaluator(task, trial)
    latest = ray.train.get_checkpoint()
    start = checkpoints.restore(engine, objective, None if latest is None else Path(latest.path))

    logger, logged = None, set()
    if rank == 0:
        logger = TrialLogger(uri, run_id)
        if logger.finished():  # a rerun of a finished trial (its storage lost): train, log nothing
            logger = None
        else:
            logged = logger.logged_steps("train/loss")
            logger.start()
            logger.set_tags({NODE_ID: ray.get_runtime_context().get_node_id()})
            logger.log_inputs(task.datasets())
    return Trial(trial, rank, world, task, engine, objective, evaluator, logger, logged, timings, start)


def eval_point(t: Trial, step: int, train_loss: float) -> None:
    """Evaluate, log (rank 0), checkpoint and report to Ray Train: every rank calls it."""
    engine, trial = t.engine, t.trial
    with t.timings("eval"):
        engine.eval()
        metrics = t.evaluator.run(engine.module, engine.device, t.rank, t.world)
        engine.train()
    metrics["train/loss"] = train_loss
    metrics["train/lr"] = engine.get_lr()[0]
    metrics["train/skipped_steps"] = engine.skipped_steps
    if t.task.num_groups > 1:  # group losses are reduced here, where they are logged (a collective)
        for name, w, g_loss in zip(t.task.group_names, t.objective.weights(), t.objective.group_losses(),
                                   strict=True):
            metrics[f"train/group_weight/{name}"] = w
            metrics[f"train/group_loss/{name}"] = g_loss
    seen = step * trial.data_per_step
    with t.timings("log"):
        if t.logger and seen not in t.logged:
            t.logger.log_metrics(metrics, step=seen)
    with t.timings("checkpoint_report"), tempfile.TemporaryDirectory() as tmp:
        checkpoints.save(engine, t.objective, tmp, step)
        ray.train.report({**t.position(step), **metrics}, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoints.step_dir_name(step))


def stop_diverged(t: Trial, step: int, loss: float, why: str) -> None:
    """End a diverged trial as done, not failed: a retry from its checkpoint would diverge again.

    Rank 0 logs the loss and `train/diverged_at` (data seen), tags the run
    `reliscale.outcome=diverged` (the analysis leaves such trials out of fits) and finishes it;
    every rank then reports `diverged` to Tune, with no checkpoint.
    """
    trial = t.trial
    seen = step * trial.data_per_step
    if t.logger:
        log.warning("trial %s diverged at step %d (%d / %d seen): %s", trial.trial_id, step, seen,
                    trial.data_size, why)
        t.logger.log_metrics({"train/loss": loss, "train/diverged_at": seen}, step=seen)
        t.logger.set_tags({OUTCOME: DIVERGED, DIVERGED_WHY: why})
        finish(t, seen)
    ray.train.report({**t.position(step), "train/loss": loss, "diverged": why})


def finish(t: Trial, seen: int) -> None:
    """Artifacts (curves, plots, predictions) and the timing breakdown at `seen`; then close the run."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in t.evaluator.write_artifacts(Path(tmp)):
            t.logger.log_artifact(path, "eval")
    t.logger.log_metrics({k: float(np.round(v, 4)) for k, v in t.timings.items()}, step=seen)
    t.logger.finish()
