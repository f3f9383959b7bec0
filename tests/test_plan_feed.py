"""`plan` checks that a GPU worker's CPUs can decode images as fast as its GPU trains on them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reliscale.driver.plan import as_dicts, format_table, plan
from reliscale.spec.schema import load_spec

GPU_S4 = ["model.sizes=[S4]", "technique=[none]", "data.sizes=[1.28e5]", "data.batch_size=256",
          "data.images.image_size=224", "data.images.patch_size=16", "resources.gpus_per_worker=1", "finetune=null"]


def gpu_plan(repo, *overrides: str):
    spec = load_spec(repo / "jobs" / "images_smoke.yaml", [*GPU_S4, *overrides])
    return plan(spec)


@pytest.fixture(scope="module")
def tiny_cpus(repo):
    return gpu_plan(repo, "resources.cpus_per_worker=1")


def test_images_per_second_follow_flops_per_image_and_measured_decode_rate(tiny_cpus):
    (row,), _ = tiny_cpus
    # Closed form: a ViT-S4 (width 256, 12 layers) over 197 tokens costs 6 N T + 6 L T^2 d FLOPs
    # per image; an H100 at 40 % of 989 TFLOP/s trains 0.4 * 989e12 / that images per second.
    tokens, n = 197, row.n_params_nonembedding
    per_image = 6 * n * tokens + 6 * 12 * tokens * tokens * 256
    assert row.examples_per_s_needed == pytest.approx(0.4 * 989e12 / per_image)
    assert row.loader_examples_per_s == pytest.approx(580.0)  # 1 CPU at 224 px (bench/images.md)


def test_a_worker_with_one_cpu_is_warned_with_the_cpus_it_would_need(tiny_cpus):
    (row,), warnings = tiny_cpus
    need = row.examples_per_s_needed
    assert warnings == [
        f"warning: {row.trial_id} needs ~{need:,.0f} examples/s per GPU (40% of 989 TFLOP/s); its "
        f"loader prepares about 580 on 1 CPUs per worker; allowed: resources.cpus_per_worker >= "
        f"{int(need // 580) + 1}"]


def test_enough_cpus_silence_the_warning_and_smaller_images_do_not(repo, tiny_cpus):
    (row,), _ = tiny_cpus
    cpus = int(row.examples_per_s_needed // 580) + 1
    assert gpu_plan(repo, f"resources.cpus_per_worker={cpus}")[1] == []
    # 112 px: a quarter of the pixels to decode (4 x 580/s per CPU), but also a quarter of the
    # patches, so the GPU trains on images more than 4x as fast: still short of CPUs.
    (small,), warnings = gpu_plan(repo, "data.images.image_size=112", f"resources.cpus_per_worker={cpus}")
    assert small.loader_examples_per_s == pytest.approx(4 * 580.0 * cpus)
    assert small.examples_per_s_needed > 4 * row.examples_per_s_needed and len(warnings) == 1


def test_cpu_workers_and_generated_data_have_no_feed_figures(repo):
    (row,), warnings = plan(load_spec(repo / "jobs" / "images_smoke.yaml",
                                      ["model.sizes=[S0]", "technique=[none]", "finetune=null"]))
    assert row.loader_examples_per_s is None and warnings == []
    assert "examples_per_s_needed" not in as_dicts([row])[0] and "loader/s" not in format_table([row])


def test_plan_cli_prints_the_feed_columns_and_json_for_an_image_study_on_gpus(repo):
    args = [sys.executable, "-m", "reliscale.cli", "plan", "jobs/images_smoke.yaml",
            *(a for o in [*GPU_S4, "resources.cpus_per_worker=1"] for a in ("--set", o))]
    table = subprocess.run(args, capture_output=True, text=True, cwd=repo)
    assert table.returncode == 0, table.stderr
    assert "need/s" in table.stdout and "loader/s" in table.stdout and "580" in table.stdout
    assert "cpus_per_worker >=" in table.stderr
    rows = json.loads(subprocess.run([*args, "--json"], capture_output=True, text=True, cwd=repo).stdout)
    assert rows[0]["loader_examples_per_s"] == pytest.approx(580.0)
