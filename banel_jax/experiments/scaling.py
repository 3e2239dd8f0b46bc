"""Compute scaling of the addition attack: improvement against failure-model epochs.

The failure model's training epochs are BaNEL's compute knob: more epochs, same
NRE. For each value of ``--epochs`` this runs the attack
(:mod:`banel_jax.experiments.attack`, configured by ``--attack.*``; by default
with leading zeros malformed, the harder variant of the paper's study) with the
same seeds and budget, then gathers the improvement factors into one JSON and
one plot.

Writes to ``--out``:

* ``epochs_<E>/``: each attack run's own output (``attack.json``, metrics, plot);
* ``scaling.json``: per epoch value the final and best-so-far improvement per
  seed with mean / median / std, and wall times;
* ``scaling.png``: improvement (final and best-so-far; mean over seeds, with each
  seed's point) against epochs, log-x.

``--pool DIR [DIR ...]`` runs nothing: it joins the ``scaling.json`` of studies
made on other seeds (e.g. seeds 0-2, then seeds 3-4 with ``--attack.seeds 3
4``) into one table over all their seeds, for the epoch values they share, and
writes it with its plot to ``--out``.

A finished epoch value (an ``attack.json`` made with the same attack config) is
reused, so a killed study resumes at the value it was on; ``--run-dir`` also
makes each attack run itself resumable (``RUN_DIR/epochs_<E>``).

Presets: ``default`` (epochs 1, 3, 10, 30; 3 seeds at NRE 2,500; hours on 2 CPU
cores), ``paper`` (the paper's grid: epochs 1 to 100, 5 seeds at NRE 7,500) and
``tiny`` (tests: two epoch values of the tiny attack).

Examples:
  banel scaling                                     # 1 3 10 30, 3 seeds
  banel scaling --preset paper
  banel scaling --epochs 1 2 --attack.seeds 0 --attack.banel.nre-budget 500 \\
      --attack.banel.n-eval 1000 --out runs/scaling_smoke      # a few minutes
  banel scaling --pool runs/grid_s02 runs/grid_s34 \\
      --out results/compute_scaling_5seeds          # 3 + 2 seeds
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from banel_jax.core.config import config_to_dict, jsonable
from banel_jax.experiments import attack as attack_experiment
from banel_jax.experiments import common
from banel_jax.experiments.attack import AttackConfig
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)


def _study_attack() -> AttackConfig:
  """The attack each epoch value runs by default: the ``full`` preset at 3 seeds,
  NRE 2,500, leading zeros malformed, no pattern analysis."""
  full = attack_experiment.full_config()
  return full.replace(seeds=(0, 1, 2), allow_leading_zeros=False, analysis=False,
                      banel=full.banel.replace(nre_budget=2500, n_eval=10_000))


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
  """A compute-scaling study.

  Attributes:
    epochs: failure-model epochs per round to compare, one attack run each.
    attack: the attack every epoch value runs (its ``banel.failure_epochs`` is
      set by ``epochs``; its run directory by ``run_dir``).
    run_dir: parent of resumable run directories, one per epoch value
      (``RUN_DIR/epochs_<E>``).
    pool: run nothing: join the ``scaling.json`` of these studies (made on
      different seeds, with the same budget and leading-zero rule) into one
      table over all their seeds.
  """

  epochs: tuple[int, ...] = (1, 3, 10, 30)
  attack: AttackConfig = _study_attack()
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
    if not isinstance(self.attack, AttackConfig):
      raise ExperimentError(f"{name}.attack must be an AttackConfig, got "
                            f"{type(self.attack).__name__}")
    if self.attack.method != "banel":
      raise ExperimentError(
          f"{name}.attack.method={self.attack.method!r}: the study varies BaNEL's "
          "failure-model epochs; the method must be 'banel'")
    if self.attack.run_dir is not None:
      raise ExperimentError(
          f"{name}.attack.run_dir={self.attack.run_dir!r}: each epoch value runs "
          "in its own directory; set run_dir (--run-dir) instead")
    if not isinstance(self.pool, tuple) or not all(
        isinstance(p, str) and p for p in self.pool):
      raise ExperimentError(f"{name}.pool={self.pool!r} must be a tuple of "
                            "directories")

  def replace(self, **changes) -> "ScalingConfig":
    return dataclasses.replace(self, **changes)

  def attack_for(self, epochs: int) -> AttackConfig:
    """The attack config of one epoch value."""
    return self.attack.replace(
        banel=self.attack.banel.replace(failure_epochs=epochs),
        run_dir=(None if self.run_dir is None
                 else os.path.join(self.run_dir, f"epochs_{epochs}")))


def default_config() -> ScalingConfig:
  """Epochs 1, 3, 10 and 30; 3 seeds at NRE 2,500."""
  return ScalingConfig()


def paper_config() -> ScalingConfig:
  """The paper's grid: epochs 1 to 100; 5 seeds at NRE 7,500."""
  base = _study_attack()
  return ScalingConfig(epochs=(1, 2, 3, 5, 10, 20, 50, 100),
                       attack=base.replace(seeds=(0, 1, 2, 3, 4),
                                           banel=base.banel.replace(nre_budget=7500)))


def tiny_config() -> ScalingConfig:
  """Tests: epochs 1 and 2 of the tiny attack on one seed."""
  return ScalingConfig(epochs=(1, 2), attack=attack_experiment.tiny_config().replace(
      seeds=(0,), allow_leading_zeros=False, analysis=False))


