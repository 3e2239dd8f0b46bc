"""The suite's success sets, grammars and pretraining-data generators.

Everything here is deterministic and vectorised over a batch of samples. A
grammar (:class:`Grammar`) is written once over an array module ``xp``: the
same code runs on host NumPy (the oracles, ``malformed``, the data
generators) and under ``jax.jit`` (the free ``support`` checks that
``banel_support`` is given). A grammar reads a row left to right through a
small state; :func:`grammar_valid` checks rows against it and
:func:`generate` draws random rows from it (each step samples among the
tokens the grammar allows, with task-chosen weights), which is how the
pretraining data of the grammar tasks are made.

Token sets:

* brackets: ``( ) [ ] END`` (:data:`BRACKET_TOKENS`);
* addition: ``0-9 + = PAD`` (:data:`ADDITION_TOKENS`);
* SMILES-like: ``C N O = ( ) 1 2 END`` (:data:`SMILES_TOKENS`);
* stack programs: ``PUSH1 PUSH2 PUSH3 ADD SUB MUL DUP SWAP END``
  (:data:`STACK_TOKENS`).

Example:
  >>> import numpy as np
  >>> x = encode("([])", BRACKET_TOKENS, 6)
  >>> x.tolist(), grammar_valid(BRACKETS, x).tolist()
  ([[0, 2, 3, 1, 4, 4]], [True])
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

# ---------------------------------------------------------------------------
# Grammars over an array module
# ---------------------------------------------------------------------------


class Grammar(NamedTuple):
  """A left-to-right grammar over ``vocab_size`` tokens, written over ``xp``.

  Attributes:
    vocab_size: token ids ``0..V-1``.
    start: ``start(n, xp) -> state`` (a dict of ``[n]`` arrays).
    allowed: ``allowed(state, t, xp) -> bool[n, V]``: the tokens allowed at
      position ``t`` after the prefix that led to ``state``.
    step: ``step(state, tok, t, xp) -> state`` after token ``tok[n]``.
    finish: ``finish(state, length, xp) -> bool[n]``: whether a row may end
      here (after ``length`` tokens).
  """

  vocab_size: int
  start: Callable
  allowed: Callable
  step: Callable
  finish: Callable


def _take(table, idx, xp):
  """``table[i, idx[i]]`` for every row ``i``."""
  return xp.take_along_axis(table, idx[:, None], axis=1)[:, 0]


def grammar_scan(grammar: Grammar, x, xp=np) -> tuple[Any, dict]:
  """``(valid[n], final_state)`` of rows ``x[n, L]`` under ``grammar``.

  A token outside ``[0, V)`` makes its row invalid (and is read as token 0).
  """
  x = xp.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"rows must be int[n, L], got shape {x.shape}")
  n, length = x.shape
  v = grammar.vocab_size
  ok = xp.ones((n,), bool)
  state = grammar.start(n, xp)
  for t in range(length):
    tok = x[:, t].astype(xp.int32)
    in_range = (tok >= 0) & (tok < v)
    safe = xp.where(in_range, tok, 0)
    ok = ok & in_range & _take(grammar.allowed(state, t, xp), safe, xp)
    state = grammar.step(state, safe, t, xp)
  return ok & grammar.finish(state, length, xp), state


def grammar_valid(grammar: Grammar, x, xp=np):
  """``bool[n]``: rows of ``x`` that ``grammar`` accepts (in ``xp``)."""
  return grammar_scan(grammar, x, xp)[0]


def generate(grammar: Grammar, weights: Callable, n: int, length: int,
             rng: np.random.Generator) -> np.ndarray:
  """``n`` random rows of ``length`` tokens, each step drawn among the allowed
  tokens with probability proportional to ``weights(state, t) -> f64[n, V]``
  (host NumPy). Rows may still be invalid (a row that runs out of room);
  filter them with :func:`grammar_valid`."""
  v = grammar.vocab_size
  x = np.zeros((n, length), np.int32)
  state = grammar.start(n, np)
  for t in range(length):
    w = grammar.allowed(state, t, np) * np.broadcast_to(weights(state, t), (n, v))
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / v)
    u = rng.random((n, 1))
    tok = np.minimum((np.cumsum(w, axis=1) < u).sum(axis=1), v - 1).astype(np.int32)
    x[:, t] = tok
    state = grammar.step(state, tok, t, np)
  return x


def encode(texts: str | Sequence[str], tokens: Sequence[str], length: int,
           pad: str | None = None) -> np.ndarray:
  """Rows of token ids from strings (one token per character where every
  token is one character, else the space-separated names), padded with
  ``pad`` (default: the last token) to ``length``.

  >>> encode(["1+2="], ADDITION_TOKENS, 6).tolist()
  [[1, 10, 2, 11, 12, 12]]
  """
  if isinstance(texts, str):
    texts = [texts]
  index = {name: i for i, name in enumerate(tokens)}
  single = all(len(name) == 1 for name in tokens)
  pad_id = index[pad] if pad is not None else len(tokens) - 1
  rows = []
  for text in texts:
    parts = list(text) if single else text.split()
    if len(parts) > length:
      raise ValueError(f"{text!r} is longer than {length} tokens")
    try:
      ids = [index[p] for p in parts]
    except KeyError as e:
      raise ValueError(f"{text!r}: unknown token {e.args[0]!r}; the tokens are "
                       f"{list(tokens)}") from None
    rows.append(ids + [pad_id] * (length - len(ids)))
  return np.asarray(rows, np.int32)


def decode(x, tokens: Sequence[str], stop: str | None = None) -> list[str]:
  """Rows of token ids as strings (characters joined, names with spaces),
  cut at the first ``stop`` token (default: the last token)."""
  stop_id = tokens.index(stop) if stop is not None else len(tokens) - 1
  sep = "" if all(len(t) == 1 for t in tokens) else " "
  out = []
  for row in np.asarray(x):
    names = []
    for tok in row:
      if int(tok) == stop_id:
        break
      names.append(tokens[int(tok)] if 0 <= int(tok) < len(tokens) else "?")
    out.append(sep.join(names))
  return out


# ---------------------------------------------------------------------------
# Brackets
# ---------------------------------------------------------------------------

BRACKET_TOKENS = ("(", ")", "[", "]", "$")  # "$": END (and padding)
BRACKET_END = 4
BRACKET_DEPTH = 4  # success: a well-formed string nested at least this deep


def _brackets_start(n, xp):
  return {"ended": xp.zeros((n,), bool), "depth": xp.zeros((n,), xp.int32),
          # the bracket types open at each depth, as bits: bit d is 1 iff the
          # bracket open at depth d + 1 is square
          "types": xp.zeros((n,), xp.int32), "max_depth": xp.zeros((n,), xp.int32)}


def _brackets_top_square(state, xp):
  d = xp.maximum(state["depth"] - 1, 0)
  return ((state["types"] >> d) & 1) == 1


def _brackets_allowed(state, t, xp):
  live, depth = ~state["ended"], state["depth"]
  square = _brackets_top_square(state, xp)
  opened = live & (depth < 30)
  close_round = live & (depth > 0) & ~square
  close_square = live & (depth > 0) & square
  end = state["ended"] | ((depth == 0) & (t > 0))
  return xp.stack([opened, close_round, opened, close_square, end], axis=1)


def _brackets_step(state, tok, t, xp):
  depth = state["depth"]
  live = ~state["ended"]
  opens = live & ((tok == 0) | (tok == 2))
  closes = live & ((tok == 1) | (tok == 3))
  bit = xp.left_shift(xp.ones_like(depth), depth)
  types = xp.where(opens & (tok == 2), state["types"] | bit,
                   xp.where(opens, state["types"] & ~bit, state["types"]))
  depth = depth + opens.astype(xp.int32) - closes.astype(xp.int32)
  return {"ended": state["ended"] | (tok == BRACKET_END), "depth": depth,
          "types": types, "max_depth": xp.maximum(state["max_depth"], depth)}


def _brackets_finish(state, length, xp):
  return state["depth"] == 0


BRACKETS = Grammar(len(BRACKET_TOKENS), _brackets_start, _brackets_allowed,
                   _brackets_step, _brackets_finish)


def brackets_success(x) -> np.ndarray:
  """``float32[n]``: 1 iff the row is a well-formed string of matched ``()``
  and ``[]`` (then only END) nested at least :data:`BRACKET_DEPTH` deep."""
  valid, state = grammar_scan(BRACKETS, x)
  return (valid & (state["max_depth"] >= BRACKET_DEPTH)).astype(np.float32)


# ---------------------------------------------------------------------------
# Addition queries
# ---------------------------------------------------------------------------

ADDITION_TOKENS = tuple("0123456789") + ("+", "=", "_")  # "_": PAD
PLUS, EQUALS, PAD = 10, 11, 12
MAX_DIGITS = 3
# The target's hidden bug: in the tens column, when the units column carries
# and both written tens digits are BUG_DIGIT, the carry is dropped.
BUG_DIGIT = 7


def _addition_start(n, xp):
  return {"phase": xp.zeros((n,), xp.int32), "count": xp.zeros((n,), xp.int32)}


def _addition_allowed(state, t, xp):
  phase, count = state["phase"], state["count"]
  digit = (phase < 2) & (count < MAX_DIGITS)
  plus = (phase == 0) & (count >= 1)
  equals = (phase == 1) & (count >= 1)
  pad = phase == 2
  return xp.concatenate([xp.repeat(digit[:, None], 10, axis=1),
                         xp.stack([plus, equals, pad], axis=1)], axis=1)


def _addition_step(state, tok, t, xp):
  is_digit = tok < 10
  sep = (tok == PLUS) | (tok == EQUALS)
  phase = state["phase"] + sep.astype(xp.int32)
  count = xp.where(sep, 0, state["count"] + is_digit.astype(xp.int32))
  return {"phase": xp.minimum(phase, 2), "count": count}


def _addition_finish(state, length, xp):
  return state["phase"] == 2


ADDITION = Grammar(len(ADDITION_TOKENS), _addition_start, _addition_allowed,
                   _addition_step, _addition_finish)


def parse_addition(x) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                               np.ndarray]:
  """``(well_formed, a, b, len_a, len_b)`` of query rows ``x[n, L]`` (host);
  operands are 0 where a row is malformed. Leading zeros are allowed (``07``
  has two written digits)."""
  x = np.asarray(x)
  valid = grammar_valid(ADDITION, x)
  n, length = x.shape
  a = np.zeros(n, np.int64)
  b = np.zeros(n, np.int64)
  len_a = np.zeros(n, np.int64)
  len_b = np.zeros(n, np.int64)
  phase = np.zeros(n, np.int64)
  for t in range(length):
    tok = x[:, t].astype(np.int64)
    d = (tok >= 0) & (tok < 10)
    in_a, in_b = d & (phase == 0), d & (phase == 1)
    a = np.where(in_a, 10 * a + tok, a)
    b = np.where(in_b, 10 * b + tok, b)
    len_a += in_a
    len_b += in_b
    phase += (tok == PLUS) | (tok == EQUALS)
  z = np.zeros_like(a)
  return (valid, np.where(valid, a, z), np.where(valid, b, z),
          np.where(valid, len_a, z), np.where(valid, len_b, z))


def buggy_sum(a, b, len_a, len_b) -> np.ndarray:
  """The target's answer: schoolbook addition column by column, except that
  the carry out of the units column is dropped when both operands have a
  written tens digit equal to :data:`BUG_DIGIT`.

  >>> buggy_sum(np.array([78, 68, 78]), np.array([79, 79, 71]),
  ...           np.array([2, 2, 2]), np.array([2, 2, 2])).tolist()
  [147, 147, 149]
  """
  a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
  out = np.zeros_like(a)
  carry = np.zeros_like(a)
  for col in range(MAX_DIGITS + 1):
    da, db = (a // 10**col) % 10, (b // 10**col) % 10
    if col == 1:
      bug = ((np.asarray(len_a) >= 2) & (np.asarray(len_b) >= 2)
             & (da == BUG_DIGIT) & (db == BUG_DIGIT))
      carry = np.where(bug, 0, carry)
    s = da + db + carry
    out += (s % 10) * 10**col
    carry = s // 10
  return out


def addition_success(x) -> np.ndarray:
  """``float32[n]``: 1 iff the row is a well-formed query ``a+b=`` (then PAD)
  and the target's answer differs from ``a + b``."""
  valid, a, b, la, lb = parse_addition(x)
  return (valid & (buggy_sum(a, b, la, lb) != a + b)).astype(np.float32)


