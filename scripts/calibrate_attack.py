"""Measures the pretrained attacker's success rate against the target.

Samples ``--num-samples`` queries from the attacker, asks the target the
well-formed ones once, and scores them in both leading-zero variants (the
rewards are exactly those of ``addition.make_oracle`` with
``allow_leading_zeros`` True / False). Writes each success rate with its
Clopper-Pearson 95% interval, the malformed fractions and example attacks to
JSON. The task wants the rate with leading zeros allowed in [1e-4, 2e-3].

Example:
  python scripts/calibrate_attack.py --target checkpoints/target \\
      --attacker checkpoints/attacker --out results/addition_calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from banel_jax.metrics import clopper_pearson
from banel_jax.models.transformer import make_transformer
from banel_jax.tasks import addition

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts._cli import command_line  # noqa: E402

WINDOW = (1e-4, 2e-3)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--target", default="checkpoints/target",
                 help="target checkpoint (scripts/train_target.py)")
  p.add_argument("--attacker", default="checkpoints/attacker",
                 help="attacker checkpoint (scripts/pretrain_attacker.py)")
  p.add_argument("--out", default="results/addition_calibration.json",
                 help="where to write the JSON result")
  p.add_argument("--num-samples", type=int, default=200_000,
                 help="attacker queries to score (rounded up to --batch-size)")
  p.add_argument("--batch-size", type=int, default=4096,
                 help="queries sampled and decoded per jitted call")
  p.add_argument("--seed", type=int, default=0, help="root PRNG seed")
  p.add_argument("--max-examples", type=int, default=25,
                 help="successful attacks listed in the JSON")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  cpu0, wall0 = time.process_time(), time.time()
  target_params, task, target_meta = addition.load_target(args.target)
  attacker_params, attacker_task, attacker_meta = addition.load_attacker(args.attacker)
  for field in ("max_operand_len", "max_len"):
    if getattr(task, field) != getattr(attacker_task, field):
      raise SystemExit(f"target and attacker disagree on {field}: "
                       f"{getattr(task, field)} vs {getattr(attacker_task, field)}")
  attacker = make_transformer(attacker_task.attacker)
  sample = jax.jit(attacker.model.sample, static_argnums=2)
  score = addition.make_scorer(target_params, task, batch_size=args.batch_size)

  key = jax.random.key(args.seed)
  n_batches = -(-args.num_samples // args.batch_size)
  counts = dict(n=0, syntax_ok=0, leading_zero=0, success_zeros=0,
                success_no_zeros=0, success_leading_zero=0)
  examples = []
  for i in tqdm(range(n_batches), desc="calibrate", unit="batch"):
    x = np.asarray(sample(attacker_params, jax.random.fold_in(key, i), args.batch_size))
    s = score(x)
    r_zeros, r_no_zeros = s.rewards(True), s.rewards(False)
    counts["n"] += x.shape[0]
    counts["syntax_ok"] += int(s.syntax_ok.sum())
    counts["leading_zero"] += int(s.leading_zero.sum())
    counts["success_zeros"] += int(r_zeros.sum())
    counts["success_no_zeros"] += int(r_no_zeros.sum())
    counts["success_leading_zero"] += int((r_zeros.astype(bool) & s.leading_zero).sum())
    for j in np.flatnonzero(r_zeros)[:max(0, args.max_examples - len(examples))]:
      examples.append({"query": addition.decode(x[j]), "truth": int(s.truth[j]),
                       "target_answer": (int(s.answer[j]) if s.answer_valid[j]
                                         else None),
                       "leading_zero": bool(s.leading_zero[j])})

  n = counts["n"]
  zeros = clopper_pearson(counts["success_zeros"], n)
  no_zeros = clopper_pearson(counts["success_no_zeros"], n)
  well_formed_zeros = counts["syntax_ok"]
  well_formed_no_zeros = counts["syntax_ok"] - counts["leading_zero"]
  result = {
      "command": command_line("calibrate_attack.py", argv),
      "args": vars(args),
      "target": {"path": args.target, "steps": target_meta.get("steps"),
                 "task": target_meta["task"]},
      "attacker": {"path": args.attacker, "steps": attacker_meta.get("steps")},
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
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("num_samples", "leading_zeros_allowed",
                                           "leading_zeros_disallowed", "cpu_seconds")},
                   indent=2))


if __name__ == "__main__":
  main()
