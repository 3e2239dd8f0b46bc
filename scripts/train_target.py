"""Trains the addition task's target transformer and saves it with orbax.

The target answers ``a+b=`` queries from the pretraining distribution (operand
lengths uniform in 1..8, no leading zeros) with the sum, digits reversed
(``--answer-order lsb``, the default) or as written (``msb``; see
``banel_jax.tasks.addition``). Training stops at ``--steps`` or, with
``--stop-error`` > 0, at the first evaluation where the teacher-forced error on
a fixed held-out set is at or below it: the calibration knob that makes the
target good but not perfect.

Example:
  python scripts/train_target.py --out checkpoints/target \\
      --json results/addition_target.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from banel_jax import checkpoint
from banel_jax.metrics import clopper_pearson
from banel_jax.tasks import addition

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts._cli import command_line  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="checkpoints/target",
                 help="checkpoint directory (replaced if it exists)")
  p.add_argument("--json", default="results/addition_target.json",
                 help="where to write the JSON summary")
  p.add_argument("--seed", type=int, default=0, help="root PRNG seed")
  p.add_argument("--steps", type=int, default=2000, help="most optimizer steps")
  p.add_argument("--batch-size", type=int, default=128, help="sequences per step")
  p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
  p.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
  p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay")
  p.add_argument("--width", type=int, default=64, help="target residual width")
  p.add_argument("--layers", type=int, default=2, help="target blocks")
  p.add_argument("--format", choices=addition.TARGET_FORMATS, default="aligned",
                 help="how the target reads a query: 'aligned' (operands "
                      "right-aligned in blank-filled fields; learns in hundreds "
                      "of steps) or 'raw' (the query as written; a leading zero "
                      "shifts the digits; needs a wider model and thousands of "
                      "steps)")
  p.add_argument("--answer-order", choices=addition.ANSWER_ORDERS, default="lsb",
                 help="how the target writes the sum: 'lsb' (least significant "
                      "digit first; each digit needs only the carry from the "
                      "digit before) or 'msb' (most significant first, as text "
                      "does, zero-padded to a fixed width; a long carry chain "
                      "must be looked ahead through)")
  p.add_argument("--heads", type=int, default=4, help="attention heads")
  p.add_argument("--steps-per-call", type=int, default=25,
                 help="optimizer steps per jitted lax.scan call")
  p.add_argument("--eval-every", type=int, default=50,
                 help="steps between held-out evaluations (a multiple of "
                      "--steps-per-call)")
  p.add_argument("--eval-size", type=int, default=16384,
                 help="held-out sequences for the stopping rule")
  p.add_argument("--stop-error", type=float, default=5e-4,
                 help="stop once the held-out teacher-forced error is <= this "
                      "(0 disables: train all --steps)")
  p.add_argument("--init-from", default=None,
                 help="start from the params of a target saved by this script "
                      "(its shape, format and answer order are used; --width, "
                      "--layers, --heads, --format and --answer-order are "
                      "ignored) instead of a fresh init; the optimizer and its "
                      "schedule start afresh")
  p.add_argument("--final-eval", type=int, default=65536,
                 help="fresh queries answered by greedy decoding at the end")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.eval_every % args.steps_per_call:
    raise SystemExit("--eval-every must be a multiple of --steps-per-call")
  cpu0, wall0 = time.process_time(), time.time()
  task = addition.AdditionTaskConfig(target_format=args.format,
                                     answer_order=args.answer_order)
  task = task.replace(target=task.target.replace(
      num_layers=args.layers, width=args.width, num_heads=args.heads))
  init_meta = None
  if args.init_from:
    init_params, task, init_meta = addition.load_target(args.init_from)
  target = addition.make_target(task)

  root = jax.random.key(args.seed)
  init_key, train_key, eval_key, final_key = jax.random.split(root, 4)
  del root
  params = (init_params if args.init_from else jax.jit(target.model.init)(init_key))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, args.lr, args.warmup, max(args.steps, args.warmup + 1), args.lr * 0.02)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, b2=0.98, weight_decay=args.weight_decay))
  opt_state = tx.init(params)
  chunk = addition.make_train_chunk(
      addition.target_loss_fn(task, args.batch_size), tx, args.steps_per_call)

  eval_batch = 4096
  n_eval = -(-args.eval_size // eval_batch) * eval_batch
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
  bar = tqdm(total=args.steps, desc="target", unit="step")
  while step < args.steps and not stopped:
    params, opt_state, metrics = chunk.run(params, opt_state,
                                           jax.random.fold_in(train_key, step))
    step += chunk.steps
    loss = float(metrics["loss"][-1])
    bar.update(chunk.steps)
    exact = float(metrics["exact_match"][-1])
    bar.set_postfix(loss=f"{loss:.2e}", exact=f"{exact:.3f}")
    if step % args.eval_every == 0 or step >= args.steps:
      err = heldout_error()
      history.append({"step": step, "loss": loss, "heldout_error": err})
      bar.write(f"step {step}: loss {loss:.3e}, "
                f"held-out teacher-forced error {err:.2e}")
      stopped = args.stop_error > 0 and err <= args.stop_error
  bar.close()
  train_cpu = time.process_time() - cpu0

  init_steps = int(init_meta.get("total_steps", init_meta.get("steps", 0))
                   ) if init_meta else 0
  addition.save_target(args.out, params, task, overwrite=True, steps=step,
                       total_steps=init_steps + step, init_from=args.init_from,
                       seed=args.seed, heldout_error=history[-1]["heldout_error"])

  # Greedy answers to fresh queries, the oracle's own path.
  queries = np.concatenate([
      np.asarray(jax.jit(addition.sample_queries, static_argnums=(1, 2))(
          jax.random.fold_in(final_key, i), 4096, task))
      for i in tqdm(range(-(-args.final_eval // 4096)), desc="final eval queries")
  ])[:args.final_eval]
  scores = addition.make_scorer(params, task)(queries)
  wrong = clopper_pearson(int(scores.target_wrong.sum()), len(queries))

  result = {
      "command": command_line("train_target.py", argv),
      "args": vars(args),
      "task": checkpoint.config_to_dict(task),
      "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
      "steps": step,
      "init_from": args.init_from,
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
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("steps", "final_loss",
                                           "final_greedy_accuracy",
                                           "total_cpu_seconds")}, indent=2))


if __name__ == "__main__":
  main()
