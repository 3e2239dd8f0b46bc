"""An autoregressive model of binary images: NADE over a raster of pixels.

A sample is a flat row of ``num_pixels`` ``int32`` values in ``{0, 1}`` (an
image read in raster order, row by row). Pixel ``i`` is a Bernoulli variable
whose logit is a function of pixels ``0..i-1`` through one shared hidden layer
(the neural autoregressive distribution estimator of Larochelle and Murray,
2011)::

  a_i = c + sum_{j < i} x_j W[j]          (f32[hidden])
  logit_i = b[i] + sigmoid(a_i) . V[i]
  p(x) = prod_i Bernoulli(x_i; sigmoid(logit_i))

``a_i`` is a running sum, so both the exact log-likelihood (one pass: an
exclusive cumulative sum over pixels) and ancestral sampling (one ``lax.scan``
step per pixel, each adding one row of ``W``) cost ``O(num_pixels * hidden)``
per image. A sequence model with a cache would pay attention over the whole
prefix at every pixel; at 196 pixels and two CPU cores this model samples
hundreds of thousands of images in seconds. Every ``int32[num_pixels]`` row of
zeros and ones is in the support; a row holding any other value has
``log_prob == -inf``. ``sample`` draws each pixel from the same conditionals
as ``log_prob`` up to the 2**-32 grid of its uniforms (a probability below
about 1e-10 is drawn as if it were 2**-32).

Example:
  >>> import jax
  >>> from banel_jax.models import pixel
  >>> model = pixel.make_pixel_model(num_pixels=4, hidden=8)
  >>> params = model.init(jax.random.key(0))
  >>> x = model.sample(params, jax.random.key(1), 3)
  >>> x.shape, model.log_prob(params, x).shape
  ((3, 4), (3,))
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

import banel_jax as bj
from banel_jax.core.types import check_param_shapes


def _check_params(params, num_pixels: int, hidden: int):
  check_param_shapes(params, {"w": (num_pixels, hidden), "c": (hidden,),
                              "v": (num_pixels, hidden), "b": (num_pixels,)})


def pixel_logits(params, x: jax.Array) -> jax.Array:
  """Teacher-forced logits ``f32[B, D]``: entry ``i`` is ``logit p(x_i = 1 | x_<i)``.

  Args:
    params: ``{"w": f32[D, H], "c": f32[H], "v": f32[D, H], "b": f32[D]}``.
    x: ``[B, D]`` pixels (any numeric dtype; only pixels ``< i`` enter entry ``i``).
  """
  contrib = x.astype(jnp.float32)[:, :, None] * params["w"][None]  # [B, D, H]
  before = jnp.cumsum(contrib, axis=1) - contrib  # sum over j < i
  hidden = jax.nn.sigmoid(params["c"] + before)
  return jnp.einsum("bdh,dh->bd", hidden, params["v"]) + params["b"]


def make_pixel_model(num_pixels: int, hidden: int, *, init_scale: float = 0.01,
                     init_bias: float = 0.0) -> bj.GenerativeModel:
  """Returns the NADE :class:`~banel_jax.GenerativeModel` of binary images.

  Params are ``{"w": f32[D, H], "c": f32[H], "v": f32[D, H], "b": f32[D]}`` with
  ``D = num_pixels`` and ``H = hidden`` (see the module doc for the model).

  Args:
    num_pixels: ``D``, the length of a sample (height times width).
    hidden: ``H``, the width of the shared hidden layer.
    init_scale: standard deviation of the initial ``W`` and ``V`` entries.
    init_bias: initial value of every pixel logit bias ``b`` (e.g. the log odds
      of the mean pixel of the data; ``0``: pixels start near fair coins).

  Returns:
    A :class:`~banel_jax.GenerativeModel` with ``event_shape == (num_pixels,)``
    and ``dtype == int32``.
  """
  for name, value in (("num_pixels", num_pixels), ("hidden", hidden)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  if not init_scale >= 0.0:
    raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
  d, h = num_pixels, hidden

  def init(key):
    kw, kv = jax.random.split(key)
    return {"w": init_scale * jax.random.normal(kw, (d, h), jnp.float32),
            "c": jnp.zeros((h,), jnp.float32),
            "v": init_scale * jax.random.normal(kv, (d, h), jnp.float32),
            "b": jnp.full((d,), init_bias, jnp.float32)}

  def log_prob(params, x):
    _check_params(params, d, h)
    chex.assert_rank(x, 2, custom_message=f"x must be int[batch, {d}]")
    chex.assert_axis_dimension(x, 1, d, custom_message=f"x must have {d} pixels")
    chex.assert_type(x, int, custom_message="x must hold integer pixels (0 or 1)")
    valid = (x == 0) | (x == 1)
    logits = pixel_logits(params, jnp.where(valid, x, 0))
    per_pixel = jnp.where(x == 1, jax.nn.log_sigmoid(logits),
                          jax.nn.log_sigmoid(-logits))
    return jnp.sum(jnp.where(valid, per_pixel, -jnp.inf), axis=1)

  def sample(params, key, n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise ValueError(f"n must be a positive Python int (static), got {n!r}")
    _check_params(params, d, h)
    # Uniforms on a grid of 2**-32 (jax.random.uniform's float32 grid is 2**-23,
    # which would put a floor of about 1e-7 under every pixel's probability).
    bits = jax.random.bits(key, (d, n), jnp.uint32)
    uniforms = (bits.astype(jnp.float32) + 0.5) * 2.0**-32

    def step(acc, inp):
      w_i, v_i, b_i, u = inp
      logit = jax.nn.sigmoid(acc) @ v_i + b_i  # [n]
      # Draw the less likely value with its own probability (<= 1/2, exact in
      # float32 even when tiny), rather than compare against 1 - tiny.
      minority = u < jax.nn.sigmoid(-jnp.abs(logit))
      pixel = jnp.where(logit < 0, minority, ~minority).astype(jnp.int32)
      return acc + pixel[:, None].astype(jnp.float32) * w_i, pixel

    acc0 = jnp.broadcast_to(params["c"], (n, h))
    _, pixels = jax.lax.scan(step, acc0,
                             (params["w"], params["v"], params["b"], uniforms))
    return pixels.T  # [n, D]

  return bj.GenerativeModel(init=init, log_prob=log_prob, sample=sample,
                            event_shape=(d,), dtype=jnp.int32)
