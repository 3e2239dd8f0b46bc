"""MNIST 0-to-6: BaNEL against RND and pseudo-counts, from failures only.

A pixel model pretrained on zeros alone (:mod:`banel_jax.tasks.mnist`) is
post-trained until a shipped classifier reads its samples as 6 (reward 1 iff
p(6) >= 0.999). Every method learns from failed samples only: BaNEL (the
paper's algorithm: :class:`~banel_jax.BanelConfig` with no extension), RND
and pseudo-counts (REINFORCE with a novelty bonus, ``r_learn = 0``), under the
same NRE budget, samples per round and evaluation, in the same harness
(:class:`~banel_jax.BanelRunner`).

The run, in order:

* **Pretrained rate**, measured once on ``pretrained_samples`` fresh samples
  of the zeros model; every improvement factor of every method divides by
  this one figure;
* **Tuning** (``--tune``, on by default): every method gets a grid of the
  same size (:class:`TuningGrid`, 2 x 2 points), run on the tuning seeds
  (100-102, never the reported ones) at ``tuning_nre_budget``, evaluated
  once at the end on ``tuning_n_eval`` fresh samples per seed; the point of
  highest mean final success rate wins (ties: the first point);
* **Reported runs**: every method at its pick on the reported seeds (0-4),
  evaluated every ``run.eval_every`` rounds on ``run.n_eval`` fresh samples
  per seed, then once more on ``final_eval_samples`` fresh samples per seed
  (the final rate of the table).

Evaluation samples are scored apart from the NRE and never learned from.

Writes to ``--out``:

* ``summary.json``: the canonical summary (task ``mnist_0_to_6``; methods
  ``banel_paper``, ``rnd``, ``pseudo_counts``), with the config, the
  pretrained measurement, the tuning record and the table's numbers;
* ``table.md``: the table (also in ``README.md``);
* ``tuning.json``: the grid, every point's result, the picks;
* ``pretrained.json``: the pretrained measurement;
* ``metrics_<method>.jsonl``: the per-round records of each reported run
  (success rates with Clopper-Pearson intervals, the classifier's p(6)
  statistics, and the first ``grid_samples`` evaluation samples of every
  seed, packed as hex strings: :func:`unpack_samples`);
* ``success_vs_nre.png``: success rate (and the share of samples with
  p(6) >= 0.5) against NRE, every method, every seed;
* ``rounds_grid.png``: BaNEL's evaluation samples, one row per evaluated
  round (the first reported seed);
* ``final_samples.png``: every method's final samples per seed and the
  rewarded samples of its final evaluation;
* ``README.md``: what was run, the command, the config, the table, the plots,
  wall time and machine. Text between ``<!-- observations:start -->`` and
  ``<!-- observations:end -->`` in an existing ``README.md`` is kept.

Run directories: ``OUT/runs`` (or ``--run-dir``) holds one resumable
:class:`~banel_jax.BanelRunner` directory per reported method
(``runs/<method>``) and per grid point (``runs/tune/<method>_<i>``), and the
pretrained measurement; each writes ``result.json`` when it finishes.
Rerunning the same command after a kill loads what finished and resumes the
run that was interrupted from its newest checkpoint.

Presets: ``default`` (the canonical run: 5 seeds, NRE 5,000, m = 250; about
an hour and a half on 2 CPU cores) and ``tiny`` (2 seeds, a few rounds,
small evaluations; for tests).

Examples:
  banel mnist --out results/mnist               # the canonical results
  banel mnist --preset tiny --out runs/mnist_tiny
  banel mnist --no-tune --methods banel_paper   # the recorded picks only
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import platform
import time
from typing import Callable, Literal, get_args

import numpy as np

from banel_jax.baselines import (PolicyGradientConfig, PseudoCountConfig, RNDConfig,
                                 RunConfig)
from banel_jax.core.config import BanelConfig, config_to_dict, jsonable
from banel_jax.experiments import common, harness
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)
from banel_jax.tasks.mnist import SIX_THRESHOLD

TASK_ID = "mnist_0_to_6"
Method = Literal["banel_paper", "rnd", "pseudo_counts"]
METHODS: tuple[str, ...] = get_args(Method)
LABELS = {"banel_paper": "BaNEL (paper)", "rnd": "RND",
          "pseudo_counts": "pseudo-counts"}
COLORS = {"banel_paper": "C0", "rnd": "C1", "pseudo_counts": "C2"}
PRETRAINED_FILE = "pretrained.json"
OBSERVATIONS_START = common.OBSERVATIONS_START
OBSERVATIONS_END = common.OBSERVATIONS_END
# PRNG roots of the measurements outside the runners (the runners use the seeds).
PRETRAINED_KEY = 40_000
FINAL_EVAL_KEY = 30_000
# Rewarded samples of the final evaluation kept per seed (for the figures).
KEEP_SUCCESSES = 16


# ---------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class TuningGrid:
  """The tuning grid: two axes of two values per method (4 points each).

  Attributes:
    banel_reject_fraction: BaNEL's ``calibrated_reject_fraction`` (each
      region rejects this share of fresh proposal samples).
    banel_learning_rate: BaNEL's Adam learning rate of the failure model and
      of distillation (one value sets both).
    rnd_bonus_weight: RND's bonus weight ``beta`` (its bonus is normalised to
      unit running std; advantages are clipped at 5).
    rnd_learning_rate: RND's policy learning rate.
    pseudo_counts_bonus_weight: the pseudo-count bonus weight ``beta`` (its
      raw bonus is about 100 times smaller than RND's normalised one, hence
      the larger values).
    pseudo_counts_learning_rate: the pseudo-count policy learning rate.
  """

  banel_reject_fraction: tuple[float, ...] = (0.3, 0.6)
  banel_learning_rate: tuple[float, ...] = (3e-3, 1e-2)
  rnd_bonus_weight: tuple[float, ...] = (1.0, 10.0)
  rnd_learning_rate: tuple[float, ...] = (1e-4, 1e-3)
  pseudo_counts_bonus_weight: tuple[float, ...] = (1.0, 100.0)
  pseudo_counts_learning_rate: tuple[float, ...] = (1e-4, 1e-3)

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if not isinstance(v, tuple) or not v or not all(
          isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0
          for a in v):
        raise ExperimentError(f"TuningGrid.{f.name}={v!r} must be a non-empty tuple "
                              "of positive numbers")

  def axes(self, method: str) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """``((axis name, values), ...)`` of ``method``'s grid."""
    prefix = "banel" if method == "banel_paper" else method
    names = [f.name for f in dataclasses.fields(self)
             if f.name.startswith(prefix + "_")]
    if not names:
      raise ExperimentError(f"no tuning grid for method {method!r}; the methods "
                            f"are {', '.join(METHODS)}")
    return tuple((n[len(prefix) + 1:], getattr(self, n)) for n in names)

  def points(self, method: str) -> list[dict]:
    """Every point of ``method``'s grid, as ``{axis: value}`` (first axis slowest)."""
    axes = self.axes(method)
    out = [{}]
    for name, values in axes:
      out = [{**p, name: v} for p in out for v in values]
    return out


