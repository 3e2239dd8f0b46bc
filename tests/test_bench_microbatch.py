"""``banel bench --which microbatch`` (:mod:`banel_jax.experiments.bench`): a tiny
run writes both variants and the speed-up."""

import json

import pytest

from banel_jax.experiments import bench
from banel_jax.experiments.registry import ExperimentError


def test_tiny_run_writes_both_variants(tmp_path):
  config = bench.tiny_config().replace(which="microbatch")
  report = bench.run(config, tmp_path, progress=False)
  saved = json.loads((tmp_path / "bench_microbatch.json").read_text())
  assert saved["which"] == "microbatch" and saved["config"]["batch"] == 32
  times = saved["seconds"]["split_log_prob"]
  assert list(times) == ["split", "unsplit"] and min(times.values()) > 0
  assert report["speedup"]["split_log_prob"] == pytest.approx(
      times["unsplit"] / times["split"])


def test_bad_settings_are_refused():
  with pytest.raises(ExperimentError, match="must divide batch=100"):
    bench.MicrobatchBench(batch=100, microbatch=32)
  with pytest.raises(ExperimentError, match="rounds=0"):
    bench.MicrobatchBench(rounds=0)
  with pytest.raises(ExperimentError, match="comparisons"):
    bench.MicrobatchBench(comparisons=("nothing",))
  with pytest.raises(ExperimentError, match="which='gpu'"):
    bench.BenchConfig(which="gpu")
