"""BaNEL against the baselines: one table and one plot.

Every method runs in the same harness (:class:`banel_jax.BanelRunner`): the same
NRE budget, the same samples per round, the same evaluation (``n_eval`` fresh
samples per round, Clopper-Pearson intervals, counted apart from the NRE), seeds
side by side under ``vmap``. Methods: BaNEL, REINFORCE, RND, pseudo-counts,
exact counts (toy only: the samples must be small integers), unlikelihood, the
exact-rejection reference (reject every failure already seen), self-imitation
(which learns from the successes it finds), and on the addition task BaNEL
given the query grammar as a free support check (``banel_support``: knowledge
the other methods are not given, and its row says so). Besides BaNEL as
published (``banel``), two more BaNEL rows: with success replay
(``banel_replay``: the latest 256 successes join every distillation at weight
100, :func:`~banel_jax.extensions.success_replay`; it learns from successes,
and its row says so) and with the library's defaults on top (``banel_default``:
the suite's tuned changes,
:func:`~banel_jax.experiments.suite.with_tuned_defaults`, learning rates scaled
by the same 0.3; failures only, not tuned again here). The pretrained model is
the table's first row.

Writes to ``--out``:

* ``comparison.json``: the config, the pretrained rate, one row per method
  (final and best-so-far success rates with mean / median / std over seeds,
  improvement factors, wall time, malformed fraction of the scored samples where
  the task defines it, distinct samples per round), every method's run record
  (per-round history, final rates, settings);
* ``comparison.md``: the table (also printed);
* ``success_vs_nre.png``: success rate against NRE, median over seeds with
  the inter-quartile band;
* ``summary.json`` (the canonical form, below) and ``README.md`` (command,
  config, the statistics and the table, the plot, wall time and machine; its
  observations block is kept when a rerun writes it anew);
* ``tuning.json`` (with ``--tune``): every grid point of every method.

A BaNEL seed whose regions leave its distillation too few samples freezes
(:class:`~banel_jax.BanelRunner`): its final rate is that of its generator at
the freeze, and the README lists the frozen seeds with their round and spent
NRE. A method that stops mid-run on its own failure mode (exact mode's
``AcceptanceRateError``, or a ``NonFiniteError``) has no row:
``comparison.json`` (``stopped``) and the README name it with its error,
``comparison.json`` keeps its rounds before the stop and the plot draws them
dashed, and the other methods run on. With
``--run-dir``, ``DIR/<method>/stopped.json`` keeps the stop: a rerun reports it
without replaying the rounds (remove the file to run the method again).

With ``--run-dir DIR`` the comparison is resumable: each method runs in
``DIR/<method>`` (checkpoints every round, ``config.json``, metrics and the
ledger of every oracle call), and writes ``DIR/<method>/result.json`` when it
finishes; the pretrained rate is kept in ``DIR/pretrained.json`` and
``--tune``'s grid points run in ``DIR/tune/<method>_<i>``. Rerunning the same
command after a kill loads the finished methods (and grid points), resumes the
one that was running from its newest checkpoint, and asks the oracle nothing
its ledger already holds. The per-round diagnostics (distinct and malformed
samples) are computed from the round's samples, so a replayed round records the
same ones.

``--out``'s ``comparison.json`` keeps every finished run (and every stop) with
its settings, so the output folder is a record of its own: rerunning its
command with one more method, on any machine and without the run directories,
loads the methods it holds whose settings are unchanged and runs only the new
one (a method whose settings changed runs again). A committed table grows by a
row this way. ``--tune`` keeps its grid the same way: ``tuning.json`` is
rewritten after every grid point, with its settings, and a rerun loads the
points it holds, so a grid too long for one sitting grows across sessions (a
point that stops on its own failure mode is recorded and never picked).

**Equal tuning effort.** Every tuned method gets a grid of 6 configurations
(2 x 3, :data:`TOY_GRID`, :data:`ADDITION_GRID`), run on the tuning seeds
(toy: 100-104 at the reported budget; addition: 100-101 at NRE 2,500, the
normal-order target 100-102) and picked by the mean final success rate;
``--tune`` reruns it and uses its picks. The presets hold the picks below;
reported runs use seeds 0-4 (the normal-order target: 0-9).

* BaNEL: toy ``filter_factor`` in {1.032, 1.2, 2} x ``failure_epochs`` in
  {20, 50}; addition (calibrated tau, 30 failure epochs)
  ``calibrated_reject_fraction`` in {0.3, 0.5, 0.7} x ``distill_reset`` in
  {False, True};
* REINFORCE, RND, pseudo-count, exact-count: policy ``learning_rate`` in
  {0.03, 0.3} (addition: {1e-5, 1e-4}) x ``kl_weight`` in {0, 0.01, 0.1}
  (with Adam the bonus weight only matters relative to ``kl_weight`` and the
  advantage clip, so it is 1);
* unlikelihood: ``learning_rate`` in {0.03, 0.3} x anchor weight in
  {0, 0.1, 1} (addition: {1e-5, 1e-4} x {0.1, 1, 10});
* self-imitation: ``learning_rate`` in {0.03, 0.3} (addition: {1e-4, 1e-3}) x
  ``success_weight`` in {10, 100, 1000};
* exact rejection and the pretrained model have no knobs; ``banel_support``
  and ``banel_replay`` run at BaNEL's picks (the bank's size and weight are
  those of ``banel attack``'s success-bank runs, not tuned), ``banel_default`` at BaNEL's picks with the suite's
  tuned changes on top (tuned on the suite's tuning half, not on this task).

The grids' records below are in folders kept at commit ``3a3529a`` (``git show
3a3529a:results/<folder>/tuning.json``).

Toy grid results (``results/baselines_toy1d/tuning.json``; mean final success
rate over tuning seeds 100-104, n_eval 10,000; the pretrained rate is 0.011):

  BaNEL         f = 1.032: 1.000 (20 epochs), 0.999 (50); f = 1.2: 0.650 / 0.348;
                f = 2: 0.019 / 0.019                  -> f = 1.032, 20 epochs
  REINFORCE     0.0105 at every point (it never moves) -> lr 0.03, kl 0 (first)
  RND           lr 0.03: 0.032 / 0.033 / 0.032 (kl 0 / 0.01 / 0.1);
                lr 0.3: 0.200 / 0.200 / 0.001         -> lr 0.3, kl 0
  pseudo-count  lr 0.03: 0.049 / 0.012 / 0.011; lr 0.3: 0.004 / 0.013 / 0.007
                                                      -> lr 0.03, kl 0
  exact-count   lr 0.03: 0.054 / 0.050 / 0.037; lr 0.3: 0.187 / 0.143 / 0.065
                                                      -> lr 0.3, kl 0
  unlikelihood  lr 0.03: 0.892 / 0.014 / 0.010 (anchor 0 / 0.1 / 1);
                lr 0.3: 0.999 / 0.013 / 0.009         -> lr 0.3, anchor 0
  self-imit.    lr 0.03: 0.308 / 0.888 / 0.942 (weight 10 / 100 / 1000);
                lr 0.3: 0.918 / 1.000 / 1.000         -> lr 0.3, weight 100
                (``results/baselines_toy1d_selfimit/tuning.json``)

Addition grid results (``results/baselines_addition_tuned/tuning.json``; mean
final success rate over tuning seeds 100-101 at NRE 2,500, n_eval 10,000; the
pretrained rate is 2.6e-4; ties go to the first point):

  BaNEL         reject 0.3: 6.5e-4 / 6.5e-4 (no reset / reset); 0.5: 9.5e-4 /
                6.5e-4; 0.7: 4.0e-4 / 4.5e-4   -> reject 0.5, no reset
  REINFORCE     3.0e-4 at every point (it learns from failures only, whose
                raw reward is 0: zero gradient) -> lr 1e-5, kl 0 (first)
  RND           lr 1e-5: 4.5e-4 at every kl; lr 1e-4: 2.65e-3 / 2.50e-3 /
                2.25e-3 (kl 0 / 0.01 / 0.1)    -> lr 1e-4, kl 0
  pseudo-count  lr 1e-5: 3.0e-4 at every kl; lr 1e-4: 1.55e-3 / 4.5e-4 / 3.0e-4
                                               -> lr 1e-4, kl 0
  unlikelihood  lr 1e-5: 0 / 2.5e-4 / 2.5e-4 (anchor 0.1 / 1 / 10); lr 1e-4: 0 /
                1.0e-4 / 2.0e-4                -> lr 1e-5, anchor 1
  self-imit.    lr 1e-4: 3.0e-4 / 4.0e-4 / 4.0e-4 (weight 10 / 100 / 1000);
                lr 1e-3: 2.5e-4 / 2.5e-4 / 3.0e-4 -> lr 1e-4, weight 100
                (``results/baselines_addition_selfimit/tuning.json``; the
                pretrained rate there is 2.3e-4: at NRE 2,500 on 2 seeds no
                point moves, so this pick is close to arbitrary)

Normal-order grid (``results/compare_msb/tuning.json``; mean final success
rate over tuning seeds 100-102 at NRE 2,500, n_eval 10,000; the pretrained
rate is 6.1e-4; :data:`MSB_PICKS` holds the picks that differ from the
reversed-order ones):

  BaNEL         reject 0.3: 1.17e-3 / 1.20e-3 (no reset / reset); 0.5: 2.00e-3 /
                1.77e-3; 0.7: 3.40e-3 / 4.13e-3 -> reject 0.7, reset (the
                grid's edge)
  REINFORCE     6.0e-4 at every point           -> lr 1e-5, kl 0 (first)
  RND           lr 1e-5: 1.1e-3 at every kl; lr 1e-4: 4.43e-3 / 4.70e-3 /
                4.40e-3 (kl 0 / 0.01 / 0.1)     -> lr 1e-4, kl 0.01
  pseudo-count  lr 1e-5: 8.7e-4 / 8.7e-4 / 7.0e-4; lr 1e-4: 2.50e-3 / 1.20e-3 /
                9.3e-4                          -> lr 1e-4, kl 0
  unlikelihood  lr 1e-5: 2.3e-4 / 5.7e-4 / 6.3e-4 (anchor 0.1 / 1 / 10); lr
                1e-4: 2.7e-4 / 4.7e-4 / 6.0e-4  -> lr 1e-5, anchor 10
  self-imit.    lr 1e-4: 4.7e-4 / 7.7e-4 / 1.20e-3 (weight 10 / 100 / 1000);
                lr 1e-3: 6.3e-4 / 9.0e-4 / 2.70e-3 -> lr 1e-3, weight 1000

On the toy the novelty methods' picks are high-variance: RND and exact counts
collapse onto one or a few bins at lr 0.3 (a target bin on some seeds, a tail
bin on others), so the tuning seeds' means need not carry over to the reported
seeds. On the addition attack RND at lr 1e-4 is the best point of any method's
grid (10x the pretrained rate on the tuning seeds, against BaNEL's 3.7x).

Presets: ``toy1d`` (NRE 1,000, m = 100, 5 seeds; about 10 minutes on 2 CPU
cores), ``toy1d-tiny`` (seconds), ``addition`` (the reversed-order target,
NRE 7,500, m = 500, as in the paper's table; hours), ``addition-msb`` (the
same on the normal-order target with 10 seeds, the paper's comparison) and
``addition-tiny`` (minutes). The task comes with the preset. The addition
presets divide every rate by the pretrained rate of the calibration shipped
with the target (one figure per target).

``summary.json`` (the canonical form, task ``toy1d``, ``addition_msb`` or
``addition_lsb``) adds per method the mean, median and std of the final
improvement, bootstrap 95% intervals of its mean and median, the share of
seeds at least 10x and below 1x, and the two-sided Mann-Whitney p-value
against BaNEL (paper).

Examples:
  banel compare                                    # the toy, every method
  banel compare --preset toy1d --tune              # the grid first
  banel compare --preset toy1d-tiny --methods banel rnd
  banel compare --preset toy1d --run-dir runs/baselines_toy1d_run
  banel compare --preset addition --run-dir runs/lsb --out results/compare_lsb
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import time
from typing import Any, Callable, Literal, NamedTuple, Sequence, get_args

import numpy as np

from banel_jax.baselines import (ExactRejectionConfig, PolicyGradientConfig,
                                 PseudoCountConfig, RNDConfig, RunConfig,
                                 SelfImitationConfig, UnlikelihoodConfig)
from banel_jax.core import sample_set
from banel_jax.core.config import BanelConfig, config_to_dict, jsonable
from banel_jax.experiments import common, harness
from banel_jax.experiments.harness import RESULT_FILE, TaskSetup  # noqa: F401 (re-exported)
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)
from banel_jax.experiments.toy1d import Toy1DConfig
from banel_jax.extensions.success_replay import SuccessReplayConfig
from banel_jax.tasks.toy1d import Toy1DTask

TASKS = ("toy1d", "addition")
Method = Literal["banel", "banel_default", "banel_support", "banel_replay",
                 "reinforce", "rnd",
                 "pseudo_count", "exact_count", "unlikelihood", "exact_rejection",
                 "self_imitation"]
METHODS: tuple[str, ...] = get_args(Method)
# Methods a task cannot run: the toy has no free support check; exact counts
# need small-integer samples.
UNSUPPORTED = {"toy1d": ("banel_support",), "addition": ("exact_count",)}
LABELS = {"pretrained": "pretrained", "banel": "BaNEL (paper)",
          "banel_default": "BaNEL (defaults: suite-tuned, failures only)",
          "banel_support": "BaNEL + support check (task knowledge)",
          "banel_replay": "BaNEL + success replay (learns from successes)",
          "reinforce": "REINFORCE",
          "rnd": "RND", "pseudo_count": "pseudo-count", "exact_count": "exact-count",
          "unlikelihood": "unlikelihood", "exact_rejection": "exact rejection",
          "self_imitation": "self-imitation (learns from successes)"}

# method -> ((field path, values), (field path, values)); a path is
# "<config section>.<field>" of CompareConfig.
_PG_GRID = lambda m: ((f"{m}.learning_rate", (0.03, 0.3)),  # noqa: E731
                      (f"{m}.kl_weight", (0.0, 0.01, 0.1)))
TOY_GRID: tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...] = (
    ("banel", (("banel.filter_factor", (1.032, 1.2, 2.0)),
               ("banel.failure_epochs", (20, 50)))),
    ("reinforce", _PG_GRID("reinforce")),
    ("rnd", _PG_GRID("rnd")),
    ("pseudo_count", _PG_GRID("pseudo_count")),
    ("exact_count", _PG_GRID("exact_count")),
    ("unlikelihood", (("unlikelihood.learning_rate", (0.03, 0.3)),
                      ("unlikelihood.anchor_weight", (0.0, 0.1, 1.0)))),
    ("self_imitation", (("self_imitation.learning_rate", (0.03, 0.3)),
                        ("self_imitation.success_weight", (10.0, 100.0, 1000.0)))),
)
# The same structure for the transformer (Adam learning rates 1e-5 to 1e-4).
_PG_GRID_LM = lambda m: ((f"{m}.learning_rate", (1e-5, 1e-4)),  # noqa: E731
                         (f"{m}.kl_weight", (0.0, 0.01, 0.1)))
# BaNEL's addition config sets tau by calibration (the filter factor is unused),
# so its two knobs are the fraction each region rejects and the reset.
ADDITION_GRID: tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...] = (
    ("banel", (("banel.calibrated_reject_fraction", (0.3, 0.5, 0.7)),
               ("banel.distill_reset", (False, True)))),
    ("reinforce", _PG_GRID_LM("reinforce")),
    ("rnd", _PG_GRID_LM("rnd")),
    ("pseudo_count", _PG_GRID_LM("pseudo_count")),
    ("unlikelihood", (("unlikelihood.learning_rate", (1e-5, 1e-4)),
                      ("unlikelihood.anchor_weight", (0.1, 1.0, 10.0)))),
    ("self_imitation", (("self_imitation.learning_rate", (1e-4, 1e-3)),
                        ("self_imitation.success_weight", (10.0, 100.0, 1000.0)))),
)
GRIDS = {"toy1d": TOY_GRID, "addition": ADDITION_GRID}

# Config sections that each method reads (recorded in its run directory and
# checked when it resumes).
METHOD_SECTIONS = {"banel": ("banel",), "banel_default": ("banel",),
                   "banel_support": ("banel",),
                   "banel_replay": ("banel", "success_replay"),
                   "reinforce": ("reinforce",),
                   "rnd": ("rnd", "rnd_bonus"),
                   "pseudo_count": ("pseudo_count", "pseudo_count_bonus"),
                   "exact_count": ("exact_count",), "unlikelihood": ("unlikelihood",),
                   "exact_rejection": ("exact_rejection",),
                   "self_imitation": ("self_imitation",)}
# Methods that learn from the successes they find (their rows say so).
USES_SUCCESSES = ("banel_replay", "self_imitation")
PRETRAINED_FILE = "pretrained.json"


# The toy's BaNEL: the ``toy1d`` experiment's, at the grid's pick of 20 epochs.
TOY_BANEL = Toy1DConfig().banel.replace(failure_epochs=20)


@dataclasses.dataclass(frozen=True)
class CompareConfig:
  """The comparison: every method's settings, the seeds and the tuning runs.

  Attributes:
    task: ``toy1d`` or ``addition`` (set by the preset, with its settings).
    methods: the methods to run; empty: every method the task supports.
    tune: run the tuning grid first (on ``tuning_seeds``) and use its picks.
    seeds: reported seeds (run side by side under ``vmap``).
    tuning_seeds: seeds of the tuning runs.
    run: NRE budget, m, n_eval and eval_every, shared by every method.
    tuning_nre_budget: NRE budget of the tuning runs; 0: ``run``'s.
    tuning_eval_every: evaluation period of the tuning runs; 0: ``run``'s.
    banel: BaNEL's config (its run fields are replaced by ``run``'s).
    reinforce: REINFORCE's policy updates.
    rnd: RND's policy updates.
    rnd_bonus: RND's bonus.
    pseudo_count: the pseudo-count method's policy updates.
    pseudo_count_bonus: the pseudo-count bonus.
    exact_count: the exact-count method's policy updates (toy only).
    unlikelihood: unlikelihood training.
    exact_rejection: the exact-rejection reference.
    self_imitation: self-imitation (learns from the successes it finds).
    success_replay: the success bank of ``banel_replay`` (BaNEL at its picks,
      the latest ``bank_size`` successes joining every distillation at weight
      ``weight``; not tuned here: the bank of ``banel attack``'s findings).
    pretrained_samples: samples that measure the pretrained rate.
    final_eval_samples: addition only: if > 0, methods with a seed whose final
      rate is below ``final_eval_threshold`` are re-evaluated on this many fresh
      samples (rates below 1e-3 need >= 200,000 for a useful interval; not
      ledgered: an interrupted one is redone).
    final_eval_threshold: see ``final_eval_samples``.
    toy: the 1-D toy (task ``toy1d``).
    target: the addition target's checkpoint: a shipped name (``target``,
      ``target_msb``) or a directory of ``banel train-target``.
    attacker: the pretrained attacker's checkpoint: ``attacker`` (shipped) or
      a directory of ``banel pretrain-attacker``.
    leading_zeros_malformed: addition only: operands with leading zeros are
      malformed (the harder variant).
    run_dir: resumable comparison: each method runs in ``RUN_DIR/<method>``,
      the pretrained rate is kept in ``RUN_DIR/pretrained.json``, the grid's
      points run in ``RUN_DIR/tune/<method>_<i>``.
  """

  task: Literal["toy1d", "addition"] = "toy1d"
  methods: tuple[Method, ...] = ()
  tune: bool = False
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  tuning_seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
  run: RunConfig = RunConfig(nre_budget=1000, samples_per_round=100, n_eval=10_000,
                             eval_every=1)
  tuning_nre_budget: int = 0
  tuning_eval_every: int = 0
  banel: BanelConfig = TOY_BANEL
  reinforce: PolicyGradientConfig = PolicyGradientConfig(learning_rate=0.03,
                                                         kl_weight=0.0)
  rnd: PolicyGradientConfig = PolicyGradientConfig(learning_rate=0.3, kl_weight=0.0)
  rnd_bonus: RNDConfig = RNDConfig()
  pseudo_count: PolicyGradientConfig = PolicyGradientConfig(learning_rate=0.03,
                                                            kl_weight=0.0)
  pseudo_count_bonus: PseudoCountConfig = PseudoCountConfig(
      density_learning_rate=0.1, density_steps=4, pg_learning_rate=1.0)
  exact_count: PolicyGradientConfig = PolicyGradientConfig(learning_rate=0.3,
                                                           kl_weight=0.0)
  unlikelihood: UnlikelihoodConfig = UnlikelihoodConfig(learning_rate=0.3,
                                                        anchor_weight=0.0)
  exact_rejection: ExactRejectionConfig = ExactRejectionConfig(
      capacity=1000, batch_size=65_536, max_batches=64)
  self_imitation: SelfImitationConfig = SelfImitationConfig(learning_rate=0.3)
  success_replay: SuccessReplayConfig = SuccessReplayConfig(bank_size=256,
                                                            weight=100.0)
  pretrained_samples: int = 200_000
  final_eval_samples: int = 0
  final_eval_threshold: float = 1e-3
  toy: Toy1DTask = Toy1DTask()
  target: str = "target"
  attacker: str = "attacker"
  leading_zeros_malformed: bool = False
  run_dir: str | None = None

  def __post_init__(self):
    name = "CompareConfig"
    if self.task not in TASKS:
      raise ExperimentError(f"{name}.task={self.task!r} must be one of "
                            f"{', '.join(TASKS)}")
    if not isinstance(self.methods, tuple):
      raise ExperimentError(f"{name}.methods={self.methods!r} must be a tuple")
    unknown = [m for m in self.methods if m not in METHODS]
    if unknown:
      raise ExperimentError(f"{name}.methods: {unknown} are not methods; the "
                            f"methods are {', '.join(METHODS)}")
    refused = [m for m in self.methods if m in UNSUPPORTED[self.task]]
    if refused:
      raise ExperimentError(f"{name}.methods: task {self.task!r} does not support "
                            f"{', '.join(refused)} (it supports "
                            f"{', '.join(supported_methods(self.task))})")
    if len(set(self.methods)) != len(self.methods):
      raise ExperimentError(f"{name}.methods={self.methods!r} names a method twice")
    for field in ("seeds", "tuning_seeds"):
      common.check_seeds(name, field, getattr(self, field))
    for field, low in (("pretrained_samples", 1), ("final_eval_samples", 0),
                       ("tuning_nre_budget", 0), ("tuning_eval_every", 0)):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ExperimentError(f"{name}.{field}={v!r} must be an integer >= {low}")
    if self.final_eval_samples and self.task != "addition":
      raise ExperimentError(f"{name}.final_eval_samples={self.final_eval_samples} "
                            "applies to task 'addition' only (the toy's exact "
                            "rates are known): set it to 0")
    if not isinstance(self.banel, BanelConfig):
      raise ExperimentError(f"{name}.banel must be a BanelConfig, got "
                            f"{type(self.banel).__name__}")
    for field in ("target", "attacker"):
      if not isinstance(getattr(self, field), str) or not getattr(self, field):
        raise ExperimentError(f"{name}.{field}={getattr(self, field)!r} must be a "
                              "shipped checkpoint's name or a directory")

  def replace(self, **changes) -> "CompareConfig":
    return dataclasses.replace(self, **changes)

  @property
  def tuning_run(self) -> RunConfig:
    """The budget, m and evaluation of the tuning runs."""
    return self.run.replace(
        nre_budget=self.tuning_nre_budget or self.run.nre_budget,
        eval_every=self.tuning_eval_every or self.run.eval_every)

  @property
  def grid(self):
    """The task's tuning grid (:data:`TOY_GRID` or :data:`ADDITION_GRID`)."""
    return GRIDS[self.task]

  @property
  def method_list(self) -> tuple[str, ...]:
    """The methods run, in order: ``methods``, or every one the task supports."""
    return self.methods or supported_methods(self.task)

  def attack_config(self):
    """The :class:`~banel_jax.experiments.attack.AttackConfig` of the addition
    task's checkpoints and grammar (used to load them)."""
    from banel_jax.experiments import attack
    return attack.AttackConfig(target=self.target, attacker=self.attacker,
                               allow_leading_zeros=not self.leading_zeros_malformed)

  def task_config(self) -> Any:
    """The task's own config: the toy, or the addition task before its target
    is loaded (which brings the target's shape)."""
    return self.toy if self.task == "toy1d" else self.attack_config().task_config()


