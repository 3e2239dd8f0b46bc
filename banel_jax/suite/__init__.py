"""The sparse-reward benchmark suite: small tasks of different kinds, each with
a tiny pretrained generator whose success rate lies between 1e-4 and 3e-3.

* :mod:`banel_jax.suite.tasks`: the task zoo (:data:`~banel_jax.suite.tasks.TASKS`,
  :func:`~banel_jax.suite.tasks.get_task`, :func:`~banel_jax.suite.tasks.pretrain`),
  split into a tuning half and a held-out half;
* :mod:`banel_jax.suite.models`: the product-of-categoricals and running-sum
  sequence models;
* :mod:`banel_jax.suite.rules`: success sets, grammars and data generators;
* :mod:`banel_jax.suite.training`: maximum-likelihood pretraining and the
  shipped parameter files.

``banel suite`` runs BaNEL and the baselines on these tasks.
"""

from banel_jax.suite.tasks import TASKS, SuiteTask, get_task, pretrain

__all__ = ["TASKS", "SuiteTask", "get_task", "pretrain"]
