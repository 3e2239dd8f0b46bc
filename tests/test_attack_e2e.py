"""The addition attack: a tiny run of the library, and the ``attack`` experiment
(in-process, and as ``banel attack`` in a subprocess)."""

import json
import os
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest

import banel_jax as bj
from banel_jax.experiments import attack, common
from banel_jax.experiments.registry import ExperimentError
from banel_jax.extensions import SuccessReplayConfig
from banel_jax.models import transformer as tfm
from banel_jax.tasks import addition
from banel_jax.tasks import addition_patterns as patterns

SMALL = dict(num_layers=1, width=16, num_heads=2, mlp_ratio=2)
DIAGNOSTICS = ("malformed_train", "both_long_train", "top_sum_13_train",
               "carry_into_top_train", "tops_45_train", "propagation_3_train")


@pytest.mark.slow
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


def test_the_plot_names_what_was_run():
  base = attack.AttackConfig()
  assert attack.method_label(base) == "BaNEL (paper)"
  assert attack.method_id(base) == "banel_paper"
  bank = base.replace(success_replay=True, replay=SuccessReplayConfig(bank_size=256))
  assert attack.method_label(bank) == "BaNEL + bank 256"
  assert attack.method_label(bank.replace(
      replay=SuccessReplayConfig(bank_size=256, weight=100.0),
      banel=base.banel.replace(tau_mode="factor", filter_factor=1e30))) == (
          "no regions + bank 256 (weight 100)")
  assert attack.method_label(base.replace(success_replay=True)) == (
      "BaNEL + round's successes")
  assert attack.method_label(base.replace(support_check=True, restart_every=6)) == (
      "BaNEL + restart 6 + support check (task knowledge)")
  assert attack.method_id(base.replace(support_check=True)) == "banel_support"
  assert attack.method_id(bank.replace(restart_every=6)) == "banel_replay_restart"
  assert attack.method_label(base.replace(method="self-imitation")) == (
      "self-imitation, bank 256 (weight 100)")


def test_the_config_asks_for_extensions_in_a_fixed_order():
  config = attack.tiny_config().replace(
      support_check=True, seen_failures=True, success_replay=True,
      replay=SuccessReplayConfig(bank_size=4, distinct=True, weight=10.0),
      restart_every=3)
  model = tfm.make_transformer(addition.AdditionTaskConfig().attacker).model
  exts = attack.extensions_of(config, model, config.task_config())
  assert [e.name for e in exts] == ["support", "seen_failures", "success_replay",
                                    "restart"]
  assert exts[1].config.capacity == config.banel.nre_budget
  assert exts[2].config == config.replay and exts[3].config.every == 3
  assert attack.extensions_of(attack.tiny_config(), model,
                              config.task_config()) == ()


def test_shipped_checkpoints_and_their_calibrations():
  for name in common.SHIPPED_CHECKPOINTS:
    assert (common.checkpoint_dir(name) / "metadata.json").is_file()
    assert common.checkpoint_record(name) == name
  assert common.checkpoint_record("./target") == os.path.abspath("target")
  attacker_dir = common.checkpoint_dir("attacker")
  for target, path in common.SHIPPED_CALIBRATIONS.items():
    cal = json.loads(path.read_text())
    for other in common.SHIPPED_CALIBRATIONS:
      assert attack.calibration_matches(cal, common.checkpoint_dir(other),
                                        attacker_dir) == (other == target)
  config = attack.tiny_config()
  rate, source = attack.reuse_calibration(config, config.task_config())
  assert (rate.successes, rate.trials) == (52, 200_704)
  assert source == "shipped calibration of target"
  assert attack.reuse_calibration(config.replace(calibration=""),
                                  config.task_config()) == (None, "measured here")
  with pytest.raises(ExperimentError, match="no such file"):
    attack.reuse_calibration(config.replace(calibration="nowhere.json"),
                             config.task_config())


def test_a_missing_checkpoint_is_refused_with_the_command_that_makes_it(tmp_path):
  config = attack.tiny_config().replace(target=str(tmp_path / "none"))
  with pytest.raises(ExperimentError, match="banel train-target --out DIR"):
    attack.ensure_checkpoints(config, tmp_path, progress=False)


def test_resuming_on_another_number_of_cpu_devices_is_refused(tmp_path):
  def record(backend, n):
    (tmp_path / "config.json").write_text(json.dumps(
        {"devices": {"backend": backend, "seed_devices": n}}))

  here = jax.default_backend()
  record(here, 2)
  attack.check_resume_devices(str(tmp_path), 2)
  if here == "cpu":
    with pytest.raises(ExperimentError, match="resume it with --host-devices 2"):
      attack.check_resume_devices(str(tmp_path), 1)
  record("a-backend-not-this-one", 2)  # another backend: resumes
  attack.check_resume_devices(str(tmp_path), 1)
  attack.check_resume_devices(str(tmp_path / "new"), 1)  # nothing to resume