PRESETS = {"default": default_config, "paper": paper_config, "tiny": tiny_config}


def _comparable(config: AttackConfig) -> dict:
  """An attack config as ``attack.json`` records it (after a JSON round trip)."""
  return json.loads(json.dumps(config_to_dict(config)))


def run_one(config: ScalingConfig, epochs: int, out: pathlib.Path,
            progress: bool) -> dict:
  """Runs (or reuses) the attack with ``epochs`` failure epochs; its summary.

  A finished ``out/epochs_<E>/attack.json`` is reused when it was made with the
  same attack config; one made with another config is removed and rerun.
  """
  cfg = config.attack_for(epochs)
  folder = out / f"epochs_{epochs}"
  done = folder / "attack.json"
  if done.exists():
    saved = json.loads(done.read_text())
    if saved.get("config") == _comparable(cfg):
      print(f"epochs {epochs}: reusing {done}", flush=True)
      return saved
    done.unlink()  # made with another config
  print(f"epochs {epochs}: running the attack ...", flush=True)
  return attack_experiment.run(cfg, folder, progress)


def summarize(values) -> dict:
  """:func:`banel_jax.core.metrics.summarize_over_seeds` plus the per-seed values."""
  from banel_jax.core.metrics import summarize_over_seeds
  v = [float(x) for x in values]
  return {**summarize_over_seeds(v), "per_seed": v}


def plot(rows: list[dict], path: str | os.PathLike, title: str) -> None:
  """Improvement against epochs (log-x): means over seeds and every seed."""
  from banel_jax import plotting
  fig, ax = plotting.new_axes(figsize=(6, 4))
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
  plotting.save_figure(fig, path)


def pool_studies(dirs) -> dict:
  """One ``scaling.json`` over the seeds of several studies (see ``pool``)."""
  studies = []
  for d in dirs:
    path = pathlib.Path(d) / "scaling.json"
    if not path.exists():
      raise ExperimentError(f"ScalingConfig.pool: {path} does not exist")
    studies.append(json.loads(path.read_text()))
  for key in ("nre_budget", "leading_zeros_allowed"):
    values = {s[key] for s in studies}
    if len(values) > 1:
      raise ExperimentError(f"ScalingConfig.pool: the studies differ in {key}: "
                            f"{sorted(values)}")
  by_epochs = [{r["failure_epochs"]: r for r in s["rows"]} for s in studies]
  shared = sorted(set.intersection(*(set(b) for b in by_epochs)))
  if not shared:
    raise ExperimentError("ScalingConfig.pool: the studies share no epoch value")
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
  return {"pooled_from": [{"dir": str(d), "command": s.get("command"),
                           "seeds": s["seeds"]} for d, s in zip(dirs, studies)],
          "seeds": sum(s["seeds"] for s in studies),
          "nre_budget": studies[0]["nre_budget"],
          "leading_zeros_allowed": studies[0]["leading_zeros_allowed"],
          "rows": rows}


def _title(seeds: str, record: dict) -> str:
  lz = "allowed" if record["leading_zeros_allowed"] else "malformed"
  return (f"compute scaling ({seeds}, NRE {record['nre_budget']}, leading zeros "
          f"{lz})")


def run(config: ScalingConfig, out: str | os.PathLike, progress: bool = True) -> dict:
  """Runs the study of ``config`` (or pools studies, with ``pool``); writes
  ``scaling.json`` and ``scaling.png`` to ``out`` and returns the record.

  ``seeds`` in the record is the number of seeds (summed over pooled studies).
  """
  if not isinstance(config, ScalingConfig):
    raise TypeError(f"config must be a ScalingConfig, got {type(config).__name__}")
  out = pathlib.Path(out)
  if config.pool:
    record = {**invocation(), **pool_studies(config.pool)}
    common.write_json(out / "scaling.json", record)
    plot(record["rows"], out / "scaling.png",
         _title(f"{record['seeds']} seeds pooled", record))
    for r in record["rows"]:
      print(f"epochs {r['failure_epochs']}: improvement final mean "
            f"{r['improvement_final']['mean']:.2f}x over "
            f"{len(r['improvement_final']['per_seed'])} seeds")
    print(f"wrote {out}/")
    return record
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for epochs in config.epochs:
    res = run_one(config, epochs, out, progress)
    rows.append({"failure_epochs": epochs,
                 "improvement_final": summarize(res["improvement_final"]),
                 "improvement_best": summarize(res["improvement_best"]),
                 "final_success_rate": res["final_success_rate"],
                 "pretrained_rate": res["pretrained"]["rate"],
                 "wall_time_s": res["wall_time_s"]})
    print(f"epochs {epochs}: improvement final mean "
          f"{rows[-1]['improvement_final']['mean']:.2f}x, best-so-far mean "
          f"{rows[-1]['improvement_best']['mean']:.2f}x", flush=True)
  a = config.attack
  record = {**invocation(), "config": config_to_dict(config),
            "seeds": len(a.seeds), "seed_values": list(a.seeds),
            "nre_budget": a.banel.nre_budget,
            "leading_zeros_allowed": a.allow_leading_zeros, "rows": rows}
  common.write_json(out / "scaling.json", jsonable(record))
  plot(rows, out / "scaling.png", _title(f"{len(a.seeds)} seeds", record))
  print(f"wrote {out}/")
  return record


COMMAND = register(Command(
    name="scaling",
    help="Compute scaling of the addition attack: improvement against "
    "failure-model epochs.",
    config_cls=ScalingConfig, presets=PRESETS, default_preset="default", run=run))
