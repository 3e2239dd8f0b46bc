"""Pretraining by maximum likelihood and the shipped parameter files.

:func:`fit_mle` trains a :class:`~banel_jax.GenerativeModel` on a data set
with Adam, deterministically from a seed (the initial params, the minibatch
order and nothing else are random), in one ``jit``-ed ``lax.scan``.
:func:`save_params` / :func:`load_params` write and read a flat dict of
arrays as ``.npz`` (the suite's models all have flat dict params).
"""

from __future__ import annotations

import os
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from banel_jax.core.types import GenerativeModel


def fit_mle(model: GenerativeModel, data: np.ndarray, *, seed: int, steps: int,
            batch_size: int, learning_rate: float) -> tuple[dict, np.ndarray]:
  """Maximum-likelihood params of ``model`` on ``data``, from ``model.init``.

  Args:
    model: the model family.
    data: ``[N, *event_shape]`` training samples (``N >= batch_size``).
    seed: the initial params' and the minibatches' seed.
    steps: Adam steps.
    batch_size: samples per step (drawn without replacement within a step).
    learning_rate: Adam's learning rate.

  Returns:
    ``(params, losses)``: the trained params (NumPy arrays) and the mean
    negative log-likelihood (nats per sample) of every step's batch.
  """
  data = jnp.asarray(data, model.dtype)
  chex.assert_shape(data, (None,) + tuple(model.event_shape))
  if not 1 <= batch_size <= data.shape[0]:
    raise ValueError(f"batch_size must be in [1, {data.shape[0]}], got {batch_size}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  init_key, batch_key = jax.random.split(jax.random.key(seed))
  params = model.init(init_key)
  tx = optax.adam(learning_rate)

  def loss_fn(p, xb):
    return -jnp.mean(model.log_prob(p, xb))

  def step(carry, key):
    p, opt = carry
    idx = jax.random.choice(key, data.shape[0], (batch_size,), replace=False)
    loss, grads = jax.value_and_grad(loss_fn)(p, data[idx])
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), loss

  @jax.jit
  def train(p):
    (p, _), losses = jax.lax.scan(step, (p, tx.init(p)),
                                  jax.random.split(batch_key, steps))
    return p, losses

  params, losses = train(params)
  return jax.tree.map(np.asarray, params), np.asarray(losses)


def save_params(path: str | os.PathLike, params: dict) -> None:
  """Writes a flat dict of arrays to ``path`` (``.npz``, uncompressed)."""
  if not isinstance(params, dict) or not all(
      isinstance(k, str) and hasattr(v, "shape") for k, v in params.items()):
    raise ValueError("params must be a flat dict of arrays")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, **{k: np.asarray(v, np.float32) for k, v in params.items()})
  os.replace(tmp, path)


def load_params(path: str | os.PathLike) -> dict:
  """The flat dict of ``float32`` arrays in ``path`` (:func:`save_params`)."""
  with np.load(path) as f:
    return {k: jnp.asarray(f[k], jnp.float32) for k in f.files}
