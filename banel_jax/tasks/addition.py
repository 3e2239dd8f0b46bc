"""Adversarial attack on a digit-addition transformer.

An *attacker* (the generative model BaNEL post-trains) writes addition queries
such as ``123+45=``; a frozen *target* transformer answers them by greedy
decoding. The reward is 1 iff the query is well-formed and the target's answer
is wrong.

Vocabulary (16 ids, the defaults of :class:`TransformerConfig`): digits ``0..9``
are ids ``0..9``, ``'+' = 10``, ``'=' = 11``, BOS ``12``, EOS ``13``, PAD ``14``;
id ``15`` is not part of any query (the target uses it internally as a blank).

Attacker format: a query is a row of ``max_len`` (24) ``int32`` tokens: the
query's tokens, then EOS, then PAD (no BOS stored), as sampled by the
attacker's :func:`~banel_jax.models.transformer.make_transformer` model.

Grammar: a row is well-formed iff the tokens before its first EOS spell
``^[0-9]+\\+[0-9]+=$`` with each operand 1 to ``max_operand_len`` digits long
(tokens after the EOS are not looked at; a row without EOS is malformed). With
``allow_leading_zeros=False``, an operand longer than one digit that starts with
``0`` is malformed too.

Target format (internal to the target; the oracle hides it): the target is a
causal transformer whose prefix is the query with each operand right-aligned in
a field of ``max_operand_len`` slots, empty slots holding ``BLANK_ID`` (the
otherwise unused id 15), every written digit kept (leading zeros included)::

    123+45=   ->   _ _ _ _ _ 1 2 3 + _ _ _ _ _ _ 4 5 =     (m = 8, "_" = 15)

so every prefix has ``query_len = 2 m + 2`` tokens and digit ``10^k`` of each
operand sits at a fixed position. The target continues with the sum's digits
**least significant first**, then EOS: ``123+45=`` is answered ``861`` EOS
(168). Both choices make addition learnable in a few hundred CPU steps (with the
raw, unaligned prefix a width-64 model still got a third of the answers wrong
after 3,000 steps). Training queries have no leading zeros, so a zero right
after the blanks is out of distribution for the target (the calibrated target
turned out to answer such queries correctly: docs/findings.md). The
answer is read back as an
integer, so ``8610`` EOS (0168) also counts as 168; an answer that is not one or
more digits followed by EOS is wrong.

With ``target_format="raw"`` the target's prefix is instead the query exactly
as written (``1 2 3 + 4 5 =``, no blanks), so its answer starts right after the
``=``, wherever that is, and a leading zero moves every later digit; it is
decoded with ``greedy_decode_ragged``. This is the harder format to learn (see
docs/findings.md) and the one closer to a language model reading text.
With ``answer_order="msb"`` the target writes the sum most significant digit
first, as text does, in ``m + 1`` digits (``000000168`` EOS for ``m = 8``); its
first digit then depends on every carry below it. The oracle reverses such
answers before reading them (leading zeros are read as the same number).

Pretraining distribution (:func:`sample_queries`): operand lengths uniform in
``1..max_operand_len``, first digit nonzero unless the operand is one digit
long (so no leading zeros), other digits uniform.

Example:
  >>> from banel_jax.tasks import addition
  >>> addition.encode("12+3=")
  [1, 2, 10, 3, 11]
  >>> x = addition.encode_batch(["12+3=", "0+00="], max_len=8)
  >>> x[0].tolist()
  [1, 2, 10, 3, 11, 13, 14, 14]
  >>> addition.parse_queries(x, allow_leading_zeros=False).well_formed.tolist()
  [True, False]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from banel_jax.runtime import checkpoint
from banel_jax.models.transformer import (Transformer, TransformerConfig,
                                          make_transformer)
from banel_jax.core.types import Array, Params, PRNGKey

PLUS_ID = 10
EQUALS_ID = 11
BOS_ID = 12
EOS_ID = 13
PAD_ID = 14
BLANK_ID = 15  # the target's empty operand slot; never part of a valid query
VOCAB_SIZE = 16

_ID_TO_TEXT = {**{i: str(i) for i in range(10)}, PLUS_ID: "+", EQUALS_ID: "=",
               BOS_ID: "<bos>", EOS_ID: "<eos>", PAD_ID: "<pad>"}
_CHAR_TO_ID = {**{str(i): i for i in range(10)}, "+": PLUS_ID, "=": EQUALS_ID}

# The largest operand length whose sums fit int64 on the host.
_MAX_SUPPORTED_OPERAND_LEN = 17


# ----------------------------------------------------------------------------
# Tokenizer.


def encode(text: str) -> list[int]:
  """Token ids of a query string of digits, ``+`` and ``=`` (no BOS/EOS added).

  Raises:
    ValueError: ``text`` has a character outside ``0-9+=``.
  """
  try:
    return [_CHAR_TO_ID[c] for c in text]
  except KeyError as e:
    raise ValueError(f"cannot encode {text!r}: character {e.args[0]!r} is not "
                     "one of 0-9 + =") from None


def decode(ids: Sequence[int], stop_at_eos: bool = True) -> str:
  """Text of token ids; stops before the first EOS unless ``stop_at_eos=False``.

  BOS, EOS and PAD render as ``<bos>``, ``<eos>``, ``<pad>``; any other id that
  is not a digit or symbol renders as ``<?id>`` (e.g. ``<?15>``).

  >>> decode([1, 10, 2, 11, 13, 14])
  '1+2='
  >>> decode([15, 12, 3], stop_at_eos=False)
  '<?15><bos>3'
  """
  out = []
  for i in np.asarray(ids).reshape(-1).tolist():
    if stop_at_eos and i == EOS_ID:
      break
    out.append(_ID_TO_TEXT.get(i, f"<?{i}>"))
  return "".join(out)


def encode_batch(texts: Sequence[str], max_len: int = 24) -> np.ndarray:
  """Attacker-format rows ``int32[n, max_len]``: tokens, EOS, then PAD.

  Raises:
    ValueError: a text does not fit (``len(text) + 1 > max_len``) or has an
      unknown character.
  """
  out = np.full((len(texts), max_len), PAD_ID, np.int32)
  for i, text in enumerate(texts):
    ids = encode(text) + [EOS_ID]
    if len(ids) > max_len:
      raise ValueError(f"{text!r} needs {len(ids)} tokens with EOS; max_len is "
                       f"{max_len}")
    out[i, :len(ids)] = ids
  return out


def decode_batch(x) -> list[str]:
  """Texts of attacker-format rows ``int[n, L]`` (each up to its first EOS)."""
  return [decode(row) for row in np.asarray(x)]


# ----------------------------------------------------------------------------
# Configuration.


TARGET_FORMATS = ("aligned", "raw")
ANSWER_ORDERS = ("lsb", "msb")
DEFAULT_TARGET_CONFIG = TransformerConfig(max_len=28, num_layers=2, width=64,
                                          num_heads=4)


@dataclasses.dataclass(frozen=True)
class AdditionTaskConfig:
  """The addition-attack task (frozen and hashable: usable as a static arg).

  Attributes:
    max_operand_len: most digits per operand of a well-formed query.
    allow_leading_zeros: if False, an operand longer than one digit that starts
      with ``0`` makes the query malformed (the harder variant).
    max_len: the attacker's sequence length (tokens + EOS + PAD, no BOS).
    target: the target transformer's config; its ``max_len`` must hold the
      aligned query plus the longest answer (``query_len + answer_len``).
    target_format: how the target reads a query (internal to the target):
      ``"aligned"`` (each operand right-aligned in a field of blanks, the
      default; see the module doc) or ``"raw"`` (the query exactly as written,
      ``a+b=``, so a digit's position depends on the operand lengths and a
      leading zero shifts every digit after it).
    answer_order: the order in which the target writes the sum (internal to
      the target): ``"lsb"`` (least significant digit first, the default: each
      digit needs only the carry out of the digit before it) or ``"msb"``
      (most significant first, as written text does, zero-padded to
      ``max_operand_len + 1`` digits so every digit has a fixed position: the
      first digit already depends on every carry below it, so a long carry
      chain must be looked ahead through).
  """

  max_operand_len: int = 8
  allow_leading_zeros: bool = True
  max_len: int = 24
  target: TransformerConfig = DEFAULT_TARGET_CONFIG
  target_format: str = "aligned"
  answer_order: str = "lsb"


  def __post_init__(self):
    if self.target_format not in TARGET_FORMATS:
      raise ValueError(f"target_format must be one of {TARGET_FORMATS}, got "
                       f"{self.target_format!r}")
    if self.answer_order not in ANSWER_ORDERS:
      raise ValueError(f"answer_order must be one of {ANSWER_ORDERS}, got "
                       f"{self.answer_order!r}")
    if not 1 <= self.max_operand_len <= _MAX_SUPPORTED_OPERAND_LEN:
      raise ValueError(f"max_operand_len must be in [1, "
                       f"{_MAX_SUPPORTED_OPERAND_LEN}], got {self.max_operand_len}")
    if self.max_len < self.query_len + 1:
      raise ValueError(f"max_len={self.max_len} cannot hold the longest query "
                       f"({self.query_len} tokens) plus EOS")
    for name, cfg in (("attacker", self.attacker), ("target", self.target)):
      ids = (cfg.vocab_size, cfg.bos_id, cfg.eos_id, cfg.pad_id)
      if ids != (VOCAB_SIZE, BOS_ID, EOS_ID, PAD_ID):
        raise ValueError(f"{name} config must use vocab_size={VOCAB_SIZE}, "
                         f"bos/eos/pad = {BOS_ID}/{EOS_ID}/{PAD_ID}; got {ids}")
    need = self.query_len + self.answer_len
    if self.target.max_len < need:
      raise ValueError(f"target.max_len={self.target.max_len} < {need} (longest "
                       f"query {self.query_len} + answer {self.answer_len})")

  @property
  def query_len(self) -> int:
    """Tokens of the longest well-formed query (``a+b=``), EOS excluded."""
    return 2 * self.max_operand_len + 2

  @property
  def answer_len(self) -> int:
    """Tokens of the longest answer: ``max_operand_len + 1`` digits and EOS."""
    return self.max_operand_len + 2

  @property
  def attacker(self) -> TransformerConfig:
    """The attacker's :class:`TransformerConfig` (defaults, ``max_len``)."""
    return TransformerConfig(max_len=self.max_len)

  def replace(self, **kwargs) -> "AdditionTaskConfig":
    return dataclasses.replace(self, **kwargs)

  @classmethod
  def from_dict(cls, d: dict) -> "AdditionTaskConfig":
    """Inverse of :func:`banel_jax.runtime.checkpoint.config_to_dict`."""
    d = dict(d)
    if isinstance(d.get("target"), dict):
      d["target"] = transformer_config_from_dict(d["target"])
    return cls(**d)


