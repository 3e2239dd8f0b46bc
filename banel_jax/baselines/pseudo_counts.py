"""Count-based novelty: pseudo-counts from a density model, and exact counts.

**Pseudo-counts** (Bellemare et al. 2016; Ostrovski et al. 2017). A density
model ``rho`` of the generator's family is trained by maximum likelihood on the
samples seen so far (online: ``density_steps`` Adam steps per round on the new
batch, so older batches are remembered only through the params). The
*prediction gain* of ``x`` is

    PG(x) = log rho'(x) - log rho(x),

with ``rho'`` the model after one SGD step on ``x`` alone (per-sample steps
under ``vmap``). The pseudo-count is ``N(x) = 1 / (exp(c n^-1/2 max(PG, 0)) - 1)``
(``n`` samples seen, ``c = 0.1``) and the bonus ``1 / sqrt(N(x) + 0.01)``, which
:func:`count_bonus_from_prediction_gain` computes stably as
``sqrt(e / (1 + 0.01 e))`` with ``e = expm1(c n^-1/2 max(PG, 0))``.

The general pseudo-count of a density ``rho`` and its "recoding" ``rho'`` is
``N_hat = rho (1 - rho') / (rho' - rho)`` (:func:`pseudo_count`); for the
empirical frequency ``rho = N(x)/n``, ``rho' = (N(x) + 1)/(n + 1)`` it is exactly
the count ``N(x)`` (:func:`empirical_frequency`).

**Exact counts** for small discrete spaces: a count table ``N(x)`` and the bonus
``1 / sqrt(N(x) + 0.01)`` (:func:`make_exact_count_bonus`). When almost every
sample of a batch is new, every bonus is the same and the advantage vanishes;
the metric ``count_frac_new`` says when that happens.

The bonus weight ``beta`` is applied by the policy-gradient core
(``PolicyGradientConfig.bonus_weight``), so the bonuses here are unweighted.
The bonus never sees rewards.

References:
  Bellemare et al. (2016), "Unifying Count-Based Exploration and Intrinsic
  Motivation", arXiv 1606.01868; Ostrovski, Bellemare, van den Oord, Munos (2017),
  "Count-Based Exploration with Neural Density Models", arXiv 1703.01310.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from banel_jax.baselines.common import Baseline, masked_mean
from banel_jax.baselines.policy_gradient import (NoveltyBonus, PolicyGradientConfig,
                                                 make_policy_gradient)
from banel_jax.core.mle import weighted_nll
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples


def pseudo_count(rho: jax.Array, rho_prime: jax.Array) -> jax.Array:
  """``N_hat = rho (1 - rho') / (rho' - rho)``, the pseudo-count of a density.

  Args:
    rho: probability of ``x`` before the model is updated on ``x``.
    rho_prime: its probability after one update on ``x`` (the recoding
      probability); must exceed ``rho`` (a learning-positive model).

  >>> round(float(pseudo_count(jnp.asarray(3 / 10), jnp.asarray(4 / 11))), 4)
  3.0
  """
  return rho * (1.0 - rho_prime) / (rho_prime - rho)


def empirical_frequency(counts: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(rho, rho')`` of the empirical-frequency density over a count table.

  ``rho(x) = N(x) / n`` and, after one more observation of ``x``,
  ``rho'(x) = (N(x) + 1) / (n + 1)``, with ``n = sum(counts)``; with these,
  :func:`pseudo_count` returns ``N(x)`` exactly (up to float rounding).

  Args:
    counts: ``f32[K]`` counts.
    x: ``int[n]`` values in ``[0, K)``.
  """
  counts = counts.astype(jnp.float32)
  n = jnp.sum(counts)
  c = counts[x]
  return c / n, (c + 1.0) / (n + 1.0)


def count_bonus(counts: jax.Array) -> jax.Array:
  """``1 / sqrt(N + 0.01)``, the count bonus (unweighted)."""
  return jax.lax.rsqrt(counts + 0.01)


