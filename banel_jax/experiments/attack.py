"""BaNEL attack on the digit-addition transformer (the paper's table).

An attacker transformer, pretrained to write addition queries, learns from its
failures alone to write queries that the target transformer answers wrongly,
under a hard budget of reward evaluations (NRE). Seeds run side by side under
``vmap``; on a CPU each seed gets a CPU device of its own (``--host-devices``).

Writes to ``--out``:

* ``attack.json``: config; the pretrained attacker's rate (Clopper-Pearson
  interval); per seed the final and best-so-far success rates and improvement
  factors, with mean / median / std over seeds; wall time; examples of
  successful attacks; what the method learned (leading zeros, carry chains,
  operand lengths, against the pretrained attacker); rule-based attacks built
  from those patterns, with their success rates;
* ``metrics.jsonl``: one record per round;
* ``success_vs_nre.png``.

The target and the pretrained attacker ship with the package (``--target
target``, ``--target target_msb``, ``--attacker attacker``); a path names a
checkpoint of ``banel train-target`` or ``banel pretrain-attacker``, and
``--train-missing`` trains one that is missing first.

Not the paper's algorithm, and off unless asked for: ``--support-check`` (the
query grammar as a free validity check), ``--seen-failures`` (reject every
query already paid for and failed), ``--success-replay`` (successes join
distillation; ``--replay.bank-size``, ``--replay.weight``,
``--replay.distinct``) and ``--restart-every R`` (restart a seed with no
success after R rounds). ``--method self-imitation`` runs the self-imitation
baseline in the same harness instead of BaNEL: no failure model, no regions;
it fits the latest ``--self-imitation.bank-size`` successes, each weighing
``--self-imitation.success-weight``, beside fresh samples of itself.

Presets: ``full`` (NRE 7,500, 5 seeds, the paper's size, on the reversed-order
target), ``quick`` (the README's main job: the normal-order target, 2 seeds, NRE
2,000, minutes on 2 CPU cores), ``quick-lsb`` (the same on the reversed-order
target, the documented negative result) and ``tiny`` (tests: seconds).

Examples:
  banel attack --preset quick
  banel attack --preset full --no-allow-leading-zeros --banel.failure-epochs 20
  banel attack --preset full --target target_msb --success-replay \\
      --replay.bank-size 256 --replay.weight 100
  banel attack --preset full --method self-imitation --support-check
  banel attack --preset quick --run-dir runs/attack_run     # resumable
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Literal

import numpy as np

from banel_jax.baselines.self_imitation import SelfImitationConfig
from banel_jax.core.config import BanelConfig, config_to_dict
from banel_jax.experiments import common
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)
from banel_jax.extensions.success_replay import SuccessReplayConfig

METHODS = ("banel", "self-imitation")
# BanelConfig's fields that the self-imitation method reads too (the run)
RUN_FIELDS = ("nre_budget", "samples_per_round", "n_eval", "eval_every")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """An attack run.

  The ``full`` preset's BaNEL settings: the threshold calibrated to reject half
  of fresh proposal samples per region, 30 failure-model epochs (the
  compute-scaling study gave 1.0x, 1.4x, 1.0x and 2.6x at 1, 3, 10 and 30
  epochs; ``results/compute_scaling`` at commit ``3a3529a``), distillation of
  2,048 samples over 2 epochs. ``docs/findings.md`` tells what runs made with it and its variants found.

  Attributes:
    method: ``banel``, or the self-imitation baseline (fit the successes found
      so far, upweighted, with no failure model; the run's budget and
      evaluation come from ``banel``, the fit from ``self_imitation``).
    seeds: seeds run side by side under ``vmap``.
    banel: BaNEL's config.
    allow_leading_zeros: operands with leading zeros are well-formed (off: the
      harder variant, where they are malformed).
    support_check: give BaNEL the query grammar as a free validity check
      (task knowledge): malformed queries, which score 0 whatever the target
      says, are never distilled into the proposal. With self-imitation: its
      anchors outside the grammar are not fitted.
    seen_failures: reject every query already paid for and failed (exact
      match; the target answers deterministically), so the proposal cannot
      settle on a known failure that the regions miss.
    success_replay: not the paper's algorithm: successes found in training
      join distillation, as set by ``replay``.
    replay: the success replay's bank, weight and distinctness (with
      ``success_replay``).
    restart_every: not the paper's algorithm: a seed with no success after
      this many rounds restarts its search (the pretrained attacker again,
      every region dropped), and again every as many rounds until it finds
      one. 0: never.
    self_imitation: the self-imitation baseline's fit (with
      ``method="self-imitation"``).
    target: the target's checkpoint: a shipped name (``target``,
      ``target_msb``) or a directory of ``banel train-target``.
    attacker: the pretrained attacker's checkpoint: ``attacker`` (shipped) or
      a directory of ``banel pretrain-attacker``.
    train_missing: train a target or attacker whose directory is missing
      (``banel train-target`` / ``pretrain-attacker`` defaults) first.
    calibration: the pretrained attacker's rate: ``shipped`` reuses the
      calibration shipped with the checkpoints, a path reuses a JSON of
      ``banel calibrate``, in both cases only when made from the same target
      and attacker; otherwise (or with ``""``) it is measured here on
      ``pretrained_samples`` queries.
    pretrained_samples: queries that measure the pretrained attacker's rate
      (>= 200,000 for a tight interval near 1e-4).
    analysis: analyse what the method learned (patterns against the
      pretrained attacker) and run the rule-based attacks.
    analysis_samples: samples per seed for the pattern analysis.
    rule_samples: queries per rule-based attack.
    run_dir: resumable run directory (orbax checkpoints every round, the
      oracle ledger, metrics); rerun the same command to resume after a crash
      or kill without asking again any query paid for.
    host_devices: on a CPU backend, the JAX CPU devices the seeds are split
      over (as many as divide the seeds evenly, each running its own seeds as
      one program; the cores are shared among them); ``auto``: one per seed;
      1: every seed in one program batched over the seeds. Not applied when
      ``XLA_FLAGS`` sets ``--xla_force_host_platform_device_count`` (that
      wins), nor on a GPU or TPU, where the seeds run on the accelerators.
  """

  method: Literal["banel", "self-imitation"] = "banel"
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  banel: BanelConfig = BanelConfig.paper(
      mode="distilled", nre_budget=7500, samples_per_round=500,
      tau_mode="calibrated", calibrated_reject_fraction=0.5, filter_factor=2.0,
      failure_init="proposal", failure_epochs=30, failure_batch_size=100,
      failure_learning_rate=1e-3,
      distill_samples=2048, distill_epochs=2, distill_batch_size=256,
      distill_learning_rate=1e-3, distill_reset=False,
      n_eval=10_000, eval_every=5, min_acceptance_rate=1e-4,
      region_strategy="loop", train_microbatch="auto")
  allow_leading_zeros: bool = True
  support_check: bool = False
  seen_failures: bool = False
  success_replay: bool = False
  replay: SuccessReplayConfig = SuccessReplayConfig()
  restart_every: int = 0
  self_imitation: SelfImitationConfig = SelfImitationConfig(
      bank_size=256, success_weight=100.0, anchor_samples=2048, epochs=2,
      batch_size=256, learning_rate=1e-3, train_microbatch="auto")
  target: str = "target"
  attacker: str = "attacker"
  train_missing: bool = False
  calibration: str = "shipped"
  pretrained_samples: int = 200_000
  analysis: bool = True
  analysis_samples: int = 10_000
  rule_samples: int = 10_000
  run_dir: str | None = None
  host_devices: int | Literal["auto"] = "auto"

  def __post_init__(self):
    name = "AttackConfig"
    if self.method not in METHODS:
      raise ExperimentError(f"{name}.method={self.method!r} must be one of "
                            f"{', '.join(METHODS)}")
    if not isinstance(self.seeds, tuple) or not self.seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0
        for s in self.seeds):
      raise ExperimentError(f"{name}.seeds={self.seeds!r} must be a non-empty "
                            "tuple of integers >= 0")
    if len(set(self.seeds)) != len(self.seeds):
      raise ExperimentError(f"{name}.seeds={self.seeds!r} names a seed twice")
    for field in ("pretrained_samples", "analysis_samples", "rule_samples"):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ExperimentError(f"{name}.{field}={v!r} must be an integer >= 1")
    if isinstance(self.restart_every, bool) or not isinstance(
        self.restart_every, int) or self.restart_every < 0:
      raise ExperimentError(f"{name}.restart_every={self.restart_every!r} must be "
                            "an integer >= 0 (0: never restart)")
    if not (self.host_devices == "auto" or (
        isinstance(self.host_devices, int) and not isinstance(self.host_devices, bool)
        and self.host_devices >= 1)):
      raise ExperimentError(f"{name}.host_devices={self.host_devices!r} must be "
                            "'auto' or an integer >= 1")
    for field in ("target", "attacker"):
      if not isinstance(getattr(self, field), str) or not getattr(self, field):
        raise ExperimentError(f"{name}.{field}={getattr(self, field)!r} must be a "
                              "shipped checkpoint's name or a directory")
    if self.replay != SuccessReplayConfig() and not self.success_replay:
      raise ExperimentError(
          f"{name}.replay={self.replay} is set but success_replay is off: pass "
          "--success-replay too")
    if self.method == "self-imitation":
      given = [flag for flag, on in (("--seen-failures", self.seen_failures),
                                     ("--success-replay", self.success_replay),
                                     ("--restart-every", self.restart_every))
               if on]
      if given:
        raise ExperimentError(
            f"--method self-imitation has no failure model or regions to extend: "
            f"drop {', '.join(given)} (it always fits its successes; size its bank "
            "with --self-imitation.bank-size)")

  def replace(self, **changes) -> "AttackConfig":
    return dataclasses.replace(self, **changes)

  def task_config(self):
    """The experiment's :class:`~banel_jax.tasks.addition.AdditionTaskConfig`
    (the target's shape and format come with its checkpoint when loaded)."""
    from banel_jax.tasks.addition import AdditionTaskConfig
    return AdditionTaskConfig(allow_leading_zeros=self.allow_leading_zeros)


def full_config() -> AttackConfig:
  """The paper-sized run: NRE 7,500, 5 seeds."""
  return AttackConfig()


def quick_config() -> AttackConfig:
  """The README's main job (minutes on 2 CPU cores): the normal-order target
  (``target_msb``: the sum written most significant digit first, whose weak
  modes are rare modes of the attacker's prior, as in the paper), 2 seeds, NRE
  2,000, evaluations of 5,000 samples."""
  return quick_lsb_config().replace(target="target_msb")


def quick_lsb_config() -> AttackConfig:
  """``quick`` on the reversed-order target (``target``: the sum written least
  significant digit first), the documented negative result: the paper's
  algorithm finds no weak mode of it to climb into."""
  base = AttackConfig()
  return base.replace(
      banel=base.banel.replace(nre_budget=2000, n_eval=5000, eval_every=2),
      seeds=(0, 1), pretrained_samples=50_000, analysis_samples=5000,
      rule_samples=2000)


def tiny_config() -> AttackConfig:
  """Seconds of training, for tests: tiny budgets and evaluations."""
  base = AttackConfig()
  return base.replace(
      banel=base.banel.replace(nre_budget=128, samples_per_round=64,
                               failure_epochs=1, failure_batch_size=32,
                               distill_samples=256, distill_epochs=1,
                               distill_batch_size=128, n_eval=256, eval_every=1),
      self_imitation=base.self_imitation.replace(anchor_samples=256, epochs=1,
                                                 batch_size=128),
      seeds=(0, 1), pretrained_samples=1024, analysis_samples=256, rule_samples=64)


PRESETS = {"full": full_config, "quick": quick_config, "quick-lsb": quick_lsb_config,
           "tiny": tiny_config}


def check_against_preset(config: AttackConfig, preset: AttackConfig) -> None:
  """Refuses settings changed from the preset that the method does not read,
  naming their flags (:attr:`Command.check`)."""
  if config.method == "self-imitation":
    changed = [f"--banel.{f.name.replace('_', '-')}"
               for f in dataclasses.fields(BanelConfig)
               if f.name not in RUN_FIELDS
               and getattr(config.banel, f.name) != getattr(preset.banel, f.name)]
    if changed:
      raise ExperimentError(
          f"--method self-imitation has no failure model or regions: drop "
          f"{', '.join(changed)} (it reads --banel.nre-budget, "
          "--banel.samples-per-round, --banel.n-eval and --banel.eval-every; set "
          "its fit with --self-imitation.*)")
  elif config.self_imitation != preset.self_imitation:
    changed = [f"--self-imitation.{f.name.replace('_', '-')}"
               for f in dataclasses.fields(SelfImitationConfig)
               if getattr(config.self_imitation, f.name)
               != getattr(preset.self_imitation, f.name)]
    raise ExperimentError(f"{', '.join(changed)} apply to --method self-imitation "
                          "only")


def extensions_of(config: AttackConfig, model, task) -> tuple:
  """The :mod:`banel_jax.extensions` plug-ins that ``config`` asks for, in a
  fixed order (support check, seen failures, success replay, restart)."""
  from banel_jax import extensions
  from banel_jax.tasks import addition
  out = []
  if config.support_check:
    out.append(extensions.support_check(addition.make_support(task),
                                        description="addition grammar"))
  if config.seen_failures:
    out.append(extensions.seen_failures(config.banel.nre_budget))
  if config.success_replay:
    r = config.replay
    out.append(extensions.success_replay(model, r.bank_size, distinct=r.distinct,
                                         weight=r.weight))
  if config.restart_every:
    out.append(extensions.restart(config.restart_every))
  return tuple(out)


def method_label(config: AttackConfig) -> str:
  """The plot's name for the method: BaNEL (or "no regions", when a fixed
  filter factor of 1e30 or more leaves every region empty), with what it was
  run with besides; or the self-imitation baseline with its bank."""
  if config.method == "self-imitation":
    si = config.self_imitation
    return f"self-imitation, bank {si.bank_size} (weight {si.success_weight:g})"
  c = config.banel
  plain = not (config.success_replay or config.seen_failures or config.restart_every
               or config.support_check)
  label = ("no regions" if c.tau_mode == "factor" and c.filter_factor >= 1e30
           else "BaNEL (paper)" if plain else "BaNEL")
  if config.success_replay:
    r = config.replay
    label += f" + bank {r.bank_size}" if r.bank_size else " + round's successes"
    if r.weight != 1.0:
      label += f" (weight {r.weight:g})"
  if config.seen_failures:
    label += " + seen failures"
  if config.restart_every:
    label += f" + restart {config.restart_every}"
  if config.support_check:
    label += " + support check (task knowledge)"
  return label


def method_id(config: AttackConfig) -> str:
  """The method's id in ``summary.json``: ``banel_paper`` for the paper's
  algorithm, ``banel_support`` / ``banel_replay`` / ... for one extension,
  ``banel_<a>_<b>`` for several, ``self_imitation`` for the baseline."""
  if config.method == "self-imitation":
    return "self_imitation"
  parts = [name for name, on in (("support", config.support_check),
                                 ("seen", config.seen_failures),
                                 ("replay", config.success_replay),
                                 ("restart", bool(config.restart_every))) if on]
  return "banel_" + ("_".join(parts) if parts else "paper")


# --- checkpoints and the pretrained rate ------------------------------------------

def ensure_checkpoints(config: AttackConfig, out: pathlib.Path,
                       progress: bool) -> None:
  """Trains the target or attacker whose directory is missing, with
  ``train_missing``; otherwise refuses naming the command that makes it."""
  from banel_jax.experiments import train
  for value, command, make in (
      (config.target, "train-target", train.run_train_target_into),
      (config.attacker, "pretrain-attacker", train.run_pretrain_attacker_into)):
    directory = common.checkpoint_dir(value)
    if directory.is_dir():
      continue
    if not config.train_missing:
      raise ExperimentError(
          f"no checkpoint at {directory}: make it with `banel {command} --out DIR` "
          f"(the checkpoint is DIR/checkpoint), or pass --train-missing")
    print(f"training the missing checkpoint {directory} (banel {command}) ...",
          flush=True)
    make(directory, out / command, progress)


def load_models(config: AttackConfig):
  """``(task, attacker Transformer, attacker params, target params)``; the
  target's shape and format come with its checkpoint."""
  from banel_jax.models import transformer as tfm
  from banel_jax.tasks import addition
  target_params, task = addition.load_target_for(common.checkpoint_dir(config.target),
                                                 config.task_config())
  attacker_params, _, _ = addition.load_attacker(common.checkpoint_dir(config.attacker))
  return task, tfm.make_transformer(task.attacker), attacker_params, target_params


def _recorded_facts_match(recorded: Any, actual: Any) -> bool:
  """Every value ``recorded`` holds equals ``actual``'s (dicts recursively)."""
  if isinstance(recorded, dict):
    return isinstance(actual, dict) and all(
        k in actual and _recorded_facts_match(v, actual[k])
        for k, v in recorded.items())
  return recorded == actual


def calibration_matches(cal: dict, target_dir, attacker_dir) -> bool:
  """Whether a calibration record was made from these two checkpoints: every
  fact it records of each (training steps, task, and with ``banel calibrate``
  the whole checkpoint metadata) equals the checkpoint's own."""
  from banel_jax.runtime import checkpoint
  try:
    for key, directory in (("target", target_dir), ("attacker", attacker_dir)):
      recorded = cal[key]
      facts = recorded.get("metadata") or {k: v for k, v in recorded.items()
                                           if k not in ("path", "checkpoint")}
      if not facts or not _recorded_facts_match(
          facts, checkpoint.load_metadata(directory)):
        return False
  except (KeyError, TypeError, AttributeError, checkpoint.CheckpointError):
    return False
  return True


def reuse_calibration(config: AttackConfig, task):
  """``(RateEstimate, source)`` of the pretrained rate from a calibration made
  from the same checkpoints, or ``(None, why)``."""
  from banel_jax.core.metrics import RateEstimate
  if not config.calibration:
    return None, "measured here"
  if config.calibration == "shipped":
    candidates = list(common.SHIPPED_CALIBRATIONS.values())
  else:
    candidates = [pathlib.Path(config.calibration)]
    if not candidates[0].is_file():
      raise ExperimentError(f"AttackConfig.calibration={config.calibration!r}: no "
                            "such file (a JSON of `banel calibrate`, 'shipped', or "
                            "'' to measure here)")
  target_dir = common.checkpoint_dir(config.target)
  attacker_dir = common.checkpoint_dir(config.attacker)
  variant = ("leading_zeros_allowed" if task.allow_leading_zeros
             else "leading_zeros_disallowed")
  for path in candidates:
    with open(path) as f:
      cal = json.load(f)
    if calibration_matches(cal, target_dir, attacker_dir):
      rate = cal[variant]["success"]
      source = (f"shipped calibration of {config.target}"
                if config.calibration == "shipped" else f"from {path}")
      return RateEstimate(**{k: rate[k] for k in ("successes", "trials", "rate",
                                                  "low", "high")}), source
  if config.calibration != "shipped":
    print(f"{config.calibration} was not made from these checkpoints: measuring "
          "the pretrained rate here", flush=True)
  return None, "measured here"


def sample_in_chunks(sample_fn, params, key, n: int, chunk: int = 8192) -> np.ndarray:
  """``n`` samples of a jitted ``sample_fn(params, key, chunk)``, in chunks."""
  import jax
  out = []
  for i, _ in enumerate(range(0, n, chunk)):
    out.append(np.asarray(sample_fn(params, jax.random.fold_in(key, i), chunk)))
  return np.concatenate(out)[:n]


def paid_sample_diagnostics(task, n_seeds: int):
  """An ``on_round`` hook recording, per seed, the malformed share, the
  both-operands-long share and the shares of the target's weak slices
  (top-sum-13, carry into the top, tops 4/5, carry propagation >= 3) of the
  round's scored samples (from ``BanelRunner.round_samples``, so a replayed
  round records the same)."""
  from banel_jax.tasks import addition
  from banel_jax.tasks import addition_patterns as patterns

  def on_round(runner, record):
    samples = runner.round_samples
    if "train" not in samples:
      return
    x, scored = samples["train"], samples["train_evaluated"]
    parts = [x[s][scored[s]] for s in range(n_seeds)]
    record["malformed_train"] = [
        float(1.0 - addition.is_well_formed(p, task.max_operand_len,
                                            task.allow_leading_zeros).mean())
        if len(p) else None for p in parts]
    record["both_long_train"] = [patterns.both_long_share(p, task) for p in parts]
    record["top_sum_13_train"] = [patterns.top_sum_13_share(p, task) for p in parts]
    record["carry_into_top_train"] = [patterns.carry_into_top_share(p, task)
                                      for p in parts]
    record["tops_45_train"] = [patterns.tops_45_share(p, task) for p in parts]
    record["propagation_3_train"] = [patterns.propagation_share(p, task)
                                     for p in parts]

  return on_round


# --- devices ------------------------------------------------------------------------

def setup_host_devices(config: AttackConfig) -> str | None:
  """Asks for the CPU devices of ``config.host_devices`` before JAX starts;
  returns a note when an explicit number could not be applied."""
  want = len(config.seeds) if config.host_devices == "auto" else config.host_devices
  applied, why = common.set_cpu_devices(want)
  if applied or config.host_devices == "auto":
    return None
  return f"--host-devices {config.host_devices} not applied: {why}"


def check_resume_devices(run_dir: str | None, seed_devices: int) -> None:
  """Refuses to resume on a CPU a run directory whose seeds ran on another
  number of CPU devices (the seeds' programs round floats differently with
  the split, so its paid queries would not replay), with the flag that
  matches it. Another backend rounds differently anyway: it may resume."""
  import jax
  if run_dir is None:
    return
  path = pathlib.Path(run_dir) / "config.json"
  try:
    devices = json.loads(path.read_text())["devices"]
    saved_backend, saved = devices["backend"], int(devices["seed_devices"])
  except (OSError, ValueError, KeyError, TypeError):
    return
  if saved_backend == jax.default_backend() == "cpu" and saved != seed_devices:
    raise ExperimentError(
        f"run directory {run_dir} ran its seeds on {saved} CPU device(s), and this "
        f"process has them on {seed_devices}: the float rounding of the seeds' "
        f"programs depends on the split, so resume it with --host-devices {saved}")


# --- the run ------------------------------------------------------------------------

def run(config: AttackConfig, out: str | os.PathLike, progress: bool = True) -> dict:
  """Runs the attack of ``config``; writes the files of the module docstring to
  ``out`` and returns the summary written to ``attack.json``."""
  if not isinstance(config, AttackConfig):
    raise TypeError(f"config must be an AttackConfig, got {type(config).__name__}")
  # before anything touches a device: the CPU backend is made with this many
  device_note = setup_host_devices(config)
  import jax

  from banel_jax import BanelRunner, make_banel, plotting
  from banel_jax.core.extension import describe
  from banel_jax.core.metrics import clopper_pearson, summarize_over_seeds
  from banel_jax.runtime.sharding import seed_mesh
  from banel_jax.tasks import addition
  from banel_jax.tasks import addition_patterns as patterns

  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  if device_note:
    print(device_note, flush=True)
  ensure_checkpoints(config, out, progress)
  task, attacker, attacker_params, target_params = load_models(config)
  oracle = addition.make_oracle(target_params, task)
  model = attacker.model
  sample = jax.jit(model.sample, static_argnums=2)
  seeds = config.seeds
  root = jax.random.key(10_000 + seeds[0])
  pre_key, analysis_key, rule_seed = jax.random.split(root, 3)

  # 1. The pretrained attacker's rate, measured once on many samples.
  t0 = time.perf_counter()
  pre, source = reuse_calibration(config, task)
  n_pre = (config.analysis_samples if pre is not None
           else max(config.pretrained_samples, config.analysis_samples))
  x_pre = sample_in_chunks(sample, attacker_params, pre_key, n_pre)
  r_pre = oracle(x_pre)
  if pre is None:
    pre = clopper_pearson(int(r_pre.sum()), len(r_pre))
  print(f"pretrained attacker: {pre.successes}/{pre.trials} = {pre.rate:.2e} "
        f"[{pre.low:.2e}, {pre.high:.2e}] ({source}, "
        f"{time.perf_counter() - t0:.0f}s)", flush=True)

  # 2. The method (BaNEL or the baseline), seeds side by side.
  metrics_path = out / "metrics.jsonl"
  if metrics_path.exists():
    metrics_path.unlink()
  extensions = ()
  if config.method == "self-imitation":
    from banel_jax.baselines import RunConfig, make_self_imitation
    support = addition.make_support(task) if config.support_check else None
    method = make_self_imitation(model, config.self_imitation, support=support)
    b = config.banel
    run_config = RunConfig(nre_budget=b.nre_budget,
                           samples_per_round=b.samples_per_round,
                           n_eval=b.n_eval, eval_every=b.eval_every)
  else:
    extensions = extensions_of(config, model, task)
    method = make_banel(model, config.banel, extensions)
    run_config = config.banel
  mesh = seed_mesh(len(seeds))
  seed_devices = 1 if mesh is None else int(mesh.devices.size)
  print(f"seeds {list(seeds)} on {seed_devices} device(s) of {jax.device_count()} "
        f"({jax.default_backend()})", flush=True)
  check_resume_devices(config.run_dir, seed_devices)
  # the checkpoints as recorded: a shipped name, or an absolute path
  extra = {"task": config_to_dict(task),
           "target_dir": common.checkpoint_record(config.target),
           "attacker_dir": common.checkpoint_record(config.attacker)}
  if config.method == "self-imitation" and config.support_check:
    extra["support_check"] = True  # BaNEL records its extensions itself
  runner = BanelRunner(
      model, attacker_params, oracle, run_config, seeds,
      metrics_path=metrics_path, progress=progress, run_dir=config.run_dir,
      method=method, on_round=paid_sample_diagnostics(task, len(seeds)),
      extra_config=extra)
  try:
    result = runner.run()
    final = np.array(result.final_success_rates())
    best = np.array(result.best_success_rates())
    rate0 = max(pre.rate, 1.0 / pre.trials)  # avoid /0 when no success was seen
    summary = {
        **invocation(),
        "task": "addition_attack",
        "config": config_to_dict(config),
        "task_config": config_to_dict(task),
        "method": config.method,
        "label": method_label(config),
        # BaNEL's config, or None for the baseline (its config is method_config)
        "banel_config": (config_to_dict(config.banel)
                         if config.method == "banel" else None),
        **({"method_config": config_to_dict(config.self_imitation),
            "run_config": config_to_dict(run_config)}
           if config.method == "self-imitation" else {}),
        **describe(extensions),
        **({"uses_successes": True} if config.method == "self-imitation" else {}),
        "seeds": list(seeds),
        "support_check": config.support_check,
        "target": common.checkpoint_record(config.target),
        "attacker": common.checkpoint_record(config.attacker),
        "pretrained": pre.as_dict(), "pretrained_source": source,
        "pretrained_rate_is_lower_bound": pre.successes == 0,
        "final_success_rate": final.tolist(), "best_success_rate": best.tolist(),
        "final": summarize_over_seeds(final), "best": summarize_over_seeds(best),
        "improvement_final": (final / rate0).tolist(),
        "improvement_best": (best / rate0).tolist(),
        "improvement_final_mean": float(final.mean() / rate0),
        "improvement_best_mean": float(best.mean() / rate0),
        "improvement_final_median": float(np.median(final) / rate0),
        "nre_spent": result.nre_spent, "eval_calls": result.eval_calls,
        "n_successes_found_in_training": len(result.successes),
        "wall_time_s": result.wall_time_s,  # summed over resumed processes
        "backend": jax.default_backend(),
        "seed_devices": seed_devices,
        "examples_found_in_training": sorted({addition.decode(s.sample)
                                              for s in result.successes})[:40],
    }

    # 3. What the method learned, against the pretrained attacker.
    if config.analysis:
      n = config.analysis_samples
      summary["patterns_pretrained"] = patterns.pattern_summary(x_pre[:n], task,
                                                                r_pre[:n])
      propose = jax.jit(jax.vmap(runner.banel.propose, in_axes=(0, 0, None)),
                        static_argnums=2)
      keys = jax.random.split(analysis_key, len(seeds))
      x_post = np.asarray(propose(runner.states, keys, n)[0])
      per_seed = []
      for s in range(len(seeds)):
        r = oracle(x_post[s])
        per_seed.append(patterns.pattern_summary(x_post[s], task, r))
        if s == 0:
          summary["examples_final_proposal_seed0"] = addition.decode_batch(
              x_post[s][r > 0.5][:30])
      # patterns_banel_per_seed or patterns_self_imitation_per_seed
      summary[f"patterns_{config.method.replace('-', '_')}_per_seed"] = per_seed
      rng = np.random.default_rng(int(jax.random.randint(rule_seed, (), 0,
                                                         2**31 - 1)))
      rules = {}
      for rule in patterns.RULES:
        q = patterns.rule_based_queries(rng, config.rule_samples, rule, task)
        r = oracle(q)
        rules[rule] = clopper_pearson(int(r.sum()), len(r)).as_dict()
      summary["rule_based_attacks"] = rules
  finally:
    runner.close()

  common.write_json(out / "attack.json", summary)
  task_id = {"target": "addition_lsb", "target_msb": "addition_msb"}.get(
      str(config.target), f"addition_{pathlib.Path(str(config.target)).name}")
  common.write_summary(
      out, name=out.name, command=summary.get("command") or "banel attack",
      wall_time_s=result.wall_time_s,
      tasks={task_id: {
          "nre_budget": config.banel.nre_budget,
          "pretrained_rate": rate0, "pretrained_samples": pre.trials,
          "methods": {method_id(config): common.method_entry(
              label=summary["label"],
              uses_successes=bool(summary.get("uses_successes")),
              task_knowledge=bool(summary.get("task_knowledge")), seeds=seeds,
              final=final, best=best, pretrained_rate=rate0)}}})
  fig, ax = plotting.new_axes(figsize=(6, 4))
  plotting.plot_success_vs_nre({summary["label"]: result.history}, ax, log_y=True,
                               title="addition attack: success rate vs NRE")
  ax.axhline(pre.rate, color="k", ls=":", lw=1, label="pretrained")
  ax.legend()
  plotting.save_figure(fig, out / "success_vs_nre.png")

  print(f"final success per seed: {np.round(final, 4).tolist()} | mean "
        f"{final.mean():.4f} median {np.median(final):.4f} std {final.std():.4f} | "
        f"improvement (mean) {summary['improvement_final_mean']:.1f}x; best-so-far "
        f"mean {best.mean():.4f} ({summary['improvement_best_mean']:.1f}x) | "
        f"{result.wall_time_s:.0f}s")
  if "rule_based_attacks" in summary:
    print("rule-based:", {k: round(v["rate"], 4) for k, v in
                          summary["rule_based_attacks"].items()})
  print(f"wrote {out}/")
  return summary


COMMAND = register(Command(
    name="attack",
    help="BaNEL attack on the addition transformer (the paper's table).",
    config_cls=AttackConfig, presets=PRESETS, default_preset="quick", run=run,
    check=check_against_preset))
