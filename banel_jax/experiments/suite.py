"""The sparse-reward suite: does a run improve *every* seed on *every* task?

``banel suite`` runs BaNEL and the baselines on the suite's small tasks
(:mod:`banel_jax.suite`), 10 seeds each side by side, every method at the same
NRE budget, samples per round and evaluation, and reports robustness, not only
means:

* per task and method: the median improvement over seeds (final rate on
  ``final_eval_samples`` fresh samples / the task's one pretrained rate), the
  share of seeds that end below the pretrained rate ("collapse"), the share
  at least 10x, the mean, and the best-so-far;
* per half (``tuning`` / ``held_out``, fixed before any setting was chosen),
  the same figures pooled over every (task, seed) pair;
* success against NRE per task (median over seeds with the inter-quartile
  band).

Methods (ids as in ``summary.json``): ``banel_paper`` (the paper's algorithm,
:meth:`BanelConfig.paper`), ``banel_default`` (``BanelConfig()``: the
library's defaults, the negatives-only settings that ``--tune`` picked on the
tuning half, :data:`TUNED`), ``rnd``, ``pseudo_counts``, ``reinforce``,
``unlikelihood``, ``exact_rejection`` (reject every failure already seen) and
``self_imitation``, which learns from the successes it finds and is reported
in its own rows.

Writes to ``--out``: ``summary.json`` (the canonical form), ``suite.json``
(every run's per-round history and diagnostics), ``table.md`` (also printed),
``success_vs_nre.png``. Every (task, method) runs in ``RUN_DIR/<task>/<method>``
(default ``OUT/runs``): a killed suite resumes where it stopped, and a finished
pair is loaded rather than rerun.

Examples:
  banel suite                                  # every task and method, 10 seeds
  banel suite --preset tiny                    # 2 tasks, 2 seeds: a minute
  banel suite --half tuning --methods banel_paper banel_default
  banel suite --out results/suite              # the committed results
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import types
from typing import Literal, get_args

import numpy as np

from banel_jax.baselines import (ExactRejectionConfig, PolicyGradientConfig,
                                 PseudoCountConfig, RNDConfig, RunConfig,
                                 SelfImitationConfig, UnlikelihoodConfig)
from banel_jax.core.config import BanelConfig, config_to_dict, jsonable
from banel_jax.experiments import common, harness
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)

MethodId = Literal["banel_paper", "banel_default", "rnd", "pseudo_counts",
                   "reinforce", "unlikelihood", "exact_rejection", "self_imitation"]
METHODS: tuple[str, ...] = get_args(MethodId)
LABELS = {"banel_paper": "BaNEL (paper)",
          "banel_default": "BaNEL (defaults: suite-tuned, failures only)",
          "rnd": "RND", "pseudo_counts": "pseudo-counts", "reinforce": "REINFORCE",
          "unlikelihood": "unlikelihood", "exact_rejection": "exact rejection",
          "self_imitation": "self-imitation (uses successes)"}
USES_SUCCESSES = {"self_imitation"}
# the method names of banel_jax.experiments.compare.build_method
_BUILD_NAME = {"banel_paper": "banel", "banel_default": "banel", "rnd": "rnd",
               "pseudo_counts": "pseudo_count", "reinforce": "reinforce",
               "unlikelihood": "unlikelihood", "exact_rejection": "exact_rejection",
               "self_imitation": "self_imitation"}
# the config sections each method reads (recorded and compared on resume)
_SECTIONS = {"banel_paper": ("banel_paper",), "banel_default": ("banel_default",),
             "rnd": ("rnd", "rnd_bonus"),
             "pseudo_counts": ("pseudo_counts", "pseudo_counts_bonus"),
             "reinforce": ("reinforce",), "unlikelihood": ("unlikelihood",),
             "exact_rejection": ("exact_rejection",),
             "self_imitation": ("self_imitation",)}
FINAL_EVAL_KEY = 30_000
# The changes to BanelConfig.paper() that ``banel suite --tune`` picked on the
# tuning half (results/suite/tuning.json, "chosen_changes"): BanelConfig()'s
# defaults (a test holds the two equal).
TUNED: dict = {"failure_learning_rate": 0.03, "distill_learning_rate": 0.03,
               "distill_prior_share": 0.5, "distill_reset": True,
               "filter_factor": 1.2}
TEN_X = 10.0
_LR_FIELDS = ("failure_learning_rate", "distill_learning_rate")


def with_tuned_defaults(banel: BanelConfig) -> BanelConfig:
  """``banel`` with the library's defaults' changes (:data:`TUNED`) on top,
  for a task whose paper config sets its own learning rates: the tuned
  learning rates are scaled by the same factor against the paper's (0.03
  against 0.1: 0.3 x ``banel``'s), every other tuned field is taken as is.

  >>> b = with_tuned_defaults(BanelConfig.paper(failure_learning_rate=1e-3))
  >>> round(b.failure_learning_rate, 12), b.distill_prior_share, b.distill_reset
  (0.0003, 0.5, True)
  """
  paper = BanelConfig.paper()
  changes = dict(TUNED)
  for k in _LR_FIELDS:
    if k in TUNED:
      changes[k] = getattr(banel, k) * TUNED[k] / getattr(paper, k)
  return banel.replace(**changes)

# One setting for every policy-gradient baseline, fixed before any suite run.
_PG = PolicyGradientConfig(learning_rate=0.01, kl_weight=0.0)


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  """The suite's tasks, methods, seeds and every method's settings.

  Attributes:
    tasks: task names (:data:`banel_jax.suite.TASKS`); empty: every task of
      ``half``.
    half: ``all``, ``tuning`` or ``held_out``: which half's tasks run when
      ``tasks`` is empty.
    methods: method ids (:data:`METHODS`).
    seeds: seeds, run side by side under ``vmap``.
    n_eval: fresh samples per evaluation (counted apart from the NRE).
    eval_every: evaluate every this many rounds (and after the last one).
    final_eval_samples: fresh samples per seed that measure the final rate.
    banel_paper: the paper's algorithm (its run fields come from the task).
    banel_default: the library's defaults, ``BanelConfig()`` (its run fields
      come from the task): the grid point :data:`TUNED` that ``--tune`` picked
      on the tuning half (``tuning.json``); uses no successful sample.
    reinforce, rnd, pseudo_counts, unlikelihood, self_imitation: the
      baselines' policy updates; rnd_bonus, pseudo_counts_bonus: their bonuses;
      exact_rejection: the exact-rejection reference.
    tune: first run :data:`DEFAULTS_GRID` (candidate negatives-only settings
      of BaNEL) on the tuning half's tasks at ``tuning_seeds`` and write
      ``tuning.json``: the evidence for ``BanelConfig()``'s defaults. The
      held-out half never runs in it.
    tuning_seeds: seeds of the tuning runs (never reported in the table).
    run_dir: where every (task, method) runs, resumably; ``None``: ``OUT/runs``.
  """

  tasks: tuple[str, ...] = ()
  half: Literal["all", "tuning", "held_out"] = "all"
  methods: tuple[MethodId, ...] = METHODS
  seeds: tuple[int, ...] = tuple(range(10))
  n_eval: int = 10_000
  eval_every: int = 5
  final_eval_samples: int = 50_000
  banel_paper: BanelConfig = BanelConfig.paper()
  banel_default: BanelConfig = BanelConfig()
  reinforce: PolicyGradientConfig = _PG
  rnd: PolicyGradientConfig = _PG
  rnd_bonus: RNDConfig = RNDConfig()
  pseudo_counts: PolicyGradientConfig = _PG
  pseudo_counts_bonus: PseudoCountConfig = PseudoCountConfig()
  unlikelihood: UnlikelihoodConfig = UnlikelihoodConfig(learning_rate=0.01)
  exact_rejection: ExactRejectionConfig = ExactRejectionConfig(
      capacity=4096, batch_size=65_536, max_batches=64)
  self_imitation: SelfImitationConfig = SelfImitationConfig(learning_rate=0.01)
  tune: bool = False
  tuning_seeds: tuple[int, ...] = tuple(range(100, 110))
  run_dir: str | None = None

  def __post_init__(self):
    name = "SuiteConfig"
    from banel_jax.suite import TASKS
    for field, allowed in (("tasks", tuple(TASKS)), ("methods", METHODS)):
      value = getattr(self, field)
      if not isinstance(value, tuple):
        raise ExperimentError(f"{name}.{field}={value!r} must be a tuple")
      unknown = [v for v in value if v not in allowed]
      if unknown:
        raise ExperimentError(f"{name}.{field}: {unknown} unknown; choose from "
                              f"{', '.join(allowed)}")
      if len(set(value)) != len(value):
        raise ExperimentError(f"{name}.{field}={value!r} names one twice")
    if not self.methods:
      raise ExperimentError(f"{name}.methods is empty")
    if self.half not in ("all", "tuning", "held_out"):
      raise ExperimentError(f"{name}.half={self.half!r} must be all, tuning or "
                            "held_out")
    for field in ("seeds", "tuning_seeds"):
      common.check_seeds(name, field, getattr(self, field))
    if set(self.seeds) & set(self.tuning_seeds):
      raise ExperimentError(f"{name}: seeds and tuning_seeds share "
                            f"{sorted(set(self.seeds) & set(self.tuning_seeds))}: "
                            "reported seeds are never used for choosing")
    for field in ("n_eval", "eval_every", "final_eval_samples"):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ExperimentError(f"{name}.{field}={v!r} must be an integer >= 1")

  def replace(self, **changes) -> "SuiteConfig":
    return dataclasses.replace(self, **changes)

  @property
  def task_list(self) -> tuple[str, ...]:
    """The tasks run, in the suite's order."""
    from banel_jax.suite import TASKS
    if self.tasks:
      return self.tasks
    return tuple(n for n, t in TASKS.items() if self.half in ("all", t.half))