# BaNEL's settings (distilled mode, the paper's Algorithm 2; no extension).
# The run fields (budget, m, evaluation) come from MnistConfig.run. The tuned
# knobs hold the grid's picks (results/mnist/tuning.json), so that --no-tune
# reruns the reported settings; the other knobs were set in pilots on tuning
# seed 100 (a fixed filter factor f = 2 rejected about a tenth of the proposal
# per round and the distilled proposal sharpened onto its zeros, hence the
# calibrated threshold).
DEFAULT_BANEL = BanelConfig.paper(
    mode="distilled", tau_mode="calibrated", calibrated_reject_fraction=0.3,
    calibration_samples=1024, failure_init="proposal", failure_epochs=10,
    failure_batch_size=50, failure_learning_rate=1e-2, distill_samples=1024,
    distill_epochs=3, distill_batch_size=128, distill_learning_rate=1e-2,
    region_strategy="loop")


@dataclasses.dataclass(frozen=True)
class MnistConfig:
  """The MNIST 0-to-6 comparison.

  Attributes:
    methods: the methods to run, in table order.
    seeds: reported seeds (run side by side under ``vmap``).
    tuning_seeds: seeds of the tuning runs (disjoint from ``seeds``).
    tune: run the tuning grid first and use its picks; otherwise use the
      method settings below as they are.
    grid: the tuning grid.
    run: NRE budget, samples per round ``m``, evaluation samples and period,
      shared by every method.
    tuning_nre_budget: NRE budget of the tuning runs.
    tuning_n_eval: fresh samples per seed of a tuning run's one evaluation.
    banel: BaNEL's settings (its run fields are replaced by ``run``'s).
      The tuned knobs of ``banel``, ``rnd`` and ``pseudo_counts`` hold the
      picks of the canonical run's grid (used as they are with ``--no-tune``).
    rnd: RND's policy updates.
    rnd_bonus: RND's bonus network.
    pseudo_counts: the pseudo-count method's policy updates.
    pseudo_counts_bonus: the pseudo-count density model.
    pretrained_samples: fresh samples that measure the pretrained rate.
    final_eval_samples: fresh samples per seed of each reported run's final
      evaluation (0: the last ``run.n_eval`` evaluation is the final rate).
    grid_samples: evaluation samples per seed kept in every evaluated
      round's record (for the figures).
    threshold: the reward's p(6) threshold.
    run_dir: the run directories' root; empty: ``OUT/runs``.
    keep_checkpoints: checkpoints kept per run directory.
  """

  methods: tuple[Method, ...] = METHODS
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  tuning_seeds: tuple[int, ...] = (100, 101, 102)
  tune: bool = True
  grid: TuningGrid = TuningGrid()
  run: RunConfig = RunConfig(nre_budget=5000, samples_per_round=250, n_eval=10_000,
                             eval_every=2)
  tuning_nre_budget: int = 2500
  tuning_n_eval: int = 20_000
  banel: BanelConfig = DEFAULT_BANEL
  rnd: PolicyGradientConfig = PolicyGradientConfig(learning_rate=1e-4,
                                                   kl_weight=0.0, bonus_weight=1.0)
  rnd_bonus: RNDConfig = RNDConfig()
  pseudo_counts: PolicyGradientConfig = PolicyGradientConfig(
      learning_rate=1e-3, kl_weight=0.0, bonus_weight=100.0)
  pseudo_counts_bonus: PseudoCountConfig = PseudoCountConfig(
      density_init="prior", density_learning_rate=1e-3, density_steps=4,
      pg_learning_rate=1e-3, chunk_size=64)
  pretrained_samples: int = 400_000
  final_eval_samples: int = 200_000
  grid_samples: int = 8
  threshold: float = SIX_THRESHOLD
  run_dir: str = ""
  keep_checkpoints: int = 2

  def __post_init__(self):
    name = "MnistConfig"
    if not isinstance(self.methods, tuple) or not self.methods:
      raise ExperimentError(f"{name}.methods={self.methods!r} must be a non-empty "
                            "tuple")
    unknown = [m for m in self.methods if m not in METHODS]
    if unknown:
      raise ExperimentError(f"{name}.methods: {unknown} are not methods; the "
                            f"methods are {', '.join(METHODS)}")
    if len(set(self.methods)) != len(self.methods):
      raise ExperimentError(f"{name}.methods={self.methods!r} names a method twice")
    for field in ("seeds", "tuning_seeds"):
      common.check_seeds(name, field, getattr(self, field))
    shared = sorted(set(self.seeds) & set(self.tuning_seeds))
    if shared:
      raise ExperimentError(f"{name}: seeds {shared} are both reported seeds and "
                            "tuning seeds; tune on other seeds")
    for field, low in (("tuning_nre_budget", 1), ("tuning_n_eval", 1),
                       ("pretrained_samples", 1), ("final_eval_samples", 0),
                       ("grid_samples", 1), ("keep_checkpoints", 1)):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ExperimentError(f"{name}.{field}={v!r} must be an integer >= {low}")
    if self.grid_samples > self.run.n_eval:
      raise ExperimentError(f"{name}.grid_samples={self.grid_samples} must be <= "
                            f"run.n_eval={self.run.n_eval}")
    if not 0.0 < self.threshold <= 1.0:
      raise ExperimentError(f"{name}.threshold={self.threshold!r} must be in (0, 1]")
    if not isinstance(self.banel, BanelConfig):
      raise ExperimentError(f"{name}.banel must be a BanelConfig, got "
                            f"{type(self.banel).__name__}")
    if self.banel.mode != "distilled":
      raise ExperimentError(f"{name}.banel.mode={self.banel.mode!r}: this "
                            "experiment runs the distilled algorithm (exact mode "
                            "would reject from the zeros model alone)")
    m = self.run.samples_per_round
    for field in ("rnd", "pseudo_counts"):
      if getattr(self, field).num_minibatches > m:
        raise ExperimentError(f"{name}.{field}.num_minibatches="
                              f"{getattr(self, field).num_minibatches} exceeds "
                              f"run.samples_per_round={m}")
    if not isinstance(self.run_dir, str):
      raise ExperimentError(f"{name}.run_dir={self.run_dir!r} must be a string")

  def replace(self, **changes) -> "MnistConfig":
    return dataclasses.replace(self, **changes)

  def run_root(self, out: str | os.PathLike) -> pathlib.Path:
    """The run directories' root: ``run_dir``, or ``OUT/runs``."""
    return pathlib.Path(self.run_dir) if self.run_dir else pathlib.Path(out) / "runs"

  @property
  def tuning_run(self) -> RunConfig:
    """Budget and evaluation of the tuning runs (one evaluation, at the end)."""
    m = self.run.samples_per_round
    rounds = -(-self.tuning_nre_budget // m)
    return RunConfig(nre_budget=self.tuning_nre_budget, samples_per_round=m,
                     n_eval=self.tuning_n_eval, eval_every=rounds + 1)


def default_config() -> MnistConfig:
  """The canonical run: 5 seeds, NRE 5,000, m = 250, tuned on seeds 100-102."""
  return MnistConfig()


def tiny_config() -> MnistConfig:
  """About a minute: 2 seeds, 2 rounds of 16, one grid point per method.

  The tuning runs have the reported runs' budget, evaluation and number of
  seeds, so both share their compiled programs.
  """
  base = MnistConfig()
  return base.replace(
      seeds=(0, 1), tuning_seeds=(100, 101),
      grid=TuningGrid(banel_reject_fraction=(0.5,), banel_learning_rate=(1e-2,),
                      rnd_bonus_weight=(1.0,), rnd_learning_rate=(1e-3,),
                      pseudo_counts_bonus_weight=(1.0,),
                      pseudo_counts_learning_rate=(1e-3,)),
      run=RunConfig(nre_budget=32, samples_per_round=16, n_eval=256, eval_every=3),
      tuning_nre_budget=32, tuning_n_eval=256,
      banel=base.banel.replace(calibration_samples=64, failure_epochs=2,
                               failure_batch_size=8, distill_samples=64,
                               distill_epochs=1, distill_batch_size=32),
      rnd=base.rnd.replace(epochs=1, num_minibatches=2),
      rnd_bonus=RNDConfig(hidden=(32, 32), output_dim=16, init_samples=128),
      pseudo_counts=base.pseudo_counts.replace(epochs=1, num_minibatches=2),
      pseudo_counts_bonus=base.pseudo_counts_bonus.replace(density_steps=1,
                                                           chunk_size=16),
      pretrained_samples=4096, final_eval_samples=512, grid_samples=4)


PRESETS = {"default": default_config, "tiny": tiny_config}
RUN_FIELDS = ("nre_budget", "samples_per_round", "n_eval", "eval_every")


def check_against_preset(config: MnistConfig, preset: MnistConfig) -> None:
  """Refuses BaNEL run fields changed from the preset (``run`` sets them for
  every method), naming their flags."""
  changed = [f"--banel.{f.replace('_', '-')}" for f in RUN_FIELDS
             if getattr(config.banel, f) != getattr(preset.banel, f)]
  if changed:
    raise ExperimentError(f"{', '.join(changed)}: every method shares the run's "
                          "budget and evaluation; set them with --run.* instead")


# ---------------------------------------------------------------------------
# The task.


class Task:
  """The zeros model, the oracle and a cache of the classifier's p(6).

  The oracle handed to the runners remembers the six-probabilities of its
  last batch, so that the per-round records can report them without running
  the classifier twice (a batch replayed from a ledger is classified anew).
  """

  def __init__(self, threshold: float):
    from banel_jax.tasks import mnist
    task = mnist.zero_to_six_task(threshold)
    self.model = task.model
    self.prior_params = task.prior_params
    self.threshold = threshold
    self.classifier = task.oracle
    self._last: tuple[np.ndarray, np.ndarray] | None = None

  def six_probabilities(self, x) -> np.ndarray:
    """p(6) of flat samples ``[n, 196]`` (``float32[n]``)."""
    return self.classifier.six_probabilities(x)

  def oracle(self, x) -> np.ndarray:
    """The reward oracle (``float32[n]`` in {0, 1}); caches the batch's p(6)."""
    x = np.asarray(x)
    p6 = self.six_probabilities(x)
    self._last = (x, p6)
    return (p6 >= self.threshold).astype(np.float32)

  def cached_p6(self, x: np.ndarray) -> np.ndarray:
    """p(6) of ``x[n, 196]``: from the last oracle call if it scored ``x``."""
    if self._last is not None and self._last[0].shape == x.shape and \
        np.array_equal(self._last[0], x):
      return self._last[1]
    return self.six_probabilities(x)


@functools.lru_cache(maxsize=2)
def load_task(threshold: float) -> Task:
  """The task at ``threshold`` (loaded once per process)."""
  return Task(threshold)


def pack_samples(x: np.ndarray) -> list[str]:
  """Binary samples ``[n, D]`` as ``n`` hex strings (bits packed, row order)."""
  x = np.asarray(x)
  if x.ndim != 2 or (x.size and not np.all((x == 0) | (x == 1))):
    raise ValueError(f"samples must be [n, D] zeros and ones, got shape {x.shape}")
  return [bytes(np.packbits(row.astype(np.uint8))).hex() for row in x]


def unpack_samples(packed, num_pixels: int = 196) -> np.ndarray:
  """Inverse of :func:`pack_samples`: hex strings -> ``int32[n, num_pixels]``.

  >>> x = np.array([[0, 1, 1], [1, 0, 0]])
  >>> unpack_samples(pack_samples(x), 3).tolist()
  [[0, 1, 1], [1, 0, 0]]
  """
  rows = [np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8))[:num_pixels]
          for h in packed]
  return np.asarray(rows, np.int32).reshape(len(rows), num_pixels)


