"""The Tune trial actor, which runs the Train controller, builds and unpickles the trainer and never touches
a tensor: what they import must not pull in torch (~2 CPU-s per process per trial), nor what only some
tasks use (scipy, scikit-learn, matplotlib through the mnist1d package: ~1 s more). The trainer
starts no helper actor that a trial has no use for, and its controller polls the workers often
enough that short trials do not wait on it. A worker imports the training stack without the
cyclic GC rescanning it."""

import os
import subprocess
import sys

import pytest

BUILD_AND_UNPICKLE = """
import pickle, sys
import ray.train

import reliscale.trial.run
from reliscale.trial.rendezvous import EnvRendezvous
from reliscale.trial.trainer import TrialTrainer

config = pickle.loads(pickle.dumps(EnvRendezvous()))  # what the controller receives
TrialTrainer(reliscale.trial.run.worker_loop, backend_config=config, train_loop_config={}, placement_group_key="s/t",
             scaling_config=ray.train.ScalingConfig(num_workers=2))._create_default_callbacks()
heavy = {"torch", "transformers", "deepspeed", "scipy", "sklearn", "matplotlib", "mnist1d"}
print(config.backend_cls().share_cuda_visible_devices, ",".join(sorted(heavy & sys.modules.keys())) or "-")
"""


def test_building_a_trials_trainer_imports_no_torch_and_no_library_only_some_tasks_use():
    out = subprocess.run([sys.executable, "-c", BUILD_AND_UNPICKLE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "-"]


def test_a_trials_trainer_leaves_out_the_ray_data_actor_records_its_placement_group_instead_of_the_cleaner():
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from reliscale.trial.rendezvous import EnvRendezvous
    from reliscale.trial.run import worker_loop
    from reliscale.trial.trainer import RecordPlacementGroup, TrialTrainer

    def callbacks(cls, **key) -> list:
        return cls(worker_loop, backend_config=EnvRendezvous(), train_loop_config={},
                   scaling_config=ray.train.ScalingConfig(num_workers=2), **key)._create_default_callbacks()

    ray_train = [type(c).__name__ for c in callbacks(DataParallelTrainer)]
    trial = callbacks(TrialTrainer, placement_group_key="study/trial")
    assert "DatasetsCallback" in ray_train and "PlacementGroupCleanerCallback" in ray_train
    expected = [{"PlacementGroupCleanerCallback": "RecordPlacementGroup"}.get(name, name) for name in ray_train
                if name != "DatasetsCallback"]
    assert [type(c).__name__ for c in trial] == expected
    assert [c.key for c in trial if isinstance(c, RecordPlacementGroup)] == ["study/trial"]


# the trainer as the controller gets it, then what Ray Train hands to the controller and the workers
WHAT_THE_CONTROLLER_GETS = BUILD_AND_UNPICKLE + """
from ray.train.v2._internal.constants import get_env_vars_to_propagate

env = get_env_vars_to_propagate()
print(env.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"), env.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"))
"""


def test_a_trials_controller_polls_every_half_second_and_starts_no_preemption_watcher_unless_set():
    def controller_env(**user) -> list[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_TRAIN_")} | user
        out = subprocess.run([sys.executable, "-c", WHAT_THE_CONTROLLER_GETS], env=env,
                             capture_output=True, text=True, check=True)
        return out.stdout.split()[2:]  # after BUILD_AND_UNPICKLE's own two values

    assert controller_env() == ["0.5", "0"]
    assert controller_env(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="3", RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="1") == ["3", "1"]


IMPORT_IN_A_FRESH_WORKER = """
import gc, sys
from reliscale.trial.run import import_training_stack

before = gc.get_stats()[2]["collections"]
import_training_stack()
print(gc.get_stats()[2]["collections"] - before, gc.isenabled(), gc.get_freeze_count())

from reliscale.spec.schema import expand, validate
from reliscale.tasks import build_evaluator, build_model, build_task

trial = expand(validate({"name": "t", "model": {"family": "decoder", "sizes": ["S0"]},
                         "data": {"task": "icl", "dim": 3, "points": 8, "sizes": [256], "batch_size": 32}}))[0]
loaded = set(sys.modules)
build_evaluator(build_task(trial, 1), trial), build_model(trial)
packages = {m.split(".")[0] for m in set(sys.modules) - loaded} - {"reliscale", "encodings"}
print(",".join(sorted(packages)) or "-", ",".join(sorted({"sklearn", "matplotlib", "mnist1d"} & sys.modules.keys())) or "-")
"""


@pytest.fixture(scope="module")
def fresh_worker() -> list[str]:
    """What a fresh worker printed: collections, GC state, frozen objects; then what building an ICL trial loaded."""
    out = subprocess.run([sys.executable, "-c", IMPORT_IN_A_FRESH_WORKER], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_a_worker_imports_the_training_stack_without_full_collections_and_freezes_it(fresh_worker):
    full_collections, enabled, frozen, _, _ = fresh_worker
    assert (full_collections, enabled) == ("0", "True")
    assert int(frozen) > 500_000  # torch, DeepSpeed, transformers: ~0.9 M objects


def test_an_icl_worker_builds_its_trial_from_what_it_imported_with_the_collector_paused(fresh_worker):
    """Building the model loads no third-party module the paused import left out (transformers' model
    classes included), and a regression task loads no library only classification or images use."""
    _, _, _, new_packages, heavy = fresh_worker
    assert (new_packages, heavy) == ("-", "-")
