"""Time to the first success, pooled across runs that agree until it.

Until a seed-run's training scores its first success, a method that learns from
successes has nothing to learn from: BaNEL with a success bank behaves as BaNEL
as published (the bank is empty), and self-imitation at any weight behaves as
BaNEL with its regions off (no region rejects anything, and the distillation
fits the proposal's own samples). So the question "do BaNEL's regions find the
first success sooner?" can pool every attack run of either kind, whatever it
does after its first success. ``research/seed_pool.py`` cannot: it pools only
runs of one configuration.

Each ``--group NAME=PATH[,PATH...]`` lists attack output folders (an
``attack.json`` with a ``metrics.jsonl`` beside it). The caller asserts that
the runs of a group agree until their first success; the script checks what it
can (the task, the pretrained rate, the budget) and lists the configurations a
group mixes. For each seed-run it reads the NRE spent when training first
scored a success (censored at the NRE spent when none did).

**Identical runs count once.** Two runs of the same seed, code and seed width
are the same run until the first success, and would count twice. A seed-run's
fingerprint is its seed, its first-success NRE and its evaluated success rates
up to that round; seed-runs of a group with equal fingerprints count once
(runs of one seed that differ anywhere, e.g. in floating point after a change
of seed width, drift apart and count as separate draws).

Reports, per group: distinct seed-runs, how many found a success, the median
NRE at the first success among those, the share that had found one by each
NRE, and at each evaluation the mean success rate of the proposals of the
seed-runs that had none yet (is the search still productive, or has it
drifted away?); against the first group, a log-rank test on the censored
times.
Also, for every seed-run (not deduplicated) that found a success: its final
improvement against its first-success NRE, which shows how much of the budget
the climb after it needs.

Writes ``first_success.json`` and ``first_success.png`` to ``--out``.

Example:
  python research/first_success.py \\
      --group regions=results/attack_ship_e10_cpu,results/attack_ship_e10_bank_cpu \\
      --group no_regions=results/attack_ship_selfimit_w100_cpu \\
      --out runs/first_success_ship
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
from research.seed_pool import parse_group, scan_first_successes  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--group", action="append", required=True, metavar="NAME=PATHS",
                 help="a group: NAME=PATH[,PATH...], each PATH an attack output "
                 "folder (attack.json and metrics.jsonl) or its attack.json; "
                 "repeat for more groups (the first is the reference).")
  p.add_argument("--out", required=True,
                 help="folder for first_success.json and first_success.png.")
  return p.parse_args(argv)


def read_seed_runs(path: str) -> tuple[dict, list[dict]]:
  """``(attack.json record, seed-runs)`` of one attack output.

  A seed-run is ``{"seed", "first", "censored_at", "fingerprint",
  "rates_before", "final"}``:
  ``first`` is the NRE of the first round whose training scored a success
  (``None``: none), ``censored_at`` the NRE spent, ``fingerprint`` the seed,
  ``first`` and the evaluated success rates of the rounds up to the first
  success (or of every round when none), ``rates_before`` the ``(NRE,
  rate)`` of the evaluations made while it had none yet, ``final`` the final
  improvement.

  Raises:
    SystemExit: no attack.json or metrics.jsonl, or they disagree on the seeds.
  """
  file = os.path.join(path, "attack.json") if os.path.isdir(path) else path
  metrics = os.path.join(os.path.dirname(file), "metrics.jsonl")
  for f in (file, metrics):
    if not os.path.isfile(f):
      raise SystemExit(f"{path}: no {os.path.basename(f)} there")
  with open(file) as f:
    record = json.load(f)
  seeds = [int(s) for s in record["seeds"]]
  n = len(seeds)
  first, rates, before = scan_first_successes(metrics, n)
  spent = record.get("nre_spent") or [None] * n
  runs = [{"seed": seeds[s], "first": first[s], "censored_at": spent[s],
           "fingerprint": [seeds[s], first[s], rates[s]], "rates_before": before[s],
           "final": float(record["improvement_final"][s]), "source": file}
          for s in range(n)]
  return record, runs


def _describe(record: dict) -> str:
  """A short name of a run's configuration (for the list a group mixes)."""
  method = record.get("method", "banel")
  if method != "banel":
    cfg = record.get("method_config") or {}
    return f"{method} (weight {cfg.get('success_weight', 1.0):g})"
  b = record["banel_config"]
  regions = not (b.get("tau_mode") == "factor" and b.get("filter_factor", 0) >= 1e29)
  parts = ["BaNEL", "regions" if regions else "no regions",
           f"{b.get('failure_epochs')} failure epochs"]
  if b.get("success_bank_size"):
    parts.append(f"bank {b['success_bank_size']} weight {b.get('success_weight', 1.0):g}")
  elif b.get("learn_from_successes"):
    parts.append("learns from successes")
  if b.get("reject_seen_failures"):
    parts.append("rejects seen failures")
  if b.get("restart_after_rounds"):
    parts.append(f"restarts every {b['restart_after_rounds']} rounds")
  return ", ".join(parts)


