"""The suite's two new model families: a product of categoricals and a small
autoregressive sequence model with a running-sum state.

Both are :class:`~banel_jax.GenerativeModel` bundles of pure functions with
exact log-likelihoods and ancestral sampling, cheap enough that ten seeds of a
BaNEL run fit side by side on a CPU. (The suite's binary images use the NADE
of :mod:`banel_jax.models.pixel`, its 1-D toy the tabular model of
:mod:`banel_jax.models.tabular`.)

* :func:`make_product_model`: ``D`` independent categoricals over ``K`` values
  each, params ``{"logits": f32[D, K]}``. ``log p(x) = sum_i log_softmax(
  logits[i])[x_i]``; sampling draws every position at once.
* :func:`make_sequence_model`: a categorical NADE over ``L`` tokens of a
  vocabulary of ``V``. Position ``t`` reads the prefix through a running sum of
  position-specific token embeddings::

    a_t = pos[t] + sum_{j < t} embed[j, x_j]            (f32[H])
    h_t = tanh(tanh(a_t) @ w2 + b2)                     (f32[H])
    logits_t = h_t @ out + bias[t]                      (f32[V])
    p(x) = prod_t softmax(logits_t)[x_t]

  The sum makes counts (nesting depth, stack depth, how many atoms) linear in
  the state, and the position-specific embeddings let it tell "a 7 in the
  tens place" from "a 7 in the units place". ``log_prob`` is one pass (an
  exclusive cumulative sum over positions); ``sample`` is one ``lax.scan``
  step per position, each adding one embedding row, so both cost
  ``O(L * H * (H + V))`` per sequence.

Example:
  >>> import jax
  >>> model = make_sequence_model(seq_len=4, vocab_size=3, hidden=8)
  >>> params = model.init(jax.random.key(0))
  >>> x = model.sample(params, jax.random.key(1), 5)
  >>> x.shape, model.log_prob(params, x).shape
  ((5, 4), (5,))
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from banel_jax.core.types import GenerativeModel, check_param_shapes


def _check_positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_n(n) -> None:
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"n must be a positive Python int (static), got {n!r}")


def _check_tokens(x, length: int, what: str) -> None:
  chex.assert_rank(x, 2, custom_message=f"x must be int[batch, {length}] {what}")
  chex.assert_axis_dimension(x, 1, length,
                             custom_message=f"x must hold {length} {what}")
  chex.assert_type(x, int, custom_message=f"x must hold integer {what}")


def make_product_model(num_positions: int, num_values: int, *,
                       init_scale: float = 0.0) -> GenerativeModel:
  """``D`` independent categoricals: params ``{"logits": f32[D, K]}``.

  Args:
    num_positions: ``D``, the length of a sample.
    num_values: ``K``, the values each position takes (``0..K-1``).
    init_scale: standard deviation of the initial logits (``0``: uniform).

  Returns:
    A :class:`~banel_jax.GenerativeModel` with ``event_shape == (D,)`` and
    ``dtype == int32``; a value outside ``[0, K)`` has ``log_prob == -inf``.

  >>> import jax, jax.numpy as jnp
  >>> model = make_product_model(2, 3)
  >>> params = model.init(jax.random.key(0))
  >>> round(float(jnp.exp(model.log_prob(params, jnp.array([[0, 2]]))[0])), 4)
  0.1111
  """
  _check_positive_int("num_positions", num_positions)
  _check_positive_int("num_values", num_values)
  if num_values < 2:
    raise ValueError(f"num_values must be >= 2, got {num_values}")
  d, k = num_positions, num_values

  def init(key):
    return {"logits": init_scale * jax.random.normal(key, (d, k), jnp.float32)}

  def log_prob(params, x):
    chex.assert_shape(params["logits"], (d, k))
    _check_tokens(x, d, "values")
    logp = jax.nn.log_softmax(params["logits"], axis=-1)  # [D, K]
    xi = x.astype(jnp.int32)
    per = jnp.take_along_axis(logp[None], jnp.clip(xi, 0, k - 1)[..., None],
                              axis=-1)[..., 0]  # [B, D]
    valid = (xi >= 0) & (xi < k)
    return jnp.sum(jnp.where(valid, per, -jnp.inf), axis=1)

  def sample(params, key, n):
    _check_n(n)
    chex.assert_shape(params["logits"], (d, k))
    return jax.random.categorical(key, params["logits"], axis=-1,
                                  shape=(n, d)).astype(jnp.int32)

  return GenerativeModel(init=init, log_prob=log_prob, sample=sample,
                         event_shape=(d,), dtype=jnp.int32)


SEQUENCE_PARAM_NAMES = ("embed", "pos", "w2", "b2", "out", "bias")


def sequence_param_count(seq_len: int, vocab_size: int, hidden: int) -> int:
  """Parameters of :func:`make_sequence_model` at these sizes.

  >>> sequence_param_count(12, 8, 32)
  4864
  """
  l, v, h = seq_len, vocab_size, hidden
  return l * v * h + l * h + h * h + h + h * v + l * v


def _sequence_shapes(l: int, v: int, h: int) -> dict:
  return {"embed": (l, v, h), "pos": (l, h), "w2": (h, h), "b2": (h,),
          "out": (h, v), "bias": (l, v)}


def make_sequence_model(seq_len: int, vocab_size: int, hidden: int, *,
                        init_scale: float = 0.1) -> GenerativeModel:
  """The running-sum autoregressive model of fixed-length token rows.

  Params are ``{"embed": f32[L, V, H], "pos": f32[L, H], "w2": f32[H, H],
  "b2": f32[H], "out": f32[H, V], "bias": f32[L, V]}`` (see the module doc).

  Args:
    seq_len: ``L``, the length of a sample (pad inside the vocabulary for
      shorter ones).
    vocab_size: ``V``, token ids ``0..V-1``.
    hidden: ``H``, the width of the state.
    init_scale: scale of the initial weights (``w2`` is scaled by
      ``1 / sqrt(H)`` on top).

  Returns:
    A :class:`~banel_jax.GenerativeModel` with ``event_shape == (L,)`` and
    ``dtype == int32``; a token outside ``[0, V)`` has ``log_prob == -inf``.
  """
  for name, value in (("seq_len", seq_len), ("vocab_size", vocab_size),
                      ("hidden", hidden)):
    _check_positive_int(name, value)
  if vocab_size < 2:
    raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
  l, v, h = seq_len, vocab_size, hidden
  shapes = _sequence_shapes(l, v, h)

  def check(params):
    check_param_shapes(params, shapes)

  def init(key):
    ke, kp, kw, ko = jax.random.split(key, 4)
    return {"embed": init_scale * jax.random.normal(ke, (l, v, h), jnp.float32),
            "pos": init_scale * jax.random.normal(kp, (l, h), jnp.float32),
            "w2": jax.random.normal(kw, (h, h), jnp.float32) / jnp.sqrt(h),
            "b2": jnp.zeros((h,), jnp.float32),
            "out": init_scale * jax.random.normal(ko, (h, v), jnp.float32),
            "bias": jnp.zeros((l, v), jnp.float32)}

  def head(params, acc, t):
    """Logits of position ``t`` from its prefix sum ``acc`` (``[..., H]``)."""
    a = jnp.tanh(acc + params["pos"][t])
    hid = jnp.tanh(a @ params["w2"] + params["b2"])
    return hid @ params["out"] + params["bias"][t]

  def log_prob(params, x):
    check(params)
    _check_tokens(x, l, "tokens")
    xi = x.astype(jnp.int32)
    valid = (xi >= 0) & (xi < v)
    safe = jnp.where(valid, xi, 0)
    rows = params["embed"][jnp.arange(l)[None, :], safe]  # [B, L, H]
    before = jnp.cumsum(rows, axis=1) - rows  # sum over j < t
    logits = head(params, before, jnp.arange(l))  # [B, L, V]
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, tok, -jnp.inf), axis=1)

  def sample(params, key, n):
    _check_n(n)
    check(params)
    keys = jax.random.split(key, l)

    def step(acc, inp):
      t, k = inp
      logits = head(params, acc, t)  # [n, V]
      tok = jax.random.categorical(k, logits, axis=-1).astype(jnp.int32)
      return acc + params["embed"][t][tok], tok

    acc0 = jnp.zeros((n, h), jnp.float32)
    _, toks = jax.lax.scan(step, acc0, (jnp.arange(l), keys))
    return toks.T  # [n, L]

  return GenerativeModel(init=init, log_prob=log_prob, sample=sample,
                         event_shape=(l,), dtype=jnp.int32)


def with_temperature(params: dict, temperature: float) -> dict:
  """The sequence model's ``params`` sampled at ``temperature``: every
  position's logits divided by it (``out`` and ``bias`` scaled by
  ``1 / temperature``; exact, the model family is unchanged).

  >>> import jax.numpy as jnp
  >>> p = with_temperature({"out": jnp.ones((2, 3)), "bias": jnp.ones((1, 3))}, 2.0)
  >>> float(p["out"][0, 0]), float(p["bias"][0, 0])
  (0.5, 0.5)
  """
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  return {**params, "out": params["out"] / temperature,
          "bias": params["bias"] / temperature}
