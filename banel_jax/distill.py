"""Distillation: fit the next proposal to the current one outside the regions."""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from banel_jax.config import BanelConfig
from banel_jax.mle import fit_weighted_mle, microbatch_size_for
from banel_jax.posterior import RegionBank, rejection_mask
from banel_jax.seen import SeenSet, contains
from banel_jax.types import GenerativeModel, Params, PRNGKey, Samples


def make_distill_tx(config: BanelConfig) -> optax.GradientTransformation:
  """The proposal's optimizer (Adam at ``distill_learning_rate``)."""
  return optax.adam(config.distill_learning_rate)


Distiller = Callable[..., tuple[train_state.TrainState, dict]]


def make_distiller(model: GenerativeModel, config: BanelConfig,
                   support: Callable[[Samples], jax.Array] | None = None
                   ) -> Distiller:
  """Returns ``distill(proposal, prior_params, bank, key, extra_x, extra_w,
  seen_failures=None)``.

  With ``support`` (a jit-able ``x -> bool[n]``), samples outside it count as
  rejected too: the distiller never fits what is known to score 0 for free.

  ``distill`` draws ``config.distill_samples`` samples from the current proposal
  (no reward evaluations), weights those inside the bank's regions by 0 (and, when
  ``config.distill_target == "posterior"``, the others by truncated importance
  weights ``p_theta_0(x) / p_theta(x)``, see :func:`posterior_weights`; when it is
  ``"mixture"``, half the samples come from the pretrained model instead and every
  accepted sample is weighted by :func:`mixture_weights`), and
  fine-tunes by weighted maximum likelihood — from the current params, or from
  ``prior_params`` when ``config.distill_reset``. The optimizer state restarts
  each round. ``extra_x``/``extra_w`` (may be ``None``) join the training set, e.g.
  successes when the user allows learning from them. Samples in
  ``seen_failures`` (a :class:`~banel_jax.seen.SeenSet`, optional) count as
  rejected; ``metrics["distill_seen_rate"]`` is the share of drawn samples in
  it (a region or the support check may reject some of them too).

  Returns of ``distill``:
    ``(proposal, metrics)``; ``metrics["distill_accept_rate"]`` is the fraction
    of drawn samples outside the regions and ``metrics["distill_ess"]`` the
    effective sample size ``(sum w)^2 / sum w^2`` of the training weights.
  """
  n = config.distill_samples
  n_prior = n // 2

  def distill(proposal: train_state.TrainState, prior_params: Params,
              bank: RegionBank, key: PRNGKey, extra_x: Samples | None = None,
              extra_w: jax.Array | None = None,
              seen_failures: SeenSet | None = None):
    sample_key, train_key = jax.random.split(key)
    if config.distill_target == "mixture":
      prior_key, sample_key = jax.random.split(sample_key)
      x = jnp.concatenate([model.sample(prior_params, prior_key, n_prior),
                           model.sample(proposal.params, sample_key, n - n_prior)])
    else:
      x = model.sample(proposal.params, sample_key, n)
    accept = ~rejection_mask(model, bank, x, config.region_strategy)
    if support is not None:
      accept = accept & support(x)
    if seen_failures is not None:
      already_failed = contains(seen_failures, x)
      accept = accept & ~already_failed
    if config.distill_target == "proposal":
      weights = accept.astype(jnp.float32)
    else:
      log_p0 = model.log_prob(prior_params, x)
      log_p = model.log_prob(proposal.params, x)
      weights = (posterior_weights(log_p0, log_p, accept)
                 if config.distill_target == "posterior" else
                 mixture_weights(log_p0, log_p, accept, prior_fraction=n_prior / n))
    if extra_x is not None:
      x = jnp.concatenate([x, extra_x.astype(x.dtype)], axis=0)
      weights = jnp.concatenate([weights, extra_w.astype(jnp.float32)], axis=0)
    start = prior_params if config.distill_reset else proposal.params
    state = proposal.replace(params=start, opt_state=proposal.tx.init(start))
    state, losses = fit_weighted_mle(state, x, weights, train_key,
                                     epochs=config.distill_epochs,
                                     batch_size=config.distill_batch_size,
                                     pack=config.distill_pack,
                                     microbatch_size=microbatch_size_for(
                                         config.distill_batch_size,
                                         config.train_microbatch))
    metrics = {"distill_accept_rate": jnp.mean(accept.astype(jnp.float32)),
               "distill_ess": effective_sample_size(weights),
               "distill_loss": losses[-1].mean()}
    if seen_failures is not None:
      metrics["distill_seen_rate"] = jnp.mean(already_failed.astype(jnp.float32))
    return state, metrics

  return distill


