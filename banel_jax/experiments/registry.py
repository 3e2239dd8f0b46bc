"""The ``banel`` command's subcommands, one :class:`Command` per experiment.

An experiment module defines a frozen config dataclass whose defaults run, named
presets of it, and ``run(config, out, progress) -> dict``, and registers them
with :func:`register`. The command line (:mod:`banel_jax.cli`) generates every
flag from the config's fields, so names and polarities are the same everywhere;
``--preset``, ``--out`` (a directory) and ``--no-progress`` are common to all.
While the command line runs a command, :func:`invocation` gives the command
line and the preset, for the experiment's result record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from typing import Any, Callable, Iterator, Mapping

_COMMANDS: dict[str, "Command"] = {}
_INVOCATION: dict[str, Any] = {}


class ExperimentError(ValueError):
  """An experiment's settings or inputs do not fit; the message names them.

  The command line prints it without a traceback.
  """


@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand of ``banel``.

  Attributes:
    name: the subcommand, e.g. ``"attack"``.
    help: one line for ``banel --help``.
    config_cls: a frozen dataclass; its fields become the flags.
    presets: preset name -> a function returning a config.
    default_preset: the preset used when none is named.
    run: ``run(config, out, progress) -> dict``: writes its files under the
      directory ``out`` and returns the result record (JSON-ready).
    check: optional ``check(config, preset_config)``, called by the command
      line before ``run``: raises :class:`ExperimentError` for settings that
      changed from the preset but do not apply (e.g. a BaNEL option with
      another method), naming their flags.
  """

  name: str
  help: str
  config_cls: type
  presets: Mapping[str, Callable[[], Any]]
  default_preset: str
  run: Callable[[Any, pathlib.Path, bool], dict]
  check: Callable[[Any, Any], None] | None = None

  def __post_init__(self):
    if self.default_preset not in self.presets:
      raise ValueError(f"{self.name}: default preset {self.default_preset!r} is not "
                       f"one of {sorted(self.presets)}")


def register(command: Command) -> Command:
  """Adds ``command`` to ``banel``'s subcommands (once per name)."""
  if command.name in _COMMANDS and _COMMANDS[command.name] is not command:
    raise ValueError(f"a command named {command.name!r} is registered already")
  _COMMANDS[command.name] = command
  return command


def commands() -> dict[str, Command]:
  """Every registered command, by name (imports the experiment modules)."""
  from banel_jax import experiments  # noqa: F401,PLC0415 (registers them)
  return dict(_COMMANDS)


@contextlib.contextmanager
def invoked_as(command_line: str, preset: str) -> Iterator[None]:
  """Within this context, :func:`invocation` returns ``command_line`` and
  ``preset`` (set by :mod:`banel_jax.cli` around a command's ``run``)."""
  saved = dict(_INVOCATION)
  _INVOCATION.clear()
  _INVOCATION.update(command=command_line, preset=preset)
  try:
    yield
  finally:
    _INVOCATION.clear()
    _INVOCATION.update(saved)


def invocation() -> dict[str, Any]:
  """``{"command": "banel ...", "preset": name}`` while the command line runs
  a command; ``{}`` when an experiment is called from Python."""
  return dict(_INVOCATION)
