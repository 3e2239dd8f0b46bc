"""A free validity check: samples known to score 0 never enter the posterior.

Task knowledge, not the paper's algorithm. With a jit-able ``valid(x) ->
bool[n]`` that is ``False`` where the reward is known to be 0 without asking
the oracle (e.g. :func:`banel_jax.tasks.addition.well_formed_mask`), the
exploration posterior becomes ``p_0 * 1[x not in R] * valid(x)``: distillation
never fits an invalid sample and exact mode never draws one. Failure models
cannot learn such a region when the prior almost never writes it, so without
the check compounding rejection can hand it the proposal's mass
(``docs/findings.md``).

>>> import jax.numpy as jnp
>>> ext = support_check(lambda x: x >= 0, description="non-negative")
>>> ext.accept(ext.init(None), jnp.array([-1, 0, 2])).tolist()
[False, True, True]
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from banel_jax.core.extension import Extension
from banel_jax.core.types import Samples


@dataclasses.dataclass(frozen=True)
class SupportCheckConfig:
  """What the check is, for records (the function itself is not recorded).

  Attributes:
    description: what ``valid`` checks, e.g. ``"addition grammar"``.
  """

  description: str = "support check"


def support_check(valid: Callable[[Samples], jax.Array], *,
                  description: str = "support check") -> Extension:
  """The :class:`~banel_jax.core.extension.Extension` of a validity check.

  Args:
    valid: jit-able ``x[n, ...] -> bool[n]``, ``False`` where the reward is
      known to be 0.
    description: a short name of the check, recorded in run directories.
  """
  if not callable(valid):
    raise TypeError(f"valid must be a function x -> bool[n], got {valid!r}")
  return Extension(
      name="support", init=lambda prior_params: (),
      accept=lambda state, x: jnp.asarray(valid(x), bool),
      task_knowledge=True, config=SupportCheckConfig(description=description))
