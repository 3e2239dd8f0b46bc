"""Tests of banel_jax.core.config: every invalid value raises a ConfigError naming it."""

import dataclasses
import math

import pytest

from banel_jax.core.config import BanelConfig, ConfigError

INT_FIELDS = ("nre_budget", "samples_per_round", "calibration_samples", "failure_epochs",
              "failure_batch_size", "distill_samples", "distill_epochs",
              "distill_batch_size", "exact_batch_size", "exact_max_batches", "n_eval",
              "eval_every")

INVALID = [
    ("mode", "approximate"),
    ("mode", None),
    ("tau_mode", "quantile"),
    ("failure_init", "random"),
    ("filter_factor", 0.5),
    ("filter_factor", 0.0),
    ("filter_factor", -2.0),
    ("filter_factor", math.inf),
    ("filter_factor", math.nan),
    ("filter_factor", "2"),
    ("calibrated_reject_fraction", 0.0),
    ("calibrated_reject_fraction", 1.0),
    ("calibrated_reject_fraction", -0.1),
    ("calibrated_reject_fraction", math.nan),
    ("calibrated_reject_fraction", "0.5"),
    ("failure_learning_rate", 0.0),
    ("failure_learning_rate", -1e-3),
    ("failure_learning_rate", math.inf),
    ("failure_learning_rate", math.nan),
    ("distill_learning_rate", 0.0),
    ("distill_learning_rate", "1e-3"),
    ("min_acceptance_rate", -1e-4),
    ("min_acceptance_rate", 1.0),
    ("min_acceptance_rate", math.nan),
    ("min_acceptance_rate", "1e-4"),
    ("max_regions", -1),
    ("max_regions", 2.5),
    ("distill_reset", "yes"),
    ("filter_factor", True),
    ("distill_learning_rate", True),
    ("train_microbatch", -1),
    ("train_microbatch", "fast"),
    ("train_microbatch", 2.0),
    ("train_microbatch", True),
] + [(f, 0) for f in INT_FIELDS] + [(f, -5) for f in INT_FIELDS] + [
    (f, 10.0) for f in INT_FIELDS] + [(f, True) for f in INT_FIELDS]


def _case_id(case):
  return f"{case[0]}={case[1]!r}"


@pytest.mark.parametrize("field,value", INVALID, ids=[_case_id(c) for c in INVALID])
def test_invalid_value_raises_config_error_naming_field(field, value):
  with pytest.raises(ConfigError) as exc:
    BanelConfig(**{field: value})
  msg = str(exc.value)
  assert f"BanelConfig.{field}=" in msg, msg
  assert repr(value) in msg or field in msg


def test_config_error_is_a_value_error():
  with pytest.raises(ValueError):
    BanelConfig(nre_budget=0)


@pytest.mark.parametrize("changes,field", [
    ({"samples_per_round": 10, "failure_batch_size": 11}, "failure_batch_size"),
    ({"distill_samples": 100, "distill_batch_size": 101}, "distill_batch_size"),
    ({"nre_budget": 1000, "samples_per_round": 100, "max_regions": 9}, "max_regions"),
])
def test_cross_field_constraints_name_the_field(changes, field):
  with pytest.raises(ConfigError, match=f"BanelConfig.{field}="):
    BanelConfig(**changes)


def test_replace_validates_too():
  cfg = BanelConfig()
  with pytest.raises(ConfigError, match="BanelConfig.filter_factor="):
    cfg.replace(filter_factor=0.9)
  with pytest.raises(ConfigError, match="BanelConfig.nre_budget="):
    dataclasses.replace(cfg, nre_budget=-1)


def test_valid_configs_and_derived_sizes():
  cfg = BanelConfig()
  assert hash(cfg) == hash(BanelConfig())  # frozen, hashable: usable as static
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.nre_budget = 5
  cfg = BanelConfig(nre_budget=250, samples_per_round=100, failure_batch_size=50)
  assert cfg.num_rounds == 3
  assert cfg.region_capacity == 3
  assert cfg.replace(max_regions=7).region_capacity == 7
  # boundary values that are valid
  BanelConfig(filter_factor=1.0, min_acceptance_rate=0.0, max_regions=10,
              calibrated_reject_fraction=1e-6, failure_batch_size=100,
              samples_per_round=100, distill_batch_size=4096, distill_samples=4096)


def test_retired_fields_are_gone():
  """The extensions' switches left the config: they are plug-ins now."""
  for name in ("distill_pack", "distill_target", "proposal_filter",
               "reject_seen_failures", "learn_from_successes", "success_bank_size",
               "success_bank_distinct", "success_weight", "restart_after_rounds"):
    with pytest.raises(TypeError, match=name):
      BanelConfig(**{name: 1})
  assert len(dataclasses.fields(BanelConfig)) == 25


def test_train_microbatch_auto_resolves_by_backend(monkeypatch):
  from banel_jax.core import mle
  BanelConfig(train_microbatch="auto")
  monkeypatch.setattr(mle.jax, "default_backend", lambda: "cpu")
  assert mle.resolve_train_microbatch("auto") == 32
  assert mle.microbatch_size_for(256, "auto") == 32
  monkeypatch.setattr(mle.jax, "default_backend", lambda: "gpu")
  assert mle.resolve_train_microbatch("auto") == 0
  assert mle.microbatch_size_for(256, "auto") is None
  assert mle.resolve_train_microbatch(16) == 16
