"""The ``banel`` command: the paper's experiments from the command line.

``banel <command> [--preset NAME] [flags]`` runs one experiment of
:mod:`banel_jax.experiments`. Its flags are generated from the experiment's
frozen config dataclass, so every command names and negates them the same way:
a field ``failure_epochs`` of the nested ``banel`` config is
``--banel.failure-epochs``, a boolean ``support_check`` is ``--support-check``
/ ``--no-support-check``. ``--preset NAME`` picks the preset that the other
flags override; ``--out DIR`` is the directory the command writes to (default
``runs/<command>``); ``--no-progress`` hides progress bars; ``--help`` shows
the flags with the defaults of the preset named.

The flags come from tyro rather than ml_collections: tyro generates them from
the typed frozen dataclasses the experiments already use (no second
definition), with one polarity rule for booleans (``--x`` / ``--no-x``),
nested configs as dotted flags and subcommands, and no absl dependency.

Also ``python -m banel_jax``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shlex
import sys
import textwrap
from typing import Annotated, Any, Literal, Sequence

# At import, not lazily: tyro builds a set of the ``builtins`` module's values
# when its docstring module loads, which fails once an interactive session or a
# doctest has left an unhashable ``_`` there (e.g. a tuple of lists).
import tyro

PROG = "banel"


def _commands():
  from banel_jax.experiments import registry
  return registry.commands()


def _description(command) -> str:
  """The ``--help`` text of a command: its experiment module's docstring."""
  module = sys.modules.get(getattr(command.run, "__module__", ""), None)
  doc = getattr(module, "__doc__", None) or command.help
  return textwrap.dedent(doc).strip()


def format_doc(text: str, width: int = 80) -> str:
  """A docstring for the terminal: paragraphs and bullets re-wrapped to
  ``width``, indented blocks (examples) kept, double backquotes made single.

  >>> print(format_doc("A  ``b``\\nc.\\n\\n* d\\n  e\\n\\nEx:\\n  x --y", 40))
  A `b` c.
  <BLANKLINE>
  * d e
  <BLANKLINE>
  Ex:
    x --y
  """
  text = textwrap.dedent(text).strip().replace("``", "`")
  blocks = []
  for block in text.split("\n\n"):
    lines = block.split("\n")
    if len(lines) > 1 and all(l.startswith(" ") for l in lines[1:]) \
        and lines[0].rstrip().endswith(":") and not lines[0].startswith(("* ", "- ")):
      blocks.append(block)  # a header and its indented lines (examples)
    elif lines[0].startswith(" "):
      blocks.append(block)
    elif lines[0].startswith(("* ", "- ")):
      items: list[str] = []
      for line in lines:
        if line.startswith(("* ", "- ")):
          items.append(line)
        else:
          items[-1] += " " + line.strip()
      blocks.append("\n".join(
          textwrap.fill(" ".join(item[2:].split()), width, initial_indent=item[:2],
                        break_on_hyphens=False, break_long_words=False,
                        subsequent_indent="  ") for item in items))
    else:
      blocks.append(textwrap.fill(" ".join(block.split()), width,
                                  break_on_hyphens=False, break_long_words=False))
  return "\n\n".join(blocks)


def args_class(command, preset: str) -> type:
  """The dataclass whose fields become ``banel <command>``'s flags: the common
  ``--preset``, ``--out`` and ``--progress``, and the command's config fields
  (unprefixed), with the defaults of ``preset``."""
  from banel_jax.experiments.common import default_out
  names = tuple(command.presets)
  listing = ", ".join(f"{n} (default)" if n == command.default_preset else n
                      for n in names)
  fields = [
      ("preset", Annotated[Literal[names], tyro.conf.arg(  # type: ignore[valid-type]
          help=f"the preset that the other flags override: {listing}.")],
       dataclasses.field(default=preset)),
      ("out", Annotated[pathlib.Path, tyro.conf.arg(
          help="the directory the command writes to (results/<name> for "
          "canonical results).", metavar="DIR")],
       dataclasses.field(default=default_out(command.name))),
      ("progress", Annotated[bool, tyro.conf.arg(help="show progress bars.")],
       dataclasses.field(default=True)),
      ("config", Annotated[command.config_cls, tyro.conf.arg(name="")],
       dataclasses.field(default=command.presets[preset]())),
  ]
  cls = dataclasses.make_dataclass(
      f"{command.config_cls.__name__}Args", fields, frozen=True)
  cls.__doc__ = command.help
  return cls


