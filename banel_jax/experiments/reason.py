"""The paper's reasoning experiment: per-question runs on a local decoder.

``banel reason --model-dir DIR --questions FILE.jsonl`` runs the GSM8K-style
recipe on any local Llama, Qwen2 or GPT-2 checkpoint (``config.json``,
safetensors weights, ``tokenizer.json``) and a JSON-lines file of questions
with numeric answers. For each question:

* **Prompt.** The question's ``prompt`` field if it has one, else
  ``prompt_template`` with ``{question}`` replaced by the question; encoded by
  the checkpoint's tokenizer, with the checkpoint's BOS id in front
  (``add_bos``, unless the tokenizer put it there already). The generator is
  ``p(completion | prompt)`` over ``max_new_tokens`` tokens at
  ``temperature`` (:func:`banel_jax.models.hf.make_prompted_model`).
* **Oracle.** A completion is decoded up to its first end token and graded by
  :func:`banel_jax.tasks.word_problems.is_correct`: 1 for the right final
  numeric answer (after ``####`` when ``require_marker``; otherwise also after
  "the answer is", else the last number), else 0 (:func:`text_oracle`,
  :func:`answer_oracle`).
* **Pretrained rate.** One figure per question, measured on
  ``pretrained_samples`` fresh samples, or read from the questions file when
  its line carries ``successes`` and ``samples`` measured on at least that
  many (the summary's ``pretrained_source`` says which). Every improvement
  factor of the question divides by it.
* **Methods**, each for ``seeds`` side by side at the same NRE budget, samples
  per round and evaluation: ``banel_paper`` (the paper's algorithm,
  :meth:`BanelConfig.paper`, at a learning rate for a pretrained decoder:
  :data:`LM_LEARNING_RATE` instead of the toys' 0.1; :func:`lm_banel`),
  ``banel_default`` (the library's defaults, the negatives-only settings
  the suite tuned, ``banel_jax.experiments.suite.TUNED``, their learning
  rates scaled by the same factor against the paper's), ``rnd`` (REINFORCE with a
  random-network-distillation bonus on a fixed random embedding of the
  completion's tokens) and ``nsr`` (negative-sample reinforcement,
  :mod:`banel_jax.baselines.nsr`, token-level loss). None learns from a
  successful sample. With ``--lora-rank r`` the BaNEL methods train rank-r
  LoRA adapters of the attention projections over the frozen checkpoint
  (:mod:`banel_jax.models.lora`), so a region stores two adapters instead of
  two copies of the decoder; RND and NSR keep one copy and train it whole.
* **Final rate.** Each seed's final generator on ``final_eval_samples`` fresh
  samples (counted apart from the NRE, like every evaluation).

When the pretrained measurement holds no success, the question's
``pretrained_rate`` is the measurement's 95% upper bound (flagged
``pretrained_rate_is_upper_bound``), so its improvement factors are lower
bounds.

Writes to ``--out``: ``summary.json`` (the canonical form, one task
``reasoning_<id>`` per question), ``reason.json`` (every run's per-round
history), ``table.md`` (also printed), ``success_vs_nre.png`` (per question:
median over seeds against NRE, band from the lowest to the highest seed) and
``README.md``. Every (question, method) runs in ``RUN_DIR/<id>/<method>``
(default ``OUT/runs``), the pretrained measurement in
``RUN_DIR/<id>/pretrained.json``: a stopped run resumes where it stopped, and
a finished one is loaded rather than rerun.

Questions file: one JSON object per line (blank lines skipped) with
``question`` (text) and ``answer`` (a number, or a number string such as
``"1,234"``); optional ``id`` (letters, digits, ``_ . -``; default the line
number), ``prompt`` (the full prompt text, replacing the template), and a
measured pretrained rate as ``successes`` and ``samples`` (optionally
``rate``, which must equal their ratio, and ``max_new_tokens`` and
``temperature``, the settings it was measured at: a rate measured at other
settings than the run's is measured again).

Presets: ``default`` (the package's small reasoning decoder and its hard
questions in ``banel_jax/assets/reasoning``; 3 seeds, NRE 7,500), ``cpu``
(the committed table: four of those questions, NRE 1,000, BaNEL's fits cut
to what 2 CPU cores run in about 2 hours), ``tiny`` (a
tiny random Llama written to ``OUT/tiny_checkpoint``, one of its two
questions, 2 seeds, NRE 80: a smoke test of a minute or two, mostly
compilation) and ``gsm8k`` (the recipe for a GPU: a
local instruct checkpoint such as Qwen2.5-0.5B-Instruct, named with
``--model-dir``, and GSM8K questions, bfloat16, 256 new tokens, BaNEL on
rank-8 LoRA adapters: ``--lora-rank``).

Examples:
  banel reason                                            # the package's decoder
  banel reason --preset tiny                              # smoke test
  banel reason --preset cpu --run-dir runs/reasoning --out results/reasoning
  banel reason --preset gsm8k --model-dir ckpt/Qwen2.5-0.5B-Instruct \\
      --questions gsm8k_hard.jsonl --out results/reasoning_gsm8k
  banel reason --methods banel_paper nsr --seeds 0 1 --nre-budget 2000
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import time
import types
from typing import Any, Callable, Literal, NamedTuple, Sequence, get_args

import numpy as np

from banel_jax.baselines import NSRConfig, PolicyGradientConfig, RNDConfig, RunConfig
from banel_jax.core.config import BanelConfig, config_to_dict, jsonable
from banel_jax.experiments import common, harness
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)
from banel_jax.experiments.suite import with_tuned_defaults
from banel_jax.tasks import word_problems

MethodId = Literal["banel_paper", "banel_default", "rnd", "nsr"]
METHODS: tuple[str, ...] = get_args(MethodId)
LABELS = {"banel_paper": "BaNEL (paper)",
          "banel_default": "BaNEL defaults (suite-tuned, failures only)",
          "rnd": "RND", "nsr": "NSR (negative samples only)"}
USES_SUCCESSES: frozenset[str] = frozenset()  # none of the methods learns from one
BANEL_METHODS = ("banel_paper", "banel_default")  # what --lora-rank applies to
# the config sections each method reads (recorded and compared on resume)
SECTIONS = {"banel_paper": ("banel_paper",), "banel_default": ("banel_default",),
            "rnd": ("rnd", "rnd_bonus", "rnd_embed_dim"), "nsr": ("nsr",)}

SHIPPED_MODEL = "reasoning"  # banel_jax/assets/reasoning
TINY_MODEL = "tiny-random"  # written to OUT/tiny_checkpoint by the run
QUESTIONS_FILE = "questions.jsonl"
TASK_PREFIX = "reasoning_"
DEFAULT_TEMPLATE = "{question}\n"
# A chat prompt for instruct checkpoints of the Qwen2 family (the gsm8k preset).
CHAT_TEMPLATE = ("<|im_start|>user\n{question}\nReason step by step, then write the "
                 "final answer as: The answer is <number>.<|im_end|>\n"
                 "<|im_start|>assistant\n")
# Fields of a questions file's line that say at what its rate was measured; a
# rate measured at other settings than the run's is measured again.
MEASUREMENT_CONDITIONS = ("max_new_tokens", "temperature")
PRETRAINED_KEY = 10_000
FINAL_EVAL_KEY = 30_000
LORA_INIT_KEY = 0  # the adapters' random ``a`` (``b = 0``: the checkpoint exactly)

# Adam's learning rate of both BaNEL fits on a pretrained decoder: the paper's
# 0.1 (BanelConfig.paper) is a toy's free logits' rate and wrecks a decoder.
LM_LEARNING_RATE = 1e-4


def lm_banel(defaults: bool = False, learning_rate: float = LM_LEARNING_RATE,
             **changes) -> BanelConfig:
  """BaNEL's config for a pretrained decoder.

  :meth:`BanelConfig.paper` with Adam at ``learning_rate`` for both fits, one
  region at a time (``region_strategy="loop"``) and microbatched steps on a
  CPU; with ``defaults``, the library's defaults on top (the suite's tuned
  changes, ``banel_jax.experiments.suite.TUNED``), their learning rates
  scaled by the same factor against the paper's (0.03 against 0.1: 0.3 x
  ``learning_rate``). Then ``changes``.

  >>> lm_banel(defaults=True).distill_reset, lm_banel(defaults=True).filter_factor
  (True, 1.2)
  >>> round(lm_banel(defaults=True, learning_rate=1e-5).failure_learning_rate, 12)
  3e-06
  """
  base = BanelConfig.paper(failure_learning_rate=learning_rate,
                           distill_learning_rate=learning_rate,
                           region_strategy="loop", train_microbatch="auto")
  if defaults:
    base = with_tuned_defaults(base)
  return base.replace(**changes)


@dataclasses.dataclass(frozen=True)
class ReasonConfig:
  """The reasoning experiment: checkpoint, questions, methods, budget.

  Attributes:
    model_dir: the checkpoint directory; ``reasoning``: the package's own
      (``banel_jax/assets/reasoning``); ``tiny-random``: a tiny random Llama
      written to ``OUT/tiny_checkpoint`` (smoke tests).
    questions: the questions file (JSON lines, see the module doc); empty:
      ``questions.jsonl`` in the checkpoint directory.
    question_ids: run only these questions (by id); empty: every question.
    prompt_template: the prompt of a question without a ``prompt`` field;
      ``{question}`` is replaced by its text.
    add_bos: put the checkpoint's BOS id (``config.json``) before the prompt
      unless the tokenizer did.
    require_marker: grade only an answer written after ``####`` (the
      package's decoder is trained to end so); otherwise also after "the
      answer is", else the last number of the completion.
    max_new_tokens: completion length (static; a completion ends at its first
      end token, the rest is padding). 64: the length the package's
      questions were measured at.
    temperature: sampling temperature (the distribution every method
      samples, scores and learns).
    dtype: parameter dtype of the decoder.
    methods: method ids (:data:`METHODS`).
    seeds: seeds, run side by side.
    nre_budget: reward evaluations spent on learning, per seed and question.
    samples_per_round: samples drawn and scored per round (``m``).
    n_eval: fresh samples per evaluation during a run (the curves and the
      best-so-far rate); counted apart from the NRE.
    eval_every: evaluate every this many rounds (and after the last one).
    final_eval_samples: fresh samples per seed that measure the final rate.
    pretrained_samples: samples that measure a question's pretrained rate
      (a measurement in the questions file on at least as many is used).
    sample_chunk: samples drawn at once in the pretrained and final
      measurements (a memory setting; the streams depend on it).
    banel_paper: BaNEL (paper)'s settings; its run fields (budget, ``m``,
      evaluation) come from the fields above.
    banel_default: BaNEL with the library's defaults, the suite's tuned
      settings (:func:`lm_banel` with ``defaults=True``).
    rnd: RND's policy update.
    rnd_bonus: RND's bonus networks.
    rnd_embed_dim: width of the fixed random embedding of each completion
      token that RND reads (its features are the completion's embeddings,
      flattened).
    lora_rank: 0: the BaNEL methods train every parameter of the decoder
      (each region stores two full copies); ``r >= 1``: they train rank-``r``
      LoRA adapters of its attention projections over the frozen checkpoint
      (:func:`banel_jax.models.lora.lora_model`; a region stores two
      adapters). RND and NSR always train every parameter: they keep one
      copy, no regions.
    nsr: NSR's update.
    run_dir: where every (question, method) runs, resumably; ``None``:
      ``OUT/runs``.
  """

  model_dir: str = SHIPPED_MODEL
  questions: str = ""
  question_ids: tuple[str, ...] = ()
  prompt_template: str = DEFAULT_TEMPLATE
  add_bos: bool = True
  require_marker: bool = True
  max_new_tokens: int = 64
  temperature: float = 1.0
  dtype: Literal["float32", "bfloat16"] = "float32"
  methods: tuple[MethodId, ...] = METHODS
  seeds: tuple[int, ...] = (0, 1, 2)
  nre_budget: int = 7500
  samples_per_round: int = 500
  n_eval: int = 2000
  eval_every: int = 3
  final_eval_samples: int = 20_000
  pretrained_samples: int = 20_000
  sample_chunk: int = 2000
  banel_paper: BanelConfig = lm_banel()
  banel_default: BanelConfig = lm_banel(defaults=True)
  rnd: PolicyGradientConfig = PolicyGradientConfig(learning_rate=1e-5,
                                                   kl_weight=0.0,
                                                   train_microbatch="auto")
  rnd_bonus: RNDConfig = RNDConfig(init_samples=512)
  rnd_embed_dim: int = 8
  lora_rank: int = 0
  nsr: NSRConfig = NSRConfig(aggregation="token", learning_rate=1e-5, steps=4,
                             train_microbatch="auto")
  run_dir: str | None = None

  def __post_init__(self):
    name = "ReasonConfig"
    if not isinstance(self.methods, tuple) or not self.methods:
      raise ExperimentError(f"{name}.methods={self.methods!r} must name at least "
                            "one method")
    unknown = [m for m in self.methods if m not in METHODS]
    if unknown:
      raise ExperimentError(f"{name}.methods: {unknown} unknown; choose from "
                            f"{', '.join(METHODS)}")
    if len(set(self.methods)) != len(self.methods):
      raise ExperimentError(f"{name}.methods={self.methods!r} names one twice")
    common.check_seeds(name, "seeds", self.seeds)
    for field in ("max_new_tokens", "nre_budget", "samples_per_round", "n_eval",
                  "eval_every", "final_eval_samples", "pretrained_samples",
                  "sample_chunk", "rnd_embed_dim"):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ExperimentError(f"{name}.{field}={v!r} must be an integer >= 1")
    r = self.lora_rank
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
      raise ExperimentError(f"{name}.lora_rank={r!r} must be an integer >= 0 (0: "
                            "no adapters)")
    t = self.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) \
        or not math.isfinite(t) or t <= 0:
      raise ExperimentError(f"{name}.temperature={t!r} must be a finite number > 0")
    if self.dtype not in ("float32", "bfloat16"):
      raise ExperimentError(f"{name}.dtype={self.dtype!r} must be float32 or "
                            "bfloat16")
    if "{question}" not in self.prompt_template:
      raise ExperimentError(f"{name}.prompt_template={self.prompt_template!r} "
                            "must contain {question}")
    if not isinstance(self.question_ids, tuple):
      raise ExperimentError(f"{name}.question_ids must be a tuple")

  def replace(self, **changes) -> "ReasonConfig":
    return dataclasses.replace(self, **changes)


def default_config() -> ReasonConfig:
  """The package's reasoning decoder and its questions: 3 seeds, NRE 7,500."""
  return ReasonConfig()


