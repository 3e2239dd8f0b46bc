"""Exact rejection: sample the pretrained model, reject every failure already seen.

BaNEL with perfect memory and no generalisation: the failures scored so far are
kept in a hash set, and the sampler is

    p(x) ∝ p_0(x) * 1[x not among the seen failures],

drawn by rejection from the pretrained model. Its success rate is
``p_success / (1 - p_0(seen failures))``. The gap between it and BaNEL is what
the failure model's generalisation is worth. Successes are never stored (they
are not failures; ``r_learn = 0``), so nothing is learned from them.

The set is a fixed-capacity array sorted by a 32-bit hash of each sample
(:func:`~banel_jax.baselines.common.hash_samples`), looked up with
``searchsorted``; a hit also compares the stored sample itself, so membership is
exact (for integer scalars the hash is the value itself). Everything is
shape-static and ``vmap``-able.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from banel_jax.core import posterior
from banel_jax.core.protocol import RoundBatch, round_masks
from banel_jax.baselines.common import Baseline, count_distinct, hash_samples
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples

_EMPTY = jnp.uint32(0xFFFFFFFF)  # hash of an empty slot (sorts last)


class FailureSet(struct.PyTreeNode):
  """Seen failures, sorted by hash; empty slots last.

  Attributes:
    hashes: ``uint32[capacity]`` sorted hashes (``0xFFFFFFFF`` in empty slots).
    samples: ``[capacity, *event_shape]`` the samples in the same order.
    valid: ``bool[capacity]`` filled slots.
  """

  hashes: jax.Array
  samples: jax.Array
  valid: jax.Array

  @property
  def size(self) -> jax.Array:
    return jnp.sum(self.valid.astype(jnp.int32))


def empty_failure_set(capacity: int, event_shape: tuple[int, ...], dtype) -> FailureSet:
  """A set with room for ``capacity`` samples."""
  return FailureSet(hashes=jnp.full((capacity,), _EMPTY, jnp.uint32),
                    samples=jnp.zeros((capacity,) + tuple(event_shape), dtype),
                    valid=jnp.zeros((capacity,), bool))


def contains(s: FailureSet, x: Samples, window: int = 4) -> jax.Array:
  """``bool[n]``: which samples of ``x`` are in the set.

  Checks the ``window`` slots from the first slot with an equal hash, so up to
  ``window`` stored samples sharing one 32-bit hash are told apart exactly.
  """
  cap = s.hashes.shape[0]
  h = hash_samples(x)
  start = jnp.searchsorted(s.hashes, h, side="left")
  n = x.shape[0]
  flat = x.reshape(n, -1)
  found = jnp.zeros((n,), bool)
  for j in range(window):
    idx = jnp.minimum(start + j, cap - 1)
    same = jnp.all(s.samples[idx].reshape(n, -1) == flat, axis=-1)
    found = found | (s.valid[idx] & (s.hashes[idx] == h) & same)
  return found


def insert(s: FailureSet, x: Samples, mask: jax.Array, window: int = 4) -> FailureSet:
  """Adds ``x[mask]`` (those not already in the set); drops what exceeds capacity."""
  cap = s.hashes.shape[0]
  mask = mask.astype(bool) & ~contains(s, x, window)
  # The first of equal samples within the batch only.
  n = x.shape[0]
  flat = x.reshape(n, -1)
  dup = jnp.all(flat[:, None] == flat[None, :], axis=-1) & jnp.tril(
      jnp.ones((n, n), bool), -1) & mask[None, :]
  mask = mask & ~jnp.any(dup, axis=1)
  h = jnp.where(mask, hash_samples(x), _EMPTY)
  hashes = jnp.concatenate([s.hashes, h])
  valid = jnp.concatenate([s.valid, mask])
  samples = jnp.concatenate([s.samples, x.astype(s.samples.dtype)])
  order = jnp.lexsort((~valid, hashes))[:cap]  # by hash, filled before empty
  return FailureSet(hashes=hashes[order], samples=samples[order], valid=valid[order])


@dataclasses.dataclass(frozen=True)
class ExactRejectionConfig:
  """Knobs of exact rejection (frozen, hashable).

  Attributes:
    capacity: most failures remembered; set it to the NRE budget.
    batch_size: candidates drawn from the pretrained model per batch.
    max_batches: most candidate batches per request (a request that runs out
      leaves ``info.n_filled < n``).
    window: equal-hash slots compared per lookup.
  """

  capacity: int = 1000
  batch_size: int = 4096
  max_batches: int = 1024
  window: int = 4

  def replace(self, **changes) -> "ExactRejectionConfig":
    return dataclasses.replace(self, **changes)


class ExactRejectionState(struct.PyTreeNode):
  """The run state of exact rejection (one seed)."""

  failures: FailureSet
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
        failures=empty_failure_set(c.capacity, model.event_shape, model.dtype),
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
      acc = ~contains(state.failures, cand, c.window)
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
    failures = insert(state.failures, batch.x, failure, c.window)
    n_eval = jnp.sum(evaluated.astype(jnp.int32))
    metrics = {"n_seen_failures": failures.size,
               "n_successes": jnp.sum(success.astype(jnp.int32)),
               "n_evaluated": n_eval,
               "n_distinct": count_distinct(batch.x, evaluated)}
    return state.replace(failures=failures, round=state.round + 1,
                         nre=state.nre + n_eval), metrics

  return Baseline(init=init, propose=propose, update=update, name="exact rejection",
                  model=model, config=config)