def transformer_config_from_dict(d: dict) -> TransformerConfig:
  """Inverse of :func:`banel_jax.runtime.checkpoint.config_to_dict` for a Transformer."""
  d = dict(d)
  if isinstance(d.get("dtype"), str):
    d["dtype"] = getattr(jnp, d["dtype"])
  return TransformerConfig(**d)


# ----------------------------------------------------------------------------
# Grammar (host, numpy, vectorised).


class ParsedQueries(NamedTuple):
  """Result of :func:`parse_queries` on ``n`` rows (numpy arrays).

  Attributes:
    well_formed: ``bool[n]`` under the grammar and leading-zeros switch.
    syntax_ok: ``bool[n]`` well-formed with leading zeros allowed.
    leading_zero: ``bool[n]`` syntax is ok and an operand has a leading zero.
    length: ``int32[n]`` tokens before the first EOS (``max_len`` if none).
    a, b: ``int64[n]`` operand values where ``syntax_ok``, else 0.
  """

  well_formed: np.ndarray
  syntax_ok: np.ndarray
  leading_zero: np.ndarray
  length: np.ndarray
  a: np.ndarray
  b: np.ndarray


def _digits_value(x, start, stop):
  """Integer value of ``x[i, start[i]:stop[i]]`` (digits) per row, int64."""
  j = np.arange(x.shape[1])[None, :]
  inside = (j >= start[:, None]) & (j < stop[:, None])
  power = np.clip(stop[:, None] - 1 - j, 0, _MAX_SUPPORTED_OPERAND_LEN + 1)
  digits = np.where(inside, np.clip(x, 0, 9), 0).astype(np.int64)
  return np.sum(digits * (10 ** power.astype(np.int64)), axis=1)


