"""What every baseline shares: the run config, the bundle type and small helpers.

A baseline is a bundle of pure functions with BaNEL's round signature
(:class:`~banel_jax.core.banel.Banel`), so :class:`~banel_jax.runtime.driver.BanelRunner`
runs it with ``method=``: the same oracle boundary, the same NRE budget keeper
and the same evaluation as BaNEL.

    x, info = baseline.propose(state, key, m)       # jit: sample the generator
    rewards = oracle(x)                             # host: spends NRE
    state, metrics = baseline.update(state, RoundBatch(...), key)   # jit: learn
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from banel_jax.core import posterior
from banel_jax.core.protocol import RoundBatch, all_finite  # noqa: F401 (re-exported)
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The run fields :class:`~banel_jax.runtime.driver.BanelRunner` reads for a baseline.

  Attributes:
    nre_budget: reward evaluations spent on learning, per seed.
    samples_per_round: samples drawn and scored per round (``m``).
    n_eval: fresh samples per success-rate evaluation (not counted as NRE).
    eval_every: evaluate every this many rounds (and after the last one).
  """

  nre_budget: int = 1000
  samples_per_round: int = 100
  n_eval: int = 10_000
  eval_every: int = 1

  def __post_init__(self):
    for name in ("nre_budget", "samples_per_round", "n_eval", "eval_every"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"RunConfig.{name}={v!r} must be an integer >= 1")

  def replace(self, **changes) -> "RunConfig":
    return dataclasses.replace(self, **changes)


class Baseline(NamedTuple):
  """A baseline as a bundle of pure functions (BaNEL's round signature).

  Attributes:
    init: ``init(key, prior_params) -> state``; the state is a flax
      ``struct.PyTreeNode`` with ``round`` (``int32[]``), ``nre`` (``int32[]``)
      and ``key`` (the root PRNG key) like :class:`~banel_jax.core.banel.BanelState`.
    propose: ``propose(state, key, n) -> (x[n, *event_shape], info)`` with a
      :class:`~banel_jax.core.posterior.PosteriorSampleInfo` (``n`` static).
    update: ``update(state, RoundBatch, key) -> (state, metrics)``, metrics a
      dict of arrays.
    name: the method's name in tables and progress bars.
    model: the generator's family.
    config: the method's (static) config.
  """

  init: Callable[[PRNGKey, Params], Any]
  propose: Callable[[Any, PRNGKey, int], tuple[Samples, posterior.PosteriorSampleInfo]]
  update: Callable[[Any, RoundBatch, PRNGKey], tuple[Any, dict]]
  name: str
  model: GenerativeModel
  config: Any


def all_accepted_info(n: int) -> posterior.PosteriorSampleInfo:
  """Sampling info of a plain generator: ``n`` drawn, ``n`` accepted, ``n`` filled."""
  one = jnp.asarray(n, jnp.int32)
  return posterior.PosteriorSampleInfo(n_filled=one, n_drawn=one, n_accepted=one)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``values`` where ``mask``; 0 when the mask is empty (never NaN)."""
  w = mask.astype(jnp.float32)
  safe = jnp.where(mask, values, 0.0)
  return jnp.sum(w * safe) / jnp.maximum(jnp.sum(w), 1.0)


def hash_samples(x: Samples) -> jax.Array:
  """32-bit FNV-1a hash of each sample: ``uint32[n]`` for ``x[n, *event_shape]``.

  Integer scalars hash to themselves (exact for small discrete spaces); longer
  samples mix every element. Equal samples always get equal hashes; different
  ones collide with probability about ``2**-32``.
  """
  n = x.shape[0]
  flat = x.reshape(n, -1).astype(jnp.uint32)
  if flat.shape[1] == 1:
    return flat[:, 0]

  def mix(h, col):
    return (h ^ col) * jnp.uint32(16777619), None

  h0 = jnp.full((n,), 2166136261, jnp.uint32)
  h, _ = jax.lax.scan(mix, h0, flat.T)
  return h


def count_distinct(x: Samples, mask: jax.Array | None = None) -> jax.Array:
  """``int32[]`` number of distinct samples among ``x[mask]`` (by 32-bit hash)."""
  n = x.shape[0]
  mask = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
  h = hash_samples(x)
  # Sort masked-out samples to the end, then count value changes among the rest.
  order = jnp.lexsort((h, ~mask))
  hs, ms = h[order], mask[order]
  new = jnp.concatenate([jnp.ones((1,), bool), hs[1:] != hs[:-1]])
  return jnp.sum((new & ms).astype(jnp.int32))
