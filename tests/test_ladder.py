"""Size ladders: exact parameter counts, FLOPs and memory checked against independent references."""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import sys

import pytest

from reliscale.spec import ladder
from reliscale.spec.schema import expand, load_spec
from reliscale.tasks import meta_param_counts


def llama_params(d: int, layers: int, ffn: int, vocab: int) -> tuple[int, int]:
    """Closed form for a Llama decoder with untied embeddings: (total, non-embedding)."""
    per_layer = 4 * d * d + 3 * d * ffn + 2 * d  # q,k,v,o + SwiGLU + two RMSNorms
    nonemb = layers * per_layer + d  # + final norm
    return nonemb + 2 * vocab * d, nonemb


def lm_trial(write_spec, size="S8", vocab=50304):
    doc = {"name": "lm", "model": {"family": "decoder", "sizes": [size]},
           "data": {"task": "lm", "unit": "tokens", "sizes": [1e9], "seq_len": 2048,
                    "vocab_size": vocab, "batch_size": 8},
           "train": {"precision": "bf16", "zero_stage": 3}}
    return expand(load_spec(write_spec(doc)))[0]


def test_largest_decoder_is_within_10_percent_of_1e9_without_allocating_weights(write_spec):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    counts = meta_param_counts(lm_trial(write_spec))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert abs(counts["n_params"] - 1e9) / 1e9 < 0.10, counts
    assert grown_mb < 400, f"counting a 1B model allocated {grown_mb:.0f} MB (fp32 weights are 4 GB)"


@pytest.mark.parametrize("size", ["S0", "S4", "S8"])
def test_decoder_counts_match_the_llama_closed_form(write_spec, size):
    shape = ladder.DECODER_LADDER[size]
    total, nonemb = llama_params(shape.width, shape.depth, shape.ffn_width(8 / 3), 50304)
    counts = meta_param_counts(lm_trial(write_spec, size))
    assert (counts["n_params"], counts["n_params_nonembedding"]) == (total, nonemb)


def test_vit_counts_match_the_vit_closed_form():
    # ViT-B/16 on 224x224 RGB without pooler: 85.8M parameters (Dosovitskiy et al. report 86M).
    import torch
    from transformers import ViTConfig, ViTModel

    with torch.device("meta"):
        model = ViTModel(ViTConfig(), add_pooling_layer=False)
    d, layers, ffn, patches = 768, 12, 3072, 196
    per_layer = 4 * (d * d + d) + 2 * d * ffn + ffn + d + 4 * d
    closed = 3 * 16 * 16 * d + d + d + (patches + 1) * d + layers * per_layer + 2 * d
    assert sum(p.numel() for p in model.parameters()) == closed
    assert abs(closed - 86e6) / 86e6 < 0.01


def test_vit_ladder_reaches_about_1b_at_its_top():
    s = ladder.VIT_LADDER["S8"]
    approx = 12 * s.depth * s.width**2
    assert 0.9e9 < approx < 1.1e9


def test_ladders_step_about_half_a_decade():
    for family, rungs in ladder.LADDERS.items():
        sizes = [12 * s.depth * s.width**2 for s in rungs.values()]
        ratios = [b / a for a, b in itertools.pairwise(sizes)]
        assert all(1.8 < r < 6 for r in ratios), (family, ratios)


def test_training_flops_reproduce_chinchilla_table_3():
    # Hoffmann et al. 2022, Table 3: a 1B-parameter model on 20.2B tokens takes 1.21e20 FLOPs (6ND).
    assert ladder.training_flops(1_000_000_000, 20_200_000_000, 0) == pytest.approx(1.21e20, rel=0.005)


def test_attention_flops_follow_kaplan():
    # Kaplan et al. 2020: forward attention 2·n_layer·n_ctx·d per token, backward twice that.
    size = ladder.ModelSize("x", ladder.Shape(512, 6, 8))
    assert ladder.attention_flops_per_token(size, enc_len=1024) == 3 * 2 * 6 * 1024 * 512


@pytest.mark.parametrize(("stage", "gb"), [(0, 120), (1, 31.4), (2, 16.6), (3, 1.88)])
def test_model_state_memory_reproduces_the_zero_paper(stage, gb):
    # Rajbhandari et al. 2020, Figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam (K=12).
    assert ladder.model_state_bytes(7_500_000_000, stage, 64, "bf16") / 1e9 == pytest.approx(gb, rel=0.01)


def test_fp32_model_states_are_16_bytes_per_parameter_without_zero():
    assert ladder.model_state_bytes(1000, 0, 4, "fp32") == 16_000
    assert ladder.model_state_bytes(1000, 3, 4, "fp32") == 4_000


def test_activation_checkpointing_shrinks_the_activation_estimate():
    size = ladder.ModelSize("S8", ladder.DECODER_LADDER["S8"])
    full = ladder.activation_bytes(size, 4, 2048, "bf16")
    ckpt = ladder.activation_bytes(size, 4, 2048, "bf16", checkpointing=True)
    assert ckpt < full / 5


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "reliscale.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_plan_json_lists_a_1b_trial_with_exact_counts(repo):
    out = run_cli("plan", "jobs/lm_ladder_1b.yaml", "--json", cwd=repo)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    keys = {"trial_id", "family", "size", "n_params", "n_params_nonembedding", "data_size", "flops",
            "workers", "zero_stage", "est_mem_gb_per_worker"}
    assert all(set(r) == keys for r in rows)
    big = max(rows, key=lambda r: r["n_params"])
    s8 = ladder.DECODER_LADDER["S8"]
    assert (big["n_params"], big["n_params_nonembedding"]) == llama_params(s8.width, s8.depth,
                                                                          s8.ffn_width(8 / 3), 50304)
    assert 0.9e9 < big["n_params"] < 1.1e9
    assert all(r["est_mem_gb_per_worker"] < 80 for r in rows)  # fits an 80 GB GPU
    # FLOPs grow linearly in tokens for a fixed size.
    s8_rows = sorted((r for r in rows if r["size"] == "S8"), key=lambda r: r["data_size"])
    assert s8_rows[-1]["flops"] / s8_rows[0]["flops"] == pytest.approx(
        s8_rows[-1]["data_size"] / s8_rows[0]["data_size"])


def test_plan_warns_but_does_not_fail_when_memory_exceeds_a_worker(repo):
    out = run_cli("plan", "jobs/lm_ladder_1b.yaml", "--set", "train.activation_checkpointing=false",
                  "--set", "train.micro_batch=32", cwd=repo)
    assert out.returncode == 0
    assert "warning: decoder-S8_D2e8_erm_none_s0 needs ~" in out.stderr
    assert "more than the 80.0 GB a worker has" in out.stderr
    assert "total training compute" in out.stdout


def test_plan_reports_bad_specs_with_exit_code_2(repo, write_spec):
    path = write_spec({"name": "x", "model": {"family": "decoder", "sizes": ["S0"]}})
    out = run_cli("plan", str(path), cwd=repo)
    assert out.returncode == 2
    assert "data: required key is missing" in out.stderr