class _Grammar(NamedTuple):
  syntax_ok: Any
  leading_zero: Any
  length: Any
  plus_pos: Any
  eq_pos: Any


def _grammar(x, max_operand_len: int, xp) -> _Grammar:
  """The query grammar on ``int[n, L]`` rows with array module ``xp`` (numpy on
  host, ``jax.numpy`` under ``jit``): one definition for both."""
  L = x.shape[1]  # pylint: disable=invalid-name
  is_eos = x == EOS_ID
  has_eos = is_eos.any(axis=1)
  length = xp.where(has_eos, xp.argmax(is_eos, axis=1), L).astype(xp.int32)
  content = xp.arange(L)[None, :] < length[:, None]
  is_plus = (x == PLUS_ID) & content
  is_eq = (x == EQUALS_ID) & content
  is_digit = (x >= 0) & (x <= 9)
  only_known = ~xp.any(content & ~(is_digit | is_plus | is_eq), axis=1)
  plus_pos = xp.argmax(is_plus, axis=1)
  eq_pos = xp.argmax(is_eq, axis=1)
  len_a = plus_pos
  len_b = eq_pos - plus_pos - 1
  syntax_ok = (has_eos & only_known
               & (is_plus.sum(axis=1) == 1) & (is_eq.sum(axis=1) == 1)
               & (eq_pos == length - 1)
               & (len_a >= 1) & (len_a <= max_operand_len)
               & (len_b >= 1) & (len_b <= max_operand_len))
  b_first = xp.take_along_axis(x, xp.clip(plus_pos + 1, 0, L - 1)[:, None],
                               axis=1)[:, 0]
  leading_zero = syntax_ok & (((len_a > 1) & (x[:, 0] == 0))
                              | ((len_b > 1) & (b_first == 0)))
  return _Grammar(syntax_ok, leading_zero, length, plus_pos, eq_pos)


def parse_queries(x, max_operand_len: int = 8, allow_leading_zeros: bool = True
                  ) -> ParsedQueries:
  """Parses attacker-format rows against the query grammar (see module doc).

  Args:
    x: ``int[n, L]`` token rows (numpy or jax).
    max_operand_len: most digits per operand.
    allow_leading_zeros: whether ``07+1=`` is well-formed.

  Returns:
    A :class:`ParsedQueries`.
  """
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"queries must be int[n, max_len], got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f"queries must hold integer token ids, got {x.dtype}")
  if max_operand_len > _MAX_SUPPORTED_OPERAND_LEN:
    raise ValueError(f"max_operand_len={max_operand_len} > "
                     f"{_MAX_SUPPORTED_OPERAND_LEN} would overflow int64")
  g = _grammar(x, max_operand_len, np)
  well_formed = g.syntax_ok & (allow_leading_zeros | ~g.leading_zero)
  zero = np.zeros(x.shape[0], np.int64)
  a = np.where(g.syntax_ok, _digits_value(x, zero, g.plus_pos), 0)
  b = np.where(g.syntax_ok, _digits_value(x, g.plus_pos + 1, g.eq_pos), 0)
  return ParsedQueries(well_formed, g.syntax_ok, g.leading_zero, g.length, a, b)


def is_well_formed(x, max_operand_len: int = 8, allow_leading_zeros: bool = True
                   ) -> np.ndarray:
  """``bool[n]``: which rows of ``x`` are well-formed queries."""
  return parse_queries(x, max_operand_len, allow_leading_zeros).well_formed


