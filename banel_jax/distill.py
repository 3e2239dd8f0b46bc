"""Distillation: fit the next proposal to the current one outside the regions."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from banel_jax.config import BanelConfig
from banel_jax.mle import fit_weighted_mle
from banel_jax.posterior import RegionBank, rejection_mask
from banel_jax.types import GenerativeModel, Params, PRNGKey, Samples


def make_distill_tx(config: BanelConfig) -> optax.GradientTransformation:
  """The proposal's optimizer (Adam at ``distill_learning_rate``)."""
  return optax.adam(config.distill_learning_rate)


Distiller = Callable[..., tuple[train_state.TrainState, dict]]


def make_distiller(model: GenerativeModel, config: BanelConfig) -> Distiller:
  """Returns ``distill(proposal, prior_params, bank, key, extra_x, extra_w)``.

  ``distill`` draws ``config.distill_samples`` samples from the current proposal
  (no reward evaluations), weights those inside the bank's regions by 0, and
  fine-tunes by weighted maximum likelihood — from the current params, or from
  ``prior_params`` when ``config.distill_reset``. The optimizer state restarts
  each round. ``extra_x``/``extra_w`` (may be ``None``) join the training set, e.g.
  successes when the user allows learning from them.

  Returns of ``distill``:
    ``(proposal, metrics)``; ``metrics["distill_accept_rate"]`` is the fraction
    of drawn samples outside the regions.
  """
  n = config.distill_samples

  def distill(proposal: train_state.TrainState, prior_params: Params,
              bank: RegionBank, key: PRNGKey, extra_x: Samples | None = None,
              extra_w: jax.Array | None = None):
    sample_key, train_key = jax.random.split(key)
    x = model.sample(proposal.params, sample_key, n)
    accept = ~rejection_mask(model, bank, x, config.region_strategy)
    weights = accept.astype(jnp.float32)
    if extra_x is not None:
      x = jnp.concatenate([x, extra_x.astype(x.dtype)], axis=0)
      weights = jnp.concatenate([weights, extra_w.astype(jnp.float32)], axis=0)
    start = prior_params if config.distill_reset else proposal.params
    state = proposal.replace(params=start, opt_state=proposal.tx.init(start))
    state, losses = fit_weighted_mle(state, x, weights, train_key,
                                     epochs=config.distill_epochs,
                                     batch_size=config.distill_batch_size)
    metrics = {"distill_accept_rate": jnp.mean(accept.astype(jnp.float32)),
               "distill_loss": losses[-1].mean()}
    return state, metrics

  return distill
