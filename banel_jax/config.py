"""Frozen, hashable configuration of a BaNEL run.

Every field has a default that runs; sizes and step counts are static (they set
array shapes and loop lengths), so a config is passed to factories, never traced.
Derive variants with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class BanelConfig:
  """Configuration of BaNEL.

  Attributes:
    mode: ``"distilled"`` (paper's Algorithm 2: the proposal is a fine-tuned model)
      or ``"exact"`` (Algorithm 1: the proposal is the exploration posterior itself,
      sampled by rejection from the pretrained model).
    nre_budget: hard cap on reward evaluations (NRE) spent on learning, per seed.
    samples_per_round: samples drawn from the proposal and scored each round (``m``).
    tau_mode: ``"factor"`` rejects ``x`` when the failure model finds it at least
      ``filter_factor`` times more likely than the proposal (``tau = 1/f``);
      ``"calibrated"`` picks ``tau`` each round so that a fraction
      ``calibrated_reject_fraction`` of fresh proposal samples is rejected.
    filter_factor: ``f >= 1`` of the factor mode.
    calibrated_reject_fraction: in ``(0, 1)``, target rejection rate of the
      calibrated mode.
    calibration_samples: fresh proposal samples used to calibrate ``tau``.
    failure_init: ``"proposal"`` warm-starts the failure model from the proposal's
      params; ``"scratch"`` starts from ``model.init``.
    failure_epochs: passes over the round's failures (the main compute knob).
    failure_batch_size: minibatch size of failure-model training.
    failure_learning_rate: Adam learning rate of failure-model training.
    distill_samples: proposal samples drawn (free: no NRE) per distillation.
    distill_epochs: passes over the accepted distillation samples.
    distill_batch_size: minibatch size of distillation.
    distill_learning_rate: Adam learning rate of distillation.
    distill_reset: restart distillation from the pretrained params every round.
    distill_pack: put the accepted samples first in each distillation epoch, so
      every minibatch holds ``distill_batch_size`` accepted samples and an epoch
      makes ``ceil(n_accepted / distill_batch_size)`` steps. By default a
      minibatch is ``distill_batch_size`` drawn samples of which only the
      accepted count, so when few are accepted an epoch is many small, noisy
      steps on the same few samples (see :func:`~banel_jax.mle.fit_weighted_mle`).
    distill_target: what distillation fits. ``"proposal"`` (paper's Algorithm 2):
      the current proposal's samples outside the regions, equally weighted.
      ``"posterior"``: the same samples importance-weighted by
      ``p_theta_0(x) / p_theta(x)`` (self-normalised, truncated at
      ``sqrt(n_accepted)`` times their mean), so the fit aims at the exploration
      posterior ``p_theta_0(x) * 1[x not in R]`` itself and a proposal's fitting
      errors (e.g. drift onto strings the pretrained model never writes) do not
      compound from round to round. ``"mixture"``: half the distillation samples
      are drawn from the pretrained model and half from the proposal, and the
      accepted ones are weighted by ``p_theta_0 / (p_theta_0/2 + p_theta/2)`` (the
      balance heuristic, bounded by 2): the same target as ``"posterior"`` without
      its weight collapse once the proposal has drifted.
    proposal_filter: distilled mode only. If ``True``, every sample the proposal
      hands out (the paid ones, the calibration and the evaluation samples) is
      drawn from the proposal restricted to outside every region (and the
      support), ``p_theta_t(x) * 1[x not in R]``, by rejection from the proposal:
      no reward evaluation is spent on a sample the regions already reject.
      Costs ``2 * n_regions`` extra log-prob passes per candidate, and more
      candidates as the acceptance rate falls (cheap on an accelerator, slow for
      a transformer on a CPU); its acceptance rate is reported and, below
      ``min_acceptance_rate``, an error.
    reject_seen_failures: distilled mode only. If ``True``, distillation also
      rejects every sample equal to one already paid for and failed (exact
      match on a 64-bit fingerprint, :mod:`banel_jax.seen`), so the proposal
      cannot settle on a known failure that the likelihood-ratio regions cannot
      reject because the proposal draws it often. Assumes a deterministic
      oracle. Keeps ``nre_budget`` fingerprints per seed; the
      ``distill_seen_rate`` metric is the share of distillation samples in the
      set (a region or the support check may reject some of them too).
    exact_batch_size: candidates drawn per rejection-sampling batch (exact mode
      and ``proposal_filter``).
    exact_max_batches: most candidate batches drawn per request (exact mode and
      ``proposal_filter``).
    min_acceptance_rate: floor on the posterior's acceptance rate; below it a
      :class:`~banel_jax.posterior.AcceptanceRateError` is raised (exact mode,
      ``proposal_filter``, and in distilled mode for the distillation filter).
    learn_from_successes: if ``True``, the round's successes join the
      distillation set (weight 1 each; not the paper's algorithm, which learns
      from failures only); by default they are only recorded and reported.
    success_bank_size: with ``learn_from_successes``, how many of the latest
      successes every distillation fits (a ring buffer carried in the state,
      :mod:`banel_jax.success_bank`); ``0`` (default) fits only the round's own
      successes. Distilled mode only.
    success_bank_distinct: with ``success_bank_size``, a success already in the
      bank is not added again, so the bank holds ``success_bank_size``
      *distinct* queries (by default a query found ten times fills ten slots,
      and is fitted with ten times the weight).
    success_weight: with ``learn_from_successes``, the weight of each success
      (the round's own, or each banked one) in distillation's weighted
      likelihood, where every accepted sample weighs 1 (default ``1.0``). A
      minibatch's loss is normalised by its own total weight, so a success of
      weight ``w`` among ``n`` accepted samples of its minibatch takes a share
      ``w / (w + n)`` of that step. Upweighting lets a few successes count
      against thousands of accepted samples (replay without regions).
    restart_after_rounds: if ``> 0``, a seed whose training has scored no
      success restarts its search every ``restart_after_rounds`` rounds: the
      next proposal is the pretrained model again (its optimizer state fresh)
      and every region is dropped; the failure models already fitted are not
      used again. Once a success is found it never restarts. ``0`` (default):
      never, as in the paper. Not the paper's algorithm: it reads whether any
      success was found. Motivation: on the shipped addition target the
      regions find a first success sooner, but seed-runs that have none by
      NRE 4,000 drift to a proposal that never finds one
      (``results/README.md``, "Time to the first success").
    train_microbatch: a speed setting. If ``> 0``, every failure-model and
      distillation step accumulates its gradient over microbatches of at most
      this many samples (the largest divisor of the batch size up to it,
      :func:`~banel_jax.mle.microbatch_size_for`): the same step up to float
      rounding, faster on a CPU, where a transformer's activations for a
      microbatch stay in cache. For a transformer, keep it no larger than
      :data:`~banel_jax.models.transformer.CPU_SCORE_CHUNK` (32), so that
      ``log_prob`` scores each microbatch in one pass. ``0`` (default): one
      pass per step.
    max_regions: capacity of the region bank (static); ``0`` derives it from
      ``ceil(nre_budget / samples_per_round)``.
    region_strategy: how a batch is tested against the union of the regions:
      ``"vmap"`` (every slot in one fused vmapped call; best for small models)
      or ``"loop"`` (only the filled slots, one at a time; memory of a single
      region, for transformers and other large models).
    n_eval: fresh samples scored (counted apart from the NRE) per evaluation.
    eval_every: evaluate every this many rounds (and always after the last round).
  """

  mode: Literal["distilled", "exact"] = "distilled"
  nre_budget: int = 1000
  samples_per_round: int = 100
  tau_mode: Literal["factor", "calibrated"] = "factor"
  filter_factor: float = 2.0
  calibrated_reject_fraction: float = 0.5
  calibration_samples: int = 1024
  failure_init: Literal["proposal", "scratch"] = "proposal"
  failure_epochs: int = 20
  failure_batch_size: int = 50
  failure_learning_rate: float = 0.1
  distill_samples: int = 4096
  distill_epochs: int = 5
  distill_batch_size: int = 256
  distill_learning_rate: float = 0.1
  distill_reset: bool = False
  distill_pack: bool = False
  distill_target: Literal["proposal", "posterior", "mixture"] = "proposal"
  proposal_filter: bool = False
  reject_seen_failures: bool = False
  exact_batch_size: int = 4096
  exact_max_batches: int = 1024
  min_acceptance_rate: float = 1e-4
  learn_from_successes: bool = False
  success_bank_size: int = 0
  success_bank_distinct: bool = False
  success_weight: float = 1.0
  restart_after_rounds: int = 0
  train_microbatch: int = 0
  max_regions: int = 0
  region_strategy: Literal["vmap", "loop"] = "vmap"
  n_eval: int = 10_000
  eval_every: int = 1

  # Added after run directories were written: left out of records while default.
  OMIT_WHEN_DEFAULT: ClassVar[tuple[str, ...]] = ("proposal_filter",
                                                   "reject_seen_failures",
                                                   "success_bank_size",
                                                   "success_bank_distinct",
                                                   "success_weight",
                                                   "restart_after_rounds",
                                                   "train_microbatch")

  def __post_init__(self):
    validate_config(self)

  @property
  def num_rounds(self) -> int:
    """Rounds needed to spend the budget (the last one may be partial)."""
    return math.ceil(self.nre_budget / self.samples_per_round)

  @property
  def samples_by_rejection(self) -> bool:
    """Whether ``propose`` samples by rejection (exact mode, or a filter)."""
    return self.mode == "exact" or self.proposal_filter

  @property
  def region_capacity(self) -> int:
    """Static number of slots in the region bank."""
    return self.max_regions or self.num_rounds

  def replace(self, **changes) -> "BanelConfig":
    return dataclasses.replace(self, **changes)


def _require(cond: bool, field: str, value, what: str):
  if not cond:
    raise ConfigError(f"BanelConfig.{field}={value!r} is invalid: {what}")


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_config(c: BanelConfig) -> None:
  """Raises :class:`ConfigError` naming the first invalid field of ``c``."""
  _require(c.mode in ("distilled", "exact"), "mode", c.mode,
           "expected 'distilled' or 'exact'")
  _require(c.tau_mode in ("factor", "calibrated"), "tau_mode", c.tau_mode,
           "expected 'factor' or 'calibrated'")
  _require(c.failure_init in ("proposal", "scratch"), "failure_init", c.failure_init,
           "expected 'proposal' or 'scratch'")
  _require(c.distill_target in ("proposal", "posterior", "mixture"), "distill_target",
           c.distill_target, "expected 'proposal', 'posterior' or 'mixture'")
  _require(c.region_strategy in ("vmap", "loop"), "region_strategy",
           c.region_strategy, "expected 'vmap' or 'loop'")
  for name in ("nre_budget", "samples_per_round", "calibration_samples",
               "failure_epochs", "failure_batch_size", "distill_samples",
               "distill_epochs", "distill_batch_size", "exact_batch_size",
               "exact_max_batches", "n_eval", "eval_every"):
    v = getattr(c, name)
    _require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, v,
             "expected an integer >= 1")
  _require(isinstance(c.max_regions, int) and c.max_regions >= 0, "max_regions",
           c.max_regions, "expected an integer >= 0 (0 derives it from the budget)")
  _require(isinstance(c.filter_factor, (int, float)) and math.isfinite(c.filter_factor)
           and c.filter_factor >= 1.0, "filter_factor", c.filter_factor,
           "expected a finite number >= 1 (tau = 1/f)")
  _require(_is_number(c.calibrated_reject_fraction)
           and 0.0 < c.calibrated_reject_fraction < 1.0, "calibrated_reject_fraction",
           c.calibrated_reject_fraction, "expected a number in (0, 1)")
  for name in ("failure_learning_rate", "distill_learning_rate"):
    v = getattr(c, name)
    _require(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, name, v,
             "expected a finite number > 0")
  _require(_is_number(c.min_acceptance_rate) and 0.0 <= c.min_acceptance_rate < 1.0,
           "min_acceptance_rate", c.min_acceptance_rate, "expected a number in [0, 1)")
  for name in ("distill_reset", "distill_pack", "learn_from_successes",
               "proposal_filter", "reject_seen_failures", "success_bank_distinct"):
    _require(isinstance(getattr(c, name), bool), name, getattr(c, name),
             "expected True or False")
  _require(c.failure_batch_size <= c.samples_per_round, "failure_batch_size",
           c.failure_batch_size, f"must be <= samples_per_round={c.samples_per_round}")
  _require(c.distill_batch_size <= c.distill_samples, "distill_batch_size",
           c.distill_batch_size, f"must be <= distill_samples={c.distill_samples}")
  if c.distill_target == "mixture":
    _require(c.distill_samples >= 2, "distill_samples", c.distill_samples,
             "distill_target='mixture' draws half from the prior: need >= 2")
  if c.proposal_filter:
    _require(c.mode == "distilled", "proposal_filter", c.proposal_filter,
             "applies to mode='distilled' only (exact mode's proposal is already "
             "the filtered prior)")
  if c.reject_seen_failures:
    _require(c.mode == "distilled", "reject_seen_failures", c.reject_seen_failures,
             "applies to mode='distilled' only (the seen failures filter the "
             "distillation samples)")
  _require(isinstance(c.success_bank_size, int)
           and not isinstance(c.success_bank_size, bool) and c.success_bank_size >= 0,
           "success_bank_size", c.success_bank_size,
           "expected an integer >= 0 (0 keeps no bank)")
  if c.success_bank_size:
    _require(c.learn_from_successes, "success_bank_size", c.success_bank_size,
             "keeps successes for distillation: set learn_from_successes=True too")
    _require(c.mode == "distilled", "success_bank_size", c.success_bank_size,
             "applies to mode='distilled' only (successes join distillation)")
  if c.success_bank_distinct:
    _require(c.success_bank_size > 0, "success_bank_distinct", c.success_bank_distinct,
             "applies to the bank of successes: set success_bank_size > 0 too")
  _require(_is_number(c.success_weight) and math.isfinite(c.success_weight)
           and c.success_weight > 0, "success_weight", c.success_weight,
           "expected a finite number > 0")
  if c.success_weight != 1.0:
    _require(c.learn_from_successes, "success_weight", c.success_weight,
             "weighs the successes fitted in distillation: set "
             "learn_from_successes=True too")
  _require(isinstance(c.restart_after_rounds, int)
           and not isinstance(c.restart_after_rounds, bool)
           and c.restart_after_rounds >= 0, "restart_after_rounds",
           c.restart_after_rounds, "expected an integer >= 0 (0 never restarts)")
  _require(isinstance(c.train_microbatch, int)
           and not isinstance(c.train_microbatch, bool) and c.train_microbatch >= 0,
           "train_microbatch", c.train_microbatch,
           "expected an integer >= 0 (0 trains each step in one pass)")
  if c.max_regions:
    _require(c.max_regions >= c.num_rounds, "max_regions", c.max_regions,
             f"must be 0 or >= the number of rounds ({c.num_rounds})")