def well_formed_mask(x: Array, max_operand_len: int = 8,
                     allow_leading_zeros: bool = True) -> Array:
  """``bool[n]``: well-formed rows of ``x``, in ``jax.numpy`` (jit- and
  vmap-able; the same grammar as :func:`parse_queries`).

  Use it as BaNEL's free ``support`` (:func:`banel_jax.make_banel`): a malformed
  query scores 0 whatever the target answers, so no reward evaluation is needed
  to know it fails.
  """
  x = jnp.asarray(x)
  if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"queries must be int[n, max_len], got {x.dtype}{x.shape}")
  g = _grammar(x, max_operand_len, jnp)
  return g.syntax_ok & (allow_leading_zeros | ~g.leading_zero)


def make_support(task_config: AdditionTaskConfig = AdditionTaskConfig()
                 ) -> Callable[[Array], Array]:
  """:func:`well_formed_mask` under the task's operand bound and leading-zeros
  switch: BaNEL's free ``support`` for this task (``make_banel(..., support=)``)."""
  return functools.partial(well_formed_mask,
                           max_operand_len=task_config.max_operand_len,
                           allow_leading_zeros=task_config.allow_leading_zeros)


def parse_answers(tokens) -> tuple[np.ndarray, np.ndarray]:
  """Reads target answers (digits least significant first, then EOS).

  Args:
    tokens: ``int[n, A]`` answer tokens (what follows ``=``).

  Returns:
    ``(valid, value)``: ``bool[n]``, True iff the row is one or more digits then
    EOS, and ``int64[n]`` its value (0 where not valid).

  >>> parse_answers(np.array([[8, 6, 1, 13], [0, 13, 14, 14], [13, 14, 14, 14],
  ...                         [1, 2, 3, 4]]))
  (array([ True,  True, False, False]), array([168,   0,   0,   0]))
  """
  t = np.asarray(tokens)
  n, a_len = t.shape
  if a_len > _MAX_SUPPORTED_OPERAND_LEN + 2:
    raise ValueError(f"answers of {a_len} tokens may overflow int64")
  is_eos = t == EOS_ID
  has_eos = is_eos.any(axis=1)
  end = np.where(has_eos, np.argmax(is_eos, axis=1), a_len)
  j = np.arange(a_len)[None, :]
  inside = j < end[:, None]
  all_digits = ~np.any(inside & ~((t >= 0) & (t <= 9)), axis=1)
  valid = has_eos & (end >= 1) & all_digits
  digits = np.where(inside, np.clip(t, 0, 9), 0).astype(np.int64)
  value = np.sum(digits * 10 ** np.minimum(j, a_len).astype(np.int64), axis=1)
  return valid, np.where(valid, value, 0)


def reverse_answer_digits(tokens: Array) -> Array:
  """Reverses each row's tokens before its first EOS; the rest stay in place.

  Turns an answer written most significant digit first into the least
  significant first order :func:`parse_answers` reads (and back). A row with
  no EOS is reversed whole; it stays invalid either way.

  >>> reverse_answer_digits(jnp.array([[1, 6, 8, 13, 14], [0, 13, 14, 14, 14],
  ...                                  [3, 4, 5, 6, 7]])).tolist()
  [[8, 6, 1, 13, 14], [0, 13, 14, 14, 14], [7, 6, 5, 4, 3]]
  """
  tokens = jnp.asarray(tokens)
  chex.assert_rank(tokens, 2)
  width = tokens.shape[1]
  is_eos = tokens == EOS_ID
  end = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), width)[:, None]
  j = jnp.arange(width)[None, :]
  return jnp.take_along_axis(tokens, jnp.where(j < end, end - 1 - j, j), axis=1)


def answers_correct(answer_tokens, a, b) -> np.ndarray:
  """``bool[n]``: the decoded answer is a number equal to ``a + b``."""
  valid, value = parse_answers(answer_tokens)
  return valid & (value == np.asarray(a, np.int64) + np.asarray(b, np.int64))


def answer_tokens(sums, answer_len: int) -> np.ndarray:
  """The target's correct answer to each sum: ``int32[n, answer_len]``.

  Digits least significant first, EOS, then PAD.

  >>> answer_tokens([168, 0], 5).tolist()
  [[8, 6, 1, 13, 14], [0, 13, 14, 14, 14]]
  """
  out = np.full((len(sums), answer_len), PAD_ID, np.int32)
  for i, s in enumerate(np.asarray(sums, np.int64).tolist()):
    ids = [int(c) for c in reversed(str(s))] + [EOS_ID]
    if len(ids) > answer_len:
      raise ValueError(f"answer {s} needs {len(ids)} tokens > {answer_len}")
    out[i, :len(ids)] = ids
  return out


# ----------------------------------------------------------------------------
# Pretraining distribution (pure jax).


def _sample_operand_digits(key: PRNGKey, n: int, max_len: int):
  """Lengths ``int32[n]`` in ``1..max_len`` and digits ``int32[n, max_len]``.

  Digits are most significant first in columns ``0..length-1``; the first is
  nonzero unless the length is 1; columns past the length are junk.
  """
  k_len, k_first, k_rest = jax.random.split(key, 3)
  lengths = jax.random.randint(k_len, (n,), 1, max_len + 1)
  first = jax.random.randint(k_first, (n,), jnp.where(lengths > 1, 1, 0), 10)
  rest = jax.random.randint(k_rest, (n, max_len - 1), 0, 10)
  return lengths, jnp.concatenate([first[:, None], rest], axis=1)


