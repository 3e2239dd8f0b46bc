"""BaNEL: the run state and one round, as pure functions.

A round splits at the one impure boundary, the reward oracle:

    x, info = banel.propose(state, key, m)        # jit: sample the proposal
    rewards = oracle(x)                           # host: spends NRE
    state, metrics = banel.update(state, RoundBatch(...), key)   # jit: learn

``update`` is the paper's Algorithm 2 (Algorithm 1 in exact mode): fit the
failure model on the round's failures, add the new rejection region, and
(distilled mode) distil the next proposal from the current one outside the
regions. Successes are recorded, never learned from. Extensions
(:mod:`banel_jax.core.extension`) add to the round at named points. Everything
is shape-static, so ``jax.vmap`` runs seeds side by side and nothing
recompiles between rounds.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct
from flax.training import train_state

from banel_jax.core import posterior
from banel_jax.core.config import BanelConfig
from banel_jax.core.distill import make_distill_tx, make_distiller
from banel_jax.core.extension import Extension, RoundOutcome, check_extensions
from banel_jax.core.failure import make_failure_fitter, make_failure_tx
from banel_jax.core.protocol import (RoundBatch, all_finite, check_params,  # noqa: F401
                                     round_keys, round_masks)
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples


class BanelState(struct.PyTreeNode):
  """Everything a BaNEL run carries between rounds (one seed).

  Attributes:
    proposal: ``TrainState`` of the proposal ``p_theta`` (the pretrained model in
      exact mode, where the proposal is the exploration posterior itself).
    failure: ``TrainState`` of the last fitted failure model ``p_phi``.
    prior_params: the pretrained params ``theta_0``.
    regions: the stacked rejection regions so far.
    round: ``int32[]`` rounds completed.
    nre: ``int32[]`` reward evaluations spent on learning.
    key: the run's root PRNG key; round ``t`` uses ``fold_in(key, t)``.
    extensions: one state per extension, in the order they were passed
      (``()`` for the paper's algorithm).
  """

  proposal: train_state.TrainState
  failure: train_state.TrainState
  prior_params: Params
  regions: posterior.RegionBank
  round: jax.Array
  nre: jax.Array
  key: PRNGKey
  extensions: tuple[Any, ...] = ()


class Banel(NamedTuple):
  """BaNEL as a bundle of pure functions (see :func:`make_banel`)."""

  init: Callable[[PRNGKey, Params], BanelState]
  propose: Callable[[BanelState, PRNGKey, int], tuple[Samples, posterior.PosteriorSampleInfo]]
  update: Callable[[BanelState, RoundBatch, PRNGKey], tuple[BanelState, dict]]
  config: BanelConfig
  model: GenerativeModel
  extensions: tuple[Extension, ...] = ()


def make_banel(model: GenerativeModel, config: BanelConfig,
               extensions: Sequence[Extension] = ()) -> Banel:
  """Builds BaNEL's ``init``, ``propose`` and ``update`` for ``model``.

  Args:
    model: the generator's family (proposal and failure model alike).
    config: a :class:`BanelConfig` (static).
    extensions: plug-ins (:mod:`banel_jax.extensions`), e.g.
      ``(support_check(fn), seen_failures(capacity))``. None by default: the
      paper's algorithm.

  Returns:
    A :class:`Banel` bundle. All three functions are pure and jit-able;
    ``vmap`` them over a leading seed axis to run seeds side by side.
  """
  if not isinstance(config, BanelConfig):
    raise TypeError(f"config must be a BanelConfig, got {type(config).__name__}")
  extensions = check_extensions(extensions, config.mode)
  # One optimizer object for the initial and every fitted failure state: ``tx`` is
  # a static field, so a fresh ``adam`` per call would change the state's treedef
  # after round one and recompile ``propose`` and ``update`` on round two.
  failure_tx = make_failure_tx(config)
  fit_failure = make_failure_fitter(model, config, tx=failure_tx)
  distill = make_distiller(model, config)
  distill_tx = make_distill_tx(config)
  event_rank = len(model.event_shape)

  def accept_fns(ext_states):
    return [(e.name, (lambda x, e=e, s=s: e.accept(s, x)))
            for e, s in zip(extensions, ext_states) if e.accept is not None]

  def support_of(ext_states):
    fns = [fn for _, fn in accept_fns(ext_states)]
    if not fns:
      return None
    return lambda x: jnp.all(jnp.stack([fn(x) for fn in fns]), axis=0)

  def init(key: PRNGKey, prior_params: Params) -> BanelState:
    check_params(model, prior_params)
    proposal = train_state.TrainState.create(apply_fn=model.log_prob,
                                             params=prior_params, tx=distill_tx)
    failure = train_state.TrainState.create(apply_fn=model.log_prob,
                                            params=prior_params, tx=failure_tx)
    return BanelState(
        proposal=proposal, failure=failure, prior_params=prior_params,
        regions=posterior.empty_region_bank(prior_params, config.region_capacity),
        round=jnp.zeros((), jnp.int32), nre=jnp.zeros((), jnp.int32), key=key,
        extensions=tuple(e.init(prior_params) for e in extensions))

  def propose(state: BanelState, key: PRNGKey, n: int):
    """Samples the current proposal: ``(x[n, ...], info)``."""
    if config.mode == "exact":
      # The exploration posterior itself, by rejection from the pretrained model.
      return posterior.sample_posterior_by_rejection(
          model, state.prior_params, state.regions, key, n,
          batch_size=config.exact_batch_size, max_batches=config.exact_max_batches,
          region_strategy=config.region_strategy,
          support=support_of(state.extensions))
    x = model.sample(state.proposal.params, key, n)
    one = jnp.asarray(n, jnp.int32)
    return x, posterior.PosteriorSampleInfo(n_filled=one, n_drawn=one, n_accepted=one)

  def threshold(state, failure_params, log_norm, key):
    """``log tau`` of the new region: ``-log f``, or calibrated so that a
    fraction of fresh proposal samples falls inside."""
    if config.tau_mode == "factor":
      return posterior.log_tau_from_filter_factor(config.filter_factor)
    fresh, info = propose(state, key, config.calibration_samples)
    lr = posterior.log_ratio(model, state.proposal.params, failure_params, fresh,
                             log_norm)
    # Exact mode may fill fewer slots than asked (the regions cover most of the
    # prior): the zero-filled rest must not move the quantile.
    filled = jnp.arange(config.calibration_samples) < info.n_filled
    return posterior.calibrate_log_tau(lr, config.calibrated_reject_fraction,
                                       valid=filled)

  def observe(ext_states, x, failed, succeeded):
    ext_states, metrics = list(ext_states), {}
    for i, e in enumerate(extensions):
      if e.observe is not None:
        ext_states[i], m = e.observe(ext_states[i], x, failed, succeeded)
        metrics.update(m)
    return ext_states, metrics

  def next_proposal(state, regions, ext_states, x, succeeded, key):
    """Distilled mode: the proposal fitted to itself outside the regions (and
    outside what an extension refuses), plus any extension's extra data."""
    if config.mode == "exact":  # the proposal is the posterior itself
      nan = jnp.asarray(jnp.nan, jnp.float32)
      return state.proposal, {"distill_accept_rate": nan, "distill_ess": nan,
                              "distill_loss": nan}
    extra = [e.extra_data(s, x, succeeded)
             for e, s in zip(extensions, ext_states) if e.extra_data is not None]
    extra_x = jnp.concatenate([ex for ex, _ in extra]) if extra else None
    extra_w = jnp.concatenate([w for _, w in extra]) if extra else None
    return distill(state.proposal, state.prior_params, regions, key, extra_x, extra_w,
                   accept=accept_fns(ext_states))

  def after_update(ext_states, outcome):
    metrics = {}
    for i, e in enumerate(extensions):
      if e.after_update is not None:
        ext_states[i], outcome, m = e.after_update(ext_states[i], outcome)
        metrics.update(m)
    return ext_states, outcome, metrics

  def update(state: BanelState, batch: RoundBatch, key: PRNGKey):
    """One round of Algorithm 2 (Algorithm 1 in exact mode) on a scored batch."""
    evaluated, success = round_masks(batch, event_rank)
    failed = evaluated & ~success
    fail_key, tau_key, distill_key = jax.random.split(key, 3)
    log_norm = jnp.asarray(batch.log_norm, jnp.float32)
    # 1. The failure model, fitted on this round's failures only.
    failure, fmetrics = fit_failure(state.proposal.params, batch.x, failed, fail_key)
    # 2. The new region {x : p_phi(x) / p_theta(x) > 1 / tau}.
    log_tau = threshold(state, failure.params, log_norm, tau_key)
    regions = posterior.add_region(state.regions, state.proposal.params,
                                   failure.params, log_tau, log_norm,
                                   active=fmetrics["n_failures"] > 0)
    ext_states, ext_metrics = observe(state.extensions, batch.x, failed, success)
    # 3. The next proposal: the current one, distilled outside the regions.
    proposal, dmetrics = next_proposal(state, regions, ext_states, batch.x, success,
                                       distill_key)
    # 4. Extensions that change what the next round starts from.
    outcome = RoundOutcome(proposal=proposal, regions=regions,
                           prior_params=state.prior_params,
                           any_success=jnp.any(success))
    ext_states, outcome, after_metrics = after_update(ext_states, outcome)
    n_evaluated = jnp.sum(evaluated.astype(jnp.int32))
    metrics = {**dmetrics, **ext_metrics, **fmetrics, **after_metrics,
               "log_tau": log_tau, "n_successes": jnp.sum(success.astype(jnp.int32)),
               "n_evaluated": n_evaluated, "n_regions": outcome.regions.size,
               "params_finite": all_finite(proposal.params) & all_finite(failure.params)}
    new_state = state.replace(proposal=outcome.proposal, failure=failure,
                              regions=outcome.regions, extensions=tuple(ext_states),
                              round=state.round + 1, nre=state.nre + n_evaluated)
    return new_state, metrics

  return Banel(init=init, propose=propose, update=update, config=config, model=model,
               extensions=extensions)
