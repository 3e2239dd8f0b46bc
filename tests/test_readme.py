"""The README's code runs as written, and its two commands stay at the top."""

import pathlib
import re
import shlex

from banel_jax import cli
from banel_jax.experiments import registry

README = pathlib.Path(__file__).parent.parent / "README.md"


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


def test_readme_commands_are_banel_commands():
  """Every ``banel <command>`` the README names is a registered command, and no
  script the package replaced is named any more."""
  text = README.read_text()
  names = set(re.findall(r"`banel ([a-z][a-z0-9-]*)", text))
  assert {"attack", "toy1d"} <= names
  assert names <= set(registry.commands())
  for gone in ("scripts/attack.py", "scripts/toy1d.py", "scripts/train_target.py",
               "scripts/pretrain_attacker.py", "scripts/calibrate_attack.py"):
    assert gone not in text


def test_readme_python_blocks_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert len(blocks) >= 3
  namespace: dict = {}
  for block in blocks:  # blocks build on each other, like a reader's session
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
  assert namespace["result"].nre_spent == [300, 300]
  assert int(namespace["state"].round) == 1
  assert namespace["filtered"].nre_spent == [300]
