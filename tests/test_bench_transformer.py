"""``scripts/bench_transformer.py``'s roofline: the FLOP count and the arithmetic."""

import time

import jax
import pytest

from banel_jax.models import transformer as tfm
from scripts import bench_transformer as bench


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
  with pytest.raises(SystemExit, match="--peer-sample-batch 512 must be one of"):
    bench.main(["--peer", "--batch-sizes", "256", "1024", "--peer-sample-batch", "512"])
  with pytest.raises(SystemExit, match="--side-by-side-rounds"):
    bench.main(["--side-by-side-rounds", "0"])


def test_comparison_table_reads_the_committed_json():
  import json
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "results",
                      "bench_transformer.json")
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
