"""The addition attack's checkpoints: train the target, pretrain the attacker,
and calibrate the attacker against the target.

* ``banel train-target``: trains the target transformer, which answers ``a+b=``
  queries from the pretraining distribution (operand lengths uniform in 1..8,
  no leading zeros) with the sum, digits reversed (``--answer-order lsb``) or
  as written (``msb``). Training stops at ``--steps`` or, with
  ``--stop-error`` > 0, at the first evaluation where the teacher-forced error
  on a fixed held-out set is at or below it: the knob that makes the target
  good but not perfect. Writes ``checkpoint/`` (orbax, with its task config)
  and ``train_target.json`` to ``--out``.
* ``banel pretrain-attacker``: fits the attacker (2 layers, width 128, 4 heads,
  vocabulary 16, 24 tokens) to fresh batches of queries by maximum likelihood.
  The summary reports the final NLL next to the exact entropy of the query
  distribution (their gap is the KL divergence) and the malformed and
  leading-zero shares of its own samples. Writes ``checkpoint/`` and
  ``pretrain_attacker.json`` to ``--out``.
* ``banel calibrate``: samples queries from the attacker, asks the target the
  well-formed ones once and scores them in both leading-zero variants (the
  rewards of ``addition.make_oracle``), and writes each success rate with its
  Clopper-Pearson 95% interval, the malformed shares and example attacks to
  ``calibration.json`` in ``--out``. The task wants the rate with leading
  zeros allowed in [1e-4, 2e-3]. ``banel attack --calibration
  DIR/calibration.json`` reuses it.

The shipped checkpoints (``banel_jax/assets/checkpoints``) were made by the
``shipped`` presets (``target``, ``attacker``) and the ``msb`` preset
(``target_msb``).

Examples:
  banel train-target --out runs/my_target
  banel train-target --preset msb --out runs/my_target_msb
  banel pretrain-attacker --out runs/my_attacker
  banel calibrate --target runs/my_target/checkpoint --out runs/my_calibration
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Literal

import numpy as np

from banel_jax.core.config import config_to_dict
from banel_jax.experiments import common
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)

CHECKPOINT = "checkpoint"  # the checkpoint's folder in a training's --out


def _check_positive(owner: str, config, names, low: int = 1) -> None:
  for name in names:
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
      raise ExperimentError(f"{owner}.{name}={v!r} must be an integer >= {low}")


def _check_rates(owner: str, config, names) -> None:
  for name in names:
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
      raise ExperimentError(f"{owner}.{name}={v!r} must be a number >= 0")


def _adamw(lr: float, warmup: int, steps: int, weight_decay: float):
  import optax
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup,
                                                max(steps, warmup + 1), lr * 0.02)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b2=0.98, weight_decay=weight_decay))


# --- train-target --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainTargetConfig:
  """Training of the addition target.

  Attributes:
    seed: root PRNG seed.
    steps: most optimizer steps.
    batch_size: sequences per step.
    lr: peak AdamW learning rate.
    warmup: linear warmup steps.
    weight_decay: AdamW weight decay.
    width: the target's residual width.
    layers: the target's blocks.
    heads: attention heads.
    target_format: how the target reads a query: ``aligned`` (operands
      right-aligned in blank-filled fields; learns in hundreds of steps) or
      ``raw`` (the query as written; a leading zero shifts the digits; needs a
      wider model and thousands of steps).
    answer_order: how the target writes the sum: ``lsb`` (least significant
      digit first; each digit needs only the carry from the digit before) or
      ``msb`` (most significant first, as text does, zero-padded to a fixed
      width; a long carry chain must be looked ahead through).
    steps_per_call: optimizer steps per jitted ``lax.scan`` call.
    eval_every: steps between held-out evaluations (a multiple of
      ``steps_per_call``).
    eval_size: held-out sequences for the stopping rule.
    stop_error: stop once the held-out teacher-forced error is at or below
      this (0: train all ``steps``).
    init_from: start from the params of a target checkpoint (a shipped name or
      a directory; its shape, format and answer order are used, and
      ``width``, ``layers``, ``heads``, ``target_format`` and ``answer_order``
      are ignored) instead of a fresh init; the optimizer and its schedule
      start afresh.
    final_eval: fresh queries answered by greedy decoding at the end.
  """

  seed: int = 0
  steps: int = 2000
  batch_size: int = 128
  lr: float = 3e-3
  warmup: int = 100
  weight_decay: float = 0.01
  width: int = 64
  layers: int = 2
  heads: int = 4
  target_format: Literal["aligned", "raw"] = "aligned"
  answer_order: Literal["lsb", "msb"] = "lsb"
  steps_per_call: int = 25
  eval_every: int = 50
  eval_size: int = 16384
  stop_error: float = 5e-4
  init_from: str | None = None
  final_eval: int = 65536

  def __post_init__(self):
    name = "TrainTargetConfig"
    _check_positive(name, self, ("steps", "batch_size", "width", "layers", "heads",
                                 "steps_per_call", "eval_every", "eval_size",
                                 "final_eval"))
    _check_positive(name, self, ("seed", "warmup"), low=0)
    _check_rates(name, self, ("lr", "weight_decay", "stop_error"))
    if self.eval_every % self.steps_per_call:
      raise ExperimentError(f"{name}.eval_every={self.eval_every} must be a multiple "
                            f"of steps_per_call={self.steps_per_call}")

  def replace(self, **changes) -> "TrainTargetConfig":
    return dataclasses.replace(self, **changes)


TRAIN_TARGET_PRESETS = {
    "shipped": TrainTargetConfig,
    "msb": lambda: TrainTargetConfig(answer_order="msb", steps=12_000, eval_every=250),
    "tiny": lambda: TrainTargetConfig(width=16, layers=1, heads=2, steps=25,
                                      eval_every=25, eval_size=64, final_eval=64,
                                      stop_error=0.0),
}


def train_target(config: TrainTargetConfig, checkpoint_dir: str | os.PathLike,
                 progress: bool = True) -> dict:
  """Trains a target and saves it to ``checkpoint_dir`` (replaced if it
  exists); returns the training record."""
  import jax
  import jax.numpy as jnp
  from tqdm.auto import tqdm

  from banel_jax.core.metrics import clopper_pearson
  from banel_jax.runtime import checkpoint
  from banel_jax.tasks import addition

  c = config
  cpu0, wall0 = time.process_time(), time.time()
  task = addition.AdditionTaskConfig(target_format=c.target_format,
                                     answer_order=c.answer_order)
  task = task.replace(target=task.target.replace(
      num_layers=c.layers, width=c.width, num_heads=c.heads))
  init_meta = None
  if c.init_from:
    init_params, task, init_meta = addition.load_target(
        common.checkpoint_dir(c.init_from))
  target = addition.make_target(task)

  init_key, train_key, eval_key, final_key = jax.random.split(jax.random.key(c.seed), 4)
  params = init_params if c.init_from else jax.jit(target.model.init)(init_key)
  tx = _adamw(c.lr, c.warmup, c.steps, c.weight_decay)
  opt_state = tx.init(params)
  chunk = addition.make_train_chunk(addition.target_loss_fn(task, c.batch_size), tx,
                                    c.steps_per_call)

  eval_batch = 4096
  n_eval = -(-c.eval_size // eval_batch) * eval_batch
  eval_tokens, eval_weights = jax.jit(
      addition.sample_target_sequences, static_argnums=(1, 2))(eval_key, n_eval, task)

  @jax.jit
  def count_errors(params, tokens, weights):
    _, m = addition.target_loss(target, params, tokens, weights)
    return jnp.round((1.0 - m["exact_match"]) * tokens.shape[0])

  def heldout_error():
    errors = sum(float(count_errors(params, eval_tokens[i:i + eval_batch],
                                    eval_weights[i:i + eval_batch]))
                 for i in range(0, n_eval, eval_batch))
    return errors / n_eval

  history, step, stopped, loss = [], 0, False, float("nan")
  bar = tqdm(total=c.steps, desc="target", unit="step", disable=not progress)
  while step < c.steps and not stopped:
    params, opt_state, metrics = chunk.run(params, opt_state,
                                           jax.random.fold_in(train_key, step))
    step += chunk.steps
    loss = float(metrics["loss"][-1])
    bar.update(chunk.steps)
    exact = float(metrics["exact_match"][-1])
    bar.set_postfix(loss=f"{loss:.2e}", exact=f"{exact:.3f}")
    if step % c.eval_every == 0 or step >= c.steps:
      err = heldout_error()
      history.append({"step": step, "loss": loss, "heldout_error": err})
      if progress:
        bar.write(f"step {step}: loss {loss:.3e}, "
                  f"held-out teacher-forced error {err:.2e}")
      stopped = c.stop_error > 0 and err <= c.stop_error
  bar.close()
  train_cpu = time.process_time() - cpu0

  init_steps = int(init_meta.get("total_steps", init_meta.get("steps", 0))
                   ) if init_meta else 0
  init_record = None if not c.init_from else common.checkpoint_record(c.init_from)
  addition.save_target(os.fspath(checkpoint_dir), params, task, overwrite=True,
                       steps=step, total_steps=init_steps + step,
                       init_from=init_record, seed=c.seed,
                       heldout_error=history[-1]["heldout_error"])

  # Greedy answers to fresh queries, the oracle's own path.
  sample_queries = jax.jit(addition.sample_queries, static_argnums=(1, 2))
  queries = np.concatenate([
      np.asarray(sample_queries(jax.random.fold_in(final_key, i), 4096, task))
      for i in tqdm(range(-(-c.final_eval // 4096)), desc="final eval queries",
                    disable=not progress)])[:c.final_eval]
  scores = addition.make_scorer(params, task)(queries)
  wrong = clopper_pearson(int(scores.target_wrong.sum()), len(queries))
  return {
      "config": config_to_dict(config),
      "checkpoint": str(pathlib.Path(checkpoint_dir).absolute()),
      "task": checkpoint.config_to_dict(task),
      "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
      "steps": step,
      "init_from": init_record,
      "total_steps": init_steps + step,
      "stopped_early": bool(stopped),
      "final_loss": loss,
      "final_heldout_teacher_forced_error": history[-1]["heldout_error"],
      "final_greedy_error": wrong.as_dict(),
      "final_greedy_accuracy": 1.0 - wrong.rate,
      "history": history,
      "train_cpu_seconds": train_cpu,
      "total_cpu_seconds": time.process_time() - cpu0,
      "wall_seconds": time.time() - wall0,
  }


def run_train_target(config: TrainTargetConfig, out: str | os.PathLike,
                     progress: bool = True) -> dict:
  """``banel train-target``: the checkpoint in ``out/checkpoint``, the record in
  ``out/train_target.json`` (returned)."""
  out = pathlib.Path(out)
  result = {**invocation(), **train_target(config, out / CHECKPOINT, progress)}
  common.write_json(out / "train_target.json", result)
  keys = ("steps", "final_loss", "final_greedy_accuracy", "total_cpu_seconds")
  print(json.dumps({k: result[k] for k in keys}, indent=2))
  print(f"wrote {out}/")
  return result


def run_train_target_into(checkpoint_dir, out, progress: bool = True) -> dict:
  """Trains a target with the ``shipped`` preset into ``checkpoint_dir`` (the
  record in ``out/train_target.json``)."""
  result = train_target(TRAIN_TARGET_PRESETS["shipped"](), checkpoint_dir, progress)
  common.write_json(pathlib.Path(out) / "train_target.json", result)
  return result


# --- pretrain-attacker ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PretrainAttackerConfig:
  """Pretraining of the addition attacker by maximum likelihood.

  Attributes:
    seed: root PRNG seed.
    steps: optimizer steps.
    batch_size: queries per step.
    lr: peak AdamW learning rate.
    warmup: linear warmup steps.
    weight_decay: AdamW weight decay.
    steps_per_call: optimizer steps per jitted ``lax.scan`` call.
    eval_samples: attacker samples checked against the grammar at the end.
  """

  seed: int = 0
  steps: int = 1000
  batch_size: int = 128
  lr: float = 3e-3
  warmup: int = 100
  weight_decay: float = 0.01
  steps_per_call: int = 50
  eval_samples: int = 16384

  def __post_init__(self):
    name = "PretrainAttackerConfig"
    _check_positive(name, self, ("steps", "batch_size", "steps_per_call",
                                 "eval_samples"))
    _check_positive(name, self, ("seed", "warmup"), low=0)
    _check_rates(name, self, ("lr", "weight_decay"))

  def replace(self, **changes) -> "PretrainAttackerConfig":
    return dataclasses.replace(self, **changes)


PRETRAIN_ATTACKER_PRESETS = {
    "shipped": PretrainAttackerConfig,
    "tiny": lambda: PretrainAttackerConfig(steps=20, steps_per_call=10,
                                           batch_size=32, eval_samples=256),
}


def pretrain_attacker(config: PretrainAttackerConfig,
                      checkpoint_dir: str | os.PathLike,
                      progress: bool = True) -> dict:
  """Pretrains an attacker and saves it to ``checkpoint_dir`` (replaced if it
  exists); returns the training record."""
  import jax
  from tqdm.auto import tqdm

  from banel_jax.models.transformer import make_transformer
  from banel_jax.runtime import checkpoint
  from banel_jax.tasks import addition

  c = config
  cpu0, wall0 = time.process_time(), time.time()
  task = addition.AdditionTaskConfig()
  attacker = make_transformer(task.attacker)
  root = jax.random.key(c.seed)
  init_key, train_key, eval_key, sample_key = jax.random.split(root, 4)
  params = jax.jit(attacker.model.init)(init_key)
  tx = _adamw(c.lr, c.warmup, c.steps, c.weight_decay)
  opt_state = tx.init(params)
  chunk = addition.make_train_chunk(addition.attacker_loss_fn(task, c.batch_size), tx,
                                    c.steps_per_call)

  entropy = addition.query_entropy(task)
  history, step, loss = [], 0, float("nan")
  with tqdm(total=c.steps, desc="attacker", unit="step", disable=not progress) as bar:
    while step < c.steps:
      params, opt_state, metrics = chunk.run(params, opt_state,
                                             jax.random.fold_in(train_key, step))
      step += chunk.steps
      loss = float(np.mean(metrics["loss"]))
      history.append({"step": step, "nll": loss})
      bar.update(chunk.steps)
      bar.set_postfix(nll=f"{loss:.3f}", kl=f"{loss - entropy:.3f}")
  train_cpu = time.process_time() - cpu0
  addition.save_attacker(os.fspath(checkpoint_dir), params, task, overwrite=True,
                         steps=step, seed=c.seed)

  sample_queries = jax.jit(addition.sample_queries, static_argnums=(1, 2))
  heldout = sample_queries(eval_key, 4096, task)
  heldout_nll = float(-np.mean(jax.jit(attacker.model.log_prob)(params, heldout)))
  sample = jax.jit(attacker.model.sample, static_argnums=2)
  x = np.concatenate([
      np.asarray(sample(params, jax.random.fold_in(sample_key, i), 4096))
      for i in tqdm(range(-(-c.eval_samples // 4096)), desc="samples",
                    disable=not progress)])
  parsed = addition.parse_queries(x, task.max_operand_len, allow_leading_zeros=False)
  return {
      "config": config_to_dict(config),
      "checkpoint": str(pathlib.Path(checkpoint_dir).absolute()),
      "model": checkpoint.config_to_dict(task.attacker),
      "num_params": int(sum(v.size for v in jax.tree.leaves(params))),
      "steps": step,
      "final_train_nll": loss,
      "heldout_nll": heldout_nll,
      "query_entropy": entropy,
      "heldout_kl": heldout_nll - entropy,
      "samples_checked": int(x.shape[0]),
      "malformed_fraction": float(1.0 - parsed.syntax_ok.mean()),
      "leading_zero_fraction": float(parsed.leading_zero.mean()),
      "examples": addition.decode_batch(x[:10]),
      "history": history,
      "train_cpu_seconds": train_cpu,
      "total_cpu_seconds": time.process_time() - cpu0,
      "wall_seconds": time.time() - wall0,
  }


def run_pretrain_attacker(config: PretrainAttackerConfig, out: str | os.PathLike,
                          progress: bool = True) -> dict:
  """``banel pretrain-attacker``: the checkpoint in ``out/checkpoint``, the
  record in ``out/pretrain_attacker.json`` (returned)."""
  out = pathlib.Path(out)
  result = {**invocation(), **pretrain_attacker(config, out / CHECKPOINT, progress)}
  common.write_json(out / "pretrain_attacker.json", result)
  keys = ("steps", "heldout_nll", "query_entropy", "malformed_fraction",
          "total_cpu_seconds")
  print(json.dumps({k: result[k] for k in keys}, indent=2))
  print(f"wrote {out}/")
  return result


def run_pretrain_attacker_into(checkpoint_dir, out, progress: bool = True) -> dict:
  """Pretrains an attacker with the ``shipped`` preset into ``checkpoint_dir``
  (the record in ``out/pretrain_attacker.json``)."""
  result = pretrain_attacker(PRETRAIN_ATTACKER_PRESETS["shipped"](), checkpoint_dir,
                             progress)
  common.write_json(pathlib.Path(out) / "pretrain_attacker.json", result)
  return result


# --- calibrate -----------------------------------------------------------------------

WINDOW = (1e-4, 2e-3)  # the pretrained rate the task wants, leading zeros allowed


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
  """Calibration of the attacker against the target.

  Attributes:
    target: the target's checkpoint (a shipped name or a directory).
    attacker: the attacker's checkpoint (a shipped name or a directory).
    num_samples: attacker queries to score (rounded up to ``batch_size``).
    batch_size: queries sampled and decoded per jitted call.
    seed: root PRNG seed.
    max_examples: successful attacks listed in the JSON.
  """

  target: str = "target"
  attacker: str = "attacker"
  num_samples: int = 200_000
  batch_size: int = 4096
  seed: int = 0
  max_examples: int = 25

  def __post_init__(self):
    name = "CalibrateConfig"
    _check_positive(name, self, ("num_samples", "batch_size"))
    _check_positive(name, self, ("seed", "max_examples"), low=0)
    for field in ("target", "attacker"):
      if not isinstance(getattr(self, field), str) or not getattr(self, field):
        raise ExperimentError(f"{name}.{field}={getattr(self, field)!r} must be a "
                              "shipped checkpoint's name or a directory")

  def replace(self, **changes) -> "CalibrateConfig":
    return dataclasses.replace(self, **changes)


CALIBRATE_PRESETS = {
    "full": CalibrateConfig,
    "tiny": lambda: CalibrateConfig(num_samples=512, batch_size=256),
}


def calibrate(config: CalibrateConfig, progress: bool = True) -> dict:
  """The attacker's success rate against the target, in both leading-zero
  variants; returns the calibration record."""
  import jax
  from tqdm.auto import tqdm

  from banel_jax.core.metrics import clopper_pearson
  from banel_jax.models.transformer import make_transformer
  from banel_jax.tasks import addition

  c = config
  cpu0, wall0 = time.process_time(), time.time()
  target_dir = common.checkpoint_dir(c.target)
  attacker_dir = common.checkpoint_dir(c.attacker)
  target_params, task, target_meta = addition.load_target(target_dir)
  attacker_params, attacker_task, attacker_meta = addition.load_attacker(attacker_dir)
  for field in ("max_operand_len", "max_len"):
    if getattr(task, field) != getattr(attacker_task, field):
      raise ExperimentError(
          f"target and attacker disagree on {field}: {getattr(task, field)} vs "
          f"{getattr(attacker_task, field)}")
  attacker = make_transformer(attacker_task.attacker)
  sample = jax.jit(attacker.model.sample, static_argnums=2)
  score = addition.make_scorer(target_params, task, batch_size=c.batch_size)

  key = jax.random.key(c.seed)
  counts = dict(n=0, syntax_ok=0, leading_zero=0, success_zeros=0,
                success_no_zeros=0, success_leading_zero=0)
  examples = []
  for i in tqdm(range(-(-c.num_samples // c.batch_size)), desc="calibrate",
                unit="batch", disable=not progress):
    x = np.asarray(sample(attacker_params, jax.random.fold_in(key, i), c.batch_size))
    s = score(x)
    r_zeros, r_no_zeros = s.rewards(True), s.rewards(False)
    counts["n"] += x.shape[0]
    counts["syntax_ok"] += int(s.syntax_ok.sum())
    counts["leading_zero"] += int(s.leading_zero.sum())
    counts["success_zeros"] += int(r_zeros.sum())
    counts["success_no_zeros"] += int(r_no_zeros.sum())
    counts["success_leading_zero"] += int((r_zeros.astype(bool) & s.leading_zero).sum())
    for j in np.flatnonzero(r_zeros)[:max(0, c.max_examples - len(examples))]:
      examples.append({"query": addition.decode(x[j]), "truth": int(s.truth[j]),
                       "target_answer": (int(s.answer[j]) if s.answer_valid[j]
                                         else None),
                       "leading_zero": bool(s.leading_zero[j])})

  n = counts["n"]
  zeros = clopper_pearson(counts["success_zeros"], n)
  no_zeros = clopper_pearson(counts["success_no_zeros"], n)
  well_formed_zeros = counts["syntax_ok"]
  well_formed_no_zeros = counts["syntax_ok"] - counts["leading_zero"]
  return {
      "config": config_to_dict(config),
      # what the attack compares to reuse this calibration: every metadata value
      "target": {"checkpoint": common.checkpoint_record(c.target),
                 "path": str(target_dir), "steps": target_meta.get("steps"),
                 "task": target_meta["task"], "metadata": target_meta},
      "attacker": {"checkpoint": common.checkpoint_record(c.attacker),
                   "path": str(attacker_dir), "steps": attacker_meta.get("steps"),
                   "metadata": attacker_meta},
      "num_samples": n,
      "leading_zeros_allowed": {
          "success": zeros.as_dict(),
          "malformed_fraction": 1.0 - well_formed_zeros / n,
          "target_error_on_well_formed": (counts["success_zeros"]
                                          / max(well_formed_zeros, 1)),
          "in_window": WINDOW[0] <= zeros.rate <= WINDOW[1],
      },
      "leading_zeros_disallowed": {
          "success": no_zeros.as_dict(),
          "malformed_fraction": 1.0 - well_formed_no_zeros / n,
          "target_error_on_well_formed": (counts["success_no_zeros"]
                                          / max(well_formed_no_zeros, 1)),
      },
      "leading_zero_fraction": counts["leading_zero"] / n,
      "successes_with_leading_zero": counts["success_leading_zero"],
      "window": list(WINDOW),
      "examples": examples,
      "cpu_seconds": time.process_time() - cpu0,
      "wall_seconds": time.time() - wall0,
  }


def run_calibrate(config: CalibrateConfig, out: str | os.PathLike,
                  progress: bool = True) -> dict:
  """``banel calibrate``: the record in ``out/calibration.json`` (returned)."""
  out = pathlib.Path(out)
  result = {**invocation(), **calibrate(config, progress)}
  common.write_json(out / "calibration.json", result)
  keys = ("num_samples", "leading_zeros_allowed", "leading_zeros_disallowed",
          "cpu_seconds")
  print(json.dumps({k: result[k] for k in keys}, indent=2))
  print(f"wrote {out}/")
  return result


TRAIN_TARGET = register(Command(
    name="train-target", help="Train the addition target transformer.",
    config_cls=TrainTargetConfig, presets=TRAIN_TARGET_PRESETS,
    default_preset="shipped", run=run_train_target))
PRETRAIN_ATTACKER = register(Command(
    name="pretrain-attacker", help="Pretrain the addition attacker by maximum "
    "likelihood.", config_cls=PretrainAttackerConfig,
    presets=PRETRAIN_ATTACKER_PRESETS, default_preset="shipped",
    run=run_pretrain_attacker))
CALIBRATE = register(Command(
    name="calibrate", help="Measure the pretrained attacker's success rate "
    "against the target.", config_cls=CalibrateConfig, presets=CALIBRATE_PRESETS,
    default_preset="full", run=run_calibrate))
