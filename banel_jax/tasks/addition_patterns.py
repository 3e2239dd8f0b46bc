"""What an attacker learned: query statistics and rule-based attacks (host, numpy).

The paper reports two patterns in the attacks BaNEL found against the addition
target: operands with **leading zeros** (``04967+660843=``) and long **carry
chains** (``99999999+9=``). This module measures both on any batch of attacker
rows, so a trained attacker can be compared with the pretrained one, and builds
rule-based attacks from those patterns.

>>> import numpy as np
>>> carry_chain_length(np.array([99999999, 123, 5]), np.array([9, 456, 5]))
array([8, 0, 1])
"""

from __future__ import annotations

import numpy as np

from banel_jax.tasks import addition


def carry_chain_length(a, b) -> np.ndarray:
  """Longest run of consecutive digit positions that produce a carry in ``a + b``.

  Args:
    a, b: non-negative ``int64[n]`` operands.

  Returns:
    ``int64[n]``; 0 when the sum has no carry.
  """
  return _longest_run(a, b, lambda digits, carry_in: digits + carry_in >= 10)


def carry_propagation_length(a, b) -> np.ndarray:
  """Longest run of consecutive digit positions a carry passes through by
  propagation alone: their digits sum to exactly 9 (a missing digit counts as
  0) and a carry enters them from below.

  These are the positions a carry crosses without the local digits saying so:
  in ``79999979+7890=`` the carry made at the tens and hundreds crosses the
  three nines above the shorter operand (length 3); in ``34070000+68864203=``
  the carry made by ``4+8`` crosses the top pair ``3+6`` (length 1). Long
  runs are rare in random queries (about ``10^-k`` for ``k``) and are where a target that cannot look ahead errs (the
  paper's carry chains, ``99999999+9=``: 7).

  Args:
    a, b: non-negative ``int64[n]`` operands.

  Returns:
    ``int64[n]``; 0 when no carry propagates.

  >>> carry_propagation_length(np.array([79999979, 99999999, 45, 55]),
  ...                          np.array([7890, 9, 54, 45]))
  array([3, 7, 0, 1])
  """
  return _longest_run(a, b, lambda digits, carry_in: (carry_in > 0) & (digits == 9))


def _longest_run(a, b, in_run) -> np.ndarray:
  """Longest run of consecutive digit positions of ``a + b`` where
  ``in_run(digits, carry_in)`` holds (``digits``: the two digits' sum, a missing
  digit counting as 0; ``carry_in``: 0 or 1), walking from the units up."""
  a = np.asarray(a, np.int64).copy()
  b = np.asarray(b, np.int64).copy()
  if np.any(a < 0) or np.any(b < 0):
    raise ValueError("operands must be non-negative")
  carry = np.zeros_like(a)
  run = np.zeros_like(a)
  best = np.zeros_like(a)
  while np.any((a > 0) | (b > 0) | (carry > 0)):
    digits = a % 10 + b % 10
    run = np.where(in_run(digits, carry), run + 1, 0)
    best = np.maximum(best, run)
    carry = (digits + carry >= 10).astype(np.int64)
    a //= 10
    b //= 10
  return best


def operand_lengths(x) -> tuple[np.ndarray, np.ndarray]:
  """Digits written in each operand of attacker rows (leading zeros included).

  Returns ``(len_a, len_b)``, ``int64[n]`` each, meaningful where the row parses.
  """
  x = np.asarray(x)
  parsed = addition.parse_queries(x, max_operand_len=addition._MAX_SUPPORTED_OPERAND_LEN)  # pylint: disable=protected-access
  content = np.arange(x.shape[1])[None, :] < parsed.length[:, None]
  plus_pos = np.argmax((x == addition.PLUS_ID) & content, axis=1)
  len_a = plus_pos.astype(np.int64)
  len_b = (parsed.length - 1 - plus_pos - 1).astype(np.int64)
  return len_a, len_b


def carries_past_shorter(a, b, len_a, len_b) -> np.ndarray:
  """``bool[n]``: the operands differ in length and ``a + b`` carries out of the
  shorter one's top digit (``56447489+7580326=``: ``6+7`` carries into the ``5``).

  Lengths are the digits written (leading zeros included).

  >>> carries_past_shorter(np.array([56447489, 123]), np.array([7580326, 45]),
  ...                      np.array([8, 3]), np.array([7, 2]))
  array([ True, False])
  """
  a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
  len_a, len_b = np.asarray(len_a, np.int64), np.asarray(len_b, np.int64)
  short = np.minimum(len_a, len_b)
  low = 10 ** short
  return (len_a != len_b) & (a % low + b % low >= low)


