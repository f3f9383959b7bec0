"""The MFU benchmark counts a step's FLOPs as Megatron-LM does (Narayanan et al. 2021, eq. 3)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))  # where the script finds its siblings when run
_spec = importlib.util.spec_from_file_location("bench_mfu", REPO / "bench" / "bench_mfu.py")
bench_mfu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_mfu)
flops_per_token = bench_mfu.flops_per_token


@pytest.mark.parametrize("layers, width, seq_len, vocab", [(96, 12288, 2048, 51200), (16, 2048, 2048, 50304),
                                                          (20, 640, 256, 50304)])
def test_model_and_hardware_flops_match_megatrons_closed_form(layers, width, seq_len, vocab):
    # A GPT layer with a 4·d MLP has 12·d² weights; the output projection V·d. Megatron's count per
    # iteration of B sequences: 72·B·s·l·h²·(1 + s/6h + V/12lh), and 96·B·s·l·h²·(1 + s/6h + V/16lh)
    # when every layer's forward pass is recomputed (the logit layer is not).
    batch = 8
    tokens = batch * seq_len
    model, hardware = flops_per_token(12 * layers * width**2, vocab * width, layers, seq_len, width, recompute=True)
    h, s, ell, v = width, seq_len, layers, vocab
    assert model * tokens == pytest.approx(72 * batch * s * ell * h**2 * (1 + s / (6 * h) + v / (12 * ell * h)))
    assert hardware * tokens == pytest.approx(96 * batch * s * ell * h**2 * (1 + s / (6 * h) + v / (16 * ell * h)))
    # without recomputation the hardware runs exactly the model's FLOPs
    assert flops_per_token(12 * layers * width**2, vocab * width, layers, seq_len, width, recompute=False) == (
        model, model)
