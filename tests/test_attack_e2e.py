"""A tiny end-to-end attack: BaNEL against a (random, tiny) addition target."""

import shlex
import subprocess
import sys
import pathlib

import jax
import numpy as np
import pytest

import banel_jax as bj
from banel_jax.models import transformer as tfm
from banel_jax.tasks import addition

ROOT = pathlib.Path(__file__).parent.parent
SMALL = dict(num_layers=1, width=16, num_heads=2, mlp_ratio=2)


def test_tiny_attack_end_to_end():
  task = addition.AdditionTaskConfig(
      max_operand_len=3, max_len=10,
      target=tfm.TransformerConfig(max_len=14, **SMALL))
  target_params = addition.make_target(task).model.init(jax.random.key(0))
  scorer = addition.make_scorer(target_params, task, batch_size=64)
  calls = []

  def oracle(x):
    calls.append(np.asarray(x).copy())
    return scorer(x).rewards(task.allow_leading_zeros)

  attacker = tfm.make_transformer(tfm.TransformerConfig(max_len=task.max_len, **SMALL))
  prior = attacker.model.init(jax.random.key(1))
  config = bj.BanelConfig(nre_budget=40, samples_per_round=16, failure_batch_size=8,
                          failure_epochs=1, failure_learning_rate=1e-3,
                          distill_samples=32, distill_batch_size=16,
                          distill_learning_rate=1e-3, n_eval=32,
                          tau_mode="calibrated", calibration_samples=32)
  result = bj.run_banel(attacker.model, prior, oracle, config, seeds=(0, 1),
                        progress=False)
  assert result.nre_spent == [40, 40]
  train_queries = sum(len(c) for c in calls) - result.eval_calls
  assert train_queries == 80  # both seeds' training queries, nothing more
  # Every success recorded in training is a well-formed query the target gets wrong.
  for s in result.successes:
    row = np.asarray(s.sample)[None]
    assert scorer(row).rewards(True)[0] == 1.0
  rates = result.final_success_rates()
  assert len(rates) == 2 and all(0.0 <= r <= 1.0 for r in rates)


def test_attack_script_help_documents_options():
  out = subprocess.run([sys.executable, str(ROOT / "scripts" / "attack.py"), "--help"],
                       capture_output=True, text=True, check=True).stdout
  for option in ("--config", "--failure-epochs", "--tau-mode", "--no-leading-zeros",
                 "--run-dir", "--reset", "--distill-pack", "--distill-target",
                 "--support-filter", "--reject-seen-failures", "--learn-from-successes",
                 "--success-bank", "--distinct-bank", "--success-weight",
                 "--min-acceptance-rate", "--method", "--restart-after-rounds",
                 "--train-microbatch"):
    assert option in out


def test_the_plot_names_what_was_run():
  sys.path.insert(0, str(ROOT))
  from scripts import attack
  base = bj.BanelConfig()
  assert attack._method_label(base) == "BaNEL"
  bank = base.replace(learn_from_successes=True, success_bank_size=256)
  assert attack._method_label(bank) == "BaNEL + bank 256"
  assert attack._method_label(bank.replace(
      success_weight=100.0, tau_mode="factor", filter_factor=1e30)) == (
          "no regions + bank 256 (weight 100)")
  assert attack._method_label(base.replace(learn_from_successes=True)) == (
      "BaNEL + round's successes")


