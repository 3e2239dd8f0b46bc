"""Turn a user's own Flax module into a :class:`~banel_jax.core.types.GenerativeModel`.

BaNEL needs two things of a model: exact ``log p(x)`` and ancestral sampling. Any
autoregressive network that maps a token prefix to next-token logits gives both;
:func:`autoregressive_model` wraps one in a few lines:

>>> import flax.linen as nn, jax, jax.numpy as jnp
>>> class TinyLM(nn.Module):   # causal: logits at t see tokens <= t only
...   vocab: int = 3
...   @nn.compact
...   def __call__(self, tokens):               # int[B, T] -> f32[B, T, vocab]
...     h = nn.Embed(self.vocab + 1, 8)(tokens)   # +1 id for BOS
...     h = jnp.cumsum(h, axis=1)                 # a causal summary of the prefix
...     return nn.Dense(self.vocab)(h)
>>> module = TinyLM()
>>> model = autoregressive_model(
...     init=lambda key: module.init(key, jnp.zeros((1, 4), jnp.int32))["params"],
...     logits=lambda params, tokens: module.apply({"params": params}, tokens),
...     seq_len=4, vocab_size=3, bos_id=3)
>>> params = model.init(jax.random.key(0))
>>> x = model.sample(params, jax.random.key(1), 5)
>>> x.shape, model.log_prob(params, x).shape
((5, 4), (5,))

Sequences have a fixed length (no end token): pad inside your vocabulary if you
need variable lengths, or use :mod:`banel_jax.models.transformer`, which handles
EOS/PAD and samples with a KV cache. Sampling here recomputes the whole prefix at
every step (``O(seq_len^2)``), which is simple and general; bring a cached
decoder for long sequences.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from banel_jax.core.types import GenerativeModel, Params, PRNGKey


def autoregressive_model(init: Callable[[PRNGKey], Params],
                         logits: Callable[[Params, jax.Array], jax.Array], *,
                         seq_len: int, vocab_size: int, bos_id: int
                         ) -> GenerativeModel:
  """A fixed-length autoregressive model from a causal logits function.

  Args:
    init: ``init(key) -> params``.
    logits: ``logits(params, tokens int32[B, T]) -> f32[B, T, vocab_size]``, causal:
      row ``t`` may depend on ``tokens[:, :t + 1]`` only. It is called on
      ``[BOS, x_0, ..., x_{T-2}]``; row ``t`` is the distribution of ``x_t``.
    seq_len: length ``T`` of a sample.
    vocab_size: number of token values a sample may hold (``0..vocab_size-1``).
    bos_id: the id fed before the first token (may lie outside the vocabulary,
      as long as your embedding has a row for it).

  Returns:
    A :class:`GenerativeModel` with ``event_shape == (seq_len,)``, ``int32``.
  """
  if seq_len < 1 or vocab_size < 2:
    raise ValueError(f"need seq_len >= 1 and vocab_size >= 2, got {seq_len}, "
                     f"{vocab_size}")

  def shifted(x):
    bos = jnp.full((x.shape[0], 1), bos_id, jnp.int32)
    return jnp.concatenate([bos, x[:, :-1].astype(jnp.int32)], axis=1)

  def checked_logits(params, tokens):
    out = logits(params, tokens)
    chex.assert_shape(out, (tokens.shape[0], tokens.shape[1], vocab_size),
                      custom_message="logits(params, tokens) must be "
                      "f32[batch, len, vocab_size]")
    return out.astype(jnp.float32)

  def log_prob(params, x):
    chex.assert_rank(x, 2, custom_message="x must be int[batch, seq_len]")
    chex.assert_axis_dimension(x, 1, seq_len)
    chex.assert_type(x, int, custom_message="x must hold integer token ids")
    logp = jax.nn.log_softmax(checked_logits(params, shifted(x)), axis=-1)
    x = x.astype(jnp.int32)
    tok = jnp.take_along_axis(logp, jnp.clip(x, 0, vocab_size - 1)[..., None],
                              axis=-1)[..., 0]
    in_range = (x >= 0) & (x < vocab_size)
    return jnp.sum(jnp.where(in_range, tok, -jnp.inf), axis=1)

  def sample(params, key, n):
    if not isinstance(n, int) or n < 1:
      raise ValueError(f"n must be a positive Python int (static), got {n!r}")

    def step(t, carry):
      x, key = carry
      key, sub = jax.random.split(key)
      row = checked_logits(params, shifted(x))[:, t]  # [n, V]
      tok = jax.random.categorical(sub, row, axis=-1).astype(jnp.int32)
      return x.at[:, t].set(tok), key

    x0 = jnp.zeros((n, seq_len), jnp.int32)
    x, _ = jax.lax.fori_loop(0, seq_len, step, (x0, key))
    return x

  return GenerativeModel(init=init, log_prob=log_prob, sample=sample,
                         event_shape=(seq_len,), dtype=jnp.int32)
