"""A fixed-capacity set of samples, by 64-bit fingerprint, under ``jit``.

Each sample's key is two 32-bit FNV-1a hashes of its bytes; keys are kept
sorted in a static-size array, so membership is a binary search and shapes never
change (``jit`` and ``vmap`` run it). Used for the failures already paid for
(:mod:`banel_jax.extensions.seen_failures`, the exact-rejection baseline) and
for the distinct successes of a success bank.

>>> import jax.numpy as jnp
>>> seen = empty_sample_set(4)
>>> x = jnp.array([[1, 2], [3, 4], [1, 2]], jnp.int32)
>>> seen = add_samples(seen, x, jnp.array([True, False, True]))
>>> int(seen.size), contains(seen, x).tolist()
(1, [True, False, True])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from banel_jax.core.types import Samples

_EMPTY = np.uint32(0xFFFFFFFF)  # unused slots sort last
# Two FNV-1a variants (different offset bases and primes): a 64-bit key.
_OFFSETS = (0x811C9DC5, 0x050C5D1F)
_PRIMES = (0x01000193, 0x0100019D)
# Slots checked after the binary search: distinct keys sharing their first word
# (about n^2 / 2^33 pairs among n keys) sit next to each other.
_WINDOW = 4


class SampleSet(struct.PyTreeNode):
  """Fingerprints of a set of samples (one seed).

  Attributes:
    keys: ``uint32[capacity, 2]``, sorted by (first, second) word; slots at and
      after ``size`` hold ``0xFFFFFFFF``.
    size: ``int32[]`` distinct samples stored.
  """

  keys: jax.Array
  size: jax.Array

  @property
  def capacity(self) -> int:
    return self.keys.shape[-2]


def empty_sample_set(capacity: int) -> SampleSet:
  """An empty set with room for ``capacity`` distinct samples."""
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1, got {capacity}")
  return SampleSet(keys=jnp.full((capacity, 2), _EMPTY, jnp.uint32),
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


def _contains_keys(seen: SampleSet, keys: jax.Array) -> jax.Array:
  first = seen.keys[:, 0]
  start = jnp.searchsorted(first, keys[:, 0], side="left")
  found = jnp.zeros(keys.shape[:1], bool)
  for offset in range(_WINDOW):
    i = jnp.minimum(start + offset, seen.capacity - 1)
    found |= (jnp.all(seen.keys[i] == keys, axis=-1)
              & (start + offset < seen.size))
  return found


def contains(seen: SampleSet, x: Samples) -> jax.Array:
  """``bool[n]``: which samples of ``x`` are in the set."""
  return _contains_keys(seen, fingerprints(x))


def add_samples(seen: SampleSet, x: Samples, mask: jax.Array) -> SampleSet:
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
  return SampleSet(keys=merged, size=size)
