"""Where the addition target errs: its error rate by operand lengths and carries.

Explains what an attacker has to find. Queries are drawn uniformly per operand
length pair (no leading zeros) and answered by the target's greedy decoding; the
oracle's reward (1 = wrong answer) is averaged per cell. Then, among queries of
``max_operand_len`` and ``max_operand_len - 1`` digits (either order), the error
rate is split by whether the sum carries out of the shorter operand's top digit
and by the sum of the two digits that meet at that position. Last, among
queries with both operands ``max_operand_len`` digits long, it is split by the
sum of the two top digits and by whether the lower digits carry into them, and
by the pair of top digits itself (a sum hides a weak pair: for the MSB target,
4+4 and 5+5 are weak while the other pairs summing to 8 or 10 are not).
Finally, on queries of the pretraining distribution, the error rate by the
longest run of consecutive carries (the paper's ``99999999+9=`` pattern; a
target that writes the sum most significant digit first errs there; in the
JSON only).

Writes ``--out`` (default ``results/target_error_map``): ``error_map.json`` (the
command, every cell with its Clopper-Pearson interval) and ``error_map.png``.

Example:
  python research/target_error_map.py                 # a few minutes on 2 CPU cores
  python research/target_error_map.py --per-cell 200 --pool 5000   # under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from research._common import checkpoint_path, command_line  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--target-dir", default="target",
                 help="target checkpoint: a shipped name (target, target_msb) "
                 "or a directory (banel train-target).")
  p.add_argument("--per-cell", type=int, default=2000,
                 help="queries per operand-length pair.")
  p.add_argument("--pool", type=int, default=100_000,
                 help="queries of the two longest lengths for the carry split.")
  p.add_argument("--chain-queries", type=int, default=32768,
                 help="pretraining-distribution queries for the split by carry "
                      "chain length.")
  p.add_argument("--rule-queries", type=int, default=4000,
                 help="queries per rule-based attack.")
  p.add_argument("--seed", type=int, default=0, help="numpy seed of the queries.")
  p.add_argument("--out", default="results/target_error_map", help="output folder.")
  return p.parse_args(argv)


def operands(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
  """``n`` uniform integers with exactly ``length`` digits (0-9 for one digit)."""
  low = 10 ** (length - 1) if length > 1 else 0
  return rng.integers(low, 10 ** length, size=n, dtype=np.int64)


def rows(a, b, max_len: int) -> np.ndarray:
  from banel_jax.tasks import addition
  return addition.encode_batch([f"{x}+{y}=" for x, y in zip(a, b)], max_len=max_len)


def main(argv=None):
  args = parse_args(argv)
  if min(args.per_cell, args.pool, args.chain_queries, args.rule_queries) < 1:
    raise SystemExit("--per-cell, --pool, --chain-queries and --rule-queries must "
                     "be >= 1")
  from banel_jax.core.metrics import clopper_pearson
  from banel_jax.tasks import addition
  import jax
  from banel_jax.tasks.addition_patterns import (RULES, carries_into_top,
                                                 carries_past_shorter,
                                                 carry_chain_length,
                                                 rule_based_queries, top_digit_sum)

  params, task, meta = addition.load_target(checkpoint_path(args.target_dir))
  oracle = addition.make_oracle(params, task.replace(allow_leading_zeros=True))
  m = task.max_operand_len
  rng = np.random.default_rng(args.seed)

  # 1. Error rate per operand-length pair (one oracle call: it pads to its chunk).
  pairs = [(la, lb) for la in range(1, m + 1) for lb in range(1, m + 1)]
  a = np.concatenate([operands(rng, args.per_cell, la) for la, _ in pairs])
  b = np.concatenate([operands(rng, args.per_cell, lb) for _, lb in pairs])
  r_all = oracle(rows(a, b, task.max_len)).reshape(len(pairs), args.per_cell)
  grid = np.zeros((m, m))
  cells = []
  for (la, lb), r in zip(pairs, r_all):
    est = clopper_pearson(int(r.sum()), len(r))
    grid[la - 1, lb - 1] = est.rate
    cells.append({"len_a": la, "len_b": lb, **est.as_dict()})
  for la in range(1, m + 1):
    print(f"len_a {la}: " + " ".join(f"{v:.4f}" for v in grid[la - 1]), flush=True)

  # 2. Lengths (m, m - 1) and (m - 1, m): carries and the top digit sum.
  half = args.pool // 2
  long_ = np.concatenate([operands(rng, half, m), operands(rng, args.pool - half, m)])
  short = np.concatenate([operands(rng, half, m - 1),
                          operands(rng, args.pool - half, m - 1)])
  swap = np.arange(args.pool) >= half  # second half written short + long
  a = np.where(swap, short, long_)
  b = np.where(swap, long_, short)
  la = np.where(swap, m - 1, m)
  lb = np.where(swap, m, m - 1)
  r = oracle(rows(a, b, task.max_len)) > 0.5
  carry = carries_past_shorter(a, b, la, lb)
  top_sum = top_digit_sum(long_, short, m)
  by_carry = {name: clopper_pearson(int(r[sel].sum()), int(sel.sum())).as_dict()
              for name, sel in (("carry", carry), ("no_carry", ~carry))}
  by_top_sum = []
  for s in range(1, 19):
    sel = top_sum == s
    if sel.any():
      by_top_sum.append({"top_digit_sum": s,
                         **clopper_pearson(int(r[sel].sum()), int(sel.sum())).as_dict()})
  for row in by_top_sum:
    print(f"lengths ({m},{m - 1}), top digits sum to {row['top_digit_sum']:2d}: "
          f"{row['successes']}/{row['trials']} = {row['rate']:.4f}", flush=True)

  # 3. Lengths (m, m): the two top digits' sum, and a carry into them or not.
  a, b = operands(rng, args.pool, m), operands(rng, args.pool, m)
  r = oracle(rows(a, b, task.max_len)) > 0.5
  low = 10 ** (m - 1)
  top_a, top_b = a // low, b // low
  top_sum_mm = top_a + top_b
  carry_in = carries_into_top(a, b, m)
  by_top_carry = []
  for c in (False, True):
    for s in range(2, 19):
      sel = (top_sum_mm == s) & (carry_in == c)
      if sel.any():
        by_top_carry.append({"top_digit_sum": s, "carry_in": c,
                             **clopper_pearson(int(r[sel].sum()), int(sel.sum())).as_dict()})
  for c in (False, True):
    sel = carry_in == c
    print(f"lengths ({m},{m}), {'a' if c else 'no'} carry into the top digits: "
          f"{int(r[sel].sum())}/{int(sel.sum())} = {r[sel].mean():.4f}", flush=True)
  pair_grid = np.zeros((9, 9))
  by_top_pair = []
  for ta in range(1, 10):
    for tb in range(1, 10):
      sel = (top_a == ta) & (top_b == tb)
      if not sel.any():  # a tiny --pool may miss a pair
        pair_grid[ta - 1, tb - 1] = np.nan
        continue
      est = clopper_pearson(int(r[sel].sum()), int(sel.sum()))
      pair_grid[ta - 1, tb - 1] = est.rate
      by_top_pair.append({"top_a": ta, "top_b": tb, **est.as_dict()})
  worst = sorted(by_top_pair, key=lambda row: -row["rate"])[:5]
  print(f"lengths ({m},{m}), weakest top-digit pairs: " + ", ".join(
      f"{row['top_a']}+{row['top_b']} {row['successes']}/{row['trials']} = "
      f"{row['rate']:.4f}" for row in worst), flush=True)

  # 4. The pretraining distribution, by the longest run of carries.
  x = np.asarray(jax.jit(addition.sample_queries, static_argnums=(1, 2))(
      jax.random.key(args.seed), args.chain_queries, task))
  r = oracle(x) > 0.5
  parsed = addition.parse_queries(x, m)
  chain = carry_chain_length(parsed.a, parsed.b)
  by_chain = [{"carry_chain": int(c),
               **clopper_pearson(int(r[chain == c].sum()), int((chain == c).sum())).as_dict()}
              for c in np.unique(chain)]
  for row in by_chain:
    print(f"pretraining queries, longest carry run {row['carry_chain']}: "
          f"{row['successes']}/{row['trials']} = {row['rate']:.4f}", flush=True)

  # 5. The rule-based attacks.
  rules = {}
  for rule in RULES:
    r = oracle(rule_based_queries(rng, args.rule_queries, rule, task)) > 0.5
    rules[rule] = clopper_pearson(int(r.sum()), len(r)).as_dict()
    print(f"rule {rule}: {rules[rule]['successes']}/{len(r)} = "
          f"{rules[rule]['rate']:.4f}", flush=True)

  os.makedirs(args.out, exist_ok=True)
  summary = {"command": command_line("target_error_map.py", argv),
             "target_dir": args.target_dir,
             "target_steps": meta.get("steps"), "per_cell": args.per_cell,
             "pool": args.pool, "by_length_pair": cells,
             f"lengths_{m}_{m - 1}_by_carry_past_shorter": by_carry,
             f"lengths_{m}_{m - 1}_by_top_digit_sum": by_top_sum,
             f"lengths_{m}_{m}_by_top_digit_sum_and_carry_in": by_top_carry,
             f"lengths_{m}_{m}_by_top_digit_pair": by_top_pair,
             "chain_queries": args.chain_queries,
             "pretraining_by_carry_chain": by_chain,
             "rule_queries": args.rule_queries, "rule_based_attacks": rules}
  with open(os.path.join(args.out, "error_map.json"), "w") as f:
    json.dump(summary, f, indent=1)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax0, ax1, ax2, ax3) = plt.subplots(1, 4, figsize=(20, 4))
  im = ax0.imshow(grid, origin="lower", extent=(0.5, m + 0.5, 0.5, m + 0.5),
                  cmap="magma")
  fig.colorbar(im, ax=ax0, label="target error rate")
  ax0.set_xlabel("digits of b")
  ax0.set_ylabel("digits of a")
  ax0.set_title(f"error rate by operand lengths ({args.per_cell} per cell)")
  ax1.bar([row["top_digit_sum"] for row in by_top_sum],
          [row["rate"] for row in by_top_sum],
          yerr=[[row["rate"] - row["low"] for row in by_top_sum],
                [row["high"] - row["rate"] for row in by_top_sum]], color="C1")
  ax1.set_xlabel("sum of the digits meeting at the shorter operand's top")
  ax1.set_ylabel("target error rate")
  ax1.set_title(f"lengths ({m}, {m - 1}) either order")
  for c, color, shift in ((False, "C0", -0.2), (True, "C3", 0.2)):
    sel = [row for row in by_top_carry if row["carry_in"] == c]
    ax2.bar([row["top_digit_sum"] + shift for row in sel], [row["rate"] for row in sel],
            width=0.4, color=color,
            yerr=[[row["rate"] - row["low"] for row in sel],
                  [row["high"] - row["rate"] for row in sel]],
            label="carry into the top digits" if c else "no carry into them")
  ax2.set_xlabel("sum of the two top digits")
  ax2.set_ylabel("target error rate")
  ax2.set_title(f"lengths ({m}, {m})")
  ax2.legend()
  im = ax3.imshow(pair_grid, origin="lower", extent=(0.5, 9.5, 0.5, 9.5), cmap="magma")
  fig.colorbar(im, ax=ax3, label="target error rate")
  ax3.set_xlabel("top digit of b")
  ax3.set_ylabel("top digit of a")
  ax3.set_title(f"lengths ({m}, {m}) by top-digit pair")
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "error_map.png"), dpi=110)
  print(f"wrote {args.out}/")


if __name__ == "__main__":
  main()
