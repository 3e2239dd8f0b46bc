"""Pretraining the word-problem decoder and screening its hard questions.

The shipped checkpoint in ``banel_jax/assets/reasoning`` is a small Llama-family
decoder (:mod:`banel_jax.models.hf`) trained from scratch on problems of
:mod:`banel_jax.tasks.word_problems`, written as a local Hugging Face checkpoint
(``config.json``, ``model.safetensors``, ``tokenizer.json``) with the settings
and measurements in ``training.json``; ``questions.jsonl`` holds the hard
held-out questions and their measured success rates.

**Pretraining** (:func:`pretrain`). AdamW with warmup and cosine decay on the
next-token loss of the solution tokens (and ``<eos>``) given ``<bos>``, the
question and ``"\\n"``. Each optimiser step draws a fresh batch with
``numpy.random.default_rng([seed, step])``: a number of steps ``k`` (with
:attr:`PretrainSettings.step_weights`), then problems of ``k`` steps from the
mixture :attr:`PretrainSettings.mixture`, skipping held-out questions
(:func:`~banel_jax.tasks.word_problems.is_held_out`), padded to a fixed length
per ``k`` (rows per batch so that every batch holds about the same number of
tokens). So no batch depends on another, training is bit-for-bit reproducible
on one machine, and a run resumes from its last saved state (``--work-dir``)
to the same result.

**Screening** (:func:`screen_questions`). Candidates are held-out problems of
the hard configs (:data:`HARD_CONFIGS`). The exact probability ``p_ref`` that
sampling at temperature 1 writes the reference solution token for token (one
teacher-forced pass) is a lower bound on the success rate, but often a loose
one: grading reads the final answer only, and on problems with big numbers the
model often writes wrong equations yet ends on the right answer (on the shipped
big-number questions the rate is about 1,000 times ``p_ref`` and no observed
success had all its equations right; on the 5-step small-number ones 5 to 15
times). So ``p_ref`` only orders the candidates; each is measured by sampling
``p(completion | prompt)`` with the package's KV-cached sampler
(:func:`~banel_jax.models.hf.make_prompted_model`, stop at ``<eos>``,
:data:`MAX_NEW_TOKENS` tokens) and grading each completion with
:func:`~banel_jax.tasks.word_problems.is_correct`: a question whose rate lies
in :data:`RATE_RANGE` is measured again on fresh samples and kept iff the
pooled rate lies in :data:`KEEP_RANGE` (see :func:`screen_questions`).

Command line: ``python -m banel_jax.tasks.word_problems {pretrain,questions}``
(``--help`` for the flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time
from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from banel_jax.core.metrics import clopper_pearson
from banel_jax.models import hf
from banel_jax.tasks import word_problems as wp

RATE_RANGE = (1e-4, 3e-3)
KEEP_RANGE = (1.5e-4, 2.5e-3)  # where a kept question's pooled rate must lie
MEASURE_SAMPLES = 20_000
MAX_NEW_TOKENS = 64  # completion tokens sampled per question (stop at <eos>)
SCREEN_WINDOW = (1e-8, 3e-3)  # reference probabilities worth sampling
MIN_ANSWER = 20  # hard questions have answers a guess rarely hits

# Hard questions: more steps and bigger numbers than most of pretraining.
HARD_CONFIGS = {
    "big4": wp.ProblemConfig(min_steps=4, max_steps=4, start_range=(20, 99),
                             add_range=(10, 99), mul_range=(2, 9), max_value=999),
    "big5": wp.ProblemConfig(min_steps=5, max_steps=5, start_range=(20, 99),
                             add_range=(10, 99), mul_range=(2, 9), max_value=999),
    "small5": wp.ProblemConfig(min_steps=5, max_steps=5),
    "small6": wp.ProblemConfig(min_steps=6, max_steps=6),
}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The Llama decoder's shape (``model_type`` ``llama``, tied embeddings)."""

  hidden_size: int = 128
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4
  intermediate_size: int = 384
  max_positions: int = 256
  rope_theta: float = 10000.0


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
  """Everything that fixes the pretrained checkpoint.

  Attributes:
    seed: the parameters' and the batches' seed.
    steps: optimiser steps.
    tokens_per_batch: rows per batch are ``tokens_per_batch // length`` for
      the padded length of the batch's step count.
    learning_rate: peak AdamW learning rate.
    warmup_steps: linear warmup from 0.
    final_lr_fraction: the cosine decay ends at this fraction of the peak.
    weight_decay: AdamW weight decay (on every parameter).
    grad_clip: global-norm gradient clipping.
    step_weights: relative frequency of batches of 1, 2, ... steps.
    lengths: padded length (prompt + completion + ``<bos>``/``<eos>``) of a
      batch of 1, 2, ... steps; longer problems are skipped.
    mixture: ``((weight, ProblemConfig), ...)``: each problem's distribution
      (its step counts are overridden by the batch's).
    architecture: the decoder's shape.
  """

  seed: int = 0
  steps: int = 1600
  tokens_per_batch: int = 4096
  learning_rate: float = 2e-3
  warmup_steps: int = 100
  final_lr_fraction: float = 0.05
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  step_weights: tuple[float, ...] = (1.0, 2.0, 3.0, 3.0)
  lengths: tuple[int, ...] = (48, 64, 88, 112)
  mixture: tuple[tuple[float, wp.ProblemConfig], ...] = (
      (0.65, wp.ProblemConfig()),
      (0.35, wp.ProblemConfig(start_range=(10, 99), add_range=(2, 99),
                              mul_range=(2, 9), max_value=999)),
  )
  architecture: Architecture = Architecture()

  def __post_init__(self):
    if self.steps < 1 or self.tokens_per_batch < 1:
      raise ValueError(f"steps and tokens_per_batch must be >= 1, got "
                       f"{self.steps}, {self.tokens_per_batch}")
    if len(self.step_weights) != len(self.lengths) or not self.step_weights:
      raise ValueError("step_weights and lengths must have one entry per step "
                       "count 1, 2, ...")
    if any(w < 0 for w in self.step_weights) or sum(self.step_weights) <= 0:
      raise ValueError(f"step_weights must be >= 0 with a positive sum, got "
                       f"{self.step_weights!r}")
    if not self.mixture or any(w <= 0 for w, _ in self.mixture):
      raise ValueError("mixture must be non-empty with positive weights")
    if max(self.lengths) > self.architecture.max_positions:
      raise ValueError(f"lengths exceed max_positions="
                       f"{self.architecture.max_positions}")
    for length in self.lengths:
      if self.tokens_per_batch // length < 1:
        raise ValueError(f"tokens_per_batch={self.tokens_per_batch} holds no row "
                         f"of length {length}")

  def replace(self, **kwargs) -> "PretrainSettings":
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["step_weights"], d["lengths"] = list(self.step_weights), list(self.lengths)
    d["mixture"] = [[w, c.to_dict()] for w, c in self.mixture]
    d["architecture"] = dataclasses.asdict(self.architecture)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "PretrainSettings":
    d = dict(d)
    d["step_weights"], d["lengths"] = tuple(d["step_weights"]), tuple(d["lengths"])
    d["mixture"] = tuple((float(w), wp.ProblemConfig.from_dict(c))
                         for w, c in d["mixture"])
    d["architecture"] = Architecture(**d["architecture"])
    return cls(**d)