def _preset_of(command, argv: Sequence[str]) -> str:
  """The preset named by ``--preset`` in ``argv`` (the last one), or the
  command's default; exits with the choices on an unknown name."""
  p = argparse.ArgumentParser(prog=f"{PROG} {command.name}", add_help=False,
                              allow_abbrev=False)
  p.add_argument("--preset", default=command.default_preset)
  known, _ = p.parse_known_args(list(argv))
  if known.preset not in command.presets:
    _fail(command.name, f"--preset {known.preset!r} is not one of "
          f"{', '.join(command.presets)}", code=2)
  return known.preset


def _fail(name: str | None, message: str, code: int = 1):
  where = PROG if name is None else f"{PROG} {name}"
  print(f"{where}: error: {message}", file=sys.stderr)
  raise SystemExit(code)


def parse(command, argv: Sequence[str]) -> tuple[Any, str, pathlib.Path, bool]:
  """``(config, preset, out, progress)`` from ``banel <command>``'s arguments
  (``--help`` prints the flags and exits)."""
  preset = _preset_of(command, argv)
  cls = args_class(command, preset)
  if "-h" in argv or "--help" in argv:
    # tyro prints a description unwrapped: the module's text is printed here
    import shutil
    width = min(shutil.get_terminal_size((100, 24)).columns, 100) - 1
    print(format_doc(_description(command), width) + "\n")
  try:
    args = tyro.cli(cls, args=list(argv), prog=f"{PROG} {command.name}",
                    description="")
  except (ValueError, TypeError) as e:  # a config's own check, naming the field
    _fail(command.name, str(e), code=2)
  if command.check is not None:
    from banel_jax.experiments.registry import ExperimentError
    try:
      command.check(args.config, command.presets[args.preset]())
    except ExperimentError as e:
      _fail(command.name, str(e), code=2)
  return args.config, args.preset, args.out, args.progress


def run(command, argv: Sequence[str]) -> dict:
  """Parses ``argv`` and runs ``command``; returns its result record."""
  from banel_jax.experiments import registry
  config, preset, out, progress = parse(command, argv)
  import matplotlib
  matplotlib.use("Agg")  # files only; no display needed
  from banel_jax import CheckpointError, ConfigError
  line = shlex.join([PROG, command.name, *argv])
  try:
    with registry.invoked_as(line, preset):
      return command.run(config, out, progress)
  except (registry.ExperimentError, CheckpointError, ConfigError) as e:
    _fail(command.name, str(e))


def usage(commands) -> str:
  """``banel --help``: the commands, one line each, with their presets."""
  width = max(len(n) for n in commands) + 2
  lines = [f"usage: {PROG} <command> [--preset NAME] [flags]", "",
           "The experiments of banel_jax (BaNEL: post-train a generative model from",
           "failures only, under a hard budget of reward evaluations).", "",
           "commands:"]
  for name, c in commands.items():
    presets = ", ".join(f"{p}*" if p == c.default_preset else p for p in c.presets)
    lines.append(f"  {name:<{width}}{c.help}")
    lines.append(f"  {'':<{width}}presets: {presets} (* default)")
  lines += ["",
            "Every command takes --preset NAME, --out DIR (default runs/<command>)",
            "and --no-progress; its other flags come from its config and override",
            f"the preset. `{PROG} <command> --help` lists them with the preset's",
            "defaults."]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """The ``banel`` console script."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "--version":
    from banel_jax import __version__
    print(f"{PROG} (banel_jax) {__version__}")
    return 0
  commands = _commands()
  if not argv or argv[0] in ("-h", "--help"):
    print(usage(commands))
    return 0 if argv else 2
  name = argv[0]
  if name not in commands:
    _fail(None, f"unknown command {name!r}; the commands are "
          f"{', '.join(commands)} (see `{PROG} --help`)", code=2)
  run(commands[name], argv[1:])
  return 0


if __name__ == "__main__":
  sys.exit(main())
