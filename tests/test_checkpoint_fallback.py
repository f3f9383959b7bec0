"""A corrupted newest checkpoint: the trial falls back to the previous one and says so.

Real DeepSpeed (ZeRO-2, gloo, one process) writes two real checkpoints; the newest is then
corrupted, and `checkpoints.restore` is handed it as the loop hands it Ray Train's checkpoint folder.
"""

from __future__ import annotations

import textwrap

import pytest

from conftest import run_rank0_script

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import logging, os, sys
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from pathlib import Path
    import torch
    sys.path.insert(0, "tests")
    from conftest import tiny_icl_spec
    from reliscale.worker.checkpoints import restore
    from reliscale.worker.engine import build_engine, init_deepspeed_comm
    from reliscale.tasks import build_model
    from reliscale.worker.objectives import build_objective
    from reliscale.spec.schema import expand, validate
    from reliscale.tasks import build_task

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = Path(sys.argv[1])
    trial = expand(validate(tiny_icl_spec(resources={"workers": 1})))[0]
    init_deepspeed_comm()
    task = build_task(trial, 1, root / "cache")

    def engine():
        torch.manual_seed(0)
        return build_engine(build_model(trial), trial.spec, trial.steps, trial.lr)

    def step(e, i):
        batch = {k: torch.as_tensor(v) for k, v in task.train_batch(i, 0, 0, 32).items()}
        e.backward(e(batch).mean())
        e.step()

    e = engine()
    saved = {}
    for i in (1, 2):
        step(e, i)
        folder = root / "trial" / f"step_{i:09d}"
        e.save_checkpoint(str(folder), tag="ds", client_state={"step": i, "objective": {}})
        saved[i] = [p.detach().clone() for p in e.module.parameters()]
    newest = root / "trial" / "step_000000002" / "ds" / "mp_rank_00_model_states.pt"
    newest.write_bytes(b"not a checkpoint")

    fresh = engine()
    resumed = restore(fresh, build_objective("erm", 1, 0.1), newest.parent.parent)
    same = all(torch.equal(a, b) for a, b in zip(saved[1], fresh.module.parameters()))
    print(f"RESUMED_AT={resumed} WEIGHTS_OF_STEP_1={same}")
''')


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    out = run_rank0_script(SCRIPT, tmp_path)
    assert "RESUMED_AT=1 WEIGHTS_OF_STEP_1=True" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    assert "checkpoint step_000000002 is unreadable" in out.stderr
    assert "resumed from step_000000001 instead of the newest checkpoint step_000000002" in out.stderr