# ----------------------------------------------------------------------------
# The checkpoint format.


def decoder_config(arch: Architecture, vocab_size: int) -> hf.DecoderConfig:
  """The :class:`~banel_jax.models.hf.DecoderConfig` of ``arch``."""
  if arch.hidden_size % arch.num_heads:
    raise ValueError(f"hidden_size={arch.hidden_size} is not a multiple of "
                     f"num_heads={arch.num_heads}")
  return hf.config_from_hf(hf_config_dict(arch, vocab_size))


def hf_config_dict(arch: Architecture, vocab_size: int) -> dict:
  """The ``config.json`` of a Llama checkpoint of shape ``arch``."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": int(vocab_size), "hidden_size": arch.hidden_size,
      "intermediate_size": arch.intermediate_size,
      "num_hidden_layers": arch.num_layers,
      "num_attention_heads": arch.num_heads,
      "num_key_value_heads": arch.num_kv_heads,
      "head_dim": arch.hidden_size // arch.num_heads,
      "max_position_embeddings": arch.max_positions, "rms_norm_eps": 1e-6,
      "hidden_act": "silu", "tie_word_embeddings": True,
      "rope_theta": arch.rope_theta, "attention_bias": False, "mlp_bias": False,
      "bos_token_id": wp.BOS_ID, "eos_token_id": wp.EOS_ID,
      "pad_token_id": wp.PAD_ID, "torch_dtype": "float32",
  }


def hf_tensors(params) -> dict[str, np.ndarray]:
  """Flax params of a Llama :class:`~banel_jax.models.hf.LlamaLM` as Hugging
  Face tensors (``model.layers.0.self_attn.q_proj.weight``, ``[out, in]``)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  out = {}
  for path, value in flat.items():
    *modules, leaf = path
    parts = [m.replace("layers_", "layers.") if m.startswith("layers_") else m
             for m in modules]
    name = ".".join(parts + ["weight" if leaf != "bias" else "bias"])
    if parts[0] != "lm_head":
      name = "model." + name
    value = np.asarray(value, np.float32)
    out[name] = np.ascontiguousarray(value.T if leaf == "kernel" else value)
  return out