# ---------------------------------------------------------------------------
# SMILES-like molecules
# ---------------------------------------------------------------------------

SMILES_TOKENS = ("C", "N", "O", "=", "(", ")", "1", "2", "$")  # "$": END
S_ATOMS = (0, 1, 2)
S_BOND, S_OPEN, S_CLOSE, S_RING1, S_RING2, S_END = 3, 4, 5, 6, 7, 8
# previous-token classes
_P_START, _P_ATOM, _P_BOND, _P_OPEN, _P_CLOSE, _P_RING = range(6)
MIN_RING_ATOMS = 3


def _smiles_start(n, xp):
  z = xp.zeros((n,), xp.int32)
  return {"ended": xp.zeros((n,), bool), "prev": z, "depth": z,
          "open1": xp.zeros((n,), bool), "open2": xp.zeros((n,), bool),
          "at1": z, "at2": z, "atoms": z, "n_nitrogen": z, "n_oxygen": z,
          "rings": z, "carbonyl": z}


def _smiles_allowed(state, t, xp):
  live, prev = ~state["ended"], state["prev"]
  after_atom = (prev == _P_ATOM) | (prev == _P_RING)
  closable = after_atom | (prev == _P_CLOSE)
  atom = live
  bond = live & (closable | (prev == _P_OPEN))
  opened = live & closable
  closed = live & closable & (state["depth"] > 0)
  here = state["atoms"] - 1  # index of the current atom

  def ring(is_open, at):
    long_enough = here - at >= MIN_RING_ATOMS - 1
    return live & after_atom & (~is_open | long_enough)

  end = state["ended"] | (closable & (state["depth"] == 0) & ~state["open1"]
                          & ~state["open2"])
  cols = [atom, atom, atom, bond, opened, closed,
          ring(state["open1"], state["at1"]), ring(state["open2"], state["at2"]), end]
  return xp.stack(cols, axis=1)


