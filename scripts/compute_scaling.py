"""Compute scaling of the addition attack: improvement against failure-model epochs.

The failure model's training epochs are BaNEL's compute knob: more epochs, same
NRE. For each value of ``--epochs`` this runs ``scripts/attack.py`` (leading zeros
malformed by default, the harder variant of the paper's study) as its own process,
with the same seeds and budget, then gathers the improvement factors into one
JSON and one plot.

Writes to ``--out`` (default ``results/compute_scaling``):

* ``epochs_<E>/``: each attack run's own output (``attack.json``, metrics, plot);
* ``scaling.json``: the command, per epoch value the final and best-so-far
  improvement per seed with mean / median / std, and wall times;
* ``scaling.png``: improvement (final and best-so-far; mean over seeds, with each
  seed's point) against epochs, log-x.

``--pool DIR [DIR ...]`` runs nothing: it joins the ``scaling.json`` of studies
made on other seeds (e.g. seeds 0-2, then seeds 3-4 with ``-- --seed-offset 3``)
into one table over all their seeds, for the epoch values they share, and
writes it with its plot to ``--out``.

Finished epoch values (an ``attack.json`` made with the same attack arguments) are
reused, so a killed study resumes at the value it was on; ``--run-dir`` also
makes each attack run itself resumable.

Example:
  python scripts/compute_scaling.py                         # 1 3 10 30, 3 seeds
  python scripts/compute_scaling.py --epochs 1 2 3 5 10 20 50 100 --seeds 5 \\
      --nre-budget 7500                                     # the paper's grid
  python scripts/compute_scaling.py --epochs 1 2 --seeds 1 --nre-budget 500 \\
      --n-eval 1000 --out scaling_smoke                     # a few minutes
  python scripts/compute_scaling.py --pool runs/grid_s02 runs/grid_s34 \\
      --out results/compute_scaling_5seeds                  # 3 + 2 seeds
Arguments after ``--`` go to ``scripts/attack.py`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts._cli import command_line  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10, 30],
                 help="failure-model epochs per round to compare (default 1 3 10 30).")
  p.add_argument("--seeds", type=int, default=3, help="seeds per epoch value.")
  p.add_argument("--nre-budget", type=int, default=2500,
                 help="reward evaluations per seed (the paper: 7,500).")
  p.add_argument("--n-eval", type=int, default=10_000,
                 help="fresh samples per success-rate evaluation.")
  p.add_argument("--leading-zeros", action="store_true",
                 help="allow leading zeros (default: they are malformed, as in the "
                 "paper's compute-scaling study).")
  p.add_argument("--out", default="results/compute_scaling", help="output folder.")
  p.add_argument("--run-dir", default=None,
                 help="parent of resumable run directories, one per epoch value.")
  p.add_argument("--pool", nargs="+", default=None, metavar="DIR",
                 help="run nothing: join the scaling.json of these studies (made on "
                 "different seeds, with the same budget and leading-zero rule) into "
                 "one table over all their seeds, written to --out.")
  p.add_argument("attack_args", nargs="*",
                 help="extra arguments for scripts/attack.py (after '--').")
  return p.parse_args(argv)


def attack_argv(args, epochs: int) -> list[str]:
  argv = ["--config", "full", "--seeds", str(args.seeds), "--nre-budget",
          str(args.nre_budget), "--n-eval", str(args.n_eval), "--failure-epochs",
          str(epochs), "--no-analysis", "--no-progress"]
  if not args.leading_zeros:
    argv.append("--no-leading-zeros")
  return argv + list(args.attack_args)


def run_one(args, epochs: int) -> dict:
  """Runs (or reuses) the attack with ``epochs`` failure epochs; its attack.json."""
  out = os.path.join(args.out, f"epochs_{epochs}")
  argv = attack_argv(args, epochs) + ["--out", out]
  if args.run_dir:
    argv += ["--run-dir", os.path.join(args.run_dir, f"epochs_{epochs}")]
  done = os.path.join(out, "attack.json")
  stamp = os.path.join(out, "argv.json")
  if os.path.exists(done) and os.path.exists(stamp):
    with open(stamp) as f:
      if json.load(f) == argv:
        print(f"epochs {epochs}: reusing {done}", flush=True)
        with open(done) as g:
          return json.load(g)
  os.makedirs(out, exist_ok=True)
  if os.path.exists(done):
    os.remove(done)  # made with other arguments
  print(f"epochs {epochs}: python scripts/attack.py {' '.join(argv)}", flush=True)
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "attack.py")] + argv,
                 check=True)
  with open(stamp, "w") as f:
    json.dump(argv, f)
  with open(done) as f:
    return json.load(f)


def summarize(values) -> dict:
  """:func:`banel_jax.metrics.summarize_over_seeds` plus the per-seed values."""
  from banel_jax.metrics import summarize_over_seeds
  v = [float(x) for x in values]
  return {**summarize_over_seeds(v), "per_seed": v}


def plot(rows: list[dict], path: str, title: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  e = [r["failure_epochs"] for r in rows]
  for key, color in (("improvement_final", "C0"), ("improvement_best", "C1")):
    means = [r[key]["mean"] for r in rows]
    ax.plot(e, means, "o-", color=color, label=key.replace("improvement_", "") +
            " (mean over seeds)")
    for r in rows:
      ax.scatter([r["failure_epochs"]] * len(r[key]["per_seed"]),
                 r[key]["per_seed"], color=color, s=10, alpha=0.4)
  ax.axhline(1.0, color="k", ls=":", lw=1, label="pretrained")
  ax.set_xscale("log")
  ax.set_xlabel("failure-model epochs per round")
  ax.set_ylabel("improvement over pretrained attacker")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def pool_studies(dirs: list[str]) -> dict:
  """One ``scaling.json`` over the seeds of several studies (see ``--pool``)."""
  studies = []
  for d in dirs:
    path = os.path.join(d, "scaling.json")
    if not os.path.exists(path):
      raise SystemExit(f"--pool: {path} does not exist")
    with open(path) as f:
      studies.append(json.load(f))
  for key in ("nre_budget", "leading_zeros_allowed"):
    values = {s[key] for s in studies}
    if len(values) > 1:
      raise SystemExit(f"--pool: the studies differ in {key}: {sorted(values)}")
  by_epochs = [{r["failure_epochs"]: r for r in s["rows"]} for s in studies]
  shared = sorted(set.intersection(*(set(b) for b in by_epochs)))
  if not shared:
    raise SystemExit("--pool: the studies share no epoch value")
  rows = []
  for e in shared:
    parts = [b[e] for b in by_epochs]
    rows.append({
        "failure_epochs": e,
        "improvement_final": summarize(
            [v for r in parts for v in r["improvement_final"]["per_seed"]]),
        "improvement_best": summarize(
            [v for r in parts for v in r["improvement_best"]["per_seed"]]),
        "final_success_rate": [v for r in parts for v in r["final_success_rate"]],
        "pretrained_rate": parts[0]["pretrained_rate"],
        "wall_time_s_per_study": [r["wall_time_s"] for r in parts]})
  return {"pooled_from": [{"dir": d, "command": s["command"], "seeds": s["seeds"]}
                          for d, s in zip(dirs, studies)],
          "seeds": sum(s["seeds"] for s in studies),
          "nre_budget": studies[0]["nre_budget"],
          "leading_zeros_allowed": studies[0]["leading_zeros_allowed"],
          "rows": rows}


def main(argv=None):
  args = parse_args(argv)
  if args.pool:
    pooled = pool_studies(args.pool)
    pooled["command"] = command_line("compute_scaling.py", argv)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
      json.dump(pooled, f, indent=1)
    lz = "allowed" if pooled["leading_zeros_allowed"] else "malformed"
    plot(pooled["rows"], os.path.join(args.out, "scaling.png"),
         f"compute scaling ({pooled['seeds']} seeds pooled, NRE "
         f"{pooled['nre_budget']}, leading zeros {lz})")
    for r in pooled["rows"]:
      print(f"epochs {r['failure_epochs']}: improvement final mean "
            f"{r['improvement_final']['mean']:.2f}x over "
            f"{len(r['improvement_final']['per_seed'])} seeds")
    print(f"wrote {args.out}/")
    return
  if args.seeds < 1 or args.nre_budget < 1 or not args.epochs:
    raise SystemExit("--seeds and --nre-budget must be >= 1, --epochs non-empty")
  if any(e < 1 for e in args.epochs):
    raise SystemExit(f"--epochs must all be >= 1, got {args.epochs}")
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for epochs in args.epochs:
    res = run_one(args, epochs)
    rows.append({"failure_epochs": epochs,
                 "improvement_final": summarize(res["improvement_final"]),
                 "improvement_best": summarize(res["improvement_best"]),
                 "final_success_rate": res["final_success_rate"],
                 "pretrained_rate": res["pretrained"]["rate"],
                 "wall_time_s": res["wall_time_s"]})
    print(f"epochs {epochs}: improvement final mean "
          f"{rows[-1]['improvement_final']['mean']:.2f}x, best-so-far mean "
          f"{rows[-1]['improvement_best']['mean']:.2f}x", flush=True)
  with open(os.path.join(args.out, "scaling.json"), "w") as f:
    json.dump({"command": command_line("compute_scaling.py", argv),
               "seeds": args.seeds,
               "nre_budget": args.nre_budget,
               "leading_zeros_allowed": args.leading_zeros, "rows": rows}, f, indent=1)
  lz = "allowed" if args.leading_zeros else "malformed"
  plot(rows, os.path.join(args.out, "scaling.png"),
       f"compute scaling ({args.seeds} seeds, NRE {args.nre_budget}, leading "
       f"zeros {lz})")
  print(f"wrote {args.out}/")


if __name__ == "__main__":
  main()
