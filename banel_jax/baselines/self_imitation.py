"""Self-imitation: fit the generator to the successes found so far.

The one baseline that learns from rewards (``r_learn = 1`` on successes). It is
what BaNEL's success replay reduces to when no rejection region rejects anything
(``success_bank_size=K``, ``success_weight=W``, ``tau_mode="factor"``,
``filter_factor >= 1e30``), without fitting failure models that would never be
used. Each round:

1. the round's successes join a bank of the latest ``bank_size``
   (:mod:`banel_jax.core.success_bank`);
2. ``anchor_samples`` fresh samples of the current generator (free: no NRE),
   weight 1 each, keep it near itself; with ``support``, those outside it get
   weight 0 (the same free validity check BaNEL's distiller applies);
3. weighted maximum likelihood (:func:`~banel_jax.core.mle.fit_weighted_mle`, Adam
   restarted each round) on the anchors and the bank, each success weighing
   ``success_weight``.

Until the first success the anchors alone are fitted: the generator distils into
itself and barely moves, so this method depends on the pretrained model finding
a success by chance (``docs/findings.md``: on the shipped addition target it
is a lottery).

Example (the toy: 2 and 8 are its rewarded bins):
  >>> from banel_jax import BanelRunner
  >>> from banel_jax.baselines import (RunConfig, SelfImitationConfig,
  ...                                  make_self_imitation)
  >>> from banel_jax.tasks.toy1d import Toy1DTask
  >>> task = Toy1DTask(num_bins=11)
  >>> method = make_self_imitation(task.model(), SelfImitationConfig(
  ...     bank_size=8, anchor_samples=64, batch_size=24, learning_rate=0.3))
  >>> res = BanelRunner(task.model(), task.prior_params(), task.oracle,
  ...                   RunConfig(nre_budget=200, n_eval=500), seeds=(0, 1),
  ...                   method=method, progress=False).run()
  >>> res.nre_spent
  [200, 200]
  >>> [int(n) for n in res.states.successes.count] == [
  ...     sum(s.seed_index == i for s in res.successes) for i in (0, 1)]
  True

References:
  Oh et al. (2018), "Self-Imitation Learning", ICML; the success replay of
  :mod:`banel_jax.extensions.success_replay` with no region.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from banel_jax.core import success_bank
from banel_jax.core.protocol import RoundBatch, round_masks
from banel_jax.baselines.common import (Baseline, all_accepted_info, all_finite,
                                        count_distinct)
from banel_jax.core.mle import fit_weighted_mle, microbatch_size_for
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples


@dataclasses.dataclass(frozen=True)
class SelfImitationConfig:
  """Knobs of self-imitation (frozen, hashable).

  The defaults are the setting measured on the addition attack (bank 256,
  weight 100, BaNEL's full distillation); they were chosen once, not tuned.

  Attributes:
    bank_size: successes kept (the latest ``K``), ``>= 1``.
    success_weight: weight of each banked success against an anchor's 1 (> 0).
    bank_distinct: skip a success already in the bank (by fingerprint).
    anchor_samples: fresh generator samples per round, weight 1 each (>= 0).
    epochs: passes over anchors and bank per round.
    batch_size: minibatch size of the fit.
    learning_rate: Adam learning rate.
    pack: put positive-weight samples first in every epoch
      (:func:`~banel_jax.core.mle.fit_weighted_mle`).
    train_microbatch: a speed setting, as ``BanelConfig.train_microbatch``: if
      ``> 0``, each step's gradient is accumulated over microbatches of the
      largest divisor of ``batch_size`` up to this many samples (the same
      gradient up to float rounding); 0: one pass.
  """

  bank_size: int = 256
  success_weight: float = 100.0
  bank_distinct: bool = False
  anchor_samples: int = 2048
  epochs: int = 2
  batch_size: int = 256
  learning_rate: float = 1e-3
  pack: bool = False
  train_microbatch: int | str = 0


  def __post_init__(self):
    problems = []
    for name, low in (("bank_size", 1), ("anchor_samples", 0), ("epochs", 1),
                      ("batch_size", 1)):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < low:
        problems.append(f"{name}={v!r} must be an integer >= {low}")
    if not (self.train_microbatch == "auto" or (
        isinstance(self.train_microbatch, int)
        and not isinstance(self.train_microbatch, bool) and self.train_microbatch >= 0)):
      problems.append(f"train_microbatch={self.train_microbatch!r} must be 'auto' or "
                      "an integer >= 0")
    for name in ("success_weight", "learning_rate"):
      v = getattr(self, name)
      if (not isinstance(v, (int, float)) or isinstance(v, bool)
          or not math.isfinite(v) or v <= 0):
        problems.append(f"{name}={v!r} must be a finite number > 0")
    if (not problems and self.batch_size > self.anchor_samples + self.bank_size):
      problems.append(f"batch_size={self.batch_size} must be <= anchor_samples + "
                      f"bank_size = {self.anchor_samples + self.bank_size} (the "
                      "samples fitted each round)")
    if problems:
      raise ValueError("SelfImitationConfig: " + "; ".join(problems))

  def replace(self, **changes) -> "SelfImitationConfig":
    return dataclasses.replace(self, **changes)


class SelfImitationState(struct.PyTreeNode):
  """The run state of self-imitation (one seed).

  Attributes:
    policy: ``TrainState`` of the generator.
    successes: the latest successes found in training.
    round: ``int32[]`` rounds completed.
    nre: ``int32[]`` reward evaluations spent on learning.
    key: the run's root PRNG key.
  """

  policy: train_state.TrainState
  successes: success_bank.SuccessBank
  round: jax.Array
  nre: jax.Array
  key: jax.Array


def make_self_imitation(model: GenerativeModel,
                        config: SelfImitationConfig = SelfImitationConfig(), *,
                        support: Callable[[Samples], jax.Array] | None = None
                        ) -> Baseline:
  """Builds self-imitation ``(init, propose, update)``.

  Args:
    model: the generator's family.
    config: :class:`SelfImitationConfig`.
    support: optional free validity check ``x[n, ...] -> bool[n]``; anchors
      outside it are not fitted (e.g. :func:`banel_jax.tasks.addition.make_support`).

  Returns:
    A :class:`~banel_jax.baselines.common.Baseline` with a
    :class:`SelfImitationState`.
  """
  c = config
  tx = optax.adam(c.learning_rate)
  event_rank = len(model.event_shape)

  def init(key: PRNGKey, prior_params: Params) -> SelfImitationState:
    policy = train_state.TrainState.create(apply_fn=model.log_prob,
                                           params=prior_params, tx=tx)
    bank = success_bank.empty_success_bank(c.bank_size, tuple(model.event_shape),
                                           model.dtype)
    return SelfImitationState(policy=policy, successes=bank,
                              round=jnp.zeros((), jnp.int32),
                              nre=jnp.zeros((), jnp.int32), key=key)

  def propose(state: SelfImitationState, key: PRNGKey, n: int):
    """``n`` samples of the current generator and all-``n`` sampling info."""
    return model.sample(state.policy.params, key, n), all_accepted_info(n)

  def update(state: SelfImitationState, batch: RoundBatch, key: PRNGKey):
    evaluated, success = round_masks(batch, event_rank)
    bank = success_bank.add_successes(state.successes, batch.x, success,
                                      distinct=c.bank_distinct)
    anchor_key, fit_key = jax.random.split(key)
    bank_w = success_bank.valid_mask(bank).astype(jnp.float32) * c.success_weight
    if c.anchor_samples:  # static
      anchors = model.sample(state.policy.params, anchor_key, c.anchor_samples)
      anchor_w = (jnp.ones((c.anchor_samples,), jnp.float32) if support is None
                  else support(anchors).astype(jnp.float32))
      x = jnp.concatenate([anchors, bank.x.astype(anchors.dtype)], axis=0)
      weights = jnp.concatenate([anchor_w, bank_w], axis=0)
    else:
      x, weights, anchor_w = bank.x, bank_w, jnp.zeros((0,), jnp.float32)
    policy = state.policy.replace(opt_state=state.policy.tx.init(state.policy.params))
    policy, losses = fit_weighted_mle(
        policy, x, weights, fit_key, epochs=c.epochs, batch_size=c.batch_size,
        pack=c.pack,
        microbatch_size=microbatch_size_for(c.batch_size, c.train_microbatch))
    n_eval = jnp.sum(evaluated.astype(jnp.int32))
    metrics = {
        "fit_loss": losses[-1].mean(),
        "anchor_support_rate": (jnp.mean(anchor_w) if c.anchor_samples
                                else jnp.asarray(jnp.nan, jnp.float32)),
        "n_banked_successes": jnp.minimum(bank.count, bank.capacity),
        "n_successes": jnp.sum(success.astype(jnp.int32)),
        "n_evaluated": n_eval,
        "n_distinct": count_distinct(batch.x, evaluated),
        "params_finite": all_finite(policy.params),
    }
    new_state = state.replace(policy=policy, successes=bank, round=state.round + 1,
                              nre=state.nre + n_eval)
    return new_state, metrics

  return Baseline(init=init, propose=propose, update=update, name="self_imitation",
                  model=model, config=config)
