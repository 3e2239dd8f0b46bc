"""Random network distillation (RND) novelty bonus (Burda et al. 2018).

A fixed, randomly initialised *target* network ``g(x) in R^k`` and a *predictor*
``g_hat`` trained to match it on the samples the generator produced. Inputs the
predictor has seen (or ones like them) are predicted well; novel ones are not.

* Input: a featuriser (e.g. :func:`one_hot_features`: the padded sequence's
  one-hot, flattened), standardised with running mean / std initialised from
  unscored pretrained samples (free: no NRE) and clipped to ``[-5, 5]``; the same
  standardised input feeds both networks.
* Target: MLP ``hidden -> k`` with orthogonal init (gain ``sqrt(2)``), never
  trained. Predictor: the same with one more hidden layer.
* Bonus: ``||g_hat(x) - g(x)||^2 / k``, computed **before** the predictor trains
  on the batch, divided by a running estimate of its standard deviation.
* Predictor training: Adam on the squared error over a random quarter of each
  round's scored samples (so the bonus does not vanish at once).

References:
  Burda, Edwards, Storkey, Klimov (2018), "Exploration by Random Network
  Distillation", arXiv 1810.12894.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from banel_jax.baselines.common import Baseline, masked_mean
from banel_jax.baselines.policy_gradient import (PolicyGradientConfig,
                                                 make_policy_gradient)
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples

Featurizer = Callable[[Samples], jax.Array]  # x[n, *event] -> f32[n, d]


def one_hot_features(num_values: int) -> Featurizer:
  """Featuriser: flattened one-hot of each sample, ``f32[n, prod(event) * V]``.

  Works for scalars (``x[n]`` -> ``[n, V]``) and for token sequences
  (``x[n, L]`` -> ``[n, L * V]``); values outside ``[0, V)`` map to zeros.

  >>> import jax.numpy as jnp
  >>> one_hot_features(3)(jnp.array([[0, 2], [1, 1]])).tolist()
  [[1.0, 0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]]
  """
  if num_values < 1:
    raise ValueError(f"num_values must be >= 1, got {num_values}")

  def featurize(x: Samples) -> jax.Array:
    n = x.shape[0]
    flat = x.reshape(n, -1)
    return jax.nn.one_hot(flat, num_values, dtype=jnp.float32).reshape(n, -1)

  return featurize


@dataclasses.dataclass(frozen=True)
class RNDConfig:
  """RND's knobs (frozen, hashable).

  Attributes:
    hidden: hidden widths of the target; the predictor has one more layer of
      width ``hidden[-1]``.
    output_dim: ``k``, the embedding size.
    learning_rate: predictor Adam learning rate.
    predictor_steps: full-batch Adam steps per round on the training quarter.
    train_fraction: fraction of each round's scored samples the predictor trains
      on (drawn at random).
    obs_clip: standardised inputs are clipped to ``[-obs_clip, obs_clip]``.
    init_samples: unscored pretrained samples for the initial input statistics.
    update_obs_stats: keep updating the input statistics with each batch.
  """

  hidden: tuple[int, ...] = (256, 256)
  output_dim: int = 64
  learning_rate: float = 1e-4
  predictor_steps: int = 4
  train_fraction: float = 0.25
  obs_clip: float = 5.0
  init_samples: int = 1024
  update_obs_stats: bool = True

  def replace(self, **changes) -> "RNDConfig":
    return dataclasses.replace(self, **changes)


def orthogonalize(w: jax.Array, iterations: int = 60) -> jax.Array:
  """The (semi-)orthogonal polar factor ``U V^T`` of ``w = U S V^T``.

  Newton-Schulz iteration ``X <- 1.5 X - 0.5 X X^T X`` from ``w / ||w||_F``
  (matrix products only). Applied to a Gaussian matrix it gives a
  Haar-distributed orthogonal matrix, the distribution of the usual QR-based
  orthogonal init; LAPACK's QR is very slow on CPU under ``vmap`` (the driver
  ``vmap``s ``init`` over seeds).

  Args:
    w: ``[n_in, n_out]``.
    iterations: Newton-Schulz steps (60 reach float32 precision for a Gaussian
      ``256 x 256`` matrix).
  """
  tall = w.shape[0] >= w.shape[1]
  x = w if tall else w.T
  x = x / jnp.linalg.norm(x)  # spectral norm <= 1 < sqrt(3): converges

  def step(x, _):
    return 1.5 * x - 0.5 * x @ (x.T @ x), None

  x, _ = jax.lax.scan(step, x, None, length=iterations)
  return x if tall else x.T


def init_mlp(key: PRNGKey, sizes: tuple[int, ...]) -> list[dict]:
  """ReLU-MLP params with orthogonal kernels (gain ``sqrt(2)``; 1 for the output).

  One Gaussian draw for all kernels (a random draw per layer costs a compile of
  the PRNG each), zero biases.

  Args:
    key: PRNG key.
    sizes: ``(d_in, h_1, ..., d_out)``.

  Returns:
    A list of ``{"w": f32[a, b], "b": f32[b]}``, one per layer.
  """
  shapes = list(zip(sizes[:-1], sizes[1:]))
  flat = jax.random.normal(key, (sum(a * b for a, b in shapes),), jnp.float32)
  params, offset = [], 0
  for i, (a, b) in enumerate(shapes):
    gain = 1.0 if i == len(shapes) - 1 else np.sqrt(2.0)
    w = flat[offset:offset + a * b].reshape(a, b)
    offset += a * b
    params.append({"w": gain * orthogonalize(w), "b": jnp.zeros((b,), jnp.float32)})
  return params


def apply_mlp(params: list[dict], x: jax.Array) -> jax.Array:
  """``[n, d_in] -> [n, d_out]``: ReLU hidden layers, linear output."""
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


class Moments(struct.PyTreeNode):
  """Running mean / variance (population) of a stream, with its count."""

  mean: jax.Array
  var: jax.Array
  count: jax.Array

  def update(self, values: jax.Array, mask: jax.Array) -> "Moments":
    """Folds in the rows of ``values`` (``[n, ...]``) where ``mask`` (``bool[n]``)."""
    w = mask.astype(jnp.float32).reshape((-1,) + (1,) * (values.ndim - 1))
    n_b = jnp.sum(mask.astype(jnp.float32))
    mean_b = jnp.sum(w * values, axis=0) / jnp.maximum(n_b, 1.0)
    var_b = jnp.sum(w * (values - mean_b) ** 2, axis=0) / jnp.maximum(n_b, 1.0)
    total = self.count + n_b
    delta = mean_b - self.mean
    frac = n_b / jnp.maximum(total, 1e-8)
    mean = self.mean + delta * frac
    var = (self.var * self.count + var_b * n_b
           + delta ** 2 * self.count * frac) / jnp.maximum(total, 1e-8)
    keep = n_b > 0
    return Moments(mean=jnp.where(keep, mean, self.mean),
                   var=jnp.where(keep, var, self.var), count=total)

  @classmethod
  def of(cls, values: jax.Array) -> "Moments":
    return cls(mean=jnp.mean(values, axis=0), var=jnp.var(values, axis=0),
               count=jnp.asarray(values.shape[0], jnp.float32))


class RNDBonus(NamedTuple):
  """RND as a :class:`~banel_jax.baselines.policy_gradient.NoveltyBonus` plus parts.

  Attributes:
    init, update, name: the :class:`NoveltyBonus` contract.
    raw_bonus: ``raw_bonus(state, x) -> f32[n]``, the unnormalised
      ``||g_hat(x) - g(x)||^2 / k``.
    train_predictor: ``train_predictor(state, x, mask=None) -> state``, the
      predictor's ``predictor_steps`` Adam steps on ``x[mask]``.
  """

  init: Callable[[PRNGKey, Params], Any]
  update: Callable[[Any, Samples, jax.Array, PRNGKey], tuple[jax.Array, Any, dict]]
  name: str
  raw_bonus: Callable[[Any, Samples], jax.Array]
  train_predictor: Callable[..., Any]


class RNDState(struct.PyTreeNode):
  """RND's state: the fixed target, the predictor and the running statistics.

  Attributes:
    target_params: params of the fixed target network.
    predictor: ``TrainState`` of the predictor.
    obs: running moments of the features (standardises the inputs).
    bonus: running moments of the raw bonus (its std normalises the bonus).
  """

  target_params: Params
  predictor: train_state.TrainState
  obs: Moments
  bonus: Moments


def make_rnd_bonus(model: GenerativeModel, featurize: Featurizer,
                   config: RNDConfig = RNDConfig()) -> RNDBonus:
  """Builds the RND bonus for samples of ``model``.

  Args:
    model: the generator's family (its ``sample`` draws the free pretrained
      samples that initialise the input statistics).
    featurize: ``x[n, *event] -> f32[n, d]`` (e.g. :func:`one_hot_features`).
    config: :class:`RNDConfig`.

  Returns:
    An :class:`RNDBonus` (a :class:`NoveltyBonus` whose state is an
    :class:`RNDState`); its ``update`` returns the normalised bonus of the batch,
    computed before the predictor trains on it.
  """
  cfg = config
  target_sizes = tuple(cfg.hidden) + (cfg.output_dim,)
  predictor_sizes = tuple(cfg.hidden) + (cfg.hidden[-1], cfg.output_dim)
  tx = optax.adam(cfg.learning_rate)
  if not 0.0 < cfg.train_fraction <= 1.0:
    raise ValueError(f"train_fraction must be in (0, 1], got {cfg.train_fraction}")

  def init(key: PRNGKey, prior_params: Params) -> RNDState:
    sample_key, target_key, pred_key = jax.random.split(key, 3)
    feats = featurize(model.sample(prior_params, sample_key, cfg.init_samples))
    d = feats.shape[-1]
    pred_state = train_state.TrainState.create(
        apply_fn=apply_mlp, params=init_mlp(pred_key, (d,) + predictor_sizes), tx=tx)
    zero = jnp.zeros((), jnp.float32)
    return RNDState(target_params=init_mlp(target_key, (d,) + target_sizes),
                    predictor=pred_state, obs=Moments.of(feats),
                    bonus=Moments(mean=zero, var=zero, count=zero))

  def standardize(obs: Moments, x: Samples) -> jax.Array:
    f = featurize(x)
    z = (f - obs.mean) / jnp.sqrt(obs.var + 1e-8)
    return jnp.clip(z, -cfg.obs_clip, cfg.obs_clip)

  def errors(pred_params, state: RNDState, z: jax.Array) -> jax.Array:
    g = jax.lax.stop_gradient(apply_mlp(state.target_params, z))
    return jnp.mean((apply_mlp(pred_params, z) - g) ** 2, axis=-1)  # ||.||^2 / k

  def raw(state: RNDState, x: Samples) -> jax.Array:
    return errors(state.predictor.params, state, standardize(state.obs, x))

  def train(state: RNDState, x: Samples, mask: jax.Array) -> tuple[RNDState, jax.Array]:
    z = standardize(state.obs, x)

    def step(pred, _):
      loss, grads = jax.value_and_grad(
          lambda p: masked_mean(errors(p, state, z), mask))(pred.params)
      return pred.apply_gradients(grads=grads), loss

    pred, losses = jax.lax.scan(step, state.predictor, None,
                                length=cfg.predictor_steps)
    return state.replace(predictor=pred), losses

  def update(state: RNDState, x: Samples, mask: jax.Array, key: PRNGKey):
    chex.assert_shape(mask, (x.shape[0],))
    mask = mask.astype(bool)
    # 1. Bonus before the predictor learns from this batch.
    r = raw(state, x)
    bonus_moments = state.bonus.update(r, mask)
    bonus = r / jnp.sqrt(bonus_moments.var + 1e-8)
    state = state.replace(bonus=bonus_moments)
    if cfg.update_obs_stats:
      state = state.replace(obs=state.obs.update(featurize(x), mask))
    # 2. Predictor on a random quarter of the scored samples.
    quarter = mask & (jax.random.uniform(key, mask.shape) < cfg.train_fraction)
    state, losses = train(state, x, quarter)
    metrics = {"rnd_raw_bonus_mean": masked_mean(r, mask),
               "rnd_bonus_std_running": jnp.sqrt(bonus_moments.var),
               "rnd_predictor_loss": losses[-1]}
    return bonus, state, metrics

  def train_predictor(state: RNDState, x: Samples, mask: jax.Array | None = None
                      ) -> RNDState:
    mask = jnp.ones((x.shape[0],), bool) if mask is None else mask.astype(bool)
    return train(state, x, mask)[0]

  return RNDBonus(init=init, update=update, name="RND", raw_bonus=raw,
                  train_predictor=train_predictor)


def make_rnd(model: GenerativeModel, featurize: Featurizer,
             config: PolicyGradientConfig = PolicyGradientConfig(),
             rnd_config: RNDConfig = RNDConfig()) -> Baseline:
  """REINFORCE (PPO-clip) with the RND bonus; ``r_learn = 0``: rewards never learned.

  Args:
    model: the generator's family.
    featurize: RND's input featuriser (e.g. :func:`one_hot_features`).
    config: the policy update (``bonus_weight`` is ``beta``).
    rnd_config: RND's knobs.
  """
  return make_policy_gradient(model, config, make_rnd_bonus(model, featurize,
                                                            rnd_config), name="RND")