# ---------------------------------------------------------------------------
# Methods and runs.


def banel_config(config: MnistConfig, run: RunConfig) -> BanelConfig:
  """BaNEL's config with ``run``'s budget and evaluation."""
  cfg = config.banel.replace(nre_budget=run.nre_budget,
                             samples_per_round=run.samples_per_round,
                             n_eval=run.n_eval, eval_every=run.eval_every)
  if cfg.failure_batch_size > cfg.samples_per_round:
    cfg = cfg.replace(failure_batch_size=cfg.samples_per_round)
  return cfg


def apply_point(config: MnistConfig, method: str, point: dict) -> MnistConfig:
  """``config`` with ``method``'s settings at a grid point."""
  if method == "banel_paper":
    lr = point["learning_rate"]
    return config.replace(banel=config.banel.replace(
        tau_mode="calibrated", calibrated_reject_fraction=point["reject_fraction"],
        failure_learning_rate=lr, distill_learning_rate=lr))
  section = getattr(config, method)
  return config.replace(**{method: section.replace(
      bonus_weight=point["bonus_weight"], learning_rate=point["learning_rate"])})


def method_settings(config: MnistConfig, method: str) -> dict:
  """The tuned knobs of ``method`` in ``config`` (what the table shows)."""
  if method == "banel_paper":
    b = config.banel
    return {"tau_mode": b.tau_mode,
            "calibrated_reject_fraction": b.calibrated_reject_fraction,
            "failure_learning_rate": b.failure_learning_rate,
            "distill_learning_rate": b.distill_learning_rate}
  section = getattr(config, method)
  return {"bonus_weight": section.bonus_weight,
          "learning_rate": section.learning_rate}