def default_config() -> SuiteConfig:
  return SuiteConfig()


def tiny_config() -> SuiteConfig:
  """Two tasks, two methods, two seeds, small evaluations: about a minute."""
  return SuiteConfig(tasks=("toy1d_far", "hidden_product"),
                     methods=("banel_paper", "rnd"), seeds=(0, 1), n_eval=2_000,
                     final_eval_samples=4_000)


PRESETS = {"default": default_config, "tiny": tiny_config}


# ---------------------------------------------------------------------------
# Runs.


def run_config(config: SuiteConfig, task) -> RunConfig:
  """The runner's budget and evaluation on ``task`` (every method's)."""
  return RunConfig(nre_budget=task.nre_budget, samples_per_round=task.samples_per_round,
                   n_eval=config.n_eval, eval_every=config.eval_every)


def _sections(config: SuiteConfig, method: str, task) -> types.SimpleNamespace:
  """The attributes :func:`banel_jax.experiments.compare.build_method` reads."""
  banel = config.banel_paper if method == "banel_paper" else config.banel_default
  return types.SimpleNamespace(
      run=run_config(config, task), banel=banel, reinforce=config.reinforce,
      rnd=config.rnd, rnd_bonus=config.rnd_bonus, pseudo_count=config.pseudo_counts,
      pseudo_count_bonus=config.pseudo_counts_bonus, exact_count=None,
      unlikelihood=config.unlikelihood, exact_rejection=config.exact_rejection,
      self_imitation=config.self_imitation)


