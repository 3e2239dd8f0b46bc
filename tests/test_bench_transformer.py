"""``banel bench --which transformer`` (:mod:`banel_jax.experiments.bench`): the
roofline's FLOP count and arithmetic, the timing in turns, the comparison table,
a tiny run in process, and (slow) batches split over two CPU devices."""

import json
import os
import subprocess
import sys
import time

import jax
import pytest

from banel_jax.experiments import bench
from banel_jax.experiments.registry import ExperimentError
from banel_jax.models import transformer as tfm


@pytest.mark.parametrize("cfg", [
    tfm.TransformerConfig(width=32, num_heads=2, max_len=8),
    tfm.TransformerConfig(width=64, num_heads=4, max_len=12, num_layers=3,
                          mlp_ratio=2)])
def test_forward_flops_is_a_tight_lower_bound_on_xlas_count(cfg):
  # XLA counts what the compiled log-likelihood does (full masked attention,
  # elementwise ops too); the bound counts matmuls with causal attention only
  model = tfm.make_transformer(cfg).model
  params = model.init(jax.random.key(0))
  x = model.sample(params, jax.random.key(1), 16)
  cost = jax.jit(model.log_prob).lower(params, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  ours = 16 * bench.forward_flops(cfg, cfg.max_len)
  assert 0.75 * cost["flops"] <= ours <= cost["flops"]


def test_roofline_needs_and_fractions():
  cfg = tfm.TransformerConfig()
  seq = bench.forward_flops(cfg, cfg.max_len)
  peak = {"peak_gflops": 100.0}
  ours = {"sample_tokens_per_s": 2e5, "log_prob_sequences_per_s": 1e3,
          "train_steps_per_s": 1.0}
  peer = {"sample_tokens_per_s": 1e5, "log_prob_sequences_per_s": 1e3,
          "train_steps_per_s": 0.5}
  targets = {"sample_tokens_per_s": 3.0, "log_prob_sequences_per_s": 5.0,
             "train_steps_per_s": 2.0}
  batches = {"sample_tokens_per_s": 1024, "log_prob_sequences_per_s": 1024,
             "train_steps_per_s": 512}
  r = bench.roofline(cfg, peak, ours, peer, targets, batches)["metrics"]
  token = seq / cfg.max_len
  assert r["sample_tokens_per_s"]["jax_gflops"] == pytest.approx(token * 2e5 / 1e9)
  need = token * 3.0 * 1e5 / 1e9
  assert r["sample_tokens_per_s"]["gflops_needed_for_target"] == pytest.approx(need)
  assert r["sample_tokens_per_s"]["needed_over_peak"] == pytest.approx(need / 100)
  assert r["log_prob_sequences_per_s"]["peer_gflops"] == pytest.approx(seq * 1e3 / 1e9)
  step = 3 * seq * 512
  assert r["train_steps_per_s"]["gflops_needed_for_target"] == pytest.approx(
      step * 2 * 0.5 / 1e9)
  # needs here: 241, 96 and 30 GFLOP/s against a peak of 100
  assert [r[k]["target_within_peak"] for k in targets] == [False, True, True]


def test_interleaved_times_alternate_and_take_medians():
  order = []

  def slow():
    order.append("slow")
    time.sleep(0.02)

  def fast():
    order.append("fast")
  t = bench.interleaved_times({"slow": slow, "fast": fast}, rounds=2,
                              calls_per_turn=3)
  # each turn: one untimed call, then 3 timed ones
  assert order == ["slow"] * 4 + ["fast"] * 4 + ["slow"] * 4 + ["fast"] * 4
  assert t["slow"] >= 0.02 > t["fast"]
  t2, per_round = bench.interleaved_times({"slow": slow, "fast": fast}, rounds=3,
                                          calls_per_turn=1, by_round=True)
  assert len(order) == 16 + 12
  assert [len(per_round[k]) for k in ("slow", "fast")] == [3, 3]
  assert min(per_round["slow"]) >= 0.02 > max(per_round["fast"])
  assert t2["slow"] == sorted(per_round["slow"])[1]  # one call per turn: the median


def test_rejects_a_peer_batch_it_does_not_measure():
  with pytest.raises(ExperimentError, match="peer_sample_batch=512 must be one of"):
    bench.TransformerBench(peer=True, batch_sizes=(256, 1024), peer_sample_batch=512)
  with pytest.raises(ExperimentError, match="side_by_side_rounds=0"):
    bench.TransformerBench(side_by_side_rounds=0)
  with pytest.raises(ExperimentError, match="host_devices=0"):
    bench.TransformerBench(host_devices=0)


def test_comparison_table_reads_the_committed_json():
  path = os.path.join(os.path.dirname(__file__), "..", "results",
                      "bench", "bench_transformer.json")
  with open(path) as f:
    attacker = json.load(f)["results"]["attacker"]
  table = bench.comparison_table(attacker).splitlines()
  assert len(table) == 5 and table[0].startswith("| | banel_jax | peer |")
  side = attacker["side_by_side"]["train_steps_per_s"]
  ratio = side["jax"] / side["peer"]
  assert f"{ratio:.2f}x" in table[4] and "2x, " in table[4]
  assert ("not met" in table[4]) == (ratio < 2)
  spread = side["ratio_by_round"]
  assert f"({min(spread):.2f}-{max(spread):.2f}x)" in table[4]


def test_comparison_table_gives_the_split_over_one_device():
  side = {k: {"jax": 4.0, "peer": 2.0, "ratio_by_round": [1.9, 2.1],
              "jax_one_device": 3.2, "devices_over_one_device_by_round": [1.2, 1.3]}
          for k in ("sample_tokens_per_s", "log_prob_sequences_per_s",
                    "train_steps_per_s")}
  targets = {"sample_tokens_per_s": 3.0, "log_prob_sequences_per_s": 5.0,
             "train_steps_per_s": 2.0}
  table = bench.comparison_table({"side_by_side": side, "target_ratio": targets})
  rows = table.splitlines()
  assert rows[0].endswith("| banel_jax, one device | split over one device (rounds) |")
  assert rows[1].count("---") == 7
  assert rows[4].endswith("| 2x, met | 3.20 | 1.25x (1.20-1.30x) |")
  assert "| 3x, not met | 3.20 | 1.25x" in rows[2]
  # without the one-device numbers (a one-device run): five columns
  for s in side.values():
    del s["jax_one_device"], s["devices_over_one_device_by_round"]
  assert bench.comparison_table({"side_by_side": side, "target_ratio": targets}
                                ).splitlines()[1].count("---") == 5


def test_tiny_run_compiles_nothing_on_repeat_calls(tmp_path):
  config = bench.tiny_config()
  assert config.which == "transformer"
  report = bench.run(config, tmp_path, progress=False)
  saved = json.loads((tmp_path / "bench_transformer.json").read_text())
  assert saved["config"]["batch_sizes"] == [16] and saved["jax_devices"] == 1
  # "auto" is resolved by backend: 32 on a CPU
  assert report["train_microbatch"] == (32 if jax.default_backend() == "cpu" else 0)
  result = saved["results"]["attacker"]["jax"]
  assert set(result["by_batch"]["16"]) == {"sample_tokens_per_s",
                                           "log_prob_sequences_per_s",
                                           "train_steps_per_s"}
  assert all(v > 0 for v in result["by_batch"]["16"].values())
  assert result["compilations_on_repeat_calls"] == 0


@pytest.mark.slow
def test_host_devices_split_the_batches(tmp_path):
  # A child process (the CPU device count is fixed when JAX starts): two CPU
  # devices, each batch split over them, one-device numbers beside them, and
  # nothing recompiled on repeat calls.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  subprocess.run([sys.executable, "-m", "banel_jax", "bench", "--preset", "tiny",
                  "--which", "transformer", "--transformer.host-devices", "2",
                  "--out", str(tmp_path)], env=env, check=True, capture_output=True)
  r = json.loads((tmp_path / "bench_transformer.json").read_text())
  assert r["jax_devices"] == 2
  att = r["results"]["attacker"]
  assert att["jax"]["devices"] == 2 and att["jax_one_device"]["devices"] == 1
  for result in (att["jax"], att["jax_one_device"]):
    row = result["by_batch"]["16"]
    assert set(row) == {"sample_tokens_per_s", "log_prob_sequences_per_s",
                        "train_steps_per_s"}
    assert all(v > 0 for v in row.values())
    assert result["compilations_on_repeat_calls"] == 0
