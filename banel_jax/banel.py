"""BaNEL: the run state and one round, as pure functions.

A round splits at the one impure boundary, the reward oracle:

    x, info = banel.propose(state, key, m)        # jit: sample the proposal
    rewards = oracle(x)                           # host: spends NRE
    state, metrics = banel.update(state, RoundBatch(...), key)   # jit: learn

``update`` fits the failure model on the round's failures, adds the new rejection
region, and (distilled mode) distils the next proposal. Successes are masked out
of learning unless ``config.learn_from_successes``. Everything is shape-static,
so ``jax.vmap`` runs seeds side by side and nothing recompiles between rounds.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct
from flax.training import train_state

from banel_jax import posterior, seen, success_bank
from banel_jax.config import BanelConfig
from banel_jax.distill import make_distill_tx, make_distiller
from banel_jax.failure import make_failure_fitter, make_failure_tx
from banel_jax.types import GenerativeModel, Params, PRNGKey, Samples


class RestartClock(struct.PyTreeNode):
  """When to restart the search (``config.restart_after_rounds``; one seed).

  Attributes:
    since: ``int32[]`` rounds since the run's start or its last restart.
    found: ``bool[]`` whether training has scored a success yet.
    count: ``int32[]`` restarts so far.
  """

  since: jax.Array
  found: jax.Array
  count: jax.Array


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
    seen_failures: fingerprints of the failures paid for so far
      (:class:`~banel_jax.seen.SeenSet`) with ``config.reject_seen_failures``;
      ``None`` otherwise (so states and checkpoints of runs without it keep
      their structure).
    successes: the latest successes found in training
      (:class:`~banel_jax.success_bank.SuccessBank`) with
      ``config.success_bank_size``; ``None`` otherwise.
    restart: the :class:`RestartClock` with ``config.restart_after_rounds``;
      ``None`` otherwise.
  """

  proposal: train_state.TrainState
  failure: train_state.TrainState
  prior_params: Params
  regions: posterior.RegionBank
  round: jax.Array
  nre: jax.Array
  key: PRNGKey
  seen_failures: seen.SeenSet | None = None
  successes: success_bank.SuccessBank | None = None
  restart: RestartClock | None = None


class RoundBatch(NamedTuple):
  """A round's scored samples.

  Attributes:
    x: ``[m, *event_shape]`` samples from the proposal.
    rewards: ``f32[m]`` oracle rewards in ``{0, 1}`` (0 where not evaluated).
    evaluated: ``bool[m]`` which samples the oracle scored (the last round of a
      budget may score only some).
    log_norm: ``f32[]`` log normaliser of the proposal that drew ``x``
      (``info.acceptance_rate`` in exact mode, 0 in distilled mode).
  """

  x: Samples
  rewards: jax.Array
  evaluated: jax.Array
  log_norm: jax.Array


def round_masks(batch: RoundBatch, event_rank: int) -> tuple[jax.Array, jax.Array]:
  """Checks a round's shapes; returns ``(evaluated, success)`` as ``bool[m]``.

  Every method's ``update`` starts here: ``batch.x`` is ``[m, *event_shape]``
  (``event_rank`` dimensions per sample) and ``batch.evaluated`` is ``[m]``; a
  success is an evaluated sample rewarded above 0.5. Failures are
  ``evaluated & ~success``.
  """
  m = batch.rewards.shape[0]
  chex.assert_rank(batch.x, 1 + event_rank)
  chex.assert_axis_dimension(batch.x, 0, m)
  chex.assert_shape(batch.evaluated, (m,))
  evaluated = batch.evaluated.astype(bool)
  return evaluated, evaluated & (batch.rewards > 0.5)