def save_checkpoint(out_dir: str | os.PathLike, arch: Architecture, params,
                    tokenizer, record: dict | None = None) -> pathlib.Path:
  """Writes ``config.json``, ``model.safetensors``, ``tokenizer.json`` (and
  ``training.json`` if ``record``) to ``out_dir``; returns the directory."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  _write_json(out / "config.json", hf_config_dict(arch, tokenizer.get_vocab_size()))
  tmp = out / "model.safetensors.tmp"
  save_file(hf_tensors(params), str(tmp), metadata={"format": "pt"})
  os.replace(tmp, out / "model.safetensors")
  os.chmod(out / "model.safetensors", 0o644)  # save_file's file is owner-only
  tokenizer.save(str(out / "tokenizer.json"))
  if record is not None:
    _write_json(out / "training.json", record)
  return out


def _write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


# ----------------------------------------------------------------------------
# Data.


def batch_problems(settings: PretrainSettings, step: int) -> list[wp.Problem]:
  """The problems of optimiser step ``step`` (before tokenization)."""
  rng = np.random.default_rng([settings.seed, step])
  w = np.asarray(settings.step_weights, np.float64)
  k = int(rng.choice(len(w), p=w / w.sum())) + 1
  rows = settings.tokens_per_batch // settings.lengths[k - 1]
  mw = np.asarray([m for m, _ in settings.mixture], np.float64)
  configs = [c.replace(min_steps=k, max_steps=k) for _, c in settings.mixture]
  out = []
  while len(out) < rows:
    config = configs[int(rng.choice(len(configs), p=mw / mw.sum()))]
    p = wp.generate_problem(rng, config)
    if not wp.is_held_out(p.question):
      out.append(p)
  return out


def encode_examples(tokenizer, problems: Sequence[wp.Problem], length: int | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(tokens int32[n, T], loss_mask bool[n, T-1], fits bool[n])``.

  Row ``i`` is ``<bos>`` + prompt + solution + ``<eos>``, padded with
  ``<pad>`` to ``T`` (``length``, or the longest row when None);
  ``loss_mask[i, t]`` marks targets ``tokens[i, t + 1]`` that belong to the
  completion. Rows longer than ``length`` are cut and marked ``~fits``.
  """
  prompts = tokenizer.encode_batch([wp.prompt_text(p.question) for p in problems],
                                   add_special_tokens=False)
  sols = tokenizer.encode_batch([p.solution for p in problems],
                                add_special_tokens=False)
  seqs = [([wp.BOS_ID] + a.ids, b.ids + [wp.EOS_ID]) for a, b in zip(prompts, sols)]
  t = length or max(len(a) + len(b) for a, b in seqs)
  x = np.full((len(seqs), t), wp.PAD_ID, np.int32)
  mask = np.zeros((len(seqs), t - 1), bool)
  fits = np.ones(len(seqs), bool)
  for i, (a, b) in enumerate(seqs):
    row = (a + b)[:t]
    fits[i] = len(a) + len(b) <= t
    x[i, :len(row)] = row
    mask[i, len(a) - 1:len(row) - 1] = True
  return x, mask, fits


def make_batch(settings: PretrainSettings, tokenizer, step: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """``(tokens, loss_mask)`` of optimiser step ``step``."""
  problems = batch_problems(settings, step)
  x, mask, fits = encode_examples(tokenizer, problems,
                                  settings.lengths[problems[0].steps - 1])
  if not fits.all():  # keep the shape; drop the rows' loss
    mask = mask & fits[:, None]
  return x, mask


# ----------------------------------------------------------------------------
# Training.


def _loss(decoder, params, x, mask):
  logits = decoder.logits(params, x[:, :-1])
  logp = jax.nn.log_softmax(logits, axis=-1)
  tok = jnp.take_along_axis(logp, x[:, 1:, None], axis=-1)[..., 0]
  m = mask.astype(jnp.float32)
  return -jnp.sum(tok * m) / jnp.maximum(jnp.sum(m), 1.0)


def _optimizer(settings: PretrainSettings):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, settings.learning_rate, settings.warmup_steps,
      max(settings.steps, settings.warmup_steps + 1),
      end_value=settings.learning_rate * settings.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(settings.grad_clip),
                     optax.adamw(schedule, weight_decay=settings.weight_decay))


