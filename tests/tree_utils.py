"""Helpers the tests share for comparing pytrees."""

import jax
import jax.numpy as jnp
import numpy as np


def leaves_as_numpy(tree):
  """Leaves as numpy arrays, typed PRNG keys as their raw data."""
  def conv(a):
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a = jax.random.key_data(a)
    return np.asarray(a)
  return [conv(a) for a in jax.tree.leaves(tree)]