def _pixel_features(x):
  """RND's input: the binary pixels as floats, ``f32[n, 196]``."""
  import jax.numpy as jnp
  return x.astype(jnp.float32)


@functools.lru_cache(maxsize=16)
def _baseline(method: str, model, pg: PolicyGradientConfig, bonus_config):
  """The baseline bundle (one per config, so runs of one config share
  compilations)."""
  from banel_jax import baselines as B
  if method == "rnd":
    return B.make_rnd(model, _pixel_features, pg, bonus_config)
  return B.make_pseudo_count(model, pg, bonus_config)


def build(method: str, task: Task, config: MnistConfig, run: RunConfig):
  """``(method bundle or None for BaNEL, the runner's config)``."""
  if method == "banel_paper":
    return None, banel_config(config, run)
  if method == "rnd":
    return _baseline("rnd", task.model, config.rnd, config.rnd_bonus), run
  if method == "pseudo_counts":
    return _baseline("pseudo_counts", task.model, config.pseudo_counts,
                     config.pseudo_counts_bonus), run
  raise ExperimentError(f"unknown method {method!r}; the methods are "
                        f"{', '.join(METHODS)}")


def method_sections(config: MnistConfig, method: str) -> dict:
  """The config sections ``method`` reads (recorded and checked on resume)."""
  if method == "banel_paper":
    return {"banel": jsonable(config.banel)}
  return {method: jsonable(getattr(config, method)),
          f"{method}_bonus": jsonable(getattr(config, f"{method}_bonus"))}


def round_hook(task: Task, n_seeds: int, grid_samples: int) -> Callable:
  """``on_round(runner, record)``: adds the classifier's view of the round.

  On evaluated rounds, per seed: the mean p(6) of the evaluation samples, the
  share with p(6) >= 0.5 and >= 0.9, the ink (share of black pixels), and the
  first ``grid_samples`` evaluation samples (packed) with their p(6). On
  every round: the distinct samples among each seed's scored ones. Computed
  from the round's samples, so a round replayed from a ledger records the
  same.
  """

  def on_round(runner, record: dict) -> None:
    samples = runner.round_samples
    if "train" in samples:
      x, scored = samples["train"], samples["train_evaluated"]
      record["n_distinct_train"] = [
          int(len(np.unique(x[s][scored[s]], axis=0))) for s in range(n_seeds)]
    if "eval" in samples:
      x = samples["eval"]
      flat = x.reshape(-1, x.shape[-1])
      p6 = np.asarray(task.cached_p6(flat)).reshape(n_seeds, -1)
      record["p6_mean"] = p6.mean(axis=1).tolist()
      record["rate_p6_0.5"] = (p6 >= 0.5).mean(axis=1).tolist()
      record["rate_p6_0.9"] = (p6 >= 0.9).mean(axis=1).tolist()
      record["ink"] = x.reshape(n_seeds, -1).mean(axis=1).tolist()
      record["grid_samples"] = [pack_samples(x[s, :grid_samples])
                                for s in range(n_seeds)]
      record["grid_p6"] = [p6[s, :grid_samples].tolist() for s in range(n_seeds)]

  return on_round


def final_evaluation(runner, task: Task, n: int, chunk: int) -> list[dict]:
  """Every seed's final success rate on ``n`` fresh samples (apart from NRE).

  Returns one dict per seed: the Clopper-Pearson estimate, the share with
  p(6) >= 0.5, and up to :data:`KEEP_SUCCESSES` rewarded samples (packed).
  """
  from banel_jax.core.metrics import clopper_pearson
  seeds = runner.seeds
  hits = np.zeros(len(seeds), np.int64)
  soft = np.zeros(len(seeds), np.int64)
  kept: list[list[str]] = [[] for _ in seeds]
  kept_p6: list[list[float]] = [[] for _ in seeds]
  total = 0
  for x in harness.fresh_samples(runner, n, chunk, FINAL_EVAL_KEY):
    size = x.shape[1]
    p6 = task.six_probabilities(x.reshape(-1, x.shape[-1])).reshape(len(seeds), size)
    win = p6 >= task.threshold
    hits += win.sum(axis=1)
    soft += (p6 >= 0.5).sum(axis=1)
    for s in range(len(seeds)):
      room = KEEP_SUCCESSES - len(kept[s])
      if room > 0 and win[s].any():
        idx = np.flatnonzero(win[s])[:room]
        kept[s] += pack_samples(x[s, idx])
        kept_p6[s] += p6[s, idx].tolist()
    total += size
  return [{**clopper_pearson(int(h), total).as_dict(),
           "rate_p6_0.5": float(q / total), "successes_kept": k, "successes_p6": kp}
          for h, q, k, kp in zip(hits, soft, kept, kept_p6)]


def run_method(method: str, task: Task, config: MnistConfig, run: RunConfig,
               seeds, run_dir: str | os.PathLike, progress: bool,
               final_eval_samples: int) -> dict:
  """Runs ``method`` for ``seeds`` side by side in ``run_dir`` (resumable).

  A directory whose ``result.json`` has the same settings returns it without
  running anything; one holding an unfinished run resumes it.

  Returns:
    ``{"history", "final_success_rate", "best_success_rate", "final_eval",
    "nre_spent", "eval_calls", "n_successes_found_in_training",
    "wall_time_s", "final_eval_s"}`` (``final_eval``: :func:`final_evaluation`'s
    list, or None when ``final_eval_samples`` is 0).
  """
  method_bundle, cfg = build(method, task, config, run)
  settings = {"method": method, "task": TASK_ID, "threshold": task.threshold,
              "seeds": [int(s) for s in seeds], "run": jsonable(cfg),
              "sections": method_sections(config, method),
              "final_eval_samples": final_eval_samples,
              "grid_samples": config.grid_samples}
  os.makedirs(run_dir, exist_ok=True)

  def final(runner, result) -> dict:
    return {"final_eval": (final_evaluation(runner, task, final_eval_samples, 10_000)
                           if final_eval_samples else None)}

  out = harness.run_method(
      task.model, task.prior_params, task.oracle, cfg, seeds, settings=settings,
      what=f"{LABELS[method]}'s result", method=method_bundle, run_dir=run_dir,
      on_round=round_hook(task, len(seeds), config.grid_samples), progress=progress,
      keep_checkpoints=config.keep_checkpoints, final=final, record_as="experiment")
  out.setdefault("final_eval_s", out["final_s"])
  return out


