"""Which weak mode of the target did each seed of an addition attack end in?

Reads the oracle ledgers of attack run directories (``attack.py --run-dir``)
and, for every seed, looks at the queries it paid for in its last
``--last-rounds`` rounds: their success rate and the share of them in each
weak slice of the target, with the success rate inside each slice. Slices
(:mod:`banel_jax.tasks.addition_patterns`):

* ``tops_45``: both operands ``max_operand_len`` digits, each starting with 4
  or 5 (``50059266+50753069=``);
* ``propagation_3``: the sum carries through at least 3 digit pairs summing to
  9 (``79999979+7890=``, the paper's carry chains);
* ``carry_into_top``: both operands ``max_operand_len`` digits and the lower
  digits carry into the top ones (``34070000+68864203=``);
* ``top_sum_13``: lengths ``max_operand_len`` and one fewer, the digits meeting
  at the shorter one's top summing to 13.

A seed's **mode** is the slice that holds the most of its last rounds'
successes, when it holds at least half of them (``none`` when the seed found
fewer than ``--min-successes`` there; ``mixed`` otherwise). Also reported:
the share of the last rounds' paid queries that repeat a query the seed paid
for before (a collapse onto known failures), and the final improvement (the
last evaluation's success rate over the pretrained rate of ``--calibration``),
with the number of successes in that evaluation and how many distinct queries
they are (a proposal may win by writing a few queries over and over).

The ledgers hold every paid query, so no oracle call is made here.

Writes ``census.json`` and ``census.png`` (each seed-run's final improvement
against its last rounds' share in each slice) to ``--out``.

Example:
  python research/mode_census.py --run-dir runs/attack_msb_e10 \\
      --run-dir runs/attack_msb_e10_s59 --out runs/census
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
  p.add_argument("--run-dir", action="append", required=True,
                 help="an attack run directory (attack.py --run-dir); repeat for more.")
  p.add_argument("--label", action="append", default=None,
                 help="a name for each --run-dir, in order (default: the folder name).")
  p.add_argument("--last-rounds", type=int, default=2,
                 help="rounds at the end of each run whose paid queries are "
                 "classified (default 2).")
  p.add_argument("--min-successes", type=int, default=5,
                 help="successes a seed needs in its last rounds to have a mode "
                 "(default 5).")
  p.add_argument("--calibration", default="results/addition_calibration_msb.json",
                 help="calibrate_attack.py output holding the pretrained rate "
                 "(the variant, leading zeros allowed or not, follows each run's task).")
  p.add_argument("--out", required=True, help="output folder.")
  args = p.parse_args(argv)
  if args.last_rounds < 1:
    p.error("--last-rounds must be >= 1")
  if args.label is not None and len(args.label) != len(args.run_dir):
    p.error(f"--label given {len(args.label)} times for {len(args.run_dir)} --run-dir")
  return args


def seed_census(queries, rewards, rounds, task, last_rounds: int,
                min_successes: int) -> dict:
  """One seed's paid queries (``[n, L]``, rewards, round of each) classified."""
  from banel_jax.tasks import addition_patterns as patterns
  queries, rewards, rounds = np.asarray(queries), np.asarray(rewards), np.asarray(rounds)
  first = rounds.max() - last_rounds + 1
  late = rounds >= first
  # Repeats: late queries equal to one paid in an earlier position of the run.
  _, first_index = np.unique(queries, axis=0, return_index=True)
  is_first = np.zeros(len(queries), bool)
  is_first[first_index] = True
  x, r = queries[late], rewards[late] > 0.5
  masks = patterns.weak_slice_masks(x, task)
  row = {"paid": int(late.sum()), "rounds": [int(first), int(rounds.max())],
         "success_rate": float(r.mean()) if len(r) else 0.0,
         "successes": int(r.sum()),
         "repeat_share": float(np.mean(~is_first[late])) if late.any() else 0.0,
         "distinct_share": (float(len(np.unique(x, axis=0)) / len(x)) if len(x) else 0.0),
         "share": {k: float(v.mean()) if len(v) else 0.0 for k, v in masks.items()},
         "success_rate_in": {k: (float(r[v].mean()) if v.any() else None)
                             for k, v in masks.items()},
         "share_of_successes": {k: (float(v[r].mean()) if r.any() else None)
                                for k, v in masks.items()}}
  if r.sum() < min_successes:
    row["mode"] = "none"
  else:
    best = max(patterns.WEAK_SLICES, key=lambda k: row["share_of_successes"][k])
    row["mode"] = best if row["share_of_successes"][best] >= 0.5 else "mixed"
  return row


