"""Pool the seeds of several attack runs: how often does a seed climb, and a table pass?

When the attack's outcome is a lottery (most seeds end near the pretrained rate,
a few climb into a weak mode of the target and end hundreds of times above it),
one 5-seed table says little. This script pools the per-seed results of several
``attack.json`` files made with the same configuration (different seeds, or the
same seeds on another device) into one group, and reports:

* every seed-run's final and best-so-far improvement, the pooled mean and median;
* **hits**: seed-runs whose final improvement reaches ``--hit``, with a
  Clopper-Pearson 95% interval on the hit rate;
* **P(table >= bar)**: the chance that a table of ``--table-size`` seed-runs,
  drawn at random (with replacement) from the pool, has a mean final
  improvement of at least ``--bar`` (50x by default), with the 5 / 50 / 95%
  quantiles of that mean; ``--draws`` Monte Carlo draws, seeded;
* with several groups, each group against the first: Fisher's exact test on the
  hit counts and a two-sided Mann-Whitney U test on the final improvements;
* **the first success**: from the ``metrics.jsonl`` beside each ``attack.json``
  (where there is one), the NRE spent when each seed-run's training first
  scored a success (``null``: none within the budget), how many seed-runs found
  one, and the median NRE among them. Until its first success a method that
  learns from successes has nothing to learn from; BaNEL's regions are meant to
  raise the rate before it.

Within a group every file must agree on the method (BaNEL, or a baseline run
with ``attack.py --method``) and its configuration, the task and the pretrained
rate (the seeds may differ); a mismatch is an error that names the key.

Writes ``seed_pool.json`` and ``seed_pool.png`` (each seed-run's final
improvement per group, log scale, zeros drawn on the floor line; the
distribution of a random table's mean against the bar; and, where metrics
exist, the share of seed-runs that have found a success against NRE) to
``--out``.

Example:
  python research/seed_pool.py \\
      --group e10=results/attack_msb_e10_cpu,results/attack_msb_e10_cpu_seeds5_9 \\
      --group r07=runs/attack_msb_e10_r07_out --out runs/seed_pool
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from research._common import command_line  # noqa: E402

# What every file of a group must share (``seeds`` and wall times may differ).
_MUST_MATCH = ("banel_config", "task_config", "support_filter")
# ...and what they must share when present (written since the self-imitation
# baseline; an older file ran BaNEL with no method_config).
_OPTIONAL_MATCH = {"method": "banel", "method_config": None, "extensions": []}


# Fields the recorded configs gained after earlier attack.json files were
# written, with their defaults: a file that lacks one ran at that default.
_ADDED_LATER = {
    "banel_config": {"proposal_filter": False, "reject_seen_failures": False,
                     "success_bank_size": 0, "success_bank_distinct": False,
                     "success_weight": 1.0, "restart_after_rounds": 0,
                     "train_microbatch": 0},
    "task_config": {"target_format": "aligned", "answer_order": "lsb"},
}


def comparable(key: str, value):
  """``value`` of ``record[key]`` without fields recorded at their old default.

  A field added to a config after earlier runs (:data:`_ADDED_LATER`) is absent
  from the attack.json files written before it and present, at its default, in
  later ones: both mean the same run, so the comparison drops it while it holds
  its default.
  """
  added = _ADDED_LATER.get(key)
  if added is None or not isinstance(value, dict):
    return value
  return {k: v for k, v in value.items() if k not in added or added[k] != v}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--group", action="append", required=True, metavar="NAME=PATH[,PATH]",
                 help="a named group of attack outputs (folders holding attack.json, "
                 "or the files), comma-separated; repeat for more groups. The first "
                 "group is the reference of the tests.")
  p.add_argument("--bar", type=float, default=50.0,
                 help="mean final improvement a table must reach (default 50).")
  p.add_argument("--hit", type=float, default=50.0,
                 help="final improvement at which a seed-run counts as a hit "
                 "(default 50).")
  p.add_argument("--table-size", type=int, default=5,
                 help="seed-runs per table (default 5, as in the paper).")
  p.add_argument("--draws", type=int, default=200_000,
                 help="Monte Carlo tables drawn per group (default 200,000).")
  p.add_argument("--seed", type=int, default=0, help="seed of the draws.")
  p.add_argument("--out", default="results/seed_pool", help="output folder.")
  args = p.parse_args(argv)
  for name, value in (("--bar", args.bar), ("--hit", args.hit)):
    if not value > 0:
      p.error(f"{name} must be positive, got {value}")
  if args.table_size < 1 or args.draws < 1:
    p.error("--table-size and --draws must be at least 1")
  return args


def parse_group(spec: str) -> tuple[str, list[str]]:
  """``"name=a,b"`` -> ``("name", ["a", "b"])``.

  >>> parse_group("e10=runs/a,runs/b/attack.json")
  ('e10', ['runs/a', 'runs/b/attack.json'])
  """
  name, sep, paths = spec.partition("=")
  parts = [x for x in paths.split(",") if x]
  if not sep or not name or not parts:
    raise SystemExit(f"--group {spec!r}: expected NAME=PATH[,PATH...]")
  return name, parts


def load_group(paths: list[str]) -> dict:
  """Reads and checks the attack.json files of one group: its seed-runs."""
  records, sources = [], []
  for path in paths:
    file = os.path.join(path, "attack.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise SystemExit(f"{path}: no attack.json there")
    with open(file) as f:
      record = json.load(f)
    if "support_filter" not in record and "support_check" in record:
      record["support_filter"] = record["support_check"]  # its name in banel attack
    missing = [k for k in ("seeds", "improvement_final", "improvement_best",
                           "pretrained", *_MUST_MATCH) if k not in record]
    if missing:
      raise SystemExit(f"{file} is not an attack.json of banel attack "
                       f"(missing {', '.join(missing)})")
    if len(record["seeds"]) != len(record["improvement_final"]):
      raise SystemExit(f"{file}: {len(record['seeds'])} seeds but "
                       f"{len(record['improvement_final'])} improvements")
    records.append(record)
    sources.append(file)
  first = records[0]
  for record, file in zip(records[1:], sources[1:]):
    for key in (*_MUST_MATCH, *_OPTIONAL_MATCH):
      default = _OPTIONAL_MATCH.get(key)
      want = comparable(key, first.get(key, default))
      got = comparable(key, record.get(key, default))
      if got != want:
        diff = key
        if isinstance(want, dict) and isinstance(got, dict):
          keys = sorted(set(want) | set(got))
          diff = ", ".join(f"{key}.{k}" for k in keys if want.get(k) != got.get(k))
        raise SystemExit(f"{file} and {sources[0]} differ in {diff}: they are "
                         "not the same configuration")
    if record["pretrained"]["rate"] != first["pretrained"]["rate"]:
      raise SystemExit(f"{file} and {sources[0]} differ in the pretrained rate")
  runs = []
  for record, file in zip(records, sources):
    first_nre = first_success_nre(
        os.path.join(os.path.dirname(file), "metrics.jsonl"), len(record["seeds"]))
    spent = record.get("nre_spent") or [None] * len(record["seeds"])
    runs += [{"source": file, "seed": int(seed), "final": float(fin),
              "best": float(best), "nre_first_success": nre, "nre_spent": paid}
             for seed, fin, best, nre, paid in zip(record["seeds"],
                                                   record["improvement_final"],
                                                   record["improvement_best"],
                                                   first_nre, spent)]
  return {"runs": runs, "pretrained_rate": first["pretrained"]["rate"],
          "banel_config": first["banel_config"],
          **{k: first.get(k, d) for k, d in _OPTIONAL_MATCH.items()}}


_NO_METRICS = "no metrics"


def first_success_nre(metrics_path: str, n_seeds: int) -> list:
  """Per seed, the NRE spent when training first scored a success.

  Read from a run's ``metrics.jsonl`` (one record per round, per-seed lists
  ``nre`` and ``n_successes``): the ``nre`` of the first round whose
  ``n_successes`` is positive; ``None`` when no round found one, and
  ``"no metrics"`` for every seed when the file is missing.
  """
  if not os.path.isfile(metrics_path):
    return [_NO_METRICS] * n_seeds
  return scan_first_successes(metrics_path, n_seeds)[0]


def scan_first_successes(metrics_path: str, n_seeds: int) -> tuple[list, list, list]:
  """``(first, rates, before)`` per seed, from a run's ``metrics.jsonl``.

  ``first``: the ``nre`` of the first round whose ``n_successes`` is positive
  (``None``: none); ``rates``: the evaluated success rates (``success_rate``)
  of the rounds up to and including that one (every round when none);
  ``before``: the ``(nre, rate)`` of those evaluations made while the seed
  had no success yet.

  Raises:
    SystemExit: a round's per-seed list is not ``n_seeds`` long.
  """
  first = [None] * n_seeds
  rates = [[] for _ in range(n_seeds)]
  before = [[] for _ in range(n_seeds)]
  with open(metrics_path) as f:
    for line in f:
      record = json.loads(line)
      for key in ("n_successes", "success_rate"):
        if record.get(key) is not None and len(record[key]) != n_seeds:
          raise SystemExit(f"{metrics_path}: {len(record[key])} seeds in round "
                           f"{record.get('round')}, the attack.json has {n_seeds}")
      found = record.get("n_successes")
      evaluated = record.get("success_rate")
      for s in range(n_seeds):
        if first[s] is not None:
          continue
        found_now = found is not None and found[s] > 0
        if evaluated is not None:
          rates[s].append(float(evaluated[s]))
          if not found_now:
            before[s].append((int(record["nre"][s]), float(evaluated[s])))
        if found_now:
          first[s] = int(record["nre"][s])
  return first, rates, before


def first_success_summary(runs: list) -> dict:
  """How many seed-runs found a success, and the median NRE at the first."""
  known = [r["nre_first_success"] for r in runs
           if r["nre_first_success"] != _NO_METRICS]
  found = [n for n in known if n is not None]
  return {"n_with_metrics": len(known), "n_found": len(found),
          "median_nre_first_success": float(np.median(found)) if found else None}


def table_means(final: np.ndarray, table_size: int, draws: int,
                rng: np.random.Generator) -> np.ndarray:
  """Mean of ``table_size`` seed-runs drawn with replacement, ``draws`` times."""
  idx = rng.integers(0, final.shape[0], size=(draws, table_size))
  return final[idx].mean(axis=1)


def summarize(group: dict, args, rng: np.random.Generator
              ) -> tuple[dict, np.ndarray]:
  """A group's summary, and the means of its ``args.draws`` random tables."""
  from scipy import stats
  final = np.array([r["final"] for r in group["runs"]])
  best = np.array([r["best"] for r in group["runs"]])
  hits = int(np.sum(final >= args.hit))
  ci = stats.binomtest(hits, final.size).proportion_ci(0.95, method="exact")
  means = table_means(final, args.table_size, args.draws, rng)
  return {
      "n_seed_runs": int(final.size),
      "pretrained_rate": group["pretrained_rate"],
      "banel_config": group["banel_config"],
      "method": group["method"], "method_config": group["method_config"],
      "final_mean": float(final.mean()), "final_median": float(np.median(final)),
      "best_mean": float(best.mean()), "best_median": float(np.median(best)),
      "hits": hits, "hit_rate": hits / final.size,
      "hit_rate_ci95": [float(ci.low), float(ci.high)],
      "p_table_reaches_bar": float(np.mean(means >= args.bar)),
      "table_mean_quantiles": {q: float(np.quantile(means, float(q)))
                               for q in ("0.05", "0.5", "0.95")},
      "first_success": first_success_summary(group["runs"]),
      "runs": group["runs"],
  }, means


