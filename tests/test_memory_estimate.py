"""The plan's memory estimate, term by term, against independent references.

Activation formulas are checked against what autograd really keeps: every tensor a
`saved_tensors_hooks` pack hook sees during the forward pass of a real transformers
block, counted once per storage, parameters excluded. Per-layer numbers are the
difference between a two-layer and a one-layer stack, so embeddings and heads cancel.
"""

from __future__ import annotations

import pytest
import torch

from reliscale.driver.plan import memory_terms, param_counts
from reliscale.models.build import EncDecBackbone, ICLDecoder, ViTBackbone, embeds_only_llama
from reliscale.spec import ladder
from reliscale.spec.ladder import ModelSize, Shape
from reliscale.spec.schema import expand, validate

H, HEADS, FFN, BATCH = 64, 4, 96, 4
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def saved_bytes(model: torch.nn.Module, run) -> int:
    """Bytes of the distinct non-parameter storages autograd saves while `run(model)` runs."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(model)
    return sum(seen.values())


def per_layer_saved(build, run, precision: str) -> int:
    sizes = []
    for depth in (1, 2):
        torch.manual_seed(0)
        sizes.append(saved_bytes(build(depth).to(DTYPES[precision]), run))
    return sizes[1] - sizes[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_llama_layer_activations_match_what_autograd_saves(precision):
    seq = 12
    x = torch.randn(BATCH, seq, H, dtype=DTYPES[precision])
    measured = per_layer_saved(lambda d: embeds_only_llama(Shape(H, d, HEADS, FFN), seq),
                               lambda m: m(inputs_embeds=x), precision)
    assert ladder.layer_activation_bytes("llama", H, FFN, HEADS, BATCH, seq, precision) == measured


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_vit_layer_activations_match_what_autograd_saves(precision):
    signal = torch.randn(BATCH, 1, 1, 40, dtype=DTYPES[precision])
    measured = per_layer_saved(lambda d: ViTBackbone(ModelSize("x", Shape(H, d, HEADS, FFN)), 40, 4),
                               lambda m: m(signal), precision)
    seq = 40 // 4 + 1  # patches + class token
    estimate = ladder.layer_activation_bytes("vit", H, FFN, HEADS, BATCH, seq, precision)
    assert estimate == pytest.approx(measured, rel=0.01)  # per-token LayerNorm stats: ≤ 8 B assumed


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_t5_encoder_layer_activations_match_what_autograd_saves(precision):
    signal = torch.randn(BATCH, 40, dtype=DTYPES[precision])
    one_dec = Shape(H, 1, HEADS, FFN)
    measured = per_layer_saved(
        lambda d: EncDecBackbone(ModelSize("x", Shape(H, d, HEADS, FFN), one_dec), 40, 4),
        lambda m: m(signal), precision)
    assert ladder.layer_activation_bytes("t5", H, FFN, HEADS, BATCH, 40 // 4, precision) == measured


def test_whole_icl_decoder_activations_are_within_5_percent_of_autograd():
    shape, dim, points, batch = ladder.DECODER_LADDER["S2"], 8, 16, 32
    model = ICLDecoder(shape, dim, points)
    data = {"x": torch.randn(batch, points, dim), "y": torch.randn(batch, points)}
    measured = saved_bytes(model, lambda m: m(data))
    estimate = ladder.activation_bytes(ModelSize("S2", shape), batch, 2 * points, "fp32")
    assert estimate == pytest.approx(measured, rel=0.05)


def test_checkpointed_layers_keep_only_their_input():
    seq = 12
    x = torch.randn(BATCH, seq, H)

    def build(depth: int):
        model = embeds_only_llama(Shape(H, depth, HEADS, FFN), seq)
        model.activation_checkpointing_enable()
        return model.train()

    measured = per_layer_saved(build, lambda m: m(inputs_embeds=x.requires_grad_()), "fp32")
    size = ModelSize("x", Shape(H, 2, HEADS, FFN))
    full_layer = ladder.layer_activation_bytes("llama", H, FFN, HEADS, BATCH, seq, "fp32")
    estimate = ladder.activation_bytes(size, BATCH, seq, "fp32", checkpointing=True) - full_layer
    assert measured == 4 * BATCH * seq * H
    assert estimate == 2 * measured  # two layers' inputs; the live recomputed layer comes on top


def test_zero2_buffers_follow_the_deepspeed_bucket_and_the_device():
    n, k = 10_000_000, 4
    small = {"reduce_bucket_size": 1_000_000}
    master = 4 * n / k  # fp32 master partition, a copy even when the weights are fp32
    assert ladder.zero_buffer_bytes(n, 2, k, "fp32", {}, "cpu") == master + 4 * n  # bucket > N: N pages
    assert ladder.zero_buffer_bytes(n, 2, k, "fp32", {}, "gpu") == master + 4 * 500_000_000
    assert ladder.zero_buffer_bytes(n, 2, k, "fp32", small, "cpu") == master + 4 * 1_000_000
    assert ladder.zero_buffer_bytes(n, 2, k, "bf16", {**small, "overlap_comm": True}, "cpu") == 2 * 2 * 1_000_000
    assert ladder.zero_buffer_bytes(n, 2, k, "fp32", {"contiguous_gradients": False}, "cpu") == master
    assert ladder.zero_buffer_bytes(n, 0, k, "fp32", {}, "cpu") == 4 * n  # flattened all-reduce copy


def test_a_lone_zero0_worker_holds_no_flattened_gradient_copy():
    # engine.build_engine skips the one-rank all-reduce; measured at S5 (28.3M, bench/memory.md):
    # 1,998 / 2,063 MB peak growth with DeepSpeed's all-reduce forced back on, 1,958 / 1,886 without.
    n = 28_000_000
    assert ladder.zero_buffer_bytes(n, 0, 1, "fp32", {}, "cpu") == 0
    assert ladder.zero_buffer_bytes(n, 0, 2, "fp32", {}, "cpu") == 4 * n


def test_zero3_buffers_add_gathered_parameters_up_to_max_live():
    n, k = 10_000_000, 8
    cfg = {"reduce_bucket_size": 1_000_000, "stage3_max_live_parameters": 3_000_000}
    assert ladder.zero_buffer_bytes(n, 3, k, "bf16", cfg, "gpu") == 2 * (1_000_000 + 1_000_000 + 3_000_000)


def icl_trial(gpus: int = 0, **train):
    doc = {"name": "m", "model": {"family": "decoder", "sizes": ["S2"]},
           "data": {"task": "icl", "dim": 8, "points": 16, "sizes": [6400], "batch_size": 64},
           "train": {"zero_stage": 2, **train},
           "resources": {"workers": 2, "cpus_per_worker": 0.49, "gpus_per_worker": gpus}}
    return expand(validate(doc))[0]


def test_plan_reads_the_zero_buffers_from_the_specs_deepspeed_section():
    # On CPU the platform turns ZeRO-2's contiguous gradient bucket off; a spec can turn it back on.
    cpu, gpu = icl_trial(), icl_trial(gpus=1)
    bucket = icl_trial(deepspeed={"zero_optimization": {"contiguous_gradients": True}})
    small = icl_trial(deepspeed={"zero_optimization": {"contiguous_gradients": True, "reduce_bucket_size": 1000}})
    counts = param_counts([cpu])[cpu.trial_id]
    n = counts["n_params"]
    assert memory_terms(cpu, counts)["deepspeed"] == 4 * n / 2
    assert memory_terms(bucket, counts)["deepspeed"] == 4 * n / 2 + 4 * n
    assert memory_terms(small, counts)["deepspeed"] == 4 * n / 2 + 4 * 1000
    assert memory_terms(gpu, counts)["deepspeed"] == 4 * n / 2 + 4 * 500_000_000


def test_heap_retention_is_counted_for_cpu_workers_only():
    cpu, gpu = icl_trial(), icl_trial(gpus=1)
    counts = param_counts([cpu])[cpu.trial_id]
    terms = memory_terms(cpu, counts)
    assert terms["heap"] == ladder.HEAP_RETENTION * terms["activations"] > 0
    assert memory_terms(gpu, counts)["heap"] == 0