def run_pair(config: SuiteConfig, task, method: str, run_dir: pathlib.Path,
             progress: bool) -> dict:
  """Runs ``method`` on ``task`` for the config's seeds (resumable in
  ``run_dir``); returns :func:`banel_jax.experiments.harness.run_method`'s
  record plus ``final_eval`` (each seed's rate on fresh samples)."""
  from banel_jax.experiments import compare
  setup = task.setup()
  build = compare.build_method(_BUILD_NAME[method], setup,
                               _sections(config, method, task))
  settings = {"task": task.name, "method": method,
              "seeds": [int(s) for s in config.seeds], "run": jsonable(build.run_config),
              "sections": {k: jsonable(getattr(config, k)) for k in _SECTIONS[method]},
              "final_eval_samples": config.final_eval_samples}

  def final(runner, result) -> dict:
    return {"final_eval": harness.final_rates(runner, setup.oracle,
                                              config.final_eval_samples, 10_000,
                                              FINAL_EVAL_KEY)}

  return harness.run_method(
      setup.model, setup.prior_params, setup.oracle, build.run_config, config.seeds,
      settings=settings, what=f"{LABELS[method]} on {task.name}",
      method=build.method, extensions=build.extensions, run_dir=run_dir,
      on_round=_diagnostics(setup, len(config.seeds)), progress=progress,
      keep_checkpoints=1, final=final)