def compare(ref: dict, other: dict) -> dict:
  """``other`` against ``ref``: Fisher on hits, Mann-Whitney U on finals."""
  from scipy import stats
  table = [[other["hits"], other["n_seed_runs"] - other["hits"]],
           [ref["hits"], ref["n_seed_runs"] - ref["hits"]]]
  a = [r["final"] for r in other["runs"]]
  b = [r["final"] for r in ref["runs"]]
  return {"fisher_hits_p": float(stats.fisher_exact(table).pvalue),
          "mannwhitney_final_p": float(stats.mannwhitneyu(a, b).pvalue)}


def plot(summaries: dict, args, means_by_group: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(summaries)
  floor = 0.05
  with_metrics = [n for n in names if summaries[n]["first_success"]["n_with_metrics"]]
  fig, axes = plt.subplots(1, 3 if with_metrics else 2,
                           figsize=(16.5 if with_metrics else 11, 4.2))
  ax, bx = axes[0], axes[1]
  for i, name in enumerate(names):
    final = np.array([r["final"] for r in summaries[name]["runs"]])
    jitter = np.linspace(-0.15, 0.15, final.size) if final.size > 1 else np.zeros(1)
    ax.scatter(i + jitter, np.maximum(final, floor), s=18, alpha=0.8)
    ax.hlines(summaries[name]["final_mean"], i - 0.3, i + 0.3, colors="k",
              label="pooled mean" if i == 0 else None)
    ax.hlines(max(summaries[name]["final_median"], floor), i - 0.3, i + 0.3,
              colors="k", linestyles=":", label="pooled median" if i == 0 else None)
  ax.axhline(args.hit, color="tab:red", lw=0.8, ls="--", label=f"hit ({args.hit:g}x)")
  ax.set_yscale("log")
  ax.set_xticks(range(len(names)),
                [f"{n}\n{summaries[n]['hits']}/{summaries[n]['n_seed_runs']} hits"
                 for n in names], rotation=25 if len(names) > 3 else 0, fontsize=8,
                ha="right" if len(names) > 3 else "center")
  ax.set_ylabel(f"final improvement per seed-run (0 drawn at {floor})")
  ax.legend(fontsize=8)
  for name in names:
    m = np.maximum(means_by_group[name], floor)
    bins = np.logspace(np.log10(floor), np.log10(max(m.max(), args.bar) * 1.5), 60)
    bx.hist(m, bins=bins, histtype="step", density=False,
            weights=np.full(m.size, 1 / m.size),
            label=f"{name}: P(>= {args.bar:g}x) = "
            f"{summaries[name]['p_table_reaches_bar']:.2f}")
  bx.axvline(args.bar, color="tab:red", lw=0.8, ls="--")
  bx.set_xscale("log")
  bx.set_xlabel(f"mean final improvement of a random {args.table_size}-seed table")
  bx.set_ylabel("share of tables")
  bx.legend(fontsize=8)
  if with_metrics:
    cx = axes[2]
    for name in with_metrics:
      known = [r["nre_first_success"] for r in summaries[name]["runs"]
               if r["nre_first_success"] != _NO_METRICS]
      found = np.sort([n for n in known if n is not None])
      # held flat to the end of the budget
      end = max([r["nre_spent"] for r in summaries[name]["runs"]
                 if r["nre_spent"] is not None] + [found.max(initial=0)])
      steps = np.concatenate([[0], found, [end]])
      share = np.concatenate([np.arange(found.size + 1), [found.size]]) / len(known)
      cx.step(steps, share, where="post",
              label=f"{name}: {found.size}/{len(known)}")
    cx.set_xlabel("NRE spent")
    cx.set_ylabel("share of seed-runs that have scored a success")
    cx.set_ylim(0, 1.02)
    cx.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  groups = dict(parse_group(spec) for spec in args.group)
  if len(groups) != len(args.group):
    raise SystemExit("--group names must be distinct")
  rng = np.random.default_rng(args.seed)
  summaries, means = {}, {}
  for name, paths in groups.items():
    summaries[name], means[name] = summarize(load_group(paths), args, rng)
  names = list(summaries)
  comparisons = {n: compare(summaries[names[0]], summaries[n]) for n in names[1:]}
  os.makedirs(args.out, exist_ok=True)
  record = {"command": command_line("seed_pool.py", argv), "bar": args.bar,
            "hit": args.hit, "table_size": args.table_size, "draws": args.draws,
            "seed": args.seed, "groups": summaries,
            "against_" + names[0]: comparisons}
  with open(os.path.join(args.out, "seed_pool.json"), "w") as f:
    json.dump(record, f, indent=1)
  plot(summaries, args, means, os.path.join(args.out, "seed_pool.png"))
  for name, s in summaries.items():
    q = s["table_mean_quantiles"]
    print(f"{name}: {s['n_seed_runs']} seed-runs, final mean {s['final_mean']:.1f}x "
          f"median {s['final_median']:.1f}x; hits (>= {args.hit:g}x) {s['hits']} "
          f"[{s['hit_rate_ci95'][0]:.2f}, {s['hit_rate_ci95'][1]:.2f}]; "
          f"P({args.table_size}-seed mean >= {args.bar:g}x) = "
          f"{s['p_table_reaches_bar']:.3f} (5/50/95%: {q['0.05']:.1f}, "
          f"{q['0.5']:.1f}, {q['0.95']:.1f})")
    fs = s["first_success"]
    if fs["n_with_metrics"]:
      print(f"  a success found by {fs['n_found']}/{fs['n_with_metrics']} seed-runs, "
            f"median NRE at the first: {fs['median_nre_first_success']}")
  for name, c in comparisons.items():
    print(f"{name} vs {names[0]}: Fisher (hits) p = {c['fisher_hits_p']:.3f}, "
          f"Mann-Whitney (final) p = {c['mannwhitney_final_p']:.3f}")
  print(f"wrote {args.out}/")


if __name__ == "__main__":
  main()
