"""Compute scaling on the addition attack: BaNEL against the novelty bonuses.

BaNEL, RND and pseudo-counts each train a model of what they have seen, once
per round, and each has one knob for how long. This study sweeps that knob
over ``--epochs`` for the three methods together, at matched compute, and
reports the improvement over the pretrained attacker against it. Every run
goes through the harness of ``banel compare``
(:mod:`banel_jax.experiments.compare`): the same task, NRE budget, samples per
round, evaluation, seeds (side by side under ``vmap``) and pretrained rate for
every method, each method at the picks of compare's addition presets
(``banel compare --help`` lists them) except for the swept knob.

**Matched compute.** At epoch value E:

* BaNEL: ``banel.failure_epochs = E``: E passes over the round's scored
  samples to fit the failure model (minibatches of
  ``banel.failure_batch_size``);
* RND: ``rnd_bonus.predictor_steps = E``: E full-batch Adam steps of the
  predictor on the round's training share (``rnd_bonus.train_fraction``);
* pseudo-counts: ``pseudo_count_bonus.density_steps = E``: E full-batch Adam
  steps of the density model on the round's batch.

One unit is one pass of the method's novelty model over its round's training
data, so E matches the passes, not the FLOPs: the models differ (BaNEL's failure
model and the density model are attackers' transformers, RND's networks small
MLPs), and the rest of a round (BaNEL's calibration and distillation, the
bonuses' policy updates) stays at the picks.

**Runs.** Each (method, E) runs in ``RUN_DIR/<method>_e<E>`` (``--run-dir``;
default ``OUT/runs``) through compare's resumable runs: checkpoints every
round, the ledger of every oracle call, ``result.json`` when it finishes. A
rerun loads the finished ones and resumes an interrupted one from its newest
checkpoint. A run directory made with other settings (seeds, budget, a pick,
the target) is refused with the differing fields named, never reused or
overwritten: pass another ``--run-dir`` or the original settings. So the
study shards: run the same command with part of ``--epochs`` or
``--methods`` on several machines that share ``RUN_DIR``, then once with
everything to load all the finished runs and write the full table. A
pretrained rate measured here (a target without a shipped calibration) is kept
in ``RUN_DIR/pretrained.json``.

``--out`` is rewritten before each new run starts, and its ``scaling.json``
keeps every finished run and stop with its settings: rerun into the same
folder on a machine without the run directories, the command loads those
(settings unchanged) and runs only the missing (method, E) pairs. A study
too long for one sitting grows across sessions or machines this way.

Writes to ``--out``:

* ``scaling.json``: the config, the pretrained rate (one per target: the
  calibration shipped with it, as compare uses), per method and epoch value the
  per-seed final and best-so-far rates and improvements (mean, median, std,
  bootstrap 95% intervals of the mean and median) and wall times, and the runs
  that stopped on their own failure mode (``stopped``);
* ``scaling.png``: final and best-so-far improvement against epochs (log-x),
  one colour per method: the median over seeds and every seed's point;
* ``summary.json``: the canonical form, one task per epoch value
  (``addition_msb_e<E>``, or ``addition_lsb_e<E>`` on the reversed-order
  target), each with the methods' per-seed rates, statistics and the
  Mann-Whitney p-value against BaNEL at the same E;
* ``README.md``: the command, config, tables, plot, wall time and machine; its
  observations block (between ``<!-- observations:start -->`` and
  ``<!-- observations:end -->``) is kept when a rerun writes it anew.

``--pool DIR [DIR ...]`` runs nothing: it joins the ``scaling.json`` of studies
made on disjoint seeds with otherwise equal settings (e.g. seeds 0-2, then
3-4 with ``--compare.seeds 3 4`` and another ``--run-dir``) into one study over
all their seeds, for the (method, E) pairs they share, and writes the same
files to ``--out``.

``--compare.*`` sets the shared harness (target, leading-zero rule, seeds,
``--compare.run.*`` budget and evaluation, each method's picks). The study
sets the swept knobs (changing ``--compare.banel.failure-epochs``,
``--compare.rnd-bonus.predictor-steps`` or
``--compare.pseudo-count-bonus.density-steps`` is refused: use ``--epochs``),
the methods (``--methods``) and the run directories (``--run-dir``);
``--compare.tune`` is refused (tune with ``banel compare --tune`` and pass its
picks).

Presets: ``default`` (normal-order target ``target_msb``, leading zeros
malformed, epochs 1, 3, 10, seeds 0-2, NRE 2,500, m = 500, the three methods:
a few hours on 2 CPU cores), ``paper`` (the paper's study: epochs 1, 2, 3, 5,
10, 20, 50, 100, seeds 0-4, NRE 7,500; days on 2 CPU cores, run it sharded
or on a GPU) and ``tiny`` (tests: compare's ``addition-tiny`` on
``target_msb``, epochs 1 and 2, one seed: six small runs, a few minutes on
2 CPU cores, mostly compilation).

Examples:
  banel scaling                                      # epochs 1 3 10, 3 seeds
  banel scaling --preset paper --run-dir runs/scaling_paper --epochs 1 2 3
  banel scaling --preset paper --run-dir runs/scaling_paper --methods rnd
  banel scaling --preset paper --run-dir runs/scaling_paper   # the full table
  banel scaling --compare.seeds 3 4 --run-dir runs/scaling_s34 --out runs/s34
  banel scaling --pool runs/scaling runs/s34 --out runs/scaling_5seeds
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Literal, get_args

import numpy as np

from banel_jax.core.config import config_to_dict, jsonable
from banel_jax.experiments import common, compare
from banel_jax.experiments.compare import CompareConfig
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)

ScalingMethod = Literal["banel", "rnd", "pseudo_count"]
METHODS: tuple[str, ...] = get_args(ScalingMethod)
# method -> the CompareConfig field (section.field) that the epoch value sets
KNOBS = {"banel": "banel.failure_epochs", "rnd": "rnd_bonus.predictor_steps",
         "pseudo_count": "pseudo_count_bonus.density_steps"}
SCALING_FILE = "scaling.json"


def run_name(method: str, epochs: int) -> str:
  """The run directory's name of ``method`` at ``epochs``: ``<method>_e<E>``."""
  return f"{method}_e{epochs}"