def _save_state(path: pathlib.Path, step: int, params, opt_state, losses,
                seconds: float) -> None:
  leaves = jax.tree.leaves((params, opt_state))
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, step=np.int64(step), losses=np.asarray(losses, np.float32),
           seconds=np.float64(seconds),
           **{f"leaf_{i}": np.asarray(v) for i, v in enumerate(leaves)})
  os.replace(tmp, path)


def _load_state(path: pathlib.Path, template):
  with np.load(path) as f:
    leaves = [jnp.asarray(f[f"leaf_{i}"]) for i in range(len(jax.tree.leaves(template)))]
    step, losses = int(f["step"]), list(f["losses"].tolist())
    seconds = float(f["seconds"]) if "seconds" in f.files else 0.0
  return step, jax.tree.unflatten(jax.tree.structure(template), leaves), losses, seconds


def train(settings: PretrainSettings, *, work_dir: str | os.PathLike | None = None,
          save_every: int = 50, log: Callable[[str], None] | None = print,
          log_every: int = 50, stop_at: int | None = None) -> tuple[dict, dict]:
  """Trains the decoder of ``settings`` (see the module doc).

  Args:
    settings: the run.
    work_dir: where the resumable state lives (``state.npz``, with
      ``settings.json``); a run with the same settings resumes from it.
      None: no state is kept.
    save_every: steps between saved states.
    log: progress lines (None: silent).
    log_every: steps between progress lines.
    stop_at: return after this many steps in all (saving the state), as a
      cut-off run would; None: run to ``settings.steps``.

  Returns:
    ``(params, info)``: NumPy params and a dict with ``losses`` (per step),
    ``train_seconds`` (wall time of the steps, summed over resumed runs;
    losses are stored as float32) and ``resumed_from`` (the step this call
    started at).
  """
  tokenizer = wp.build_tokenizer()
  config = decoder_config(settings.architecture, tokenizer.get_vocab_size())
  decoder = hf.make_decoder(config)
  params = decoder.init(jax.random.key(settings.seed))
  tx = _optimizer(settings)
  opt_state = tx.init(params)
  start, losses, before = 0, [], 0.0
  state_file = None
  if work_dir is not None:
    work = pathlib.Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "state.npz"
    settings_file = work / "settings.json"
    if state_file.exists() and settings_file.exists():
      with open(settings_file, encoding="utf-8") as f:
        if json.load(f) != settings.to_dict():
          raise ValueError(f"{work} holds the state of a run with other settings; "
                           f"use another --work-dir")
      start, (params, opt_state), losses, before = _load_state(
          state_file, (params, opt_state))
      if log:
        log(f"resumed at step {start}")
    else:
      _write_json(settings_file, settings.to_dict())

  @jax.jit
  def step_fn(params, opt_state, x, mask):
    loss, grads = jax.value_and_grad(lambda p: _loss(decoder, p, x, mask))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  resumed_from = start
  t0 = time.perf_counter()
  pending = []
  end = settings.steps if stop_at is None else min(stop_at, settings.steps)
  for step in range(start, end):
    x, mask = make_batch(settings, tokenizer, step)
    params, opt_state, loss = step_fn(params, opt_state, x, mask)
    pending.append(loss)
    done = step + 1
    if done % log_every == 0 or done == end or (
        state_file is not None and done % save_every == 0):
      losses += [float(v) for v in jax.device_get(pending)]
      pending = []
      if log and (done % log_every == 0 or done == settings.steps):
        recent = np.mean(losses[-log_every:])
        log(f"step {done}/{settings.steps} loss {recent:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")
      if state_file is not None and (done % save_every == 0 or done == end):
        _save_state(state_file, done, params, opt_state, losses,
                    before + time.perf_counter() - t0)
  params = jax.tree.map(np.asarray, params)
  return params, {"losses": losses,
                  "train_seconds": before + time.perf_counter() - t0,
                  "resumed_from": resumed_from}


# ----------------------------------------------------------------------------
# Evaluation.


