"""``banel bench --which round`` (:mod:`banel_jax.experiments.bench`): every part
of a round is timed, and the estimates add up."""

import json

import pytest

from banel_jax.experiments import bench
from banel_jax.experiments.registry import ExperimentError


def test_round_estimates_add_the_parts():
  parts = {"sample_paid": 1.0, "oracle": 2.0, "calibration": 3.0,
           "distill_sample": 4.0, "region_test": 0.5,
           "failure_fit": {"0": 10.0, "16": 5.0},
           "distill_fit": {"0": 20.0, "16": 8.0}}
  est = bench.round_estimates(parts, 4)
  assert est["0"]["1_region"] == pytest.approx(10.0 + 10.0 + 20.0 + 0.5)
  assert est["16"]["4_regions"] == pytest.approx(10.0 + 5.0 + 8.0 + 4 * 0.5)


def test_bad_settings_are_refused():
  with pytest.raises(ExperimentError, match="RoundBench.seeds=0"):
    bench.RoundBench(seeds=0)
  with pytest.raises(ExperimentError, match="train_microbatches"):
    bench.RoundBench(train_microbatches=(-1,))
  with pytest.raises(ExperimentError, match="region_bank=-1"):
    bench.RoundBench(region_bank=-1)
  preset = bench.default_config()
  with pytest.raises(ExperimentError, match="--round.* apply to --which round"):
    bench.check_against_preset(preset.replace(round=bench.RoundBench(seeds=1)),
                               preset)
  bench.check_against_preset(
      preset.replace(which="round", round=bench.RoundBench(seeds=1)), preset)


@pytest.mark.slow
def test_tiny_round_breakdown(tmp_path):
  # minutes: the attacker transformer's sampling and fits compile at each
  # microbatch setting
  config = bench.tiny_config().replace(which="round")
  assert config.round.train_microbatches == (0, 16)
  report = bench.run(config, tmp_path, progress=False)
  assert json.loads((tmp_path / "bench_round.json").read_text()) == \
      json.loads(json.dumps(report))
  parts = report["seconds"]
  for name in ("sample_paid", "oracle", "calibration", "distill_sample",
               "region_test"):
    assert parts[name] > 0, name
  for name in ("failure_fit", "distill_fit"):
    assert set(parts[name]) == {"0", "16"} and min(parts[name].values()) > 0
  assert report["banel"]["samples_per_round"] == 64  # the tiny attack's shapes
  assert report["banel"]["failure_epochs"] == 1
  bank = report["region_bank"]
  assert bank["regions"] == 3 and 0.5 < bank["share_inside"] < 1.0  # ~1 - 1/8
  assert bank["remaining_only"] > 0 and bank["every_sample"] > 0
  k = 128 // 64  # the tiny budget's rounds
  for m, est in report["round_seconds"].items():
    assert est[f"{k}_regions"] == pytest.approx(
        est["1_region"] + (k - 1) * parts["region_test"])
    assert est["1_region"] > parts["failure_fit"][m] + parts["distill_fit"][m]
