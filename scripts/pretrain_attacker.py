"""Pretrains the addition task's attacker by maximum likelihood and saves it.

The attacker is the default Transformer (2 layers, width 128, 4 heads, vocab
16, max_len 24) fitted to fresh batches of ``sample_queries`` (operand lengths
uniform in 1..8, no leading zeros). The summary reports the final NLL next to
the exact entropy of the query distribution (their gap is the KL divergence),
and the malformed / leading-zero fractions of the attacker's own samples.

Example:
  python scripts/pretrain_attacker.py --out checkpoints/attacker \\
      --json results/addition_attacker.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
import optax
from tqdm import tqdm

from banel_jax import checkpoint
from banel_jax.models.transformer import make_transformer
from banel_jax.tasks import addition

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts._cli import command_line  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="checkpoints/attacker",
                 help="checkpoint directory (replaced if it exists)")
  p.add_argument("--json", default="results/addition_attacker.json",
                 help="where to write the JSON summary")
  p.add_argument("--seed", type=int, default=0, help="root PRNG seed")
  p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
  p.add_argument("--batch-size", type=int, default=128, help="queries per step")
  p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
  p.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
  p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay")
  p.add_argument("--steps-per-call", type=int, default=50,
                 help="optimizer steps per jitted lax.scan call")
  p.add_argument("--eval-samples", type=int, default=16384,
                 help="attacker samples checked against the grammar at the end")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  cpu0, wall0 = time.process_time(), time.time()
  task = addition.AdditionTaskConfig()
  attacker = make_transformer(task.attacker)

  root = jax.random.key(args.seed)
  init_key, train_key, eval_key, sample_key = jax.random.split(root, 4)
  del root
  params = jax.jit(attacker.model.init)(init_key)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, args.lr, args.warmup, max(args.steps, args.warmup + 1), args.lr * 0.02)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, b2=0.98, weight_decay=args.weight_decay))
  opt_state = tx.init(params)
  chunk = addition.make_train_chunk(
      addition.attacker_loss_fn(task, args.batch_size), tx, args.steps_per_call)

  entropy = addition.query_entropy(task)
  history, step, loss = [], 0, float("nan")
  with tqdm(total=args.steps, desc="attacker", unit="step") as bar:
    while step < args.steps:
      params, opt_state, metrics = chunk.run(params, opt_state,
                                             jax.random.fold_in(train_key, step))
      step += chunk.steps
      loss = float(np.mean(metrics["loss"]))
      history.append({"step": step, "nll": loss})
      bar.update(chunk.steps)
      bar.set_postfix(nll=f"{loss:.3f}", kl=f"{loss - entropy:.3f}")
  train_cpu = time.process_time() - cpu0
  addition.save_attacker(args.out, params, task, overwrite=True, steps=step,
                         seed=args.seed)

  heldout = jax.jit(addition.sample_queries, static_argnums=(1, 2))(
      eval_key, 4096, task)
  heldout_nll = float(-np.mean(jax.jit(attacker.model.log_prob)(params, heldout)))
  sample = jax.jit(attacker.model.sample, static_argnums=2)
  n_batches = -(-args.eval_samples // 4096)
  x = np.concatenate([
      np.asarray(sample(params, jax.random.fold_in(sample_key, i), 4096))
      for i in tqdm(range(n_batches), desc="samples")])
  parsed = addition.parse_queries(x, task.max_operand_len, allow_leading_zeros=False)

  result = {
      "command": command_line("pretrain_attacker.py", argv),
      "args": vars(args),
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
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("steps", "heldout_nll", "query_entropy",
                                           "malformed_fraction", "total_cpu_seconds")},
                   indent=2))


if __name__ == "__main__":
  main()
