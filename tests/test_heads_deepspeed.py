"""Every head trains under DeepSpeed ZeRO-2 and ZeRO-3 (CPU, gloo, fp32, one process) and
still predicts afterwards. The training runs in a subprocess (this file run as a script)
so the process group does not leak into other tests."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from reliscale.models.heads import GPHead, build_head

from conftest import free_port

# name -> (technique, options)
HEADS = {
    "none": ("none", {}),
    "batchensemble": ("batchensemble", {}),
    "gp": ("gp", {}),
    "gp_spectral_norm": ("gp", {"gp_spectral_norm": True}),
    "het": ("het", {}),
}
STAGES = (2, 3)
FEATURES, CLASSES, BATCH, STEPS = 16, 4, 32, 40


class Net(nn.Module):
    """A tiny MLP body with a reliability head; forward returns the head's loss."""

    def __init__(self, technique: str, opts: dict) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, FEATURES))
        self.head = build_head(technique, FEATURES, CLASSES, **opts)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head.loss(self.body(x), y)


def toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(CLASSES, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return means[y] + 0.5 * torch.randn(n, 8, generator=gen), y


def train_one(deepspeed, name: str, stage: int) -> dict:
    torch.manual_seed(0)
    model = Net(*HEADS[name])
    expected_params = sum(p.numel() for p in model.head.parameters())
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        config={"train_micro_batch_size_per_gpu": BATCH, "zero_optimization": {"stage": stage}},
    )
    x, y = toy_data(BATCH * STEPS, seed=1)
    losses = []
    for step in range(STEPS):
        batch = slice(step * BATCH, (step + 1) * BATCH)
        loss = engine(x[batch], y[batch])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    engine.eval()
    net = engine.module
    x_test, y_test = toy_data(256, seed=2)
    with torch.no_grad():
        if isinstance(net.head, GPHead):
            net.head.reset_precision()
            net.head.update_precision(net.body(x))
            net.head.sync_precision()
        pred = net.head.predict(net.body(x_test))
    return {
        "first_loss": sum(losses[:5]) / 5,
        "last_loss": sum(losses[-5:]) / 5,
        "accuracy": (pred.probs.argmax(-1) == y_test).float().mean().item(),
        "has_variance": pred.variance is not None,
        "params": sum(getattr(p, "ds_numel", p.numel()) for p in net.head.parameters()),
        "expected_params": expected_params,
    }


def main() -> None:
    import deepspeed

    from reliscale.worker.engine import init_deepspeed_comm

    init_deepspeed_comm()
    results = {f"{n}/zero{s}": train_one(deepspeed, n, s) for s in STAGES for n in HEADS}
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def results() -> dict:
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
    )
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULTS "))


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", HEADS)
def test_head_trains_under_zero(results, name, stage):
    r = results[f"{name}/zero{stage}"]
    assert r["last_loss"] < 0.5 * r["first_loss"]
    assert r["accuracy"] > 0.9
    assert r["has_variance"] == (HEADS[name][0] == "gp")
    assert r["params"] == r["expected_params"]


if __name__ == "__main__":
    main()