def _assemble(la, da, lb, db, total_len):
  """Attacker-format rows ``int32[n, total_len]`` of ``a+b=`` EOS PAD..."""
  j = jnp.arange(total_len)[None, :]
  la, lb = la[:, None], lb[:, None]
  m = da.shape[1]
  a_tok = jnp.take_along_axis(da, jnp.clip(j, 0, m - 1), axis=1)
  b_tok = jnp.take_along_axis(db, jnp.clip(j - la - 1, 0, m - 1), axis=1)
  tok = jnp.select(
      [j < la, j == la, j <= la + lb, j == la + lb + 1, j == la + lb + 2],
      [a_tok, jnp.full_like(j, PLUS_ID), b_tok, jnp.full_like(j, EQUALS_ID),
       jnp.full_like(j, EOS_ID)], PAD_ID)
  return tok.astype(jnp.int32)


def sample_queries(key: PRNGKey, n: int,
                   config: AdditionTaskConfig = AdditionTaskConfig()) -> Array:
  """Draws ``n`` pretraining queries ``int32[n, config.max_len]`` (pure jax).

  Operand lengths are uniform in ``1..max_operand_len``; the first digit is
  uniform in ``1..9`` for operands longer than one digit (so there are no
  leading zeros), every other digit uniform in ``0..9``. ``n`` is static.

  >>> import jax
  >>> x = sample_queries(jax.random.key(0), 4)
  >>> x.shape, x.dtype, bool(is_well_formed(x, allow_leading_zeros=False).all())
  ((4, 24), dtype('int32'), True)
  """
  k_a, k_b = jax.random.split(key)
  la, da = _sample_operand_digits(k_a, n, config.max_operand_len)
  lb, db = _sample_operand_digits(k_b, n, config.max_operand_len)
  return _assemble(la, da, lb, db, config.max_len)


def query_entropy(config: AdditionTaskConfig = AdditionTaskConfig()) -> float:
  """Entropy in nats of one :func:`sample_queries` query (a floor for the NLL).

  >>> round(query_entropy(AdditionTaskConfig(max_operand_len=1)), 4)  # 2 log 10
  4.6052
  """
  m = config.max_operand_len
  per_length = [np.log(10.0)] + [np.log(9.0) + (k - 1) * np.log(10.0)
                                 for k in range(2, m + 1)]
  return float(2 * (np.log(m) + np.mean(per_length)))


# ----------------------------------------------------------------------------
# The target.


def make_target(config: AdditionTaskConfig = AdditionTaskConfig()) -> Transformer:
  """The target :class:`Transformer` (``config.target``)."""
  return make_transformer(config.target)


def target_prefix(queries: Array, len_a: Array, len_b: Array,
                  max_operand_len: int) -> Array:
  """The target's aligned prefix of well-formed queries (see module doc).

  Args:
    queries: ``int[n, L]`` attacker-format rows ``a+b=`` (``L >= len_a + len_b
      + 2``).
    len_a: ``int[n]`` digits of the first operand (the position of ``+``).
    len_b: ``int[n]`` digits of the second operand.
    max_operand_len: ``m``, the width of each operand's field.

  Returns:
    ``int32[n, 2 m + 2]``: ``m`` slots of ``a`` (right-aligned, ``BLANK_ID``
    before its first digit), ``+``, ``m`` slots of ``b``, ``=``.

  >>> import jax.numpy as jnp
  >>> x = jnp.asarray(encode_batch(["12+3="], max_len=8))
  >>> decode(target_prefix(x, jnp.array([2]), jnp.array([1]), 3)[0])
  '<?15>12+<?15><?15>3='
  """
  m = max_operand_len
  queries = jnp.asarray(queries, jnp.int32)
  len_a = jnp.asarray(len_a, jnp.int32)[:, None]
  len_b = jnp.asarray(len_b, jnp.int32)[:, None]
  slot = jnp.arange(m)[None, :]
  last = queries.shape[1] - 1

  def field(start, length):  # digits queries[start : start + length], aligned
    pad = m - length
    idx = jnp.clip(start + slot - pad, 0, last)
    return jnp.where(slot >= pad, jnp.take_along_axis(queries, idx, axis=1), BLANK_ID)

  n = queries.shape[0]
  plus = jnp.full((n, 1), PLUS_ID, jnp.int32)
  equals = jnp.full((n, 1), EQUALS_ID, jnp.int32)
  return jnp.concatenate([field(0, len_a), plus, field(len_a + 1, len_b), equals],
                         axis=1).astype(jnp.int32)


