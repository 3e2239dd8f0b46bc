"""How an addition attack's proposal changed, round by round, from its run directory.

BaNEL's region bank keeps the proposal of every round (the params that drew that
round's scored samples), so a run directory holds the whole trajectory. This
script samples each stored proposal and the current one (no reward evaluations
are charged: the target's answers here are evaluation calls, as for the success
rate) and reports per seed and round (``seed``: the seed's value, from the
run's config; ``seed_index``: its position in the run):

* ``malformed``: share of rows the oracle rejects as malformed;
* ``both_long``: share of well-formed rows whose operands both have at least
  ``max_operand_len - 1`` digits (where the target's errors are, see
  ``research/target_error_map.py``);
* ``top_sum_13``: share of well-formed rows in the one slice where the target
  errs often (lengths ``max_operand_len`` and one fewer, the digits meeting at
  the shorter operand's top position summing to 13; 3.7% errors there);
* ``carry_into_top``: share of well-formed rows in the broad weak slice (both
  operands ``max_operand_len`` digits, the lower digits carrying into the top
  ones; 0.84% errors there);
* ``tops_45``: share of well-formed rows in the MSB target's weak slice (both
  operands ``max_operand_len`` digits, each starting with 4 or 5; 5-17% errors
  on the ``target_msb`` checkpoint);
* ``propagation_3``: share of well-formed rows whose sum carries through at
  least 3 digit pairs summing to 9 (the carry-chain mode, ``79999979+7890=``);
* ``leading_zero``: share of well-formed rows with a leading zero;
* ``inside_regions``: share of rows inside the regions that existed when the
  proposal drew its round (regions ``1 .. r - 1`` for round ``r``): what the
  round paid for although the exploration posterior already gave it no mass, and
  what ``--proposal-filter`` would not pay for;
* ``inside_own_region``: share of rows inside the region fitted on that round's
  failures (about ``calibrated_reject_fraction`` in calibrated mode: a check that
  the bank was read back right; ``None`` for the current proposal);
* ``success``: the success rate with its Clopper-Pearson interval.

It is the tool that showed why the 5-seed attack peaks and then declines: the
proposal drifts into malformed queries (``results/README.md`` at commit 3a3529a, "Why it peaks,
then declines").

Writes ``--out``: ``drift.json`` (the command and every row) and ``drift.png``
(mean shares and success rate against round).

Example:
  python research/proposal_drift.py --run-dir runs/attack_full30 --out results/attack_drift
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from research._common import command_line, read_attack_run  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run-dir", required=True,
                 help="run directory of banel attack --run-dir.")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint to read (default: the newest).")
  p.add_argument("--samples", type=int, default=4000,
                 help="samples drawn from each proposal (per seed and round).")
  p.add_argument("--every", type=int, default=1,
                 help="analyse every this many rounds (the current proposal always).")
  p.add_argument("--target-dir", default=None,
                 help="target checkpoint (default: the one the run recorded).")
  p.add_argument("--attacker-dir", default=None,
                 help="pretrained attacker checkpoint (default: the run's).")
  p.add_argument("--no-regions", action="store_true",
                 help="skip inside_regions and inside_own_region (None in the "
                      "output): two log-prob passes per region and sample, the "
                      "slow part late in a long run. The other fields, success "
                      "rate included, are the same numbers as without it.")
  p.add_argument("--seed", type=int, default=0, help="PRNG seed of the samples.")
  p.add_argument("--out", default=None,
                 help="output folder (default <run-dir>/drift).")
  return p.parse_args(argv)


def proposal_row(x, rewards, task) -> dict:
  """The statistics of one proposal's samples (see the module docstring)."""
  from banel_jax.core.metrics import clopper_pearson
  from banel_jax.tasks import addition_patterns as patterns
  summary = patterns.pattern_summary(x, task, rewards)
  rate = clopper_pearson(int(np.sum(rewards > 0.5)), len(rewards))
  return {"malformed": summary["malformed_fraction"],
          "both_long": patterns.both_long_share(x, task),
          "top_sum_13": patterns.top_sum_13_share(x, task),
          "carry_into_top": patterns.carry_into_top_share(x, task),
          "tops_45": patterns.tops_45_share(x, task),
          "propagation_3": patterns.propagation_share(x, task),
          "leading_zero": summary["leading_zero_share"],
          "distinct": summary["distinct"] / max(len(x), 1),
          "success": rate.as_dict()}