def tiny_config() -> ReasonConfig:
  """A tiny random Llama, one of its two questions, BaNEL (paper), RND and
  NSR for 2 seeds at NRE 80: a smoke test of a minute or two, mostly
  compilation."""
  small = dict(failure_epochs=2, failure_batch_size=20, distill_samples=64,
               distill_epochs=1, distill_batch_size=32, calibration_samples=64,
               train_microbatch=0)
  return ReasonConfig(
      model_dir=TINY_MODEL, question_ids=("pens",), require_marker=False,
      max_new_tokens=6, methods=("banel_paper", "rnd", "nsr"), seeds=(0, 1),
      nre_budget=80, samples_per_round=40, n_eval=40, eval_every=1,
      final_eval_samples=400, pretrained_samples=1000, sample_chunk=500,
      banel_paper=lm_banel(learning_rate=1e-2, **small),
      banel_default=lm_banel(defaults=True, learning_rate=1e-2, **small),
      rnd=PolicyGradientConfig(learning_rate=1e-3, kl_weight=0.0, epochs=1,
                               num_minibatches=2),
      rnd_bonus=RNDConfig(hidden=(16, 16), output_dim=8, learning_rate=1e-3,
                          init_samples=64),
      rnd_embed_dim=4,
      nsr=NSRConfig(aggregation="token", learning_rate=1e-2, steps=2))