def _diagnostics(setup, n_seeds: int):
  """Per-round malformed share of each seed's scored queries, where the task
  has a grammar (the runner records the distinct share and the prior mass
  inside the regions itself: :data:`banel_jax.runtime.driver.DIAGNOSTICS`)."""
  if setup.malformed is None:
    return None

  def on_round(runner, record: dict) -> None:
    samples = runner.round_samples
    if "train" not in samples:
      return
    x, scored = samples["train"], samples["train_evaluated"]
    parts = [x[s][scored[s]] for s in range(n_seeds)]
    record["malformed_share"] = [float(np.mean(setup.malformed(p))) if len(p)
                                 else None for p in parts]

  return on_round


def pretrained(task) -> dict:
  """The task's one pretrained rate: exact where known, else the shipped
  measurement on 400,000 fresh samples (``{"rate", "exact", "samples",
  "hits", "interval"}``)."""
  from banel_jax.suite.tasks import load_record
  m = load_record(task.name)["measurement"]
  exact = m.get("exact_rate")
  return {"rate": float(exact if exact is not None else m["rate"]),
          "exact": exact is not None, "samples": m["samples"], "hits": m["hits"],
          "interval": m["interval"], "sampled_rate": m["rate"]}


# ---------------------------------------------------------------------------
# Robustness figures.


def robustness(improvements) -> dict:
  """Median, mean, collapse share (< 1x) and share >= 10x of improvements."""
  v = np.asarray(improvements, np.float64)
  lo, hi = harness.bootstrap_ci(v, np.median)
  return {"median": float(np.median(v)), "median_ci95": [lo, hi],
          "mean": float(v.mean()), "collapse_share": float(np.mean(v < 1.0)),
          "share_10x": float(np.mean(v >= TEN_X)), "min": float(v.min()),
          "max": float(v.max()), "n": int(v.size)}


def method_entry(method: str, res: dict, seeds, rate0: float) -> dict:
  """The method's ``summary.json`` entry plus its robustness figures."""
  final = [e["rate"] for e in res["final_eval"]]
  entry = common.method_entry(label=LABELS[method],
                              uses_successes=method in USES_SUCCESSES,
                              task_knowledge=False, seeds=seeds, final=final,
                              best=res["best_success_rate"], pretrained_rate=rate0)
  entry["final_eval"] = res["final_eval"]
  entry["robustness_final"] = robustness(entry["improvement_final"])
  entry["robustness_best"] = robustness(entry["improvement_best"])
  entry["wall_time_s"] = res["wall_time_s"]
  entry["n_successes_found_in_training"] = res["n_successes_found_in_training"]
  shares = [h["distinct_share"] for h in res["history"] if "distinct_share" in h]
  if shares:
    entry["distinct_share_last_round"] = shares[-1]
  return entry


def pooled(tasks: dict, half: str, methods) -> dict:
  """Robustness over every (task, seed) pair of ``half``."""
  out = {}
  for m in methods:
    vals = [v for t in tasks.values() if t["half"] == half and m in t["methods"]
            for v in t["methods"][m]["improvement_final"]]
    if vals:
      out[m] = robustness(vals)
  return out


def _x(v: float) -> str:
  """An improvement factor for the table: ``0.35x``, ``4.1x``, ``420x``."""
  return f"{v:.0f}x" if v >= 10 else f"{v:.2g}x"