def test_attack_script_runs_the_self_imitation_baseline(tmp_path):
  """``--method self-imitation``: the baseline in the attack's harness, with its
  own config recorded (BaNEL's is ``None``), the budget spent exactly, its bank
  in the run directory's checkpoints, and the analysis run on its generator."""
  import json
  script = [sys.executable, str(ROOT / "scripts" / "attack.py"), "--config", "tiny",
            "--method", "self-imitation", "--no-progress", "--support-filter"]
  refused = subprocess.run(script + ["--tau-mode", "factor", "--reset"], cwd=ROOT,
                           capture_output=True, text=True)
  assert refused.returncode != 0
  assert "drop --tau-mode, --reset" in refused.stderr
  redundant = subprocess.run(script + ["--learn-from-successes"], cwd=ROOT,
                             capture_output=True, text=True)
  assert redundant.returncode != 0
  assert "drop --learn-from-successes" in redundant.stderr
  empty = subprocess.run(script + ["--success-bank", "0"], cwd=ROOT,
                         capture_output=True, text=True)
  assert empty.returncode != 0 and "bank_size=0 must be an integer >= 1" in empty.stderr
  run_dir, out = tmp_path / "run", tmp_path / "out"
  subprocess.run(script + ["--success-bank", "8", "--run-dir", str(run_dir),
                           "--out", str(out)], check=True, cwd=ROOT,
                 capture_output=True)
  summary = json.load(open(out / "attack.json"))
  assert summary["method"] == "self-imitation" and summary["banel_config"] is None
  mc = summary["method_config"]
  assert (mc["bank_size"], mc["success_weight"], mc["anchor_samples"],
          mc["epochs"], mc["batch_size"]) == (8, 100.0, 256, 1, 128)
  assert mc["train_microbatch"] == 32  # the attack configs' speed setting
  assert summary["run_config"]["nre_budget"] == 128
  assert summary["nre_spent"] == [128, 128]
  assert len(summary["patterns_self_imitation_per_seed"]) == 2
  assert "patterns_banel_per_seed" not in summary
  record = json.load(open(run_dir / "config.json"))
  assert record["method"] == "self_imitation"
  assert record["method_config"]["bank_size"] == 8
  metrics = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
  trained = [m for m in metrics if m["round"] > 0]
  assert len(trained) == 2
  for m in trained:
    assert all(0 <= k <= 8 for k in m["n_banked_successes"])
    assert all(0.0 <= r <= 1.0 for r in m["anchor_support_rate"])


