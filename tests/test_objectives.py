"""ERM and task-robust minimax objectives (single process)."""

from __future__ import annotations

import math

import pytest
import torch

from reliscale.worker.engine import lr_lambda
from reliscale.worker.objectives import build_objective


def test_erm_is_the_batch_mean():
    losses = torch.tensor([1.0, 2.0, 6.0])
    assert build_objective("erm", 2, 0.1)(losses, torch.tensor([0, 0, 1])).item() == pytest.approx(3.0)


def test_minimax_takes_an_exponentiated_gradient_step_toward_the_worst_group():
    obj = build_objective("minimax", 2, step_size=0.5)
    losses = torch.tensor([1.0, 1.0, 3.0], requires_grad=True)
    groups = torch.tensor([0, 0, 1])
    loss = obj(losses, groups)
    # q ∝ q0 · exp(η · group mean): q ∝ (e^0.5, e^1.5)
    q1 = math.exp(1.5) / (math.exp(0.5) + math.exp(1.5))
    assert obj.weights()[1] == pytest.approx(q1)
    assert loss.item() == pytest.approx((1 - q1) * 1.0 + q1 * 3.0)
    loss.backward()
    # each example's gradient is its group's weight over the group's count
    assert losses.grad.tolist() == pytest.approx([(1 - q1) / 2, (1 - q1) / 2, q1])


def test_minimax_weights_round_trip_through_state_dict():
    a = build_objective("minimax", 3, 0.2)
    a(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 2]))
    b = build_objective("minimax", 3, 0.2)
    b.load_state_dict(a.state_dict())
    assert b.weights() == pytest.approx(a.weights())


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    f = lr_lambda(100, warmup_frac=0.1, min_lr_frac=0.1)
    assert [f(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert f(100) == pytest.approx(0.1)


def test_erm_group_losses_are_the_means_since_the_last_call():
    obj = build_objective("erm", 2, 0.1)
    obj(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
    obj(torch.tensor([2.0, 5.0, 7.0]), torch.tensor([0, 1, 1]))
    assert obj.group_losses() == pytest.approx([1.5, 5.0])
    obj(torch.tensor([4.0]), torch.tensor([1]))
    assert obj.group_losses() == pytest.approx([0.0, 4.0])  # an unseen group logs 0, as before


def test_minimax_steps_its_weights_once_per_micro_batch():
    # Two micro-batches of one optimizer step (gradient accumulation 2) take two steps, each on
    # its own micro-batch's group means: the same weights as two calls in a row.
    obj = build_objective("minimax", 2, step_size=0.5)
    obj(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
    obj(torch.tensor([2.0, 2.0]), torch.tensor([0, 1]))
    log_q = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)) + 0.5 * torch.tensor([3.0, 5.0], dtype=torch.float64)
    assert obj.weights() == pytest.approx(torch.softmax(log_q, 0).tolist())
    assert obj.group_losses() == pytest.approx([2.0, 2.0])
