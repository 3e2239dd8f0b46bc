"""The 1-D toy: a discretised standard normal, rewarded only at -2 and +2.

Categorical over ``K`` bin centres evenly spaced on ``[-3, 3]`` with logits
``-x^2 / 2`` (a discretised N(0, 1)); the reward is 1 only at the bins of -2 and
+2. The prior's success rate is about 1.1% for ``K = 61``. Everything is exact.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from banel_jax.models.tabular import make_tabular_model
from banel_jax.core.types import GenerativeModel


@dataclasses.dataclass(frozen=True)
class Toy1DTask:
  """Task definition.

  Attributes:
    num_bins: ``K`` (odd, so that 0 and ±2 fall on bin centres when
      ``6 / (K - 1)`` divides 2).
    low, high: range of the bin centres.
    targets: positions rewarded with 1.
  """

  num_bins: int = 61
  low: float = -3.0
  high: float = 3.0
  targets: tuple[float, ...] = (-2.0, 2.0)

  def __post_init__(self):
    if self.num_bins < 3:
      raise ValueError(f"num_bins must be >= 3, got {self.num_bins}")
    if not self.low < self.high:
      raise ValueError(f"need low < high, got {self.low}, {self.high}")

  @property
  def centres(self) -> np.ndarray:
    return np.linspace(self.low, self.high, self.num_bins)

  @property
  def target_bins(self) -> np.ndarray:
    return np.array([int(np.argmin(np.abs(self.centres - t))) for t in self.targets])

  def prior_logits(self) -> jnp.ndarray:
    c = jnp.asarray(self.centres, jnp.float32)
    return -0.5 * c**2

  def model(self) -> GenerativeModel:
    """The tabular model; its ``init`` gives uniform logits (a scratch start)."""
    return make_tabular_model(self.num_bins)

  def prior_params(self) -> dict:
    """The "pretrained" params: logits of the discretised N(0, 1)."""
    return {"logits": self.prior_logits()}

  def oracle(self, x) -> np.ndarray:
    """Reward 1 where ``x`` is a target bin; ``x`` is an int array ``[n]``."""
    x = np.asarray(x)
    return np.isin(x, self.target_bins).astype(np.float32)

  def exact_success_rate(self, log_probs) -> float:
    """Mass of the target bins under a distribution given as ``log p[K]``."""
    p = np.exp(np.asarray(log_probs, np.float64))
    return float(p[self.target_bins].sum() / p.sum())


def distributions(task: Toy1DTask, state) -> dict[str, np.ndarray]:
  """Exact pmfs of one seed's run state over all bins (for plots and checks).

  Args:
    task: the toy task.
    state: a :class:`~banel_jax.core.banel.BanelState` of one seed (no seed axis).

  Returns:
    ``{"prior", "proposal", "failure", "posterior"}``, each ``float64[K]``
    summing to 1. ``posterior`` is the exploration posterior
    ``p_0 * 1[x not in R]`` renormalised (all zeros if every bin is rejected).
  """
  from banel_jax.core.posterior import log_posterior_unnormalized  # avoid a cycle
  model = task.model()
  xs = jnp.arange(task.num_bins, dtype=jnp.int32)

  def pmf(logp):
    p = np.exp(np.asarray(logp, np.float64))
    total = p.sum()
    return p / total if total > 0 else p

  return {
      "prior": pmf(model.log_prob(state.prior_params, xs)),
      "proposal": pmf(model.log_prob(state.proposal.params, xs)),
      "failure": pmf(model.log_prob(state.failure.params, xs)),
      "posterior": pmf(log_posterior_unnormalized(model, state.prior_params,
                                                  state.regions, xs)),
  }
