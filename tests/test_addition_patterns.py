"""Pattern statistics and rule-based attacks of the addition task."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from banel_jax.tasks import addition
from banel_jax.tasks import addition_patterns as patterns

TASK = addition.AdditionTaskConfig()


def _carries(a: int, b: int) -> list[int]:
  """Carry out of each digit position, units first (schoolbook addition)."""
  out, carry = [], 0
  while a or b or carry:
    s = a % 10 + b % 10 + carry
    carry = int(s >= 10)
    out.append(carry)
    a, b = a // 10, b // 10
  return out


def _longest_run(bits: list[int]) -> int:
  best = run = 0
  for c in bits:
    run = run + 1 if c else 0
    best = max(best, run)
  return best


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**8 - 1), st.integers(0, 10**8 - 1))
def test_carry_chain_length_matches_schoolbook_addition(a, b):
  assert int(patterns.carry_chain_length(np.array([a]), np.array([b]))[0]) == \
      _longest_run(_carries(a, b))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.data())
def test_carries_past_shorter_matches_schoolbook_addition(la, lb, data):
  a = data.draw(st.integers(10 ** (la - 1) if la > 1 else 0, 10**la - 1))
  b = data.draw(st.integers(10 ** (lb - 1) if lb > 1 else 0, 10**lb - 1))
  carries = _carries(a, b) + [0] * 10
  expected = la != lb and carries[min(la, lb) - 1] == 1
  got = patterns.carries_past_shorter(np.array([a]), np.array([b]), np.array([la]),
                                      np.array([lb]))
  assert bool(got[0]) == expected


@pytest.mark.parametrize("rule", patterns.RULES)
def test_rule_based_queries_are_well_formed(rule):
  x = patterns.rule_based_queries(np.random.default_rng(0), 200, rule, TASK)
  assert x.shape == (200, TASK.max_len)
  assert addition.is_well_formed(x, TASK.max_operand_len, allow_leading_zeros=True).all()
  texts = addition.decode_batch(x)
  if rule.startswith("carry_past_shorter"):
    a, b = zip(*(t[:-1].split("+") for t in texts))
    lens = {(len(p), len(q)) for p, q in zip(a, b)}
    assert lens == {(8, 7), (7, 8)}
    la, lb = np.array([len(p) for p in a]), np.array([len(q) for q in b])
    ai, bi = np.array([int(p) for p in a]), np.array([int(q) for q in b])
    assert patterns.carries_past_shorter(ai, bi, la, lb).all()
    if rule.endswith("13"):
      longer = [p if len(p) > len(q) else q for p, q in zip(a, b)]
      shorter = [q if len(p) > len(q) else p for p, q in zip(a, b)]
      assert all(int(u[1]) + int(v[0]) == 13 for u, v in zip(longer, shorter))
  if rule.startswith("carry_into_top"):
    assert patterns.carry_into_top_share(x, TASK) == 1.0  # the share's own test
    a, b = zip(*(t[:-1].split("+") for t in texts))
    assert all(p[0] != "0" and q[0] != "0" for p, q in zip(a, b))
    tops = {int(p[0]) + int(q[0]) for p, q in zip(a, b)}
    assert tops == {8} if rule.endswith("8") else len(tops) > 10
  if rule == "tops_5_5":
    a, b = zip(*(t[:-1].split("+") for t in texts))
    assert {p[0] + q[0] for p, q in zip(a, b)} == {"55"}
    assert {len(p) for p in a + b} == {TASK.max_operand_len}
    assert len({p[1:] for p in a}) > 150  # the other digits vary


def test_unknown_rule_is_refused():
  with pytest.raises(ValueError, match="unknown rule"):
    patterns.rule_based_queries(np.random.default_rng(0), 1, "nope", TASK)


def test_pattern_summary_on_hand_made_rows():
  texts = ["12+3=", "007+5=", "56447489+7580326=", "1+2+3=", "99+1="]
  s = patterns.pattern_summary(addition.encode_batch(texts, TASK.max_len), TASK,
                               rewards=np.array([0, 0, 1, 0, 0]))
  assert s["n"] == 5 and s["distinct"] == 5
  assert s["malformed_fraction"] == pytest.approx(0.2)  # "1+2+3="
  assert s["leading_zero_share"] == pytest.approx(0.25)  # "007+5=" of 4 parsed
  assert s["length_pair_share"] == {"2,1": 0.5, "3,1": 0.25, "8,7": 0.25}
  # 56447489+7580326, 007+5 (7+5) and 99+1 carry past their shorter operand
  assert s["carry_past_shorter_share"] == pytest.approx(0.75)
  assert s["success_rate_without_leading_zero"] == pytest.approx(1 / 3)


def test_both_long_share_on_hand_made_rows():
  rows = addition.encode_batch(["1234567+7654321=", "12345678+1=", "12+34=",
                                "01234567+12345678=", "1+"], TASK.max_len)
  # well-formed: rows 0-3 (row 3 has a leading zero); both operands >= 7 digits: 0, 3
  assert patterns.both_long_share(rows, TASK) == pytest.approx(2 / 4)
  strict = TASK.replace(allow_leading_zeros=False)  # row 3 becomes malformed
  assert patterns.both_long_share(rows, strict) == pytest.approx(1 / 3)
  assert patterns.both_long_share(rows[4:], TASK) == 0.0


def test_top_sum_13_share_on_hand_made_rows():
  rows = addition.encode_batch([
      "56447489+7580326=",   # (8, 7), 6 + 7 = 13: in
      "7580326+56447489=",   # the same, short first: in
      "59447489+7980326=",   # (8, 7), 9 + 7 = 16: out
      "56447489+56447489=",  # (8, 8): out
      "5644748+7580326=",    # (7, 7): out
      "06447489+7580326=",   # leading zero, 6 + 7 = 13: in when zeros are allowed
      "1+"], TASK.max_len)   # malformed
  assert patterns.top_sum_13_share(rows, TASK) == pytest.approx(3 / 6)
  strict = TASK.replace(allow_leading_zeros=False)  # row 5 becomes malformed
  assert patterns.top_sum_13_share(rows, strict) == pytest.approx(2 / 5)
  assert patterns.top_sum_13_share(rows[6:], TASK) == 0.0


def test_carry_into_top_share_on_hand_made_rows():
  rows = addition.encode_batch([
      "17443055+86724674=",  # (8, 8), 7443055 + 6724674 carries: in
      "86724674+17443055=",  # the same, swapped: in
      "17443055+81224674=",  # (8, 8), 7443055 + 1224674 does not carry: out
      "1744305+86724674=",   # (7, 8): out
      "07443055+06724674=",  # leading zeros, still 8 digits written, carries
      "1+"], TASK.max_len)   # malformed
  assert patterns.carry_into_top_share(rows, TASK) == pytest.approx(3 / 5)
  strict = TASK.replace(allow_leading_zeros=False)  # row 4 becomes malformed
  assert patterns.carry_into_top_share(rows, strict) == pytest.approx(2 / 4)
  assert patterns.carry_into_top_share(rows[5:], TASK) == 0.0


def test_tops_45_share_on_hand_made_rows():
  rows = addition.encode_batch([
      "50059266+50753069=",  # (8, 8), tops 5 and 5: in
      "49999999+41234567=",  # tops 4 and 4: in
      "41234567+51234567=",  # tops 4 and 5: in
      "61234567+51234567=",  # top 6: out
      "5123456+51234567=",   # (7, 8): out
      "05123456+41234567=",  # 8 digits written but the top digit is 0: out
      "1+"], TASK.max_len)   # malformed
  assert patterns.tops_45_share(rows, TASK) == pytest.approx(3 / 6)
  strict = TASK.replace(allow_leading_zeros=False)  # row 5 becomes malformed
  assert patterns.tops_45_share(rows, strict) == pytest.approx(3 / 5)
  assert patterns.tops_45_share(rows[6:], TASK) == 0.0
  x = patterns.rule_based_queries(np.random.default_rng(0), 50, "tops_5_5", TASK)
  assert patterns.tops_45_share(x, TASK) == 1.0


def _propagation_by_hand(a: int, b: int) -> int:
  """Reference: walk the digit strings from the right, column by column."""
  sa, sb = str(a)[::-1], str(b)[::-1]
  carry, run, best = 0, 0, 0
  for i in range(max(len(sa), len(sb))):
    da = int(sa[i]) if i < len(sa) else 0
    db = int(sb[i]) if i < len(sb) else 0
    run = run + 1 if carry and da + db == 9 else 0
    best = max(best, run)
    carry = 1 if da + db + carry >= 10 else 0
  return best


def test_carry_propagation_length_against_the_column_walk():
  rng = np.random.default_rng(0)
  # random operands, and operands rich in nines and 9-sum pairs
  a = np.concatenate([rng.integers(0, 10 ** 8, 300),
                      99999999 - rng.integers(0, 10 ** 4, 300)])
  b = np.concatenate([rng.integers(0, 10 ** 8, 300), rng.integers(0, 10 ** 4, 300)])
  got = patterns.carry_propagation_length(a, b)
  assert got.tolist() == [_propagation_by_hand(int(x), int(y)) for x, y in zip(a, b)]
  assert got.max() >= 4  # the nines-rich half exercises long runs
  assert patterns.carry_propagation_length(np.array([12]), np.array([34])).tolist() == [0]
  with pytest.raises(ValueError, match="non-negative"):
    patterns.carry_propagation_length(np.array([-1]), np.array([3]))


def test_weak_slice_masks_classify_hand_made_rows():
  strict = TASK.replace(allow_leading_zeros=False)
  rows = [
      "50059266+50753069=",  # tops 4/5 (0059266 + 0753069: no carry into the top)
      "45000000+41234567=",  # tops 4/5, no carry into the top
      "79999979+7890=",      # carry propagates through 3 nines
      "34070000+68864203=",  # carry into the top
      "56447489+7580326=",   # top sum 13
      "12+34=",              # none
      "07+1=",               # malformed here (leading zero)
  ]
  masks = patterns.weak_slice_masks(addition.encode_batch(rows, TASK.max_len), strict)
  assert {k: np.flatnonzero(v).tolist() for k, v in masks.items()} == {
      "tops_45": [0, 1], "propagation_3": [2], "carry_into_top": [3],
      "top_sum_13": [4]}