def _pair_shares(len_a, len_b) -> dict[str, float]:
  n = len(len_a)
  if n == 0:
    return {}
  keys, counts = np.unique(np.stack([len_a, len_b], 1), axis=0, return_counts=True)
  return {f"{int(k[0])},{int(k[1])}": float(c / n) for k, c in zip(keys, counts)}


def _histogram(values, max_value: int) -> list[float]:
  values = np.asarray(values, np.int64)
  if values.size == 0:
    return [0.0] * (max_value + 1)
  counts = np.bincount(np.clip(values, 0, max_value), minlength=max_value + 1)
  return (counts / values.size).tolist()


def pattern_summary(x, task: addition.AdditionTaskConfig, rewards=None) -> dict:
  """Statistics of a batch of attacker rows.

  Args:
    x: ``int[n, max_len]`` attacker rows.
    task: the task (operand bound, leading-zeros switch).
    rewards: optional ``[n]`` rewards of the rows (adds the success share of each
      pattern).

  Returns:
    A JSON-able dict: ``n``, ``distinct`` rows, ``malformed_fraction``, among
    well-formed rows the ``leading_zero_share`` and the distributions (fractions,
    index = value) of ``carry_chain_length`` and of the longer ``operand_length``,
    and ``mean_carry_chain``; ``length_pair_share`` maps ``"la,lb"`` (digits
    written in each operand) to its share of the well-formed rows (the target's
    errors sit at a few length pairs); ``carry_past_shorter_share``: share of the
    rows whose operands differ in length and whose sum carries out of the
    shorter operand's top digit.
  """
  x = np.asarray(x)
  n = x.shape[0]
  parsed = addition.parse_queries(x, task.max_operand_len, allow_leading_zeros=True)
  ok = parsed.syntax_ok
  wf = parsed.well_formed if task.allow_leading_zeros else ok & ~parsed.leading_zero
  chain = carry_chain_length(parsed.a[ok], parsed.b[ok])
  len_a, len_b = operand_lengths(x[ok])
  out = {
      "n": int(n),
      "distinct": int(len({r.tobytes() for r in x})),
      "malformed_fraction": float(1.0 - wf.mean()) if n else 0.0,
      "leading_zero_share": float(parsed.leading_zero[ok].mean()) if ok.any() else 0.0,
      "mean_carry_chain": float(chain.mean()) if chain.size else 0.0,
      "carry_chain_length": _histogram(chain, task.max_operand_len + 1),
      "operand_length_max": _histogram(np.maximum(len_a, len_b), task.max_operand_len),
      "length_pair_share": _pair_shares(len_a, len_b),
      "carry_past_shorter_share": (float(carries_past_shorter(
          parsed.a[ok], parsed.b[ok], len_a, len_b).mean()) if ok.any() else 0.0),
  }
  if rewards is not None:
    r = np.asarray(rewards)[ok] > 0.5
    lz = parsed.leading_zero[ok]
    long_chain = chain >= 4
    out["success_rate_with_leading_zero"] = float(r[lz].mean()) if lz.any() else None
    out["success_rate_without_leading_zero"] = (float(r[~lz].mean()) if (~lz).any()
                                                else None)
    out["success_rate_carry_chain_ge4"] = (float(r[long_chain].mean())
                                           if long_chain.any() else None)
  return out


def _well_formed_rows(x, task: addition.AdditionTaskConfig):
  """``(parsed, len_a, len_b)`` of the well-formed rows of ``x`` under the
  task's switch (lengths as written), or None when there are none."""
  x = np.asarray(x)
  wf = addition.is_well_formed(x, task.max_operand_len, task.allow_leading_zeros)
  if not wf.any():
    return None
  parsed = addition.parse_queries(x[wf], task.max_operand_len, allow_leading_zeros=True)
  return (parsed,) + operand_lengths(x[wf])


