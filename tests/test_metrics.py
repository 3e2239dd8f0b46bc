"""Tests of banel_jax.core.metrics: Clopper–Pearson intervals and seed summaries."""

import math

import numpy as np
import pytest
from scipy import stats

from banel_jax.core.metrics import RateEstimate, clopper_pearson, summarize_over_seeds


@pytest.mark.parametrize("k,n", [(1, 10), (3, 10), (5, 10), (7, 200), (40, 10_000),
                                 (1, 250_000), (999, 1000), (12, 13)])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, alpha):
  ref = stats.binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="exact")
  est = clopper_pearson(k, n, alpha=alpha)
  assert isinstance(est, RateEstimate)
  assert (est.successes, est.trials) == (k, n)
  assert est.rate == pytest.approx(k / n, rel=1e-12)
  # binomtest finds the bounds by root finding to an absolute tolerance of ~1e-12
  assert est.low == pytest.approx(ref.low, rel=1e-6, abs=1e-11)
  assert est.high == pytest.approx(ref.high, rel=1e-6, abs=1e-11)
  assert est.low < est.rate < est.high


def test_clopper_pearson_known_textbook_value():
  # 0/100 at 95%: upper bound 1 - 0.025^(1/100) = 0.03621669...
  est = clopper_pearson(0, 100)
  assert est.low == 0.0
  assert est.high == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-10)
  assert round(est.high, 4) == 0.0362


@pytest.mark.parametrize("n", [2, 17, 250_000])
def test_clopper_pearson_one_success_closed_form(n):
  # P(X >= 1 | p) = 1 - (1 - p)^n = alpha / 2 at the lower bound.
  est = clopper_pearson(1, n)
  assert est.low == pytest.approx(-math.expm1(math.log1p(-0.025) / n), rel=1e-9)
  # P(X <= n - 2 | p) at the upper bound of n - 1 successes mirrors it.
  est = clopper_pearson(n - 1, n)
  assert est.high == pytest.approx(1 + math.expm1(math.log1p(-0.025) / n), rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 17, 10_000])
def test_clopper_pearson_zero_successes(n):
  est = clopper_pearson(0, n)
  assert est.rate == 0.0
  assert est.low == 0.0
  # closed form of the one-sided exact bound at alpha/2
  assert est.high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-10)
  assert 0.0 < est.high < 1.0


@pytest.mark.parametrize("n", [1, 2, 17, 10_000])
def test_clopper_pearson_all_successes(n):
  est = clopper_pearson(n, n)
  assert est.rate == 1.0
  assert est.high == 1.0
  assert est.low == pytest.approx(0.025 ** (1 / n), rel=1e-10)
  assert 0.0 < est.low < 1.0


def test_clopper_pearson_interval_narrows_with_trials():
  widths = [clopper_pearson(n // 100, n).high - clopper_pearson(n // 100, n).low
            for n in (100, 1000, 10_000, 100_000)]
  assert all(a > b for a, b in zip(widths, widths[1:]))


def test_clopper_pearson_accepts_numpy_integers():
  est = clopper_pearson(np.int64(3), np.int32(10))
  ref = stats.binomtest(3, 10).proportion_ci(method="exact")
  assert est.low == pytest.approx(ref.low, rel=1e-9)
  assert est.as_dict()["trials"] == 10


@pytest.mark.parametrize("k,n", [(0, 0), (1, 0), (-1, 10), (11, 10), (5, -3)])
def test_clopper_pearson_invalid_input_raises(k, n):
  with pytest.raises(ValueError, match="successes <= trials"):
    clopper_pearson(k, n)


def test_summarize_over_seeds_known_values():
  s = summarize_over_seeds([0.1, 0.4, 0.2, 0.3, 1.0])
  assert s["mean"] == pytest.approx(0.4)
  assert s["median"] == pytest.approx(0.3)
  assert s["std"] == pytest.approx(math.sqrt(np.mean(
      (np.array([0.1, 0.4, 0.2, 0.3, 1.0]) - 0.4) ** 2)))  # ddof = 0
  assert (s["min"], s["max"], s["n"]) == (pytest.approx(0.1), pytest.approx(1.0), 5)
