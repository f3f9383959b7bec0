"""Two Ray nodes on one machine (separate raylets, own resources): a study's trials span both,
and when the second node dies mid-study its trial resumes on the first from its checkpoint."""

from __future__ import annotations

import threading
import time

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from reliscale.driver.study import StudyPaths, run_study
from reliscale.spec.schema import validate

from conftest import tiny_icl_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    second = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    yield cluster, second
    ray.shutdown()
    cluster.shutdown()


def trial_runs(spec, root):
    client = MlflowClient(StudyPaths(spec, root).tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    return client, client.search_runs([exp.experiment_id], "tags.`reliscale.role` = 'trial'")


def test_trials_span_both_nodes_and_survive_losing_one(two_nodes, tmp_path):
    cluster, second = two_nodes
    doc = tiny_icl_spec("multinode")
    doc["data"]["sizes"] = [4096, 6144]  # 128 and 192 steps
    doc["eval"]["points"] = 6
    spec = validate(doc)

    def kill_second_node_once_it_trains():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                _, runs = trial_runs(spec, tmp_path)
            except Exception:
                continue
            on_second = [r for r in runs if r.data.tags.get("reliscale.node_id") == second.node_id
                         and "train/loss" in r.data.metrics]
            if on_second:
                cluster.remove_node(second, allow_graceful=False)
                return

    killer = threading.Thread(target=kill_second_node_once_it_trains, daemon=True)
    killer.start()
    results = run_study(spec, tmp_path, progress_interval_s=60)
    killer.join(timeout=5)
    assert not [r for r in results if r.error]
    assert second.node_id not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}, "node was never killed"

    client, runs = trial_runs(spec, tmp_path)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:  # complete, duplicate-free metric histories despite the lost node
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval/id/mse")]
        assert steps == sorted(set(steps)) and steps[-1] == int(r.data.params["data_size"])
        assert len(steps) == 6
