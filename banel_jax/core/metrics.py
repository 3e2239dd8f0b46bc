"""Success rates with exact (Clopper–Pearson) confidence intervals."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RateEstimate(NamedTuple):
  """A binomial rate with its two-sided Clopper–Pearson interval."""

  successes: int
  trials: int
  rate: float
  low: float
  high: float

  def as_dict(self) -> dict:
    return self._asdict()


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> RateEstimate:
  """Exact binomial confidence interval of level ``1 - alpha``.

  >>> r = clopper_pearson(0, 100)
  >>> (r.low, round(r.high, 4))
  (0.0, 0.0362)
  """
  k, n = int(successes), int(trials)
  if n < 1 or not 0 <= k <= n:
    raise ValueError(f"need 0 <= successes <= trials and trials >= 1; got {k}/{n}")
  # imported here: scipy.stats takes seconds to import and only this needs it
  from scipy import stats  # pylint: disable=import-outside-toplevel
  low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
  high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
  return RateEstimate(k, n, k / n, low, high)


def summarize_over_seeds(values) -> dict:
  """Mean, median, std (ddof=0), min and max of a per-seed list."""
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "median": float(np.median(v)),
          "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
          "n": int(v.size)}
