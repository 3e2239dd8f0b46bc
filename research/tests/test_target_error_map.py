"""``research/target_error_map.py`` on the shipped target, at tiny sizes.

The script's splits partition the same queries in several ways; each partition
must account for every query and every error exactly once.
"""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from research import target_error_map  # noqa: E402

TARGET = ROOT / "banel_jax" / "assets" / "checkpoints" / "target"


@pytest.mark.skipif(not TARGET.exists(),
                    reason="needs the committed target checkpoint")
def test_error_map_partitions_add_up(tmp_path):
  out = tmp_path / "map"
  target_error_map.main(["--target-dir", str(TARGET),
                         "--per-cell", "3", "--pool", "2000", "--chain-queries", "64",
                         "--rule-queries", "20",
                         "--out", str(out)])
  s = json.loads((out / "error_map.json").read_text())
  m = 8
  assert len(s["by_length_pair"]) == m * m
  assert all(c["trials"] == 3 for c in s["by_length_pair"])
  by_pair = s[f"lengths_{m}_{m}_by_top_digit_pair"]
  by_sum = s[f"lengths_{m}_{m}_by_top_digit_sum_and_carry_in"]
  assert len(by_pair) == 81
  assert {(r["top_a"], r["top_b"]) for r in by_pair} == {
      (a, b) for a in range(1, 10) for b in range(1, 10)}
  # the pair split and the (sum, carry) split cover the same 2,000 queries
  assert sum(r["trials"] for r in by_pair) == 2000 == sum(r["trials"] for r in by_sum)
  assert sum(r["successes"] for r in by_pair) == sum(r["successes"] for r in by_sum)
  for total in range(2, 19):  # and agree sum by sum
    pairs = [r for r in by_pair if r["top_a"] + r["top_b"] == total]
    sums = [r for r in by_sum if r["top_digit_sum"] == total]
    assert sum(r["trials"] for r in pairs) == sum(r["trials"] for r in sums)
    assert sum(r["successes"] for r in pairs) == sum(r["successes"] for r in sums)
  assert sum(r["trials"] for r in s["pretraining_by_carry_chain"]) == 64
  from banel_jax.tasks.addition_patterns import RULES
  assert set(s["rule_based_attacks"]) == set(RULES)
  assert all(r["trials"] == 20 for r in s["rule_based_attacks"].values())
  assert (out / "error_map.png").stat().st_size > 0
