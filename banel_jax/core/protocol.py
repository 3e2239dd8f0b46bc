"""What every method's round shares: the scored batch, its masks, its checks.

A round of any method (BaNEL, each baseline) splits at the reward oracle::

    x, info = method.propose(state, keys["propose"], m)   # jit: sample
    rewards = oracle(x)                                    # host: spends NRE
    state, metrics = method.update(state, RoundBatch(...), keys["update"])

Round ``t``'s keys are ``fold_in(root, t)`` (:func:`round_keys`), so a resumed
run asks the very same queries without storing any key.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from banel_jax.core.types import PRNGKey, Samples


class RoundBatch(NamedTuple):
  """A round's scored samples.

  Attributes:
    x: ``[m, *event_shape]`` samples from the proposal.
    rewards: ``f32[m]`` oracle rewards in ``{0, 1}`` (0 where not evaluated).
    evaluated: ``bool[m]`` which samples the oracle scored (the last round of a
      budget may score only some).
    log_norm: ``f32[]`` log normaliser of the proposal that drew ``x``
      (``log info.acceptance_rate`` in exact mode, 0 in distilled mode).
  """

  x: Samples
  rewards: jax.Array
  evaluated: jax.Array
  log_norm: jax.Array


def round_masks(batch: RoundBatch, event_rank: int) -> tuple[jax.Array, jax.Array]:
  """Checks a round's shapes; returns ``(evaluated, success)`` as ``bool[m]``.

  Every method's ``update`` starts here: ``batch.x`` is ``[m, *event_shape]``
  (``event_rank`` dimensions per sample) and ``batch.evaluated`` is ``[m]``; a
  success is an evaluated sample rewarded above 0.5. Failures are
  ``evaluated & ~success``.
  """
  m = batch.rewards.shape[0]
  chex.assert_rank(batch.x, 1 + event_rank)
  chex.assert_axis_dimension(batch.x, 0, m)
  chex.assert_shape(batch.evaluated, (m,))
  evaluated = batch.evaluated.astype(bool)
  return evaluated, evaluated & (batch.rewards > 0.5)


def round_keys(state) -> dict[str, PRNGKey]:
  """Named keys of a method state's current round, ``fold_in(state.key, state.round)``.

  Resumed runs replay the same keys without storing them.
  """
  k = jax.random.fold_in(state.key, state.round)
  propose_key, update_key, eval_key = jax.random.split(k, 3)
  return {"propose": propose_key, "update": update_key, "eval": eval_key}


def all_finite(tree) -> jax.Array:
  """``bool[]``: every floating leaf of ``tree`` is finite (a round's
  ``params_finite`` metric, in BaNEL and in every baseline)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
