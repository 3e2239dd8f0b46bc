"""The latest successes found in training, kept for distillation.

BaNEL learns from failures only; the successes its paid draws find are recorded
and reported. With ``learn_from_successes`` they also join distillation, but a
round's own successes are a handful among the hundreds of accepted samples, and
they are gone the next round: on the MSB attack, seeds whose success rate
reached 1% at some round often fell back to near the pretrained rate by the end
(``docs/findings.md``). A :class:`SuccessBank` keeps the last ``capacity``
successes, so that every distillation fits all of them
(``BanelConfig.success_bank_size``).

It is a ring buffer of samples with static shapes (``jit`` and ``vmap`` run it):
the slot of the ``k``-th success ever added is ``k mod capacity``. With
``distinct=True`` a success already in the bank (or earlier in the same batch)
is not added again, so a proposal that keeps rewriting a few successful queries
does not push the other ones out (``BanelConfig.success_bank_distinct``).

>>> import jax.numpy as jnp
>>> bank = empty_success_bank(3, (2,), jnp.int32)
>>> x = jnp.array([[1, 1], [2, 2], [3, 3], [4, 4]], jnp.int32)
>>> bank = add_successes(bank, x, jnp.array([True, False, True, True]))
>>> bank = add_successes(bank, x, jnp.array([False, True, False, False]))
>>> bank.x.tolist(), valid_mask(bank).tolist()
([[2, 2], [3, 3], [4, 4]], [True, True, True])
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct

from banel_jax.core import sample_set as seen
from banel_jax.core.types import Samples


class SuccessBank(struct.PyTreeNode):
  """The latest successes found in training (one seed).

  Attributes:
    x: ``[capacity, *event_shape]`` samples; the slots of
      :func:`valid_mask` hold successes, the others zeros.
    count: ``int32[]`` successes added so far (may exceed the capacity; the
      oldest were overwritten).
  """

  x: jax.Array
  count: jax.Array

  @property
  def capacity(self) -> int:
    return self.x.shape[0]


def empty_success_bank(capacity: int, event_shape: tuple[int, ...],
                       dtype) -> SuccessBank:
  """An empty bank of ``capacity`` samples of shape ``event_shape``."""
  if not isinstance(capacity, int) or capacity < 1:
    raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
  return SuccessBank(x=jnp.zeros((capacity, *event_shape), dtype),
                     count=jnp.zeros((), jnp.int32))


def valid_mask(bank: SuccessBank) -> jax.Array:
  """``bool[capacity]``: the slots that hold a success."""
  return jnp.arange(bank.capacity) < jnp.minimum(bank.count, bank.capacity)


def add_successes(bank: SuccessBank, x: Samples, mask: jax.Array,
                  distinct: bool = False) -> SuccessBank:
  """Adds the samples of ``x`` where ``mask``, in order, overwriting the oldest.

  When a batch holds more successes than the capacity, its last ``capacity``
  are kept.

  Args:
    bank: the bank.
    x: ``[n, *event_shape]`` samples.
    mask: ``bool[n]``, the successes among them.
    distinct: static. If ``True``, a sample equal to one in the bank, or to an
      earlier masked sample of ``x``, is skipped (equality of the 64-bit
      fingerprints of :func:`banel_jax.core.sample_set.fingerprints`); ``count`` then
      counts distinct successes added.
  """
  chex.assert_rank(mask, 1)
  chex.assert_axis_dimension(x, 0, mask.shape[0])
  chex.assert_equal_shape([x[0], bank.x[0]])
  mask = jnp.asarray(mask, bool)
  if distinct:
    keys = seen.fingerprints(x)
    bank_keys = seen.fingerprints(bank.x)
    same = jnp.all(keys[:, None] == keys[None, :], axis=-1)
    earlier = jnp.tril(same, k=-1) & mask[None, :]
    in_bank = jnp.all(keys[:, None] == bank_keys[None, :], axis=-1) & valid_mask(bank)
    mask = mask & ~jnp.any(earlier, axis=1) & ~jnp.any(in_bank, axis=1)
  rank = jnp.cumsum(mask.astype(jnp.int32)) - 1  # order among this batch's successes
  n_new = jnp.sum(mask.astype(jnp.int32))
  keep = mask & (rank >= n_new - bank.capacity)
  slot = jnp.where(keep, (bank.count + rank) % bank.capacity, bank.capacity)
  # Slot ``capacity`` is out of range: those writes are dropped.
  new_x = bank.x.at[slot].set(x.astype(bank.x.dtype), mode="drop")
  return SuccessBank(x=new_x, count=bank.count + n_new)
