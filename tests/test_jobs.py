"""Every shipped job file plans cleanly; the GPU ones fit an 80 GB GPU per worker."""

from __future__ import annotations

import pytest

from reliscale.driver.plan import plan
from reliscale.spec.schema import load_spec

GPU_JOBS = ["lm_ladder_1b", "vit_plex", "pali_joint", "icl_mixtures", "task_robust"]
CPU_JOBS = ["icl_smoke", "icl_tiny", "vit_plex_smoke", "icl_mixtures_smoke", "task_robust_smoke",
            "pali_joint_smoke", "lm_smoke", "icl_patch_smoke", "lm_text_smoke", "lm_ladder_cpu", "images_smoke",
            "images_grid"]


def test_every_job_file_is_listed_here(repo):
    assert sorted(p.stem for p in (repo / "jobs").glob("*.yaml") if p.stem != "runtime_env") == sorted(
        GPU_JOBS + CPU_JOBS)


@pytest.mark.parametrize("job", GPU_JOBS)
def test_gpu_jobs_reach_about_1b_and_fit_80gb_per_worker(repo, job):
    spec = load_spec(repo / "jobs" / f"{job}.yaml")
    rows, warnings = plan(spec)
    assert [w for w in warnings if " per GPU " not in w] == []  # no memory warning
    # The data-feed check: at 40 % MFU an H100 trains a ViT-S4 (10M) on ~30,000 224 px images/s
    # and an S4xS2 or ViT-S5 on ~14,000; at the measured ~580 images per CPU-second that takes
    # 25-55 CPUs per GPU, more than an 8-GPU node spares a GPU. Larger sizes must be fed.
    fed_short = {r.size for r in rows if any(w.startswith(f"warning: {r.trial_id} ") for w in warnings)}
    assert fed_short <= {"S4", "S5", "S4xS2"}
    assert spec.train.zero_stage == 3 and spec.train.precision == "bf16" and spec.resources.gpus_per_worker == 1
    assert 0.75e9 < max(r.n_params for r in rows) < 1.25e9
    assert max(r.est_mem_gb_per_worker for r in rows) < 80
    assert spec.train.optimizer.lr_scaling == "inverse_width"  # the LR-per-size rule, documented in the file


@pytest.mark.parametrize("job", CPU_JOBS)
def test_cpu_jobs_plan_small_trials(repo, job):
    rows, warnings = plan(load_spec(repo / "jobs" / f"{job}.yaml"))
    assert not warnings and rows
    assert all(r.est_mem_gb_per_worker < 1 for r in rows)
