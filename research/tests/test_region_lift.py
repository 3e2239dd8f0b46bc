"""``research/region_lift.py``: union shares and the lift, on hand-made masks."""

import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from research import region_lift  # noqa: E402


def test_region_lift_shares_and_lift():
  """Union shares accumulate region by region; the lift is left out when too few
  samples lie outside the union."""
  x = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], bool)  # 4 samples, 2 regions
  e = np.array([[1, 1], [0, 0]], bool)              # 2 errors, both in region 1
  r = region_lift.region_shares(x, e, min_outside=2)
  assert r["inside_samples"] == [0.25, 0.25] and r["inside_errors"] == [1.0, 0.0]
  assert r["union_inside_samples"] == [0.25, 0.5]
  assert r["union_inside_errors"] == [1.0, 1.0]
  assert r["union_lift"] == [0.0, 0.0]
  r = region_lift.region_shares(x, ~e, min_outside=3)  # errors outside both
  assert r["union_lift"] == [pytest.approx(1 / 0.75), None]  # 2 outside < 3
  by_regions = region_lift.mean_by_regions(
      [{"union_lift": [1.0, 2.0, None]}, {"union_lift": [3.0, None, None]}])
  assert [(m["mean"], m["seeds"]) for m in by_regions] == [(2.0, 2), (2.0, 1),
                                                          (None, 0)]