def supported_methods(task: str) -> tuple[str, ...]:
  """Every method ``task`` supports, in table order."""
  return tuple(m for m in METHODS if m not in UNSUPPORTED[task])


def toy1d_config() -> CompareConfig:
  """The toy comparison reported in ``results/baselines_toy1d``."""
  return CompareConfig()


def toy1d_tiny_config() -> CompareConfig:
  """Seconds: 2 seeds, NRE 300, small evaluations."""
  base = CompareConfig()
  return base.replace(
      run=RunConfig(nre_budget=300, samples_per_round=100, n_eval=1000),
      banel=base.banel.replace(distill_samples=1024),
      rnd_bonus=RNDConfig(hidden=(32, 32), output_dim=16, init_samples=256),
      exact_rejection=base.exact_rejection.replace(capacity=300, batch_size=8192),
      self_imitation=base.self_imitation.replace(bank_size=16, anchor_samples=256,
                                                 batch_size=64),
      success_replay=dataclasses.replace(base.success_replay, bank_size=16),
      seeds=(0, 1), tuning_seeds=(100, 101), pretrained_samples=20_000)


def addition_config() -> CompareConfig:
  """The addition-attack comparison (the paper's table: NRE 7,500, m = 500, 5
  seeds); BaNEL as in ``banel attack --preset full``, every other method at
  the pick of :data:`ADDITION_GRID`. A grid point at the reported size takes
  25-70 minutes on 2 CPU cores, so the grid runs on 2 tuning seeds at NRE
  2,500 (30 points: about 2 hours)."""
  from banel_jax.experiments import attack
  full = attack.full_config()
  return CompareConfig(
      task="addition",
      run=RunConfig(nre_budget=7500, samples_per_round=500, n_eval=10_000,
                    eval_every=3),
      tuning_seeds=(100, 101), tuning_nre_budget=2500, tuning_eval_every=5,
      banel=full.banel,
      reinforce=PolicyGradientConfig(learning_rate=1e-5, kl_weight=0.0,
                                     train_microbatch="auto"),
      rnd=PolicyGradientConfig(learning_rate=1e-4, kl_weight=0.0,
                               train_microbatch="auto"),
      rnd_bonus=RNDConfig(hidden=(256, 256), output_dim=64, learning_rate=1e-4),
      pseudo_count=PolicyGradientConfig(learning_rate=1e-4, kl_weight=0.0,
                                        train_microbatch="auto"),
      pseudo_count_bonus=PseudoCountConfig(
          density_init="scratch", density_learning_rate=1e-3, density_steps=4,
          pg_learning_rate=1e-3, chunk_size=64),
      exact_count=PolicyGradientConfig(),  # not run: the samples are sequences
      unlikelihood=UnlikelihoodConfig(
          form="token", learning_rate=1e-5, steps=16, anchor_weight=1.0,
          anchor_samples=256, train_microbatch="auto"),
      exact_rejection=ExactRejectionConfig(capacity=7500, batch_size=4096,
                                           max_batches=64),
      self_imitation=SelfImitationConfig(learning_rate=1e-4,
                                         train_microbatch="auto"),
      final_eval_samples=200_000, target=full.target, attacker=full.attacker,
      leading_zeros_malformed=not full.allow_leading_zeros)