def measure_pretrained(task: Task, n: int, run_root: pathlib.Path) -> dict:
  """The zeros model's success rate on ``n`` fresh samples, measured once and
  kept in ``run_root/pretrained.json`` (a rerun loads it)."""
  from banel_jax.core.metrics import clopper_pearson
  settings = {"task": TASK_ID, "threshold": task.threshold, "samples": n,
              "key": PRETRAINED_KEY}

  def measure() -> dict:
    t0 = time.perf_counter()
    hits = soft = total = 0
    for x in harness.prior_samples(task.model, task.prior_params, n, 10_000,
                                   PRETRAINED_KEY):
      p6 = task.six_probabilities(x)
      hits += int((p6 >= task.threshold).sum())
      soft += int((p6 >= 0.5).sum())
      total += len(x)
    est = clopper_pearson(hits, total)
    return {"rate": est.rate, "estimate": est.as_dict(), "samples": total,
            "rate_p6_0.5": soft / total, "seconds": time.perf_counter() - t0}

  return harness.cached(run_root / PRETRAINED_FILE, settings, "the pretrained rate",
                        measure)


def tune(task: Task, config: MnistConfig, run_root: pathlib.Path,
         progress: bool) -> tuple[MnistConfig, dict]:
  """Runs every method's grid on the tuning seeds; returns the picks applied.

  Point ``i`` of a method runs (resumably) in ``run_root/tune/<method>_<i>``.
  """
  run = config.tuning_run
  record = {"seeds": list(config.tuning_seeds),
            "criterion": "mean final success rate over the tuning seeds "
                         "(ties: the first point)",
            "run": jsonable(run), "methods": {}}
  chosen = config
  for method in config.methods:
    points = []
    for i, point in enumerate(config.grid.points(method)):
      res = run_method(method, task, apply_point(config, method, point), run,
                       config.tuning_seeds,
                       run_root / "tune" / f"{method}_{i}", progress, 0)
      final = res["final_success_rate"]
      evals = [h for h in res["history"] if "success_rate" in h][-1]
      points.append({"point": point, "final_success_rate": final,
                     "mean": float(np.mean(final)),
                     "rate_p6_0.5": evals.get("rate_p6_0.5"),
                     "p6_mean": evals.get("p6_mean"),
                     "wall_time_s": res["wall_time_s"]})
      print(f"  tune {LABELS[method]:14s} {point} -> {np.mean(final):.2e} "
            f"({res['wall_time_s']:.0f}s" +
            ("; loaded)" if "loaded_from" in res else ")"), flush=True)
    best = max(points, key=lambda p: p["mean"])  # max keeps the first of ties
    record["methods"][method] = {
        "grid": [[a, list(v)] for a, v in config.grid.axes(method)],
        "points": points, "chosen": best["point"]}
    chosen = apply_point(chosen, method, best["point"])
  return chosen, record


# ---------------------------------------------------------------------------
# Summary, table and figures.


