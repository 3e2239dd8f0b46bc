"""The paper's experiments as functions that return result records, with named
presets, run from the command line by ``banel <command>``
(:mod:`banel_jax.experiments.registry`).

* :mod:`~banel_jax.experiments.toy1d`: ``banel toy1d``, the 1-D toy;
* :mod:`~banel_jax.experiments.attack`: ``banel attack``, the addition attack;
* :mod:`~banel_jax.experiments.train`: ``banel train-target``, ``banel
  pretrain-attacker`` and ``banel calibrate``, the attack's checkpoints;
* ``compare``, ``scaling``, ``bench``: the baselines, the compute-scaling study
  and the benchmarks, where present;
* :mod:`~banel_jax.experiments.mnist`: ``banel mnist``, MNIST 0-to-6 (BaNEL,
  RND and pseudo-counts), where present;
* :mod:`~banel_jax.experiments.suite`: ``banel suite``, the sparse-reward
  suite (every method on small tasks, robustness over seeds);
* :mod:`~banel_jax.experiments.reason`: ``banel reason``, LM reasoning per
  question on a local decoder checkpoint (BaNEL, RND, NSR).

Importing this package registers every command whose module is present.
"""

import importlib

# Modules that register commands; one that is not present is skipped.
EXPERIMENT_MODULES = ("toy1d", "attack", "train", "compare", "scaling", "bench",
                      "mnist", "suite", "reason")


def _import_experiments() -> None:
  for name in EXPERIMENT_MODULES:
    try:
      importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__name__}.{name}":
        raise  # the module is there, and something it imports is missing


_import_experiments()
