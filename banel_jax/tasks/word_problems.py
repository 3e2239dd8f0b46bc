"""Synthetic multi-step arithmetic word problems with worked solutions.

A reasoning task small enough for a CPU: a seeded generator of templated word
problems, the verifier that grades a completion, a small word-piece tokenizer
(a Hugging Face ``tokenizer.json``), and the shipped pretrained Llama-family
decoder with hard held-out questions (``banel_jax/assets/reasoning``; retrained
and re-screened by :mod:`banel_jax.tasks.word_problems_pretrain`).

**Problems.** A problem starts from a number of objects and applies ``steps``
operations, one sentence each, then asks for the final count::

  Ann has 7 pens. She buys 5 more. Then she gives 3 to Bo. How many pens does
  Ann have now?

and its worked solution writes one equation per step and the answer after
``####``::

  7+5=12. 12-3=9. #### 9

Operations are ``+`` and ``-`` (operands in ``add_range``), ``*`` (factors in
``mul_range``) and ``/`` (divisors in ``mul_range`` that divide the count
exactly). Every intermediate count is an integer in ``[1, max_value]``; an
operation that cannot keep it there is not drawn at that step (the other
operations of the config are). Names, pronouns, objects and sentence templates
are drawn uniformly. Everything is drawn from a ``numpy.random.Generator`` in a
fixed order, so a seed fixes the problems.

**Held-out split.** :func:`is_held_out` puts one question text in
:data:`HELD_OUT_MODULUS` (by a stable hash of the text) in the held-out part.
Pretraining only ever sees questions outside it; the hard questions are drawn
inside it, so no question is ever seen in pretraining (by construction, not by
luck).

**Prompt format.** The model reads ``<bos>`` + question + ``"\\n"`` and writes the
worked solution then ``<eos>`` (:func:`prompt_ids`, :func:`completion_ids`).

**Answer extraction** (:func:`extract_answer`; shared with GSM8K-style
recipes on real checkpoints). A *number* is an optional minus sign (``-`` or
``\\u2212``, only where not preceded by a letter, digit or ``)``, so ``12-3``
holds the numbers 12 and 3), then digits, either plain (``1234``) or grouped in
threes by commas (``1,234``; a comma not followed by exactly three digits ends
the number), then an optional fraction ``.digits`` (a trailing period is not
part of the number: ``9.`` is 9). Numbers are exact :class:`fractions.Fraction`
values, so ``3.0 == 3`` and ``0.1 + 0.2 == 0.3``. The answer of a text is:

1. if it contains ``####``: the first number after the last ``####``
   (no number there: no answer);
2. else (unless ``require_marker``) if it contains ``the answer is``
   (case-insensitive): the first number after the last occurrence (none
   there: no answer);
3. else (unless ``require_marker``) the last number of the text;
4. else no answer (``None``), which is graded wrong.

The synthetic task grades with ``require_marker=True`` (the model is trained
to end with ``#### <answer>``); :func:`is_correct` compares exactly.

Example:
  >>> import numpy as np
  >>> from banel_jax.tasks import word_problems as wp
  >>> p = wp.generate_problem(np.random.default_rng(0), wp.ProblemConfig(max_steps=2))
  >>> wp.check_worked_solution(p.solution, p.answer)
  True
  >>> wp.extract_answer("So she has 12. #### 1,234.")
  Fraction(1234, 1)
  >>> wp.extract_answer("The answer is -5.")
  Fraction(-5, 1)
  >>> wp.is_correct("7+5=12. 12-3=9. #### 9", 9)
  True
  >>> wp.is_correct("7+5=12. 12-3=9.", 9)  # no '####': no answer
  False
"""

from __future__ import annotations

import dataclasses
import fractions
import hashlib
import json
import os
import pathlib
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

# ----------------------------------------------------------------------------
# Templates.

# (name, subject pronoun, object pronoun)
NAMES = (("Ann", "she", "her"), ("Bo", "he", "him"), ("Cy", "he", "him"),
         ("Dee", "she", "her"), ("Eli", "he", "him"), ("Fay", "she", "her"),
         ("Gus", "he", "him"), ("Ivy", "she", "her"), ("Max", "he", "him"),
         ("Liz", "she", "her"), ("Tom", "he", "him"), ("Zoe", "she", "her"))
OBJECTS = ("pens", "apples", "coins", "cards", "stamps", "marbles", "books",
           "shells", "eggs", "beads")