class Banel(NamedTuple):
  """BaNEL as a bundle of pure functions (see :func:`make_banel`)."""

  init: Callable[[PRNGKey, Params], BanelState]
  propose: Callable[[BanelState, PRNGKey, int], tuple[Samples, posterior.PosteriorSampleInfo]]
  update: Callable[[BanelState, RoundBatch, PRNGKey], tuple[BanelState, dict]]
  config: BanelConfig
  model: GenerativeModel
  support: Callable[[Samples], jax.Array] | None = None


def round_keys(state: BanelState) -> dict[str, PRNGKey]:
  """Named keys of the state's current round, ``fold_in(root, round)``.

  Resumed runs replay the same keys without storing them.
  """
  k = jax.random.fold_in(state.key, state.round)
  propose_key, update_key, eval_key = jax.random.split(k, 3)
  return {"propose": propose_key, "update": update_key, "eval": eval_key}


def make_banel(model: GenerativeModel, config: BanelConfig,
               support: Callable[[Samples], jax.Array] | None = None) -> Banel:
  """Builds BaNEL's ``init``, ``propose`` and ``update`` for ``model``.

  Args:
    model: the generator's family (proposal and failure model alike).
    config: a :class:`BanelConfig` (static).
    support: optional free validity check, a jit-able ``x[n, ...] -> bool[n]``
      that is ``False`` where the reward is known to be 0 without asking the
      oracle (e.g. :func:`banel_jax.tasks.addition.well_formed_mask`). The
      exploration posterior becomes ``p_0 * 1[x not in R] * support(x)``:
      distillation never fits samples outside it and exact mode never draws
      them. Failure models cannot learn such a region when the prior almost
      never writes it, so without this check compounding rejection can hand it
      the proposal's mass (``results/README.md``, "Why it peaks, then
      declines").

  Returns:
    A :class:`Banel` bundle. All three functions are pure and jit-able;
    ``vmap`` them over a leading seed axis to run seeds side by side.
  """
  # One optimizer object for the initial and every fitted failure state: ``tx`` is
  # a static field, so a fresh ``adam`` per call would change the state's treedef
  # after round one and recompile ``propose`` and ``update`` on round two.
  failure_tx = make_failure_tx(config)
  fit_failure = make_failure_fitter(model, config, tx=failure_tx)
  distill = make_distiller(model, config, support=support)
  distill_tx = make_distill_tx(config)
  event_rank = len(model.event_shape)

  def init(key: PRNGKey, prior_params: Params) -> BanelState:
    proposal = train_state.TrainState.create(apply_fn=model.log_prob,
                                             params=prior_params, tx=distill_tx)
    failure = train_state.TrainState.create(apply_fn=model.log_prob,
                                            params=prior_params, tx=failure_tx)
    return BanelState(
        proposal=proposal, failure=failure, prior_params=prior_params,
        regions=posterior.empty_region_bank(prior_params, config.region_capacity),
        round=jnp.zeros((), jnp.int32), nre=jnp.zeros((), jnp.int32), key=key,
        seen_failures=(seen.empty_seen_set(config.nre_budget)
                       if config.reject_seen_failures else None),
        successes=(success_bank.empty_success_bank(
            config.success_bank_size, tuple(model.event_shape), model.dtype)
                   if config.success_bank_size else None),
        restart=(RestartClock(since=jnp.zeros((), jnp.int32),
                              found=jnp.zeros((), bool),
                              count=jnp.zeros((), jnp.int32))
                 if config.restart_after_rounds else None))

  def propose(state: BanelState, key: PRNGKey, n: int):
    """Samples the current proposal: ``(x[n, ...], info)``."""
    if config.samples_by_rejection:
      # Exact mode: the posterior itself, by rejection from the pretrained model.
      # A filtered distilled proposal: the proposal restricted to outside the
      # regions (and the support), by rejection from the proposal.
      base = state.prior_params if config.mode == "exact" else state.proposal.params
      return posterior.sample_posterior_by_rejection(
          model, base, state.regions, key, n,
          batch_size=config.exact_batch_size, max_batches=config.exact_max_batches,
          region_strategy=config.region_strategy, support=support)
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
    has_failures = fmetrics["n_failures"] > 0
    regions = posterior.add_region(state.regions, state.proposal.params,
                                   failure.params, log_tau, log_norm,
                                   active=has_failures)
    seen_failures = state.seen_failures
    if seen_failures is not None:
      seen_failures = seen.add_seen(seen_failures, batch.x, failure_mask)
    successes = state.successes
    if successes is not None:
      successes = success_bank.add_successes(successes, batch.x, success,
                                              distinct=config.success_bank_distinct)
    # 3. Next proposal.
    proposal = state.proposal
    metrics = {"distill_accept_rate": jnp.asarray(jnp.nan, jnp.float32),
               "distill_ess": jnp.asarray(jnp.nan, jnp.float32),
               "distill_loss": jnp.asarray(jnp.nan, jnp.float32)}
    if config.mode == "distilled":
      extra_x = extra_w = None
      if successes is not None:
        extra_x = successes.x
        extra_w = success_bank.valid_mask(successes).astype(jnp.float32)
      elif config.learn_from_successes:
        extra_x, extra_w = batch.x, success.astype(jnp.float32)
      if extra_w is not None:
        extra_w = extra_w * jnp.float32(config.success_weight)
      proposal, metrics = distill(proposal, state.prior_params, regions, distill_key,
                                  extra_x, extra_w, seen_failures=seen_failures)
    metrics.update(fmetrics)
    metrics.update({
        "log_tau": log_tau,
        "n_successes": jnp.sum(success.astype(jnp.int32)),
        "n_evaluated": jnp.sum(evaluated.astype(jnp.int32)),
        "n_regions": regions.size,
        "params_finite": all_finite(proposal.params) & all_finite(failure.params),
    })
    if seen_failures is not None:
      metrics["n_seen_failures"] = seen_failures.size
    if successes is not None:
      metrics["n_banked_successes"] = jnp.minimum(successes.count,
                                                  successes.capacity)
    restart = state.restart
    if restart is not None:
      proposal, regions, restart = _maybe_restart(
          restart, jnp.any(success), proposal, regions, state.prior_params,
          config.restart_after_rounds)
      metrics["n_restarts"] = restart.count
      metrics["n_regions"] = regions.size
    new_state = state.replace(proposal=proposal, failure=failure, regions=regions,
                              seen_failures=seen_failures, successes=successes,
                              restart=restart, round=state.round + 1,
                              nre=state.nre + metrics["n_evaluated"])
    return new_state, metrics

  return Banel(init=init, propose=propose, update=update, config=config, model=model,
               support=support)


