"""Do an addition attack's rejection regions spare the target's errors?

BaNEL's exploration posterior is ``p_0(x) 1[x not in R_1 u ... u R_t]``. It helps
only if the regions, fitted to failures alone, take in fewer of the target's
errors than of the queries the attacker writes. This script reads a run
directory of ``banel attack --run-dir`` (every region is stored in the
checkpoint) and measures, per seed and region, with no reward evaluation charged:

* ``inside_samples``: the share of fresh samples of the pretrained attacker
  ``p_0`` inside the region;
* ``inside_errors``: the share of the target's real errors inside it. The errors
  are the successful queries of a rule-based attack (``--error-rule``): by
  default ``carry_past_shorter_13`` (lengths 8 and 7, top digits summing to 13,
  3.7% errors), or ``carry_into_top`` (lengths 8 and 8 with a carry into the
  top digits, 0.84%), the target's two main weak slices
  (``results/target_error_map``);
* the same two shares for the union of regions ``1..t`` after each round ``t``,
  and the **lift** ``(1 - inside_errors) / (1 - inside_samples)``: how much the
  exact exploration posterior would raise the rate of such errors over ``p_0``
  (1 = the regions carry no information about them; above 1, they spare them).

Writes ``--out``: ``lift.json`` (the command, per-run summaries and every row)
and ``lift.png`` (lift against round per seed; per region, errors inside against
samples inside).

Example:
  python research/region_lift.py --run-dir runs/attack_full30 --out results/region_lift
  python research/region_lift.py --run-dir runs/attack_e1 runs/attack_e100 \\
      --out runs/region_lift_epochs   # two attacks, --banel.failure-epochs 1 and 100
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
  p.add_argument("--run-dir", nargs="+", required=True,
                 help="one or more run directories of banel attack --run-dir.")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint to read in every run (default: each run's newest).")
  p.add_argument("--samples", type=int, default=2000,
                 help="fresh samples of the pretrained attacker (p_0).")
  p.add_argument("--error-rule", default="carry_past_shorter_13",
                 help="rule-based attack whose successes are the error set (one "
                 "of banel_jax.tasks.addition_patterns.RULES).")
  p.add_argument("--rule-queries", type=int, default=8000,
                 help="rule-based queries drawn; the ones the target gets wrong are "
                 "the error set (about 4%% of carry_past_shorter_13's, 0.8%% of "
                 "carry_into_top's).")
  p.add_argument("--min-outside", type=int, default=20,
                 help="report no lift where fewer than this many of the samples lie "
                 "outside the union (its estimate would be noise).")
  p.add_argument("--target-dir", default=None,
                 help="target checkpoint (default: the one each run recorded).")
  p.add_argument("--attacker-dir", default=None,
                 help="pretrained attacker checkpoint (default: each run's).")
  p.add_argument("--seed", type=int, default=0, help="seed of the samples and queries.")
  p.add_argument("--out", default="results/region_lift", help="output folder.")
  return p.parse_args(argv)


def lift(inside_errors: float, inside_samples: float, n_samples: int,
         min_outside: int) -> float | None:
  """``(1 - inside_errors) / (1 - inside_samples)``, or None when fewer than
  ``min_outside`` of the ``n_samples`` samples lie outside (too few to tell)."""
  if (1.0 - inside_samples) * n_samples < min_outside - 1e-9:
    return None
  return float((1.0 - inside_errors) / (1.0 - inside_samples))


def region_shares(inside_x: np.ndarray, inside_e: np.ndarray,
                  min_outside: int = 20) -> dict:
  """Per-region and cumulative shares from ``bool[regions, n]`` inside masks
  (samples ``inside_x``, errors ``inside_e``); see the module docstring."""
  ux = np.logical_or.accumulate(inside_x, axis=0).mean(axis=1)
  ue = np.logical_or.accumulate(inside_e, axis=0).mean(axis=1)
  n = inside_x.shape[1]
  return {"inside_samples": inside_x.mean(axis=1).tolist(),
          "inside_errors": inside_e.mean(axis=1).tolist(),
          "union_inside_samples": ux.tolist(), "union_inside_errors": ue.tolist(),
          "union_lift": [lift(e, x, n, min_outside) for e, x in zip(ue, ux)]}


def mean_by_regions(seeds: list[dict]) -> list[dict]:
  """Per number of regions ``k``: the mean union lift over the seeds where it is
  measured, and how many seeds that is."""
  most = max((len(s["union_lift"]) for s in seeds), default=0)
  out = []
  for k in range(most):
    v = [s["union_lift"][k] for s in seeds
         if k < len(s["union_lift"]) and s["union_lift"][k] is not None]
    out.append({"regions": k + 1, "mean": float(np.mean(v)) if v else None,
                "seeds": len(v)})
  return out


def analyse_run(run_dir: str, args, cache: dict) -> dict:
  """The shares of every seed of one run directory (see the module docstring)."""
  import jax

  from banel_jax.core import posterior
  from banel_jax.models import transformer as tfm
  from banel_jax.runtime.run_dir import read_checkpoint, unflatten_state
  from banel_jax.tasks import addition
  from banel_jax.tasks import addition_patterns as patterns

  record, task, target_dir, attacker_dir = read_attack_run(
      run_dir, args.target_dir, args.attacker_dir)
  extra = record.get("extra", {})
  key = (target_dir, attacker_dir, task)
  if key not in cache:  # the sample and error sets, shared by runs of one task
    attacker_params, _, _ = addition.load_attacker(attacker_dir)
    target_params, _, _ = addition.load_target(target_dir)
    model = tfm.make_transformer(task.attacker).model
    x = np.asarray(jax.jit(model.sample, static_argnums=2)(
        attacker_params, jax.random.key(args.seed), args.samples))
    rules = patterns.rule_based_queries(np.random.default_rng(args.seed),
                                        args.rule_queries, args.error_rule, task)
    errors = rules[addition.make_oracle(target_params, task)(rules) > 0]
    if not len(errors):
      raise SystemExit(f"none of {args.rule_queries} rule-based queries fooled the "
                       f"target at {target_dir}: no error set to measure")
    ratio = jax.jit(lambda p, f, x, n: posterior.log_ratio(model, p, f, x, n))
    cache[key] = (attacker_params, np.concatenate([x, errors]), len(x), ratio)
  attacker_params, queries, n_x, ratio = cache[key]

  step, arrays, _ = read_checkpoint(run_dir, args.step)
  n_seeds, capacity = arrays["regions.log_tau"].shape
  template = posterior.empty_region_bank(attacker_params, capacity)
  seeds = []
  for s in range(n_seeds):
    bank = unflatten_state({k[len("regions."):]: v[s] for k, v in arrays.items()
                            if k.startswith("regions.")}, template)
    size = int(bank.size)
    inside = np.zeros((size, len(queries)), bool)
    for j in range(size):
      pick = lambda tree, j=j: jax.tree.map(lambda a: a[j], tree)
      lr = np.asarray(ratio(pick(bank.proposal_params), pick(bank.failure_params),
                            queries, bank.log_norm[j]))
      inside[j] = lr < float(bank.log_tau[j])
    shares = region_shares(inside[:, :n_x], inside[:, n_x:], args.min_outside)
    measured = [(t + 1, v) for t, v in enumerate(shares["union_lift"]) if v is not None]
    seeds.append({"seed": record["seeds"][s], "regions": size, **shares,
                  "last_measured": ({"regions": measured[-1][0], "lift": measured[-1][1]}
                                    if measured else None),
                  "max_lift": max((v for _, v in measured), default=None)})
    last = seeds[-1]["last_measured"]
    print(f"{run_dir} seed {record['seeds'][s]}: {size} regions; union lift by round "
          f"{[None if v is None else round(v, 2) for v in shares['union_lift']]}"
          + (f"; last measured {last['lift']:.2f} after {last['regions']} regions"
             if last else ""), flush=True)
  per_region = [(x, e) for r in seeds for x, e in zip(r["inside_samples"],
                                                      r["inside_errors"])]
  last = [r["last_measured"]["lift"] for r in seeds if r["last_measured"]]
  peak = [r["max_lift"] for r in seeds if r["max_lift"] is not None]
  return {"run_dir": run_dir, "checkpoint_step": step,
          "failure_epochs": record["config"].get("failure_epochs"),
          "support_filter": bool(extra.get("support_filter", False)),
          "n_samples": n_x, "n_errors": len(queries) - n_x,
          "union_lift_mean_by_regions": mean_by_regions(seeds),
          "last_measured_lift_mean": float(np.mean(last)) if last else None,
          "max_lift_mean": float(np.mean(peak)) if peak else None,
          "regions_sparing_errors": int(sum(e < x for x, e in per_region)),
          "regions": len(per_region),
          "seeds": seeds}


def plot(runs: list[dict], path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for i, run in enumerate(runs):
    name = os.path.basename(os.path.normpath(run["run_dir"]))
    means = run["union_lift_mean_by_regions"]
    ax.plot([m["regions"] for m in means],
            [np.nan if m["mean"] is None else max(m["mean"], 1e-2) for m in means],
            "o-", color=f"C{i}", lw=2, label=f"{name} (mean over seeds)")
    for k, s in enumerate(run["seeds"]):
      y = [np.nan if v is None else max(v, 1e-2) for v in s["union_lift"]]
      ax.plot(range(1, len(y) + 1), y, "-", color=f"C{i}", alpha=0.25, lw=1)
      ax2.scatter(s["inside_samples"], s["inside_errors"], color=f"C{i}", s=10,
                  alpha=0.6, label=name if k == 0 else None)
  ax.axhline(1.0, color="k", ls=":", lw=1)
  ax.set_yscale("log")
  ax.set_xlabel("regions so far (rounds)")
  ax.set_ylabel("lift of the target's errors\n(1 - errors inside) / (1 - samples inside)")
  ax.legend(fontsize=7)
  ax2.plot([0, 1], [0, 1], "k:", lw=1)
  ax2.set_xlabel("share of p_0's samples inside the region")
  ax2.set_ylabel("share of the target's errors inside the region")
  ax2.set_title("one point per region (below the line: spares errors)", fontsize=9)
  ax2.set_xlim(0, 1)
  ax2.set_ylim(0, 1)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  if args.samples < 1 or args.rule_queries < 1 or args.min_outside < 1:
    raise SystemExit("--samples, --rule-queries and --min-outside must be >= 1")
  from banel_jax.tasks.addition_patterns import RULES
  if args.error_rule not in RULES:
    raise SystemExit(f"--error-rule must be one of {', '.join(RULES)}; got "
                     f"{args.error_rule!r}")
  for d in args.run_dir:
    if not os.path.isfile(os.path.join(d, "config.json")):
      raise SystemExit(f"{d} is not a run directory (no config.json)")
  cache: dict = {}
  runs = [analyse_run(d, args, cache) for d in args.run_dir]
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "lift.json"), "w") as f:
    json.dump({"command": command_line("region_lift.py", argv),
               "error_set": f"{args.error_rule} successes", "runs": runs}, f,
              indent=1)
  plot(runs, os.path.join(args.out, "lift.png"))
  for run in runs:
    print(f"{run['run_dir']}: union lift, last measured (mean over seeds) "
          f"{run['last_measured_lift_mean']}, peak {run['max_lift_mean']}; "
          f"{run['regions_sparing_errors']} of {run['regions']} regions spare errors")
  print(f"wrote {args.out}/")


if __name__ == "__main__":
  main()
