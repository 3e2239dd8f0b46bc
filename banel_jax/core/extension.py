"""The plug-in protocol of BaNEL's round.

The paper's algorithm (:func:`~banel_jax.core.banel.make_banel` with no
extension) learns from failures only. An :class:`Extension` adds to it in the
manner of an optax transformation: ``init`` makes its own state, which lives in
``BanelState.extensions``, and the round calls its hooks at named points:

1. ``observe(ext_state, x, failed, succeeded) -> (ext_state, metrics)``: after
   the oracle has answered and the round's region was added (e.g. remember the
   failures paid for, or the successes found).
2. ``accept(ext_state, x) -> bool[n]``: which samples the exploration posterior
   may hold. A sample it refuses counts as rejected, as if inside a region:
   distillation never fits it and exact mode never draws it (e.g. a free validity
   check, or a query that already failed).
3. ``extra_data(ext_state, x, succeeded) -> (x_extra, w_extra)``: weighted
   samples added to distillation's training set (e.g. successes to replay).
4. ``after_update(ext_state, outcome) -> (ext_state, outcome, metrics)``: may
   change the round's outcome, the next proposal and the region bank (e.g.
   restart a search that stalls).

Every hook is pure and shape-static (``jit``/``vmap`` run it); a hook left
``None`` is skipped. ``uses_successes`` and ``task_knowledge`` say what an
extension knows beyond the paper's algorithm, so that results are labelled
honestly (:func:`describe`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
from flax.training import train_state

from banel_jax.core.config import config_to_dict
from banel_jax.core.types import Params, Samples

ExtensionState = Any  # a pytree


class RoundOutcome(NamedTuple):
  """What a round leaves for the next one, as ``after_update`` hooks see it.

  Attributes:
    proposal: ``TrainState`` of the next proposal.
    regions: the region bank after this round.
    prior_params: the pretrained params ``theta_0``.
    any_success: ``bool[]`` whether this round's paid samples held a success.
  """

  proposal: train_state.TrainState
  regions: Any
  prior_params: Params
  any_success: jax.Array


class Extension(NamedTuple):
  """A plug-in to BaNEL's round (see the module docstring for the hooks).

  Attributes:
    name: a short identifier, unique among a run's extensions; its metrics are
      prefixed by it where they could clash.
    init: ``init(prior_params) -> ext_state``.
    observe: optional ``(ext_state, x, failed, succeeded) -> (ext_state, metrics)``.
    accept: optional ``(ext_state, x) -> bool[n]``.
    extra_data: optional ``(ext_state, x, succeeded) -> (x_extra, w_extra)``.
    after_update: optional ``(ext_state, RoundOutcome) -> (ext_state,
      RoundOutcome, metrics)``.
    uses_successes: whether it learns from a successful sample.
    task_knowledge: whether it is told more about the task than the oracle's
      answers (a validity check, hand-made rules).
    config: the extension's own frozen config (recorded in run directories).
  """

  name: str
  init: Callable[[Params], ExtensionState]
  observe: Callable[..., tuple[ExtensionState, dict]] | None = None
  accept: Callable[[ExtensionState, Samples], jax.Array] | None = None
  extra_data: Callable[..., tuple[Samples, jax.Array]] | None = None
  after_update: Callable[..., tuple[ExtensionState, RoundOutcome, dict]] | None = None
  uses_successes: bool = False
  task_knowledge: bool = False
  config: Any = None


def check_extensions(extensions: Sequence[Extension], mode: str) -> tuple[Extension, ...]:
  """The extensions as a tuple, refusing duplicates, non-extensions, and
  distillation hooks in exact mode (which does not distil)."""
  extensions = tuple(extensions)
  names = []
  for e in extensions:
    if not isinstance(e, Extension):
      raise TypeError(f"extensions must be banel_jax Extension objects, got "
                      f"{type(e).__name__} ({e!r:.80})")
    if e.name in names:
      raise ValueError(f"two extensions are named {e.name!r}: pass each once")
    names.append(e.name)
    if mode == "exact" and (e.extra_data is not None or e.after_update is not None):
      raise ValueError(f"extension {e.name!r} changes distillation or the proposal; "
                       "it applies to mode='distilled' only (exact mode's proposal "
                       "is the exploration posterior itself)")
  return extensions


def describe(extensions: Sequence[Extension]) -> dict:
  """A JSON-ready record of ``extensions``: names, configs and what they know."""
  out = []
  for e in extensions:
    cfg = (config_to_dict(e.config) if dataclasses.is_dataclass(e.config) else None)
    out.append({"name": e.name, "config": cfg, "uses_successes": e.uses_successes,
                "task_knowledge": e.task_knowledge})
  return {"extensions": out,
          "uses_successes": any(e.uses_successes for e in extensions),
          "task_knowledge": any(e.task_knowledge for e in extensions)}
