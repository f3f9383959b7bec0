"""Language-model reliability eval: what one eval point costs against the trial's training.

1. Smoke size, measured (`jobs/lm_text_smoke.yaml` on a dataset prepared here from local text):
   one `LMEvaluator.run` (token splits + one next-line choice task) against the trial's
   steps × training-step time, one process, no Ray, torch threads 1 and 2 by default. The step is
   forward + backward + fused AdamW on the whole batch (plain torch, not the DeepSpeed engine).
2. 1B, estimated from FLOPs (`jobs/lm_ladder_1b.yaml` at S8 and 2e10 tokens, as `reliscale plan`
   counts them): eval forward FLOPs × points against the training FLOPs, and the logits memory of
   the chunked head against the full [B, T, V] logits.
3. The chunked head (`token_stats`) against full logits + softmax on the CPU at a 50K vocabulary.

    .venv/bin/python bench/bench_lm_eval.py [--out bench/lm_eval.md] [--items 48]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from record import machine, write_run

from reliscale.data.local_text import prepare_local_dataset
from reliscale.evaluation.choices import causal_lm_logprob_fn, choice_metrics, score_choices
from reliscale.evaluation.lm import as_token_stats
from reliscale.evaluation.predict import eval_schedule, predict_split
from reliscale.evaluation.token_metrics import token_metrics, token_stats
from reliscale.spec import ladder
from reliscale.spec.schema import expand, load_spec
from reliscale.tasks import build_evaluator, build_model, build_task, meta_param_counts

REPO = Path(__file__).resolve().parents[1]
TRAIN_STEPS_PER_ROUND = 10  # training steps timed together in each round
ROUNDS = 3


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, object], rounds: int) -> dict[str, float]:
    """Median seconds of each function over `rounds` rounds that run them one after the other,
    after one warm-up round: on a shared machine the load moves, and a round sees all under one."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k, fn in fns.items():
            t = timed(fn)
            if r:
                times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_flops_per_token(trial, n_nonembedding: int, vocab: int, ctx: int) -> int:
    """2·N + the LM head once per position (2·width·vocab) + attention's forward third (Kaplan)."""
    size = trial.size
    attention = ladder.attention_flops_per_token(size, ctx) // 3
    return 2 * n_nonembedding + 2 * size.enc.width * vocab + attention


# ---------------------------------------------------------------- 1. smoke size, measured


def smoke_dataset(root: Path, items: int) -> tuple[Path, Path]:
    """The smoke job's data: ~0.6 MB per domain of local text, BPE 1024, and a next-line task."""
    ray.init(num_cpus=2)
    try:
        return prepare_local_dataset(root, next_line_items=items)
    finally:
        ray.shutdown()