def sample_target_sequences(key: PRNGKey, n: int,
                            config: AdditionTaskConfig = AdditionTaskConfig()
                            ) -> tuple[Array, Array]:
  """Target training rows: a query from the pretraining distribution in the
  target's format (``config.target_format``), then its answer.

  Returns:
    ``(tokens, weights)``: ``int32[n, target.max_len]`` rows holding the
    query's target prefix (``"aligned"``: :func:`target_prefix`, always
    ``query_len`` tokens; ``"raw"``: ``a+b=`` as written), the sum's digits
    in ``config.answer_order`` (reversed by default), EOS, then PAD; ``f32[n, target.max_len]`` equal to 1 on the answer
    digits and its EOS (the positions the loss scores), else 0.
  """
  m = config.max_operand_len
  k_a, k_b = jax.random.split(key)
  la, da = _sample_operand_digits(k_a, n, m)
  lb, db = _sample_operand_digits(k_b, n, m)
  query = _assemble(la, da, lb, db, config.query_len + 1)
  if config.target_format == "raw":
    prefix, start = query[:, :config.query_len], la + lb + 2
  else:
    prefix = target_prefix(query, la, lb, m)
    start = jnp.full((n,), config.query_len, jnp.int32)
  k = jnp.arange(m + 1)[None, :]

  def reversed_digits(length, digits):  # units first, zeros past the length
    idx = jnp.clip(length[:, None] - 1 - k, 0, m - 1)
    return jnp.where(k < length[:, None], jnp.take_along_axis(digits, idx, 1), 0)

  ra, rb = reversed_digits(la, da), reversed_digits(lb, db)
  carry = jnp.zeros((n,), jnp.int32)
  sum_digits = []
  for i in range(m + 1):
    t = ra[:, i] + rb[:, i] + carry
    sum_digits.append(t % 10)
    carry = t // 10
  s = jnp.stack(sum_digits, axis=1)  # [n, m + 1], units first
  num_digits = jnp.maximum(1, jnp.max(jnp.where(s != 0, k + 1, 0), axis=1))
  total = config.target.max_len
  j = jnp.arange(total)[None, :]
  start = start[:, None]
  prefix = jnp.pad(prefix, ((0, 0), (0, total - config.query_len)))
  offset = j - start  # the answer's i-th token sits at start + i
  if config.answer_order == "msb":  # m + 1 digits, zero-padded: fixed positions
    num_digits = jnp.full_like(num_digits, m + 1)
    offset = m - offset
  ans = jnp.take_along_axis(s, jnp.clip(offset, 0, m), axis=1)
  end = start + num_digits[:, None]
  tokens = jnp.select([j < start, j < end, j == end],
                      [prefix, ans, jnp.full_like(j, EOS_ID)], PAD_ID)
  weights = ((j >= start) & (j <= end)).astype(jnp.float32)
  return tokens.astype(jnp.int32), weights


def target_loss(target: Transformer, params: Params, tokens: Array,
                weights: Array) -> tuple[Array, dict]:
  """Mean NLL per answer token, and the teacher-forced exact-match rate.

  Args:
    target: the target :class:`Transformer`.
    params: its params.
    tokens: ``int32[B, T]`` rows from :func:`sample_target_sequences`.
    weights: ``f32[B, T]`` answer mask.

  Returns:
    ``(loss, metrics)`` with ``metrics = {"loss", "exact_match"}``.
  """
  logits = target.logits(params, tokens)  # [B, T, V]
  logp = jax.nn.log_softmax(logits, axis=-1)
  tok_logp = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
  scored = weights > 0
  loss = -jnp.sum(jnp.where(scored, weights * tok_logp, 0.0)) / jnp.sum(weights)
  hit = (jnp.argmax(logits, axis=-1) == tokens) | ~scored
  exact = jnp.mean(jnp.all(hit, axis=1).astype(jnp.float32))
  return loss, {"loss": loss, "exact_match": exact}


def attacker_loss(attacker: Transformer, params: Params, x: Array
                  ) -> tuple[Array, dict]:
  """Mean negative log-likelihood (nats per query) of attacker rows ``x``."""
  loss = -jnp.mean(attacker.model.log_prob(params, x))
  return loss, {"loss": loss}


class TrainChunk(NamedTuple):
  """``(params, opt_state, key) -> (params, opt_state, metrics)``, jitted.

  Runs ``steps`` optimizer steps in one ``lax.scan``, drawing a fresh batch
  each step from ``fold_in(key, step)``; ``metrics`` holds ``[steps]`` arrays.
  """

  run: Callable[[Params, Any, PRNGKey], tuple[Params, Any, dict]]
  steps: int


def make_train_chunk(loss_fn: Callable[[Params, PRNGKey], tuple[Array, dict]],
                     tx: optax.GradientTransformation, steps: int) -> TrainChunk:
  """Builds a jitted chunk of ``steps`` training steps (see :class:`TrainChunk`).

  Args:
    loss_fn: ``loss_fn(params, key) -> (loss, metrics)``; draws its own batch.
    tx: the optimizer.
    steps: optimizer steps per call (static).
  """

  def step(carry, i):
    params, opt_state, key = carry
    grads, metrics = jax.grad(loss_fn, has_aux=True)(params, jax.random.fold_in(key, i))
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, key), metrics

  @jax.jit
  def run(params, opt_state, key):
    (params, opt_state, _), metrics = jax.lax.scan(
        step, (params, opt_state, key), jnp.arange(steps))
    return params, opt_state, metrics

  return TrainChunk(run, steps)


def target_loss_fn(config: AdditionTaskConfig, batch_size: int):
  """``(params, key) -> (loss, metrics)`` of the target on a fresh batch."""
  target = make_target(config)

  def loss_fn(params, key):
    tokens, weights = sample_target_sequences(key, batch_size, config)
    return target_loss(target, params, tokens, weights)

  return loss_fn


def attacker_loss_fn(config: AdditionTaskConfig, batch_size: int):
  """``(params, key) -> (loss, metrics)`` of the attacker on fresh queries."""
  attacker = make_transformer(config.attacker)

  def loss_fn(params, key):
    return attacker_loss(attacker, params, sample_queries(key, batch_size, config))

  return loss_fn


