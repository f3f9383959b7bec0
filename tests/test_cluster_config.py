"""cluster.yaml is a valid Ray cluster-launcher config (checked with Ray's own schema, no cloud call)."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config


@pytest.fixture
def cluster(repo) -> dict:
    return yaml.safe_load((repo / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_has_a_head_and_a_gpu_worker_type(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != cluster["head_node_type"] and t["resources"].get("GPU")]
    assert gpu and gpu[0]["max_workers"] >= 1


def test_schema_check_catches_a_broken_config(cluster):
    broken = prepare_config(copy.deepcopy(cluster))
    broken["available_node_types"]["head"]["resources"] = {"CPU": "four"}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_cluster_setup_installs_the_project_with_the_readme_target(cluster):
    assert any("make .venv" in c for c in cluster["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in cluster["head_start_ray_commands"])