def both_long_share(x, task: addition.AdditionTaskConfig) -> float:
  """Share of the well-formed rows whose operands both have at least
  ``task.max_operand_len - 1`` digits (where the target's errors are; see
  ``research/target_error_map.py``). 0 when no row is well-formed."""
  rows = _well_formed_rows(x, task)
  if rows is None:
    return 0.0
  _, len_a, len_b = rows
  return float(np.mean(np.minimum(len_a, len_b) >= task.max_operand_len - 1))


def top_digit_sum(long_, short, m: int) -> np.ndarray:
  """Sum of the two digits that meet at the top position of an ``m - 1``-digit
  operand ``short`` added to an ``m``-digit operand ``long_`` (``int64[n]``).

  >>> top_digit_sum(np.array([56447489]), np.array([7580326]), 8)
  array([13])
  """
  return (np.asarray(long_) // 10 ** (m - 2)) % 10 + np.asarray(short) // 10 ** (m - 2)


def top_sum_13_share(x, task: addition.AdditionTaskConfig) -> float:
  """Share of the well-formed rows in the slice where the aligned target errs.

  The slice: one operand of ``max_operand_len`` digits, the other of one digit
  fewer (either order; digits written, leading zeros included), and the two
  digits that meet at the shorter operand's top position sum to exactly 13
  (``56447489+7580326=``: ``6 + 7``). ``research/target_error_map.py`` measured
  a 3.7% error rate there, 143x the pretrained attacker's success rate. The
  target's other weak spot, (8, 8) queries with a carry into the top digits
  (0.84%; 3.4% when those digits sum to 8), is not counted here. 0 when no
  row is well-formed.

  >>> task = addition.AdditionTaskConfig()
  >>> top_sum_13_share(addition.encode_batch(
  ...     ["56447489+7580326=", "7580326+56447489=", "12345678+1234567="],
  ...     task.max_len), task)
  0.6666666666666666
  """
  return _slice_share(x, task, "top_sum_13")


def carries_into_top(a, b, m: int) -> np.ndarray:
  """``bool[n]``: the digits below the top one of two ``m``-digit operands
  carry into it (``17443055+86724674=``: ``7443055 + 6724674 >= 10^7``).

  >>> carries_into_top(np.array([17443055, 17443055]), np.array([86724674, 81224674]), 8)
  array([ True, False])
  """
  low = 10 ** (m - 1)
  return np.asarray(a, np.int64) % low + np.asarray(b, np.int64) % low >= low


def carry_into_top_share(x, task: addition.AdditionTaskConfig) -> float:
  """Share of the well-formed rows in the target's broad weak slice.

  The slice: both operands ``max_operand_len`` digits long (digits written,
  leading zeros included) and the lower digits carry into the two top digits
  (``17443055+86724674=``: ``7443055 + 6724674 >= 10^7``).
  ``research/target_error_map.py`` measured 0.84% errors there (33x the
  pretrained attacker's rate; 3.4% when the top digits sum to 8) against 0.01%
  for the same lengths without the carry. 0 when no row is well-formed.

  >>> task = addition.AdditionTaskConfig()
  >>> carry_into_top_share(addition.encode_batch(
  ...     ["17443055+86724674=", "17443055+81224674=", "1744305+86724674="],
  ...     task.max_len), task)
  0.3333333333333333
  """
  return _slice_share(x, task, "carry_into_top")


def tops_45_share(x, task: addition.AdditionTaskConfig) -> float:
  """Share of the well-formed rows in the MSB target's weak top-digit slice.

  The slice: both operands ``max_operand_len`` digits long (digits written,
  leading zeros included), each starting with a 4 or a 5 (``50059266+50753069=``).
  ``research/target_error_map.py`` measured 5-17% errors on the shipped
  ``target_msb`` for these four top-digit pairs (4+4 17%, 5+5 14%), against 0.7%
  for (8, 8) queries overall: the mode one seed of the 10-epoch attack settled
  in. 0 when no row is well-formed.

  >>> task = addition.AdditionTaskConfig()
  >>> tops_45_share(addition.encode_batch(
  ...     ["50059266+50753069=", "45000000+41234567=", "60059266+50753069=",
  ...      "5005926+50753069="], task.max_len), task)
  0.5
  """
  return _slice_share(x, task, "tops_45")


def propagation_share(x, task: addition.AdditionTaskConfig, k: int = 3) -> float:
  """Share of the well-formed rows whose sum carries through at least ``k``
  positions by propagation alone (:func:`carry_propagation_length`): the
  carry-chain mode of the paper, which one seed of the MSB attack settled in
  (``79999979+7890=``, 44% success). 0 when no row is well-formed.

  >>> task = addition.AdditionTaskConfig()
  >>> propagation_share(addition.encode_batch(
  ...     ["79999979+7890=", "99999999+9=", "12345678+1234567="], task.max_len), task)
  0.6666666666666666
  """
  rows = _well_formed_rows(x, task)
  if rows is None:
    return 0.0
  parsed = rows[0]
  return float(np.mean(carry_propagation_length(parsed.a, parsed.b) >= k))


WEAK_SLICES = ("tops_45", "propagation_3", "carry_into_top", "top_sum_13")


def _slices_of_rows(parsed, len_a, len_b, m: int) -> dict[str, np.ndarray]:
  """The :data:`WEAK_SLICES` masks of parsed well-formed rows (see the
  ``*_share`` functions for each slice)."""
  a, b = parsed.a, parsed.b
  low = 10 ** (m - 1)
  both = (len_a == m) & (len_b == m)
  a_long = (len_a == m) & (len_b == m - 1)
  b_long = (len_b == m) & (len_a == m - 1)
  if m >= 2:
    long_, short = np.where(a_long, a, b), np.where(a_long, b, a)
    top_13 = (a_long | b_long) & (top_digit_sum(long_, short, m) == 13)
  else:
    top_13 = np.zeros(len(a), bool)
  return {"tops_45": both & np.isin(a // low, (4, 5)) & np.isin(b // low, (4, 5)),
          "propagation_3": carry_propagation_length(a, b) >= 3,
          "carry_into_top": both & carries_into_top(a, b, m),
          "top_sum_13": top_13}


def weak_slice_masks(x, task: addition.AdditionTaskConfig) -> dict[str, np.ndarray]:
  """``bool[n]`` per slice of :data:`WEAK_SLICES` for the rows of ``x``
  (``False`` on malformed rows).

  >>> task = addition.AdditionTaskConfig()
  >>> masks = weak_slice_masks(addition.encode_batch(
  ...     ["50059266+50753069=", "79999979+7890=", "1+"], task.max_len), task)
  >>> masks["tops_45"].tolist(), masks["propagation_3"].tolist()
  ([True, False, False], [False, True, False])
  """
  x = np.asarray(x)
  out = {name: np.zeros(len(x), bool) for name in WEAK_SLICES}
  wf = addition.is_well_formed(x, task.max_operand_len, task.allow_leading_zeros)
  rows = _well_formed_rows(x, task)
  if rows is not None:
    for name, mask in _slices_of_rows(*rows, task.max_operand_len).items():
      out[name][wf] = mask
  return out


def _slice_share(x, task: addition.AdditionTaskConfig, name: str) -> float:
  """Share of the well-formed rows of ``x`` in weak slice ``name``; 0 when no
  row is well-formed."""
  rows = _well_formed_rows(x, task)
  if rows is None:
    return 0.0
  return float(np.mean(_slices_of_rows(*rows, task.max_operand_len)[name]))


RULES = ("carry", "leading_zeros", "carry_leading_zeros", "carry_past_shorter",
         "carry_past_shorter_13", "carry_into_top", "carry_into_top_8", "tops_5_5")


def _random_digits(rng: np.random.Generator, k: int) -> str:
  """``k`` uniform random digits as text (zeros allowed anywhere)."""
  return "".join(str(int(d)) for d in rng.integers(0, 10, k))


def _carry_past_shorter(rng: np.random.Generator, m: int, exactly_13: bool):
  """``(a, b)`` texts: ``m`` and ``m - 1`` digits, a carry into the top digit."""
  if m < 2:
    raise ValueError(f"the carry-past-shorter rules need max_operand_len >= 2, got {m}")
  while True:
    long_ = str(int(rng.integers(1, 10))) + _random_digits(rng, m - 1)
    short = str(int(rng.integers(1, 10))) + _random_digits(rng, m - 2)
    top = int(long_[1]) + int(short[0])
    if exactly_13 and top != 13:
      continue
    low = 10 ** (m - 1)
    if int(long_) % low + int(short) >= low:  # carries into the top digit
      return (long_, short) if rng.random() < 0.5 else (short, long_)


def _carry_into_top(rng: np.random.Generator, m: int, top_sum: int | None):
  """``(a, b)`` texts: both ``m`` digits, the lower digits carrying into the top."""
  if m < 2:
    raise ValueError(f"the carry-into-top rules need max_operand_len >= 2, got {m}")
  low = 10 ** (m - 1)
  while True:
    a, b = (int(rng.integers(low, 10 * low)) for _ in range(2))
    if carries_into_top(a, b, m) and (top_sum is None or a // low + b // low == top_sum):
      return str(a), str(b)


def rule_based_queries(rng: np.random.Generator, n: int, rule: str,
                       task: addition.AdditionTaskConfig) -> np.ndarray:
  """Attacker rows built by a hand-written rule.

  Rules:
    * ``"carry"``: ``a`` is a run of 9s (4 to ``max_operand_len`` digits), ``b`` a
      random number of 1 to 3 digits whose last digit is nonzero, so the carry
      ripples through every 9 (``99999999+9=``). Order of the operands random.
    * ``"leading_zeros"``: random operands (no leading zeros) with 1 to 4 leading
      zeros added to one of them, within the length bound.
    * ``"carry_leading_zeros"``: the carry rule with leading zeros on ``b``.
    * ``"carry_past_shorter"``: operands of ``max_operand_len`` and
      ``max_operand_len - 1`` digits (no leading zeros, order random) whose sum
      carries out of the shorter operand's top digit into the longer one's
      first digit (``56447489+7580326=``).
    * ``"carry_past_shorter_13"``: as ``"carry_past_shorter"``, with the two
      digits that meet at the shorter operand's top position summing to
      exactly 13 (``6+7``, ``4+9``, ...), the pattern of 6 of the 8 successes
      BaNEL found while training against the aligned target.
    * ``"carry_into_top"``: both operands ``max_operand_len`` digits (no
      leading zeros) and the lower digits carry into the two top digits
      (``17443055+86724674=``), the slice behind most successes of the
      100-epoch runs.
    * ``"carry_into_top_8"``: as ``"carry_into_top"``, with the two top
      digits summing to exactly 8.
    * ``"tops_5_5"``: both operands ``max_operand_len`` digits, each starting
      with a 5, the rest random (``50559666+50511060=``): the mode seed 4 of
      the 10-epoch attack on the MSB target settled in.

  Returns:
    ``int32[n, max_len]`` rows (well-formed for leading zeros allowed).
  """
  m = task.max_operand_len
  texts = []
  for _ in range(n):
    if rule in ("carry", "carry_leading_zeros"):
      a = "9" * int(rng.integers(4, m + 1))
      nb = int(rng.integers(1, 4))
      b = str(int(rng.integers(10 ** (nb - 1), 10 ** nb)))
      if b[-1] == "0":
        b = b[:-1] + str(int(rng.integers(1, 10)))
      if rule == "carry_leading_zeros":  # len(b) <= 3 < m: room for zeros
        b = "0" * int(rng.integers(1, m - len(b) + 1)) + b
      pair = (a, b) if rng.random() < 0.5 else (b, a)
    elif rule == "leading_zeros":
      def operand(max_digits):
        k = int(rng.integers(1, max_digits + 1))
        first = str(int(rng.integers(1, 10))) if k > 1 else str(int(rng.integers(0, 10)))
        return first + _random_digits(rng, k - 1)
      padded = operand(m - 1)  # leaves room for at least one zero
      padded = "0" * int(rng.integers(1, min(4, m - len(padded)) + 1)) + padded
      other = operand(m)
      pair = (padded, other) if rng.random() < 0.5 else (other, padded)
    elif rule in ("carry_past_shorter", "carry_past_shorter_13"):
      pair = _carry_past_shorter(rng, m, exactly_13=rule.endswith("13"))
    elif rule in ("carry_into_top", "carry_into_top_8"):
      pair = _carry_into_top(rng, m, 8 if rule.endswith("8") else None)
    elif rule == "tops_5_5":
      pair = tuple("5" + _random_digits(rng, m - 1) for _ in range(2))
    else:
      raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    texts.append(f"{pair[0]}+{pair[1]}=")
  return addition.encode_batch(texts, max_len=task.max_len)
