"""What the experiments share: the shipped checkpoints, result files and devices.

The package ships the addition task's checkpoints (``banel_jax/assets/
checkpoints``): the target transformer (``target``, sums written least
significant digit first), a second target (``target_msb``, most significant
first) and the pretrained attacker (``attacker``), with the calibration of the
attacker against each target. :func:`checkpoint_dir` turns a shipped name or a
path into a directory, so experiments run from any working directory.

>>> checkpoint_dir("target").name
'target'
>>> checkpoint_dir("./my_target").name
'my_target'
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

from banel_jax.core.config import jsonable

ASSETS = pathlib.Path(__file__).resolve().parent.parent / "assets"
CHECKPOINTS = ASSETS / "checkpoints"
# name -> what it is; every name is a directory under CHECKPOINTS
SHIPPED_CHECKPOINTS = {
    "target": "the addition target (sums least significant digit first)",
    "target_msb": "the addition target that writes sums most significant digit first",
    "attacker": "the pretrained addition attacker",
}
# shipped calibrations of the attacker against each shipped target
SHIPPED_CALIBRATIONS = {"target": CHECKPOINTS / "calibration" / "target.json",
                        "target_msb": CHECKPOINTS / "calibration" / "target_msb.json"}


def checkpoint_dir(value: str | os.PathLike) -> pathlib.Path:
  """The directory of a checkpoint: a shipped one by name (``"target"``,
  ``"target_msb"``, ``"attacker"``), or ``value`` as a path (write a local
  directory of one of those names as ``./target``)."""
  if isinstance(value, str) and value in SHIPPED_CHECKPOINTS:
    return CHECKPOINTS / value
  text = os.fspath(value)
  if not text:
    raise ValueError("a checkpoint must be a shipped name "
                     f"({', '.join(SHIPPED_CHECKPOINTS)}) or a directory, got ''")
  return pathlib.Path(text).expanduser().absolute()


def checkpoint_record(value: str | os.PathLike) -> str:
  """How a run records a checkpoint: a shipped name as the name (the same on
  every install), a path as an absolute path."""
  if isinstance(value, str) and value in SHIPPED_CHECKPOINTS:
    return value
  return str(checkpoint_dir(value))


def default_out(command: str) -> pathlib.Path:
  """Where a command writes when ``--out`` is not given: ``runs/<command>``
  under the working directory (``runs/`` is git-ignored; canonical results go
  to ``results/<name>`` only when asked)."""
  return pathlib.Path("runs") / command


def write_json(path: str | os.PathLike, record: Mapping[str, Any]) -> pathlib.Path:
  """Writes ``record`` (made JSON-ready by :func:`banel_jax.core.config.jsonable`)
  to ``path``, creating its folder; returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(jsonable(dict(record)), indent=1)
  # whole or not at all: a kill mid-write leaves the previous file (studies
  # rewrite their record while they run, and a rerun reads it back)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text + "\n")
  os.replace(tmp, path)
  return path


def machine() -> str:
  """The machine a result was made on, e.g. ``"2 CPU cores, no accelerator"``."""
  import jax  # noqa: PLC0415 (the experiments import no JAX backend at load time)
  cores = f"{os.cpu_count()} CPU cores"
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"{cores}, no accelerator"
  return f"{cores}, {jax.device_count()} x {device.device_kind}"


def method_entry(*, label: str, uses_successes: bool, task_knowledge: bool,
                 seeds, final, best, pretrained_rate: float) -> dict:
  """One method of a task in a ``summary.json``: per-seed final and best-so-far
  rates and their improvements over the task's one measured pretrained rate."""
  final = [float(v) for v in final]
  best = [float(v) for v in best]
  if not len(final) == len(best) == len(seeds):
    raise ValueError(f"{len(seeds)} seeds but {len(final)} final and {len(best)} "
                     "best rates")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct, got {list(seeds)}")
  if not pretrained_rate > 0:
    raise ValueError(f"pretrained_rate must be > 0, got {pretrained_rate}")
  return {"label": label, "uses_successes": bool(uses_successes),
          "task_knowledge": bool(task_knowledge), "seeds": [int(s) for s in seeds],
          "final_rate": final, "best_rate": best,
          "improvement_final": [v / pretrained_rate for v in final],
          "improvement_best": [v / pretrained_rate for v in best]}