def _maybe_restart(clock: RestartClock, any_success: jax.Array,
                   proposal: train_state.TrainState, regions: posterior.RegionBank,
                   prior_params: Params, every: int):
  """``(proposal, regions, clock)`` after a round, restarted if it is time.

  It is time when no success has been found and ``every`` rounds have passed
  since the last start: the proposal becomes the pretrained model with a fresh
  optimizer state, and every region slot is emptied (``add_region`` then
  refills from slot 0). Shape-static: both branches are computed and one is
  selected, so nothing recompiles.
  """
  found = clock.found | any_success
  since = clock.since + 1
  now = (~found) & (since >= every)
  fresh = proposal.replace(step=jnp.zeros_like(proposal.step), params=prior_params,
                           opt_state=proposal.tx.init(prior_params))
  pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(now, u, v), a, b)  # noqa: E731
  proposal = pick(fresh, proposal)
  regions = regions.replace(valid=regions.valid & ~now,
                            size=jnp.where(now, 0, regions.size))
  clock = RestartClock(since=jnp.where(now, 0, since), found=found,
                       count=clock.count + now.astype(jnp.int32))
  return proposal, regions, clock


def all_finite(tree) -> jax.Array:
  """``bool[]``: every floating leaf of ``tree`` is finite (a round's
  ``params_finite`` metric, here and in every baseline)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