def reference_scores(decoder, params, tokenizer, problems: Sequence[wp.Problem],
                     batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """``(log_p, greedy_ok)`` of each problem's reference completion.

  Args:
    decoder: the decoder.
    params: its params.
    tokenizer: the task's tokenizer.
    problems: the problems (any mix of lengths).
    batch_size: problems per forward pass.

  Returns:
    ``log_p`` ``f64[n]``: log-probability at temperature 1 of writing the
    reference solution and ``<eos>`` token for token (a lower bound on the log
    success rate); ``greedy_ok`` ``bool[n]``: greedy decoding writes exactly
    the reference (every reference token is the argmax given the ones before
    it).
  """
  @jax.jit
  def score(params, x, mask):
    logits = decoder.logits(params, x[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, x[:, 1:, None], axis=-1)[..., 0]
    best = jnp.argmax(logits, axis=-1) == x[:, 1:]
    return jnp.sum(jnp.where(mask, tok, 0.0), 1), jnp.all(best | ~mask, axis=1)

  log_p, greedy = [], []
  order = np.argsort([len(p.question) + len(p.solution) for p in problems])
  for i in range(0, len(problems), batch_size):
    idx = order[i:i + batch_size]
    x, mask, _ = encode_examples(tokenizer, [problems[j] for j in idx], None)
    pad = -x.shape[1] % 16  # fewer distinct shapes to compile
    x = np.pad(x, ((0, 0), (0, pad)), constant_values=wp.PAD_ID)
    mask = np.pad(mask, ((0, 0), (0, pad)))
    a, b = score(params, x, mask)
    log_p.append(np.asarray(a))
    greedy.append(np.asarray(b))
  out_lp, out_g = np.empty(len(problems)), np.empty(len(problems), bool)
  out_lp[order], out_g[order] = np.concatenate(log_p), np.concatenate(greedy)
  return out_lp, out_g


def evaluate(decoder, params, tokenizer, settings: PretrainSettings = PretrainSettings(),
             *, seed: int = 1, per_cell: int = 500) -> dict:
  """Greedy accuracy and reference probabilities on held-out problems.

  Args:
    decoder: the decoder.
    params: its params.
    tokenizer: the task's tokenizer.
    settings: the pretraining run; its mixture's configs (``mix0``, ``mix1``,
      ...) are evaluated at each step count of ``settings.lengths``
      (``mix0_k1`` ...), then the :data:`HARD_CONFIGS`.
    seed: the problems' seed.
    per_cell: problems per cell.

  Returns:
    ``{cell: {"greedy_accuracy", "mean_reference_prob",
    "median_reference_prob", "problems"}}``.
  """
  cells = {}
  for i, (_, config) in enumerate(settings.mixture):
    for k in range(1, len(settings.lengths) + 1):
      cells[f"mix{i}_k{k}"] = config.replace(min_steps=k, max_steps=k)
  cells.update(HARD_CONFIGS)
  out = {}
  for j, (name, config) in enumerate(cells.items()):
    problems = wp.generate_problems(np.random.default_rng([seed, j]), per_cell, config,
                                    held_out=True)
    log_p, greedy = reference_scores(decoder, params, tokenizer, problems)
    out[name] = {"greedy_accuracy": float(greedy.mean()),
                 "mean_reference_prob": float(np.exp(log_p).mean()),
                 "median_reference_prob": float(np.median(np.exp(log_p))),
                 "problems": per_cell}
  return out


def pretrain(out_dir: str | os.PathLike = wp.ASSET_DIR,
             settings: PretrainSettings = PretrainSettings(), *,
             work_dir: str | os.PathLike | None = None, eval_per_cell: int = 500,
             log: Callable[[str], None] | None = print) -> dict:
  """Trains, evaluates and writes the checkpoint to ``out_dir``.

  Args:
    out_dir: the checkpoint directory to write.
    settings: the run.
    work_dir: resumable training state (see :func:`train`).
    eval_per_cell: held-out problems per evaluation cell (:func:`evaluate`).
    log: progress lines (None: silent).

  Returns:
    The ``training.json`` record (settings, parameter count, training time,
    losses, evaluation).
  """
  params, info = train(settings, work_dir=work_dir, log=log)
  tokenizer = wp.build_tokenizer()
  config = decoder_config(settings.architecture, tokenizer.get_vocab_size())
  decoder = hf.make_decoder(config)
  t0 = time.perf_counter()
  evaluation = evaluate(decoder, params, tokenizer, settings,
                        per_cell=eval_per_cell)
  losses = np.asarray(info["losses"])
  tail = max(1, min(100, len(losses) // 10))
  record = {
      "settings": settings.to_dict(),
      "parameters": hf.param_count(params),
      "train_seconds": round(info["train_seconds"], 1),
      "resumed_from_step": info["resumed_from"],
      "final_loss": float(losses[-tail:].mean()),
      "loss_every_50_steps": [round(float(losses[i:i + 50].mean()), 4)
                              for i in range(0, len(losses), 50)],
      "evaluation": evaluation,
      "evaluation_seconds": round(time.perf_counter() - t0, 1),
      "jax_version": jax.__version__,
  }
  save_checkpoint(out_dir, settings.architecture, params, tokenizer, record)
  if log:
    for name, r in evaluation.items():
      log(f"{name}: greedy {r['greedy_accuracy']:.3f} mean p(ref) "
          f"{r['mean_reference_prob']:.3g}")
  return record


# ----------------------------------------------------------------------------
# Hard questions.


def make_sampler(decoder, tokenizer, question: str, max_new_tokens: int = MAX_NEW_TOKENS):
  """``sample(params, key, n) -> int32[n, max_new_tokens]`` (jitted, ``n``
  static) of the question's prompted model, at temperature 1, stopping at
  ``<eos>``."""
  gen = wp.make_question_model(decoder, tokenizer, question, max_new_tokens)
  return jax.jit(gen.model.sample, static_argnums=2)


def measure_rate(decoder, params, tokenizer, question: str, answer, samples: int, *,
                 seed: int, batch_size: int = 1000,
                 max_new_tokens: int = MAX_NEW_TOKENS, sampler=None) -> dict:
  """Success rate of sampling ``samples`` completions of ``question``.

  Args:
    decoder: the decoder.
    params: its params.
    tokenizer: the task's tokenizer.
    question: the question text.
    answer: its answer.
    samples: completions to draw (a multiple of ``batch_size``).
    seed: batch ``i`` uses ``fold_in(key(seed), i)``.
    batch_size: completions per sampler call.
    max_new_tokens: completion length.
    sampler: a compiled :func:`make_sampler` of the question to reuse (it
      must have been called with ``batch_size``), or None.

  Returns:
    ``{"successes", "samples", "rate", "interval", "chain_correct",
    "seconds", "samples_per_second", "truncated"}``: the interval is
    Clopper-Pearson 95%; ``chain_correct`` counts the successes whose every
    equation is also right (:func:`~banel_jax.tasks.word_problems.check_worked_solution`);
    ``truncated`` the completions without ``<eos>`` within ``max_new_tokens``.
  """
  if samples % batch_size:
    raise ValueError(f"samples={samples} must be a multiple of batch_size="
                     f"{batch_size}")
  sample = sampler
  if sample is None:
    sample = make_sampler(decoder, tokenizer, question, max_new_tokens)
    jax.block_until_ready(sample(params, jax.random.key(0), batch_size))  # compile
  hits = chains = truncated = 0
  t0 = time.perf_counter()
  for i in range(samples // batch_size):
    x = np.asarray(sample(params, jax.random.fold_in(jax.random.key(seed), i),
                          batch_size))
    texts = wp.decode_completions(tokenizer, x)
    ok = [t for t in texts if wp.is_correct(t, answer)]
    hits += len(ok)
    chains += sum(wp.check_worked_solution(t, answer) for t in ok)
    truncated += int((~(x == wp.EOS_ID).any(1)).sum())
  seconds = time.perf_counter() - t0
  ci = clopper_pearson(hits, samples)
  return {"successes": hits, "samples": samples, "rate": ci.rate,
          "interval": [ci.low, ci.high], "chain_correct": chains,
          "seconds": round(seconds, 2),
          "samples_per_second": round(samples / seconds, 1),
          "truncated": truncated}


def screen_candidates(decoder, params, tokenizer, *, seed: int = 7,
                      per_config: int = 4000) -> list[dict]:
  """Held-out problems of :data:`HARD_CONFIGS` with their reference
  probabilities.

  Args:
    decoder: the decoder.
    params: its params.
    tokenizer: the task's tokenizer.
    seed: config ``j`` draws with ``default_rng([seed, j])``.
    per_config: problems per config.

  Returns:
    One dict per problem (``config``, ``index``, ``question``, ``solution``,
    ``answer``, ``steps``, ``completion_tokens``, ``reference_log_prob``), by
    config then draw order.
  """
  out = []
  for j, (name, config) in enumerate(HARD_CONFIGS.items()):
    problems = wp.generate_problems(np.random.default_rng([seed, j]), per_config,
                                    config, held_out=True)
    log_p, _ = reference_scores(decoder, params, tokenizer, problems)
    for i, (p, lp) in enumerate(zip(problems, log_p)):
      out.append({"config": name, "index": i, "question": p.question,
                  "solution": p.solution, "answer": p.answer, "steps": p.steps,
                  "completion_tokens": len(wp.completion_ids(tokenizer, p.solution)),
                  "reference_log_prob": float(lp)})
  return out


def screen_questions(model_dir: str | os.PathLike = wp.ASSET_DIR, *,
                     out: str | os.PathLike | None = None,
                     work_dir: str | os.PathLike, want: int = 6,
                     pre_samples: int = 2000, samples: int = MEASURE_SAMPLES,
                     per_config: int = 4000, seed: int = 7,
                     log: Callable[[str], None] | None = print) -> list[dict]:
  """Finds hard questions with success rates in :data:`RATE_RANGE`.

  Candidates (:func:`screen_candidates`) whose reference probability ``p_ref`` lies
  in :data:`SCREEN_WINDOW`, whose answer is at least :data:`MIN_ANSWER` (small
  answers are often hit by completions whose equations are wrong) and whose
  reference completion fits :data:`MAX_NEW_TOKENS` with 4 tokens to spare are
  visited round-robin over the hard configs. The rate is at least ``p_ref`` but can
  be much more: a completion whose equations go wrong may still end on the right
  answer. So each config keeps an estimate of ``log(rate / p_ref)`` (the mean over
  its visited candidates of ``log((successes + 1/2) / pre_samples / p_ref)``, 0
  before the first) and visits next the candidate whose ``p_ref`` is nearest (in
  log) the range's log-midpoint minus that estimate. A visited candidate gets
  ``pre_samples`` samples; those with at most ``3e-3 * pre_samples`` successes are
  measured on ``samples`` fresh ones; if that rate is in range, on ``samples`` more
  (a confirmation, not used to select), and the question is kept iff the rate of
  both measurements pooled lies in :data:`KEEP_RANGE` (inside the range, so that a
  rate chosen by chance near an end of it is not kept), until ``want`` are kept.
  Every measurement is appended to ``work_dir/measurements.jsonl`` and reused by a
  rerun (the samples are deterministic, so a rerun reaches the same questions).

  Args:
    model_dir: the checkpoint directory.
    out: the questions file to write (default ``model_dir/questions.jsonl``).
    work_dir: where the candidates and measurements are kept.
    want: questions to keep.
    pre_samples: samples of the first look at a candidate.
    samples: samples of the selecting and of the confirming measurement.
    per_config: candidates drawn per hard config.
    seed: the candidates' seed.
    log: progress lines (None: silent).

  Returns:
    The kept questions (:func:`question_record`), also written to ``out``.
  """
  decoder, params, tokenizer = wp.load_model(model_dir)
  work = pathlib.Path(work_dir)
  work.mkdir(parents=True, exist_ok=True)
  done_file = work / "measurements.jsonl"
  done = {}
  if done_file.exists():
    with open(done_file, encoding="utf-8") as f:
      for line in f:
        r = json.loads(line)
        done[(r["question"], r["stage"])] = r
  cand_file = work / "candidates.json"
  if cand_file.exists():
    with open(cand_file, encoding="utf-8") as f:
      candidates = json.load(f)
  else:
    t0 = time.perf_counter()
    candidates = screen_candidates(decoder, params, tokenizer, seed=seed,
                                   per_config=per_config)
    _write_json(cand_file, candidates)
    if log:
      log(f"scored {len(candidates)} candidates in {time.perf_counter() - t0:.0f} s")
  lo, hi = np.log(SCREEN_WINDOW[0]), np.log(SCREEN_WINDOW[1])
  mid = 0.5 * (np.log(RATE_RANGE[0]) + np.log(RATE_RANGE[1]))
  pools = {name: [c for c in candidates if c["config"] == name
                  and lo <= c["reference_log_prob"] <= hi
                  and c["answer"] >= MIN_ANSWER
                  and c["completion_tokens"] <= MAX_NEW_TOKENS - 4]
           for name in HARD_CONFIGS}
  if log:
    log("in window: " + ", ".join(f"{k} {len(v)}" for k, v in pools.items()))
  ratios = {name: [] for name in HARD_CONFIGS}
  samplers = {}

  def measured(c, stage, n, mseed):
    key = (c["question"], stage)
    if key not in done:
      if c["question"] not in samplers:
        samplers.clear()
        samplers[c["question"]] = make_sampler(decoder, tokenizer, c["question"])
        jax.block_until_ready(samplers[c["question"]](params, jax.random.key(0),
                                                      1000))  # compile
      r = measure_rate(decoder, params, tokenizer, c["question"], c["answer"], n,
                       seed=mseed, sampler=samplers[c["question"]])
      r.update(question=c["question"], stage=stage)
      with open(done_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(r) + "\n")
      done[key] = r
      if log:
        log(f"{c['config']}#{c['index']} {stage}: {r['successes']}/{r['samples']} "
            f"(p_ref {np.exp(c['reference_log_prob']):.2e}, chain right "
            f"{r['chain_correct']}, {r['samples_per_second']:.0f} samples/s)")
    return done[key]

  kept = []
  while len(kept) < want and any(pools.values()):
    for name in HARD_CONFIGS:
      if len(kept) >= want or not pools[name]:
        continue
      target = mid - (np.mean(ratios[name]) if ratios[name] else 0.0)
      c = min(pools[name], key=lambda c: (abs(c["reference_log_prob"] - target),
                                          c["index"]))
      pools[name].remove(c)
      tag = 100_000 * list(HARD_CONFIGS).index(name) + c["index"]
      pre = measured(c, "pre", pre_samples, 1_000_000_000 + tag)
      ratios[name].append(np.log((pre["successes"] + 0.5) / pre_samples)
                          - c["reference_log_prob"])
      if pre["successes"] > RATE_RANGE[1] * pre_samples:
        continue
      full = measured(c, "full", samples, 2_000_000_000 + tag)
      if not RATE_RANGE[0] <= full["rate"] <= RATE_RANGE[1]:
        continue
      confirm = measured(c, "confirm", samples, 3_000_000_000 + tag)
      record = question_record(c, full, confirm, len(kept), tokenizer)
      if KEEP_RANGE[0] <= record["rate"] <= KEEP_RANGE[1]:
        kept.append(record)
  if out is None:
    out = pathlib.Path(model_dir) / wp.QUESTIONS_FILE
  out = pathlib.Path(out)
  tmp = out.with_name(out.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for q in kept:
      f.write(json.dumps(q) + "\n")
  os.replace(tmp, out)
  return kept


def question_record(c: dict, full: dict, confirm: dict, i: int, tokenizer) -> dict:
  """One line of ``questions.jsonl``: the candidate ``c`` with its selecting
  (``full``) and confirming measurements, pooled for ``rate``,
  ``successes``, ``samples``, ``interval`` and ``chain_correct``."""
  hits = full["successes"] + confirm["successes"]
  n = full["samples"] + confirm["samples"]
  ci = clopper_pearson(hits, n)
  keep = ("successes", "samples", "rate", "interval", "chain_correct")
  return {"id": f"wp{i}", "question": c["question"],
          "prompt": wp.prompt_text(c["question"]), "answer": c["answer"],
          "steps": c["steps"], "config": c["config"],
          "reference_solution": c["solution"],
          "reference_prob": float(np.exp(c["reference_log_prob"])),
          "max_new_tokens": MAX_NEW_TOKENS,
          "prompt_tokens": len(wp.prompt_ids(tokenizer, c["question"])),
          "temperature": 1.0, "rate": ci.rate, "successes": hits, "samples": n,
          "interval": [ci.low, ci.high],
          "chain_correct": full["chain_correct"] + confirm["chain_correct"],
          "selection": {k: full[k] for k in keep},
          "confirmation": {k: confirm[k] for k in keep},
          "samples_per_second": confirm["samples_per_second"]}


# ----------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m banel_jax.tasks.word_problems {pretrain,questions} ...``."""
  parser = argparse.ArgumentParser(
      prog="python -m banel_jax.tasks.word_problems",
      description="Retrain the word-problem decoder (deterministically) or "
                  "re-screen its hard questions.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("pretrain", help="train and write the checkpoint")
  p.add_argument("--out", default=os.fspath(wp.ASSET_DIR),
                 help="checkpoint directory (default: the shipped assets)")
  p.add_argument("--work-dir", default=None,
                 help="resumable training state (default: none kept)")
  p.add_argument("--steps", type=int, default=PretrainSettings.steps,
                 help="optimiser steps (default: %(default)s, the shipped run)")
  p.add_argument("--seed", type=int, default=PretrainSettings.seed,
                 help="parameters' and batches' seed (default: %(default)s)")
  q = sub.add_parser("questions", help="screen the hard held-out questions")
  q.add_argument("--model", default=os.fspath(wp.ASSET_DIR),
                 help="checkpoint directory (default: the shipped assets)")
  q.add_argument("--out", default=None,
                 help="questions file (default: MODEL/questions.jsonl)")
  q.add_argument("--work-dir", required=True,
                 help="candidates and measurements, reused by a rerun")
  q.add_argument("--want", type=int, default=6,
                 help="questions to keep (default: %(default)s)")
  q.add_argument("--samples", type=int, default=MEASURE_SAMPLES,
                 help="samples of the selecting and of the confirming "
                      "measurement (default: %(default)s)")
  args = parser.parse_args(argv)
  if args.command == "pretrain":
    settings = PretrainSettings(steps=args.steps, seed=args.seed)
    pretrain(args.out, settings, work_dir=args.work_dir,
             log=lambda s: print(s, flush=True))
  else:
    kept = screen_questions(args.model, out=args.out, work_dir=args.work_dir,
                            want=args.want, samples=args.samples,
                            log=lambda s: print(s, flush=True))
    for r in kept:
      print(f"{r['id']}: {r['successes']}/{r['samples']} = {r['rate']:.2e} "
            f"[{r['interval'][0]:.2e}, {r['interval'][1]:.2e}]", flush=True)


if __name__ == "__main__":
  main()