def addition_tiny_config() -> CompareConfig:
  """Minutes: 2 seeds, tiny budgets and evaluations of the addition task."""
  base = addition_config()
  return base.replace(
      run=RunConfig(nre_budget=128, samples_per_round=64, n_eval=256, eval_every=1),
      banel=base.banel.replace(failure_epochs=1, failure_batch_size=32,
                               distill_samples=256, distill_epochs=1,
                               distill_batch_size=128, nre_budget=128,
                               samples_per_round=64),
      rnd=base.rnd.replace(epochs=1, num_minibatches=2),
      pseudo_count=base.pseudo_count.replace(epochs=1, num_minibatches=2),
      reinforce=base.reinforce.replace(epochs=1, num_minibatches=2),
      rnd_bonus=RNDConfig(hidden=(32, 32), output_dim=16, init_samples=128),
      pseudo_count_bonus=base.pseudo_count_bonus.replace(density_steps=1,
                                                         chunk_size=16),
      unlikelihood=base.unlikelihood.replace(steps=2, anchor_samples=32),
      exact_rejection=base.exact_rejection.replace(capacity=128, batch_size=256,
                                                   max_batches=8),
      self_imitation=base.self_imitation.replace(bank_size=16, anchor_samples=64,
                                                 batch_size=32, epochs=1),
      success_replay=dataclasses.replace(base.success_replay, bank_size=16),
      seeds=(0, 1), tuning_seeds=(100, 101), tuning_nre_budget=0,
      tuning_eval_every=0, pretrained_samples=1024, final_eval_samples=1024)