# ----------------------------------------------------------------------------
# The oracle.


class QueryScores(NamedTuple):
  """What the target makes of ``n`` attacker rows (numpy arrays).

  Attributes:
    syntax_ok: ``bool[n]`` well-formed when leading zeros are allowed.
    leading_zero: ``bool[n]`` ``syntax_ok`` and an operand has a leading zero.
    target_wrong: ``bool[n]`` ``syntax_ok`` and the target's answer is wrong.
    answer_valid: ``bool[n]`` the target's answer parsed as a number (False
      where not ``syntax_ok``: the target is not asked).
    answer: ``int64[n]`` the target's answer where ``answer_valid``, else -1.
    truth: ``int64[n]`` ``a + b`` where ``syntax_ok``, else -1.
  """

  syntax_ok: np.ndarray
  leading_zero: np.ndarray
  target_wrong: np.ndarray
  answer_valid: np.ndarray
  answer: np.ndarray
  truth: np.ndarray

  def well_formed(self, allow_leading_zeros: bool) -> np.ndarray:
    """``bool[n]`` well-formed under the given leading-zeros switch."""
    return self.syntax_ok & (allow_leading_zeros | ~self.leading_zero)

  def rewards(self, allow_leading_zeros: bool) -> np.ndarray:
    """``float32[n]``: 1 iff well-formed and the target is wrong."""
    return (self.well_formed(allow_leading_zeros) & self.target_wrong
            ).astype(np.float32)


# answer_fn(queries int[k, L], len_a int[k], len_b int[k]) -> int[k, answer_len]
AnswerFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def score_queries(x, answer_fn: AnswerFn,
                  config: AdditionTaskConfig = AdditionTaskConfig()) -> QueryScores:
  """Scores attacker rows given a function that answers well-formed queries.

  Args:
    x: ``int[n, config.max_len]`` attacker-format rows.
    answer_fn: ``answer_fn(queries, len_a, len_b) -> int[k, answer_len]``,
      the answer tokens (digits least significant first, then EOS) for the
      ``k`` rows of ``x`` that are well-formed with leading zeros allowed; it is
      not called when there are none.
    config: the task (``max_operand_len``, ``max_len``).

  Returns:
    A :class:`QueryScores`; ``.rewards(allow_leading_zeros)`` are the rewards.
  """
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[1] != config.max_len:
    raise ValueError(f"queries must be int[n, {config.max_len}], got {x.shape}")
  parsed = parse_queries(x, config.max_operand_len, allow_leading_zeros=True)
  n = x.shape[0]
  idx = np.flatnonzero(parsed.syntax_ok)
  valid = np.zeros(n, bool)
  value = np.full(n, -1, np.int64)
  truth = np.where(parsed.syntax_ok, parsed.a + parsed.b, -1)
  if idx.size:
    len_a = np.argmax(x[idx] == PLUS_ID, axis=1).astype(np.int32)
    len_b = (parsed.length[idx] - len_a - 2).astype(np.int32)
    answers = np.asarray(answer_fn(x[idx], len_a, len_b))
    if answers.shape != (idx.size, config.answer_len):
      raise ValueError(f"answer_fn returned shape {answers.shape}, expected "
                       f"{(idx.size, config.answer_len)}")
    v, val = parse_answers(answers)
    valid[idx], value[idx] = v, np.where(v, val, -1)
  wrong = parsed.syntax_ok & ~(valid & (value == truth))
  return QueryScores(parsed.syntax_ok, parsed.leading_zero, wrong, valid, value,
                     truth)


def make_answer_fn(target_params: Params,
                   config: AdditionTaskConfig = AdditionTaskConfig(),
                   batch_size: int = 4096) -> AnswerFn:
  """The target's greedy answers as an :data:`AnswerFn` (host, numpy in/out).

  Builds the target's prefix (``config.target_format``) and runs greedy
  decoding for ``answer_len`` steps under ``jit`` (a ``"msb"`` target's
  answers are turned least significant first by
  :func:`reverse_answer_digits`), in chunks of ``batch_size`` rows (the
  last chunk padded), so one compile serves every call.

  Args:
    target_params: params of the target (``config.target``).
    config: the task.
    batch_size: rows per decode call.
  """
  target = make_target(config)
  m, steps, width = config.max_operand_len, config.answer_len, config.query_len + 1

  def decode(params, queries, len_a, len_b):
    if config.target_format == "raw":  # the query as written, ragged
      return target.greedy_decode_ragged(params, queries[:, :config.query_len],
                                         len_a + len_b + 2, steps)
    prefix = target_prefix(queries, len_a, len_b, m)
    return target.greedy_decode(params, prefix, steps)

  @jax.jit
  def decode_chunk(params, queries, len_a, len_b):
    out = decode(params, queries, len_a, len_b)
    return reverse_answer_digits(out) if config.answer_order == "msb" else out

  def answer(queries, len_a, len_b):
    q = np.full((queries.shape[0], width), PAD_ID, np.int32)
    k = min(width, queries.shape[1])
    q[:, :k] = queries[:, :k]
    len_a = np.asarray(len_a, np.int32)
    len_b = np.asarray(len_b, np.int32)
    n = q.shape[0]
    out = np.empty((n, steps), np.int32)
    for start in range(0, n, batch_size):
      chunk = [q[start:start + batch_size], len_a[start:start + batch_size],
               len_b[start:start + batch_size]]
      k = chunk[0].shape[0]
      if k < batch_size:  # pad the last chunk: fixed shapes, no recompiles
        chunk = [np.concatenate([c, np.ones((batch_size - k,) + c.shape[1:], c.dtype)])
                 for c in chunk]
      out[start:start + k] = np.asarray(decode_chunk(target_params, *chunk))[:k]
    return out

  return answer


