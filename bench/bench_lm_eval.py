"""Language-model reliability eval: what one eval point costs against the trial's training.

1. Smoke size, measured (`jobs/lm_text_smoke.yaml` on a dataset prepared here from local text):
   one `LMEvaluator.run` (token splits + one next-line choice task) against the trial's
   steps × training-step time, one process, no Ray, torch threads 1 and 2 by default. The step is forward +
   backward + fused AdamW on the whole batch (plain torch, not the DeepSpeed engine).
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

from reliscale.data.cli import heldout_next_line_task
from reliscale.data.local_text import write_local_corpus
from reliscale.data.prepare import PrepareOptions, prepare
from reliscale.evaluation.choices import causal_lm_logprob_fn, choice_metrics, score_choices
from reliscale.evaluation.lm import as_token_stats
from reliscale.evaluation.predict import eval_schedule, predict_split
from reliscale.evaluation.token_metrics import token_metrics, token_stats
from reliscale.spec import ladder
from reliscale.spec.schema import expand, load_spec
from reliscale.tasks import build_evaluator, build_model, build_task, meta_param_counts
from reliscale.tasks.next_line import write_jsonl

REPO = Path(__file__).resolve().parents[1]
TRAIN_STEPS_PER_ROUND = 10  # training steps timed together in each round
ROUNDS = 3


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, object], rounds: int) -> dict[str, float]:
    """Median seconds of each function over `rounds` rounds that run them one after the other, after
    one warm-up round: on a shared machine the load moves, and each round sees all of them under the same."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k, fn in fns.items():
            t = timed(fn)
            if r:
                times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------- 1. smoke size, measured


def smoke_dataset(root: Path, items: int) -> tuple[Path, Path]:
    """The smoke job's data: ~0.6 MB per domain of local text, BPE 1024, and a next-line task."""
    folders = write_local_corpus(root / "corpus", max_mb=0.6)
    ray.init(num_cpus=2)
    try:
        prepare(PrepareOptions(out=root / "ds", domains=[[f"{d}={f}"] for d, f in folders.items()],
                               train_bpe=1024, heldout_fraction=0.1))
    finally:
        ray.shutdown()
    write_jsonl(heldout_next_line_task(root / "ds", "code", items, choices=4, context_lines=3, seed=0),
                root / "next_line.jsonl")
    return root / "ds", root / "next_line.jsonl"


def smoke_costs(ds: Path, choice_file: Path, cache: Path, threads: int) -> dict:
    spec = load_spec(REPO / "jobs" / "lm_text_smoke.yaml",
                     [f"data.path={ds}", f"eval.choice_tasks=[{choice_file}]"])
    (trial,) = expand(spec)
    task = build_task(trial, 1, cache)
    model = build_model(trial)
    evaluator = build_evaluator(task, trial)
    torch.set_num_threads(threads)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    batch = {k: torch.as_tensor(v) for k, v in task.train_batch(0, 0, 0, spec.data.batch_size).items()}

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

    times = interleaved({"steps_round": train_steps, "eval": lambda: evaluator.run(model, "cpu", 0, 1),
                         "splits": token_splits, "choice": choice_tasks}, ROUNDS)
    return {
        **times, "threads": threads, "step": times["steps_round"] / TRAIN_STEPS_PER_ROUND, "steps": trial.steps,
        "points": len(eval_schedule(trial.steps, spec.eval.points)),
        "split_names": list(evaluator.splits), "examples": spec.eval.examples, "seq_len": spec.data.seq_len,
        "items": {name: len(items) for name, items in task.choice_tasks.items()},
        "params": sum(p.numel() for p in model.parameters()), "vocab": task.vocab_size,
    }


# ---------------------------------------------------------------- 2. 1B, estimated