def markdown_table(tasks: dict, methods, pools: dict) -> str:
  """Median final improvement (collapse share) per task and method, and the
  pooled figures per half."""
  names = list(tasks)
  head = ("| method | " + " | ".join(f"{n} ({tasks[n]['half'][0]})" for n in names)
          + " | tuning: median / <1x / >=10x | held-out: median / <1x / >=10x |")
  lines = [head, "|" + "---|" * (len(names) + 3)]
  for m in methods:
    cells = []
    for n in names:
      e = tasks[n]["methods"].get(m)
      cells.append("" if e is None else
                   f"{_x(e['robustness_final']['median'])} "
                   f"({e['robustness_final']['collapse_share']:.0%})")
    for half in ("tuning", "held_out"):
      p = pools[half].get(m)
      cells.append("" if p is None else f"{_x(p['median'])} / "
                   f"{p['collapse_share']:.0%} / {p['share_10x']:.0%}")
    lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
  rates = ", ".join(f"{n} {tasks[n]['pretrained_rate']:.2e}" for n in names)
  lines.append("")
  lines.append("Cells: median over seeds of the final improvement (final rate on "
               "fresh samples / the task's pretrained rate), with the share of "
               "seeds below 1x in brackets; (t) tuning half, (h) held-out half. "
               f"Pretrained rates: {rates}.")
  return "\n".join(lines)


def plot(runs: dict, tasks: dict, methods, path: pathlib.Path) -> None:
  """Success against NRE per task: median over seeds, inter-quartile band."""
  from banel_jax import plotting
  names = list(tasks)
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plotting.new_axes(figsize=(3.6 * cols, 3.0 * rows), nrows=rows,
                                ncols=cols)
  axes = np.atleast_1d(axes).ravel()
  for ax, name in zip(axes, names):
    for i, m in enumerate(methods):
      res = runs.get((name, m))
      if res is None:
        continue
      recs = [h for h in res["history"] if "success_rate" in h]
      if not recs:  # a stopped run
        continue
      nre = np.array([np.mean(h["nre"]) for h in recs], float)
      rate = np.array([h["success_rate"] for h in recs], float)
      q1, med, q3 = np.percentile(rate, [25, 50, 75], axis=1)
      ax.plot(nre, med, color=f"C{i}", lw=1.2, label=LABELS[m])
      ax.fill_between(nre, q1, q3, color=f"C{i}", alpha=0.12)
    ax.axhline(tasks[name]["pretrained_rate"], color="k", ls=":", lw=1)
    ax.set_yscale("symlog", linthresh=tasks[name]["pretrained_rate"] / 2)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{name} ({tasks[name]['half'].replace('_', '-')})", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes[len(names):]:
    ax.axis("off")
  axes[0].legend(fontsize=6)
  fig.supxlabel("reward evaluations spent on learning (NRE)", fontsize=9)
  fig.supylabel("success rate (median over seeds; band: IQR)", fontsize=9)
  plotting.save_figure(fig, path)


# ---------------------------------------------------------------------------
# Choosing the defaults on the tuning half.

# Candidate settings of BaNEL that use no successful sample, as changes to
# BanelConfig.paper(). Fixed before the first tuning run.
_LR = {"failure_learning_rate": 0.03, "distill_learning_rate": 0.03}
DEFAULTS_GRID: tuple[dict, ...] = (
    {},
    {**_LR},
    {**_LR, "distill_prior_share": 0.25},
    {**_LR, "distill_prior_share": 0.5},
    {**_LR, "distill_prior_share": 0.5, "distill_reset": True},
    {**_LR, "distill_prior_share": 0.25, "filter_factor": 4.0},
    {**_LR, "tau_mode": "calibrated", "calibrated_reject_fraction": 0.3},
    {"failure_learning_rate": 0.01, "distill_learning_rate": 0.01,
     "distill_prior_share": 0.5},
    # added after points 0-7 had run: the defensive share with reset was the
    # least collapsing; does a stronger, scale-free threshold keep it?
    {**_LR, "distill_prior_share": 0.5, "distill_reset": True,
     "tau_mode": "calibrated", "calibrated_reject_fraction": 0.3},
    {**_LR, "distill_prior_share": 0.5, "distill_reset": True,
     "filter_factor": 1.2},
)
TUNING_CRITERION = ("fewest seeds below the pretrained rate over every (tuning "
                    "task, tuning seed) pair; ties: the highest median "
                    "improvement; then the first point")


