"""Reject every sample already paid for and failed (exact negative evidence).

Not the paper's algorithm; assumes a deterministic oracle. The likelihood-ratio
regions reject a sample when the failure model explains it better than the
proposal that drew it. A failure the proposal draws *often* is one they cannot
reject: fitted on the round's failures, the failure model gives it about the
share it had among them, which is about the proposal's own probability, so the
ratio stays near 1 however many times it failed. Once distillation puts mass on
such a query, every round pays for it again. This extension keeps every paid
failure's fingerprint (:mod:`banel_jax.core.sample_set`) and treats those
samples as rejected: the exploration posterior becomes ``p_0(x) * 1[x not in R]
* 1[x not already failed]``.

Metrics: ``n_seen_failures`` (distinct failures stored) and
``distill_seen_failures_reject_rate`` (the share of distillation samples in the
set; a region may reject some of them too).
"""

from __future__ import annotations

import dataclasses

from banel_jax.core import sample_set
from banel_jax.core.extension import Extension


@dataclasses.dataclass(frozen=True)
class SeenFailuresConfig:
  """Attributes:
    capacity: distinct failures kept per seed; size it at the run's NRE budget,
      which no run can exceed, so that none is dropped.
  """

  capacity: int

  def __post_init__(self):
    if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) \
        or self.capacity < 1:
      raise ValueError(f"SeenFailuresConfig.capacity={self.capacity!r} must be an "
                       "integer >= 1 (the run's NRE budget)")


def seen_failures(capacity: int) -> Extension:
  """The :class:`~banel_jax.core.extension.Extension` that rejects seen failures.

  Args:
    capacity: distinct failures kept per seed (the run's NRE budget).
  """
  config = SeenFailuresConfig(capacity=capacity)

  def observe(state, x, failed, succeeded):
    del succeeded
    state = sample_set.add_samples(state, x, failed)
    return state, {"n_seen_failures": state.size}

  return Extension(
      name="seen_failures",
      init=lambda prior_params: sample_set.empty_sample_set(config.capacity),
      observe=observe,
      accept=lambda state, x: ~sample_set.contains(state, x),
      config=config)