def test_attack_run_dir_then_proposal_drift(tmp_path):
  """The attack script's run directory holds every round's proposal, and
  ``proposal_drift.py`` reads them back: one row per seed and round (plus the
  current proposal), with shares in [0, 1] and the round's paid-sample
  diagnostics in the attack's metrics. (The run uses ``--support-filter``, which
  the run directory's config records.)"""
  import json
  run_dir, out = tmp_path / "run", tmp_path / "out"
  subprocess.run([sys.executable, str(ROOT / "scripts" / "attack.py"), "--config",
                  "tiny", "--run-dir", str(run_dir), "--out", str(tmp_path / "attack"),
                  "--no-analysis", "--no-progress", "--support-filter",
                  "--seed-offset", "3"], check=True,
                 cwd=ROOT, capture_output=True)
  assert json.load(open(run_dir / "config.json"))["extra"]["support_filter"] is True
  summary = json.load(open(tmp_path / "attack" / "attack.json"))
  assert summary["support_filter"] is True
  assert summary["command"] == shlex.join([
      "python", "scripts/attack.py", "--config", "tiny", "--run-dir", str(run_dir),
      "--out", str(tmp_path / "attack"), "--no-analysis", "--no-progress",
      "--support-filter", "--seed-offset", "3"])
  # Rerunning a finished run directory pays for nothing and reports the wall
  # time the run took, not the seconds the rerun took to load it.
  subprocess.run([sys.executable, str(ROOT / "scripts" / "attack.py"), "--config",
                  "tiny", "--run-dir", str(run_dir), "--out", str(tmp_path / "again"),
                  "--no-analysis", "--no-progress", "--support-filter",
                  "--seed-offset", "3"], check=True, cwd=ROOT, capture_output=True)
  again = json.load(open(tmp_path / "again" / "attack.json"))
  # the 2 seeds ran one per CPU device (--host-devices auto: one per seed), and
  # the run directory resumes only on as many
  assert summary["seed_devices"] == again["seed_devices"] == 2
  assert json.load(open(run_dir / "config.json"))["extra"]["seed_devices"] == 2
  moved = subprocess.run(
      [sys.executable, str(ROOT / "scripts" / "attack.py"), "--config", "tiny",
       "--run-dir", str(run_dir), "--out", str(tmp_path / "moved"), "--no-analysis",
       "--no-progress", "--support-filter", "--seed-offset", "3",
       "--host-devices", "1"], cwd=ROOT, capture_output=True, text=True)
  assert moved.returncode != 0 and "seed_devices" in moved.stderr
  assert "pass --host-devices with the number it recorded" in moved.stderr
  assert again["nre_spent"] == summary["nre_spent"]
  assert again["final_success_rate"] == summary["final_success_rate"]
  assert summary["wall_time_s"] > 1.0
  assert again["wall_time_s"] >= 0.5 * summary["wall_time_s"]
  metrics = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
  trained = [m for m in metrics if m["round"] > 0]
  assert len(trained) == 2  # NRE 128 at 64 per round
  for m in trained:
    for field in ("malformed_train", "both_long_train", "top_sum_13_train",
                  "carry_into_top_train", "tops_45_train", "propagation_3_train"):
      assert len(m[field]) == 2 and all(0.0 <= v <= 1.0 for v in m[field])
  subprocess.run([sys.executable, str(ROOT / "scripts" / "proposal_drift.py"),
                  "--run-dir", str(run_dir), "--samples", "64", "--out", str(out)],
                 check=True, cwd=ROOT, capture_output=True)
  drift = json.load(open(out / "drift.json"))
  assert (out / "drift.png").exists()
  # rows name the seeds by value (the run's seeds 3 and 4) and by position
  assert sorted((r["seed"], r["seed_index"], r["round"]) for r in drift["rows"]) == [
      (s, s - 3, r) for s in (3, 4) for r in (1, 2, 3)]
  for row in drift["rows"]:
    for field in ("malformed", "both_long", "top_sum_13", "carry_into_top",
                  "tops_45", "propagation_3", "leading_zero", "distinct"):
      assert 0.0 <= row[field] <= 1.0
    assert row["success"]["trials"] == 64
  # Round r's proposal is tested against the r - 1 regions before it (none for
  # round 1), and about half of its samples lie in its own region (calibrated
  # to reject 50% of fresh proposal samples; 64 samples here).
  for row in drift["rows"]:
    assert 0.0 <= row["inside_regions"] <= 1.0
    if row["round"] == 1:
      assert row["inside_regions"] == 0.0
    if row["round"] < 3:
      assert 0.25 <= row["inside_own_region"] <= 0.75, row
    else:
      assert row["inside_own_region"] is None  # the current proposal: no region yet
  # Round 1's proposal is the pretrained attacker: it writes few malformed rows.
  assert all(r["malformed"] < 0.2 for r in drift["rows"] if r["round"] == 1)
  # --no-regions skips the region checks and leaves every other number as it was.
  sys.path.insert(0, str(ROOT))
  from scripts import proposal_drift
  proposal_drift.main(["--run-dir", str(run_dir), "--samples", "64", "--no-regions",
                       "--out", str(tmp_path / "drift_no_regions")])
  quick = json.load(open(tmp_path / "drift_no_regions" / "drift.json"))["rows"]
  assert len(quick) == len(drift["rows"])
  for fast, full in zip(quick, drift["rows"]):
    assert fast["inside_regions"] is None and fast["inside_own_region"] is None
    assert fast == dict(full, inside_regions=None, inside_own_region=None)
  # mode_census.py reads the ledger: each seed's last round of paid queries.
  from scripts import mode_census
  census_out = tmp_path / "census"
  mode_census.main(["--run-dir", str(run_dir), "--last-rounds", "1", "--calibration",
                    str(ROOT / "results" / "addition_calibration.json"),
                    "--out", str(census_out)])
  census = json.load(open(census_out / "census.json"))
  assert (census_out / "census.png").exists()
  assert [(r["seed"], r["paid"], r["rounds"]) for r in census["rows"]] == [
      (3, 64, [2, 2]), (4, 64, [2, 2])]
  for r in census["rows"]:
    assert 0.0 <= r["repeat_share"] <= 1.0 and 0.0 < r["distinct_share"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in r["share"].values())
    assert r["final_round"] == 2
    assert 0 <= r["final_distinct_successes"] <= r["final_successes"]
    n_eval = summary["banel_config"]["n_eval"]
    assert r["final_successes"] == round(r["final_success_rate"] * n_eval)
  # region_lift.py reads the same bank: region 1 was calibrated to take in half of
  # fresh samples of the pretrained attacker, which is what it measures against.
  from scripts import region_lift
  lift_out = tmp_path / "lift"
  region_lift.main(["--run-dir", str(run_dir), "--samples", "256", "--rule-queries",
                    "400", "--min-outside", "5", "--out", str(lift_out)])
  lift = json.load(open(lift_out / "lift.json"))
  assert (lift_out / "lift.png").exists()
  (run,) = lift["runs"]
  assert run["n_samples"] == 256 and run["n_errors"] >= 1
  assert run["regions"] == 4 and [s["regions"] for s in run["seeds"]] == [2, 2]
  for s in run["seeds"]:
    assert 0.3 <= s["inside_samples"][0] <= 0.7, s
    for key in ("inside_samples", "inside_errors"):
      union = s[f"union_{key}"]
      assert union[0] == s[key][0] and union[1] >= max(s[key]) and union[1] <= 1.0
    for x, e, v in zip(s["union_inside_samples"], s["union_inside_errors"],
                       s["union_lift"]):
      if v is not None:
        assert v == pytest.approx((1 - e) / (1 - x))
