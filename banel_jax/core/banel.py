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

  def update(state: BanelState, batch: RoundBatch, key: PRNGKey):
    evaluated, success = round_masks(batch, event_rank)
    fail_key, tau_key, distill_key = jax.random.split(key, 3)
    failure_mask = evaluated & ~success

    # 1. Failure model on this round's failures only.
    failure, fmetrics = fit_failure(state.proposal.params, batch.x, failure_mask,
                                    fail_key)
    # 2. The new region's threshold.
    log_norm = jnp.asarray(batch.log_norm, jnp.float32)
    if config.tau_mode == "factor":
      log_tau = posterior.log_tau_from_filter_factor(config.filter_factor)
    else:
      fresh, info = propose(state, tau_key, config.calibration_samples)
      lr = posterior.log_ratio(model, state.proposal.params, failure.params, fresh,
                               log_norm)
      # Exact mode may fill fewer slots than asked (the regions cover most of the
      # prior): the zero-filled rest must not move the quantile.
      filled = jnp.arange(config.calibration_samples) < info.n_filled
      log_tau = posterior.calibrate_log_tau(lr, config.calibrated_reject_fraction,
                                            valid=filled)
    # 3. The new region.
    has_failures = fmetrics["n_failures"] > 0
    regions = posterior.add_region(state.regions, state.proposal.params,
                                   failure.params, log_tau, log_norm,
                                   active=has_failures)
    metrics = {}
    ext_states = list(state.extensions)
    for i, e in enumerate(extensions):
      if e.observe is not None:
        ext_states[i], m = e.observe(ext_states[i], batch.x, failure_mask, success)
        metrics.update(m)
    # 4. The next proposal: distilled from the current one outside the regions.
    proposal = state.proposal
    dmetrics = {"distill_accept_rate": jnp.asarray(jnp.nan, jnp.float32),
                "distill_ess": jnp.asarray(jnp.nan, jnp.float32),
                "distill_loss": jnp.asarray(jnp.nan, jnp.float32)}
    if config.mode == "distilled":
      extra = [e.extra_data(s, batch.x, success)
               for e, s in zip(extensions, ext_states) if e.extra_data is not None]
      extra_x = extra_w = None
      if extra:
        extra_x = jnp.concatenate([x for x, _ in extra], axis=0)
        extra_w = jnp.concatenate([w for _, w in extra], axis=0)
      proposal, dmetrics = distill(proposal, state.prior_params, regions, distill_key,
                                   extra_x, extra_w, accept=accept_fns(ext_states))
    metrics = {**dmetrics, **metrics}
    metrics.update(fmetrics)
    metrics.update({
        "log_tau": log_tau,
        "n_successes": jnp.sum(success.astype(jnp.int32)),
        "n_evaluated": jnp.sum(evaluated.astype(jnp.int32)),
        "n_regions": regions.size,
        "params_finite": all_finite(proposal.params) & all_finite(failure.params),
    })
    # 5. Extensions that change what the next round starts from.
    outcome = RoundOutcome(proposal=proposal, regions=regions,
                           prior_params=state.prior_params,
                           any_success=jnp.any(success))
    for i, e in enumerate(extensions):
      if e.after_update is not None:
        ext_states[i], outcome, m = e.after_update(ext_states[i], outcome)
        metrics.update(m)
    metrics["n_regions"] = outcome.regions.size
    new_state = state.replace(proposal=outcome.proposal, failure=failure,
                              regions=outcome.regions, extensions=tuple(ext_states),
                              round=state.round + 1,
                              nre=state.nre + metrics["n_evaluated"])
    return new_state, metrics

  return Banel(init=init, propose=propose, update=update, config=config, model=model,
               extensions=extensions)