# Placeholders: {name}, {obj}, {n}; in step templates also {P} (the subject
# pronoun, capitalised when it opens the sentence), {him} (object pronoun) and
# {other} (another name).
OPENINGS = ("{name} has {n} {obj}.", "{name} starts with {n} {obj}.",
            "{name} owns {n} {obj}.")
STEP_TEMPLATES = {
    "+": ("{P} buys {n} more.", "{P} finds {n} more {obj}.",
          "{other} gives {him} {n} {obj}.", "{P} gets {n} more from {other}."),
    "-": ("{P} gives {n} to {other}.", "{P} loses {n} of them.",
          "{P} sells {n} {obj}.", "{other} takes {n} {obj} from {him}."),
    "*": ("{P} then has {n} times as many.", "{P} makes the pile {n} times as big."),
    "/": ("{P} splits them into {n} equal piles and keeps one.",
          "{P} keeps one of {n} equal shares."),
}
QUESTIONS = ("How many {obj} does {name} have now?", "How many {obj} does {name} have?")
THEN_PROBABILITY = 0.5  # a step after the first opens with "Then " this often

OPERATIONS = ("+", "-", "*", "/")

# One question text in this many is held out of pretraining (see is_held_out).
HELD_OUT_MODULUS = 16

ASSET_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "reasoning"
QUESTIONS_FILE = "questions.jsonl"


@dataclasses.dataclass(frozen=True)
class ProblemConfig:
  """A distribution of word problems (frozen and hashable).

  Attributes:
    min_steps: fewest operations of a problem (>= 1).
    max_steps: most operations (the count is uniform in ``[min_steps, max_steps]``).
    ops: the operations that may be drawn, a subset of ``+ - * /``.
    start_range: the initial count, uniform in ``[lo, hi]`` (inclusive).
    add_range: operands of ``+`` and ``-``, uniform in ``[lo, hi]`` among those
      that keep the count in ``[1, max_value]``.
    mul_range: factors of ``*`` and divisors of ``/``, uniform in ``[lo, hi]``
      among those that keep the count an integer in ``[1, max_value]``.
    max_value: the largest count allowed at any step.
  """

  min_steps: int = 1
  max_steps: int = 4
  ops: tuple[str, ...] = OPERATIONS
  start_range: tuple[int, int] = (2, 30)
  add_range: tuple[int, int] = (1, 20)
  mul_range: tuple[int, int] = (2, 5)
  max_value: int = 200

  def __post_init__(self):
    if not 1 <= self.min_steps <= self.max_steps:
      raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, "
                       f"{self.max_steps}")
    if not self.ops or any(op not in OPERATIONS for op in self.ops) \
        or len(set(self.ops)) != len(self.ops):
      raise ValueError(f"ops must be distinct operations among {OPERATIONS}, got "
                       f"{self.ops!r}")
    for name in ("start_range", "add_range", "mul_range"):
      lo, hi = getattr(self, name)
      if not 1 <= lo <= hi:
        raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi, got "
                         f"{getattr(self, name)!r}")
    if self.mul_range[0] < 2:
      raise ValueError(f"mul_range must start at >= 2, got {self.mul_range!r}")
    if self.start_range[1] > self.max_value:
      raise ValueError(f"start_range {self.start_range!r} exceeds max_value="
                       f"{self.max_value}")

  def replace(self, **kwargs) -> "ProblemConfig":
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d: dict) -> "ProblemConfig":
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class Problem(NamedTuple):
  """One word problem.

  Attributes:
    question: the question text.
    solution: the worked solution (``"7+5=12. 12-3=9. #### 9"``).
    answer: the final count.
    steps: the number of operations.
    ops: the operations in order (``("+", "-")``).
    numbers: the initial count then each operation's operand.
  """

  question: str
  solution: str
  answer: int
  steps: int
  ops: tuple[str, ...]
  numbers: tuple[int, ...]


def _apply(op: str, a: int, b: int) -> int:
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  if op == "*":
    return a * b
  return a // b


def _operands(op: str, value: int, config: ProblemConfig) -> list[int]:
  """The operands of ``op`` that keep ``value`` an integer in [1, max_value]."""
  if op in "+-":
    lo, hi = config.add_range
    if op == "+":
      hi = min(hi, config.max_value - value)
    else:
      hi = min(hi, value - 1)
    return list(range(lo, hi + 1))
  lo, hi = config.mul_range
  if op == "*":
    return [f for f in range(lo, hi + 1) if value * f <= config.max_value]
  return [d for d in range(lo, hi + 1) if value % d == 0]