def _study_compare(nre_budget: int, seeds: tuple[int, ...]) -> CompareConfig:
  """compare's ``addition-msb`` preset (its picks) with leading zeros malformed,
  at ``nre_budget`` on ``seeds``."""
  base = compare.addition_msb_config()
  return base.replace(seeds=seeds, leading_zeros_malformed=True,
                      run=base.run.replace(nre_budget=nre_budget))


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
  """A compute-scaling study.

  Attributes:
    epochs: the compute values E (>= 1): BaNEL's failure-model epochs, RND's
      predictor steps and the pseudo-count density steps per round.
    methods: the methods compared (``banel``, ``rnd``, ``pseudo_count``).
    compare: the shared harness: task ``addition``, target, leading-zero rule,
      seeds, run settings (NRE, m, n_eval, eval_every) and each method's picks;
      the swept knobs, ``methods``, ``tune`` and ``run_dir`` are the study's.
    run_dir: parent of the resumable run directories, one per (method, E):
      ``RUN_DIR/<method>_e<E>``; default ``OUT/runs``.
    pool: run nothing: join the ``scaling.json`` of these studies (made on
      disjoint seeds with otherwise equal settings) into one study.
  """

  epochs: tuple[int, ...] = (1, 3, 10)
  methods: tuple[ScalingMethod, ...] = METHODS
  compare: CompareConfig = _study_compare(2500, (0, 1, 2))
  run_dir: str | None = None
  pool: tuple[str, ...] = ()

  def __post_init__(self):
    name = "ScalingConfig"
    if not isinstance(self.epochs, tuple) or not self.epochs or not all(
        isinstance(e, int) and not isinstance(e, bool) and e >= 1
        for e in self.epochs):
      raise ExperimentError(f"{name}.epochs={self.epochs!r} must be a non-empty "
                            "tuple of integers >= 1")
    if len(set(self.epochs)) != len(self.epochs):
      raise ExperimentError(f"{name}.epochs={self.epochs!r} names a value twice")
    if not isinstance(self.methods, tuple) or not self.methods:
      raise ExperimentError(f"{name}.methods={self.methods!r} must be a non-empty "
                            f"tuple of {', '.join(METHODS)}")
    unknown = [m for m in self.methods if m not in METHODS]
    if unknown:
      raise ExperimentError(f"{name}.methods: {unknown} are not compared here; the "
                            f"methods are {', '.join(METHODS)}")
    if len(set(self.methods)) != len(self.methods):
      raise ExperimentError(f"{name}.methods={self.methods!r} names a method twice")
    c = self.compare
    if not isinstance(c, CompareConfig):
      raise ExperimentError(f"{name}.compare must be a CompareConfig, got "
                            f"{type(c).__name__}")
    if c.task != "addition":
      raise ExperimentError(f"{name}.compare.task={c.task!r}: the study runs on "
                            "the addition task ('addition')")
    if c.methods:
      raise ExperimentError(f"{name}.compare.methods={c.methods!r}: set the "
                            "methods with ScalingConfig.methods (--methods)")
    if c.tune:
      raise ExperimentError(f"{name}.compare.tune=True: the study runs at the "
                            "picks; tune with `banel compare --tune` and pass its "
                            "picks as --compare.* flags")
    if c.run_dir is not None:
      raise ExperimentError(f"{name}.compare.run_dir={c.run_dir!r}: each run has "
                            "its own directory; set ScalingConfig.run_dir "
                            "(--run-dir) instead")
    if self.run_dir is not None and (not isinstance(self.run_dir, str)
                                     or not self.run_dir):
      raise ExperimentError(f"{name}.run_dir={self.run_dir!r} must be a directory")
    if not isinstance(self.pool, tuple) or not all(
        isinstance(p, str) and p for p in self.pool):
      raise ExperimentError(f"{name}.pool={self.pool!r} must be a tuple of "
                            "directories")
    if len(set(self.pool)) != len(self.pool):
      raise ExperimentError(f"{name}.pool={self.pool!r} names a study twice")

  def replace(self, **changes) -> "ScalingConfig":
    return dataclasses.replace(self, **changes)

  def compare_for(self, method: str, epochs: int) -> CompareConfig:
    """The compare config that ``method`` runs at epoch value ``epochs``."""
    if method not in KNOBS:
      raise ExperimentError(f"unknown method {method!r}; the methods are "
                            f"{', '.join(METHODS)}")
    return compare.apply_overrides(self.compare, {KNOBS[method]: epochs})

  def run_root(self, out: str | os.PathLike) -> pathlib.Path:
    """``run_dir``, or ``out/runs``."""
    return pathlib.Path(self.run_dir if self.run_dir is not None
                        else pathlib.Path(out) / "runs")


