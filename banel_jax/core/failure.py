"""Failure-density fitting: a generative model of the round's failures."""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from banel_jax.core.config import BanelConfig
from banel_jax.core.mle import fit_weighted_mle, microbatch_size_for, weighted_nll
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples

FailureFitter = Callable[[Params, Samples, jax.Array, PRNGKey],
                         tuple[train_state.TrainState, dict]]


def make_failure_tx(config: BanelConfig) -> optax.GradientTransformation:
  """The failure model's optimizer (Adam at ``failure_learning_rate``)."""
  return optax.adam(config.failure_learning_rate)


def make_failure_fitter(model: GenerativeModel, config: BanelConfig,
                        tx: optax.GradientTransformation | None = None) -> FailureFitter:
  """Returns ``fit(proposal_params, x, failure_mask, key) -> (state, metrics)``.

  ``fit`` trains a failure model ``p_phi`` (same family as the proposal) by
  maximum likelihood on the samples of ``x`` where ``failure_mask`` is true,
  for ``config.failure_epochs`` epochs of Adam at ``config.failure_learning_rate``.
  It starts from ``proposal_params`` (``failure_init="proposal"``) or from
  ``model.init`` (``"scratch"``). The mask makes the batch fixed-size: padded
  slots, unscored samples and successes carry weight 0.

  ``tx`` (default :func:`make_failure_tx`) becomes the returned ``TrainState``'s
  static ``tx`` field: pass the object the caller's own failure state holds, so
  the state's pytree structure, and with it every ``jit`` cache key, stays the
  same from round to round.

  Args of ``fit``:
    proposal_params: params of the proposal that produced ``x``.
    x: ``[m, *event_shape]`` the round's samples.
    failure_mask: ``bool[m]``, true where the oracle returned 0.
    key: PRNG key.

  Returns of ``fit``:
    A ``TrainState`` holding ``phi`` and a dict of scalar metrics
    (``failure_nll``: final weighted NLL on the failures, ``n_failures``).
  """
  tx = make_failure_tx(config) if tx is None else tx

  def fit(proposal_params, x, failure_mask, key):
    chex.assert_rank(failure_mask, 1)
    chex.assert_axis_dimension(x, 0, failure_mask.shape[0])
    chex.assert_type(failure_mask, bool)
    init_key, train_key = jax.random.split(key)
    if config.failure_init == "proposal":
      params = proposal_params
    else:
      params = model.init(init_key)
    state = train_state.TrainState.create(apply_fn=model.log_prob, params=params, tx=tx)
    weights = failure_mask.astype(jnp.float32)
    state, _ = fit_weighted_mle(state, x, weights, train_key,
                                epochs=config.failure_epochs,
                                batch_size=config.failure_batch_size,
                                microbatch_size=microbatch_size_for(
                                    config.failure_batch_size, config.train_microbatch))
    metrics = {
        "failure_nll": weighted_nll(model.log_prob, state.params, x, weights),
        "n_failures": jnp.sum(failure_mask.astype(jnp.int32)),
    }
    return state, metrics

  return fit