# The cpu preset's BaNEL fits: a round of the shipped decoder at the default
# preset's sizes takes minutes per seed on 2 CPU cores.
CPU_FITS = dict(failure_epochs=5, failure_batch_size=50, calibration_samples=256,
                distill_samples=512, distill_epochs=2, distill_batch_size=32)


def cpu_config() -> ReasonConfig:
  """The committed CPU table (``results/reasoning``): four of the shipped
  questions (the four with the highest pretrained rates, so that 5,000 final
  samples per seed hold a few successes), BaNEL defaults, RND and NSR, 3
  seeds, NRE 1,000 in rounds of 250, BaNEL's fits cut (:data:`CPU_FITS`);
  about 2 hours on 2 CPU cores."""
  return ReasonConfig(
      question_ids=("wp1", "wp3", "wp4", "wp5"),
      methods=("banel_default", "rnd", "nsr"), nre_budget=1000,
      samples_per_round=250, n_eval=500, eval_every=2, final_eval_samples=5000,
      banel_paper=lm_banel(**CPU_FITS),
      banel_default=lm_banel(defaults=True, **CPU_FITS))


def gsm8k_config() -> ReasonConfig:
  """The paper's setting on a GPU: a local instruct checkpoint (``--model-dir``
  must name it) and GSM8K questions (``--questions``), bfloat16, 256 new
  tokens, answers graded after "the answer is" (else the last number); BaNEL
  trains rank-8 LoRA adapters of the attention projections (a region of
  Qwen2.5-0.5B: 0.44% of the base)."""
  return ReasonConfig(
      model_dir="", prompt_template=CHAT_TEMPLATE, require_marker=False,
      max_new_tokens=256, dtype="bfloat16", samples_per_round=500, n_eval=2000,
      lora_rank=8,
      banel_paper=lm_banel(learning_rate=1e-5, train_microbatch=0),
      banel_default=lm_banel(defaults=True, learning_rate=1e-5, train_microbatch=0),
      rnd=PolicyGradientConfig(learning_rate=1e-6, kl_weight=0.0),
      nsr=NSRConfig(aggregation="token", learning_rate=1e-6, steps=4))


PRESETS = {"default": default_config, "cpu": cpu_config, "tiny": tiny_config,
           "gsm8k": gsm8k_config}


# ---------------------------------------------------------------------------
# Questions.

_ID = re.compile(r"[A-Za-z0-9_.-]+")


class Question(NamedTuple):
  """One question of a questions file.

  Attributes:
    id: its id (the ``id`` field, else the line number).
    question: the question text.
    answer: the reference answer as written (a number or a number string).
    prompt: the prompt text (the ``prompt`` field, else the template's).
    measured: ``{"successes", "samples", "rate"}`` of a pretrained rate
      measured elsewhere (the file's fields), or ``None``.
    line: its line in the file (1-based).
  """

  id: str
  question: str
  answer: Any
  prompt: str
  measured: dict | None
  line: int