def ladder_estimate(splits: int, items: int, choices: int, choice_tokens: int) -> dict:
    """Eval and training FLOPs of S8 at 2e10 tokens, the plan's way (non-embedding N, Kaplan attention)."""
    spec = load_spec(REPO / "jobs" / "lm_ladder_1b.yaml", ["model.sizes=[S8]", "data.sizes=[2.0e10]"])
    (trial,) = expand(spec)
    n = meta_param_counts(trial)["n_params_nonembedding"]
    seq, vocab, width = spec.data.seq_len, spec.data.vocab_size, trial.size.enc.width
    train = ladder.training_flops(n, trial.data_size, ladder.attention_flops_per_token(trial.size, seq))
    head_train = 6 * width * vocab * trial.data_size  # the LM head, which the plan's N leaves out

    def forward_per_token(ctx: int) -> int:  # 2·N + the head once per position + attention's forward third
        return 2 * n + 2 * width * vocab + ladder.attention_flops_per_token(trial.size, ctx) // 3

    split_tokens = splits * spec.eval.examples * seq
    choice_seq_tokens = items * choices * choice_tokens
    point = split_tokens * forward_per_token(seq) + choice_seq_tokens * forward_per_token(choice_tokens)
    points = len(eval_schedule(trial.steps, spec.eval.points))
    micro = spec.micro_batch()
    defaults = inspect.signature(token_stats).parameters
    p_chunk, v_chunk = defaults["position_chunk"].default, defaults["vocab_chunk"].default
    return {
        "n": n, "tokens": trial.data_size, "steps": trial.steps, "points": points, "seq": seq, "vocab": vocab,
        "width": width, "splits": splits, "examples": spec.eval.examples, "items": items, "choices": choices,
        "choice_tokens": choice_tokens, "split_tokens": split_tokens, "choice_seq_tokens": choice_seq_tokens,
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
    _ = (-logp.gather(1, y[:, None])[:, 0], p.max(1), (p * p).sum(1) - 2 * p_y + 1, -(p * logp).sum(1))


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
    s = smoke[0]
    hidden, weight, _ = case
    names = ", ".join(s["split_names"])
    choice = ", ".join(f"{k} ({v} items × 4 choices)" for k, v in s["items"].items())
    lines = [
        "# Language-model eval: cost of an eval point against training\n",
        f"- machine: {machine()}, torch {torch.__version__}",
        f"- command: `.venv/bin/python bench/bench_lm_eval.py --items {items} --threads {threads}`",
        "",
        "## Smoke size, measured",
        "",
        f"`jobs/lm_text_smoke.yaml`: decoder S0 ({s['params']:,} parameters, vocabulary {s['vocab']}), "
        f"seq_len {s['seq_len']}, batch 32, {s['steps']} steps, {s['points']} eval points; splits {names} "
        f"({s['examples']} sequences each), choice task {choice}. One process, no Ray; the step is "
        f"forward + backward + fused AdamW (plain torch, not the DeepSpeed engine) on the whole batch, "
        f"{TRAIN_STEPS_PER_ROUND} steps a round. Medians over {ROUNDS} rounds, each running the steps, "
        "a whole eval point (`LMEvaluator.run`), its token splits alone and its choice task alone.",
        "",
        "| threads | step ms | training s | eval point s | token splits s | choice task s "
        "| point / training | all points / training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in smoke:
        training = r["steps"] * r["step"]
        lines.append(f"| {r['threads']} | {1000 * r['step']:.1f} | {training:.2f} | {r['eval']:.3f} | "
                     f"{r['splits']:.3f} | {r['choice']:.3f} | {100 * r['eval'] / training:.1f} % | "
                     f"{100 * r['points'] * r['eval'] / training:.1f} % |")
    e = est
    per_point_frac = e["point"] / e["train"]
    lines += [
        "",
        "## 1B, estimated from FLOPs",
        "",
        f"`jobs/lm_ladder_1b.yaml` at S8 (N = {e['n']:,} non-embedding parameters, width {e['width']}), "
        f"seq {e['seq']}, vocabulary {e['vocab']}, D = {e['tokens']:.0e} tokens ({e['steps']:,} steps), "
        f"{e['points']} eval points. Training 6·N·D + attention (`ladder.training_flops`, as `reliscale "
        f"plan`). An eval point: {e['splits']} splits × {e['examples']} × {e['seq']} = "
        f"{e['split_tokens']:,} tokens, and {e['items']:,} items × {e['choices']} choices × "
        f"{e['choice_tokens']} tokens = {e['choice_seq_tokens']:,} tokens, each at 2·N + 2·width·vocab "
        "(the LM head, once per position) + attention's forward.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| training FLOPs (plan) | {e['train']:.3e} |",
        f"| training FLOPs + LM head (6·width·vocab·D) | {e['train'] + e['head_train']:.3e} |",
        f"| eval FLOPs per point | {e['point']:.3e} |",
        f"| one point / training (plan) | {100 * per_point_frac:.4f} % |",
        f"| all {e['points']} points / training (plan) | {100 * e['points'] * per_point_frac:.3f} % |",
        f"| all points / training + head | {100 * e['points'] * e['point'] / (e['train'] + e['head_train']):.3f} % |",
        f"| chunked head: one float32 logits block {e['p_chunk']} × {e['v_chunk']} | {mib(e['block'])} |",
        f"| chunked head: float32 copy of a weight chunk {e['v_chunk']} × {e['width']} | {mib(e['weight_chunk'])} |",
        f"| full logits [{e['micro']}, {e['seq']}, {e['vocab']}], bf16 / float32 | "
        f"{mib(e['full_bf16'])} / {mib(e['full_fp32'])} |",
        "",
        "## Chunked head vs full logits on the CPU",
        "",
        f"Random hidden {list(hidden.shape)} and weight {list(weight.shape)} in bf16, random targets, one "
        "thread: `token_stats` (its defaults) against float32 logits + log_softmax and the same five "
        f"statistics from them; medians over {ROUNDS} rounds of one call each. Peak RSS growth of one "
        "call (measured once, before the timings); the float32 logits alone are "
        f"{mib(hidden.shape[0] * weight.shape[0] * 4)}.",
        "",
        "| token_stats s | full logits s | token_stats / full | token_stats peak | full logits peak |",
        "|---|---|---|---|---|",
        f"| {head['chunked']:.2f} | {head['full']:.2f} | {head['chunked'] / head['full']:.2f} | "
        f"{mib(peaks['chunked_peak'])} | {mib(peaks['full_peak'])} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/lm_eval.md")
    ap.add_argument("--items", type=int, default=48, help="items of the smoke choice task (<= 74 at 0.6 MB)")
    ap.add_argument("--threads", default="1,2", help="torch threads of the smoke measurements, comma-separated")
    ap.add_argument("--ladder-splits", type=int, default=3, help="token splits at 1B")
    ap.add_argument("--ladder-items", type=int, default=1000, help="choice items at 1B")
    ap.add_argument("--ladder-choices", type=int, default=4)
    ap.add_argument("--ladder-choice-tokens", type=int, default=100, help="tokens per choice sequence at 1B")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ds, choice_file = smoke_dataset(Path(tmp), args.items)
        smoke = [smoke_costs(ds, choice_file, Path(tmp) / "cache", t) for t in map(int, args.threads.split(","))]
    est = ladder_estimate(args.ladder_splits, args.ladder_items, args.ladder_choices, args.ladder_choice_tokens)
    case = head_case()
    peaks = head_peaks(case)
    torch.set_num_threads(1)
    head = interleaved({"chunked": lambda: token_stats(*case), "full": lambda: full_stats(*case)}, ROUNDS)
    text = report(smoke, est, case, peaks, head, args.items, args.threads)
    write_run(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
