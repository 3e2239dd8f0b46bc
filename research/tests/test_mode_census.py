"""``research/mode_census.py``: a seed's mode from hand-made paid queries."""

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from banel_jax.tasks import addition  # noqa: E402
from research import mode_census  # noqa: E402

TASK = addition.AdditionTaskConfig()


def test_mode_census_classifies_hand_made_seeds():
  strict = TASK.replace(allow_leading_zeros=False)
  # One seed over three rounds: round 1 is not among the last two; the repeated
  # "12+34=" of round 3 was paid in round 1; the last two rounds' successes are
  # all tops 4/5.
  q = addition.encode_batch(["12+34=", "79999979+7890=", "50059266+50753069=",
                             "45000000+41234567=", "12+34=", "34070000+68864203="],
                            TASK.max_len)
  rewards = np.array([0, 1, 1, 1, 0, 0], np.float32)
  rounds = np.array([1, 1, 2, 3, 3, 3])
  row = mode_census.seed_census(q, rewards, rounds, strict, last_rounds=2,
                                min_successes=2)
  assert row["paid"] == 4 and row["rounds"] == [2, 3] and row["successes"] == 2
  assert row["repeat_share"] == 0.25 and row["distinct_share"] == 1.0
  assert row["mode"] == "tops_45" and row["share"]["tops_45"] == 0.5
  assert row["success_rate_in"]["tops_45"] == 1.0
  assert row["success_rate_in"]["carry_into_top"] == 0.0
  assert row["share_of_successes"]["propagation_3"] == 0.0
  assert mode_census.seed_census(q, rewards, rounds, strict, 2, 3)["mode"] == "none"
