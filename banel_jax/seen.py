"""The set of samples already paid for and failed: exact negative evidence.

The likelihood-ratio regions reject a sample when the failure model explains it
better than the proposal that drew it. A failure the proposal draws *often* is
one they cannot reject: fitted on the round's failures, the failure model gives
it about the share it had among them, which is about the proposal's own
probability, so the ratio stays near 1 however many times it failed. Once
distillation puts mass on such a query, every round pays for it again (one seed
of the MSB attack spent 3,494 of its 7,500 evaluations on ``7+0=``,
``results/README.md``).

With a deterministic oracle, a query that failed once fails again. This module
keeps every paid failure's fingerprint (two 32-bit FNV-1a hashes of the sample's
bytes, a 64-bit key) in a sorted, fixed-capacity array, so that distillation can
treat them as rejected: the exploration posterior becomes
``p_0(x) * 1[x not in R] * 1[x not already failed]``. Membership is a binary
search; shapes are static, so it runs under ``jit`` and ``vmap``.

>>> import jax.numpy as jnp
>>> seen = empty_seen_set(4)
>>> x = jnp.array([[1, 2], [3, 4], [1, 2]], jnp.int32)
>>> seen = add_seen(seen, x, jnp.array([True, False, True]))
>>> int(seen.size), contains(seen, x).tolist()
(1, [True, False, True])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from banel_jax.types import Samples

_EMPTY = np.uint32(0xFFFFFFFF)  # unused slots sort last
# Two FNV-1a variants (different offset bases and primes): a 64-bit key.
_OFFSETS = (0x811C9DC5, 0x050C5D1F)
_PRIMES = (0x01000193, 0x0100019D)
# Slots checked after the binary search: distinct keys sharing their first word
# (about n^2 / 2^33 pairs among n keys) sit next to each other.
_WINDOW = 4


class SeenSet(struct.PyTreeNode):
  """Fingerprints of the failures paid for so far (one seed).

  Attributes:
    keys: ``uint32[capacity, 2]``, sorted by (first, second) word; slots at and
      after ``size`` hold ``0xFFFFFFFF``.
    size: ``int32[]`` distinct failures stored.
  """

  keys: jax.Array
  size: jax.Array

  @property
  def capacity(self) -> int:
    return self.keys.shape[-2]


def empty_seen_set(capacity: int) -> SeenSet:
  """An empty set with room for ``capacity`` distinct failures."""
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1, got {capacity}")
  return SeenSet(keys=jnp.full((capacity, 2), _EMPTY, jnp.uint32),
                 size=jnp.zeros((), jnp.int32))


def fingerprints(x: Samples) -> jax.Array:
  """``uint32[n, 2]``: two FNV-1a hashes of each sample's 32-bit words.

  Any dtype of at most 32 bits: integers are widened, floats reinterpreted
  bit for bit, so equal samples (and only those, up to hash collisions near
  ``2^-64`` per pair) get equal keys.
  """
  x = jnp.asarray(x)
  flat = x.reshape(x.shape[0], -1)
  if jnp.issubdtype(flat.dtype, jnp.floating):
    flat = jax.lax.bitcast_convert_type(flat.astype(jnp.float32), jnp.uint32)
  else:
    flat = flat.astype(jnp.uint32)

  def step(h, column):
    return tuple((hk ^ column) * jnp.uint32(p) for hk, p in zip(h, _PRIMES)), None

  start = tuple(jnp.full((flat.shape[0],), o, jnp.uint32) for o in _OFFSETS)
  h, _ = jax.lax.scan(step, start, flat.T)
  return jnp.stack(h, axis=-1)


def _contains_keys(seen: SeenSet, keys: jax.Array) -> jax.Array:
  first = seen.keys[:, 0]
  start = jnp.searchsorted(first, keys[:, 0], side="left")
  found = jnp.zeros(keys.shape[:1], bool)
  for offset in range(_WINDOW):
    i = jnp.minimum(start + offset, seen.capacity - 1)
    found |= (jnp.all(seen.keys[i] == keys, axis=-1)
              & (start + offset < seen.size))
  return found


def contains(seen: SeenSet, x: Samples) -> jax.Array:
  """``bool[n]``: which samples of ``x`` are in the set."""
  return _contains_keys(seen, fingerprints(x))


def add_seen(seen: SeenSet, x: Samples, mask: jax.Array) -> SeenSet:
  """Adds the samples of ``x`` where ``mask`` (each distinct one once).

  Keys beyond the capacity are dropped (the largest ones); size a set at the
  run's NRE budget, which no run can exceed, so that none is.
  """
  keys = fingerprints(x)
  mask = jnp.asarray(mask, bool)
  # First occurrence of each key within the batch, among the masked ones.
  order = jnp.lexsort((keys[:, 1], keys[:, 0], ~mask))
  ks, ms = keys[order], mask[order]
  repeat = jnp.concatenate([jnp.zeros((1,), bool),
                            jnp.all(ks[1:] == ks[:-1], axis=-1) & ms[:-1]])
  new = ms & ~repeat & ~_contains_keys(seen, ks)
  pool = jnp.concatenate([seen.keys, jnp.where(new[:, None], ks, _EMPTY)])
  merged = pool[jnp.lexsort((pool[:, 1], pool[:, 0]))][:seen.capacity]
  size = jnp.minimum(seen.size + jnp.sum(new.astype(jnp.int32)), seen.capacity)
  return SeenSet(keys=merged, size=size)
