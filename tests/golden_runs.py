"""The paper's path on fixed seeds, reduced to numbers that must not change.

``record()`` runs BaNEL (the paper's algorithm, no extension) on the 1-D toy in
both modes and on a tiny addition attack, and returns every round's metrics,
success rates and a SHA-256 of the final proposal and failure parameters. The
numbers in ``tests/data/golden_paper_path.json`` were written by this module
before the package was reorganised into layers; ``test_golden.py`` checks that
the same runs still give them bit for bit. Regenerate (only for an intended
numerical change, and say so in the commit) with::

    python tests/golden_runs.py
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys

import jax
import numpy as np

import banel_jax as bj
from banel_jax.models import transformer as tfm
from banel_jax.tasks import addition
from banel_jax.tasks.toy1d import Toy1DTask

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden_paper_path.json"


def _digest(tree) -> str:
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _summary(result) -> dict:
  history = []
  for rec in result.history:
    # diagnostics added after the recording draw from their own keys: the
    # paper's numbers are compared without them
    history.append({k: v for k, v in rec.items()
                    if k not in ("wall_time_s", "eval_calls", "distinct_share",
                                 "prior_mass_in_regions", "proposal_entropy")})
  return {"history": history, "nre_spent": list(result.nre_spent),
          "proposal_sha256": _digest(result.states.proposal.params),
          "failure_sha256": _digest(result.states.failure.params),
          "n_successes": len(result.successes)}


def toy_run(mode: str) -> dict:
  task = Toy1DTask(num_bins=21)
  # the paper's settings, whatever BanelConfig()'s defaults become
  config = bj.BanelConfig.paper(mode=mode, nre_budget=300, samples_per_round=100,
                                failure_batch_size=50, failure_epochs=5,
                                distill_samples=256, distill_batch_size=64,
                                distill_epochs=3, n_eval=500)
  result = bj.run_banel(task.model(), task.prior_params(), task.oracle, config,
                        seeds=(0, 1), progress=False)
  return _summary(result)


def tiny_attack_run() -> dict:
  small = dict(num_layers=1, width=16, num_heads=2, mlp_ratio=2)
  task = addition.AdditionTaskConfig(
      max_operand_len=3, max_len=10, target=tfm.TransformerConfig(max_len=14, **small))
  target_params = addition.make_target(task).model.init(jax.random.key(0))
  scorer = addition.make_scorer(target_params, task, batch_size=64)

  def oracle(x):
    return scorer(x).rewards(task.allow_leading_zeros)

  attacker = tfm.make_transformer(tfm.TransformerConfig(max_len=task.max_len, **small))
  prior = attacker.model.init(jax.random.key(1))
  config = bj.BanelConfig.paper(nre_budget=48, samples_per_round=16,
                                failure_batch_size=8, failure_epochs=2,
                                failure_learning_rate=1e-3, distill_samples=32,
                                distill_batch_size=16, distill_learning_rate=1e-3,
                                n_eval=64, tau_mode="calibrated",
                                calibration_samples=32)
  result = bj.run_banel(attacker.model, prior, oracle, config, seeds=(0, 1),
                        progress=False)
  return _summary(result)


def record() -> dict:
  return {"jax_version": jax.__version__,
          "runs": {"toy_distilled": toy_run("distilled"), "toy_exact": toy_run("exact"),
                   "tiny_attack": tiny_attack_run()}}


if __name__ == "__main__":
  out = record()
  GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
  print(f"wrote {GOLDEN}", file=sys.stderr)
