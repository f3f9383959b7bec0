"""The Tune trial actor and the Train controller build and unpickle the trainer and never touch
a tensor: what they import must not pull in torch (~2 CPU-s per process per trial). The trainer
starts no helper actor that a trial has no use for."""

import subprocess
import sys

BUILD_AND_UNPICKLE = """
import pickle, sys
import ray.train

import reliscale.trial
from reliscale.rendezvous import EnvRendezvous
from reliscale.trainer import TrialTrainer

config = pickle.loads(pickle.dumps(EnvRendezvous()))  # what the controller receives
TrialTrainer(reliscale.trial.worker_loop, backend_config=config, train_loop_config={},
             scaling_config=ray.train.ScalingConfig(num_workers=2))._create_default_callbacks()
print(config.backend_cls().share_cuda_visible_devices, "torch" in sys.modules)
"""


def test_building_a_trials_trainer_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", BUILD_AND_UNPICKLE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_a_trials_trainer_leaves_out_the_ray_data_actor_and_keeps_the_rest():
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from reliscale.rendezvous import EnvRendezvous
    from reliscale.trainer import TrialTrainer
    from reliscale.trial import worker_loop

    def callbacks(cls) -> list[str]:
        trainer = cls(worker_loop, backend_config=EnvRendezvous(), train_loop_config={},
                      scaling_config=ray.train.ScalingConfig(num_workers=2))
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    ray_train, trial = callbacks(DataParallelTrainer), callbacks(TrialTrainer)
    assert "DatasetsCallback" in ray_train and "PlacementGroupCleanerCallback" in trial
    assert trial == [name for name in ray_train if name != "DatasetsCallback"]