def _count(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_question(record: Any, line: int, template: str = DEFAULT_TEMPLATE,
                   where: str = "questions") -> Question:
  """The :class:`Question` of one parsed line (see the module doc).

  Raises:
    ExperimentError: the message names ``where``, the line and the field.
  """
  at = f"{where} line {line}"
  if not isinstance(record, dict):
    raise ExperimentError(f"{at}: expected a JSON object with 'question' and "
                          f"'answer', got {type(record).__name__}")
  for field in ("question", "answer"):
    if field not in record:
      raise ExperimentError(f"{at}: missing field {field!r} (has "
                            f"{', '.join(sorted(record)) or 'no fields'})")
  text = record["question"]
  if not isinstance(text, str) or not text.strip():
    raise ExperimentError(f"{at}: 'question' must be a non-empty string")
  answer = record["answer"]
  try:
    if isinstance(answer, bool) or not isinstance(answer, (int, float, str)):
      raise ValueError
    if isinstance(answer, float) and not math.isfinite(answer):
      raise ValueError
    if isinstance(answer, str):
      word_problems.parse_number(answer)
  except ValueError:
    raise ExperimentError(f"{at}: 'answer' must be a number or a number string "
                          f"such as \"1,234\", got {answer!r}") from None
  qid = record.get("id", str(line))
  if isinstance(qid, bool) or not isinstance(qid, (str, int)) \
      or not _ID.fullmatch(str(qid)):
    raise ExperimentError(f"{at}: 'id' must be letters, digits, '_', '.' or '-', "
                          f"got {qid!r}")
  prompt = record.get("prompt")
  if prompt is None:
    prompt = template.replace("{question}", text)
  elif not isinstance(prompt, str) or not prompt:
    raise ExperimentError(f"{at}: 'prompt' must be a non-empty string")
  measured = None
  if any(k in record for k in ("rate", "successes", "samples")):
    s, n = record.get("successes"), record.get("samples")
    if not (_count(s) and _count(n) and n >= 1 and s <= n):
      raise ExperimentError(f"{at}: a measured rate needs 'successes' and 'samples' "
                            f"as integers with 0 <= successes <= samples and "
                            f"samples >= 1, got successes={s!r}, samples={n!r}")
    rate = record.get("rate", s / n)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
        or not math.isclose(rate, s / n, rel_tol=1e-6, abs_tol=1e-12):
      raise ExperimentError(f"{at}: 'rate'={rate!r} is not successes / samples = "
                            f"{s}/{n}")
    measured = {"successes": s, "samples": n, "rate": s / n}
    for field in MEASUREMENT_CONDITIONS:  # what the rate was measured at, if said
      if field in record:
        measured[field] = record[field]
  return Question(id=str(qid), question=text, answer=answer, prompt=prompt,
                  measured=measured, line=line)


def load_questions(path: str | os.PathLike, template: str = DEFAULT_TEMPLATE
                   ) -> list[Question]:
  """Every question of the JSON-lines file ``path`` (blank lines skipped).

  Raises:
    ExperimentError: no such file, an empty one, or a line that is not a
      question (the message names the line and what is wrong with it).

  >>> import os, tempfile
  >>> f = os.path.join(tempfile.mkdtemp(), "q.jsonl")
  >>> _ = open(f, "w").write('{"question": "2+2?", "answer": 4}\\n\\n{"id": "b"}\\n')
  >>> load_questions(f)
  Traceback (most recent call last):
  ...
  banel_jax.experiments.registry.ExperimentError: q.jsonl line 3: missing field 'question' (has id)
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ExperimentError(f"the questions file {str(path)!r} does not exist")
  out: list[Question] = []
  seen: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for i, text in enumerate(f, start=1):
      if not text.strip():
        continue
      try:
        record = json.loads(text)
      except json.JSONDecodeError as e:
        raise ExperimentError(f"{path.name} line {i}: not valid JSON ({e.msg} at "
                              f"column {e.colno})") from None
      q = parse_question(record, i, template, where=path.name)
      if q.id in seen:
        raise ExperimentError(f"{path.name} line {i}: id {q.id!r} is already the id "
                              f"of line {seen[q.id]}")
      seen[q.id] = i
      out.append(q)
  if not out:
    raise ExperimentError(f"the questions file {str(path)!r} holds no question")
  return out


# ---------------------------------------------------------------------------
# The checkpoint.

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def checkpoint_problems(path: pathlib.Path, need_questions: bool) -> list[str]:
  """What a checkpoint directory lacks for this experiment (empty: nothing)."""
  if not path.is_dir():
    return ["the directory itself"]
  weights = any((path / w).is_file() for w in _WEIGHTS) or any(
      path.glob("*.safetensors"))
  present = {"config.json": (path / "config.json").is_file(),
             "model.safetensors": weights,
             "tokenizer.json": (path / "tokenizer.json").is_file(),
             QUESTIONS_FILE: not need_questions or (path / QUESTIONS_FILE).is_file()}
  return [name for name, ok in present.items() if not ok]


def resolve_model_dir(config: ReasonConfig, out: pathlib.Path) -> pathlib.Path:
  """The checkpoint directory of ``config`` (the tiny one is written first).

  Raises:
    ExperimentError: no directory named, or one that lacks a file (named).
  """
  value = config.model_dir
  if value == TINY_MODEL:
    return write_tiny_checkpoint(out / "tiny_checkpoint")
  if not value:
    raise ExperimentError("this preset needs a checkpoint: pass --model-dir DIR (a "
                          "local Llama, Qwen2 or GPT-2 directory with config.json, "
                          "safetensors weights and tokenizer.json)")
  shipped = value == SHIPPED_MODEL
  path = common.ASSETS / SHIPPED_MODEL if shipped else pathlib.Path(value).expanduser()
  missing = checkpoint_problems(path, need_questions=shipped and not config.questions)
  if missing:
    if shipped:
      raise ExperimentError(
          f"the package's reasoning checkpoint (banel_jax/assets/{SHIPPED_MODEL}) "
          f"is not complete: missing {', '.join(missing)}. Pass --model-dir DIR "
          "--questions FILE.jsonl for another checkpoint, or --preset tiny")
    raise ExperimentError(f"checkpoint directory {value!r} lacks "
                          f"{', '.join(missing)} (a local Llama, Qwen2 or GPT-2 "
                          "checkpoint has config.json, model.safetensors or sharded "
                          "weights, and tokenizer.json)")
  return path


def questions_path(config: ReasonConfig, model_dir: pathlib.Path) -> pathlib.Path:
  """The questions file: ``config.questions``, else the checkpoint's own."""
  if config.questions:
    return pathlib.Path(config.questions).expanduser()
  return model_dir / QUESTIONS_FILE


def checkpoint_fingerprint(path: pathlib.Path) -> str:
  """A digest of a checkpoint's config, tokenizer and weight-file sizes: a
  resumed run refuses a directory that changed under it."""
  h = hashlib.sha256()
  for name in ("config.json", "generation_config.json", "tokenizer.json"):
    f = path / name
    if f.is_file():
      h.update(name.encode() + f.read_bytes())
  for f in sorted(path.glob("*.safetensors")):
    h.update(f"{f.name}:{f.stat().st_size}".encode())
  return h.hexdigest()[:16]


TINY_QUESTIONS = (
    {"id": "pens", "question": "Ann has 3 pens. She buys 4 more. How many pens "
     "does Ann have now?", "answer": 7},
    {"id": "coins", "question": "Bo has 9 coins. He gives 4 to Cy. How many coins "
     "does Bo have now?", "answer": 5},
)


def write_tiny_checkpoint(path: str | os.PathLike, seed: int = 0,
                          questions: Sequence[dict] = TINY_QUESTIONS) -> pathlib.Path:
  """Writes a tiny random Llama checkpoint with its questions; returns ``path``.

  ``config.json`` (one layer, width 16, grouped-query attention, tied
  embeddings), ``model.safetensors`` (numpy Gaussian weights of ``seed``:
  the same files for the same seed), the word-problem tokenizer
  (:func:`banel_jax.tasks.word_problems.build_tokenizer`) and
  ``questions.jsonl``. A smoke test's checkpoint: its completions are noise,
  some of which end on the right number.
  """
  from safetensors.numpy import save_file
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  tok = word_problems.build_tokenizer()
  v = tok.get_vocab_size()
  hidden, heads, kv_heads, head_dim, inter = 16, 2, 1, 8, 32
  config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": v, "hidden_size": hidden, "num_hidden_layers": 1,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": head_dim, "intermediate_size": inter,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "rope_theta": 10000.0, "tie_word_embeddings": True,
            "bos_token_id": word_problems.BOS_ID, "eos_token_id": word_problems.EOS_ID,
            "pad_token_id": word_problems.PAD_ID, "torch_dtype": "float32"}
  rng = np.random.default_rng(seed)

  def w(*shape, scale=0.2):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  p = "model.layers.0."
  tensors = {
      "model.embed_tokens.weight": w(v, hidden, scale=0.1),
      p + "self_attn.q_proj.weight": w(heads * head_dim, hidden),
      p + "self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
      p + "self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
      p + "self_attn.o_proj.weight": w(hidden, heads * head_dim),
      p + "mlp.gate_proj.weight": w(inter, hidden),
      p + "mlp.up_proj.weight": w(inter, hidden),
      p + "mlp.down_proj.weight": w(hidden, inter),
      p + "input_layernorm.weight": np.ones(hidden, np.float32),
      p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
      "model.norm.weight": np.ones(hidden, np.float32),
  }
  (path / "config.json").write_text(json.dumps(config, indent=1) + "\n")
  save_file(tensors, str(path / "model.safetensors"))
  tok.save(str(path / "tokenizer.json"))
  (path / QUESTIONS_FILE).write_text("".join(json.dumps(q) + "\n" for q in questions))
  return path


