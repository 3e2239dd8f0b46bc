"""Type aliases and the generative-model contract.

A generative model is a small bundle of pure functions, in the manner of optax's
``GradientTransformation``: nothing in it holds state, every call takes its
parameters and PRNG key explicitly, and every function can be ``jit``-ed and
``vmap``-ed.
"""

from __future__ import annotations

import dataclasses
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
      sample of ``x`` (shape ``[batch, *event_shape]``), in nats. It may be a
      :class:`SplitLogProb`, which lets microbatched training share work that
      depends on the parameters alone.
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


@dataclasses.dataclass(frozen=True)
class SplitLogProb:
  """A ``log_prob(params, x)`` split into a parameter-only part and the rest.

  Some models spend part of every pass on work that depends on the parameters
  alone (the Transformer's :class:`~banel_jax.models.transformer.InputTables`).
  Split that way, a caller that runs many passes under one set of parameters
  (the microbatches of one training step,
  :func:`~banel_jax.core.mle.weighted_nll_and_grad`) does that work once, and
  back-propagates through it once, instead of once per pass. Calling the
  object is the plain ``log_prob``: ``apply(params, prepare(params, x), x)``.

  Attributes:
    prepare: ``prepare(params, x) -> prepared``, a pytree of float arrays
      that depends on ``params`` and on ``x``'s shape only (the batch it will
      serve, so that a size rule can see it), or ``None`` when there is
      nothing to share at that shape.
    apply: ``apply(params, prepared, x) -> f32[batch]``, the log-likelihood of
      ``x`` (any batch, e.g. one microbatch of the batch ``prepare`` saw),
      given ``prepared``. Gradients reach ``params`` through ``prepared`` only
      via ``prepare``; a caller that differentiates ``apply`` with ``prepared``
      held fixed must add ``prepare``'s vector-Jacobian product itself.

  Example:
    >>> import jax.numpy as jnp
    >>> lp = SplitLogProb(prepare=lambda p, x: jnp.exp(p),
    ...                   apply=lambda p, scale, x: -scale * x)
    >>> float(lp(jnp.log(2.0), jnp.array([3.0]))[0])
    -6.0
  """

  prepare: Callable[[Params, Samples], Any]
  apply: Callable[[Params, Any, Samples], Array]

  def __call__(self, params: Params, x: Samples) -> Array:
    return self.apply(params, self.prepare(params, x), x)


# Host-side reward oracle: a batch of samples (numpy, [n, *event_shape]) in, one
# reward in {0, 1} per sample out. The one impure boundary of the library.
Oracle = Callable[[Any], Any]


def check_param_shapes(params, shapes: dict[str, tuple[int, ...]]) -> None:
  """Raises a ``ValueError`` naming the problem unless ``params`` is a dict
  with exactly the keys of ``shapes``, each an array of that shape (for
  models whose params are a flat dict of arrays).

  >>> import jax.numpy as jnp
  >>> check_param_shapes({"w": jnp.zeros((2, 3))}, {"w": (2, 3)})
  >>> check_param_shapes({"w": jnp.zeros(3)}, {"w": (2, 3)})
  Traceback (most recent call last):
  ...
  ValueError: params['w'] must have shape (2, 3), got (3,)
  """
  if not isinstance(params, dict) or set(params) != set(shapes):
    keys = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError(f"params must be a dict with keys {sorted(shapes)}, got {keys}")
  for name, shape in shapes.items():
    got = tuple(getattr(params[name], "shape", ()))
    if got != tuple(shape):
      raise ValueError(f"params[{name!r}] must have shape {tuple(shape)}, got {got}")

