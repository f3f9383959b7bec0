"""Every shipped job file plans cleanly; the GPU ones fit an 80 GB GPU per worker."""

from __future__ import annotations

import pytest

from reliscale.driver.plan import plan
from reliscale.spec.schema import load_spec

GPU_JOBS = ["lm_ladder_1b", "vit_plex", "t5_plex", "pali_joint", "icl_mixtures", "task_robust"]
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
    assert not warnings
    assert spec.train.zero_stage == 3 and spec.train.precision == "bf16" and spec.resources.gpus_per_worker == 1
    assert 0.75e9 < max(r.n_params for r in rows) < 1.25e9
    assert max(r.est_mem_gb_per_worker for r in rows) < 80
    assert spec.train.optimizer.lr_scaling == "inverse_width"  # the LR-per-size rule, documented in the file


@pytest.mark.parametrize("job", CPU_JOBS)
def test_cpu_jobs_plan_small_trials(repo, job):
    rows, warnings = plan(load_spec(repo / "jobs" / f"{job}.yaml"))
    assert not warnings and rows
    assert all(r.est_mem_gb_per_worker < 1 for r in rows)
