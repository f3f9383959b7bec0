"""What a study will cost before it runs: parameters, FLOPs and memory per trial, and for tasks
that decode their data (images) whether a worker's CPUs can feed its GPUs."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from reliscale.spec import ladder
from reliscale.spec.finetune import finetune_trials
from reliscale.spec.schema import StudySpec, TrialConfig, expand
from reliscale.tasks import TASKS

GPU_MEMORY_GB = 80.0
# The feed check's assumed GPU speed: H100 SXM dense BF16 peak, 989 TFLOP/s (NVIDIA H100 Tensor
# Core GPU datasheet), at an assumed 40 % model FLOPs utilisation. Small models reach less, so
# for them the check overstates what the GPU consumes.
GPU_PEAK_FLOPS = 989e12
ASSUMED_MFU = 0.40


@dataclass(frozen=True)
class PlanRow:
    trial_id: str
    family: str
    size: str
    n_params: int
    n_params_nonembedding: int
    data_size: int
    flops: float
    workers: int
    zero_stage: int
    est_mem_gb_per_worker: float
    # Per worker, only for GPU workers of a task with a loader rate (see `feed_rates`).
    examples_per_s_needed: float | None = None
    loader_examples_per_s: float | None = None


def sequence_lengths(trial: TrialConfig) -> tuple[int, int]:
    """(encoder/decoder-only tokens, decoder tokens) of one example, as the model sees them."""
    return TASKS[trial.spec.data.task].sequence_lengths(trial)


def tokens_seen(trial: TrialConfig) -> int:
    if trial.spec.data.unit == "tokens":
        return trial.data_size
    enc_len, dec_len = sequence_lengths(trial)
    return trial.data_size * (enc_len + dec_len)


def worker_memory_gb(spec: StudySpec) -> float:
    r = spec.resources
    if r.memory_per_worker_gb:
        return r.memory_per_worker_gb
    if r.gpus_per_worker > 0:
        return GPU_MEMORY_GB * r.gpus_per_worker
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return ram / r.workers


def memory_terms(trial: TrialConfig, counts: dict[str, int]) -> dict[str, float]:
    """Bytes per worker, by what holds them (summed into the plan's estimate).

    states: weights, gradients, Adam (the ZeRO paper); deepspeed: DeepSpeed's own copies and
    buckets beyond those; activations: what autograd keeps for backward; runtime: what a
    worker gains on first use; heap: activation blocks glibc keeps resident on CPU workers.
    """
    from reliscale.worker.engine import deepspeed_config

    spec = trial.spec
    train, workers = spec.train, spec.resources.workers
    device = "gpu" if spec.resources.gpus_per_worker > 0 else "cpu"
    enc_len, dec_len = sequence_lengths(trial)
    vocab = TASKS[spec.data.task].vocab_size(spec)
    n = counts["n_params"]
    acts = ladder.activation_bytes(trial.size, spec.micro_batch(), enc_len, train.precision, vocab,
                                   train.activation_checkpointing, trial.family, dec_len)
    return {
        "states": ladder.model_state_bytes(n, train.zero_stage, workers, train.precision),
        "deepspeed": ladder.zero_buffer_bytes(n, train.zero_stage, workers, train.precision,
                                              deepspeed_config(spec)["zero_optimization"], device),
        "activations": acts,
        "runtime": ladder.RUNTIME_BYTES + (ladder.ZERO_OPTIMIZER_BYTES if train.zero_stage else 0),
        "heap": ladder.HEAP_RETENTION * acts if device == "cpu" else 0.0,
    }


def feed_rates(trial: TrialConfig, flops: float) -> tuple[float, float] | None:
    """(examples/s a worker's GPUs train on at GPU_PEAK_FLOPS x ASSUMED_MFU, examples/s its loader
    prepares: cpus_per_worker x the task's per-core rate), or None: CPU workers, or generated data.

    The loader figure counts every CPU of the worker as a decoder: the image task decodes each
    batch on `threads_per_worker` threads and the next batch while the current one trains.
    """
    r = trial.spec.resources
    rate = TASKS[trial.spec.data.task].loader_rate(trial)
    if rate is None or r.gpus_per_worker == 0:
        return None
    need = r.gpus_per_worker * GPU_PEAK_FLOPS * ASSUMED_MFU / (flops / trial.data_size)
    return need, r.cpus_per_worker * rate


def plan_trial(trial: TrialConfig, counts: dict[str, int]) -> PlanRow:
    spec = trial.spec
    enc_len, dec_len = sequence_lengths(trial)
    flops = ladder.training_flops(counts["n_params_nonembedding"], tokens_seen(trial),
                                  ladder.attention_flops_per_token(trial.size, enc_len, dec_len))
    mem = sum(memory_terms(trial, counts).values())
    feed = feed_rates(trial, flops) or (None, None)
    return PlanRow(trial.trial_id, trial.family, trial.size.name, counts["n_params"],
                   counts["n_params_nonembedding"], trial.data_size, flops,
                   spec.resources.workers, spec.train.zero_stage, round(mem / 2**30, 3), *feed)


def param_counts(trials: list[TrialConfig]) -> dict[str, dict[str, int]]:
    """Exact counts per trial; one meta-device model per distinct architecture (the data section
    sizes a model's input and head: a fine-tune's head has the downstream classes)."""
    from reliscale.tasks import meta_param_counts  # torch, on the meta device

    by_arch: dict[tuple, dict[str, int]] = {}
    out = {}
    for t in trials:
        arch = (t.family, t.size, t.technique, t.spec.data.model_dump_json(exclude={"sizes"}))
        if arch not in by_arch:
            by_arch[arch] = meta_param_counts(t)
        out[t.trial_id] = by_arch[arch]
    return out


def plan(spec: StudySpec) -> tuple[list[PlanRow], list[str]]:
    """The plan rows (the grid's trials, then the `finetune` section's) and the warnings: trials
    whose memory estimate exceeds a worker's, and trials whose loader cannot prepare examples as
    fast as their GPUs train on them."""
    grid = expand(spec)
    trials = grid + [ft for _, ft in finetune_trials(spec, grid)]
    counts = param_counts(trials)
    rows = [plan_trial(t, counts[t.trial_id]) for t in trials]
    limit = worker_memory_gb(spec)
    warnings = [
        f"warning: {r.trial_id} needs ~{r.est_mem_gb_per_worker:.1f} GB per worker, more than the "
        f"{limit:.1f} GB a worker has (raise resources.workers or train.zero_stage)"
        for r in rows if r.est_mem_gb_per_worker > limit
    ]
    warnings += [feed_warning(spec, r) for r in rows
                 if r.loader_examples_per_s is not None
                 and r.examples_per_s_needed > r.loader_examples_per_s]
    return rows, warnings


def feed_warning(spec: StudySpec, r: PlanRow) -> str:
    res = spec.resources
    per_cpu = r.loader_examples_per_s / res.cpus_per_worker
    return (f"warning: {r.trial_id} needs ~{r.examples_per_s_needed / res.gpus_per_worker:,.0f} "
            f"examples/s per GPU ({ASSUMED_MFU:.0%} of {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s); its "
            f"loader prepares about {r.loader_examples_per_s:,.0f} on {res.cpus_per_worker:g} CPUs "
            f"per worker; allowed: resources.cpus_per_worker >= "
            f"{math.ceil(r.examples_per_s_needed / per_cpu)}")


def as_dicts(rows: list[PlanRow]) -> list[dict]:
    """Rows as dicts; the feed figures only where the plan has them."""
    feed = ("examples_per_s_needed", "loader_examples_per_s")
    return [{k: v for k, v in asdict(r).items() if v is not None or k not in feed} for r in rows]


def format_table(rows: list[PlanRow]) -> str:
    head = ("trial_id", "family", "size", "params", "non-emb", "data", "FLOPs", "workers", "ZeRO", "mem/worker")
    body = [(r.trial_id, r.family, r.size, _si(r.n_params), _si(r.n_params_nonembedding),
             _si(r.data_size), f"{r.flops:.2e}", str(r.workers), str(r.zero_stage),
             f"{r.est_mem_gb_per_worker:.2f} GB") for r in rows]
    feed = any(r.loader_examples_per_s is not None for r in rows)
    if feed:
        head += ("need/s", "loader/s")
        body = [(*line, f"{r.examples_per_s_needed:,.0f}", f"{r.loader_examples_per_s:,.0f}")
                for line, r in zip(body, rows, strict=True)]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = sum(r.flops for r in rows)
    lines.append(f"\n{len(rows)} trials, total training compute {total:.3e} FLOPs")
    if feed:
        lines.append(f"need/s, loader/s: examples per second per worker that its GPUs train on at "
                     f"{ASSUMED_MFU:.0%} of {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s, that its CPUs decode")
    return "\n".join(lines)


def _si(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))