def _smiles_step(state, tok, t, xp):
  live = ~state["ended"]
  is_atom = live & (tok <= 2)
  prev = xp.where(is_atom, _P_ATOM, state["prev"])
  prev = xp.where(live & (tok == S_BOND), _P_BOND, prev)
  prev = xp.where(live & (tok == S_OPEN), _P_OPEN, prev)
  prev = xp.where(live & (tok == S_CLOSE), _P_CLOSE, prev)
  prev = xp.where(live & ((tok == S_RING1) | (tok == S_RING2)), _P_RING, prev)
  depth = (state["depth"] + (live & (tok == S_OPEN)).astype(xp.int32)
           - (live & (tok == S_CLOSE)).astype(xp.int32))
  here = state["atoms"] - 1
  r1, r2 = live & (tok == S_RING1), live & (tok == S_RING2)
  closes = (r1 & state["open1"]) | (r2 & state["open2"])
  carbonyl = live & (tok == 2) & (state["prev"] == _P_BOND)
  return {
      "ended": state["ended"] | (tok == S_END), "prev": prev, "depth": depth,
      "open1": state["open1"] ^ r1, "open2": state["open2"] ^ r2,
      "at1": xp.where(r1 & ~state["open1"], here, state["at1"]),
      "at2": xp.where(r2 & ~state["open2"], here, state["at2"]),
      "atoms": state["atoms"] + is_atom.astype(xp.int32),
      "n_nitrogen": state["n_nitrogen"] + (is_atom & (tok == 1)).astype(xp.int32),
      "n_oxygen": state["n_oxygen"] + (is_atom & (tok == 2)).astype(xp.int32),
      "rings": state["rings"] + closes.astype(xp.int32),
      "carbonyl": state["carbonyl"] + carbonyl.astype(xp.int32)}