def write_summary(out: str | os.PathLike, *, name: str, command: str,
                  wall_time_s: float, tasks: Mapping[str, Any]) -> pathlib.Path:
  """Writes ``out/summary.json``, the machine-readable form every canonical
  result shares: ``{"name", "command", "machine", "wall_time_s", "tasks": {task:
  {"pretrained_rate", "pretrained_samples", ..., "methods": {id:
  method_entry(...)}}}}``."""
  record = {"name": name, "command": command, "machine": machine(),
            "wall_time_s": float(wall_time_s), "tasks": dict(tasks)}
  return write_json(pathlib.Path(out) / "summary.json", record)


XLA_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def set_cpu_devices(count: int) -> tuple[bool, str]:
  """Asks JAX for ``count`` CPU devices, unless the user decided already.

  Leaves everything as it is when ``XLA_FLAGS`` sets
  ``--xla_force_host_platform_device_count`` (the user's choice wins; this
  never edits ``XLA_FLAGS``), and when JAX has started its backends in this
  process (the count can no longer change). Only the CPU backend reads the
  setting: on a GPU or TPU the seeds run on the accelerators whatever it is.

  Args:
    count: CPU devices wanted, ``>= 1``.

  Returns:
    ``(applied, why)``: whether the setting was made, and if not, why.
  """
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ValueError(f"count={count!r} must be an integer >= 1")
  if XLA_DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
    return False, f"XLA_FLAGS sets {XLA_DEVICE_COUNT_FLAG}"
  import jax
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    return False, "JAX had started in this process already"
  return True, ""


OBSERVATIONS_START = "<!-- observations:start -->"
OBSERVATIONS_END = "<!-- observations:end -->"


def kept_observations(readme: pathlib.Path) -> str:
  """The hand-written observations block of an existing generated README
  (between :data:`OBSERVATIONS_START` and :data:`OBSERVATIONS_END`), kept when
  a rerun writes the README anew; a placeholder block when there is none."""
  import re
  if readme.exists():
    text = readme.read_text()
    m = re.search(re.escape(OBSERVATIONS_START) + r".*?" + re.escape(OBSERVATIONS_END),
                  text, re.S)
    if m:
      return m.group(0)
  return (f"{OBSERVATIONS_START}\n(No observations recorded yet: look at the "
          f"figures and write them here.)\n{OBSERVATIONS_END}")


def readme_tail(out: pathlib.Path, table: str, *, table_note: str, wall: str,
                summed_over: str) -> list[str]:
  """The closing lines every generated results README shares: the table, the
  success-vs-NRE plot, the kept observations block, wall time and machine.

  Args:
    out: the results folder (its ``README.md`` holds the observations kept).
    table: the Markdown table.
    table_note: what follows "**Table**", e.g. ``"(`table.md`)"``.
    wall: the wall time as written, e.g. ``"65 minutes"``.
    summed_over: what the wall time sums, e.g. ``"the (task, method) pairs"``.
  """
  return ["**Table** " + table_note + ".", "", table, "",
          "![success vs NRE](success_vs_nre.png)", "",
          "## Observations", "", kept_observations(out / "README.md"), "",
          f"**Wall time and machine.** {wall} of runs (summed over {summed_over}) "
          f"on {machine()}.", ""]


def changed_from_paper(cfg) -> dict:
  """The algorithm fields of a :class:`~banel_jax.BanelConfig` that differ
  from :meth:`BanelConfig.paper` (the run fields left out)."""
  from banel_jax.core.config import BanelConfig, config_to_dict
  paper = config_to_dict(BanelConfig.paper())
  return {k: v for k, v in config_to_dict(cfg).items()
          if k not in ("nre_budget", "samples_per_round", "n_eval", "eval_every")
          and v != paper[k]}


def check_seeds(owner: str, field: str, seeds) -> None:
  """Raises :class:`~banel_jax.experiments.registry.ExperimentError` unless
  ``seeds`` is a non-empty tuple of distinct integers >= 0, naming
  ``owner.field``."""
  from banel_jax.experiments.registry import ExperimentError
  if not isinstance(seeds, tuple) or not seeds or not all(
      isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
    raise ExperimentError(f"{owner}.{field}={seeds!r} must be a non-empty tuple of "
                          "integers >= 0")
  if len(set(seeds)) != len(seeds):
    raise ExperimentError(f"{owner}.{field}={seeds!r} names a seed twice")