def _pick(rng: np.random.Generator, options: Sequence):
  return options[int(rng.integers(len(options)))]


def generate_problem(rng: np.random.Generator, config: ProblemConfig = ProblemConfig()
                     ) -> Problem:
  """One problem of ``config`` drawn with ``rng`` (see the module doc).

  Args:
    rng: the generator (advanced by the draw).
    config: the distribution.

  Returns:
    The :class:`Problem`.
  """
  name, pronoun, him = NAMES[int(rng.integers(len(NAMES)))]
  others = [n for n, _, _ in NAMES if n != name]
  obj = _pick(rng, OBJECTS)
  steps = int(rng.integers(config.min_steps, config.max_steps + 1))
  value = int(rng.integers(config.start_range[0], config.start_range[1] + 1))
  sentences = [_pick(rng, OPENINGS).format(name=name, n=value, obj=obj)]
  equations, ops, numbers = [], [], [value]
  for i in range(steps):
    feasible = [(op, cands) for op in config.ops
                if (cands := _operands(op, value, config))]
    if not feasible:  # e.g. only "*" at max_value: cannot happen with "+" and "-"
      raise ValueError(f"no operation of {config.ops!r} can follow the count "
                       f"{value} within max_value={config.max_value}")
    op, cands = feasible[int(rng.integers(len(feasible)))]
    n = int(_pick(rng, cands))
    then = i > 0 and rng.random() < THEN_PROBABILITY
    text = _pick(rng, STEP_TEMPLATES[op]).format(
        P=pronoun if then else pronoun.capitalize(), him=him, n=n, obj=obj,
        other=_pick(rng, others))
    sentences.append(("Then " + text) if then else text)
    new = _apply(op, value, n)
    equations.append(f"{value}{op}{n}={new}.")
    ops.append(op)
    numbers.append(n)
    value = new
  sentences.append(_pick(rng, QUESTIONS).format(name=name, obj=obj))
  solution = " ".join(equations) + f" #### {value}"
  return Problem(" ".join(sentences), solution, value, steps, tuple(ops),
                 tuple(numbers))


def is_held_out(question: str) -> bool:
  """Whether ``question`` is in the held-out part (never used in pretraining).

  A stable hash (BLAKE2b of the UTF-8 text) modulo :data:`HELD_OUT_MODULUS`
  is 0: the same on every machine and Python version.
  """
  digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") % HELD_OUT_MODULUS == 0