def load_group(paths: list[str]) -> dict:
  """The seed-runs of one group, identical ones counted once.

  Raises:
    SystemExit: two of its runs differ in the task, the pretrained rate, the
      budget or the samples per round.
  """
  runs, configs, checks = [], {}, {}
  for path in paths:
    record, seed_runs = read_seed_runs(path)
    run = record.get("banel_config") or record.get("run_config") or {}
    here = {"task_config": json.dumps(record.get("task_config"), sort_keys=True),
            "pretrained rate": record["pretrained"]["rate"],
            "NRE budget": run.get("nre_budget"),
            "samples per round": run.get("samples_per_round")}
    for key, value in here.items():
      if checks.setdefault(key, (value, path))[0] != value:
        raise SystemExit(f"{path} and {checks[key][1]} differ in the {key}: "
                         "their first successes do not pool")
    configs.setdefault(_describe(record), []).append(seed_runs[0]["source"])
    runs += seed_runs
  distinct = {}
  for r in runs:
    distinct.setdefault(json.dumps(r["fingerprint"]), r)
  return {"runs": runs, "distinct": list(distinct.values()), "configs": configs,
          "pretrained_rate": checks["pretrained rate"][0],
          "nre_budget": checks["NRE budget"][0],
          "samples_per_round": checks["samples per round"][0],
          "task_config": checks["task_config"][0]}


def summarize(group: dict, grid: np.ndarray) -> dict:
  """Counts, the median first-success NRE, and the share found by each NRE."""
  firsts = [r["first"] for r in group["distinct"]]
  found = [f for f in firsts if f is not None]
  times = np.asarray([np.inf if f is None else f for f in firsts], float)
  by_nre = {}
  for r in group["distinct"]:
    for nre, rate in r["rates_before"]:
      by_nre.setdefault(nre, []).append(rate)
  return {"n_seed_runs": len(group["runs"]), "n_distinct": len(firsts),
          "n_found": len(found),
          "median_nre_first_success_among_found": (float(np.median(found))
                                                   if found else None),
          "share_found_by_nre": {str(int(n)): float(np.mean(times <= n))
                                 for n in grid},
          "rate_before_first_success": {
              str(n): {"n": len(v), "mean": float(np.mean(v))}
              for n, v in sorted(by_nre.items())},
          "configs": group["configs"]}


def logrank_p(a: dict, b: dict) -> float | None:
  """Two-sided log-rank p of two groups' censored first-success times
  (``None`` where the test is undefined: no success in either group, or
  no spread in the times).

  The log-rank test weighs every NRE alike; where the two share-found curves
  cross (one group finds sooner and then stops) it can miss a real
  difference, so read it with the curves.
  """
  from scipy import stats

  def data(group):
    found = [r["first"] for r in group["distinct"] if r["first"] is not None]
    cens = [r["censored_at"] for r in group["distinct"] if r["first"] is None]
    return stats.CensoredData(uncensored=found, right=cens)
  with np.errstate(invalid="ignore", divide="ignore"):
    p = float(stats.logrank(data(a), data(b)).pvalue)
  return p if np.isfinite(p) else None