def smoke_costs(ds: Path, choice_file: Path, cache: Path, threads: int) -> dict:
    spec = load_spec(REPO / "jobs" / "lm_text_smoke.yaml",
                     [f"data.path={ds}", f"eval.choice_tasks=[{choice_file}]"])
    (trial,) = expand(spec)
    task = build_task(trial, 1, cache)
    model = build_model(trial)
    evaluator = build_evaluator(task, trial)
    torch.set_num_threads(threads)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    arrays = task.train_batch(0, 0, 0, spec.data.batch_size)
    batch = {k: torch.as_tensor(v) for k, v in arrays.items()}

    def train_step():
        loss = model(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def train_steps():
        model.train()
        for _ in range(TRAIN_STEPS_PER_ROUND):
            train_step()
        model.eval()

    def token_splits():
        for split in evaluator.splits.values():
            arrays = predict_split(model, {"tokens": split["tokens"]}, "cpu", 0, 1)
            token_metrics(as_token_stats(arrays, split["tokens"][:, 1:]), task.token_bytes)

    def choice_tasks():
        logprobs = causal_lm_logprob_fn(model)
        for items in task.choice_tasks.values():
            choice_metrics(items, score_choices(logprobs, evaluator.encode, items, task.seq_len))

    # By FLOPs: a token costs one forward at eval and three (forward + backward) in training, at the
    # same context, so the fraction is one of token counts; choices as scored, in padded batches.
    per_batch = inspect.signature(score_choices).parameters["batch_size"].default
    encode, seq = evaluator.encode, task.seq_len
    lengths = [min(len(encode(it["context"])) + len(encode(c)), seq + 1) - 1
               for items in task.choice_tasks.values() for it in items for c in it["choices"]]
    batches = (lengths[i:i + per_batch] for i in range(0, len(lengths), per_batch))
    choice_tokens = sum(len(b) * max(b) for b in batches)
    split_tokens = sum(len(split["tokens"]) for split in evaluator.splits.values()) * seq
    flop_fraction = (split_tokens + choice_tokens) / (3 * trial.steps * spec.data.batch_size * seq)
    times = interleaved({"steps_round": train_steps,
                         "eval": lambda: evaluator.run(model, "cpu", 0, 1),
                         "splits": token_splits, "choice": choice_tasks}, ROUNDS)
    return {
        **times, "threads": threads, "flop_fraction": flop_fraction,
        "step": times["steps_round"] / TRAIN_STEPS_PER_ROUND, "steps": trial.steps,
        "points": len(eval_schedule(trial.steps, spec.eval.points)),
        "split_names": list(evaluator.splits), "examples": spec.eval.examples, "seq_len": seq,
        "items": {name: len(items) for name, items in task.choice_tasks.items()},
        "params": sum(p.numel() for p in model.parameters()), "vocab": task.vocab_size,
    }


# ---------------------------------------------------------------- 2. 1B, estimated


def ladder_estimate(splits: int, items: int, choices: int, choice_tokens: int) -> dict:
    """Eval and training FLOPs of S8 at 2e10 tokens, the plan's way (non-embedding N, Kaplan
    attention)."""
    spec = load_spec(REPO / "jobs" / "lm_ladder_1b.yaml",
                     ["model.sizes=[S8]", "data.sizes=[2.0e10]"])
    (trial,) = expand(spec)
    n = meta_param_counts(trial)["n_params_nonembedding"]
    seq, vocab, width = spec.data.seq_len, spec.data.vocab_size, trial.size.enc.width
    attention = ladder.attention_flops_per_token(trial.size, seq)
    train = ladder.training_flops(n, trial.data_size, attention)
    head_train = 6 * width * vocab * trial.data_size  # the LM head, which the plan's N leaves out

    def forward_per_token(ctx: int) -> int:
        return forward_flops_per_token(trial, n, vocab, ctx)

    split_tokens = splits * spec.eval.examples * seq
    choice_seq_tokens = items * choices * choice_tokens
    point = (split_tokens * forward_per_token(seq)
             + choice_seq_tokens * forward_per_token(choice_tokens))
    points = len(eval_schedule(trial.steps, spec.eval.points))
    micro = spec.micro_batch()
    defaults = inspect.signature(token_stats).parameters
    p_chunk, v_chunk = defaults["position_chunk"].default, defaults["vocab_chunk"].default
    return {
        "n": n, "tokens": trial.data_size, "steps": trial.steps, "points": points, "seq": seq,
        "vocab": vocab, "width": width, "splits": splits, "examples": spec.eval.examples,
        "items": items, "choices": choices, "choice_tokens": choice_tokens,
        "split_tokens": split_tokens, "choice_seq_tokens": choice_seq_tokens,
        "point": point, "train": train, "head_train": head_train, "micro": micro,
        "p_chunk": p_chunk, "v_chunk": v_chunk, "block": p_chunk * v_chunk * 4,
        "weight_chunk": v_chunk * width * 4, "full_bf16": micro * seq * vocab * 2,
        "full_fp32": micro * seq * vocab * 4,
    }


# ---------------------------------------------------------------- 3. chunked head vs full logits


def peak_rss_growth(fn) -> int:
    """Bytes the process's peak RSS rises above its current RSS while `fn` runs (Linux)."""
    status = Path("/proc/self/status")

    def kib(field: str) -> int:
        line = next(ln for ln in status.read_text().splitlines() if ln.startswith(field))
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    base = kib("VmRSS:")
    fn()
    return kib("VmHWM:") - base


def full_stats(hidden: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> None:
    """The same five statistics from the materialised float32 [N, V] logits."""
    logp = torch.log_softmax(hidden.float() @ weight.float().T, dim=-1)
    p = logp.exp()
    p_y = p.gather(1, y[:, None])[:, 0]
    nll = -logp.gather(1, y[:, None])[:, 0]
    _ = (nll, p.max(1), (p * p).sum(1) - 2 * p_y + 1, -(p * logp).sum(1))


def head_case(n: int = 4096, d: int = 256, vocab: int = 50304) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).bfloat16()
    weight = (torch.randn(vocab, d, generator=g) / d**0.5).bfloat16()
    return hidden, weight, torch.randint(0, vocab, (n,), generator=g)


def head_peaks(case: tuple[torch.Tensor, ...]) -> dict:
    """Measured first, before any timing: glibc keeps freed blocks of a size it has seen for reuse,
    which would hide a later run's allocations from the high-water mark."""
    return {"chunked_peak": peak_rss_growth(lambda: token_stats(*case)),
            "full_peak": peak_rss_growth(lambda: full_stats(*case))}


# ---------------------------------------------------------------- report


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def report(smoke: list[dict], est: dict, case: tuple[torch.Tensor, ...], peaks: dict, head: dict,
           items: int, threads: str) -> str:
    s, e = smoke[0], est
    hidden, weight, _ = case
    choice = ", ".join(f"{k} ({v} items × 4 choices)" for k, v in s["items"].items())
    lines = [
        "# Language-model eval: cost of an eval point against training\n",
        f"- machine: {machine()}, torch {torch.__version__}",
        f"- command: `.venv/bin/python bench/bench_lm_eval.py --items {items} --threads {threads}`",
        "",
        "### Smoke size, measured",
        "",
        f"`jobs/lm_text_smoke.yaml`: decoder S0 ({s['params']:,} parameters, vocabulary "
        f"{s['vocab']}), seq_len {s['seq_len']}, batch 32, {s['steps']} steps, {s['points']} eval "
        f"points; splits {', '.join(s['split_names'])} ({s['examples']} sequences each), choice "
        f"task {choice}. One process, no Ray; the step is forward + backward + fused AdamW (plain "
        "torch, not the DeepSpeed engine) on the whole batch, "
        f"{TRAIN_STEPS_PER_ROUND} steps a round. Medians over {ROUNDS} rounds, each running the "
        "steps, a whole eval point (`LMEvaluator.run`), its token splits alone and its choice task "
        "alone. By FLOPs: eval tokens (choices padded as scored) / (3 × training tokens).",
        "",
        "| threads | step ms | training s | eval point s | token splits s | choice task s "
        "| point / training | all points / training | point / training by FLOPs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in smoke:
        training = r["steps"] * r["step"]
        lines.append(f"| {r['threads']} | {1000 * r['step']:.1f} | {training:.2f} | "
                     f"{r['eval']:.3f} | {r['splits']:.3f} | {r['choice']:.3f} | "
                     f"{100 * r['eval'] / training:.1f} % | "
                     f"{100 * r['points'] * r['eval'] / training:.1f} % | "
                     f"{100 * r['flop_fraction']:.1f} % |")
    with_head = e["train"] + e["head_train"]
    lines += [
        "",
        "### 1B, estimated from FLOPs",
        "",
        f"`jobs/lm_ladder_1b.yaml` at S8 (N = {e['n']:,} non-embedding parameters, width "
        f"{e['width']}), seq {e['seq']}, vocabulary {e['vocab']}, D = {e['tokens']:.0e} tokens "
        f"({e['steps']:,} steps), {e['points']} eval points. Training 6·N·D + attention "
        "(`ladder.training_flops`, as `reliscale plan`). An eval point: "
        f"{e['splits']} splits × {e['examples']} × {e['seq']} = {e['split_tokens']:,} tokens, and "
        f"{e['items']:,} items × {e['choices']} choices × {e['choice_tokens']} tokens = "
        f"{e['choice_seq_tokens']:,} tokens, each at 2·N + 2·width·vocab (the LM head, once per "
        "position) + attention's forward.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| training FLOPs (plan) | {e['train']:.3e} |",
        f"| training FLOPs + LM head (6·width·vocab·D) | {with_head:.3e} |",
        f"| eval FLOPs per point | {e['point']:.3e} |",
        f"| one point / training (plan) | {100 * e['point'] / e['train']:.4f} % |",
        f"| all {e['points']} points / training (plan) | "
        f"{100 * e['points'] * e['point'] / e['train']:.3f} % |",
        f"| all points / training + head | {100 * e['points'] * e['point'] / with_head:.3f} % |",
        f"| chunked head: one float32 logits block {e['p_chunk']} × {e['v_chunk']} | "
        f"{mib(e['block'])} |",
        f"| chunked head: float32 copy of a weight chunk {e['v_chunk']} × {e['width']} | "
        f"{mib(e['weight_chunk'])} |",
        f"| full logits [{e['micro']}, {e['seq']}, {e['vocab']}], bf16 / float32 | "
        f"{mib(e['full_bf16'])} / {mib(e['full_fp32'])} |",
        "",
        "### Chunked head vs full logits on the CPU",
        "",
        f"Random hidden {list(hidden.shape)} and weight {list(weight.shape)} in bf16, random "
        "targets, one thread: `token_stats` (its defaults) against float32 logits + log_softmax "
        f"and the same five statistics from them; medians over {ROUNDS} rounds of one call each. "
        "Peak RSS growth of one call (measured once, before the timings); the float32 logits "
        f"alone are {mib(hidden.shape[0] * weight.shape[0] * 4)}.",
        "",
        "| token_stats s | full logits s | token_stats / full | token_stats peak "
        "| full logits peak |",
        "|---|---|---|---|---|",
        f"| {head['chunked']:.2f} | {head['full']:.2f} | {head['chunked'] / head['full']:.2f} | "
        f"{mib(peaks['chunked_peak'])} | {mib(peaks['full_peak'])} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/lm_eval.md")
    ap.add_argument("--items", type=int, default=48,
                    help="items of the smoke choice task (0.6 MB of held-out code has few lines)")
    ap.add_argument("--threads", default="1,2", help="torch threads of the smoke runs, e.g. 1,2")
    ap.add_argument("--ladder-splits", type=int, default=3, help="token splits at 1B")
    ap.add_argument("--ladder-items", type=int, default=1000, help="choice items at 1B")
    ap.add_argument("--ladder-choices", type=int, default=4)
    ap.add_argument("--ladder-choice-tokens", type=int, default=100,
                    help="tokens per choice sequence at 1B")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ds, choice_file = smoke_dataset(Path(tmp), args.items)
        smoke = [smoke_costs(ds, choice_file, Path(tmp) / "cache", t)
                 for t in map(int, args.threads.split(","))]
    est = ladder_estimate(args.ladder_splits, args.ladder_items, args.ladder_choices,
                          args.ladder_choice_tokens)
    case = head_case()
    peaks = head_peaks(case)
    torch.set_num_threads(1)
    head = interleaved({"chunked": lambda: token_stats(*case), "full": lambda: full_stats(*case)},
                       ROUNDS)
    text = report(smoke, est, case, peaks, head, args.items, args.threads)
    write_run(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
