"""Tests of the oracle boundary: BudgetKeeper and validate_rewards."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banel_jax import OracleError, validate_rewards
from banel_jax.runtime.budget import BudgetKeeper


class RecordingOracle:
  """Rewards 1 on multiples of 7; records every batch it is asked to score."""

  def __init__(self):
    self.batches = []

  def __call__(self, x):
    x = np.asarray(x)
    self.batches.append(x.copy())
    return (x % 7 == 0).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(0, 400), m=st.integers(1, 120), num_seeds=st.integers(1, 4),
       eval_n=st.integers(1, 50))
def test_budget_keeper_spends_exactly_the_budget(budget, m, num_seeds, eval_n):
  oracle = RecordingOracle()
  keeper = BudgetKeeper(oracle, budget, num_seeds)
  received = [[] for _ in range(num_seeds)]
  rounds = 0
  while not keeper.exhausted:
    # unique ids: seed * 1e6 + round * 1e3 + slot
    x = (np.arange(num_seeds)[:, None] * 10**6 + rounds * 1000
         + np.arange(m)[None, :]).astype(np.int64)
    before = keeper.remaining.copy()
    n_calls = len(oracle.batches)
    rewards, evaluated = keeper.evaluate(x, round_index=rounds)
    assert len(oracle.batches) == n_calls + 1  # all seeds in one oracle call
    assert rewards.shape == evaluated.shape == (num_seeds, m)
    assert np.all(keeper.spent <= budget)
    for s in range(num_seeds):
      k = min(before[s], m)
      # the first k slots are scored, the cut ones are marked not evaluated
      np.testing.assert_array_equal(evaluated[s], np.arange(m) < k)
      np.testing.assert_array_equal(rewards[s, :k], (x[s, :k] % 7 == 0))
      assert np.all(rewards[s, k:] == 0)
    batch = oracle.batches[-1]
    for s in range(num_seeds):
      received[s].extend(batch[batch // 10**6 == s].tolist())
    assert batch.shape[0] == evaluated.sum()
    rounds += 1
  assert rounds == (math.ceil(budget / m) if budget else 0)
  # the oracle saw exactly `budget` training samples per seed, none twice
  for s in range(num_seeds):
    assert len(received[s]) == budget
    assert len(set(received[s])) == budget
  np.testing.assert_array_equal(keeper.spent, budget)
  np.testing.assert_array_equal(keeper.remaining, 0)
  assert keeper.eval_calls == 0
  # once spent, a training call scores nothing and does not call the oracle
  n_calls = len(oracle.batches)
  rewards, evaluated = keeper.evaluate(np.zeros((num_seeds, m), np.int64), rounds)
  assert not evaluated.any() and not rewards.any()
  assert len(oracle.batches) == n_calls
  # evaluation is counted apart and never limited
  r = keeper.evaluate_free(np.arange(eval_n) * 7)
  np.testing.assert_array_equal(r, 1.0)
  assert keeper.eval_calls == eval_n
  np.testing.assert_array_equal(keeper.spent, budget)
  # successes during training are recorded per seed and round
  n_succ = sum(int((np.asarray(v) % 7 == 0).sum()) for v in received)
  assert len(keeper.successes) == n_succ
  for succ in keeper.successes:
    assert succ.sample % 7 == 0 and succ.sample // 10**6 == succ.seed_index
    assert (succ.sample % 10**6) // 1000 == succ.round


def test_budget_keeper_rejects_wrong_sample_shape_and_negative_budget():
  keeper = BudgetKeeper(RecordingOracle(), 10, num_seeds=2)
  with pytest.raises(ValueError, match="num_seeds=2"):
    keeper.evaluate(np.zeros((3, 5), np.int64))
  with pytest.raises(ValueError, match="num_seeds=2"):
    keeper.evaluate(np.zeros((5,), np.int64))
  with pytest.raises(ValueError, match="budget"):
    BudgetKeeper(RecordingOracle(), -1)


# --- validate_rewards ---------------------------------------------------------------

@pytest.mark.parametrize("rewards,n,match", [
    (np.zeros(4), 5, r"shape \(4,\) for 5 queries"),
    (np.zeros((5, 1)), 5, r"shape \(5, 1\)"),
    (np.float32(0), 5, r"shape \(\)"),
    ([0, 1, 1], 2, "shape"),
    (np.array([0, 1, np.nan]), 3, "1 non-finite"),
    (np.array([np.inf, 0, 0]), 3, "non-finite"),
    (np.array([0, 0.5, 1]), 3, r"outside \{0, 1\}.*0\.5"),
    (np.array([0, 2, -1]), 3, r"outside \{0, 1\}"),
    (np.array(["0", "1"]), 2, "dtype <U1"),
    (np.array([None, 1], dtype=object), 2, "dtype object"),
    (np.array([1 + 1j, 0j]), 2, "dtype complex128"),
])
def test_validate_rewards_rejects_bad_output(rewards, n, match):
  with pytest.raises(OracleError, match=match):
    validate_rewards(rewards, n)


@pytest.mark.parametrize("rewards", [[0, 1, 1], np.array([False, True, True]),
                                     np.array([0.0, 1.0, 1.0], np.float64),
                                     np.array([0, 1, 1], np.uint8)])
def test_validate_rewards_accepts_binary(rewards):
  r = validate_rewards(rewards, 3)
  assert r.dtype == np.float32
  np.testing.assert_array_equal(r, [0.0, 1.0, 1.0])


# --- end to end ---------------------------------------------------------------------

def test_run_banel_spends_exactly_a_budget_not_divisible_by_m(toy_runs):
  """NRE budget 250, 100 samples per round: ``toy_runs`` in conftest.py runs
  ``run_banel`` for seed 1 and a ``BanelRunner`` for seeds (0, 1, 2)."""
  cfg = toy_runs["config"]
  assert (cfg.nre_budget, cfg.samples_per_round, cfg.eval_every) == (250, 100, 1)
  n_eval = cfg.n_eval
  for res, sizes, seeds in ((toy_runs["three"], toy_runs["oracle_sizes_three"], 3),
                            (toy_runs["one"], toy_runs["oracle_sizes_one"], 1)):
    assert res.nre_spent == [250] * seeds
    np.testing.assert_array_equal(np.asarray(res.states.nre), [250] * seeds)
    # oracle calls in order, all seeds in one call: evaluation of round 0, then per
    # round a training call and an evaluation; round 3 is cut to 50 per seed
    assert sizes == [seeds * n for n in (n_eval, 100, n_eval, 100, n_eval, 50, n_eval)]
    assert sum(sizes[1::2]) == seeds * 250  # training samples scored
    assert res.eval_calls == sum(sizes[0::2]) == 4 * seeds * n_eval
    assert [h["round"] for h in res.history] == [0, 1, 2, 3]
    assert [h["nre"] for h in res.history] == [[n] * seeds for n in (0, 100, 200, 250)]
    assert [h["n_evaluated"] for h in res.history[1:]] == [
        [n] * seeds for n in (100, 100, 50)]

