"""What the research probes share: the command line a result file records, and
reading an addition attack's run directory."""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Sequence


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
  """``python research/<script> ARGS``, the command that reproduces this run.

  Args:
    script: the probe's file name, e.g. ``"mode_census.py"``.
    argv: the arguments ``main`` was given (``None``: this process's own).

  >>> command_line("region_lift.py", ["--run-dir", "my run"])
  "python research/region_lift.py --run-dir 'my run'"
  """
  args = sys.argv[1:] if argv is None else list(argv)
  return shlex.join(["python", f"research/{script}", *args])


def checkpoint_path(value: str) -> str:
  """A recorded checkpoint as a directory: a shipped name (``"target"``) or a
  path; a path of the old layout (``checkpoints/<shipped name>``) that no longer
  exists is read as the shipped checkpoint of that name."""
  from banel_jax.experiments import common
  head, name = os.path.split(os.path.normpath(value))
  if (not os.path.isdir(value) and os.path.basename(head) == "checkpoints"
      and name in common.SHIPPED_CHECKPOINTS):
    value = name
  return str(common.checkpoint_dir(value))


def read_attack_run(run_dir: str, target_dir: str | None = None,
                    attacker_dir: str | None = None):
  """An addition attack's run directory: ``(record, task, target_dir, attacker_dir)``.

  ``record`` is its ``config.json``; the task and checkpoint folders come from
  the record unless ``target_dir`` / ``attacker_dir`` override them.

  Raises:
    SystemExit: ``run_dir`` is not an addition attack's run directory.
  """
  from banel_jax.tasks import addition
  with open(os.path.join(run_dir, "config.json")) as f:
    record = json.load(f)
  extra = record.get("extra", {})
  if "task" not in extra:
    raise SystemExit(f"{run_dir} is not an addition attack's run directory (its "
                     "config.json has no extra.task)")
  task = addition.AdditionTaskConfig.from_dict(extra["task"])
  # ``banel attack`` records ``target`` and ``attacker`` (a shipped name or a
  # path); older run directories recorded ``target_dir`` and ``attacker_dir``
  recorded = {k: extra.get(k, extra.get(f"{k}_dir", k)) for k in ("target", "attacker")}
  return (record, task, checkpoint_path(target_dir or recorded["target"]),
          checkpoint_path(attacker_dir or recorded["attacker"]))
