"""BaNEL on the 1-D toy: a discretised N(0, 1), rewarded only at x = -2 and +2.

Runs every seed side by side under ``vmap`` (one compiled program), in distilled
mode, exact mode or both, and writes next to each other in ``--out``:

* ``toy1d_<mode>.json``: config, per-seed success rates per round (estimated on
  ``n_eval`` fresh samples with Clopper-Pearson intervals, and exact from the
  tabular model), NRE, successes found, wall time;
* ``metrics_<mode>.jsonl``: the driver's per-round records;
* ``toy1d_rounds_<mode>.png``: prior, failure model and posterior round by round
  (seed 0), like the paper's 1-D figure;
* ``toy1d_success_vs_nre.png``: success rate against NRE, all seeds and modes.

With ``--run-dir DIR`` each mode runs in ``DIR/<mode>`` (checkpoints, config,
metrics and the oracle ledger): rerunning the same command after an interruption
resumes where it stopped (the round-by-round figure then needs every round's
state and is skipped if earlier rounds ran in another process).

Example:
  python scripts/toy1d.py                 # both modes, 5 seeds (about a minute)
  python scripts/toy1d.py --tiny --mode exact
  python scripts/toy1d.py --tiny --run-dir runs/toy1d   # resumable
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from banel_jax import BanelConfig, BanelRunner  # noqa: E402
from banel_jax.metrics import summarize_over_seeds  # noqa: E402
from banel_jax.tasks import toy1d  # noqa: E402
from scripts._cli import command_line  # noqa: E402
from scripts.configs import toy1d as toy_configs  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mode", choices=["distilled", "exact", "both"], default="both",
                 help="BaNEL variant: 'distilled' (Algorithm 2, a fine-tuned "
                 "proposal), 'exact' (Algorithm 1, rejection from the prior) or both.")
  p.add_argument("--tiny", action="store_true",
                 help="seconds-long variant (2 seeds, NRE 400) for smoke tests.")
  p.add_argument("--seeds", type=int, default=None,
                 help="number of seeds run side by side (default: 5; tiny: 2).")
  p.add_argument("--nre-budget", type=int, default=None,
                 help="reward evaluations spent on learning, per seed (default 1000).")
  p.add_argument("--samples-per-round", type=int, default=None,
                 help="samples scored per round, m (default 100).")
  p.add_argument("--filter-factor", type=float, default=None,
                 help="reject x when the failure model finds it f times likelier "
                 "than the proposal (default 1.032).")
  p.add_argument("--failure-epochs", type=int, default=None,
                 help="epochs of failure-model training per round (default 50).")
  p.add_argument("--failure-init", choices=["proposal", "scratch"], default=None,
                 help="start the failure model from the proposal or from scratch.")
  p.add_argument("--n-eval", type=int, default=None,
                 help="fresh samples per success-rate evaluation (default 10000).")
  p.add_argument("--out", default="results/toy1d",
                 help="output folder for JSON, JSON-lines and plots.")
  p.add_argument("--run-dir", default=None,
                 help="resumable run: checkpoints, config, metrics and oracle ledger "
                 "in RUN_DIR/<mode>; rerun the same command to resume.")
  p.add_argument("--no-progress", action="store_true", help="hide progress bars.")
  return p.parse_args(argv)


def build_experiment(args) -> toy_configs.Toy1DExperiment:
  exp = toy_configs.get_tiny_config() if args.tiny else toy_configs.get_config()
  overrides = {k: v for k, v in {
      "nre_budget": args.nre_budget, "samples_per_round": args.samples_per_round,
      "filter_factor": args.filter_factor, "failure_epochs": args.failure_epochs,
      "failure_init": args.failure_init, "n_eval": args.n_eval}.items()
      if v is not None}
  exp = exp.replace(banel=exp.banel.replace(**overrides))
  if args.seeds is not None:
    if args.seeds < 1:
      raise SystemExit("--seeds must be >= 1")
    exp = exp.replace(seeds=tuple(range(args.seeds)))
  return exp


def run_mode(exp: toy_configs.Toy1DExperiment, mode: str, out: str,
             progress: bool, run_dir: str | None = None,
             command: str | None = None) -> dict:
  import jax
  task = exp.task
  cfg: BanelConfig = exp.banel.replace(mode=mode)
  snapshots: dict[int, list[dict]] = {}  # round -> [seed] -> pmfs

  def snap(runner, round_index):
    states = runner.states
    per_seed = []
    for s in range(len(exp.seeds)):
      one = jax.tree.map(lambda a: a[s], states)
      per_seed.append(toy1d.distributions(task, one))
    snapshots[round_index] = per_seed

  def on_round(runner, record):
    snap(runner, record["round"])
    exact = [task.exact_success_rate(np.log(np.maximum(d["proposal" if mode ==
                                                         "distilled" else
                                                         "posterior"], 1e-300)))
             for d in snapshots[record["round"]]]
    record["exact_success_rate"] = exact

  metrics_path = os.path.join(out, f"metrics_{mode}.jsonl")
  if run_dir is None and os.path.exists(metrics_path):
    os.remove(metrics_path)  # with a run dir, the runner rewrites it on resume
  t0 = time.perf_counter()
  runner = BanelRunner(task.model(), task.prior_params(), task.oracle, cfg,
                       exp.seeds, metrics_path=metrics_path, progress=progress,
                       on_round=on_round,
                       run_dir=None if run_dir is None else os.path.join(run_dir, mode),
                       extra_config={"task": task})
  result = runner.run()
  runner.close()
  wall = time.perf_counter() - t0

  prior_rate = task.exact_success_rate(np.log(snapshots[0][0]["prior"]) if 0 in
                                       snapshots else np.asarray(task.prior_logits()))
  final = result.final_success_rates()
  best = result.best_success_rates()
  final_exact = result.history[-1]["exact_success_rate"]
  evaluated = [h for h in result.history if "success_rate" in h]
  first_all = next((h["nre"][0] for h in evaluated
                    if min(h["success_rate"]) >= 0.9), None)
  summary = {
      "command": command or command_line("toy1d.py"),
      "task": "toy1d", "mode": mode,
      "config": dataclasses.asdict(cfg), "task_config": dataclasses.asdict(task),
      "seeds": list(exp.seeds),
      "prior_success_rate_exact": prior_rate,
      "final_success_rate": final, "final_success_rate_exact": final_exact,
      "best_success_rate": best,
      "final_summary": summarize_over_seeds(final),
      "improvement_final_mean": float(np.mean(final) / prior_rate),
      "all_seeds_reach_0.9": bool(np.min(final_exact) >= 0.9 and np.min(final) >= 0.9),
      "first_nre_all_seeds_0.9": first_all,
      "nre_spent": result.nre_spent, "eval_calls": result.eval_calls,
      "n_successes_found_in_training": len(result.successes),
      "wall_time_s": wall,
      "history": result.history,
  }
  with open(os.path.join(out, f"toy1d_{mode}.json"), "w") as f:
    json.dump(summary, f, indent=1)

  from banel_jax import plotting
  n_rounds = result.history[-1]["round"]
  rounds = sorted({0, 1, 2, min(4, n_rounds), n_rounds // 2, n_rounds})
  if all(r in snapshots for r in range(n_rounds + 1)):
    fig = plotting.plot_toy_rounds(
        task.centres, [snapshots[r][0] for r in range(n_rounds + 1)], rounds,
        task.target_bins,
        title=f"BaNEL ({mode}), seed {exp.seeds[0]}: prior, failure model, posterior")
    fig.savefig(os.path.join(out, f"toy1d_rounds_{mode}.png"), dpi=110)
  else:
    print(f"{mode}: resumed run; round-by-round figure skipped (rounds "
          f"{min(snapshots, default=n_rounds + 1) - 1} and earlier ran in another "
          "process)")
  return summary


def main(argv=None):
  args = parse_args(argv)
  import matplotlib
  matplotlib.use("Agg")
  exp = build_experiment(args)
  os.makedirs(args.out, exist_ok=True)
  modes = ["distilled", "exact"] if args.mode == "both" else [args.mode]
  command = command_line("toy1d.py", argv)
  summaries = {m: run_mode(exp, m, args.out, not args.no_progress, args.run_dir,
                           command)
               for m in modes}

  import matplotlib.pyplot as plt
  from banel_jax import plotting
  fig, ax = plt.subplots(figsize=(6, 4))
  plotting.plot_success_vs_nre({m: s["history"] for m, s in summaries.items()}, ax,
                               title="toy1d: success rate from failures only")
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "toy1d_success_vs_nre.png"), dpi=110)

  print(f"prior success rate (exact): "
        f"{next(iter(summaries.values()))['prior_success_rate_exact']:.4f}")
  for m, s in summaries.items():
    rates = ", ".join(f"{r:.3f}" for r in s["final_success_rate"])
    print(f"{m:9s} final success per seed: {rates}  (NRE {s['nre_spent'][0]}, "
          f"{s['wall_time_s']:.1f}s) all seeds >= 0.9: {s['all_seeds_reach_0.9']} "
          f"(first at NRE {s['first_nre_all_seeds_0.9']})")
  print(f"wrote {args.out}/")


if __name__ == "__main__":
  main()