def generate_problems(rng: np.random.Generator | int, n: int,
                      config: ProblemConfig = ProblemConfig(), *,
                      held_out: bool | None = None) -> list[Problem]:
  """``n`` problems of ``config``, optionally one side of the held-out split.

  Args:
    rng: a generator or a seed.
    n: how many problems.
    config: the distribution.
    held_out: ``None``: any problem; ``False``: only problems outside the
      held-out part (pretraining data); ``True``: only held-out problems.
      Problems on the other side are drawn and skipped (rejection).

  Returns:
    The problems, in draw order.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"n must be a non-negative int, got {n!r}")
  rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
  out = []
  while len(out) < n:
    p = generate_problem(rng, config)
    if held_out is None or is_held_out(p.question) == held_out:
      out.append(p)
  return out


# ----------------------------------------------------------------------------
# Answer extraction and grading.

_MINUS = "-\u2212"
_NUMBER = re.compile(r"(?:(?<![A-Za-z0-9)])([" + _MINUS + r"]))?"  # sign
                     r"(?<![0-9])(\d{1,3}(?:,\d{3})+(?![0-9])|\d+)"  # integer part
                     r"(\.\d+)?")  # fraction
_MARKER = "####"
_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


def _numbers(text: str) -> list[fractions.Fraction]:
  out = []
  for m in _NUMBER.finditer(text):
    value = fractions.Fraction(m.group(2).replace(",", "") + (m.group(3) or ""))
    out.append(-value if m.group(1) else value)
  return out


def parse_number(text: str) -> fractions.Fraction:
  """The exact value of one number written as in the module doc.

  >>> parse_number("1,234.50")
  Fraction(2469, 2)

  Raises:
    ValueError: ``text`` (stripped) is not exactly one number.
  """
  s = str(text).strip()
  m = _NUMBER.fullmatch(s)
  if m is None:
    raise ValueError(f"not a number: {text!r}")
  return _numbers(s)[0]


def extract_answer(text: str, *, require_marker: bool = False
                   ) -> fractions.Fraction | None:
  """The final numeric answer of a completion, or ``None`` (see the module doc).

  Args:
    text: the completion text.
    require_marker: only an answer after ``####`` counts (rule 1 alone).

  Returns:
    The answer as an exact :class:`fractions.Fraction`, or ``None`` when the
    text has no answer under the rules.
  """
  if _MARKER in text:
    found = _numbers(text[text.rindex(_MARKER) + len(_MARKER):])
    return found[0] if found else None
  if require_marker:
    return None
  said = list(_ANSWER_IS.finditer(text))
  if said:
    found = _numbers(text[said[-1].end():])
    return found[0] if found else None
  found = _numbers(text)
  return found[-1] if found else None


def _as_fraction(answer) -> fractions.Fraction:
  if isinstance(answer, fractions.Fraction):
    return answer
  if isinstance(answer, (bool, np.bool_)):
    raise ValueError(f"answer must be a number, got {answer!r}")
  if isinstance(answer, (int, np.integer)):
    return fractions.Fraction(int(answer))
  if isinstance(answer, str):
    return parse_number(answer)
  if isinstance(answer, (float, np.floating)) and np.isfinite(answer):
    return fractions.Fraction(str(float(answer)))
  raise ValueError(f"answer must be a finite number or a number string, got "
                   f"{answer!r}")


def is_correct(text: str, answer, *, require_marker: bool = True) -> bool:
  """Whether the completion ``text`` states ``answer`` exactly.

  Args:
    text: the completion.
    answer: the reference (an int, a float written exactly by its shortest
      repr, a :class:`fractions.Fraction`, or a number string such as
      ``"1,234"``).
    require_marker: passed to :func:`extract_answer` (True: the answer must
      follow ``####``, the synthetic task's format).

  Returns:
    True iff an answer is extracted and equals ``answer``.
  """
  ref = _as_fraction(answer)
  got = extract_answer(text, require_marker=require_marker)
  return got is not None and got == ref


_EQUATION = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def check_worked_solution(text: str, answer=None) -> bool:
  """Whether a worked solution is arithmetically right and well chained.

  Every ``a<op>b=c`` equation must be exact (integer division exact), each
  equation after the first must start from the previous result, and the
  ``####`` answer must equal the last result (and ``answer``, if given).

  Args:
    text: a solution such as ``"7+5=12. 12-3=9. #### 9"``.
    answer: the expected final answer, or None.

  Returns:
    True iff all the checks pass (False for a text with no equation).
  """
  eqs = _EQUATION.findall(text.split(_MARKER)[0])
  if not eqs:
    return False
  prev = None
  for a, op, b, c in eqs:
    a, b, c = int(a), int(b), int(c)
    if prev is not None and a != prev:
      return False
    if op == "/" and (b == 0 or a % b):
      return False
    if _apply(op, a, b) != c:
      return False
    prev = c
  final = extract_answer(text, require_marker=True)
  if final is None or final != prev:
    return False
  return answer is None or final == _as_fraction(answer)


# ----------------------------------------------------------------------------
# Tokenizer: whole template words, single digits, single characters.

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_EXTRA_WORDS = ("The", "answer", "is", "So", "left")


def tokenizer_words() -> tuple[str, ...]:
  """The whole-word tokens: every word of the templates, names, pronouns
  (also capitalised) and objects, and a few answer words (sorted)."""
  texts = list(OPENINGS) + list(QUESTIONS) + [t for ts in STEP_TEMPLATES.values()
                                               for t in ts]
  words = set(_EXTRA_WORDS) | set(OBJECTS) | {"Then"}
  for t in texts:
    words.update(re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]*\}", " ", t)))
  for name, pronoun, him in NAMES:
    words.update((name, pronoun, pronoun.capitalize(), him))
  return tuple(sorted(w for w in words if len(w) > 1))


def tokenizer_vocab() -> dict[str, int]:
  """``{token: id}``: the specials, ``\\n`` and printable ASCII, space-digits
  (``" 7"``), ``####`` and ``" ####"``, then the words with and without a
  leading space."""
  tokens = list(SPECIAL_TOKENS) + ["\n"] + [chr(c) for c in range(32, 127)]
  tokens += [" " + d for d in "0123456789"] + [_MARKER, " " + _MARKER]
  for w in tokenizer_words():
    tokens += [w, " " + w]
  return {t: i for i, t in enumerate(tokens)}


def _split_pattern() -> str:
  words = sorted(tokenizer_words(), key=lambda w: (-len(w), w))
  word = "(?:" + "|".join(words) + ")"
  return (r" ?####|(?: |(?<![A-Za-z]))" + word + r"(?![A-Za-z])| ?[0-9]|[\s\S]")


def build_tokenizer():
  """The task's ``tokenizers.Tokenizer`` (save it with ``.save(path)``).

  Text is split into ``####`` or `` ####``, known words with an optional
  leading space, a digit with an optional leading space, or else one character
  (each a token; a character outside ``\\n`` and printable ASCII is
  ``<unk>``). Decoding concatenates the tokens, so ``decode(encode(t)) == t``
  for such text. Nothing is added at encoding: :func:`prompt_ids` adds
  ``<bos>``, :func:`completion_ids` ``<eos>``.
  """
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  tok = tokenizers.Tokenizer(models.WordLevel(tokenizer_vocab(), unk_token=UNK_TOKEN))
  tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(_split_pattern()),
                                           behavior="isolated")
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  return tok


def prompt_text(question: str) -> str:
  """The text the model reads: the question then a newline."""
  return question + "\n"


def prompt_ids(tokenizer, question: str) -> list[int]:
  """``<bos>`` and the tokens of :func:`prompt_text` (the sampler's prompt)."""
  return [BOS_ID] + tokenizer.encode(prompt_text(question),
                                     add_special_tokens=False).ids


def completion_ids(tokenizer, solution: str) -> list[int]:
  """The tokens of a solution then ``<eos>`` (what the model should write)."""
  return tokenizer.encode(solution, add_special_tokens=False).ids + [EOS_ID]


def decode_completions(tokenizer, x) -> list[str]:
  """Texts of completions ``int[n, C]``, each up to its first ``<eos>``."""
  x = np.asarray(x)
  rows = []
  for row in x.tolist():
    rows.append(row[:row.index(EOS_ID)] if EOS_ID in row else row)
  return tokenizer.decode_batch(rows, skip_special_tokens=True)


def score_completions(tokenizer, x, answer) -> np.ndarray:
  """``bool[n]``: completion rows ``int[n, C]`` that state ``answer`` after
  ``####`` (a completion without ``<eos>`` is graded on its ``C`` tokens)."""
  return np.array([is_correct(t, answer) for t in decode_completions(tokenizer, x)],
                  bool)


def make_question_model(decoder, tokenizer, question: str, max_new_tokens: int,
                        **kwargs):
  """``p(completion | question)`` as a :class:`~banel_jax.models.hf.PromptedModel`.

  The prompt is :func:`prompt_ids`; a completion stops at ``<eos>`` and is
  padded with ``<pad>`` (its ``.model`` is the
  :class:`~banel_jax.GenerativeModel` to post-train; grade its samples with
  :func:`score_completions`).

  Args:
    decoder: a :class:`~banel_jax.models.hf.Decoder` (e.g. of :func:`load_model`).
    tokenizer: the task's tokenizer.
    question: the question text.
    max_new_tokens: completion length (e.g. a question's ``max_new_tokens``).
    **kwargs: passed to :func:`~banel_jax.models.hf.make_prompted_model`
      (``temperature``, ``logit_chunk``).
  """
  from banel_jax.models import hf  # pylint: disable=import-outside-toplevel
  return hf.make_prompted_model(decoder, prompt_ids(tokenizer, question), max_new_tokens,
                                end_ids=[EOS_ID], pad_id=PAD_ID, **kwargs)


# ----------------------------------------------------------------------------
# Shipped assets.


def load_model(path: str | os.PathLike = ASSET_DIR, dtype: Any = None):
  """``(decoder, params, tokenizer)`` of the shipped (or another) checkpoint.

  Args:
    path: a checkpoint directory written by the pretraining.
    dtype: parameter dtype (default float32).
  """
  from banel_jax.models import hf  # pylint: disable=import-outside-toplevel
  kwargs = {} if dtype is None else {"dtype": dtype}
  decoder, params = hf.load_pretrained(path, **kwargs)
  return decoder, params, hf.load_tokenizer(path)


def load_questions(path: str | os.PathLike = ASSET_DIR / QUESTIONS_FILE) -> list[dict]:
  """The screened hard questions: one dict per line of ``questions.jsonl``.

  Each has ``id``, ``question``, ``prompt`` (the text fed after ``<bos>``),
  ``answer``, ``steps``, and the measured ``rate``, ``successes``, ``samples``
  and 95% Clopper-Pearson ``interval``.
  """
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
  from banel_jax.tasks.word_problems_pretrain import main  # pylint: disable=import-outside-toplevel
  main()
