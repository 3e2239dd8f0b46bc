"""Executes the notebooks in place, so the committed copies show fresh outputs.

Example:
  python scripts/run_notebooks.py                 # every notebooks/*.ipynb
  python scripts/run_notebooks.py notebooks/toy1d.ipynb
"""

import argparse
import pathlib

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("paths", nargs="*", help="notebooks to run (default: all).")
  p.add_argument("--timeout", type=int, default=900, help="seconds per cell.")
  args = p.parse_args()
  paths = [pathlib.Path(x) for x in args.paths] or sorted((ROOT / "notebooks").glob("*.ipynb"))
  for path in paths:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    nbformat.write(nb, path)
    print(f"executed {path}")


if __name__ == "__main__":
  main()
