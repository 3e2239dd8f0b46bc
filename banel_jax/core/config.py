"""Frozen, hashable configuration of a BaNEL run.

Every field has a default that runs; sizes and step counts are static (they set
array shapes and loop lengths), so a config is passed to factories, never traced.
Derive variants with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping

import numpy as np

# ``train_microbatch="auto"`` on a CPU: a transformer step at batch 256-512 was
# fastest in microbatches of 32 on two cores (``banel bench --which microbatch``).
CPU_TRAIN_MICROBATCH = 32


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class BanelConfig:
  """Configuration of BaNEL.

  The defaults are the negatives-only settings chosen on the tuning half of the
  sparse-reward suite (``banel suite --tune``; ``results/suite/tuning.json``):
  ``filter_factor=1.2``, Adam at 0.03 for both fits, half of every
  distillation drawn from the pretrained model (``distill_prior_share=0.5``)
  and distillation restarted from the pretrained params every round
  (``distill_reset=True``). They learn from failures only, like the paper's
  algorithm, whose settings :meth:`paper` writes out. ``docs/method.md`` gives
  the evidence for each default.

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
    distill_prior_share: share of the ``distill_samples`` drawn from the
      pretrained model instead of the proposal (both filtered by the regions):
      a defensive mixture that keeps the proposal on the prior's support
      outside the regions. ``0`` is the paper's distillation; ``1`` with
      ``distill_reset`` fits the exploration posterior itself.
    distill_reset: restart distillation from the pretrained params every round
      (the paper's reset option).
    exact_batch_size: candidates drawn per rejection-sampling batch (exact mode).
    exact_max_batches: most candidate batches drawn per request (exact mode).
    min_acceptance_rate: floor on the exploration posterior's acceptance rate.
      Below it, exact mode's sampling raises a
      :class:`~banel_jax.core.posterior.AcceptanceRateError`; in distilled mode
      a seed whose distillation filter accepts less freezes (it keeps its
      generator and spends no more; see :class:`~banel_jax.BanelRunner`).
    train_microbatch: a speed setting. If ``> 0``, every failure-model and
      distillation step accumulates its gradient over microbatches of at most
      this many samples (the largest divisor of the batch size up to it,
      :func:`~banel_jax.core.mle.microbatch_size_for`): the same step up to float
      rounding, faster on a CPU, where a transformer's activations for a
      microbatch stay in cache. ``"auto"`` takes :data:`CPU_TRAIN_MICROBATCH`
      on a CPU backend and 0 elsewhere (resolved when BaNEL is built, so a run
      recorded with ``"auto"`` resumes on either). ``0`` (default): one pass
      per step.
    max_regions: capacity of the region bank (static); ``0`` derives it from
      ``ceil(nre_budget / samples_per_round)``.
    region_strategy: how a batch is tested against the union of the regions:
      ``"vmap"`` (every slot in one fused vmapped call; best for small models
      on an accelerator), ``"loop"`` (only the filled slots, one at a time;
      memory of a single region, for transformers and other large models), or
      ``"auto"`` (default): ``"loop"`` on a CPU (faster there, for small
      models too); on an accelerator ``"vmap"`` while XLA's estimate of its
      temporary memory stays under 256 MiB per seed, else ``"loop"``
      (:func:`~banel_jax.core.posterior.auto_region_strategy`). All three give
      the same mask.
    n_eval: fresh samples scored (counted apart from the NRE) per evaluation.
    eval_every: evaluate every this many rounds (and always after the last round).
  """

  mode: Literal["distilled", "exact"] = "distilled"
  nre_budget: int = 1000
  samples_per_round: int = 100
  tau_mode: Literal["factor", "calibrated"] = "factor"
  filter_factor: float = 1.2
  calibrated_reject_fraction: float = 0.5
  calibration_samples: int = 1024
  failure_init: Literal["proposal", "scratch"] = "proposal"
  failure_epochs: int = 20
  failure_batch_size: int = 50
  failure_learning_rate: float = 0.03
  distill_samples: int = 4096
  distill_epochs: int = 5
  distill_batch_size: int = 256
  distill_learning_rate: float = 0.03
  distill_prior_share: float = 0.5
  distill_reset: bool = True
  exact_batch_size: int = 4096
  exact_max_batches: int = 1024
  min_acceptance_rate: float = 1e-4
  train_microbatch: int | Literal["auto"] = 0
  max_regions: int = 0
  region_strategy: Literal["auto", "vmap", "loop"] = "auto"
  n_eval: int = 10_000
  eval_every: int = 1

  def __post_init__(self):
    validate_config(self)

  @property
  def num_rounds(self) -> int:
    """Rounds needed to spend the budget (the last one may be partial)."""
    return math.ceil(self.nre_budget / self.samples_per_round)

  @property
  def samples_by_rejection(self) -> bool:
    """Whether ``propose`` samples by rejection (exact mode)."""
    return self.mode == "exact"

  @property
  def region_capacity(self) -> int:
    """Static number of slots in the region bank."""
    return self.max_regions or self.num_rounds

  def replace(self, **changes) -> "BanelConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def paper(cls, **changes) -> "BanelConfig":
    """The paper's algorithm at the settings this library first shipped:
    a fixed filter factor, failure models warm-started from the proposal,
    Adam at 0.1 for both fits, no reset. Every value that decides what the
    algorithm does is written out here, so it stays the same when
    ``BanelConfig()``'s defaults change; ``changes`` override it (e.g. the
    budget).

    >>> BanelConfig.paper(nre_budget=500).filter_factor
    2.0
    """
    paper = dict(mode="distilled", tau_mode="factor", filter_factor=2.0,
                 calibrated_reject_fraction=0.5, calibration_samples=1024,
                 failure_init="proposal", failure_epochs=20, failure_batch_size=50,
                 failure_learning_rate=0.1, distill_samples=4096, distill_epochs=5,
                 distill_batch_size=256, distill_learning_rate=0.1,
                 distill_prior_share=0.0, distill_reset=False)
    return cls(**{**paper, **changes})


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
  _require(c.region_strategy in ("auto", "vmap", "loop"), "region_strategy",
           c.region_strategy, "expected 'auto', 'vmap' or 'loop'")
  for name in ("nre_budget", "samples_per_round", "calibration_samples",
               "failure_epochs", "failure_batch_size", "distill_samples",
               "distill_epochs", "distill_batch_size", "exact_batch_size",
               "exact_max_batches", "n_eval", "eval_every"):
    v = getattr(c, name)
    _require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, v,
             "expected an integer >= 1")
  _require(isinstance(c.max_regions, int) and c.max_regions >= 0, "max_regions",
           c.max_regions, "expected an integer >= 0 (0 derives it from the budget)")
  _require(_is_number(c.filter_factor) and math.isfinite(c.filter_factor)
           and c.filter_factor >= 1.0, "filter_factor", c.filter_factor,
           "expected a finite number >= 1 (tau = 1/f)")
  _require(_is_number(c.calibrated_reject_fraction)
           and 0.0 < c.calibrated_reject_fraction < 1.0, "calibrated_reject_fraction",
           c.calibrated_reject_fraction, "expected a number in (0, 1)")
  for name in ("failure_learning_rate", "distill_learning_rate"):
    v = getattr(c, name)
    _require(_is_number(v) and math.isfinite(v) and v > 0, name, v,
             "expected a finite number > 0")
  _require(_is_number(c.min_acceptance_rate) and 0.0 <= c.min_acceptance_rate < 1.0,
           "min_acceptance_rate", c.min_acceptance_rate, "expected a number in [0, 1)")
  _require(_is_number(c.distill_prior_share) and 0.0 <= c.distill_prior_share <= 1.0,
           "distill_prior_share", c.distill_prior_share, "must be in [0, 1]")
  _require(isinstance(c.distill_reset, bool), "distill_reset", c.distill_reset,
           "expected True or False")
  _require(c.failure_batch_size <= c.samples_per_round, "failure_batch_size",
           c.failure_batch_size, f"must be <= samples_per_round={c.samples_per_round}")
  _require(c.distill_batch_size <= c.distill_samples, "distill_batch_size",
           c.distill_batch_size, f"must be <= distill_samples={c.distill_samples}")
  _require(c.train_microbatch == "auto" or (
      isinstance(c.train_microbatch, int) and not isinstance(c.train_microbatch, bool)
      and c.train_microbatch >= 0), "train_microbatch", c.train_microbatch,
           "expected 'auto' or an integer >= 0 (0 trains each step in one pass)")
  if c.max_regions:
    _require(c.max_regions >= c.num_rounds, "max_regions", c.max_regions,
             f"must be 0 or >= the number of rounds ({c.num_rounds})")


def config_to_dict(config: Any) -> dict:
  """JSON-ready dict of a (possibly nested) config dataclass.

  Nested dataclasses become dicts; dtype-valued fields (e.g. ``jnp.float32``)
  become their names (``"float32"``); tuples become lists.

  Args:
    config: a dataclass instance.

  Returns:
    A dict of JSON-serialisable values.
  """
  if not dataclasses.is_dataclass(config) or isinstance(config, type):
    raise TypeError(f"config_to_dict expects a dataclass instance, got {config!r}")
  return {f.name: jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def jsonable(value):
  """``value`` as JSON-ready data: configs as dicts, arrays and numpy scalars as
  lists and numbers, dtypes as their names. Raises ``TypeError`` otherwise."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return config_to_dict(value)
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  if hasattr(value, "__array__") and not isinstance(value, type):
    return np.asarray(value).tolist()
  try:
    return np.dtype(value).name  # dtype objects and scalar types (jnp.float32)
  except TypeError:
    raise TypeError(f"cannot store {value!r} ({type(value).__name__}) as JSON")