def default_config() -> ScalingConfig:
  """``target_msb``, leading zeros malformed; epochs 1, 3 and 10; seeds 0-2 at
  NRE 2,500; the three methods."""
  return ScalingConfig()


def paper_config() -> ScalingConfig:
  """The paper's study: epochs 1 to 100; seeds 0-4 at NRE 7,500."""
  return ScalingConfig(epochs=(1, 2, 3, 5, 10, 20, 50, 100),
                       compare=_study_compare(7500, (0, 1, 2, 3, 4)))


def tiny_config() -> ScalingConfig:
  """Tests: compare's ``addition-tiny`` on ``target_msb`` with leading zeros
  malformed; epochs 1 and 2 on seed 0."""
  return ScalingConfig(epochs=(1, 2), compare=compare.addition_tiny_config().replace(
      target="target_msb", leading_zeros_malformed=True, seeds=(0,)))


PRESETS = {"default": default_config, "paper": paper_config, "tiny": tiny_config}


def check_against_preset(config: ScalingConfig, preset: ScalingConfig) -> None:
  """Refuses ``--compare.*`` flags that the study sets itself or that do not
  apply, naming them (:attr:`~banel_jax.experiments.registry.Command.check`)."""
  c, p = config.compare, preset.compare
  swept = [f"--compare.{path.replace('_', '-')}" for path in KNOBS.values()
           if _get(c, path) != _get(p, path)]
  if swept:
    raise ExperimentError(f"{', '.join(swept)}: the study sets them from "
                          "--epochs; set the values with --epochs instead")
  shared = [f"--compare.banel.{f.replace('_', '-')}" for f in compare.RUN_FIELDS
            if getattr(c.banel, f) != getattr(p.banel, f)]
  if shared:
    raise ExperimentError(f"{', '.join(shared)}: every method shares the run's "
                          "budget and evaluation; set them with --compare.run.* "
                          "instead")
  if c.toy != p.toy:
    raise ExperimentError("--compare.toy.* apply to the toy only; the study runs "
                          "on the addition task")