def pretrained_rate(path: str, task) -> float:
  with open(path) as f:
    cal = json.load(f)
  variant = ("leading_zeros_allowed" if task.allow_leading_zeros
             else "leading_zeros_disallowed")
  return float(cal[variant]["success"]["rate"])


def census_of_run(run_dir: str, label: str, args) -> list[dict]:
  from banel_jax.runtime.ledger import read_calls
  record, task, _, _ = read_attack_run(run_dir)
  calls, _ = read_calls(os.path.join(run_dir, "ledger.jsonl"))
  paid = [c for c in calls if c.kind == "train"]
  evals = [c for c in calls if c.kind == "eval"]
  if not paid:
    raise SystemExit(f"{run_dir}: its ledger holds no paid (train) call")
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    history = [json.loads(line) for line in f]
  evaluated = [h for h in history if "success_rate" in h]
  rate0 = pretrained_rate(args.calibration, task)
  rows = []
  for i, seed in enumerate(record["seeds"]):
    q, rw, rd = [], [], []
    for c in paid:
      own = c.seeds == seed
      q += [row for row, o in zip(c.queries, own) if o]
      rw.append(c.rewards[own])
      # The ledger counts the rounds completed before the draw; round r + 1 paid.
      rd.append(np.full(int(own.sum()), c.round + 1))
    row = seed_census(np.array(q), np.concatenate(rw), np.concatenate(rd), task,
                      args.last_rounds, args.min_successes)
    final = evaluated[-1]["success_rate"][i]
    own = evals[-1].seeds == seed
    won = [q for q, o, r in zip(evals[-1].queries, own, evals[-1].rewards)
           if o and r > 0.5]
    row.update(run=label, seed=int(seed), final_success_rate=final,
               final_successes=len(won),
               final_distinct_successes=len({tuple(q) for q in won}),
               final_round=evaluated[-1]["round"],
               improvement_final=final / rate0)
    rows.append(row)
  return rows


def plot(rows, path: str):
  import matplotlib.pyplot as plt
  from banel_jax.tasks import addition_patterns as patterns
  fig, ax = plt.subplots(figsize=(7, 4.5))
  imp = np.array([max(r["improvement_final"], 0.05) for r in rows])
  for k, marker in zip(patterns.WEAK_SLICES, "osx^"):
    ax.scatter(imp, [r["share"][k] for r in rows], marker=marker, label=k, alpha=0.7)
  ax.set_xscale("log")
  ax.axvline(50, color="grey", ls="--", lw=0.8)
  ax.set_xlabel("final improvement (x pretrained; 0 drawn at 0.05)")
  ax.set_ylabel("share of the last rounds' paid queries")
  ax.set_title(f"{len(rows)} seed-runs: where each seed ended")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  import matplotlib
  matplotlib.use("Agg")
  from banel_jax.tasks import addition_patterns as patterns
  labels = args.label or [os.path.basename(os.path.normpath(d)) for d in args.run_dir]
  rows = []
  for run_dir, label in zip(args.run_dir, labels):
    rows += census_of_run(run_dir, label, args)
  modes = {}
  for r in rows:
    modes.setdefault(r["mode"], []).append(r["improvement_final"])
  summary = {m: {"seed_runs": len(v), "median_improvement": float(np.median(v)),
                 "hits_50x": int(np.sum(np.array(v) >= 50))}
             for m, v in sorted(modes.items())}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "census.json"), "w") as f:
    json.dump({"command": command_line("mode_census.py", argv),
               "last_rounds": args.last_rounds, "min_successes": args.min_successes,
               "by_mode": summary, "rows": rows}, f, indent=1)
  plot(rows, os.path.join(args.out, "census.png"))
  for r in rows:
    shares = " ".join(f"{k} {r['share'][k]:.3f}" for k in patterns.WEAK_SLICES)
    print(f"{r['run']} seed {r['seed']}: {r['improvement_final']:.1f}x "
          f"({r['final_distinct_successes']} distinct of {r['final_successes']} "
          f"final successes), last "
          f"{args.last_rounds} rounds {r['success_rate']:.4f} ({r['successes']}), "
          f"repeats {r['repeat_share']:.3f}, mode {r['mode']} | {shares}")
  for m, s in summary.items():
    print(f"mode {m}: {s['seed_runs']} seed-runs, {s['hits_50x']} at >= 50x, "
          f"median {s['median_improvement']:.1f}x")
  print(f"wrote {args.out}/")


if __name__ == "__main__":
  main()