def posterior_weights(prior_log_prob: jax.Array, proposal_log_prob: jax.Array,
                      accept: jax.Array) -> jax.Array:
  """Truncated self-normalised importance weights toward the exploration posterior.

  Samples ``x_i ~ p_theta`` outside the regions (``accept``) get weights
  proportional to ``p_theta_0(x_i) / p_theta(x_i)``, so that weighted maximum
  likelihood targets ``p_theta_0(x) * 1[x not in R]``. Weights are scaled to mean
  1 over the accepted samples and capped at ``sqrt(n_accepted)`` (truncated
  importance sampling, Ionides 2008), which bounds the variance a single sample
  the proposal rarely draws could add. Rejected samples, and samples with a
  non-finite log ratio, get weight 0.

  Args:
    prior_log_prob: ``f32[N]`` ``log p_theta_0(x)``.
    proposal_log_prob: ``f32[N]`` ``log p_theta(x)`` of the proposal that drew x.
    accept: ``bool[N]`` samples outside every region.

  Returns:
    ``f32[N]`` non-negative weights, mean 1 over the accepted samples (before
    truncation); all 0 when nothing is accepted.
  """
  chex.assert_equal_shape([prior_log_prob, proposal_log_prob, accept])
  w, n_keep = _self_normalised(prior_log_prob - proposal_log_prob, accept)
  return jnp.minimum(w, jnp.sqrt(jnp.maximum(n_keep, 1.0)))


def _self_normalised(log_w: jax.Array, accept: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  """``exp(log_w)`` over the accepted samples with a finite ``log_w``, scaled to
  mean 1 over them (in log space, so large ratios cannot overflow); 0 elsewhere
  and everywhere when none is kept. Also returns the number kept."""
  keep = accept & jnp.isfinite(log_w)
  log_w = jnp.where(keep, log_w, -jnp.inf)
  n_keep = jnp.sum(keep.astype(jnp.float32))
  # logsumexp of an all -inf vector is -inf; guard it so the result is 0, not NaN.
  log_total = jax.nn.logsumexp(jnp.where(keep, log_w, -1e30))
  return jnp.where(keep, jnp.exp(log_w - log_total) * n_keep, 0.0), n_keep


def mixture_weights(prior_log_prob: jax.Array, proposal_log_prob: jax.Array,
                    accept: jax.Array, prior_fraction: float = 0.5) -> jax.Array:
  """Balance-heuristic weights toward the exploration posterior from a pooled sample.

  The pool holds a fraction ``a = prior_fraction`` of samples drawn from the
  pretrained model ``p_theta_0`` and the rest from the proposal ``p_theta``, i.e. it
  is one sample of ``q = a p_theta_0 + (1 - a) p_theta`` (multiple importance
  sampling with the balance heuristic, Veach & Guibas 1995). Accepted samples get
  ``p_theta_0(x) / q(x)``, which is at most ``1 / a`` however far the proposal has
  drifted, so weighted maximum likelihood targets ``p_theta_0(x) * 1[x not in R]``
  without the weight degeneracy of plain importance sampling
  (:func:`posterior_weights`): strings the pretrained model almost never writes
  (e.g. malformed ones a drifting proposal produces) get weight near 0, and the
  prior's own accepted samples keep the fit anchored even when the proposal has
  moved away. Weights are scaled to mean 1 over the accepted samples; rejected
  samples and non-finite log ratios get 0.

  Args:
    prior_log_prob: ``f32[N]`` ``log p_theta_0(x)``.
    proposal_log_prob: ``f32[N]`` ``log p_theta(x)``.
    accept: ``bool[N]`` samples outside every region.
    prior_fraction: share ``a`` in ``(0, 1)`` of the pool drawn from the prior.

  Returns:
    ``f32[N]`` non-negative weights; all 0 when nothing is accepted.
  """
  chex.assert_equal_shape([prior_log_prob, proposal_log_prob, accept])
  if not 0.0 < prior_fraction < 1.0:
    raise ValueError(f"prior_fraction={prior_fraction} must be in (0, 1)")
  a = prior_fraction
  log_q = jnp.logaddexp(jnp.log(a) + prior_log_prob, jnp.log1p(-a) + proposal_log_prob)
  return _self_normalised(prior_log_prob - log_q, accept)[0]


def effective_sample_size(weights: jax.Array) -> jax.Array:
  """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 for all-zero weights)."""
  total = jnp.sum(weights)
  return jnp.where(total > 0, total ** 2 / jnp.maximum(jnp.sum(weights ** 2),
                                                       jnp.finfo(jnp.float32).tiny), 0.0)