def tune(config: SuiteConfig, run_root: pathlib.Path, progress: bool) -> dict:
  """Runs every point of :data:`DEFAULTS_GRID` on the tuning half at the
  tuning seeds (resumable in ``run_root/tune/<i>/<task>``); returns the record
  with every point's figures and the pick by :data:`TUNING_CRITERION`. A
  point that stops a run (no acceptance left, non-finite values) counts as 0x
  on every seed of that task."""
  from banel_jax.core.posterior import AcceptanceRateError
  from banel_jax.runtime.driver import NonFiniteError
  from banel_jax.suite import TASKS, get_task
  names = [n for n, t in TASKS.items() if t.half == "tuning"]
  tuning = config.replace(seeds=config.tuning_seeds, tuning_seeds=(10_000,))
  points = []
  for i, changes in enumerate(DEFAULTS_GRID):
    cfg = tuning.replace(banel_default=BanelConfig.paper(**changes))
    per_task, pooled_values = {}, []
    for name in names:
      task = get_task(name)
      rate = pretrained(task)["rate"]
      try:
        res = run_pair(cfg, task, "banel_default", run_root / "tune" / str(i) / name,
                       progress)
      except (AcceptanceRateError, NonFiniteError) as e:
        # a setting that stops a run has failed it on every seed of the batch
        imp = [0.0] * len(config.tuning_seeds)
        per_task[name] = {"improvement_final": imp, **robustness(imp),
                          "stopped": stopped_record(e, len(imp))["stopped"]}
        print(f"  tune {i} {name}: stopped ({type(e).__name__})", flush=True)
        pooled_values += imp
        continue
      imp = [e["rate"] / rate for e in res["final_eval"]]
      per_task[name] = {"improvement_final": imp, **robustness(imp),
                        "wall_time_s": res["wall_time_s"]}
      pooled_values += imp
    point = {"changes": changes, "tasks": per_task, "pooled": robustness(pooled_values)}
    points.append(point)
    p = point["pooled"]
    print(f"  tune {i} {changes}: median {p['median']:.3g}x, below 1x "
          f"{p['collapse_share']:.0%}, >= 10x {p['share_10x']:.0%}", flush=True)
  best = min(range(len(points)), key=lambda j: (
      points[j]["pooled"]["collapse_share"], -points[j]["pooled"]["median"], j))
  return {"tasks": names, "seeds": list(config.tuning_seeds),
          "criterion": TUNING_CRITERION, "points": points, "chosen": best,
          "chosen_changes": points[best]["changes"]}


# ---------------------------------------------------------------------------
# The command.


def stopped_record(error: Exception, n_seeds: int) -> dict:
  """The record of a run that a setting stopped (no acceptance left, or
  non-finite values): it counts as 0 on every seed of its batch."""
  zeros = [0.0] * n_seeds
  return {"history": [], "final_eval": [{"rate": 0.0}] * n_seeds,
          "best_success_rate": zeros, "final_success_rate": zeros,
          "wall_time_s": 0.0, "n_successes_found_in_training": 0,
          "stopped": f"{type(error).__name__}: {error}"}


def run(config: SuiteConfig, out: str | os.PathLike, progress: bool = True) -> dict:
  """Runs the suite of ``config``; writes the files of the module docstring to
  ``out`` and returns the summary. A (task, method) pair that stops (no
  acceptance left, non-finite values) counts as 0 on every seed, with the
  reason recorded."""
  from banel_jax.core.posterior import AcceptanceRateError
  from banel_jax.runtime.driver import NonFiniteError
  from banel_jax.suite import get_task
  if not isinstance(config, SuiteConfig):
    raise TypeError(f"config must be a SuiteConfig, got {type(config).__name__}")
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  run_root = pathlib.Path(config.run_dir) if config.run_dir else out / "runs"
  if config.tune:
    print(f"tuning BaNEL's defaults on the tuning half, seeds "
          f"{list(config.tuning_seeds)} ...", flush=True)
    record = tune(config, run_root, progress)
    common.write_json(out / "tuning.json", {**invocation(), **record})
  tasks, runs = {}, {}
  for name in config.task_list:
    task = get_task(name)
    rate = pretrained(task)
    tasks[name] = {"half": task.half, "kind": task.kind,
                   "nre_budget": task.nre_budget,
                   "samples_per_round": task.samples_per_round,
                   "pretrained_rate": rate["rate"],
                   "pretrained_samples": rate.get("samples"),
                   "pretrained": rate, "methods": {}}
    for method in config.methods:
      print(f"{name}: {LABELS[method]} ...", flush=True)
      try:
        res = run_pair(config, task, method, run_root / name / method, progress)
      except (AcceptanceRateError, NonFiniteError) as e:
        res = stopped_record(e, len(config.seeds))
        print(f"  stopped: {res['stopped']}", flush=True)
      runs[(name, method)] = res
      entry = method_entry(method, res, config.seeds, rate["rate"])
      if "stopped" in res:
        entry["stopped"] = res["stopped"]
      tasks[name]["methods"][method] = entry
      r = entry["robustness_final"]
      print(f"  median {r['median']:.3g}x, below 1x {r['collapse_share']:.0%}, "
            f">= 10x {r['share_10x']:.0%} ({res['wall_time_s']:.0f}s"
            + ("; loaded)" if "loaded_from" in res else ")"), flush=True)
      write_outputs(out, config, tasks, runs)
  record = write_outputs(out, config, tasks, runs, final=True)
  print(f"wrote {out}/")
  return record


