"""What the scripts share: the command line a result file records."""

from __future__ import annotations

import shlex
import sys
from typing import Sequence


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
  """``python scripts/<script> ARGS``, the command that reproduces this run.

  Args:
    script: the script's file name, e.g. ``"attack.py"``.
    argv: the arguments ``main`` was given (``None``: this process's own).

  >>> command_line("attack.py", ["--config", "quick", "--out", "my dir"])
  "python scripts/attack.py --config quick --out 'my dir'"
  """
  args = sys.argv[1:] if argv is None else list(argv)
  return shlex.join(["python", f"scripts/{script}", *args])


def read_attack_run(run_dir: str, target_dir: str | None = None,
                    attacker_dir: str | None = None):
  """An addition attack's run directory: ``(record, task, target_dir, attacker_dir)``.

  ``record`` is its ``config.json``; the task and checkpoint folders come from
  the record unless ``target_dir`` / ``attacker_dir`` override them.

  Raises:
    SystemExit: ``run_dir`` is not an addition attack's run directory.
  """
  import json
  import os

  from banel_jax.tasks import addition
  with open(os.path.join(run_dir, "config.json")) as f:
    record = json.load(f)
  extra = record.get("extra", {})
  if "task" not in extra:
    raise SystemExit(f"{run_dir} is not an addition attack's run directory (its "
                     "config.json has no extra.task)")
  task = addition.AdditionTaskConfig.from_dict(extra["task"])
  return (record, task, target_dir or extra.get("target_dir", "checkpoints/target"),
          attacker_dir or extra.get("attacker_dir", "checkpoints/attacker"))