def count_bonus_from_prediction_gain(pg: jax.Array, n_seen: jax.Array,
                                     c: float = 0.1) -> jax.Array:
  """Stable ``1 / sqrt(N(x) + 0.01)`` with ``N = 1 / expm1(c n^-1/2 max(PG, 0))``.

  Computed as ``sqrt(e / (1 + 0.01 e))`` with ``e = expm1(z)``: finite for
  ``PG <= 0`` (bonus 0, an infinite pseudo-count) and for huge ``PG`` (bonus
  ``-> 10``).

  Args:
    pg: ``f32[n]`` prediction gains.
    n_seen: number of samples the density model has seen (``>= 1``).
    c: Ostrovski et al.'s constant.
  """
  z = c * jax.lax.rsqrt(jnp.maximum(jnp.asarray(n_seen, jnp.float32), 1.0)
                        ) * jnp.maximum(pg, 0.0)
  e = jnp.expm1(z)
  # e = inf (z > ~88) means N = 0: the bonus's limit 1 / sqrt(0.01) = 10.
  return jnp.where(jnp.isinf(e), 10.0, jnp.sqrt(e / (1.0 + 0.01 * e)))


def prediction_gain(model: GenerativeModel, params: Params, x: Samples,
                    learning_rate: float, chunk_size: int = 64) -> jax.Array:
  """``PG(x_i) = log rho'(x_i) - log rho(x_i)`` for each sample, ``f32[n]``.

  ``rho'`` is ``rho`` after one SGD step of size ``learning_rate`` on
  ``-log rho(x_i)`` alone. Per-sample steps run under ``vmap`` in chunks of
  ``chunk_size`` (``lax.map``), so memory holds ``chunk_size`` param copies.
  """

  def one(xi):
    xi = xi[None]
    lp, g = jax.value_and_grad(lambda p: model.log_prob(p, xi)[0])(params)
    stepped = jax.tree.map(lambda p, gi: p + learning_rate * gi, params, g)
    return model.log_prob(stepped, xi)[0] - lp

  return jax.lax.map(one, x, batch_size=min(chunk_size, x.shape[0]))


@dataclasses.dataclass(frozen=True)
class PseudoCountConfig:
  """Knobs of the pseudo-count bonus (frozen, hashable).

  Attributes:
    c: prediction-gain scale (0.1 in Ostrovski et al.).
    density_init: ``"scratch"`` starts ``rho`` from ``model.init`` (a model of
      what has been seen, nothing yet); ``"prior"`` from the pretrained params.
    density_learning_rate: Adam learning rate of ``rho``'s online MLE.
    density_steps: full-batch Adam steps per round on the new batch.
    pg_learning_rate: SGD step size that defines ``rho'``.
    chunk_size: samples per ``vmap`` chunk of the per-sample steps.
  """

  c: float = 0.1
  density_init: Literal["scratch", "prior"] = "scratch"
  density_learning_rate: float = 0.05
  density_steps: int = 4
  pg_learning_rate: float = 0.1
  chunk_size: int = 64

  def replace(self, **changes) -> "PseudoCountConfig":
    return dataclasses.replace(self, **changes)


class PseudoCountState(struct.PyTreeNode):
  """The density model and the number of samples it has seen."""

  density: train_state.TrainState
  n_seen: jax.Array


