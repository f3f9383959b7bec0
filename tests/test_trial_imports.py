"""The Tune trial actor and the Train controller build and unpickle the trainer and never touch
a tensor: what they import must not pull in torch (~2 CPU-s per process per trial)."""

import subprocess
import sys

BUILD_AND_UNPICKLE = """
import pickle, sys
import ray.train
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

import reliscale.trial
from reliscale.rendezvous import EnvRendezvous

config = pickle.loads(pickle.dumps(EnvRendezvous()))  # what the controller receives
DataParallelTrainer(reliscale.trial.worker_loop, backend_config=config, train_loop_config={},
                    scaling_config=ray.train.ScalingConfig(num_workers=2))
print(config.backend_cls().share_cuda_visible_devices, "torch" in sys.modules)
"""


def test_building_a_trials_trainer_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", BUILD_AND_UNPICKLE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
