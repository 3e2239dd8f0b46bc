"""scripts/train_target.py: the answer order and continuing from a checkpoint."""

import json

import jax
import numpy as np

from banel_jax.tasks import addition
from scripts import train_target

SMALL = ["--width", "16", "--layers", "1", "--heads", "2", "--steps", "25",
         "--eval-every", "25", "--eval-size", "64", "--final-eval", "64",
         "--stop-error", "0"]


def test_a_target_trained_further_keeps_its_shape_and_counts_all_steps(tmp_path):
  first, second = tmp_path / "first", tmp_path / "second"
  train_target.main(SMALL + ["--answer-order", "msb", "--out", str(first),
                             "--json", str(tmp_path / "first.json")])
  # --width and --answer-order below are ignored: the checkpoint's are used.
  train_target.main(SMALL + ["--width", "32", "--init-from", str(first), "--out",
                             str(second), "--json", str(tmp_path / "second.json")])
  p1, task1, _ = addition.load_target(first)
  p2, task2, meta2 = addition.load_target(second)
  assert task1.answer_order == task2.answer_order == "msb"
  assert task2.target == task1.target and task2.target.width == 16
  assert meta2["steps"] == 25 and meta2["total_steps"] == 50
  assert meta2["init_from"] == str(first)
  record = json.load(open(tmp_path / "second.json"))
  assert record["total_steps"] == 50 and record["init_from"] == str(first)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       p1, p2)
  assert max(jax.tree.leaves(moved)) > 0  # it trained on from there