# The picks of the normal-order target's own grid (``--tune`` on seeds
# 100-102; ``results/compare_msb/tuning.json``) where they differ from the
# reversed-order target's.
MSB_PICKS = {"banel.calibrated_reject_fraction": 0.7, "banel.distill_reset": True,
             "rnd.kl_weight": 0.01, "unlikelihood.anchor_weight": 10.0,
             "self_imitation.learning_rate": 1e-3,
             "self_imitation.success_weight": 1000.0}


def addition_msb_config() -> CompareConfig:
  """The paper's table on the normal-order target (``target_msb``): 10
  reported seeds (0-9), every method at the picks of its own grid on this
  target (:data:`MSB_PICKS`; tuning seeds 100-102 at NRE 2,500), every ratio
  against the shipped calibration (122 / 200,704). Hours on 2 CPU cores per
  method: run it with ``--run-dir`` (resumable), on a GPU where one is
  lent."""
  return apply_overrides(
      addition_config().replace(target="target_msb", seeds=tuple(range(10)),
                                tuning_seeds=(100, 101, 102)), MSB_PICKS)


PRESETS = {"toy1d": toy1d_config, "toy1d-tiny": toy1d_tiny_config,
           "addition": addition_config, "addition-msb": addition_msb_config,
           "addition-tiny": addition_tiny_config}

_ADDITION_ONLY = ("target", "attacker", "leading_zeros_malformed")
# BanelConfig's fields that ``run`` sets for every method
RUN_FIELDS = ("nre_budget", "samples_per_round", "n_eval", "eval_every")


def check_against_preset(config: CompareConfig, preset: CompareConfig) -> None:
  """Refuses a task other than the preset's (the presets hold each task's
  settings) and settings of the other task, naming their flags
  (:attr:`~banel_jax.experiments.registry.Command.check`)."""
  if config.task != preset.task:
    raise ExperimentError(
        f"--task {config.task} with the {preset.task} preset's settings: pick the "
        f"task with --preset ({', '.join(PRESETS)})")
  shared = [f"--banel.{f.replace('_', '-')}" for f in RUN_FIELDS
            if getattr(config.banel, f) != getattr(preset.banel, f)]
  if shared:
    raise ExperimentError(f"{', '.join(shared)}: every method shares the run's "
                          "budget and evaluation; set them with --run.* instead")
  if config.task == "toy1d":
    changed = [f"--{f.replace('_', '-')}" for f in _ADDITION_ONLY
               if getattr(config, f) != getattr(preset, f)]
    if changed:
      raise ExperimentError(f"{', '.join(changed)} apply to the addition task "
                            "only (--preset addition)")
  elif config.toy != preset.toy:
    raise ExperimentError("--toy.* apply to the toy only (--preset toy1d)")


# ---------------------------------------------------------------------------
# Tasks.


def toy_setup(config: CompareConfig) -> TaskSetup:
  """The 1-D toy: exact rates from the tabular models."""
  import jax
  import jax.numpy as jnp

  from banel_jax.baselines import one_hot_features
  task = config.toy
  model = task.model()

  def fast_sample(params, key, n):
    # Inverse CDF: the same categorical, n uniforms instead of n * K Gumbels.
    cdf = jnp.cumsum(jax.nn.softmax(params["logits"]))
    u = jax.random.uniform(key, (n,)) * cdf[-1]
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"),
                       task.num_bins - 1).astype(jnp.int32)

  prior_logp = np.asarray(jax.nn.log_softmax(task.prior_logits()), np.float64)

  def exact_rate(state) -> float:
    if hasattr(state, "proposal"):  # BaNEL: the distilled proposal
      logits = state.proposal.params["logits"]
    elif hasattr(state, "policy"):
      logits = state.policy.params["logits"]
    elif hasattr(state, "failures"):  # exact rejection: prior minus seen failures
      p = np.exp(prior_logp)
      bins = jnp.arange(task.num_bins, dtype=jnp.int32)
      p[np.asarray(sample_set.contains(state.failures, bins))] = 0.0
      return float(p[task.target_bins].sum() / p.sum())
    else:
      return float("nan")
    return task.exact_success_rate(np.asarray(jax.nn.log_softmax(logits)))

  return TaskSetup(
      name="toy1d", model=model, prior_params=task.prior_params(), oracle=task.oracle,
      featurize=one_hot_features(task.num_bins), num_values=task.num_bins,
      malformed=None, exact_rate=exact_rate, token_log_prob=None, token_mask=None,
      fast_prior_model=model._replace(sample=fast_sample),
      methods=supported_methods("toy1d"),
      prior_exact_rate=task.exact_success_rate(prior_logp))


def addition_setup(config: CompareConfig) -> TaskSetup:
  """The addition attack: the target and the pretrained attacker loaded with
  :func:`banel_jax.experiments.attack.load_models`."""
  from banel_jax.baselines import one_hot_features, token_id_mask
  from banel_jax.experiments import attack
  from banel_jax.tasks import addition

  for value, command in ((config.target, "train-target"),
                         (config.attacker, "pretrain-attacker")):
    directory = common.checkpoint_dir(value)
    if not directory.is_dir():
      raise ExperimentError(f"no checkpoint at {directory}: make it with `banel "
                            f"{command} --out DIR` (the checkpoint is "
                            "DIR/checkpoint)")
  task, attacker, attacker_params, target_params = attack.load_models(
      config.attack_config())

  def malformed(x):
    return ~addition.is_well_formed(np.asarray(x), task.max_operand_len,
                                    task.allow_leading_zeros)

  return TaskSetup(
      name="addition", model=attacker.model, prior_params=attacker_params,
      oracle=addition.make_oracle(target_params, task),
      featurize=one_hot_features(addition.VOCAB_SIZE),
      num_values=addition.VOCAB_SIZE, malformed=malformed, exact_rate=None,
      token_log_prob=attacker.token_log_prob, token_mask=token_id_mask(range(10)),
      fast_prior_model=attacker.model, methods=supported_methods("addition"),
      support=addition.make_support(task))


SETUPS = {"toy1d": toy_setup, "addition": addition_setup}


# ---------------------------------------------------------------------------
# Methods and runs.


class MethodBuild(NamedTuple):
  """One method, ready for :class:`~banel_jax.BanelRunner`.

  Attributes:
    method: the bundle to pass as ``method=``, or ``None`` for BaNEL (the
      runner's default method).
    run_config: the runner's config (BaNEL's config for BaNEL).
    extensions: BaNEL's plug-ins (``banel_support``: the support check).
  """

  method: Any
  run_config: Any
  extensions: tuple = ()


def build_method(name: str, setup: TaskSetup, config: CompareConfig) -> MethodBuild:
  """The :class:`MethodBuild` of method ``name`` on ``setup``'s task."""
  from banel_jax import baselines as B
  run = config.run
  model = setup.model
  if name in ("banel", "banel_default", "banel_support", "banel_replay"):
    cfg = config.banel.replace(nre_budget=run.nre_budget,
                               samples_per_round=run.samples_per_round,
                               n_eval=run.n_eval, eval_every=run.eval_every)
    if cfg.failure_batch_size > cfg.samples_per_round:
      cfg = cfg.replace(failure_batch_size=cfg.samples_per_round)
    if name == "banel":
      return MethodBuild(None, cfg)
    if name == "banel_default":
      from banel_jax.experiments.suite import with_tuned_defaults
      return MethodBuild(None, with_tuned_defaults(cfg))
    if name == "banel_replay":
      from banel_jax.extensions import success_replay
      r = config.success_replay
      return MethodBuild(None, cfg, (success_replay(
          model, r.bank_size, distinct=r.distinct, weight=r.weight),))
    if setup.support is None:
      raise ExperimentError(f"task {setup.name!r} has no free support check for "
                            "method 'banel_support'")
    from banel_jax.extensions import support_check
    return MethodBuild(None, cfg, (support_check(
        setup.support, description=f"{setup.name} grammar"),))
  if name == "reinforce":
    method = B.make_reinforce(model, config.reinforce)
  elif name == "rnd":
    method = B.make_rnd(model, setup.featurize, config.rnd, config.rnd_bonus)
  elif name == "pseudo_count":
    method = B.make_pseudo_count(model, config.pseudo_count,
                                 config.pseudo_count_bonus)
  elif name == "exact_count":
    method = B.make_exact_count(model, setup.num_values, config.exact_count)
  elif name == "unlikelihood":
    ul = config.unlikelihood
    if ul.form == "token" and setup.token_log_prob is None:
      ul = ul.replace(form="sequence")
    method = B.make_unlikelihood(model, ul, token_log_prob=setup.token_log_prob,
                                 token_mask=setup.token_mask)
  elif name == "exact_rejection":
    method = B.make_exact_rejection(setup.fast_prior_model, config.exact_rejection)
  elif name == "self_imitation":
    # no support check: like every baseline here, it is not given the grammar
    method = B.make_self_imitation(model, config.self_imitation)
  else:
    raise ExperimentError(f"unknown method {name!r}; the methods are "
                          f"{', '.join(METHODS)}")
  return MethodBuild(method, run)


def _distinct(x: np.ndarray) -> int | None:
  # None: the seed scored nothing this round (spent, or frozen)
  return int(len(np.unique(x.reshape(len(x), -1), axis=0))) if len(x) else None


def _mean_scored(per_round: list) -> float | None:
  """Mean of per-seed values over rounds, leaving out ``None`` (a seed that
  scored nothing that round); ``None`` if nothing is left."""
  values = [v for row in per_round for v in np.ravel(np.asarray(row, object))
            if v is not None]
  return float(np.mean(values)) if values else None


def _malformed_fraction(setup: TaskSetup, x: np.ndarray) -> float | None:
  return float(np.mean(setup.malformed(x))) if len(x) else None


