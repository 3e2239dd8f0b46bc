"""Baselines with BaNEL's round signature: the methods BaNEL is compared with.

Every baseline is a :class:`Baseline` bundle ``(init, propose, update, name)``
that :class:`~banel_jax.runtime.driver.BanelRunner` runs with ``method=``: same oracle
boundary, same NRE budget, same evaluation as BaNEL. Only self-imitation learns
from the oracle's rewards; for the others ``r_learn = 0``: successes are recorded
by the driver and reported, never used for learning.

* :func:`make_reinforce`: REINFORCE on the raw reward (zero gradient: random search).
* :func:`make_rnd`: REINFORCE with a random-network-distillation bonus.
* :func:`make_pseudo_count`: REINFORCE with a density-model pseudo-count bonus.
* :func:`make_exact_count`: REINFORCE with an exact-count bonus (small spaces).
* :func:`make_unlikelihood`: unlikelihood training on failures.
* :func:`make_nsr`: negative-sample reinforcement (a policy gradient that
  pushes down the failures' log-probabilities only).
* :func:`make_exact_rejection`: reject every failure already seen (a reference).
* :func:`make_self_imitation`: fit the successes found so far, upweighted (what
  BaNEL's success replay is when no region rejects anything).

Example:
  >>> from banel_jax import BanelRunner
  >>> from banel_jax.baselines import RunConfig, make_reinforce
  >>> from banel_jax.tasks.toy1d import Toy1DTask
  >>> task = Toy1DTask(num_bins=11)
  >>> method = make_reinforce(task.model())
  >>> res = BanelRunner(task.model(), task.prior_params(), task.oracle,
  ...                   RunConfig(nre_budget=150, n_eval=500), seeds=(0, 1),
  ...                   method=method, progress=False).run()
  >>> res.nre_spent
  [150, 150]
"""

from banel_jax.baselines.common import (Baseline, RunConfig, all_accepted_info,
                                        count_distinct, hash_samples, masked_mean)
from banel_jax.baselines.exact_rejection import (ExactRejectionConfig,
                                                 ExactRejectionState,
                                                 make_exact_rejection)
from banel_jax.baselines.policy_gradient import (NoveltyBonus, PolicyGradientConfig,
                                                 PolicyGradientState,
                                                 leave_one_out_advantages,
                                                 make_policy_gradient, make_policy_tx,
                                                 make_reinforce, ppo_clip_loss,
                                                 ppo_clip_sums,
                                                 zero_bonus)
from banel_jax.baselines.nsr import (NSRConfig, NSRState, completion_mask, make_nsr,
                                     nsr_terms)
from banel_jax.baselines.pseudo_counts import (ExactCountState, PseudoCountConfig,
                                               PseudoCountState,
                                               count_bonus,
                                               count_bonus_from_prediction_gain,
                                               empirical_frequency,
                                               make_exact_count,
                                               make_exact_count_bonus,
                                               make_pseudo_count,
                                               make_pseudo_count_bonus,
                                               prediction_gain, pseudo_count)
from banel_jax.baselines.rnd import (Moments, RNDBonus, RNDConfig, RNDState,
                                     apply_mlp, init_mlp, make_rnd, make_rnd_bonus,
                                     one_hot_features, orthogonalize)
from banel_jax.baselines.self_imitation import (SelfImitationConfig,
                                                SelfImitationState,
                                                make_self_imitation)
from banel_jax.baselines.unlikelihood import (UnlikelihoodConfig, UnlikelihoodState,
                                              log1mexp, make_unlikelihood,
                                              sequence_unlikelihood, token_id_mask,
                                              token_unlikelihood)

__all__ = [
    "Baseline", "RunConfig", "all_accepted_info", "count_distinct", "hash_samples",
    "masked_mean",
    "ExactRejectionConfig", "ExactRejectionState", "make_exact_rejection",
    "NoveltyBonus", "PolicyGradientConfig", "PolicyGradientState",
    "leave_one_out_advantages", "make_policy_gradient", "make_policy_tx",
    "make_reinforce", "ppo_clip_loss", "ppo_clip_sums", "zero_bonus",
    "NSRConfig", "NSRState", "completion_mask", "make_nsr", "nsr_terms",
    "ExactCountState", "PseudoCountConfig", "PseudoCountState", "count_bonus",
    "count_bonus_from_prediction_gain", "empirical_frequency", "make_exact_count",
    "make_exact_count_bonus", "make_pseudo_count", "make_pseudo_count_bonus",
    "prediction_gain", "pseudo_count",
    "Moments", "RNDBonus", "RNDConfig", "RNDState", "apply_mlp", "init_mlp",
    "make_rnd", "make_rnd_bonus", "one_hot_features", "orthogonalize",
    "SelfImitationConfig", "SelfImitationState", "make_self_imitation",
    "UnlikelihoodConfig", "UnlikelihoodState", "log1mexp", "make_unlikelihood",
    "sequence_unlikelihood", "token_id_mask", "token_unlikelihood",
]