# ---------------------------------------------------------------------------
# The oracle over completions, and RND's features.


def decode_completions(tokenizer, x, end_ids: Sequence[int]) -> list[str]:
  """Texts of completions ``int[n, C]``, each decoded up to (not including)
  its first end token (all ``C`` tokens when it has none); special tokens
  are skipped."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"completions must be int[n, length], got shape {x.shape}")
  ends = np.isin(x, np.asarray(list(end_ids), np.int64)) if len(end_ids) else \
      np.zeros(x.shape, bool)
  stop = np.where(ends.any(axis=1), ends.argmax(axis=1), x.shape[1])
  rows = [row[:k] for row, k in zip(x.tolist(), stop.tolist())]
  return tokenizer.decode_batch(rows, skip_special_tokens=True)


def text_oracle(tokenizer, verify: Callable[[str], bool], end_ids: Sequence[int]
                ) -> Callable[[Any], np.ndarray]:
  """The package's oracle over completion token ids from a verifier of text.

  Args:
    tokenizer: a ``tokenizers.Tokenizer`` (e.g.
      :func:`banel_jax.models.hf.load_tokenizer`).
    verify: ``verify(text) -> bool``, True for a right completion.
    end_ids: the ids that end a completion (a prompted model's ``end_ids``).

  Returns:
    ``oracle(x int[n, C]) -> f32[n]``: 1.0 where ``verify`` accepts the
    completion's text (decoded up to its first end token), else 0.0.
  """
  end_ids = tuple(int(i) for i in end_ids)

  def oracle(x) -> np.ndarray:
    texts = decode_completions(tokenizer, x, end_ids)
    return np.fromiter((1.0 if verify(t) else 0.0 for t in texts), np.float32,
                       count=len(texts))

  return oracle


def answer_oracle(tokenizer, answer, end_ids: Sequence[int], *,
                  require_marker: bool = True) -> Callable[[Any], np.ndarray]:
  """:func:`text_oracle` of :func:`banel_jax.tasks.word_problems.is_correct`:
  1.0 for a completion whose final numeric answer equals ``answer``."""
  word_problems.parse_number(str(answer))  # a bad reference fails here, not later

  def verify(text: str) -> bool:
    return word_problems.is_correct(text, answer, require_marker=require_marker)

  return text_oracle(tokenizer, verify, end_ids)


def token_embedding_features(dim: int, seed: int = 0) -> Callable:
  """RND's featuriser for token completions: each token id's fixed random
  Gaussian embedding (``dim`` values, drawn from ``fold_in(key(seed), id)``,
  so no vocabulary-sized table), flattened: ``int[n, C] -> f32[n, C * dim]``.
  """
  import jax
  import jax.numpy as jnp

  def featurize(x):
    n = x.shape[0]
    root = jax.random.key(seed)
    flat = x.reshape(-1).astype(jnp.uint32)
    emb = jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(root, t), (dim,)))(
        flat)
    return emb.reshape(n, -1)

  return featurize


# ---------------------------------------------------------------------------
# One question.


class QuestionSetup(NamedTuple):
  """What the runs of one question share.

  Attributes:
    question: the :class:`Question`.
    prompt_ids: the prompt's token ids.
    gen: its :class:`~banel_jax.models.hf.PromptedModel`.
    oracle: the reward oracle over completions.
  """

  question: Question
  prompt_ids: list[int]
  gen: Any
  oracle: Callable


def prompt_token_ids(tokenizer, decoder_config, prompt: str, add_bos: bool
                     ) -> list[int]:
  """The prompt's token ids: the tokenizer's encoding (with whatever special
  tokens it adds), with the checkpoint's BOS id in front when ``add_bos`` and
  it is not there already."""
  ids = list(tokenizer.encode(prompt).ids)
  bos = decoder_config.bos_token_id
  if add_bos and bos is not None and (not ids or ids[0] != bos):
    ids = [int(bos)] + ids
  return ids


def setup_question(config: ReasonConfig, q: Question, decoder, tokenizer
                   ) -> QuestionSetup:
  """The prompted model and the oracle of question ``q``."""
  from banel_jax.models import hf
  ids = prompt_token_ids(tokenizer, decoder.config, q.prompt, config.add_bos)
  if not ids:
    raise ExperimentError(f"question {q.id!r}: its prompt encodes to no token and "
                          "the checkpoint has no BOS id (use --add-bos with one, or "
                          "a non-empty prompt)")
  try:
    gen = hf.make_prompted_model(decoder, ids, config.max_new_tokens,
                                 temperature=float(config.temperature))
  except ValueError as e:
    raise ExperimentError(f"question {q.id!r}: {e}") from e
  oracle = answer_oracle(tokenizer, q.answer, gen.end_ids,
                         require_marker=config.require_marker)
  return QuestionSetup(q, ids, gen, oracle)


def run_config(config: ReasonConfig) -> RunConfig:
  """The budget and evaluation every method shares."""
  return RunConfig(nre_budget=config.nre_budget,
                   samples_per_round=config.samples_per_round, n_eval=config.n_eval,
                   eval_every=config.eval_every)


def build_method(method: str, config: ReasonConfig, gen) -> tuple[Any, Any]:
  """``(method bundle or None for BaNEL, run config)`` of ``method`` on the
  prompted model ``gen``."""
  from banel_jax import baselines as B
  run = run_config(config)
  if method in BANEL_METHODS:
    cfg = getattr(config, method)
    return None, cfg.replace(
        nre_budget=run.nre_budget, samples_per_round=run.samples_per_round,
        n_eval=run.n_eval, eval_every=run.eval_every,
        failure_batch_size=min(cfg.failure_batch_size, run.samples_per_round))
  if method == "rnd":
    if config.rnd.num_minibatches > run.samples_per_round:
      raise ExperimentError(f"rnd.num_minibatches={config.rnd.num_minibatches} "
                            f"exceeds samples_per_round={run.samples_per_round}")
    return B.make_rnd(gen.model, token_embedding_features(config.rnd_embed_dim),
                      config.rnd, config.rnd_bonus), run
  if method == "nsr":
    return B.make_nsr(gen.model, config.nsr, token_log_prob=gen.token_log_prob,
                      token_mask=B.completion_mask(gen.end_ids)), run
  raise ExperimentError(f"unknown method {method!r}; the methods are "
                        f"{', '.join(METHODS)}")


def _question_record(q: Question) -> dict:
  return {"id": q.id, "question": q.question, "answer": q.answer, "prompt": q.prompt}


def pretrained_rate(config: ReasonConfig, setup: QuestionSetup, params,
                    settings: dict, path: pathlib.Path | None) -> dict:
  """The question's one pretrained rate: the questions file's measurement
  when it used at least ``pretrained_samples`` samples (at the run's
  ``max_new_tokens`` and ``temperature``, where the line says them), else
  measured here (kept in ``path``). With no success in the measurement,
  ``rate`` is its 95% upper bound (``rate_is_upper_bound``)."""
  from banel_jax.core.metrics import clopper_pearson
  m = setup.question.measured
  usable = m is not None and m["samples"] >= config.pretrained_samples and all(
      m.get(k, getattr(config, k)) == getattr(config, k)
      for k in MEASUREMENT_CONDITIONS)
  if usable:
    hits, n, source = m["successes"], m["samples"], "questions_file"
  else:
    res = harness.cached(
        path, {**settings, "pretrained_samples": config.pretrained_samples,
               "sample_chunk": config.sample_chunk, "key": PRETRAINED_KEY},
        "the pretrained rate",
        lambda: harness.measure_rate(setup.gen.model, params, setup.oracle,
                                     config.pretrained_samples, config.sample_chunk,
                                     PRETRAINED_KEY))
    hits, n, source = res["estimate"]["successes"], res["samples"], "measured"
  est = clopper_pearson(hits, n)
  upper = hits == 0
  return {"rate": est.high if upper else est.rate, "sampled_rate": est.rate,
          "hits": hits, "samples": n, "interval": [est.low, est.high],
          "source": source, "rate_is_upper_bound": upper}


def check_lora_rank(params, rank: int) -> None:
  """Refuses a LoRA rank the checkpoint's attention kernels cannot take
  (:func:`banel_jax.models.lora.check_rank_fits`), naming the kernel.

  Raises:
    ExperimentError: the rank does not fit.
  """
  from banel_jax.models import lora
  try:
    lora.check_rank_fits(params, rank)
  except ValueError as e:
    msg = str(e)  # "rank=R exceeds ..." reads as the flag
    raise ExperimentError(msg.replace(f"rank={rank}", f"--lora-rank {rank}", 1)
                          if msg.startswith("rank=") else
                          f"--lora-rank {rank}: {msg}") from e


def run_pair(config: ReasonConfig, setup: QuestionSetup, params, method: str,
             base_settings: dict, run_dir: pathlib.Path, progress: bool) -> dict:
  """Runs ``method`` on one question for the config's seeds (resumable in
  ``run_dir``); returns :func:`banel_jax.experiments.harness.run_method`'s
  record plus ``final_eval`` (each seed's rate on fresh samples)."""
  bundle, cfg = build_method(method, config, setup.gen)
  model, prior = setup.gen.model, params
  lora_rank = config.lora_rank if method in BANEL_METHODS else 0
  if lora_rank:
    import jax
    from banel_jax.models import lora
    try:
      model = lora.lora_model(setup.gen.model, params, lora_rank)
    except ValueError as e:
      raise ExperimentError(f"--lora-rank {lora_rank}: {e}") from e
    prior = model.model.init(jax.random.key(LORA_INIT_KEY))
  settings = {**base_settings, "method": method,
              "seeds": [int(s) for s in config.seeds], "run": jsonable(cfg),
              "sections": {k: jsonable(getattr(config, k)) for k in SECTIONS[method]},
              "final_eval_samples": config.final_eval_samples,
              "sample_chunk": config.sample_chunk}
  if lora_rank:  # absent at 0, so full-parameter run directories stay valid
    settings["lora_rank"] = lora_rank

  def final(runner, result) -> dict:
    return {"final_eval": harness.final_rates(runner, setup.oracle,
                                              config.final_eval_samples,
                                              config.sample_chunk, FINAL_EVAL_KEY)}

  return harness.run_method(
      model, prior, setup.oracle, cfg, config.seeds, settings=settings,
      what=f"{LABELS[method]} on question {setup.question.id}", method=bundle,
      run_dir=run_dir, progress=progress, keep_checkpoints=1, final=final)


def method_entry(method: str, res: dict, seeds, rate0: float) -> dict:
  """The method's ``summary.json`` entry."""
  final = [e["rate"] for e in res["final_eval"]]
  entry = common.method_entry(label=LABELS[method],
                              uses_successes=method in USES_SUCCESSES,
                              task_knowledge=False, seeds=seeds, final=final,
                              best=res["best_success_rate"], pretrained_rate=rate0)
  entry["final_eval"] = res["final_eval"]
  entry["nre_spent"] = res.get("nre_spent", [0] * len(seeds))
  entry["eval_calls"] = res.get("eval_calls", 0)
  entry["n_successes_found_in_training"] = res["n_successes_found_in_training"]
  entry["wall_time_s"] = res["wall_time_s"] + res.get("final_s", 0.0)
  if "stopped" in res:
    entry["stopped"] = res["stopped"]
  return entry


# ---------------------------------------------------------------------------
# The command.


def run(config: ReasonConfig, out: str | os.PathLike, progress: bool = True) -> dict:
  """Runs the experiment of ``config``; writes the files of the module
  docstring to ``out`` and returns the summary record. A (question, method)
  run that stops (no acceptance left, non-finite values) counts as 0 on every
  seed, with the reason recorded."""
  import jax.numpy as jnp
  from banel_jax.core.posterior import AcceptanceRateError
  from banel_jax.experiments.suite import stopped_record
  from banel_jax.models import hf
  from banel_jax.runtime.driver import NonFiniteError
  if not isinstance(config, ReasonConfig):
    raise TypeError(f"config must be a ReasonConfig, got {type(config).__name__}")
  out = pathlib.Path(out)
  model_dir = resolve_model_dir(config, out)
  questions = load_questions(questions_path(config, model_dir), config.prompt_template)
  if config.question_ids:
    known = {q.id for q in questions}
    unknown = [i for i in config.question_ids if i not in known]
    if unknown:
      raise ExperimentError(f"question_ids {unknown} are not in the questions file "
                            f"(its ids: {', '.join(sorted(known))})")
    questions = [q for q in questions if q.id in config.question_ids]
  out.mkdir(parents=True, exist_ok=True)
  run_root = pathlib.Path(config.run_dir) if config.run_dir else out / "runs"
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
  try:
    decoder, params = hf.load_pretrained(model_dir, dtype=dtype)
    tokenizer = hf.load_tokenizer(model_dir)
  except hf.HFCheckpointError as e:
    raise ExperimentError(str(e)) from e
  if config.lora_rank and any(m in BANEL_METHODS for m in config.methods):
    check_lora_rank(params, config.lora_rank)  # before any measurement
  checkpoint = {"model_dir": config.model_dir or str(model_dir),
                "fingerprint": checkpoint_fingerprint(model_dir),
                "model_type": decoder.config.model_type,
                "parameters": hf.param_count(params)}
  state = types.SimpleNamespace(tasks={}, runs={}, t0=time.perf_counter())
  for q in questions:
    setup = setup_question(config, q, decoder, tokenizer)
    base = {"question": _question_record(q), "checkpoint": checkpoint["model_dir"],
            "fingerprint": checkpoint["fingerprint"], "dtype": config.dtype,
            "prompt_ids": setup.prompt_ids, "end_ids": list(setup.gen.end_ids),
            "max_new_tokens": config.max_new_tokens,
            "temperature": float(config.temperature),
            "require_marker": config.require_marker}
    print(f"question {q.id}: pretrained rate ...", flush=True)
    rate = pretrained_rate(config, setup, params, base,
                           run_root / q.id / "pretrained.json")
    print(f"  {rate['rate']:.3g} ({rate['hits']}/{rate['samples']}, "
          f"{rate['source'].replace('_', ' ')}"
          + (", 95% upper bound" if rate["rate_is_upper_bound"] else "") + ")",
          flush=True)
    task = {"question_id": q.id, "question": q.question, "answer": q.answer,
            "prompt": q.prompt, "prompt_tokens": len(setup.prompt_ids),
            "nre_budget": config.nre_budget,
            "samples_per_round": config.samples_per_round,
            "pretrained_rate": rate["rate"], "pretrained_samples": rate["samples"],
            "pretrained_hits": rate["hits"], "pretrained_source": rate["source"],
            "pretrained_rate_is_upper_bound": rate["rate_is_upper_bound"],
            "pretrained_interval": rate["interval"], "methods": {}}
    name = TASK_PREFIX + q.id
    state.tasks[name] = task
    for method in config.methods:
      print(f"question {q.id}: {LABELS[method]} ...", flush=True)
      try:
        res = run_pair(config, setup, params, method, base,
                       run_root / q.id / method, progress)
      except (AcceptanceRateError, NonFiniteError) as e:
        res = stopped_record(e, len(config.seeds))
        print(f"  stopped: {res['stopped']}", flush=True)
      state.runs[(name, method)] = res
      entry = method_entry(method, res, config.seeds, rate["rate"])
      task["methods"][method] = entry
      print(f"  final rate median {np.median(entry['final_rate']):.3g} "
            f"({np.median(entry['improvement_final']):.3g}x; "
            f"{res['wall_time_s']:.0f}s" + ("; loaded)" if "loaded_from" in res
                                            else ")"), flush=True)
      write_outputs(out, config, checkpoint, state)
  record = write_outputs(out, config, checkpoint, state, final=True)
  print(f"wrote {out}/")
  return record


def write_outputs(out: pathlib.Path, config: ReasonConfig, checkpoint: dict, state,
                  final: bool = False) -> dict:
  """Writes ``summary.json``, ``reason.json``, ``table.md``, the plot and the
  README from the runs finished so far; prints the table when ``final``. The
  wall time is the runs' own (summed over the processes that resumed them),
  final evaluations included."""
  wall = float(sum(r["wall_time_s"] + r.get("final_s", 0.0)
                   for r in state.runs.values()))
  tasks = {n: t for n, t in state.tasks.items() if t["methods"]}
  inv = invocation()
  command = inv.get("command", "banel reason")
  common.write_summary(out, name=out.name, command=command, wall_time_s=wall,
                       tasks=tasks)
  summary = json.loads((out / "summary.json").read_text())
  table = markdown_table(tasks, config.methods)
  record = {**inv, "config": config_to_dict(config), "checkpoint": checkpoint,
            "wall_time_s": wall, "complete": final, "tasks": tasks}
  common.write_json(out / "reason.json", {
      **record, "runs": {f"{t}/{m}": {"history": r["history"]}
                         for (t, m), r in state.runs.items()}})
  (out / "table.md").write_text(table + "\n")
  if tasks:
    plot(state.runs, tasks, config.methods, out / "success_vs_nre.png")
  write_readme(out, config, checkpoint, command, table, wall)
  if final:
    print(table)
  return summary


def _rate(v: float) -> str:
  return f"{v:.2g}" if v else "0"


def _x(v: float) -> str:
  return f"{v:.0f}x" if v >= 10 else f"{v:.2g}x"


def markdown_table(tasks: dict, methods) -> str:
  """Per question: the pretrained rate, then each method's median final rate
  over seeds with its lowest and highest seed, and the median improvement."""
  head = ("| question | pretrained | " + " | ".join(LABELS[m] for m in methods)
          + " |")
  lines = [head, "|" + "---|" * (len(methods) + 2)]
  for t in tasks.values():
    bound = "<" if t["pretrained_rate_is_upper_bound"] else ""
    cells = [f"{bound}{_rate(t['pretrained_rate'])} ({t['pretrained_hits']}/"
             f"{t['pretrained_samples']:,})"]
    for m in methods:
      e = t["methods"].get(m)
      if e is None:
        cells.append("")
        continue
      r = np.asarray(e["final_rate"])
      gain = float(np.median(e["improvement_final"]))
      cells.append(f"{_rate(float(np.median(r)))} [{_rate(float(r.min()))}, "
                   f"{_rate(float(r.max()))}] ({_x(gain)})"
                   + (" stopped" if "stopped" in e else ""))
    lines.append(f"| {t['question_id']} | " + " | ".join(cells) + " |")
  lines += ["", "Cells: median final success rate over seeds [lowest, highest seed] "
            "on fresh samples, and in brackets the median improvement over the "
            "question's pretrained rate (its hits / samples in the second column; "
            "`<`: no hit, the 95% upper bound divides, so the factor is a lower "
            "bound)."]
  return "\n".join(lines)


def plot(runs: dict, tasks: dict, methods, path: pathlib.Path) -> None:
  """Success against NRE per question, like the paper's figure: median over
  seeds, band from the lowest to the highest seed; the dotted line is the
  pretrained rate."""
  from banel_jax import plotting
  names = list(tasks)
  cols = min(3, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plotting.new_axes(figsize=(max(4.8, 3.8 * cols), 3.2 * rows),
                                nrows=rows, ncols=cols)
  axes = np.atleast_1d(axes).ravel()
  for ax, name in zip(axes, names):
    for i, m in enumerate(methods):
      res = runs.get((name, m))
      recs = [] if res is None else [h for h in res["history"] if "success_rate" in h]
      if not recs:
        continue
      nre = np.array([np.mean(h["nre"]) for h in recs], float)
      rate = np.array([h["success_rate"] for h in recs], float)
      ax.plot(nre, np.median(rate, axis=1), color=f"C{i}", lw=1.2, label=LABELS[m])
      ax.fill_between(nre, rate.min(axis=1), rate.max(axis=1), color=f"C{i}",
                      alpha=0.12)
    ax.axhline(tasks[name]["pretrained_rate"], color="k", ls=":", lw=1)
    ax.set_title(f"question {tasks[name]['question_id']}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes[len(names):]:
    ax.axis("off")
  axes[0].legend(fontsize=6)
  fig.supxlabel("reward evaluations spent on learning (NRE)", fontsize=9)
  fig.supylabel("success rate (median; band: seed range)", fontsize=9)
  plotting.save_figure(fig, path)


def _changes(cfg: BanelConfig) -> str:
  return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in common.changed_from_paper(cfg).items()) or "none"


def write_readme(out: pathlib.Path, config: ReasonConfig, checkpoint: dict,
                 command: str, table: str, wall: float) -> None:
  """``out/README.md`` from the figures (keeps the observations block)."""
  methods = ", ".join(f"`{m}` ({LABELS[m]})" for m in config.methods)
  lines = [
      "# Reasoning: per-question runs on a local decoder", "",
      f"**What.** The paper's reasoning experiment on the checkpoint "
      f"`{checkpoint['model_dir']}` ({checkpoint['model_type']}, "
      f"{checkpoint['parameters']:,} parameters, {config.dtype}): for each "
      f"question, the prompted decoder samples completions of up to "
      f"{config.max_new_tokens} tokens at temperature {config.temperature:g}; a "
      "completion scores 1 when its final numeric answer is right "
      + ("(after `####`)" if config.require_marker else
         "(after `####`, else after \"the answer is\", else its last number)")
      + f". Methods: {methods}; seeds {list(config.seeds)} side by side, "
      f"{config.nre_budget:,} reward evaluations each ({config.samples_per_round} "
      f"per round). Each seed's final rate is measured on "
      f"{config.final_eval_samples:,} fresh samples and divided by the question's "
      "one pretrained rate (`summary.json` says whether it was measured here or "
      "read from the questions file). No method learns from a successful "
      "sample.", "",
      "**Command.**", "", "```", command, "```", "",
      f"**Config.** BaNEL (paper): `BanelConfig.paper()` with "
      f"{_changes(config.banel_paper)}. BaNEL defaults: "
      f"{_changes(config.banel_default)}. RND: Adam {config.rnd.learning_rate:g}, "
      f"KL weight {config.rnd.kl_weight:g}, bonus weight "
      f"{config.rnd.bonus_weight:g}, features: a fixed random "
      f"{config.rnd_embed_dim}-wide embedding per completion token. NSR: "
      f"{config.nsr.aggregation}-level loss, Adam {config.nsr.learning_rate:g}, "
      f"{config.nsr.steps} steps per round. Evaluation every {config.eval_every} "
      f"rounds on {config.n_eval:,} samples. None of these settings was tuned "
      "on these questions. Full record: `reason.json`.", "",
      *common.readme_tail(
          out, table, table_note="(`table.md`)", wall=f"{wall / 60:.1f} minutes",
          summed_over="the (question, method) pairs, final evaluations included")]
  (out / "README.md").write_text("\n".join(lines))


COMMAND = register(Command(
    name="reason",
    help="LM reasoning: BaNEL, RND and NSR per question on a local decoder "
         "checkpoint and a JSONL of questions with numeric answers.",
    config_cls=ReasonConfig, presets=PRESETS, default_preset="default", run=run))