def make_pseudo_count_bonus(model: GenerativeModel,
                            config: PseudoCountConfig = PseudoCountConfig()
                            ) -> NoveltyBonus:
  """Builds the pseudo-count bonus with a density model of ``model``'s family.

  Returns:
    A :class:`NoveltyBonus` with a :class:`PseudoCountState`. ``update`` computes
    each sample's bonus from its prediction gain under the current ``rho`` (the
    count ``n`` includes the batch's samples), then trains ``rho`` on the batch.
  """
  cfg = config
  tx = optax.adam(cfg.density_learning_rate)
  if cfg.density_init not in ("scratch", "prior"):
    raise ValueError(f"density_init must be 'scratch' or 'prior', got "
                     f"{cfg.density_init!r}")

  def init(key: PRNGKey, prior_params: Params) -> PseudoCountState:
    params = model.init(key) if cfg.density_init == "scratch" else prior_params
    density = train_state.TrainState.create(apply_fn=model.log_prob, params=params,
                                            tx=tx)
    return PseudoCountState(density=density, n_seen=jnp.zeros((), jnp.float32))

  def update(state: PseudoCountState, x: Samples, mask: jax.Array, key: PRNGKey):
    del key
    chex.assert_shape(mask, (x.shape[0],))
    mask = mask.astype(bool)
    w = mask.astype(jnp.float32)
    n_seen = state.n_seen + jnp.sum(w)
    pg = prediction_gain(model, state.density.params, x, cfg.pg_learning_rate,
                         cfg.chunk_size)
    bonus = count_bonus_from_prediction_gain(pg, n_seen, cfg.c)

    def step(density, _):
      loss, grads = jax.value_and_grad(
          lambda p: weighted_nll(model.log_prob, p, x, w))(density.params)
      new = density.apply_gradients(grads=grads)
      # No step on a batch the oracle did not score at all.
      new = jax.tree.map(lambda a, b: jnp.where(jnp.sum(w) > 0, a, b), new, density)
      return new, loss

    density, losses = jax.lax.scan(step, state.density, None, length=cfg.density_steps)
    e = jnp.expm1(cfg.c * jax.lax.rsqrt(jnp.maximum(n_seen, 1.0))
                  * jnp.maximum(pg, 0.0))
    metrics = {"prediction_gain_mean": masked_mean(pg, mask),
               # log N_hat = -log e (capped where PG <= 0, an infinite count)
               "log_pseudo_count_mean": masked_mean(
                   -jnp.log(jnp.maximum(e, 1e-30)), mask),
               "density_nll": losses[-1]}
    return bonus, PseudoCountState(density=density, n_seen=n_seen), metrics

  return NoveltyBonus(init=init, update=update, name="pseudo-count")


class ExactCountState(struct.PyTreeNode):
  """A count table ``f32[K]`` of the samples seen so far."""

  counts: jax.Array


def make_exact_count_bonus(num_values: int) -> NoveltyBonus:
  """Exact-count bonus ``1 / sqrt(N(x) + 0.01)`` for integer scalars in ``[0, K)``.

  ``N(x)`` counts the scored samples of earlier rounds (the batch's own bonus is
  computed before the batch is counted).
  """

  def init(key: PRNGKey, prior_params: Params) -> ExactCountState:
    del key, prior_params
    return ExactCountState(counts=jnp.zeros((num_values,), jnp.float32))

  def update(state: ExactCountState, x: Samples, mask: jax.Array, key: PRNGKey):
    del key
    chex.assert_rank(x, 1, custom_message="exact counts need integer scalars x[n]")
    chex.assert_shape(mask, (x.shape[0],))
    mask = mask.astype(bool)
    n_before = state.counts[x]
    bonus = count_bonus(n_before)
    counts = state.counts.at[x].add(mask.astype(jnp.float32))
    metrics = {"count_frac_new": masked_mean((n_before == 0).astype(jnp.float32),
                                             mask)}
    return bonus, ExactCountState(counts=counts), metrics

  return NoveltyBonus(init=init, update=update, name="exact-count")


def make_pseudo_count(model: GenerativeModel,
                      config: PolicyGradientConfig = PolicyGradientConfig(),
                      count_config: PseudoCountConfig = PseudoCountConfig()
                      ) -> Baseline:
  """REINFORCE (PPO-clip) with the pseudo-count bonus; rewards never learned from."""
  return make_policy_gradient(model, config,
                              make_pseudo_count_bonus(model, count_config),
                              name="pseudo-count")


def make_exact_count(model: GenerativeModel, num_values: int,
                     config: PolicyGradientConfig = PolicyGradientConfig()) -> Baseline:
  """REINFORCE (PPO-clip) with the exact-count bonus (small discrete spaces)."""
  return make_policy_gradient(model, config, make_exact_count_bonus(num_values),
                              name="exact-count")
