"""Seeds side by side across devices: the seed axis sharded with ``jax.sharding``.

Every per-seed array of a run (the state, its keys, the round's samples) carries
the seeds on its leading axis, and seeds never interact, so a run spreads over
several devices by sharding that axis alone: ``jit`` partitions the vmapped
programs and each device computes its own seeds. The pretrained params and the
other shared inputs are replicated.

The mesh uses the largest number of devices that divides the number of seeds, so
4 seeds on 8 devices use 4 of them, and 3 seeds on 2 devices run on one.

Example (on CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4``):
  >>> import jax, jax.numpy as jnp
  >>> mesh = seed_mesh(4)
  >>> x = shard_seeds(jnp.zeros((4, 3)), mesh)
  >>> len(x.sharding.device_set) == min(4, jax.device_count())
  True
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SEED_AXIS = "seeds"


def seed_mesh(num_seeds: int,
              devices: Sequence[jax.Device] | None = None) -> Mesh | None:
  """A one-axis mesh (``"seeds"``) over as many devices as evenly split the seeds.

  Args:
    num_seeds: seeds of the run (the leading axis to shard).
    devices: devices to use; default ``jax.devices()``.

  Returns:
    The mesh, or ``None`` when only one device would be used.
  """
  if isinstance(num_seeds, bool) or not isinstance(num_seeds, (int, np.integer)) \
      or num_seeds < 1:
    raise ValueError(f"num_seeds must be a positive integer, got {num_seeds!r}")
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices is empty")
  n = max(d for d in range(1, len(devices) + 1) if num_seeds % d == 0)
  if n == 1:
    return None
  return Mesh(np.array(devices[:n]), (SEED_AXIS,))


def shard_seeds(tree, mesh: Mesh | None):
  """Places every leaf of ``tree`` with its leading (seed) axis split over ``mesh``.

  Args:
    tree: a pytree of arrays, each with the seeds on axis 0 (PRNG key arrays
      included).
    mesh: from :func:`seed_mesh`; ``None`` returns ``tree`` unchanged.

  Raises:
    ValueError: a leaf has no leading axis the mesh can split evenly.
  """
  if mesh is None:
    return tree
  size = mesh.devices.size
  sharding = NamedSharding(mesh, PartitionSpec(SEED_AXIS))

  def put(path, x):
    shape = np.shape(x)
    if not shape or shape[0] % size:
      raise ValueError(f"cannot split {jax.tree_util.keystr(path) or 'the array'} "
                       f"of shape {tuple(shape)} over {size} devices along its "
                       "leading (seed) axis")
    return jax.device_put(x, sharding)

  return jax.tree_util.tree_map_with_path(put, tree)


def replicate(tree, mesh: Mesh | None):
  """Places a full copy of every leaf of ``tree`` on each device of ``mesh``."""
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_map(fn, mesh: Mesh, in_specs, out_specs):
  """``jax.shard_map`` without the replication check (``check_vma=False``).

  The library's programs (samplers, fits, rounds) carry replicated values
  (params, the prior) beside per-device ones through ``lax.scan``, which the
  checker cannot type. Used by the runner's seed programs and by
  :mod:`banel_jax.runtime.data_parallel`.
  """
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=False)

