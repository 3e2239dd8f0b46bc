"""``python -m banel_jax``: the ``banel`` command (:mod:`banel_jax.cli`)."""

import sys

from banel_jax.cli import main

if __name__ == "__main__":
  sys.exit(main())
