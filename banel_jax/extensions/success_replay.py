"""Learn from successes too: the ones found in training join distillation.

Not the paper's algorithm, which learns from failures only: results made with it
are labelled as learning from successes. With ``bank_size=0`` each round's own
successes join that round's distillation (weight ``weight`` each, where every
accepted sample weighs 1). With ``bank_size=K`` the latest ``K`` successes are
kept in a ring buffer (:mod:`banel_jax.core.success_bank`) and every
distillation fits all of them; ``distinct=True`` keeps ``K`` distinct queries
(otherwise a query found ten times fills ten slots and weighs ten times as
much). A minibatch's loss is normalised by its own total weight, so a success of
weight ``w`` among ``n`` accepted samples of its minibatch takes a share
``w / (w + n)`` of that step: upweighting lets a few successes count against
thousands of accepted samples.

Metric: ``n_banked_successes`` (with a bank).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from banel_jax.core import success_bank
from banel_jax.core.extension import Extension
from banel_jax.core.types import GenerativeModel


@dataclasses.dataclass(frozen=True)
class SuccessReplayConfig:
  """Attributes:
    bank_size: successes kept for every distillation; 0 fits only the round's
      own successes.
    distinct: with a bank, add a success already in it only once.
    weight: each success's weight in distillation (every accepted sample
      weighs 1).
  """

  bank_size: int = 0
  distinct: bool = False
  weight: float = 1.0

  def __post_init__(self):
    if isinstance(self.bank_size, bool) or not isinstance(self.bank_size, int) \
        or self.bank_size < 0:
      raise ValueError(f"SuccessReplayConfig.bank_size={self.bank_size!r} must be an "
                       "integer >= 0 (0 keeps no bank)")
    if not isinstance(self.distinct, bool):
      raise ValueError(f"SuccessReplayConfig.distinct={self.distinct!r} must be "
                       "True or False")
    if self.distinct and not self.bank_size:
      raise ValueError("SuccessReplayConfig.distinct=True applies to a bank: set "
                       "bank_size > 0 too")
    if (isinstance(self.weight, bool) or not isinstance(self.weight, (int, float))
        or not math.isfinite(self.weight) or self.weight <= 0):
      raise ValueError(f"SuccessReplayConfig.weight={self.weight!r} must be a finite "
                       "number > 0")


def success_replay(model: GenerativeModel, bank_size: int = 0, *,
                   distinct: bool = False, weight: float = 1.0) -> Extension:
  """The :class:`~banel_jax.core.extension.Extension` that replays successes.

  Args:
    model: the generator (its ``event_shape`` and ``dtype`` size the bank).
    bank_size: successes kept for every distillation (0: the round's own only).
    distinct: with a bank, keep distinct queries only.
    weight: each success's weight in distillation.
  """
  config = SuccessReplayConfig(bank_size=bank_size, distinct=distinct, weight=weight)
  w = jnp.float32(config.weight)

  if not config.bank_size:
    return Extension(
        name="success_replay", init=lambda prior_params: (),
        extra_data=lambda state, x, succeeded: (x, succeeded.astype(jnp.float32) * w),
        uses_successes=True, config=config)

  def init(prior_params):
    del prior_params
    return success_bank.empty_success_bank(config.bank_size, tuple(model.event_shape),
                                           model.dtype)

  def observe(bank, x, failed, succeeded):
    del failed
    bank = success_bank.add_successes(bank, x, succeeded, distinct=config.distinct)
    return bank, {"n_banked_successes": jnp.minimum(bank.count, bank.capacity)}

  def extra_data(bank, x, succeeded):
    del x, succeeded
    return bank.x, success_bank.valid_mask(bank).astype(jnp.float32) * w

  return Extension(name="success_replay", init=init, observe=observe,
                   extra_data=extra_data, uses_successes=True, config=config)