def round_diagnostics(setup: TaskSetup, n_seeds: int) -> Callable:
  """An ``on_round`` hook adding per-round diagnostics of the samples.

  Computed from the round's samples (:attr:`BanelRunner.round_samples`), not by
  watching the oracle, so a round replayed from a run directory's ledger gets
  the same diagnostics as one the oracle answered:

  * ``n_distinct_train``: distinct samples among each seed's scored ones;
  * ``malformed_train``, ``malformed_eval``: malformed fraction of each seed's
    scored / evaluation samples (tasks that define malformed samples);
  * ``exact_success_rate``: each seed's exact rate (tasks that know it).

  Args:
    setup: the task.
    n_seeds: seeds run side by side.

  Returns:
    ``on_round(runner, record)``.
  """

  def on_round(runner, record: dict) -> None:
    import jax
    samples = runner.round_samples
    if "train" in samples:
      x, scored = samples["train"], samples["train_evaluated"]
      parts = [x[s][scored[s]] for s in range(n_seeds)]
      record["n_distinct_train"] = [_distinct(p) for p in parts]
      if setup.malformed is not None:
        record["malformed_train"] = [_malformed_fraction(setup, p) for p in parts]
    if "eval" in samples and setup.malformed is not None:
      record["malformed_eval"] = [_malformed_fraction(setup, p)
                                  for p in samples["eval"]]
    if setup.exact_rate is not None:
      states = runner.states
      record["exact_success_rate"] = [
          setup.exact_rate(jax.tree.map(lambda a, s=s: a[s], states))
          for s in range(n_seeds)]

  return on_round


def _checkpoints(config: CompareConfig) -> dict:
  """The addition task's checkpoints as recorded (names, or absolute paths)."""
  if config.task != "addition":
    return {}
  return {"target": common.checkpoint_record(config.target),
          "attacker": common.checkpoint_record(config.attacker)}


def run_settings(name: str, setup: TaskSetup, config: CompareConfig, seeds,
                 run_config) -> dict:
  """JSON-ready description of one method's run (what its results depend on)."""
  return {"method": name, "task": setup.name,
          "task_config": jsonable(config.task_config()),
          "seeds": [int(s) for s in seeds], "run": jsonable(run_config),
          "sections": {k: jsonable(getattr(config, k))
                       for k in METHOD_SECTIONS.get(name, ())},
          "final_eval_samples": config.final_eval_samples,
          "final_eval_threshold": config.final_eval_threshold,
          **_checkpoints(config)}


