"""batching.vmap: jax.vmap, except that a lone item runs unbatched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from banel_jax.core import batching


def _fn(seen):
  def f(x, key, scale):
    seen.append(x.shape)
    return {"y": x * scale + jax.random.normal(key, x.shape), "n": jnp.sum(x)}
  return f


@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("jit", [False, True])
def test_same_values_as_jax_vmap(size, jit):
  seen = []
  x = jnp.arange(size * 4, dtype=jnp.float32).reshape(size, 4)
  keys = jax.random.split(jax.random.key(0), size)
  ours = batching.vmap(_fn(seen), in_axes=(0, 0, None))
  if jit:
    ours = jax.jit(ours)
  got = ours(x, keys, 2.0)
  want = jax.vmap(_fn([]), in_axes=(0, 0, None))(x, keys, 2.0)
  assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, want)
  np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)
  np.testing.assert_allclose(got["n"], want["n"], rtol=1e-6)
  assert seen and all(shape == (4,) for shape in seen)
  if size == 1:  # a lone item reaches the function without a batch axis
    jaxpr = jax.make_jaxpr(batching.vmap(lambda a: a @ a.T))(jnp.ones((1, 2, 3)))
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    (batch_dims,) = [d.params["dimension_numbers"][1] for d in dots]
    assert batch_dims == ((), ())  # no batch dimension in the product


def test_pytrees_and_keys_keep_the_axis():
  state = {"w": jnp.ones((1, 2)), "k": jax.random.split(jax.random.key(1), 1)}
  out = batching.vmap(lambda s: s)(state)
  assert out["w"].shape == (1, 2) and out["k"].shape == (1,)
  assert jax.dtypes.issubdtype(out["k"].dtype, jax.dtypes.prng_key)


def test_other_axes_fall_back_to_jax_vmap():
  x = jnp.ones((3, 1))
  out = batching.vmap(lambda a: a + 1, in_axes=1)(x)  # axis 1 (size 1): jax.vmap
  assert out.shape == (1, 3)
  with pytest.raises(ValueError):
    batching.vmap(lambda a, b: a + b)(jnp.ones((1, 2)), jnp.ones((2, 2)))