def main(argv=None):
  args = parse_args(argv)
  import matplotlib
  matplotlib.use("Agg")
  import jax

  from banel_jax.core import posterior
  from banel_jax.runtime.run_dir import read_checkpoint, unflatten_state
  from banel_jax.models import transformer as tfm
  from banel_jax.tasks import addition

  record, task, target_dir, attacker_dir = read_attack_run(
      args.run_dir, args.target_dir, args.attacker_dir)
  extra = record.get("extra", {})
  attacker_params, _, _ = addition.load_attacker(attacker_dir)
  target_params, _, _ = addition.load_target(target_dir)
  oracle = addition.make_oracle(target_params, task)
  model = tfm.make_transformer(task.attacker).model
  sample = jax.jit(model.sample, static_argnums=2)

  step, arrays, _ = read_checkpoint(args.run_dir, args.step)
  n_seeds = arrays["proposal.step"].shape[0]
  seed_values = list(record.get("seeds", range(n_seeds)))
  capacity = arrays["regions.log_tau"].shape[1]

  def params(prefix, index):
    flat = {k[len(prefix):]: v[index] for k, v in arrays.items() if k.startswith(prefix)}
    return unflatten_state(flat, attacker_params)

  add_region = jax.jit(posterior.add_region)
  inside = jax.jit(lambda bank, x: posterior.rejection_mask(model, bank, x, "loop"))
  empty = posterior.empty_region_bank(attacker_params, capacity)

  def bank_of(s, slots, bank=empty):
    """``bank`` plus seed ``s``'s stored regions ``slots``."""
    for j in slots:
      if arrays["regions.valid"][s, j]:
        bank = add_region(bank, params("regions.proposal_params.", (s, j)),
                          params("regions.failure_params.", (s, j)),
                          arrays["regions.log_tau"][s, j],
                          arrays["regions.log_norm"][s, j])
    return bank

  def share_inside(bank, x):
    return float(np.mean(np.asarray(inside(bank, x)))) if int(bank.size) else 0.0

  # Slot r of the region bank holds the proposal that drew round r + 1's samples.
  rounds = list(range(0, step, args.every))
  key = jax.random.key(args.seed)
  rows = []
  for s in range(n_seeds):
    earlier, n_earlier = empty, 0  # seed s's regions 0 .. n_earlier - 1
    for r in rounds + [step]:
      p = (params("regions.proposal_params.", (s, r)) if r < step
           else params("proposal.params.", s))
      x = np.asarray(sample(p, jax.random.fold_in(key, s * 10_000 + r), args.samples))
      row = {"seed": int(seed_values[s]), "seed_index": s, "round": r + 1, **proposal_row(x, oracle(x), task),
             "inside_regions": None, "inside_own_region": None}
      if not args.no_regions:
        earlier, n_earlier = bank_of(s, range(n_earlier, r), earlier), r
        row["inside_regions"] = share_inside(earlier, x)
        if r < step:  # the current proposal has no region yet
          row["inside_own_region"] = share_inside(bank_of(s, [r]), x)
      rows.append(row)
      regions = ("" if args.no_regions else
                 f" inside earlier regions {row['inside_regions']:.3f}")
      print(f"seed {row['seed']} proposal of round {r + 1}: success {row['success']['rate']:.4f} "
            f"malformed {row['malformed']:.3f} both long {row['both_long']:.3f} "
            f"top sum 13 {row['top_sum_13']:.3f} "
            f"carry into top {row['carry_into_top']:.3f} tops 4/5 {row['tops_45']:.3f} "
            f"propagation >= 3 {row['propagation_3']:.3f} "
            f"leading zero {row['leading_zero']:.4f}{regions}", flush=True)

  out = args.out or os.path.join(args.run_dir, "drift")
  os.makedirs(out, exist_ok=True)
  command = command_line("proposal_drift.py", argv)
  with open(os.path.join(out, "drift.json"), "w") as f:
    json.dump({"command": command, "checkpoint_step": step, "task": extra["task"],
               "samples": args.samples, "rows": rows}, f, indent=1)
  plot(rows, os.path.join(out, "drift.png"))
  print(f"wrote {out}/")


def plot(rows, path):
  """Mean (over seeds) shares of each round's proposal; its success rate per
  seed and the mean."""
  import matplotlib.pyplot as plt
  rounds = sorted({r["round"] for r in rows})

  def mean(field, sub=None):
    return [np.mean([(r[field][sub] if sub else r[field]) for r in rows
                     if r["round"] == k]) for k in rounds]

  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  ax.plot(rounds, mean("malformed"), "o-", label="malformed")
  ax.plot(rounds, mean("both_long"), "s-", label="both operands long")
  ax.plot(rounds, mean("top_sum_13"), "v-", label="top-sum-13 slice")
  ax.plot(rounds, mean("carry_into_top"), "^-", label="(8, 8), carry into the top")
  ax.plot(rounds, mean("tops_45"), "x-", label="(8, 8), tops 4/5")
  ax.plot(rounds, mean("propagation_3"), "+-", label="carry propagates >= 3")
  ax.plot(rounds, mean("leading_zero"), "d-", label="leading zero")
  if rows[0]["inside_regions"] is not None:  # left out under --no-regions
    ax.plot(rounds, mean("inside_regions"), "^-", label="inside earlier regions")
  ax.set_xlabel("round (proposal that drew it)")
  ax.set_ylabel("share of samples (mean over seeds)")
  ax.set_ylim(0, 1)
  ax.legend()
  for seed in sorted({r["seed"] for r in rows}):  # one seed can carry the mean
    own = sorted((r["round"], r["success"]["rate"]) for r in rows if r["seed"] == seed)
    ax2.plot(*zip(*own), "-", lw=0.8, alpha=0.6, label=f"seed index {seed}")
  ax2.plot(rounds, mean("success", "rate"), "o-", color="black", label="mean")
  ax2.set_xlabel("round")
  ax2.set_ylabel("success rate")
  ax2.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