def make_scorer(target_params: Params,
                config: AdditionTaskConfig = AdditionTaskConfig(),
                batch_size: int = 4096) -> Callable[[Any], QueryScores]:
  """Host function ``score(x) -> QueryScores`` for attacker rows ``int[n, max_len]``.

  Only rows that are well-formed with leading zeros allowed are decoded, so one
  call serves both leading-zero variants (see :meth:`QueryScores.rewards`).
  """
  answer = make_answer_fn(target_params, config, batch_size)
  return lambda x: score_queries(x, answer, config)


def make_oracle(target_params: Params,
                task_config: AdditionTaskConfig = AdditionTaskConfig(),
                batch_size: int = 4096) -> Callable[[Any], np.ndarray]:
  """The reward oracle ``oracle(x: int[n, max_len]) -> float32[n]``.

  Reward 1 iff the row is a well-formed query (grammar of the module doc, with
  ``task_config.allow_leading_zeros``) and the target's greedy answer is not
  the correct sum. Decoding is jitted in fixed chunks of ``batch_size`` rows.

  Args:
    target_params: params of the target (``task_config.target``).
    task_config: the task.
    batch_size: rows per decode call (the last chunk is padded).
  """
  score = make_scorer(target_params, task_config, batch_size)

  def oracle(x) -> np.ndarray:
    return score(x).rewards(task_config.allow_leading_zeros)

  return oracle


# ----------------------------------------------------------------------------
# Checkpoints of the two models.

TARGET_KIND = "addition_target"
ATTACKER_KIND = "addition_attacker"


def _load(directory, kind: str, build):
  """Loads a checkpoint of ``kind`` whose params must match ``build(task)``."""
  metadata = checkpoint.load_metadata(directory)
  if metadata.get("kind") != kind:
    raise checkpoint.CheckpointError(
        f"{directory} holds a {metadata.get('kind')!r} checkpoint, not {kind!r}")
  task = AdditionTaskConfig.from_dict(metadata["task"])
  model = build(task)
  like = jax.eval_shape(model.init, jax.random.key(0))
  params, metadata = checkpoint.load_params(directory, like=like)
  return params, task, metadata


def save_target(directory, params: Params, config: AdditionTaskConfig,
                overwrite: bool = False, **extra) -> None:
  """Saves target params with the task config (and ``extra`` facts) as metadata."""
  metadata = {"kind": TARGET_KIND, "task": checkpoint.config_to_dict(config), **extra}
  checkpoint.save_params(directory, params, metadata, overwrite=overwrite)


def load_target(directory) -> tuple[Params, AdditionTaskConfig, dict]:
  """``(params, task_config, metadata)`` of a target saved by :func:`save_target`."""
  return _load(directory, TARGET_KIND, lambda task: make_target(task).model)


def with_target_of(task: AdditionTaskConfig,
                   target_task: AdditionTaskConfig) -> AdditionTaskConfig:
  """``task`` with the target's shape, input format and answer order from
  ``target_task``.

  The target's architecture and format are properties of its checkpoint (see
  :func:`load_target`), while the grammar and the leading-zeros switch belong
  to the experiment. Raises ``ValueError`` if the two disagree on the grammar's
  sizes (``max_operand_len``, ``max_len``).
  """
  for field in ("max_operand_len", "max_len"):
    if getattr(task, field) != getattr(target_task, field):
      raise ValueError(f"the target checkpoint was made for {field}="
                       f"{getattr(target_task, field)}, the experiment has "
                       f"{getattr(task, field)}")
  return task.replace(target=target_task.target,
                      target_format=target_task.target_format,
                      answer_order=target_task.answer_order)


def load_target_for(directory, task: AdditionTaskConfig
                    ) -> tuple[Params, AdditionTaskConfig]:
  """``(params, task with the target's shape and format)`` of a saved target.

  :func:`load_target` then :func:`with_target_of`; a checkpoint made for
  another grammar raises :class:`~banel_jax.runtime.checkpoint.CheckpointError` naming
  ``directory``.
  """
  params, target_task, _ = load_target(directory)
  try:
    return params, with_target_of(task, target_task)
  except ValueError as e:
    raise checkpoint.CheckpointError(f"{directory}: {e}") from None


def save_attacker(directory, params: Params, config: AdditionTaskConfig,
                  overwrite: bool = False, **extra) -> None:
  """Saves attacker params (model ``config.attacker``) with the task config."""
  metadata = {"kind": ATTACKER_KIND, "task": checkpoint.config_to_dict(config),
              "model": checkpoint.config_to_dict(config.attacker), **extra}
  checkpoint.save_params(directory, params, metadata, overwrite=overwrite)


def load_attacker(directory) -> tuple[Params, AdditionTaskConfig, dict]:
  """``(params, task_config, metadata)`` of an attacker saved by
  :func:`save_attacker`; the model is ``make_transformer(task_config.attacker)``."""
  return _load(directory, ATTACKER_KIND,
               lambda task: make_transformer(task.attacker).model)
