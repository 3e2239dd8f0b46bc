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
