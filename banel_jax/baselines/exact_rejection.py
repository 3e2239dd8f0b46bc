"""Exact rejection: sample the pretrained model, reject every failure already seen.

BaNEL with perfect memory and no generalisation: the failures scored so far are
kept in a hash set, and the sampler is

    p(x) ∝ p_0(x) * 1[x not among the seen failures],

drawn by rejection from the pretrained model. Its success rate is
``p_success / (1 - p_0(seen failures))``. The gap between it and BaNEL is what
the failure model's generalisation is worth. Successes are never stored (they
are not failures; ``r_learn = 0``), so nothing is learned from them.

The set is :mod:`banel_jax.core.sample_set` (64-bit fingerprints in a sorted,
fixed-capacity array, the one behind the ``seen_failures`` extension), so
membership is exact up to fingerprint collisions near ``2^-64`` per pair.
Everything is shape-static and ``vmap``-able.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from banel_jax.core import posterior
from banel_jax.core.protocol import RoundBatch, round_masks
from banel_jax.baselines.common import Baseline, count_distinct
from banel_jax.core import sample_set
from banel_jax.core.types import GenerativeModel, Params, PRNGKey

@dataclasses.dataclass(frozen=True)
class ExactRejectionConfig:
  """Knobs of exact rejection (frozen, hashable).

  Attributes:
    capacity: most failures remembered; set it to the NRE budget.
    batch_size: candidates drawn from the pretrained model per batch.
    max_batches: most candidate batches per request (a request that runs out
      leaves ``info.n_filled < n``).
  """

  capacity: int = 1000
  batch_size: int = 4096
  max_batches: int = 1024

  def replace(self, **changes) -> "ExactRejectionConfig":
    return dataclasses.replace(self, **changes)


class ExactRejectionState(struct.PyTreeNode):
  """The run state of exact rejection (one seed)."""

  failures: sample_set.SampleSet
  prior_params: Params
  round: jax.Array
  nre: jax.Array
  key: jax.Array


def make_exact_rejection(model: GenerativeModel,
                         config: ExactRejectionConfig = ExactRejectionConfig()
                         ) -> Baseline:
  """Builds the exact-rejection reference ``(init, propose, update)``.

  ``propose`` returns the real sampling info (candidates drawn and accepted),
  so ``info.acceptance_rate`` is ``1 - p_0(seen failures)`` up to noise.
  """
  c = config
  event_rank = len(model.event_shape)

  def init(key: PRNGKey, prior_params: Params) -> ExactRejectionState:
    return ExactRejectionState(
        failures=sample_set.empty_sample_set(c.capacity),
        prior_params=prior_params, round=jnp.zeros((), jnp.int32),
        nre=jnp.zeros((), jnp.int32), key=key)

  def propose(state: ExactRejectionState, key: PRNGKey, n: int):
    """``n`` samples of ``p_0`` outside the seen failures, by rejection."""
    buf = jnp.zeros((n,) + tuple(model.event_shape), model.dtype)

    def cond(carry):
      i, filled = carry[0], carry[1]
      return (filled < n) & (i < c.max_batches)

    def body(carry):
      i, filled, buf, n_drawn, n_acc = carry
      cand = model.sample(state.prior_params, jax.random.fold_in(key, i), c.batch_size)
      acc = ~sample_set.contains(state.failures, cand)
      pos = filled + jnp.cumsum(acc.astype(jnp.int32)) - 1
      dest = jnp.where(acc & (pos < n), pos, n)  # n is out of bounds: dropped
      buf = buf.at[dest].set(cand, mode="drop")
      n_new = jnp.sum(acc.astype(jnp.int32))
      return (i + 1, jnp.minimum(filled + n_new, n), buf, n_drawn + c.batch_size,
              n_acc + n_new)

    zero = jnp.zeros((), jnp.int32)
    _, filled, buf, n_drawn, n_acc = jax.lax.while_loop(
        cond, body, (zero, zero, buf, zero, zero))
    return buf, posterior.PosteriorSampleInfo(n_filled=filled, n_drawn=n_drawn,
                                              n_accepted=n_acc)

  def update(state: ExactRejectionState, batch: RoundBatch, key: PRNGKey):
    del key
    evaluated, success = round_masks(batch, event_rank)
    failure = evaluated & ~success
    failures = sample_set.add_samples(state.failures, batch.x, failure)
    n_eval = jnp.sum(evaluated.astype(jnp.int32))
    metrics = {"n_seen_failures": failures.size,
               "n_successes": jnp.sum(success.astype(jnp.int32)),
               "n_evaluated": n_eval,
               "n_distinct": count_distinct(batch.x, evaluated)}
    return state.replace(failures=failures, round=state.round + 1,
                         nre=state.nre + n_eval), metrics

  return Baseline(init=init, propose=propose, update=update, name="exact rejection",
                  model=model, config=config)
