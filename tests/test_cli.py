"""The ``banel`` command: its subcommands, generated flags, presets and errors."""

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import pytest

from banel_jax import cli
from banel_jax.experiments import attack, registry, toy1d

COMMANDS = registry.commands()
OURS = ("toy1d", "attack", "train-target", "pretrain-attacker", "calibrate")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_.\-]*")


def _help(capsys, argv) -> str:
  try:
    code = cli.main(argv)
  except SystemExit as e:  # a command's --help exits
    code = e.code
  assert code == 0, capsys.readouterr().err
  return capsys.readouterr().out


def _flags(capsys, name: str) -> set[str]:
  """The flags a command's ``--help`` lists (the heads of its entries)."""
  text = _help(capsys, [name, "--help"])
  options = text[text.index("usage: "):]  # the flags, not the module's prose
  flags = set()
  for line in options.splitlines():
    words = line.replace("\u2502", " ").split()
    if words and words[0].startswith("--"):  # "--x", or "--x, --no-x"
      heads = words[:2] if words[0].endswith(",") and len(words) > 1 else words[:1]
      flags.update(FLAG.findall(" ".join(heads)))
  return flags


def _fields(cls, prefix=""):
  """``(flag name, type)`` of every field of a config dataclass, nested ones
  with their dotted prefix."""
  for f in dataclasses.fields(cls):
    name = prefix + f.name.replace("_", "-")
    value = f.default if f.default is not dataclasses.MISSING else None
    if dataclasses.is_dataclass(value):
      yield from _fields(type(value), name + ".")
    else:
      yield name, value


def test_banel_help_lists_every_registered_command(capsys):
  text = _help(capsys, ["--help"])
  for name in OURS:
    assert name in COMMANDS
  for name, command in COMMANDS.items():
    assert re.search(rf"^  {re.escape(name)}\s+{re.escape(command.help)}$", text,
                     re.M), name
  assert cli.main([]) == 2  # no command: the usage, and a usage error


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_its_docstring(capsys, name):
  command = COMMANDS[name]
  text = _help(capsys, [name, "--help"])
  assert f"usage: banel {name}" in text
  first = cli.format_doc(cli._description(command)).splitlines()[0]
  assert text.startswith(first)
  for common in ("--preset", "--out", "--progress", "--no-progress", "--help"):
    assert common in text
  assert not re.search(r"[Ss]ession \d|[Ii]ssue \d|20\d\d-\d\d-\d\d", text)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flags_are_generated_with_uniform_names(capsys, name):
  flags = _flags(capsys, name)
  for flag in flags:
    assert re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)*", flag), \
        f"{name}: {flag} is not lower-case with hyphens"
    assert "no-no-" not in flag, f"{name}: {flag}"
    last = flag.rsplit(".", 1)[-1].lstrip("-")
    if last.startswith("no-"):  # every negation has its positive flag
      positive = flag[:len(flag) - len(last)] + last[3:]
      assert positive in flags, f"{name}: {flag} without {positive}"
  for field, default in _fields(COMMANDS[name].config_cls):
    assert f"--{field}" in flags, f"{name}: no flag for the config field {field}"
    assert not field.rsplit(".", 1)[-1].startswith("no-"), \
        f"{name}: the field {field} is negative; name it positively"
    if isinstance(default, bool):
      head, _, tail = f"--{field}".rpartition(".")
      negated = f"{head}.no-{tail}" if head else f"--no-{field}"
      assert negated in flags, f"{name}: {field} is a boolean without {negated}"


def test_a_preset_is_overridden_by_flags():
  command = COMMANDS["attack"]
  config, preset, out, progress = cli.parse(
      command, ["--seeds", "3", "4", "--preset", "tiny", "--no-progress",
                "--banel.failure-epochs", "2", "--support-check", "--out", "o"])
  tiny = attack.tiny_config()
  assert preset == "tiny" and out == pathlib.Path("o") and progress is False
  assert config == tiny.replace(seeds=(3, 4), support_check=True,
                                banel=tiny.banel.replace(failure_epochs=2))
  config, preset, out, progress = cli.parse(COMMANDS["toy1d"], [])
  assert config == toy1d.default_config() and preset == "default"
  assert out == pathlib.Path("runs") / "toy1d" and progress is True


def test_presets_train_microbatch_by_backend():
  for preset in attack.PRESETS.values():
    config = preset()
    assert config.banel.train_microbatch == "auto"
    assert config.self_imitation.train_microbatch == "auto"


@pytest.mark.parametrize("argv, message", [
    (["attack", "--preset", "huge"], "--preset 'huge' is not one of full, quick, quick-lsb, tiny"),
    (["attack", "--banel.nre-budget", "0"], "BanelConfig.nre_budget=0"),
    (["attack", "--seeds", "1", "1"], "AttackConfig.seeds=(1, 1) names a seed twice"),
    (["attack", "--replay.bank-size", "4"], "pass --success-replay too"),
    (["attack", "--method", "self-imitation", "--banel.tau-mode", "factor",
      "--banel.distill-reset"], "drop --banel.tau-mode, --banel.distill-reset"),
    (["attack", "--method", "self-imitation", "--seen-failures"],
     "drop --seen-failures"),
    (["attack", "--self-imitation.bank-size", "8"],
     "--self-imitation.bank-size apply to --method self-imitation only"),
    (["attack", "--method", "self-imitation", "--self-imitation.bank-size", "0"],
     "bank_size=0 must be an integer >= 1"),
    (["train-target", "--eval-every", "30"], "must be a multiple of steps_per_call"),
    (["fly"], "unknown command 'fly'"),
])
def test_bad_settings_are_refused_naming_them(capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = " ".join(capsys.readouterr().err.replace("\u2502", " ").split())
  assert message in err


def _banel_env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


@pytest.mark.slow
def test_the_console_script_and_python_m(tmp_path):
  """``banel`` (the installed console script) and ``python -m banel_jax`` run
  from any directory."""
  banel = pathlib.Path(sys.executable).parent / "banel"
  for argv in ([str(banel)] if banel.exists() else []) + \
      [[sys.executable, "-m", "banel_jax"]]:
    argv = argv if isinstance(argv, list) else [argv]
    out = subprocess.run(argv + ["--help"], cwd=tmp_path, env=_banel_env(),
                         capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in OURS)
    sub = subprocess.run(argv + ["toy1d", "--help"], cwd=tmp_path,
                         env=_banel_env(), capture_output=True, text=True,
                         check=True).stdout
    assert "--banel.filter-factor" in sub and "--task.num-bins" in sub
  assert not any(tmp_path.iterdir())  # --help writes nothing


def test_importing_the_experiments_leaves_jax_unstarted(tmp_path):
  """The command's modules start no JAX backend on import, so a command can
  still choose the CPU devices (``banel attack --host-devices``)."""
  code = ("import jax._src.xla_bridge as xb, banel_jax.cli, banel_jax.experiments; "
          "print(xb.backends_are_initialized())")
  out = subprocess.run([sys.executable, "-c", code], env=_banel_env(), cwd=tmp_path,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == "False"