@pytest.mark.slow
def test_attack_runs_resumes_and_records_what_it_ran(tmp_path):
  """The tiny preset with the grammar check, in a run directory: the run records
  its extension, checkpoints and task; the paid samples' diagnostics are in
  the metrics; rerunning the finished directory pays for nothing and reports
  the wall time the run took."""
  run_dir = tmp_path / "run"
  config = attack.tiny_config().replace(seeds=(3, 4), support_check=True,
                                        analysis=False, run_dir=str(run_dir))
  summary = attack.run(config, tmp_path / "out", progress=False)
  assert summary == json.loads((tmp_path / "out" / "attack.json").read_text())
  assert (tmp_path / "out" / "success_vs_nre.png").exists()
  assert summary["method"] == "banel"
  assert summary["label"] == "BaNEL + support check (task knowledge)"
  rs = json.loads((tmp_path / "out" / "summary.json").read_text())
  task = rs["tasks"]["addition_lsb"]
  entry = task["methods"]["banel_support"]
  assert entry["seeds"] == [3, 4] and entry["task_knowledge"] is True
  assert entry["uses_successes"] is False
  assert entry["improvement_final"] == [r / task["pretrained_rate"]
                                        for r in entry["final_rate"]]
  assert rs["machine"].endswith("no accelerator")
  assert summary["support_check"] is True and summary["task_knowledge"] is True
  assert [e["name"] for e in summary["extensions"]] == ["support"]
  assert summary["banel_config"]["train_microbatch"] == "auto"
  assert summary["config"]["seeds"] == [3, 4] and summary["target"] == "target"
  assert summary["nre_spent"] == [128, 128]
  assert summary["pretrained_source"] == "shipped calibration of target"
  assert "command" not in summary  # called from Python, not the command line
  record = json.loads((run_dir / "config.json").read_text())
  assert record["extensions"][0]["config"] == {"description": "addition grammar"}
  assert record["extra"]["target_dir"] == "target"
  assert record["extra"]["attacker_dir"] == "attacker"
  assert record["devices"]["seed_devices"] == summary["seed_devices"]
  metrics = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
  trained = [m for m in metrics if m["round"] > 0]
  assert len(trained) == 2  # NRE 128 at 64 per round
  for m in trained:
    for field in DIAGNOSTICS:
      assert len(m[field]) == 2 and all(0.0 <= v <= 1.0 for v in m[field])
  again = attack.run(config, tmp_path / "again", progress=False)
  assert again["nre_spent"] == summary["nre_spent"]
  assert again["final_success_rate"] == summary["final_success_rate"]
  assert summary["wall_time_s"] > 1.0
  assert again["wall_time_s"] >= 0.5 * summary["wall_time_s"]


@pytest.mark.slow
def test_attack_runs_the_self_imitation_baseline(tmp_path):
  """``method="self-imitation"``: the baseline in the attack's harness, with its
  own config recorded (BaNEL's is ``None``), the budget spent exactly, its
  bank in the run directory's checkpoints, and the analysis run on its
  generator."""
  tiny = attack.tiny_config()
  run_dir = tmp_path / "run"
  config = tiny.replace(method="self-imitation", support_check=True,
                        self_imitation=tiny.self_imitation.replace(bank_size=8),
                        run_dir=str(run_dir))
  summary = attack.run(config, tmp_path / "out", progress=False)
  assert summary["method"] == "self-imitation" and summary["banel_config"] is None
  assert summary["uses_successes"] is True
  mc = summary["method_config"]
  assert (mc["bank_size"], mc["success_weight"], mc["anchor_samples"],
          mc["epochs"], mc["batch_size"]) == (8, 100.0, 256, 1, 128)
  assert mc["train_microbatch"] == "auto"  # 32 on a CPU, 0 on accelerators
  assert summary["run_config"]["nre_budget"] == 128
  assert summary["nre_spent"] == [128, 128]
  assert len(summary["patterns_self_imitation_per_seed"]) == 2
  assert "patterns_banel_per_seed" not in summary
  assert set(summary["rule_based_attacks"]) == set(patterns.RULES)
  record = json.loads((run_dir / "config.json").read_text())
  assert record["method"] == "self_imitation"
  assert record["method_config"]["bank_size"] == 8
  assert record["extra"]["support_check"] is True
  metrics = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
  trained = [m for m in metrics if m["round"] > 0]
  assert len(trained) == 2
  for m in trained:
    assert all(0 <= k <= 8 for k in m["n_banked_successes"])
    assert all(0.0 <= r <= 1.0 for r in m["anchor_support_rate"])


@pytest.mark.slow
def test_banel_attack_command_from_another_directory(tmp_path):
  """``banel attack`` from an empty directory: the shipped checkpoints, the
  command line recorded, one CPU device per seed, and a run directory that
  resumes only on as many CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  work = tmp_path / "work"
  work.mkdir()
  argv = ["attack", "--preset", "tiny", "--no-analysis", "--no-progress",
          "--seeds", "3", "4", "--run-dir", "run", "--out", "out"]
  subprocess.run([sys.executable, "-m", "banel_jax", *argv], cwd=work, env=env,
                 check=True, capture_output=True)
  assert sorted(p.name for p in work.iterdir()) == ["out", "run"]
  summary = json.loads((work / "out" / "attack.json").read_text())
  assert summary["command"] == shlex.join(["banel", *argv])
  assert summary["preset"] == "tiny" and summary["nre_spent"] == [128, 128]
  # the 2 seeds ran one per CPU device (--host-devices auto: one per seed)
  assert summary["seed_devices"] == 2
  record = json.loads((work / "run" / "config.json").read_text())
  assert record["devices"] == {"backend": "cpu", "seed_devices": 2}
  moved = subprocess.run([sys.executable, "-m", "banel_jax", *argv, "--host-devices",
                          "1"], cwd=work, env=env, capture_output=True, text=True)
  assert moved.returncode == 1
  assert "resume it with --host-devices 2" in moved.stderr
  assert "Traceback" not in moved.stderr