def write_outputs(out: pathlib.Path, config: SuiteConfig, tasks: dict, runs: dict,
                  final: bool = False) -> dict:
  """Writes ``summary.json``, ``suite.json``, ``table.md`` and the plot from
  the pairs finished so far (after each pair, so a stopped suite leaves its
  figures); prints the table when ``final``. The wall time is the runs' own
  (summed over the processes that resumed them), final evaluations included."""
  wall = float(sum(r["wall_time_s"] + r.get("final_s", 0.0) for r in runs.values()))
  done = {n: t for n, t in tasks.items() if t["methods"]}
  pools = {h: pooled(done, h, config.methods) for h in ("tuning", "held_out")}
  table = markdown_table(done, config.methods, pools)
  inv = invocation()
  common.write_summary(out, name=out.name, command=inv.get("command", "banel suite"),
                       wall_time_s=wall, tasks=done)
  record = {**inv, "config": config_to_dict(config), "pooled": pools,
            "wall_time_s": wall, "complete": final, "tasks": done}
  common.write_json(out / "suite.json", {
      **record, "runs": {f"{t}/{m}": {"history": r["history"]}
                         for (t, m), r in runs.items()}})
  (out / "table.md").write_text(table + "\n")
  plot(runs, done, config.methods, out / "success_vs_nre.png")
  write_readme(out, config, record, table, wall)
  if final:
    print(table)
  return record


def _settings_line(cfg: BanelConfig) -> str:
  return ", ".join(f"{k}={v}" for k, v in common.changed_from_paper(cfg).items()
                   ) or "the paper's settings"


def write_readme(out: pathlib.Path, config: SuiteConfig, record: dict, table: str,
                 wall: float) -> None:
  """``out/README.md`` from the figures (keeps the observations block)."""
  inv = record.get("command", "banel suite")
  lines = [
      "# The sparse-reward suite", "",
      "**What.** Every method on the suite's small tasks (`docs/suite.md`), "
      f"seeds {list(config.seeds)} side by side at each task's NRE budget; the "
      "final rate of each seed is measured on "
      f"{config.final_eval_samples:,} fresh samples and divided by the task's one "
      "pretrained rate. The tuning half chose the library's defaults "
      f"(`tuning.json`, seeds {list(config.tuning_seeds)}); the held-out half "
      "never chose anything.", "",
      "**Command.**", "", "```", inv, "```", "",
      "**Config.** BaNEL (paper): `BanelConfig.paper()`. BaNEL (defaults): "
      f"{_settings_line(config.banel_default)}. Policy-gradient baselines: Adam "
      f"{config.rnd.learning_rate}, KL weight {config.rnd.kl_weight} (one setting "
      "for every baseline, fixed before any run; not tuned). Evaluation every "
      f"{config.eval_every} rounds on {config.n_eval:,} samples. Full record: "
      "`suite.json`.", "",
      *common.readme_tail(
          out, table, table_note="(`table.md`)", wall=f"{wall / 60:.0f} minutes",
          summed_over="the (task, method) pairs, final evaluations included")]
  (out / "README.md").write_text("\n".join(lines))


COMMAND = register(Command(
    name="suite",
    help="The sparse-reward suite: every method on small tasks, 10 seeds, "
         "robustness figures.",
    config_cls=SuiteConfig, presets=PRESETS, default_preset="default", run=run))