def _get(config: CompareConfig, path: str):
  section, field = path.split(".")
  return getattr(getattr(config, section), field)


# ---------------------------------------------------------------------------
# Rows, the canonical summary, the table and the plot.


def make_row(method: str, epochs: int, seeds, final, best, pretrained_rate: float,
             wall_time_s: float, **extra) -> dict:
  """One (method, E) of ``scaling.json`` from its per-seed rates."""
  if not pretrained_rate > 0:
    raise ExperimentError(f"the pretrained rate must be > 0, got {pretrained_rate}")
  final = [float(v) for v in final]
  best = [float(v) for v in best]
  row = {"method": method, "label": compare.LABELS[method], "epochs": int(epochs),
         "knob": KNOBS[method], "seeds": [int(s) for s in seeds],
         "final_rate": final, "best_rate": best}
  for key, rates in (("improvement_final", final), ("improvement_best", best)):
    per_seed = [v / pretrained_rate for v in rates]
    row[key] = {"per_seed": per_seed, **compare.statistics(per_seed)}
  row["wall_time_s"] = float(wall_time_s)
  row.update(extra)
  return row


def canonical_task(rows: list[dict], record: dict) -> dict:
  """The ``summary.json`` task of one epoch value (``rows``: its methods):
  per method the per-seed rates and improvements, statistics of the final and
  best-so-far improvement (Mann-Whitney against BaNEL at the same E), and the
  shares of seeds at least 10x and below 1x; BaNEL against the best bonus."""
  pre = record["pretrained"]
  rate0 = pre["rate"]
  by_method = {r["method"]: r for r in rows}
  reference = (by_method["banel"]["improvement_final"]["per_seed"]
               if "banel" in by_method else None)
  methods = {}
  for name in METHODS:
    if name not in by_method:
      continue
    r = by_method[name]
    entry = common.method_entry(label=r["label"], uses_successes=False,
                                task_knowledge=False, seeds=r["seeds"],
                                final=r["final_rate"], best=r["best_rate"],
                                pretrained_rate=rate0)
    imp = entry["improvement_final"]
    entry["statistics_final"] = compare.statistics(
        imp, None if name == "banel" else reference)
    entry["statistics_best"] = compare.statistics(entry["improvement_best"])
    entry["share_10x"] = float(np.mean(np.asarray(imp) >= 10.0))
    entry["share_below_1x"] = float(np.mean(np.asarray(imp) < 1.0))
    entry["compute"] = {"knob": r["knob"], "value": r["epochs"]}
    methods[compare.METHOD_IDS[name]] = entry
  task = {"nre_budget": record["nre_budget"], "epochs": rows[0]["epochs"],
          "pretrained_rate": rate0,
          "pretrained_samples": pre["estimate"]["trials"],
          "pretrained_source": pre.get("source", "measured here"),
          "methods": methods}
  versus = compare.against_best_bonus(methods)
  if versus:
    task["banel_vs_best_bonus"] = versus
  return task


def summary_tasks(record: dict) -> dict:
  """``summary.json``'s tasks: ``<task>_e<E>`` for every epoch value with a row."""
  tasks = {}
  for e in sorted({r["epochs"] for r in record["rows"]}):
    tasks[f"{record['task']}_e{e}"] = canonical_task(
        [r for r in record["rows"] if r["epochs"] == e], record)
  return tasks