def _smiles_finish(state, length, xp):
  prev = state["prev"]
  closable = (prev == _P_ATOM) | (prev == _P_RING) | (prev == _P_CLOSE)
  return state["ended"] | (closable & (state["depth"] == 0) & ~state["open1"]
                           & ~state["open2"])


SMILES = Grammar(len(SMILES_TOKENS), _smiles_start, _smiles_allowed, _smiles_step,
                 _smiles_finish)


def smiles_property(state) -> np.ndarray:
  """The rare property of a valid molecule (from its final grammar state): a
  ring closed, a double-bonded oxygen (``=O``) and at least two nitrogens."""
  return ((state["rings"] >= 1) & (state["carbonyl"] >= 1)
          & (state["n_nitrogen"] >= 2))


def smiles_success(x) -> np.ndarray:
  """``float32[n]``: 1 iff the row is a valid SMILES-like string with the
  rare property of :func:`smiles_property`."""
  valid, state = grammar_scan(SMILES, x)
  return (valid & smiles_property(state)).astype(np.float32)


# ---------------------------------------------------------------------------
# Stack programs
# ---------------------------------------------------------------------------

STACK_TOKENS = ("P1", "P2", "P3", "ADD", "SUB", "MUL", "DUP", "SWAP", "END")
ADD, SUB, MUL, DUP, SWAP, STACK_END = 3, 4, 5, 6, 7, 8
# operands popped and values pushed by each op (PUSH1-3, ADD, SUB, MUL, DUP, SWAP)
_NEEDS = (0, 0, 0, 2, 2, 2, 1, 2)
_DELTA = (1, 1, 1, -1, -1, -1, 1, 0)


def _stack_start(n, xp):
  return {"ended": xp.zeros((n,), bool), "depth": xp.zeros((n,), xp.int32)}


def _stack_allowed(state, t, xp):
  live, depth = ~state["ended"], state["depth"]
  cols = [live & (depth >= need) for need in _NEEDS]
  cols.append(state["ended"] | (depth == 1))
  return xp.stack(cols, axis=1)


