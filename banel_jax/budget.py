"""The oracle boundary: a budget keeper that counts and records every call."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from banel_jax.types import Oracle


class OracleError(RuntimeError):
  """The oracle returned something that is not one reward in {0, 1} per query."""


@dataclasses.dataclass
class Success:
  """A sample the oracle accepted during training."""

  seed_index: int
  round: int
  sample: Any


def validate_rewards(rewards, n: int) -> np.ndarray:
  """Checks an oracle's output and returns it as ``float32[n]``.

  Raises:
    OracleError: wrong shape or type, non-finite values, or values not in {0, 1}.
  """
  try:
    r = np.asarray(rewards)
  except Exception as e:  # pragma: no cover - exotic return types
    raise OracleError(f"oracle returned {type(rewards).__name__}, not an array: {e}")
  if r.shape != (n,):
    raise OracleError(f"oracle returned shape {r.shape} for {n} queries; expected ({n},)")
  if not (np.issubdtype(r.dtype, np.number) or r.dtype == bool):
    raise OracleError(f"oracle returned dtype {r.dtype}; expected numbers in {{0, 1}}")
  r = r.astype(np.float64)
  if not np.all(np.isfinite(r)):
    raise OracleError(f"oracle returned {int((~np.isfinite(r)).sum())} non-finite "
                      "rewards (NaN or inf)")
  bad = (r != 0) & (r != 1)
  if np.any(bad):
    raise OracleError(f"oracle returned values outside {{0, 1}}, e.g. {r[bad][:3]}")
  return r.astype(np.float32)


class BudgetKeeper:
  """Wraps a batched host oracle; never spends past each seed's budget.

  Training calls (:meth:`evaluate`) count against ``budget`` per seed; a request
  for more than what is left is cut to fit, and the cut samples are marked not
  evaluated. Evaluation calls (:meth:`evaluate_free`) are counted apart and never
  limited. Successes found in training are kept in :attr:`successes`.

  Args:
    oracle: ``oracle(x) -> rewards`` on a numpy batch ``[n, *event_shape]``.
    budget: NRE per seed.
    num_seeds: number of seeds sharing this oracle.
  """

  def __init__(self, oracle: Oracle, budget: int, num_seeds: int = 1):
    if budget < 0:
      raise ValueError(f"budget must be >= 0, got {budget}")
    self.oracle = oracle
    self.budget = int(budget)
    self.num_seeds = int(num_seeds)
    self.spent = np.zeros(self.num_seeds, np.int64)
    self.eval_calls = 0
    self.oracle_calls = 0
    self.successes: list[Success] = []

  @property
  def remaining(self) -> np.ndarray:
    return self.budget - self.spent

  @property
  def exhausted(self) -> bool:
    return bool(np.all(self.remaining <= 0))

  def _call(self, x: np.ndarray) -> np.ndarray:
    self.oracle_calls += 1
    return validate_rewards(self.oracle(x), x.shape[0])

  def evaluate(self, x, round_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores training samples ``x[S, m, ...]`` within the budget.

    All seeds' allowed samples go to the oracle in one call.

    Returns:
      ``(rewards f32[S, m], evaluated bool[S, m])``; unscored slots get reward 0.
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] != self.num_seeds:
      raise ValueError(f"expected samples of shape [num_seeds={self.num_seeds}, m, ...],"
                       f" got {x.shape}")
    m = x.shape[1]
    allowed = np.clip(self.remaining, 0, m).astype(int)
    rewards = np.zeros((self.num_seeds, m), np.float32)
    evaluated = np.zeros((self.num_seeds, m), bool)
    if allowed.sum() == 0:
      return rewards, evaluated
    batch = np.concatenate([x[s, :allowed[s]] for s in range(self.num_seeds)], axis=0)
    r = self._call(batch)
    offset = 0
    for s in range(self.num_seeds):
      k = allowed[s]
      rewards[s, :k] = r[offset:offset + k]
      evaluated[s, :k] = True
      for i in np.flatnonzero(r[offset:offset + k] > 0.5):
        self.successes.append(Success(s, round_index, x[s, i].tolist()))
      offset += k
    self.spent += allowed
    return rewards, evaluated

  def evaluate_free(self, x) -> np.ndarray:
    """Scores evaluation samples ``x[n, ...]``; counted apart, never limited."""
    x = np.asarray(x)
    r = self._call(x)
    self.eval_calls += x.shape[0]
    return r
