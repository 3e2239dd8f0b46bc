"""Distillation: fit the next proposal to the current one outside the regions."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from banel_jax.core.config import BanelConfig
from banel_jax.core.mle import fit_weighted_mle, microbatch_size_for
from banel_jax.core.posterior import RegionBank, rejection_mask
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples


def make_distill_tx(config: BanelConfig) -> optax.GradientTransformation:
  """The proposal's optimizer (Adam at ``distill_learning_rate``)."""
  return optax.adam(config.distill_learning_rate)


Distiller = Callable[..., tuple[train_state.TrainState, dict]]
AcceptFn = Callable[[Samples], jax.Array]


def make_distiller(model: GenerativeModel, config: BanelConfig) -> Distiller:
  """Returns ``distill(proposal, prior_params, bank, key, extra_x=None,
  extra_w=None, accept=())``, the paper's distillation step.

  ``distill`` draws ``config.distill_samples`` samples from the current proposal
  (no reward evaluations; a share ``config.distill_prior_share`` of them from
  the pretrained model instead), weights those inside the bank's regions by 0 and the
  others by 1, and fine-tunes by weighted maximum likelihood, from the current
  params or, with ``config.distill_reset``, from ``prior_params``. The
  optimizer state restarts each round.

  ``accept`` is a sequence of ``(name, fn)`` with ``fn(x) -> bool[n]`` (the
  extensions' ``accept`` hooks): a sample any of them refuses counts as
  rejected too, and ``metrics[f"distill_{name}_reject_rate"]`` is the share of
  drawn samples that ``fn`` refuses (a region may reject some of them too).
  ``extra_x`` / ``extra_w`` (may be ``None``) join the training set.

  Returns of ``distill``:
    ``(proposal, metrics)``; ``metrics["distill_accept_rate"]`` is the fraction
    of drawn samples accepted and ``metrics["distill_ess"]`` the effective
    sample size ``(sum w)^2 / sum w^2`` of the training weights.
  """
  n = config.distill_samples
  n_prior = int(round(config.distill_prior_share * n))

  def distill(proposal: train_state.TrainState, prior_params: Params,
              bank: RegionBank, key: PRNGKey, extra_x: Samples | None = None,
              extra_w: jax.Array | None = None,
              accept: Sequence[tuple[str, AcceptFn]] = ()):
    sample_key, train_key = jax.random.split(key)
    if n_prior == 0:  # the paper's distillation
      x = model.sample(proposal.params, sample_key, n)
    elif n_prior == n:
      x = model.sample(prior_params, sample_key, n)
    else:
      proposal_key, prior_key = jax.random.split(sample_key)
      x = jnp.concatenate([model.sample(proposal.params, proposal_key, n - n_prior),
                           model.sample(prior_params, prior_key, n_prior)], axis=0)
    accepted = ~rejection_mask(model, bank, x, config.region_strategy)
    refused = {}
    for name, fn in accept:
      ok = fn(x)
      refused[name] = ~ok
      accepted = accepted & ok
    weights = accepted.astype(jnp.float32)
    if extra_x is not None:
      x = jnp.concatenate([x, extra_x.astype(x.dtype)], axis=0)
      weights = jnp.concatenate([weights, extra_w.astype(jnp.float32)], axis=0)
    start = prior_params if config.distill_reset else proposal.params
    state = proposal.replace(params=start, opt_state=proposal.tx.init(start))
    state, losses = fit_weighted_mle(state, x, weights, train_key,
                                     epochs=config.distill_epochs,
                                     batch_size=config.distill_batch_size,
                                     microbatch_size=microbatch_size_for(
                                         config.distill_batch_size,
                                         config.train_microbatch))
    metrics = {"distill_accept_rate": jnp.mean(accepted.astype(jnp.float32)),
               "distill_ess": effective_sample_size(weights),
               "distill_loss": losses[-1].mean()}
    for name, r in refused.items():
      metrics[f"distill_{name}_reject_rate"] = jnp.mean(r.astype(jnp.float32))
    return state, metrics

  return distill


def effective_sample_size(weights: jax.Array) -> jax.Array:
  """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 for all-zero weights)."""
  total = jnp.sum(weights)
  return jnp.where(total > 0, total ** 2 / jnp.maximum(jnp.sum(weights ** 2),
                                                       jnp.finfo(jnp.float32).tiny), 0.0)