def markdown_table(record: dict) -> str:
  """One line per (E, method): median and mean final improvement with their
  bootstrap 95% intervals, the best-so-far median, every seed, wall time."""
  ci = compare.ci_cell
  lines = ["| E | method | seeds | final median [95% CI] | final mean [95% CI] | "
           "best-so-far median [95% CI] | final per seed | wall (s) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in sorted(record["rows"], key=lambda r: (r["epochs"],
                                                 METHODS.index(r["method"]))):
    fin, best = r["improvement_final"], r["improvement_best"]
    lines.append(
        f"| {r['epochs']} | {r['label']} | {len(r['seeds'])} | "
        f"{ci(fin, 'median')} | {ci(fin, 'mean')} | {ci(best, 'median')} | "
        + ", ".join(f"{v:.3g}" for v in fin["per_seed"])
        + f" | {r['wall_time_s']:.0f} |")
  return "\n".join(lines)


def plot(record: dict, path: str | os.PathLike) -> None:
  """Final and best-so-far improvement against E (log-x), one colour per
  method: the median over seeds (line) and every seed (points)."""
  from banel_jax import plotting
  fig, axes = plotting.new_axes(figsize=(11, 4.2), ncols=2)
  axes = np.asarray(axes).ravel()
  present = [m for m in METHODS if any(r["method"] == m for r in record["rows"])]
  for ax, key, what in zip(axes, ("improvement_final", "improvement_best"),
                           ("final", "best-so-far")):
    for i, m in enumerate(present):
      rows = sorted((r for r in record["rows"] if r["method"] == m),
                    key=lambda r: r["epochs"])
      color = f"C{METHODS.index(m)}"
      # a small offset per method keeps the seeds' points apart on log-x
      shift = 1.0 + 0.05 * (i - (len(present) - 1) / 2)
      e = np.array([r["epochs"] for r in rows], float) * shift
      ax.plot(e, [r[key]["median"] for r in rows], "o-", color=color,
              label=f"{compare.LABELS[m]} (median over seeds)")
      for r in rows:
        v = r[key]["per_seed"]
        ax.scatter([r["epochs"] * shift] * len(v), v, color=color, s=12,
                   alpha=0.45)
    ax.axhline(1.0, color="k", ls=":", lw=1, label="pretrained")
    ax.set_xscale("log")
    ticks = sorted({r["epochs"] for r in record["rows"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("E: failure epochs (BaNEL) / predictor or density steps "
                  "(bonuses) per round", fontsize=8)
    ax.set_ylabel(f"{what} improvement over pretrained")
    ax.set_title(f"{what} ({_describe(record)})", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  plotting.save_figure(fig, path)


def _describe(record: dict) -> str:
  lz = "malformed" if record["leading_zeros_malformed"] else "allowed"
  n = len(record["seeds"])
  return (f"{record['task']}, {n} seed{'s' if n > 1 else ''}, NRE "
          f"{record['nre_budget']:,}, leading zeros {lz}")


def _duration(seconds: float) -> str:
  return (f"{seconds / 3600:.1f} hours" if seconds >= 3600
          else f"{seconds / 60:.1f} minutes")


def write_readme(out: pathlib.Path, record: dict, tasks: dict, table: str) -> None:
  """``out/README.md`` from the record (keeps the observations block)."""
  pre = record["pretrained"]
  knobs = "; ".join(f"{compare.LABELS[m]}: `{KNOBS[m]}`" for m in record["methods"])
  lines = [
      "# Compute scaling: BaNEL against the novelty bonuses at matched compute", "",
      f"**What.** {', '.join(compare.LABELS[m] for m in record['methods'])} in "
      f"the harness of `banel compare` on `{record['task']}` (target "
      f"`{record['target']}`, leading zeros "
      f"{'malformed' if record['leading_zeros_malformed'] else 'allowed'}): NRE "
      f"budget {record['nre_budget']:,}, m = {record['samples_per_round']}, "
      f"evaluation on {record['n_eval']:,} fresh samples every "
      f"{record['eval_every']} round(s), seeds {record['seeds']} side by side. "
      f"The compute value E sets {knobs} (one pass of the novelty model over "
      f"its round's data per unit). Improvement = rate / the one pretrained "
      f"rate {pre['rate']:.4g} ({pre['estimate']['trials']:,} samples; "
      f"{pre.get('source', 'measured here')}).", "",
      "**Command.**", "", "```", record.get("command") or "banel scaling", "```", "",
      "**Config.** `scaling.json` holds every setting (`config`); each method "
      "runs at the picks of compare's addition presets (`banel compare --help` "
      "lists them) except for the swept knob."]
  if record.get("pooled_from"):
    lines += ["", "**Pooled** from studies on disjoint seeds:", "",
              *(f"- `{p['dir']}`: seeds {p['seeds']} (`{p.get('command')}`)"
                for p in record["pooled_from"])]
  lines += ["", "**Table** (improvement over seeds; intervals: bootstrap 95% "
            "over seeds; final: the large final evaluation where it ran "
            f"({record['final_eval_samples']:,} samples when a seed ends below "
            f"{record['final_eval_threshold']:g}), else the last evaluation; "
            "best-so-far: the best per-round evaluation).", "",
            table, "", "![improvement against E](scaling.png)", ""]
  for tid, task in tasks.items():
    lines += [f"**Statistics at E = {task['epochs']}** (`{tid}`; final "
              "improvement; p: Mann-Whitney against BaNEL at the same E).", "",
              compare.statistics_table(task), "",
              *compare.against_best_bonus_lines(task)]
  stopped = {f"{s['method']}_e{s['epochs']}": {**s, "label": f"{s['label']} at "
                                                f"E = {s['epochs']}"}
             for s in record.get("stopped", [])}
  lines += [*compare.stopped_lines(stopped),
            "## Observations", "", common.kept_observations(out / "README.md"), "",
            f"**Wall time and machine.** {_duration(record['total_wall_time_s'])} "
            "of runs (summed over the (method, E) runs, resumed runs included) on "
            f"{record['machine']}.", ""]
  (out / "README.md").write_text("\n".join(lines))


def write_outputs(out: pathlib.Path, record: dict, quiet: bool = False) -> None:
  """``scaling.json``, ``scaling.png``, ``summary.json`` and ``README.md``
  (``quiet``: without printing the table)."""
  if not record["rows"]:
    raise ExperimentError("no (method, E) run finished: nothing to write")
  out.mkdir(parents=True, exist_ok=True)
  common.write_json(out / SCALING_FILE, record)
  tasks = summary_tasks(record)
  common.write_json(out / "summary.json", {
      "name": out.name, "command": record.get("command") or "banel scaling",
      "machine": record["machine"], "wall_time_s": record["total_wall_time_s"],
      "tasks": tasks})
  table = markdown_table(record)
  write_readme(out, record, tasks, table)
  plot(record, out / "scaling.png")
  if not quiet:
    print(table)
    print(f"wrote {out}/")


# ---------------------------------------------------------------------------
# Running and pooling.


def _study_fields(config: ScalingConfig, pretrained: dict) -> dict:
  c = config.compare
  return {"task": compare.task_id(c), "target": c.target,
          "leading_zeros_malformed": c.leading_zeros_malformed,
          "nre_budget": c.run.nre_budget,
          "samples_per_round": c.run.samples_per_round, "n_eval": c.run.n_eval,
          "eval_every": c.run.eval_every,
          "final_eval_samples": c.final_eval_samples,
          "final_eval_threshold": c.final_eval_threshold,
          "seeds": list(c.seeds), "knobs": dict(KNOBS), "pretrained": pretrained,
          # the shared harness, as pooling compares it
          "compare": config_to_dict(c)}


def recorded_runs(out: str | os.PathLike) -> dict:
  """The finished runs and stops recorded in ``out/scaling.json``, by
  ``(method, epochs)``, in the form :func:`compare.run_method
  <banel_jax.experiments.compare.run_method>` loads (``recorded``); a row
  without settings (a pooled study, or an older version) is left out."""
  path = pathlib.Path(out) / SCALING_FILE
  saved = compare.read_record(path)
  found = {}
  for r in saved.get("rows", []):
    if "settings" in r:
      found[(r["method"], r["epochs"])] = compare.loadable(r, str(path), {
          "final_success_rate": r["final_rate"],
          "best_success_rate": r["best_rate"], "wall_time_s": r["wall_time_s"]})
  for x in saved.get("stopped", []):
    if "settings" in x:
      found[(x["method"], x["epochs"])] = compare.loadable(x, str(path))
  return found


def run_study(config: ScalingConfig, out: pathlib.Path, progress: bool) -> dict:
  """Runs (or loads) every (method, E) of ``config``; the ``scaling.json``
  record. What finished earlier (in the run directories, or recorded in
  ``out/scaling.json`` with the same settings) loads first, then the rest
  runs, and ``out`` is rewritten before each new run starts: a kill loses no
  finished run."""
  t_start = time.perf_counter()
  root = config.run_root(out)
  root.mkdir(parents=True, exist_ok=True)
  setup = compare.addition_setup(config.compare)
  pretrained = compare.pretrained_rate(setup, config.compare, str(root))
  print(f"pretrained: {pretrained['rate']:.4g} on "
        f"{pretrained['estimate']['trials']} samples"
        + (f" ({pretrained['source']})" if "source" in pretrained else ""),
        flush=True)
  recorded = recorded_runs(out)
  pairs = [(method, epochs) for epochs in config.epochs for method in config.methods]
  rows, stopped = {}, {}

  def attempt(method: str, epochs: int, load_only: bool) -> None:
    cfg = config.compare_for(method, epochs)
    run_dir = root / run_name(method, epochs)
    label = compare.LABELS[method]
    try:
      res = compare.run_method(method, setup, cfg, cfg.seeds, progress,
                               run_dir=str(run_dir),
                               recorded=recorded.get((method, epochs)),
                               load_only=load_only)
    except tuple(compare.STOPS.values()) as err:
      # the method's own failure mode, mid-run: a result; the others go on
      stopped[(method, epochs)] = {"method": method, "label": label,
                                   "epochs": epochs, **compare.stop_record(err)}
      print(f"{label} at E = {epochs}: stopped: {type(err).__name__}: {err}",
            flush=True)
      return
    if res is None:
      return
    loaded = res.get("loaded_from")
    row = rows[(method, epochs)] = make_row(
        method, epochs, cfg.seeds, compare.final_rates(res),
        res["best_success_rate"], pretrained["rate"], res["wall_time_s"],
        run_dir=str(run_dir), loaded=bool(loaded), settings=res["settings"])
    fin = row["improvement_final"]
    print(f"{label} at E = {epochs}: final improvement median {fin['median']:.3g}x "
          f"(per seed {np.round(fin['per_seed'], 3).tolist()}; "
          f"{res['wall_time_s']:.0f}s)"
          + (f"; finished earlier, loaded from {loaded}" if loaded else ""),
          flush=True)

  def record() -> dict:
    done = [rows[p] for p in pairs if p in rows]
    return {**invocation(), "config": config_to_dict(config),
            **_study_fields(config, pretrained),
            "methods": list(config.methods), "epochs": list(config.epochs),
            "run_dir": str(root), "machine": common.machine(), "rows": done,
            "stopped": [stopped[p] for p in pairs if p in stopped],
            # the runs' own time, summed over the processes that resumed them
            "total_wall_time_s": float(sum(r["wall_time_s"] for r in done)),
            "this_invocation_wall_time_s": time.perf_counter() - t_start}

  for method, epochs in pairs:
    attempt(method, epochs, load_only=True)
  for method, epochs in pairs:
    if (method, epochs) not in rows and (method, epochs) not in stopped:
      if rows:
        write_outputs(out, jsonable(record()), quiet=True)
      print(f"{compare.LABELS[method]} at E = {epochs} ({KNOBS[method]}) ...",
            flush=True)
      attempt(method, epochs, load_only=False)
  return record()


def pool_studies(config: ScalingConfig) -> dict:
  """One ``scaling.json`` record over the seeds of the studies in
  ``config.pool`` (see :attr:`ScalingConfig.pool`)."""
  from banel_jax.runtime.run_dir import diff_records
  studies = []
  for d in config.pool:
    path = pathlib.Path(d) / SCALING_FILE
    if not path.exists():
      raise ExperimentError(f"ScalingConfig.pool: {path} does not exist")
    studies.append(json.loads(path.read_text()))
  first = studies[0]

  def shared(s):  # the harness without its seeds
    return {k: v for k, v in s["compare"].items() if k not in ("seeds", "run_dir")}

  seen = []
  for d, s in zip(config.pool, studies):
    problems = diff_records(shared(first), shared(s))
    if s["pretrained"]["rate"] != first["pretrained"]["rate"]:
      problems.append(f"pretrained rate: {first['pretrained']['rate']} against "
                      f"{s['pretrained']['rate']}")
    if problems:
      raise ExperimentError(f"ScalingConfig.pool: {d} was made with other "
                            f"settings than {config.pool[0]}: "
                            f"{'; '.join(problems)}")
    overlap = sorted(set(seen) & set(s["seeds"]))
    if overlap:
      raise ExperimentError(f"ScalingConfig.pool: seeds {overlap} of {d} are in "
                            "another study too; pool studies on disjoint seeds")
    seen += s["seeds"]
  keyed = [{(r["method"], r["epochs"]): r for r in s["rows"]} for s in studies]
  pairs = sorted(set.intersection(*(set(k) for k in keyed)),
                 key=lambda p: (p[1], METHODS.index(p[0])))
  if not pairs:
    raise ExperimentError("ScalingConfig.pool: the studies share no finished "
                          "(method, E) run")
  rate0 = first["pretrained"]["rate"]
  rows = []
  for method, epochs in pairs:
    parts = [k[(method, epochs)] for k in keyed]
    rows.append(make_row(
        method, epochs, [s for p in parts for s in p["seeds"]],
        [v for p in parts for v in p["final_rate"]],
        [v for p in parts for v in p["best_rate"]], rate0,
        sum(p["wall_time_s"] for p in parts),
        wall_time_s_per_study=[p["wall_time_s"] for p in parts]))
  machines = sorted({s.get("machine", "unknown machine") for s in studies})
  fields = {k: first[k] for k in ("task", "target", "leading_zeros_malformed",
                                  "nre_budget", "samples_per_round", "n_eval",
                                  "eval_every", "final_eval_samples",
                                  "final_eval_threshold", "knobs",
                                  "pretrained")}
  return {**invocation(), "config": config_to_dict(config), **fields,
          "seeds": seen, "compare": {**first["compare"], "seeds": seen},
          "methods": [m for m in METHODS if any(p[0] == m for p in pairs)],
          "epochs": sorted({p[1] for p in pairs}),
          "pooled_from": [{"dir": str(d), "command": s.get("command"),
                           "seeds": s["seeds"]}
                          for d, s in zip(config.pool, studies)],
          "machine": "; ".join(machines), "rows": rows,
          "stopped": [dict(x, study=str(d)) for d, s in zip(config.pool, studies)
                      for x in s.get("stopped", [])],
          "total_wall_time_s": float(sum(r["wall_time_s"] for r in rows))}


def run(config: ScalingConfig, out: str | os.PathLike, progress: bool = True) -> dict:
  """Runs the study of ``config`` (or pools studies, with ``pool``); writes the
  files of the module docstring to ``out`` and returns the ``scaling.json``
  record."""
  if not isinstance(config, ScalingConfig):
    raise TypeError(f"config must be a ScalingConfig, got {type(config).__name__}")
  out = pathlib.Path(out)
  record = pool_studies(config) if config.pool else run_study(config, out, progress)
  record = jsonable(record)
  write_outputs(out, record)
  return record


COMMAND = register(Command(
    name="scaling",
    help="Compute scaling on the addition attack: BaNEL against RND and "
    "pseudo-counts at matched compute.",
    config_cls=ScalingConfig, presets=PRESETS, default_preset="default", run=run,
    check=check_against_preset))