def run_method(name: str, setup: TaskSetup, config: CompareConfig, seeds,
               progress: bool, final_eval_only: bool = False,
               run_dir: str | os.PathLike | None = None,
               recorded: dict | None = None, load_only: bool = False) -> dict | None:
  """Runs one method for ``seeds`` side by side; returns its history and timings.

  Args:
    name: the method (one of :data:`METHODS`).
    setup: the task.
    config: the comparison's config.
    seeds: seeds run side by side.
    progress: show a progress bar.
    final_eval_only: evaluate only the pretrained and the final model (tuning).
    run_dir: optional run directory of this method: the run checkpoints every
      round and ledgers every oracle call there, and ``result.json`` is written
      when it finishes. A directory holding a finished run returns its result
      without running anything; one holding an unfinished run resumes it.
    recorded: this method's entry in an earlier ``comparison.json``
      (:func:`recorded_runs`): a finished run (or a stop) of the same settings
      is returned (or raised again) without running anything, unless
      ``run_dir`` holds a finished run or a stop, which comes first. Other
      settings: ignored (the method runs).
    load_only: return a finished run (or raise a recorded stop), and ``None``
      instead of running or resuming one.

  Returns:
    The run's record (:func:`banel_jax.experiments.harness.run_method`), with
    ``"settings"`` (:func:`run_settings`) added; ``None`` with ``load_only``
    when nothing finished is recorded.

  Raises:
    RunDirError: ``run_dir`` holds a run of other settings.
  """
  method, cfg, extensions = build_method(name, setup, config)
  if final_eval_only:
    rounds = -(-cfg.nre_budget // cfg.samples_per_round)
    cfg = dataclasses.replace(cfg, eval_every=rounds + 1)
  settings = run_settings(name, setup, config, seeds, cfg)
  in_run_dir = run_dir is not None and any(
      os.path.exists(os.path.join(run_dir, f))
      for f in (harness.RESULT_FILE, harness.STOPPED_FILE))
  if recorded is not None and not in_run_dir:
    from banel_jax.runtime.run_dir import diff_records
    if not diff_records(recorded["settings"], jsonable(settings)):
      if "error" in recorded:  # the same settings stop the same way
        err = STOPS[recorded["error"]](
            f"{recorded['message']}{STOPPED_EARLIER}{recorded['source']}; "
            "run it again with another --out)")
        err.settings = settings
        err.history = recorded.get("history") or []
        raise err
      return {**recorded["result"], "settings": settings,
              "loaded_from": recorded["source"]}

  def final(runner, result) -> dict:
    n_large = config.final_eval_samples
    large = None
    if n_large and min(result.final_success_rates()) < config.final_eval_threshold:
      large = large_evaluation(runner, setup, n_large, cfg.n_eval)
    return {"final_large_eval": large}

  try:
    out = harness.run_method(
        setup.model, setup.prior_params, setup.oracle, cfg, seeds, settings=settings,
        what=f"{LABELS[name]}'s result", method=method, extensions=extensions,
        run_dir=run_dir, on_round=round_diagnostics(setup, len(seeds)),
        progress=progress, final=final, record_as="comparison",
        load_only=load_only)
  except tuple(STOPS.values()) as err:
    err.settings = settings  # recorded with the stop in comparison.json
    raise
  return None if out is None else {**out, "settings": settings}


# A method's own failure modes mid-run (a result, not a crash: the table names
# the stop and the other methods run on).
STOPS = harness.stop_errors()
STOPPED_EARLIER = harness.STOPPED_EARLIER


def stop_record(err: Exception, history: bool = False) -> dict:
  """How a study records a stop raised by :func:`run_method`: the error's
  name, its message (without where an earlier record was) and the settings;
  with ``history``, the per-round records before the stop too (where the
  error carries them)."""
  record = {"error": type(err).__name__,
            "message": str(err).split(STOPPED_EARLIER)[0],
            "settings": err.settings}
  if history and getattr(err, "history", None):
    record["history"] = err.history
  return record


def loadable(entry: dict, source: str, result: dict | None = None) -> dict:
  """A recorded run (``result``) or stop (``entry`` has ``"error"``) in the
  form :func:`run_method` loads as ``recorded``."""
  if "error" in entry:
    return {"settings": entry["settings"], "error": entry["error"],
            "message": entry["message"].split(STOPPED_EARLIER)[0],
            "source": source, "history": entry.get("history") or []}
  return {"settings": entry["settings"], "result": result, "source": source}


def recorded_runs(out: str | os.PathLike) -> dict:
  """The finished runs and stops recorded in ``out/comparison.json``, by
  method: ``{"settings", "result", "source"}`` or ``{"settings", "error",
  "message", "history", "source"}`` (``history``: the rounds before the stop,
  empty where the record predates them). Empty without the file; a record without settings
  (written by an older version) is left out.

  So a committed table grows by a row without rerunning the others: rerunning
  its command with one more method on a fresh machine (no run directory) runs
  only the new method.
  """
  path = pathlib.Path(out) / "comparison.json"
  saved = read_record(path)
  found = {}
  for name, run in saved.get("runs", {}).items():
    if "settings" in run:
      found[name] = loadable(run, str(path), {k: v for k, v in run.items()
                                              if k != "settings"})
  for name, stop in saved.get("stopped", {}).items():
    if "settings" in stop:
      found[name] = loadable(stop, str(path))
  return found


def large_evaluation(runner, setup: TaskSetup, n: int, chunk: int) -> list[dict]:
  """Final success rate of every seed on ``n`` fresh samples (rates below 1e-3
  need >= 200,000 for a useful interval). Counted apart from NRE."""
  return harness.final_rates(runner, setup.oracle, n, chunk, key=20_000)


def measure_pretrained(setup: TaskSetup, n: int, m: int, seed: int = 10_000) -> dict:
  """The pretrained model's success rate on ``n`` fresh samples (+ exact, toy)."""
  from banel_jax.core.metrics import clopper_pearson
  x = np.concatenate(list(harness.prior_samples(setup.model, setup.prior_params, n,
                                                8192, seed)))
  r = np.asarray(setup.oracle(x))
  est = clopper_pearson(int(r.sum()), n)
  out = {"estimate": est.as_dict(), "rate": est.rate}
  if setup.malformed is not None:
    out["malformed"] = float(np.mean(setup.malformed(x)))
  # Distinct samples in batches of m (what a round of the prior would score).
  rounds = x[: (min(n, 100 * m) // m) * m].reshape((-1, m) + x.shape[1:])
  distinct = [len(np.unique(b.reshape(m, -1), axis=0)) for b in rounds]
  out["distinct_per_round"] = float(np.mean(distinct)) if distinct else None
  if setup.prior_exact_rate is not None:
    out["exact_rate"] = setup.prior_exact_rate
  return out


def pretrained_rate(setup: TaskSetup, config: CompareConfig,
                    run_dir: str | os.PathLike | None = None) -> dict:
  """:func:`measure_pretrained` at the config's settings; with ``run_dir``,
  measured once and kept in ``run_dir/pretrained.json`` (a rerun loads it)."""
  settings = {"task": setup.name, "task_config": jsonable(config.task_config()),
              "samples": config.pretrained_samples,
              "m": config.run.samples_per_round, **_checkpoints(config)}
  path = None if run_dir is None else os.path.join(run_dir, PRETRAINED_FILE)
  shipped = shipped_pretrained_rate(config)
  if shipped is not None:
    return shipped
  return harness.cached(path, settings, "the pretrained rate", lambda: measure_pretrained(
      setup, config.pretrained_samples, config.run.samples_per_round))


def shipped_pretrained_rate(config: CompareConfig) -> dict | None:
  """The addition task's pretrained rate from the calibration shipped with
  its checkpoints (the one figure every table of that target divides by), or
  ``None`` (the toy, or checkpoints without a shipped calibration)."""
  if config.task != "addition":
    return None
  from banel_jax.experiments import attack
  a = config.attack_config()
  est, source = attack.reuse_calibration(a, a.task_config())
  if est is None:
    return None
  return {"estimate": est.as_dict(), "rate": est.rate, "source": source}


# ---------------------------------------------------------------------------
# Tuning.


def grid_points(axes) -> list[dict]:
  """Every point of a grid's axes, as ``{field path: value}``."""
  names = [a for a, _ in axes]
  return [dict(zip(names, vals)) for vals in itertools.product(*[v for _, v in axes])]


def grid_sizes(config: CompareConfig) -> str:
  """The grids' sizes in words: ``"6"`` when every method's grid has 6
  points, else ``"4 to 6"``."""
  sizes = sorted({len(grid_points(axes)) for _, axes in config.grid})
  return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"


def apply_overrides(config: CompareConfig, overrides: dict) -> CompareConfig:
  """``{"banel.filter_factor": 2.0, ...}`` -> a new config."""
  for path, value in overrides.items():
    section, field = path.split(".")
    config = config.replace(**{section: dataclasses.replace(getattr(config, section),
                                                            **{field: value})})
  return config


def tune(setup: TaskSetup, config: CompareConfig, methods, progress: bool,
         run_dir: str | os.PathLike | None = None,
         out: str | os.PathLike | None = None) -> tuple[CompareConfig, dict]:
  """Runs every method's grid on the tuning seeds; returns the picks applied.

  The grid runs at :attr:`CompareConfig.tuning_run` (the addition attack tunes
  at a smaller budget than it reports), without the large final evaluation
  (picks use the ``n_eval`` rate); the picks are applied to ``config`` itself.
  With ``run_dir``, grid point ``i`` of a method runs (resumably) in
  ``run_dir/tune/<method>_<i>``. With ``out``, ``out/tuning.json`` is
  rewritten after every point with the points so far and their settings, and
  the points it already holds (same settings) load from it instead of
  running: a grid too long for one sitting grows across sessions. A point
  that stops on its own failure mode (:data:`STOPS`) is recorded with its
  error and never picked.
  """
  tune_config = config.replace(run=config.tuning_run, final_eval_samples=0)
  record = {"seeds": list(config.tuning_seeds),
            "criterion": "mean final success rate (a stopped point is never "
                         "picked)",
            "run": jsonable(tune_config.run), "methods": {}}
  path = None if out is None else pathlib.Path(out) / "tuning.json"
  recorded = recorded_points(path) if path is not None else {}
  chosen = config
  for name, axes in config.grid:
    if name not in methods:
      continue
    points = []
    entry = record["methods"][name] = {"grid": [[a, list(v)] for a, v in axes],
                                       "points": points}
    for i, overrides in enumerate(grid_points(axes)):
      point_dir = (None if run_dir is None
                   else os.path.join(run_dir, "tune", f"{name}_{i}"))
      key = (name, json.dumps(jsonable(overrides), sort_keys=True))
      point = {"overrides": overrides}
      try:
        res = run_method(name, setup, apply_overrides(tune_config, overrides),
                         config.tuning_seeds, progress, final_eval_only=True,
                         run_dir=point_dir, recorded=recorded.get(key))
      except tuple(STOPS.values()) as err:
        points.append({**point, "mean": None, **stop_record(err)})
        print(f"  tune {LABELS[name]:15s} {overrides} -> stopped: "
              f"{type(err).__name__}", flush=True)
      else:
        final = res["final_success_rate"]
        points.append({**point, "final_success_rate": final,
                       "mean": float(np.mean(final)),
                       "wall_time_s": res["wall_time_s"],
                       "settings": res["settings"]})
        loaded = res.get("loaded_from")
        print(f"  tune {LABELS[name]:15s} {overrides} -> {np.mean(final):.4f} "
              f"({res['wall_time_s']:.0f}s"
              + (f"; finished earlier, loaded from {loaded})" if loaded else ")"),
              flush=True)
      if path is not None:
        common.write_json(path, {**invocation(), **record})
    finished = [p for p in points if p["mean"] is not None]
    if not finished:
      raise ExperimentError(f"every grid point of {name} stopped: "
                            + "; ".join(p["message"] for p in points))
    entry["chosen"] = max(finished, key=lambda p: p["mean"])["overrides"]
    chosen = apply_overrides(chosen, entry["chosen"])
  return chosen, record


def read_record(path: str | os.PathLike) -> dict:
  """A study's JSON record (``comparison.json``, ``tuning.json``,
  ``scaling.json``); empty when the file does not exist.

  Raises:
    ExperimentError: the file is not a JSON object (named, with what to do).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    return {}
  try:
    saved = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    saved = err
  if not isinstance(saved, dict):
    raise ExperimentError(f"{path} is not a study's record (not a JSON object: "
                          f"{saved}): move it aside, or write to another --out")
  return saved


def recorded_points(path: str | os.PathLike) -> dict:
  """The grid points recorded in ``path`` (a ``tuning.json``) with their
  settings, by ``(method, overrides as sorted JSON)``, in the form
  :func:`run_method` loads (``recorded``)."""
  path = pathlib.Path(path)
  saved = read_record(path)
  found = {}
  for name, entry in saved.get("methods", {}).items():
    for p in entry.get("points", []):
      if "settings" not in p:
        continue
      key = (name, json.dumps(p["overrides"], sort_keys=True))
      found[key] = loadable(p, str(path), None if "error" in p else {
          "final_success_rate": p["final_success_rate"],
          "wall_time_s": p["wall_time_s"]})
  return found


# ---------------------------------------------------------------------------
# The canonical summary and its statistics.

# compare's method names -> the ids of summary.json
METHOD_IDS = {"banel": "banel_paper", "banel_default": "banel_default",
              "banel_support": "banel_support", "banel_replay": "banel_replay",
              "reinforce": "reinforce", "rnd": "rnd", "pseudo_count": "pseudo_counts",
              "exact_count": "exact_counts", "unlikelihood": "unlikelihood",
              "exact_rejection": "exact_rejection", "self_imitation": "self_imitation"}


def task_id(config: CompareConfig) -> str:
  """``toy1d``, ``addition_msb`` or ``addition_lsb`` (by the target's order)."""
  if config.task == "toy1d":
    return "toy1d"
  return "addition_msb" if config.target == "target_msb" else "addition_lsb"


def final_rates(run: dict) -> list[float]:
  """Each seed's final rate: the large final evaluation where there is one."""
  if run.get("final_large_eval"):
    return [e["rate"] for e in run["final_large_eval"]]
  return list(run["final_success_rate"])


def statistics(values, reference=None) -> dict:
  """Mean, median, std, bootstrap 95% intervals of the mean and the median,
  and the Mann-Whitney U test (two-sided) against ``reference``."""
  v = np.asarray(values, np.float64)
  out = {"mean": float(v.mean()), "median": float(np.median(v)),
         "std": float(v.std()),
         "mean_ci95": list(harness.bootstrap_ci(v, np.mean)),
         "median_ci95": list(harness.bootstrap_ci(v, np.median))}
  if reference is not None:
    from scipy.stats import mannwhitneyu
    ref = np.asarray(reference, np.float64)
    if np.ptp(np.concatenate([v, ref])) == 0:
      out["mann_whitney_p_vs_banel"] = 1.0
    else:
      out["mann_whitney_p_vs_banel"] = float(
          mannwhitneyu(ref, v, alternative="two-sided").pvalue)
  return out


def canonical_task(config: CompareConfig, runs: dict, pretrained: dict) -> dict:
  """The comparison's task entry of ``summary.json``, with statistics of the
  final improvement per method (Mann-Whitney against BaNEL (paper))."""
  rate0 = pretrained["rate"]
  methods = {}
  reference = None
  if "banel" in runs:
    reference = np.asarray(final_rates(runs["banel"])) / rate0
  for name, run in runs.items():
    entry = common.method_entry(
        label=LABELS[name], uses_successes=name in USES_SUCCESSES,
        task_knowledge=name == "banel_support", seeds=config.seeds,
        final=final_rates(run), best=run["best_success_rate"], pretrained_rate=rate0)
    imp = entry["improvement_final"]
    entry["statistics_final"] = statistics(
        imp, None if name == "banel" else reference)
    entry["statistics_best"] = statistics(entry["improvement_best"])
    entry["share_10x"] = float(np.mean(np.asarray(imp) >= 10.0))
    entry["share_below_1x"] = float(np.mean(np.asarray(imp) < 1.0))
    methods[METHOD_IDS[name]] = entry
  out = {"nre_budget": config.run.nre_budget,
          "pretrained_rate": rate0,
          "pretrained_samples": pretrained["estimate"]["trials"],
          "pretrained_source": pretrained.get("source", "measured here"),
          "methods": methods}
  versus = against_best_bonus(methods)
  if versus:
    out["banel_vs_best_bonus"] = versus
  return out


# summary.json's ids of BaNEL's rows and of the novelty bonuses
BANEL_IDS = ("banel_paper", "banel_default", "banel_support")
BONUS_IDS = ("rnd", "pseudo_counts", "exact_counts")


def against_best_bonus(methods: dict) -> dict:
  """Every BaNEL row's median improvement against the best novelty bonus's:
  for the final and the best-so-far rates, the bonus with the highest median
  over seeds, both medians and their ratio (``None`` when the bonus's median
  is 0). Empty without a BaNEL row or a bonus.

  >>> m = {"banel_paper": {"improvement_final": [1, 2, 3], "improvement_best": [4, 4, 4]},
  ...      "rnd": {"improvement_final": [4, 4, 4], "improvement_best": [2, 2, 2]},
  ...      "pseudo_counts": {"improvement_final": [1, 1, 1], "improvement_best": [8, 8, 8]}}
  >>> v = against_best_bonus(m)["banel_paper"]
  >>> v["final"]["bonus"], v["final"]["ratio"], v["best"]["bonus"], v["best"]["ratio"]
  ('rnd', 0.5, 'pseudo_counts', 0.5)
  """
  bonuses = [k for k in BONUS_IDS if k in methods]
  out = {}
  for banel in (k for k in BANEL_IDS if k in methods):
    out[banel] = {}
    for which in ("final", "best"):
      med = {k: float(np.median(methods[k][f"improvement_{which}"])) for k in bonuses}
      if not med:
        continue
      bonus = max(med, key=med.get)
      own = float(np.median(methods[banel][f"improvement_{which}"]))
      out[banel][which] = {"bonus": bonus, "banel_median": own,
                           "bonus_median": med[bonus],
                           "ratio": own / med[bonus] if med[bonus] > 0 else None}
  return {k: v for k, v in out.items() if v}


def against_best_bonus_lines(task: dict) -> list[str]:
  """README sentences of :func:`against_best_bonus` (empty when there is none)."""
  label = {k: e["label"] for k, e in task["methods"].items()}
  lines = []
  for banel, v in task.get("banel_vs_best_bonus", {}).items():
    parts = []
    for which, what in (("final", "final"), ("best", "best-so-far")):
      c = v[which]
      ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2g}"
      parts.append(f"{what} {c['banel_median']:.3g}x against {label[c['bonus']]}'s "
                   f"{c['bonus_median']:.3g}x (ratio {ratio})")
    lines.append(f"- {label[banel]}: " + "; ".join(parts) + ".")
  if lines:
    lines = ["**Against the best novelty bonus** (median improvement over seeds; "
             "the bonus with the higher median):", "", *lines, ""]
  return lines


# ---------------------------------------------------------------------------
# Table and plot.


def method_settings(name: str, config: CompareConfig) -> dict:
  """The tuned knobs of method ``name`` (what its table row shows)."""
  if name not in METHOD_SECTIONS:
    return {}
  section = METHOD_SECTIONS[name][0]  # the method's own config section
  fields = dict(config.grid).get(section, ())  # banel_support: BaNEL's knobs
  cfg = getattr(config, section)
  out = {a.split(".")[1]: getattr(cfg, a.split(".")[1]) for a, _ in fields}
  if name == "banel_replay":  # BaNEL's picks and the bank's settings
    r = config.success_replay
    out.update(replay_bank_size=r.bank_size, replay_weight=r.weight)
  if name == "banel_default":  # BaNEL's picks and the suite's changes on top
    from banel_jax.experiments.suite import TUNED, with_tuned_defaults
    cfg = with_tuned_defaults(cfg)
    out.update({k: getattr(cfg, k) for k in TUNED})
  if section == "banel" and cfg.tau_mode == "calibrated":
    # the filter factor is unused in calibrated mode: show what sets tau instead
    out.pop("filter_factor", None)
    out = {"tau_mode": "calibrated",
           "calibrated_reject_fraction": cfg.calibrated_reject_fraction, **out}
  return out


def summarize_run(name: str, run: dict, pretrained: dict,
                  config: CompareConfig) -> dict:
  """The table row of method ``name`` from its :func:`run_method` record."""
  from banel_jax.core.metrics import summarize_over_seeds
  hist = run["history"]
  final = np.asarray(run["final_success_rate"])
  best = np.asarray(run["best_success_rate"])
  # No success among the pretrained samples: 1 / trials bounds the rate, so
  # improvements are then lower bounds.
  rate0 = max(pretrained["rate"], 1.0 / pretrained["estimate"]["trials"])
  distinct = [h["n_distinct_train"] for h in hist if "n_distinct_train" in h]
  row = {
      "method": LABELS[name], "key": name,
      "settings": method_settings(name, config),
      "final": summarize_over_seeds(final), "best": summarize_over_seeds(best),
      "final_per_seed": final.tolist(),
      "improvement_final_mean": float(final.mean() / rate0),
      "improvement_best_mean": float(best.mean() / rate0),
      "wall_time_s": run["wall_time_s"],
      "nre_spent": run["nre_spent"], "eval_calls": run["eval_calls"],
      "n_successes_found_in_training": run["n_successes_found_in_training"],
      "distinct_per_round_mean": _mean_scored(distinct),
      "distinct_per_round_last": _mean_scored(distinct[-1:]),
  }
  if any(f is not None for f in run.get("frozen_at") or ()):
    row["frozen_at"] = run["frozen_at"]
  if name == "banel_support":
    row["task_knowledge"] = True  # the grammar, which no other method is given
  if name in USES_SUCCESSES:
    row["uses_successes"] = True
  if run.get("final_large_eval"):
    large = np.asarray([e["rate"] for e in run["final_large_eval"]])
    row["final_large_eval"] = {"per_seed": run["final_large_eval"],
                               "summary": summarize_over_seeds(large),
                               "improvement_mean": float(large.mean() / rate0)}
  mal = [h["malformed_train"] for h in hist if "malformed_train" in h]
  row["malformed_train"] = _mean_scored(mal)
  exact = [h["exact_success_rate"] for h in hist if "exact_success_rate" in h]
  if exact:
    row["final_exact"] = summarize_over_seeds(exact[-1])
  return row


def _fmt(v, digits=4):
  if v is None:
    return "n/a"
  if isinstance(v, float):
    return f"{v:.{digits}f}"
  return str(v)


def markdown_table(rows: list[dict], pretrained: dict, config: CompareConfig) -> str:
  """The comparison's Markdown table (the pretrained model first)."""
  run = config.run
  has_exact = any("final_exact" in r for r in rows)
  has_large = any("final_large_eval" in r for r in rows)
  head = ["method", "final mean", "median", "std", "best mean", "improvement"]
  if has_exact:
    head.append("exact final mean")
  if has_large:
    head.append(f"final mean ({config.final_eval_samples} samples)")
  head += ["malformed", "distinct / round (mean, last)", "wall (s)", "settings"]
  lines = [f"{config.task}: NRE budget {run.nre_budget}, m = "
           f"{run.samples_per_round}, n_eval = {run.n_eval}, {len(config.seeds)} "
           "seeds (vmap); success rates on fresh samples; improvement = final "
           "mean / pretrained rate"
           + (" (a lower bound: no pretrained success seen)"
              if pretrained["estimate"]["successes"] == 0 else "") + ".", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  pre = pretrained["rate"]
  pre_row = ["pretrained", _fmt(pre), "-", "-", "-", "1.0x"]
  if has_exact:
    pre_row.append(_fmt(pretrained.get("exact_rate")))
  if has_large:
    pre_row.append(_fmt(pre, 6))
  d = pretrained.get("distinct_per_round")
  pre_row += [_fmt(pretrained.get("malformed"), 3),
              f"{d:.1f}" if d is not None else "-", "-",
              f"{pretrained['estimate']['trials']} samples"]
  lines.append("| " + " | ".join(pre_row) + " |")
  for r in rows:
    cells = [r["method"], _fmt(r["final"]["mean"]), _fmt(r["final"]["median"]),
             _fmt(r["final"]["std"]), _fmt(r["best"]["mean"]),
             f"{r['improvement_final_mean']:.1f}x"]
    if has_exact:
      cells.append(_fmt(r["final_exact"]["mean"]) if "final_exact" in r else "n/a")
    if has_large:
      cells.append(_fmt(r["final_large_eval"]["summary"]["mean"], 6)
                   if "final_large_eval" in r else "-")
    d_mean, d_last = r["distinct_per_round_mean"], r["distinct_per_round_last"]
    cells += [_fmt(r["malformed_train"], 3),
              f"{d_mean:.1f}, {d_last:.1f}" if d_mean is not None else "n/a",
              f"{r['wall_time_s']:.0f}",
              ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def ci_cell(stats: dict, key: str) -> str:
  """``stats[key]`` with its bootstrap 95% interval (``stats[key + "_ci95"]``),
  as a table cell: ``"3.48x [2.38, 4.86]"``."""
  lo, hi = stats[f"{key}_ci95"]
  return f"{stats[key]:.3g}x [{lo:.3g}, {hi:.3g}]"


def statistics_table(task: dict) -> str:
  """The reviewer's table from a ``summary.json`` task entry: per method the
  median and mean final improvement with bootstrap 95% intervals, the shares
  of seeds at least 10x and below 1x, the median best-so-far, and the
  Mann-Whitney p-value against BaNEL (paper)."""
  ci = ci_cell
  lines = ["| method | seeds | median improvement [95% CI] | mean improvement "
           "[95% CI] | >= 10x | < 1x | best-so-far median | p vs BaNEL (paper) |",
           "|---|---|---|---|---|---|---|---|"]
  for entry in task["methods"].values():
    st = entry["statistics_final"]
    p = st.get("mann_whitney_p_vs_banel")
    lines.append(
        f"| {entry['label']} | {len(entry['seeds'])} | {ci(st, 'median')} | "
        f"{ci(st, 'mean')} | {entry['share_10x']:.0%} | "
        f"{entry['share_below_1x']:.0%} | "
        f"{entry['statistics_best']['median']:.3g}x | "
        + ("-" if p is None else f"{p:.2g}") + " |")
  return "\n".join(lines)


def stopped_lines(stopped: dict) -> list[str]:
  """README lines naming the methods that stopped mid-run, and why."""
  if not stopped:
    return []
  where = ("the rounds before the stop are in `comparison.json` under `stopped` "
           "and dashed in the plot"
           if all(v.get("history") for v in stopped.values())
           else "the per-round records are in the run directory")
  return [f"**Stopped** (no final rate; {where}):", "",
          *(f"- {v['label']}: `{v['error']}`: {' '.join(v['message'].split())}"
            for v in stopped.values()), ""]


def frozen_lines(rows: list[dict], seeds: Sequence[int], budget: int) -> list[str]:
  """README lines naming each method's seeds that froze (their regions left
  distillation too few samples): when, and what they had spent."""
  lines = []
  for row in rows:
    frozen = [(seed, at, spent) for seed, at, spent in
              zip(seeds, row.get("frozen_at") or (), row["nre_spent"])
              if at is not None]
    if frozen:
      lines.append(f"- {row['method']}: {len(frozen)} of {len(seeds)} "
                   "seeds; " + ", ".join(f"seed {s} in round {at} ({spent:,} NRE)"
                                         for s, at, spent in frozen) + ".")
  if not lines:
    return []
  return [f"**Frozen seeds** (each kept the generator of the round before its "
          f"freeze, which gives its final rate, and spent no more of its "
          f"{budget:,} NRE):", "", *lines, ""]


def write_readme(out: pathlib.Path, config: CompareConfig, summary: dict,
                 task: dict, table: str, wall: float) -> None:
  """``out/README.md`` from the figures (keeps the observations block)."""
  run = config.run
  source = task.get("pretrained_source", "measured here")
  lines = [
      f"# {config.task}: BaNEL against the baselines", "",
      f"**What.** Every method in the same harness on `{task_id(config)}`: NRE "
      f"budget {run.nre_budget:,}, m = {run.samples_per_round}, evaluation on "
      f"{run.n_eval:,} fresh samples every {run.eval_every} round(s), seeds "
      f"{list(config.seeds)} side by side. Improvement = final rate / the one "
      f"pretrained rate {task['pretrained_rate']:.4g} "
      f"({task['pretrained_samples']:,} samples; {source}).", "",
      "**Command.**", "", "```", summary.get("command", "banel compare"), "```",
      "", "Rerun into this folder, the command loads the runs recorded in "
      "`comparison.json` (where their settings are unchanged) and runs only the "
      "missing methods; with another `--out` it runs every method again.", "",
      "**Config.** `comparison.json` holds every setting. Tuning: "
      + (f"each tuned method's grid ({grid_sizes(config)} points) ran on seeds "
         f"{list(config.tuning_seeds)} at NRE {config.tuning_run.nre_budget:,}; "
         "its pick (the best mean final rate) is what ran here (`tuning.json`)."
         if isinstance(summary.get("tuning"), dict) else
         "no grid ran here: every method used the picks its preset holds "
         "(`banel compare --help` lists them and where they were made)."), "",
      "**Statistics** (final improvement over seeds).", "",
      statistics_table(task), "",
      *against_best_bonus_lines(task),
      *stopped_lines(summary.get("stopped", {})),
      *frozen_lines(summary["rows"], config.seeds, run.nre_budget),
      *common.readme_tail(
          out, table, table_note="(`comparison.md`; rates on fresh samples)",
          wall=(f"{wall / 3600:.1f} hours" if wall >= 3600
                else f"{wall / 60:.1f} minutes"),
          summed_over="the methods, resumed runs included")]
  (out / "README.md").write_text("\n".join(lines))


def plot(runs: dict, pretrained: dict, path: str | os.PathLike, title: str,
         stopped: dict | None = None) -> None:
  """Success rate against NRE of every method: median over seeds with the
  inter-quartile band; a method that stopped (``stopped``, with the rounds
  before its stop) is drawn dashed up to the stop, which is marked x."""
  from banel_jax import plotting
  fig, ax = plotting.new_axes(figsize=(10, 4.5))
  colors = [f"C{i}" for i in range(10)]
  curves = [(name, run["history"], False) for name, run in runs.items()]
  curves += [(name, stop["history"], True) for name, stop in (stopped or {}).items()
             if stop.get("history")]
  for i, (name, history, stop) in enumerate(curves):
    recs = [h for h in history if "success_rate" in h]
    if not recs:
      continue
    nre = np.array([np.mean(h["nre"]) for h in recs], float)
    rate = np.array([h["success_rate"] for h in recs], float)
    c = colors[i % len(colors)]
    median = np.median(rate, axis=1)
    ax.plot(nre, median, marker=".", color=c, ls="--" if stop else "-",
            label=LABELS[name] + (" (stopped: x)" if stop else ""))
    ax.fill_between(nre, np.percentile(rate, 25, axis=1),
                    np.percentile(rate, 75, axis=1), color=c, alpha=0.12)
    if stop:
      ax.plot(nre[-1:], median[-1:], marker="x", ms=10, mew=2, color=c, ls="")
  ax.axhline(pretrained["rate"], color="k", ls=":", lw=1, label="pretrained")
  ax.set_yscale("log")
  ax.set_xlabel("reward evaluations spent on learning (NRE)")
  ax.set_ylabel("success rate (median over seeds; band: quartiles)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # off the curves
  plotting.save_figure(fig, path)


# ---------------------------------------------------------------------------
# The command.


def run(config: CompareConfig, out: str | os.PathLike, progress: bool = True) -> dict:
  """Runs the comparison of ``config``; writes the files of the module
  docstring to ``out`` and returns the summary written to ``comparison.json``
  (without the per-round histories, which are in the file)."""
  if not isinstance(config, CompareConfig):
    raise TypeError(f"config must be a CompareConfig, got {type(config).__name__}")
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  setup = SETUPS[config.task](config)
  methods = list(config.method_list)
  t_start = time.perf_counter()
  if config.run_dir is not None:
    os.makedirs(config.run_dir, exist_ok=True)

  tuning = None
  if config.tune:
    print(f"tuning on seeds {list(config.tuning_seeds)} ...", flush=True)
    config, tuning = tune(setup, config, methods, progress, config.run_dir, out)
    tuning = {**invocation(), **tuning}
    common.write_json(out / "tuning.json", tuning)

  pretrained = pretrained_rate(setup, config, config.run_dir)
  print(f"pretrained: {pretrained['rate']:.4g} on "
        f"{pretrained['estimate']['trials']} samples"
        + (f" ({pretrained['source']})" if "source" in pretrained else ""), flush=True)
  recorded = recorded_runs(out)
  runs, stopped = {}, {}

  def attempt(name: str, load_only: bool) -> None:
    method_dir = (None if config.run_dir is None
                  else os.path.join(config.run_dir, name))
    try:
      res = run_method(name, setup, config, config.seeds, progress,
                       run_dir=method_dir, recorded=recorded.get(name),
                       load_only=load_only)
    except tuple(STOPS.values()) as err:
      # The method's own failure mode, mid-run: it is a result, and the other
      # methods go on. Its paid calls stay in its run directory; its rounds
      # before the stop are kept with the stop (comparison.json, the plot).
      stopped[name] = {"label": LABELS[name], **stop_record(err, history=True)}
      print(f"{LABELS[name]}: stopped: {type(err).__name__}: {err}", flush=True)
      return
    if res is None:
      return
    runs[name] = res
    loaded = res.get("loaded_from")
    print(f"{LABELS[name]}: final {np.round(res['final_success_rate'], 4).tolist()} "
          f"({res['wall_time_s']:.0f}s)"
          + (f"; finished earlier, loaded from {loaded}" if loaded else ""),
          flush=True)

  # What finished earlier first (nothing runs), then the rest, the folder
  # rewritten after each: a kill loses no finished method.
  for name in methods:
    attempt(name, load_only=True)
  for name in methods:
    if name not in runs and name not in stopped:
      if runs:
        write_outputs(out, config, methods, runs, stopped, pretrained, tuning,
                      t_start)
      print(f"running {LABELS[name]} ...", flush=True)
      attempt(name, load_only=False)
  if not runs:
    raise ExperimentError("every method stopped: " + "; ".join(
        f"{v['label']}: {v['error']}: {v['message']}" for v in stopped.values()))
  summary = write_outputs(out, config, methods, runs, stopped, pretrained,
                          tuning, t_start)
  print(summary["table"])
  print(f"wrote {out}/")
  return {k: v for k, v in summary.items() if k != "table"}


def write_outputs(out: pathlib.Path, config: CompareConfig, methods: list[str],
                  runs: dict, stopped: dict, pretrained: dict,
                  tuning: dict | None, t_start: float) -> dict:
  """Writes the folder's files for the runs so far (in ``methods``' order);
  returns the summary of ``comparison.json`` with the ``table``."""
  runs = {k: runs[k] for k in methods if k in runs}
  stopped = {k: stopped[k] for k in methods if k in stopped}
  rows = [summarize_run(name, run, pretrained, config) for name, run in runs.items()]
  table = markdown_table(rows, pretrained, config)
  summary = {**invocation(),
             "task": config.task, "config": config_to_dict(config),
             "task_config": jsonable(config.task_config()),
             "grid": jsonable(config.grid), "methods": methods,
             "pretrained": pretrained, "rows": rows,
             "tuning": (tuning if tuning is not None else
                        "the grid's picks (banel_jax.experiments.compare)"),
             # the runs' own time, summed over the processes that resumed them
             "total_wall_time_s": float(sum(r["wall_time_s"] for r in runs.values())),
             "this_invocation_wall_time_s": time.perf_counter() - t_start}
  if stopped:
    summary["stopped"] = stopped
  # every run's whole record, with its settings: a rerun into this folder
  # loads what it holds (recorded_runs)
  common.write_json(out / "comparison.json", {**summary, "runs": {
      k: {f: x for f, x in v.items() if f != "loaded_from"}
      for k, v in runs.items()}})
  (out / "comparison.md").write_text(table + "\n")
  wall = summary["total_wall_time_s"]
  task = canonical_task(config, runs, pretrained)
  common.write_summary(out, name=out.name,
                       command=invocation().get("command", "banel compare"),
                       wall_time_s=wall, tasks={task_id(config): task})
  write_readme(out, config, summary, task, table, wall)
  plot(runs, pretrained, out / "success_vs_nre.png",
       f"{config.task}: success rate vs NRE (same budget, m, evaluation)", stopped)
  return {**summary, "table": table}


COMMAND = register(Command(
    name="compare",
    help="BaNEL against the baselines in the same harness: one table, one plot.",
    config_cls=CompareConfig, presets=PRESETS, default_preset="toy1d", run=run,
    check=check_against_preset))