def _stack_step(state, tok, t, xp):
  live = ~state["ended"]
  delta = xp.asarray(np.asarray(_DELTA + (0,), np.int32))[tok]
  return {"ended": state["ended"] | (tok == STACK_END),
          "depth": state["depth"] + xp.where(live, delta, 0)}


def _stack_finish(state, length, xp):
  return state["depth"] == 1


STACK = Grammar(len(STACK_TOKENS), _stack_start, _stack_allowed, _stack_step,
                _stack_finish)


def run_stack(x) -> tuple[np.ndarray, np.ndarray]:
  """``(ok, value)``: whether each program runs without error and leaves
  exactly one value, and that value (0 where not ok). Host, ``int64``.

  >>> run_stack(encode(["P3 DUP MUL P2 SUB", "ADD"], STACK_TOKENS, 6))
  (array([ True, False]), array([7, 0]))
  """
  x = np.asarray(x)
  ok = grammar_valid(STACK, x)
  n, length = x.shape
  stack = np.zeros((n, length + 2), np.int64)
  depth = np.zeros(n, np.int64)
  ended = np.zeros(n, bool)
  rows = np.arange(n)
  for t in range(length):
    tok = np.clip(x[:, t].astype(np.int64), 0, STACK_END)
    live = ~ended & ok
    top = stack[rows, np.maximum(depth - 1, 0)]
    second = stack[rows, np.maximum(depth - 2, 0)]
    binary = live & (tok >= ADD) & (tok <= MUL)
    result = np.select([tok == ADD, tok == SUB, tok == MUL],
                       [second + top, second - top, second * top], 0)
    new_top = np.select([tok <= 2, binary, tok == DUP, tok == SWAP],
                        [tok + 1, result, top, second], 0)
    write_at = np.select([tok <= 2, binary, tok == DUP, tok == SWAP],
                         [depth, depth - 2, depth, depth - 1], 0)
    write = live & (tok != STACK_END)
    idx = np.maximum(write_at, 0)
    stack[rows, idx] = np.where(write, new_top, stack[rows, idx])
    swap = live & (tok == SWAP)
    idx2 = np.maximum(depth - 2, 0)
    stack[rows, idx2] = np.where(swap, top, stack[rows, idx2])
    delta = np.asarray(_DELTA + (0,), np.int64)[tok]
    depth = depth + np.where(live, delta, 0)
    ended |= tok == STACK_END
  return ok, np.where(ok, stack[:, 0], 0)


STACK_TARGET = 17  # success: the program leaves exactly this one value


def stack_success(x) -> np.ndarray:
  """``float32[n]``: 1 iff the program runs without error and leaves exactly
  one value, :data:`STACK_TARGET`."""
  ok, value = run_stack(x)
  return (ok & (value == STACK_TARGET)).astype(np.float32)


# ---------------------------------------------------------------------------
# Motif, lattice, hidden product
# ---------------------------------------------------------------------------


def contains_motif(x, motif: Sequence[int]) -> np.ndarray:
  """``bool[n]``: rows of ``x`` holding ``motif`` as a contiguous run.

  >>> contains_motif(np.array([[1, 2, 3, 4], [3, 2, 1, 4]]), (2, 3)).tolist()
  [True, False]
  """
  x = np.asarray(x)
  m = len(motif)
  hit = np.zeros(x.shape[0], bool)
  for k in range(x.shape[1] - m + 1):
    hit |= np.all(x[:, k:k + m] == np.asarray(motif)[None], axis=1)
  return hit


def crosses_left_to_right(images) -> np.ndarray:
  """``bool[n]``: binary images ``[n, H, W]`` holding a 4-connected path of
  ones from the left column to the right column (flood fill from the left).

  >>> crosses_left_to_right(np.array([[[1, 1], [0, 0]], [[1, 0], [0, 1]]])).tolist()
  [True, False]
  """
  ones = np.asarray(images) == 1
  reach = np.zeros_like(ones)
  reach[:, :, 0] = ones[:, :, 0]
  for _ in range(ones.shape[1] * ones.shape[2]):
    grown = reach.copy()
    grown[:, 1:, :] |= reach[:, :-1, :]
    grown[:, :-1, :] |= reach[:, 1:, :]
    grown[:, :, 1:] |= reach[:, :, :-1]
    grown[:, :, :-1] |= reach[:, :, 1:]
    grown &= ones
    if np.array_equal(grown, reach):
      break
    reach = grown
  return reach[:, :, -1].any(axis=1)
