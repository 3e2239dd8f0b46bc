"""``python -m banel_jax.suite [NAME ...] [--out DIR]``: retrains the suite's
pretrained models (default: all, into the shipped asset folder)."""

from banel_jax.suite.tasks import main

if __name__ == "__main__":
  main()
