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

import jax
import jax.numpy as jnp
import numpy as np

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
  """Checks a round; returns ``(evaluated, success)`` as ``bool[m]``.

  Every method's ``update`` starts here: ``batch.x`` is ``[m, *event_shape]``
  (``event_rank`` dimensions per sample), ``batch.rewards`` and
  ``batch.evaluated`` are ``[m]``; a success is an evaluated sample rewarded 1.
  Failures are ``evaluated & ~success``. Shapes are checked always; reward
  values (each 0 or 1, finite) where they are concrete (outside ``jit``; the
  runner checks every oracle answer on the host before it gets here).

  Raises:
    ValueError: a field of the batch has the wrong shape or invalid values; the
      message names it.
  """
  x = jnp.asarray(batch.x)
  if x.ndim != 1 + event_rank:
    raise ValueError(f"RoundBatch.x has shape {tuple(x.shape)}: expected "
                     f"[m, *event_shape] with {event_rank} event dimension(s)")
  m = x.shape[0]
  for name in ("rewards", "evaluated"):
    shape = tuple(jnp.shape(getattr(batch, name)))
    if shape != (m,):
      raise ValueError(f"RoundBatch.{name} has shape {shape}; expected ({m},), one "
                       f"per sample of RoundBatch.x (shape {tuple(x.shape)})")
  rewards = batch.rewards
  if not isinstance(rewards, jax.core.Tracer):
    r = np.asarray(rewards, np.float64)
    bad = ~np.isfinite(r) | ((r != 0) & (r != 1))
    if bad.any():
      raise ValueError(f"RoundBatch.rewards must be 0 or 1; got {r[bad][:3].tolist()} "
                       f"at position(s) {np.flatnonzero(bad)[:3].tolist()}")
  evaluated = jnp.asarray(batch.evaluated).astype(bool)
  return evaluated, evaluated & (jnp.asarray(rewards) > 0.5)


def check_params(model, params, name: str = "prior_params") -> None:
  """Raises ``ValueError`` unless ``params`` match ``model.init``'s structure,
  shapes and floating dtypes (static facts: works under ``jit`` and ``vmap``).

  Catches params of another model (e.g. a checkpoint of another width, loaded
  without ``like=``) before they are sampled from, and integer params, which
  no gradient can train.
  """
  try:
    want = jax.eval_shape(model.init, jax.random.key(0))
  except Exception:  # noqa: BLE001 - a model whose init cannot be traced
    want = None
  got = {jax.tree_util.keystr(p): v
         for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  problems = []
  if want is not None:
    expected = {jax.tree_util.keystr(p): v
                for p, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    problems += [f"{k or '(root)'} missing" for k in expected if k not in got]
    problems += [f"{k or '(root)'} unexpected" for k in got if k not in expected]
    problems += [f"{k or '(root)'} has shape {tuple(jnp.shape(got[k]))}, model.init "
                 f"gives {tuple(expected[k].shape)}"
                 for k in sorted(expected.keys() & got.keys())
                 if tuple(jnp.shape(got[k])) != tuple(expected[k].shape)]
  problems += [f"{k or '(root)'} has dtype {jnp.result_type(v)}, not a floating type "
               "(BaNEL trains params by gradient)"
               for k, v in sorted(got.items())
               if not jnp.issubdtype(jnp.result_type(v), jnp.floating)]
  if problems:
    raise ValueError(f"{name} do not fit the model: " + "; ".join(problems))


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
