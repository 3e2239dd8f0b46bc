"""Type aliases and the generative-model contract.

A generative model is a small bundle of pure functions, in the manner of optax's
``GradientTransformation``: nothing in it holds state, every call takes its
parameters and PRNG key explicitly, and every function can be ``jit``-ed and
``vmap``-ed.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
Samples = jax.Array  # [batch, *event_shape]


class GenerativeModel(NamedTuple):
  """A likelihood-based generative model as pure functions.

  Attributes:
    init: ``init(key) -> params``; fresh parameters (used for the failure model's
      "from scratch" start).
    log_prob: ``log_prob(params, x) -> [batch]`` exact log-likelihood of each
      sample of ``x`` (shape ``[batch, *event_shape]``), in nats.
    sample: ``sample(params, key, n) -> x`` with ``x`` of shape
      ``[n, *event_shape]``; ``n`` must be a Python int (static under ``jit``).
    event_shape: shape of one sample, e.g. ``()`` for a categorical, ``(L,)`` for a
      token sequence of fixed padded length ``L``.
    dtype: dtype of a sample, e.g. ``jnp.int32``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from banel_jax.models import tabular
    >>> model = tabular.make_tabular_model(num_categories=5)
    >>> params = model.init(jax.random.key(0))
    >>> x = model.sample(params, jax.random.key(1), 3)
    >>> model.log_prob(params, x).shape
    (3,)
  """

  init: Callable[[PRNGKey], Params]
  log_prob: Callable[[Params, Samples], Array]
  sample: Callable[[Params, PRNGKey, int], Samples]
  event_shape: tuple[int, ...]
  dtype: Any


# Host-side reward oracle: a batch of samples (numpy, [n, *event_shape]) in, one
# reward in {0, 1} per sample out. The one impure boundary of the library.
Oracle = Callable[[Any], Any]
