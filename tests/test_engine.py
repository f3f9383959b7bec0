"""The DeepSpeed engine of a trial, in real processes (gloo): one rank, and two for ZeRO-2."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest
import torch
import torch.multiprocessing as mp

from reliscale.spec.schema import expand, validate
from reliscale.tasks import build_model, build_task
from reliscale.worker.engine import build_engine, init_deepspeed_comm

from conftest import free_port, run_rank0_script, tiny_icl_spec

SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch
    sys.path.insert(0, "tests")
    from conftest import tiny_icl_spec
    from reliscale.worker.engine import build_engine, init_deepspeed_comm
    from reliscale.tasks import build_model
    from reliscale.spec.schema import expand, validate
    from reliscale.tasks import build_task

    init_deepspeed_comm()
    for stage in (0, 2):
        trial = expand(validate(tiny_icl_spec(resources={"workers": 1}, train={"zero_stage": stage})))[0]
        task = build_task(trial, 1, None)
        runs = []
        for force_allreduce in (False, True):
            torch.manual_seed(0)
            engine = build_engine(build_model(trial), trial.spec, trial.steps, trial.lr)
            skipped = not engine.enable_backward_allreduce
            engine.enable_backward_allreduce |= force_allreduce
            losses = []
            for i in range(5):
                batch = {k: torch.as_tensor(v) for k, v in task.train_batch(i, 0, 0, 32).items()}
                loss = engine(batch).mean()
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
            runs.append((losses, [p.detach().clone() for p in engine.module.parameters()]))
        (l0, w0), (l1, w1) = runs
        same = l0 == l1 and all(torch.equal(a, b) for a, b in zip(w0, w1))
        print(f"STAGE{stage} SKIPPED={skipped} SAME={same} LEARNS={l0[-1] < l0[0]}")
    trial = expand(validate(tiny_icl_spec(resources={"workers": 1}, train={"zero_stage": 3})))[0]
    engine, task = build_engine(build_model(trial), trial.spec, trial.steps, trial.lr), build_task(trial, 1, None)
    for i in range(2):
        batch = {k: torch.as_tensor(v) for k, v in task.train_batch(i, 0, 0, 32).items()}
        engine.backward(engine(batch).mean())
        engine.step()
    print("STAGE3 STEPPED")
''')


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> subprocess.CompletedProcess:
    proc = run_rank0_script(SCRIPT, tmp_path_factory.mktemp("engine"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_a_lone_zero0_rank_skips_the_gradient_allreduce_and_trains_bit_identically(run):
    assert "STAGE0 SKIPPED=True SAME=True LEARNS=True" in run.stdout, run.stdout[-2000:]
    # ZeRO-2 moves gradients into its partitions in that call: it must keep it.
    assert "STAGE2 SKIPPED=False SAME=True LEARNS=True" in run.stdout, run.stdout[-2000:]


def test_deepspeed_is_told_it_runs_on_cpu_instead_of_warning_that_it_found_no_gpu(run):
    assert "unable to detect" not in run.stdout + run.stderr


def test_deepspeeds_calls_to_collectives_torch_deprecates_warn_nobody(run):
    # ZeRO-3 gathers and reduce-scatters through names torch 2.13 deprecates; the warnings are
    # about DeepSpeed's code and would print once per worker per trial.
    assert "STAGE3 STEPPED" in run.stdout, run.stdout[-2000:]
    assert "is deprecated" not in run.stderr, run.stderr[-3000:]


def zero2_rank(rank: int, port: int, out: str) -> None:
    """Train the same ZeRO-2 engine twice on this rank's half of each batch: with the platform's
    CPU config (no contiguous gradient bucket) and with DeepSpeed's default (the bucket)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    init_deepspeed_comm()
    results = {}
    bucket_on = {"deepspeed": {"zero_optimization": {"contiguous_gradients": True}}}
    for name, extra in (("platform", {}), ("bucket", bucket_on)):
        trial = expand(validate(tiny_icl_spec(train={"zero_stage": 2, **extra})))[0]
        task = build_task(trial, 2, None)
        torch.manual_seed(0)
        engine = build_engine(build_model(trial), trial.spec, trial.steps, trial.lr)
        for step in range(5):
            batch = {k: torch.as_tensor(v) for k, v in task.train_batch(step, 0, rank, 16).items()}
            engine.backward(engine(batch).mean())
            engine.step()
        results[name] = {"contiguous": engine.optimizer.contiguous_gradients,
                         "weights": [p.detach().clone() for p in engine.module.parameters()]}
    torch.save(results, f"{out}/rank{rank}.pt")


def test_cpu_zero2_reduces_without_the_contiguous_bucket_to_the_same_weights(tmp_path):
    mp.spawn(zero2_rank, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        assert r["platform"]["contiguous"] is False and r["bucket"]["contiguous"] is True
        for a, b in zip(r["platform"]["weights"], r["bucket"]["weights"], strict=True):
            torch.testing.assert_close(a, b)
    for a, b in zip(ranks[0]["platform"]["weights"], ranks[1]["platform"]["weights"], strict=True):
        assert torch.equal(a, b)  # every rank holds the same full weights after the step
