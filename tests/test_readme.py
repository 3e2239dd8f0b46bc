"""The README's code runs as written, its two commands stay at the top, and every
file its results table cites is committed."""

import os
import pathlib
import re
import shlex
import subprocess

import pytest

from banel_jax import cli
from banel_jax.experiments import registry

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / "README.md"


def test_readme_opens_with_the_two_commands():
  text = README.read_text()
  first_block = re.match(r"```bash\n(.*?)```", text, re.S)
  assert first_block, "README must open with a bash block of two commands"
  lines = [l for l in first_block.group(1).splitlines() if l.strip()]
  assert len(lines) == 2
  assert lines[1].endswith("python -m pytest -q -n auto")
  ci = (README.parent / ".ci" / "run").read_text()
  assert lines[1] in ci, ".ci/run must run the README's test command verbatim"
  # the main job is a command of `banel` with flags it parses
  install, main_job = lines[0].split(" && ")
  assert install == 'pip install -e ".[test]"'
  argv = shlex.split(main_job)
  assert argv[0] == "banel"
  command = registry.commands()[argv[1]]
  config, preset, _, _ = cli.parse(command, argv[2:])
  assert config == command.presets[preset]()


def test_readme_is_reference_sized():
  assert len(README.read_bytes()) <= 12_000


def test_readme_commands_are_banel_commands():
  """Every ``banel <command>`` the README names is a registered command, and no
  script the package replaced is named any more."""
  text = README.read_text()
  names = set(re.findall(r"`banel ([a-z][a-z0-9-]*)", text))
  assert {"attack", "toy1d"} <= names
  assert names <= set(registry.commands())
  assert "scripts/" not in text


def test_readme_python_blocks_run(tmp_path, monkeypatch):
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert len(blocks) >= 2
  monkeypatch.chdir(tmp_path)  # the quickstart writes its run directory here
  namespace: dict = {}
  for block in blocks:  # blocks build on each other, like a reader's session
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
  result = namespace["result"]
  assert result.nre_spent == [namespace["config"].nre_budget] * 3
  # the quickstart's claim: every seed at least 10x the prior's 2e-3
  assert min(result.final_success_rates()) > 0.02
  assert (tmp_path / "runs" / "my_run" / "ledger.jsonl").exists()
  assert int(namespace["state"].round) == 1


def _cited_paths(text: str) -> list[str]:
  section = text.split("## Results", 1)[1].split("\n## ", 1)[0]
  return sorted(set(re.findall(r"`((?:results|research|docs)/[^`\s]+)`", section)))


def test_every_file_the_results_table_cites_is_committed():
  paths = _cited_paths(README.read_text())
  assert len(paths) >= 5
  missing = [p for p in paths if not (ROOT / p).exists()]
  assert not missing, f"the README's results table cites missing files: {missing}"
  if not (ROOT / ".git").exists():
    pytest.skip("not a git checkout: existence checked, tracking not")
  tracked = subprocess.run(["git", "ls-files", "--", *paths], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
  untracked = [p for p in paths
               if not any(t == p or t.startswith(p.rstrip("/") + "/") for t in tracked)]
  assert not untracked, f"cited but not committed: {untracked}"