def bootstrap_mean_ci(values, n_boot: int = 10_000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of ``values`` (over seeds).

  >>> bootstrap_mean_ci([1.0, 1.0, 1.0])
  (1.0, 1.0)
  """
  if len(values) == 0:
    raise ValueError("values is empty")
  return harness.bootstrap_ci(values, np.mean, n_boot, seed, alpha)


def method_row(method: str, res: dict, pretrained_rate: float,
               config: MnistConfig) -> dict:
  """Per-seed rates and improvements of one method (every improvement divides
  by the same ``pretrained_rate``)."""
  if res.get("final_eval"):
    final = [e["rate"] for e in res["final_eval"]]
    final_ci = [[e["low"], e["high"]] for e in res["final_eval"]]
    final_n = res["final_eval"][0]["trials"]
  else:
    last = [h for h in res["history"] if "success_rate" in h][-1]
    final, final_ci = list(last["success_rate"]), list(last["success_ci"])
    final_n = config.run.n_eval
  best = list(res["best_success_rate"])
  return {
      "label": LABELS[method], "uses_successes": False, "task_knowledge": False,
      "seeds": list(config.seeds),
      "final_rate": final, "best_rate": best,
      "improvement_final": [r / pretrained_rate for r in final],
      "improvement_best": [r / pretrained_rate for r in best],
      "final_rate_ci95": final_ci, "final_rate_samples": final_n,
      "best_rate_samples": config.run.n_eval,
      "final_rate_p6_0.5": ([e["rate_p6_0.5"] for e in res["final_eval"]]
                            if res.get("final_eval") else None),
      "settings": method_settings(config, method),
      "nre_spent": res["nre_spent"],
      "n_successes_found_in_training": res["n_successes_found_in_training"],
      "wall_time_s": res["wall_time_s"],
      "final_eval_s": res.get("final_eval_s", 0.0),
  }


def _fmt_rate(r: float) -> str:
  return "0" if r == 0 else f"{r:.2e}"


def markdown_table(rows: dict, pretrained: dict, rate0: float,
                   config: MnistConfig) -> str:
  """The summary table (means with bootstrap intervals over seeds) and the
  per-seed table (Clopper-Pearson intervals); ``rate0`` is the pretrained rate
  every improvement divides by."""
  p = pretrained
  pe = p["estimate"]
  bound = ("" if pe["successes"] else
           " (no success seen: 1 / samples stands in for the rate)")
  lines = [
      f"NRE budget {config.run.nre_budget:,}, m = {config.run.samples_per_round}, "
      f"seeds {list(config.seeds)}. Final rate: "
      f"{rows[next(iter(rows))]['final_rate_samples']:,} fresh samples per seed "
      f"after the last round; best-so-far: the highest of the per-round rates "
      f"on {config.run.n_eval:,} samples per seed (a maximum of noisy "
      "estimates, biased upwards). Improvement = rate / pretrained rate "
      f"{_fmt_rate(rate0)}{bound} ({pe['successes']} of {pe['trials']:,} samples, "
      f"95% CI [{_fmt_rate(pe['low'])}, {_fmt_rate(pe['high'])}]), the same "
      "figure for every method. Brackets: 95% percentile bootstrap interval of "
      "the mean over seeds.", "",
      "| method | final mean [95% CI] | final median | improvement final (mean / "
      "median) | best-so-far mean [95% CI] | best median | improvement best "
      "(mean / median) | settings |",
      "|---|---|---|---|---|---|---|---|",
      f"| pretrained | {_fmt_rate(p['rate'])} [{_fmt_rate(pe['low'])}, "
      f"{_fmt_rate(pe['high'])}] (CP) | - | 1.0x | - | - | - | "
      f"{pe['trials']:,} samples |"]
  for method, r in rows.items():
    f, b = np.asarray(r["final_rate"]), np.asarray(r["best_rate"])
    fi, bi = np.asarray(r["improvement_final"]), np.asarray(r["improvement_best"])
    flo, fhi = bootstrap_mean_ci(f)
    blo, bhi = bootstrap_mean_ci(b)
    settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
    lines.append(
        f"| {r['label']} | {_fmt_rate(f.mean())} [{_fmt_rate(flo)}, {_fmt_rate(fhi)}]"
        f" | {_fmt_rate(float(np.median(f)))} | {fi.mean():.1f}x / "
        f"{np.median(fi):.1f}x | {_fmt_rate(b.mean())} [{_fmt_rate(blo)}, "
        f"{_fmt_rate(bhi)}] | {_fmt_rate(float(np.median(b)))} | {bi.mean():.1f}x / "
        f"{np.median(bi):.1f}x | {settings} |")
  lines += ["", "Per seed (final rate with its 95% Clopper-Pearson interval; the "
            "last column: share of the final samples with p(6) >= 0.5, "
            f"{p['rate_p6_0.5']:.4f} for the pretrained model):", "",
            "| method | seed | final rate [95% CI] | improvement final | best-so-far "
            "| improvement best | p(6) >= 0.5 (final) |",
            "|---|---|---|---|---|---|---|"]
  for method, r in rows.items():
    soft = r["final_rate_p6_0.5"] or [None] * len(r["seeds"])
    for i, s in enumerate(r["seeds"]):
      lo, hi = r["final_rate_ci95"][i]
      lines.append(
          f"| {r['label']} | {s} | {_fmt_rate(r['final_rate'][i])} [{_fmt_rate(lo)}, "
          f"{_fmt_rate(hi)}] | {r['improvement_final'][i]:.1f}x | "
          f"{_fmt_rate(r['best_rate'][i])} | {r['improvement_best'][i]:.1f}x | "
          + ("-" if soft[i] is None else f"{soft[i]:.4f}") + " |")
  return "\n".join(lines)


def plot_success(runs: dict, pretrained: dict, config: MnistConfig,
                 path: pathlib.Path) -> None:
  """Success rate and share of p(6) >= 0.5 against NRE: every seed (thin),
  the mean over seeds (thick), the final evaluation (markers at the end)."""
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
  floor = 0.5 / config.run.n_eval
  for method, res in runs.items():
    c = COLORS[method]
    recs = [h for h in res["history"] if "success_rate" in h]
    nre = np.array([np.mean(h["nre"]) for h in recs], float)
    for ax, key in ((axes[0], "success_rate"), (axes[1], "rate_p6_0.5")):
      rate = np.array([h[key] for h in recs], float)  # [rounds, seeds]
      for s in range(rate.shape[1]):
        ax.plot(nre, np.maximum(rate[:, s], floor), color=c, lw=0.7, alpha=0.35)
      ax.plot(nre, np.maximum(rate.mean(axis=1), floor), color=c, lw=2.2,
              marker="o", ms=3, label=f"{LABELS[method]} (mean of "
              f"{rate.shape[1]} seeds)")
    if res.get("final_eval"):
      x_end = config.run.nre_budget * 1.03
      final = np.array([e["rate"] for e in res["final_eval"]])
      axes[0].scatter(np.full(final.shape, x_end), np.maximum(final, floor),
                      color=c, marker="D", s=18, zorder=3)
  pe = pretrained["estimate"]
  axes[0].axhline(pretrained["rate"], color="k", ls=":", lw=1,
                  label=f"pretrained ({pe['trials']:,} samples)")
  axes[0].axhspan(pe["low"], pe["high"], color="k", alpha=0.08)
  axes[1].axhline(pretrained["rate_p6_0.5"], color="k", ls=":", lw=1,
                  label="pretrained")
  axes[0].set_yscale("log")
  axes[1].set_yscale("log")
  axes[0].set_title(f"success rate (p(6) >= {config.threshold}); thin: seeds; "
                    f"diamonds: final {config.final_eval_samples:,}-sample rate",
                    fontsize=9)
  axes[1].set_title("share of evaluation samples with p(6) >= 0.5 "
                    "(towards sixes)", fontsize=9)
  for ax in axes:
    ax.set_xlabel("reward evaluations spent on learning (NRE)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
  axes[0].set_ylabel(f"rate on {config.run.n_eval:,} fresh samples per seed "
                     f"(0 drawn at {floor:g})", fontsize=8)
  fig.suptitle("MNIST 0-to-6: learning from failures only, same NRE budget and "
               "evaluation", fontsize=10)
  fig.tight_layout()
  _save(fig, path, dpi=110)


def _save(fig, path: pathlib.Path, dpi: int) -> None:
  """Saves ``fig`` to ``path`` and closes it."""
  import matplotlib.pyplot as plt
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def _draw_cell(ax, img, p6, threshold, title=True):
  rewarded = p6 is not None and p6 >= threshold
  color = "green" if rewarded else "0.6"
  ax.imshow(img, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_edgecolor(color)
    spine.set_linewidth(2.0 if rewarded else 0.6)
  if title and p6 is not None:
    ax.set_title(f"{np.floor(p6 * 1000) / 1000:.3f}", fontsize=6, pad=1,
                 color="green" if rewarded else "black")


def plot_rounds_grid(res: dict, seed_index: int, seed: int, config: MnistConfig,
                     path: pathlib.Path, label: str) -> None:
  """One row per evaluated round: the first evaluation samples of one seed,
  each titled with its p(6) (green frame: rewarded)."""
  import matplotlib.pyplot as plt

  from banel_jax.tasks import mnist
  recs = [h for h in res["history"] if "grid_samples" in h]
  k = len(recs[0]["grid_samples"][seed_index])
  fig, axes = plt.subplots(len(recs), k, figsize=(k * 0.95 + 1.6, len(recs) * 1.0),
                           squeeze=False)
  for row, h in enumerate(recs):
    imgs = mnist.to_images(unpack_samples(h["grid_samples"][seed_index]))
    for col in range(k):
      _draw_cell(axes[row, col], imgs[col], h["grid_p6"][seed_index][col],
                 config.threshold)
    axes[row, 0].set_ylabel(
        f"round {h['round']}\nNRE {h['nre'][seed_index]}\n"
        f"rate {_fmt_rate(h['success_rate'][seed_index])}\n"
        f"p6>=.5: {h['rate_p6_0.5'][seed_index]:.3f}", fontsize=6, rotation=0,
        ha="right", va="center")
  fig.suptitle(f"{label}, seed {seed}: the first {k} evaluation samples of\n"
               "each evaluated round (title: p(6); green frame: rewarded)",
               fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  _save(fig, path, dpi=120)


def plot_final_samples(runs: dict, config: MnistConfig, path: pathlib.Path) -> None:
  """Per method: each seed's final evaluation samples (one row per seed) and
  a row of rewarded samples from the final evaluation."""
  import matplotlib.pyplot as plt

  from banel_jax.tasks import mnist
  rows = []
  for method, res in runs.items():
    last = [h for h in res["history"] if "grid_samples" in h][-1]
    for s, seed in enumerate(config.seeds):
      rows.append((f"{LABELS[method]}\nseed {seed}", last["grid_samples"][s],
                   last["grid_p6"][s]))
    wins, p6s = [], []
    for e in res.get("final_eval") or []:
      wins += e["successes_kept"][:2]
      p6s += e["successes_p6"][:2]
    rows.append((f"{LABELS[method]}\nrewarded", wins, p6s))
  k = max(config.grid_samples, 10)
  fig, axes = plt.subplots(len(rows), k, figsize=(k * 0.95 + 1.6, len(rows) * 1.0),
                           squeeze=False)
  for r, (name, packed, p6) in enumerate(rows):
    imgs = mnist.to_images(unpack_samples(packed)) if packed else []
    for c in range(k):
      ax = axes[r, c]
      if c < len(imgs):
        _draw_cell(ax, imgs[c], p6[c], config.threshold)
      else:
        ax.axis("off")
    axes[r, 0].axis("on")
    axes[r, 0].set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    if not len(imgs):
      axes[r, 0].set_xticks([])
      axes[r, 0].set_yticks([])
      for spine in axes[r, 0].spines.values():
        spine.set_visible(False)
  fig.suptitle("final round: samples per seed (title: p(6)); 'rewarded' rows: "
               "up to 2 rewarded samples per seed from the final evaluation",
               fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.98))
  _save(fig, path, dpi=110)


def write_readme(out: pathlib.Path, summary: dict, table: str, tuning: dict | None,
                 config: MnistConfig) -> None:
  """``out/README.md`` from the summary (keeps the observations block)."""
  task = summary["tasks"][TASK_ID]
  run = config.run
  lines = [
      "# MNIST 0-to-6: post-training a zeros model from failures only", "",
      "A NADE pixel model pretrained only on zeros (14x14 binary MNIST, "
      "`banel_jax.tasks.mnist`) is post-trained until a shipped CNN classifier "
      f"reads its samples as 6 (reward 1 iff p(6) >= {config.threshold}). "
      "Every method learns from failed samples only (none uses a success): "
      "BaNEL as in the paper (distilled mode, no extension), RND and "
      "pseudo-counts (REINFORCE with a novelty bonus, `r_learn = 0`), under the "
      f"same NRE budget ({run.nre_budget:,}, m = {run.samples_per_round} per "
      "round), the same evaluation, the same harness (`BanelRunner`), and the "
      "same tuning effort.", "",
      "Made by one command (resumable: rerun it after a kill; a rerun loads "
      "every finished part from `runs/` and rewrites these files):", "",
      f"    {summary['command']}", "",
      f"Machine: {summary['machine']}. Wall time: "
      f"{summary['wall_time_s'] / 60:.1f} min in all (the measured time of "
      "every part: the pretrained measurement, the tuning runs, the reported "
      "runs and their final evaluations, summed over resumed processes).", "",
      "## Results", "", table, "",
      f"Wall time per reported run ({len(config.seeds)} seeds side by side: the "
      "rounds with their per-round evaluations, then the final evaluation):", ""]
  for method, r in task["methods"].items():
    lines.append(f"* {r['label']}: {r['wall_time_s'] / 60:.1f} min + "
                 f"{r['final_eval_s'] / 60:.1f} min")
  lines += ["", "![success rate vs NRE](success_vs_nre.png)", "",
            "![BaNEL round by round](rounds_grid.png)", "",
            "![final samples](final_samples.png)", "",
            "## What the figures show", "", common.kept_observations(out / "README.md"), "",
            "## Setup", "",
            f"* Budget: NRE {run.nre_budget:,} per seed, m = "
            f"{run.samples_per_round} per round "
            f"({-(-run.nre_budget // run.samples_per_round)} rounds): the "
            "paper's scale (thousands of evaluations; its addition table used "
            "7,500). At the pretrained rate a seed meets about "
            f"{run.nre_budget * task['pretrained_rate']:.1f} successes in "
            "training; none is learned from.",
            f"* Pretrained rate: measured once, on {task['pretrained_samples']:,} "
            f"fresh samples of the zeros model (`pretrained.json`), and used as "
            "the denominator of every improvement factor.",
            f"* Evaluation: every {run.eval_every} rounds, {run.n_eval:,} fresh "
            "samples per seed (Clopper-Pearson intervals per seed; the best-so-far "
            "rate is the maximum of these); after the last round "
            f"{config.final_eval_samples:,} fresh samples per seed (the final "
            "rate). Evaluation calls are counted apart from the NRE and never "
            "learned from.",
            f"* Seeds: reported {list(config.seeds)}, tuning "
            f"{list(config.tuning_seeds)}.",
            f"* BaNEL: `{json.dumps(method_settings_full(config, 'banel_paper'))}`.",
            f"* RND: policy `{json.dumps(jsonable(config.rnd))}`, bonus "
            f"`{json.dumps(jsonable(config.rnd_bonus))}`, input: the 196 pixels.",
            f"* pseudo-counts: policy `{json.dumps(jsonable(config.pseudo_counts))}`,"
            f" density `{json.dumps(jsonable(config.pseudo_counts_bonus))}`.", ""]
  if tuning is not None:
    lines += ["## Tuning (equal effort)", "",
              f"Each method: a 2 x 2 grid (4 points), on tuning seeds "
              f"{tuning['seeds']} at NRE {config.tuning_nre_budget:,} (m = "
              f"{run.samples_per_round}), one evaluation after the last round on "
              f"{config.tuning_n_eval:,} fresh samples per seed; the pick is the "
              "point of highest mean final success rate (ties: the first). The "
              "reported seeds were never used for a choice. `tuning.json` has "
              "every point.", "",
              "| method | point | final rate per tuning seed | mean | p(6) >= 0.5 "
              "(mean) | wall (s) |", "|---|---|---|---|---|---|"]
    for method, rec in tuning["methods"].items():
      for p in rec["points"]:
        star = " **(pick)**" if p["point"] == rec["chosen"] else ""
        soft = p.get("rate_p6_0.5")
        lines.append(
            f"| {LABELS[method]} | {json.dumps(p['point'])}{star} | "
            + ", ".join(_fmt_rate(r) for r in p["final_success_rate"])
            + f" | {_fmt_rate(p['mean'])} | "
            + ("-" if soft is None else f"{np.mean(soft):.4f}")
            + f" | {p['wall_time_s']:.0f} |")
    lines.append("")
  lines += ["## Files", "",
            "* `summary.json`: the canonical summary (per seed: final and best "
            "rates, improvements), the config, the tuning record;",
            "* `table.md`: the tables above; `tuning.json`: the grid; "
            "`pretrained.json`: the pretrained measurement;",
            "* `metrics_<method>.jsonl`: every round's record of each reported "
            "run (rates, p(6) statistics, and the first evaluation samples of "
            "every seed packed as hex: `banel_jax.experiments.mnist.unpack_samples`);",
            "* `success_vs_nre.png`, `rounds_grid.png`, `final_samples.png`;",
            "* `runs/` (not committed): the resumable run directories "
            "(checkpoints, oracle ledgers).", ""]
  (out / "README.md").write_text("\n".join(lines))


def method_settings_full(config: MnistConfig, method: str) -> dict:
  """Every setting of ``method`` that its runs read (BaNEL: its config less
  the run fields, exact mode's fields and the threshold setting not in use)."""
  if method == "banel_paper":
    unused = {*RUN_FIELDS, "exact_batch_size", "exact_max_batches",
              "filter_factor" if config.banel.tau_mode == "calibrated"
              else "calibrated_reject_fraction"}
    return {k: v for k, v in jsonable(config.banel).items() if k not in unused}
  return {"policy": jsonable(getattr(config, method)),
          "bonus": jsonable(getattr(config, f"{method}_bonus"))}


# ---------------------------------------------------------------------------
# The command.


def run(config: MnistConfig, out: str | os.PathLike, progress: bool = True) -> dict:
  """Runs the comparison of ``config``; writes the files of the module
  docstring to ``out`` and returns the summary written to ``summary.json``."""
  if not isinstance(config, MnistConfig):
    raise TypeError(f"config must be a MnistConfig, got {type(config).__name__}")
  t_start = time.perf_counter()
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  run_root = config.run_root(out)
  run_root.mkdir(parents=True, exist_ok=True)
  task = load_task(config.threshold)

  pretrained = measure_pretrained(task, config.pretrained_samples, run_root)
  pe = pretrained["estimate"]
  print(f"pretrained: {pe['successes']} of {pe['trials']} ({pretrained['rate']:.3g})",
        flush=True)
  # With no success among the pretrained samples, 1 / samples bounds the rate
  # (the improvements are then lower bounds).
  rate0 = max(pretrained["rate"], 1.0 / pe["trials"])

  tuning = None
  chosen = config
  if config.tune:
    print(f"tuning on seeds {list(config.tuning_seeds)} at NRE "
          f"{config.tuning_nre_budget} ...", flush=True)
    chosen, tuning = tune(task, config, run_root, progress)
    common.write_json(out / "tuning.json", {**invocation(), **tuning})

  runs, rows = {}, {}
  for method in config.methods:
    print(f"running {LABELS[method]} on seeds {list(config.seeds)} ...", flush=True)
    res = run_method(method, task, chosen, chosen.run, chosen.seeds,
                     run_root / method, progress, chosen.final_eval_samples)
    runs[method] = res
    rows[method] = method_row(method, res, rate0, chosen)
    with open(out / f"metrics_{method}.jsonl", "w") as f:
      for h in res["history"]:
        f.write(json.dumps(h) + "\n")
    print(f"  final {[f'{r:.2e}' for r in rows[method]['final_rate']]} "
          f"({res['wall_time_s']:.0f}s + final evaluation "
          f"{res.get('final_eval_s', 0.0):.0f}s"
          + ("; loaded)" if "loaded_from" in res else ")"), flush=True)

  table = markdown_table(rows, pretrained, rate0, chosen)
  # The measured time of every part, summed over the processes that ran them
  # (a rerun that loads finished parts still reports their time).
  compute = (pretrained["seconds"] + sum(r["wall_time_s"] + r["final_eval_s"]
                                         for r in rows.values())
             + (sum(p["wall_time_s"] for m in tuning["methods"].values()
                    for p in m["points"]) if tuning else 0.0))
  wall = time.perf_counter() - t_start
  summary = {
      "name": "mnist", **invocation(),
      "command": invocation().get("command", "banel mnist (called from Python)"),
      "machine": common.machine(), "python": platform.python_version(),
      "wall_time_s": compute,
      "tasks": {TASK_ID: {
          "nre_budget": chosen.run.nre_budget,
          "pretrained_rate": rate0,
          "pretrained_samples": pe["trials"],
          "pretrained_successes": pe["successes"],
          "pretrained_ci95": [pe["low"], pe["high"]],
          "samples_per_round": chosen.run.samples_per_round,
          "n_eval": chosen.run.n_eval,
          "final_eval_samples": chosen.final_eval_samples,
          "methods": rows}},
      "config": config_to_dict(chosen),
      "tuning": tuning if tuning is not None else "not tuned (--no-tune)",
  }
  common.write_json(out / "summary.json", summary)
  common.write_json(out / "pretrained.json", {**pretrained, "rate_used": rate0})
  (out / "table.md").write_text(table + "\n")
  plot_success(runs, pretrained, chosen, out / "success_vs_nre.png")
  if "banel_paper" in runs:
    plot_rounds_grid(runs["banel_paper"], 0, chosen.seeds[0], chosen,
                     out / "rounds_grid.png", LABELS["banel_paper"])
  plot_final_samples(runs, chosen, out / "final_samples.png")
  write_readme(out, summary, table, tuning, chosen)
  print(table)
  print(f"wrote {out}/ in {wall / 60:.1f} min")
  return summary


COMMAND = register(Command(
    name="mnist",
    help="MNIST 0-to-6: BaNEL, RND and pseudo-counts from failures only.",
    config_cls=MnistConfig, presets=PRESETS, default_preset="default", run=run,
    check=check_against_preset))
