"""Several ``nequip-train`` jobs in one process: Hydra's multirun (``nequip-train -m seed=1,2``).

Hydra's default launcher runs the jobs of a sweep one after another in one process, and NequIP
0.19 registers its ``training_data_stats`` resolver once per job, which OmegaConf refuses the
second time ("resolver 'training_data_stats' is already registered"). This Hydra callback
clears it before each job. In a config:

.. code-block:: yaml

  hydra:
    callbacks:
      sequential_jobs:
        _target_: nequip_spectral.train.multirun.SequentialJobs
"""

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

NEQUIP_RESOLVERS = ("training_data_stats",)  # registered by nequip-train once per job


class SequentialJobs(Callback):
    """Clears the resolvers that each ``nequip-train`` job registers, before the next job."""

    def on_job_start(self, config, **kwargs) -> None:
        for name in NEQUIP_RESOLVERS:
            if OmegaConf.has_resolver(name):
                OmegaConf.clear_resolver(name)
