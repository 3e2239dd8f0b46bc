"""``banel train-target``, ``pretrain-attacker`` and ``calibrate``: the answer
order, continuing from a checkpoint, and a calibration the attack reuses."""

import json

import jax
import numpy as np
import pytest

from banel_jax.experiments import attack, train
from banel_jax.tasks import addition

pytestmark = pytest.mark.slow  # trains and calibrates models


def test_a_target_trained_further_keeps_its_shape_and_counts_all_steps(tmp_path):
  tiny = train.TRAIN_TARGET_PRESETS["tiny"]()
  first, second = tmp_path / "first", tmp_path / "second"
  train.run_train_target(tiny.replace(answer_order="msb"), first, progress=False)
  # width and answer_order below are ignored: the checkpoint's are used.
  record = train.run_train_target(
      tiny.replace(width=32, init_from=str(first / "checkpoint")), second,
      progress=False)
  p1, task1, _ = addition.load_target(first / "checkpoint")
  p2, task2, meta2 = addition.load_target(second / "checkpoint")
  assert task1.answer_order == task2.answer_order == "msb"
  assert task2.target == task1.target and task2.target.width == 16
  assert meta2["steps"] == 25 and meta2["total_steps"] == 50
  assert meta2["init_from"] == str(first / "checkpoint")
  assert record == json.loads((second / "train_target.json").read_text())
  assert record["total_steps"] == 50
  assert record["init_from"] == str(first / "checkpoint")
  assert record["config"]["width"] == 32
  moved = jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), p1, p2)
  assert max(jax.tree.leaves(moved)) > 0  # it trained on from there


def test_pretrain_then_calibrate_then_the_attack_reuses_it(tmp_path):
  """A tiny attacker, calibrated against the shipped target: the attack
  reuses that calibration for this pair of checkpoints only."""
  record = train.run_pretrain_attacker(train.PRETRAIN_ATTACKER_PRESETS["tiny"](),
                                       tmp_path / "attacker", progress=False)
  assert record["steps"] == 20 and record["samples_checked"] == 4096
  assert 0.0 <= record["malformed_fraction"] <= 1.0
  attacker_dir = str(tmp_path / "attacker" / "checkpoint")
  cal = train.run_calibrate(
      train.CALIBRATE_PRESETS["tiny"]().replace(attacker=attacker_dir),
      tmp_path / "calibration", progress=False)
  path = tmp_path / "calibration" / "calibration.json"
  assert cal == json.loads(path.read_text())
  assert cal["num_samples"] == 512 and cal["target"]["checkpoint"] == "target"
  rate = cal["leading_zeros_allowed"]["success"]
  assert rate["trials"] == 512 and 0.0 <= rate["rate"] <= 1.0
  config = attack.tiny_config().replace(attacker=attacker_dir, calibration=str(path))
  reused, source = attack.reuse_calibration(config, config.task_config())
  assert reused.as_dict() == rate and source == f"from {path}"
  # the shipped calibration was made from the shipped attacker, not this one
  assert attack.reuse_calibration(config.replace(calibration="shipped"),
                                  config.task_config()) == (None, "measured here")
