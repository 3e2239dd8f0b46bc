"""Config of the addition attack (SPEC section 5.2).

Tuning so far (2 seeds, NRE 3,000, m = 500, quick evaluations of 5,000 samples):
a filter factor f = 2 rejected only 5-9% of the proposal's samples per round and
the success rate had not moved after 1,000 NRE; calibrated tau rejecting half of
fresh proposal samples per region (20 failure epochs) rose from 2e-4/4e-4 to
8e-4/1.4e-3 by NRE 2,000. The full config takes the calibrated threshold with 10
failure epochs (to fit this CPU's time). The 5-seed run with 10 epochs
(``results/attack_full``) reached 1.3x; the compute-scaling study
(``results/compute_scaling``: 3 seeds, NRE 2,500) gave 1.0x, 1.4x, 1.0x and 2.6x at
1, 3, 10 and 30 epochs, so the default is now 30 epochs. Distilling toward the
exploration posterior (``distill_target="posterior"``) and rejecting 20% instead
of 50% per region did not help (1.5x and 0.4x; 2 seeds, NRE 3,000).

Session 9 (``results/attack_drift``, ``results/attack_ablations``): every 30-epoch
run peaks near NRE 2,500 and then declines because the proposal drifts into
malformed queries (compounding 50% rejection per round hands the mass to the
prior's rare modes no failure covers). ``--reset`` gave 9.3x on 2 seeds at NRE
4,500 but 0.5x final (6.2x best so far) on 5 seeds at NRE 7,500, and adding
``--reject-fraction 0.3`` gave 0x final (2.9x best so far), so the default stays
the paper's algorithm without reset.

Session 10 (``results/attack_support``): with the grammar as a free support
check (``support_filter=True``, ``--support-filter``) malformed paid queries
stayed at 0.2-5%, every seed reached 4-15x by NRE 2,500 (7.8x mean best so far)
and the run still declined to 0.7x final: the mass moved on to leading zeros and
carry-free sums. The default stays the paper's algorithm (no support check).

Session 15 (``results/attack_e100``): 100 failure epochs, 5 seeds, NRE 7,500:
9.2x best so far (every seed 6.6-12.4x at NRE 2,500; round 7's proposals 12.2x
on 5,000 fresh samples each), 0x final. The regions kept sparing the target's
errors (``results/region_lift_e100``: 72 of 75, union lift 11x after 6), but
the proposal collapsed into malformed strings after round 8. The default stays
at 30 epochs: 100 ended at 0 on every seed, and a round took about twice as long
at 100 epochs as at 10 (about 320 s against 155 s, 5 seeds on 2 CPU cores),
which would bring the README's quick main job (6.4 minutes) near its 10-minute
limit (not measured).

Session 16 (``results/attack_e100_support``): the same with ``--support-filter``:
11.3x best so far (every seed 10.4-13.5x), 3.7x final, no seed ended in
malformed strings, but the proposal moved on to leading zeros after peaking at
11.6x (round 7), as without the check. The defaults stay as they are: the check is knowledge of the
task that the paper's algorithm does not have, and 100 epochs is still far
from the 50x bar at twice the time per round. On 3 seeds with leading zeros
also malformed (``results/attack_e100_support_nlz``) the decline went away
(13.8x best so far, 7.3x final); seeds 3-4 (``results/attack_e100_support_nlz_s34``)
did decline, and the 5 seeds pooled gave 14.5x best so far, 5.2x final.

Session 26: ``train_microbatch=32`` (a speed setting: each fit's step accumulates
its gradient over microbatches of at most 32 samples). 5 seeds at NRE 4,000 on
the shipped target took 508 s against 650 s before session 26. Together with the
chunked scoring of ``log_prob``, it changes float rounding, so runs before
session 26 reproduce digit for digit only at their own commits.

``get_config()`` is the paper-sized run (NRE 7,500, 5 seeds); ``get_quick_config()``
is the README's main job (a few minutes on 2 CPU cores); ``get_tiny_config()`` is for
the test suite.
"""

from __future__ import annotations

import dataclasses

from banel_jax.config import BanelConfig
from banel_jax.tasks.addition import AdditionTaskConfig


@dataclasses.dataclass(frozen=True)
class AttackExperiment:
  """An attack run.

  Attributes:
    task: the addition task (leading-zeros switch, operand bound, target shape).
    banel: BaNEL's config.
    seeds: seeds run side by side under ``vmap``.
    target_dir: orbax checkpoint of the target (``scripts/train_target.py``).
    attacker_dir: orbax checkpoint of the pretrained attacker
      (``scripts/pretrain_attacker.py``).
    pretrained_samples: samples used to measure the pretrained attacker's rate.
    analysis_samples: samples per seed for the pattern analysis at the end.
    rule_samples: queries per rule-based attack.
    support_filter: give BaNEL the grammar as a free validity check
      (``make_banel(..., support=addition.well_formed_mask)``): malformed
      queries are never distilled into the proposal.
  """

  task: AdditionTaskConfig = AdditionTaskConfig()
  banel: BanelConfig = BanelConfig(
      mode="distilled", nre_budget=7500, samples_per_round=500,
      tau_mode="calibrated", calibrated_reject_fraction=0.5, filter_factor=2.0,
      failure_init="proposal", failure_epochs=30, failure_batch_size=100,
      failure_learning_rate=1e-3,
      distill_samples=2048, distill_epochs=2, distill_batch_size=256,
      distill_learning_rate=1e-3, distill_reset=False,
      n_eval=10_000, eval_every=5, min_acceptance_rate=1e-4,
      region_strategy="loop", train_microbatch=32)
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  target_dir: str = "checkpoints/target"
  attacker_dir: str = "checkpoints/attacker"
  pretrained_samples: int = 200_000
  analysis_samples: int = 10_000
  rule_samples: int = 10_000
  support_filter: bool = False

  def replace(self, **changes) -> "AttackExperiment":
    return dataclasses.replace(self, **changes)


def get_config() -> AttackExperiment:
  return AttackExperiment()


def get_quick_config() -> AttackExperiment:
  """The README's main job (under 10 minutes on 2 CPU cores): 2 seeds, NRE 2,000,
  evaluations of 5,000 samples."""
  base = get_config()
  return base.replace(
      banel=base.banel.replace(nre_budget=2000, n_eval=5000, eval_every=2),
      seeds=(0, 1), pretrained_samples=50_000, analysis_samples=5000,
      rule_samples=2000)


def get_tiny_config() -> AttackExperiment:
  """Seconds: for tests (tiny budgets, small evaluations)."""
  base = get_config()
  return base.replace(
      banel=base.banel.replace(nre_budget=128, samples_per_round=64,
                               failure_epochs=1, failure_batch_size=32,
                               distill_samples=256, distill_epochs=1,
                               distill_batch_size=128, n_eval=256, eval_every=1),
      seeds=(0, 1), pretrained_samples=1024, analysis_samples=256, rule_samples=64)


CONFIGS = {"full": get_config, "quick": get_quick_config, "tiny": get_tiny_config}