def plot(groups: dict, summaries: dict, grid: np.ndarray, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(17, 4.8))
  for i, (name, s) in enumerate(summaries.items()):
    share = [s["share_found_by_nre"][str(int(n))] for n in grid]
    ax1.step(grid, share, where="post", color=f"C{i}",
             label=f"{name} ({s['n_found']}/{s['n_distinct']})")
    before = s["rate_before_first_success"]
    if before:
      ax3.plot([int(n) for n in before], [v["mean"] for v in before.values()],
               "o-", color=f"C{i}", label=name)
      for n, v in before.items():
        ax3.annotate(str(v["n"]), (int(n), v["mean"]), fontsize=6,
                     textcoords="offset points", xytext=(2, 3))
    markers = dict(zip(groups[name]["configs"], "os^Dv<>ph*"))
    for config, sources in groups[name]["configs"].items():
      pts = [(r["first"], max(r["final"], 0.5)) for r in groups[name]["runs"]
             if r["first"] is not None and r["source"] in sources]
      if pts:
        x, y = zip(*pts)
        jitter = (i - (len(summaries) - 1) / 2) * 60
        ax2.scatter(np.asarray(x) + jitter, y, color=f"C{i}", s=22, alpha=0.75,
                    marker=markers.get(config, "o"), label=f"{name}: {config}")
  ax1.set(xlabel="NRE", ylabel="share of distinct seed-runs with a success",
          ylim=(0, 1.02), title="time to the first training success")
  ax1.grid(alpha=0.3)
  ax1.legend(fontsize=8)
  ax3.set(xlabel="NRE", ylabel="mean evaluated success rate",
          title="proposals still without a success (n beside each point)")
  ax3.grid(alpha=0.3)
  ax3.legend(fontsize=8)
  ax2.set(xlabel="NRE at the first success", ylabel="final improvement (x)",
          yscale="log", title="the climb after it (every seed-run; 0 drawn at 0.5)")
  ax2.axhline(50, color="gray", ls=":", lw=1)
  ax2.grid(alpha=0.3)
  if ax2.get_legend_handles_labels()[0]:
    ax2.legend(fontsize=6, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  specs = [parse_group(g) for g in args.group]
  names = [n for n, _ in specs]
  if len(set(names)) != len(names):
    raise SystemExit(f"--group names must differ, got {names}")
  groups = {name: load_group(paths) for name, paths in specs}
  ref = groups[names[0]]
  for name in names[1:]:
    for key in ("task_config", "pretrained_rate", "nre_budget", "samples_per_round"):
      if groups[name][key] != ref[key]:
        raise SystemExit(f"groups {names[0]!r} and {name!r} differ in {key}")
  budget = ref["nre_budget"]
  grid = np.arange(0, budget + 1, ref["samples_per_round"])
  summaries = {name: summarize(g, grid) for name, g in groups.items()}
  for name in names[1:]:
    summaries[name]["logrank_p_vs_first"] = logrank_p(ref, groups[name])
  os.makedirs(args.out, exist_ok=True)
  out = {"command": command_line("first_success.py", argv), "nre_budget": budget,
         "pretrained_rate": ref["pretrained_rate"], "groups": summaries,
         "seed_runs": {name: [{k: r[k] for k in ("source", "seed", "first",
                                                 "censored_at", "final")}
                              for r in g["runs"]] for name, g in groups.items()}}
  with open(os.path.join(args.out, "first_success.json"), "w") as f:
    json.dump(out, f, indent=1)
  plot(groups, summaries, grid, os.path.join(args.out, "first_success.png"))
  for name, s in summaries.items():
    shares = ", ".join(f"{s['share_found_by_nre'][str(int(n))]:.2f} by {int(n)}"
                       for n in grid[1:][::-1][::max(1, len(grid) // 4)][::-1])
    line = (f"{name}: {s['n_found']} of {s['n_distinct']} distinct seed-runs "
            f"({s['n_seed_runs']} in all) found a success; median NRE at the first "
            f"among them {s['median_nre_first_success_among_found']}; {shares}")
    if "logrank_p_vs_first" in s:
      p = s["logrank_p_vs_first"]
      line += f"; log-rank p vs {names[0]} = " + ("n/a" if p is None else f"{p:.3f}")
    print(line)
  print(f"wrote {args.out}/first_success.json and first_success.png")


if __name__ == "__main__":
  main()
