"""A categorical distribution over ``K`` items with free logits (a "table").

The simplest likelihood-based model: exact ``log p(x)``, exact sampling. It is the
model of the 1-D toy, where everything BaNEL does can be checked against exact
computation.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from banel_jax.core.types import GenerativeModel


def make_tabular_model(num_categories: int, init_logits: jax.Array | None = None,
                       init_scale: float = 0.0) -> GenerativeModel:
  """Returns a categorical model over ``{0, ..., num_categories - 1}``.

  Params are ``{"logits": f32[num_categories]}``; a sample is an ``int32`` scalar.

  Args:
    num_categories: number of categories ``K``.
    init_logits: optional logits returned by ``init`` (e.g. a prior shape); when
      ``None``, ``init`` draws ``init_scale * N(0, 1)`` logits (zero: uniform).
    init_scale: scale of the random initial logits.

  Returns:
    A :class:`GenerativeModel` with ``event_shape == ()`` and ``dtype == int32``.
  """
  if num_categories < 2:
    raise ValueError(f"num_categories must be >= 2, got {num_categories}")
  if init_logits is not None:
    init_logits = jnp.asarray(init_logits, jnp.float32)
    if init_logits.shape != (num_categories,):
      raise ValueError(f"init_logits must have shape ({num_categories},), got "
                       f"{init_logits.shape}")

  def init(key):
    if init_logits is not None:
      return {"logits": init_logits}
    return {"logits": init_scale * jax.random.normal(key, (num_categories,))}

  def log_prob(params, x):
    chex.assert_rank(x, 1)
    chex.assert_type(x, int)
    logp = jax.nn.log_softmax(params["logits"])
    return logp[x]

  def sample(params, key, n):
    return jax.random.categorical(key, params["logits"], shape=(n,)).astype(jnp.int32)

  return GenerativeModel(init=init, log_prob=log_prob, sample=sample,
                         event_shape=(), dtype=jnp.int32)
