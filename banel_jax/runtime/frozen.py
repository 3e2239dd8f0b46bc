"""Frozen parameters: a model's fixed inputs, passed to compiled programs as
arguments.

Some models read parameters that no method trains, e.g. the pretrained base
of LoRA adapters (:mod:`banel_jax.models.lora`): the model's params (what the
method trains, stores per region and checkpoints) are the adapters, and its
functions read the base besides. If they read it from a closure, ``jax.jit``
embeds it into every compiled program as constants, a copy of the base per
program. A :class:`Frozen` hook lets the compiled function take it as an
argument instead: ``bind(params)`` is a context manager under which the
model's functions read ``params`` (e.g. a traced argument) in place of their
own copy, so::

  jitted = jit(fn, frozen)     # jax.jit(lambda p, *a: (with bind(p): fn(*a)))
  jitted(*args)                # fn(*args), frozen.params passed as an argument

A model with such a hook is a wrapper with ``.model`` (the
:class:`~banel_jax.core.types.GenerativeModel` over the trained params) and
``.frozen`` (a :class:`Frozen`), like :class:`~banel_jax.models.lora.LoraModel`;
:class:`~banel_jax.BanelRunner` takes one in place of the model
(:func:`split_frozen`) and passes the frozen params to each program it
compiles, not mapped over the seeds and replicated over the seed mesh's
devices. They are never part of the method's state, so never checkpointed.

Example:
  >>> import contextlib, contextvars, jax, jax.numpy as jnp
  >>> table = contextvars.ContextVar("table", default=jnp.arange(1000.0))
  >>> @contextlib.contextmanager
  ... def bind(params):
  ...   token = table.set(params)
  ...   try:
  ...     yield
  ...   finally:
  ...     table.reset(token)
  >>> frozen = Frozen(params=table.get(), bind=bind)
  >>> fn = lambda x: x * table.get().sum()   # reads the table from a closure
  >>> float(jit(fn, frozen)(jnp.float32(2.0)))
  999000.0
  >>> x = jnp.float32(2.0)
  >>> len(jax.jit(fn).lower(x).as_text()) > 8000   # the table printed in
  True
  >>> len(jit(fn, frozen).lower(x).as_text()) < 2000   # an argument
  True
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple, Sequence

import jax

from banel_jax.core.types import GenerativeModel, Params


class Frozen(NamedTuple):
  """Parameters a model reads but no method trains.

  Attributes:
    params: the frozen pytree (e.g. LoRA's base params).
    bind: ``bind(params)``, a context manager: while it is open, the model's
      functions read ``params`` (a pytree of the same structure and shapes,
      e.g. tracers of an enclosing ``jax.jit``) in place of ``Frozen.params``.
  """

  params: Params
  bind: Callable[[Params], contextlib.AbstractContextManager]


def split_frozen(model) -> tuple[GenerativeModel, Frozen | None]:
  """``(wrapper.model, wrapper.frozen)`` for a wrapper with a :class:`Frozen`
  hook (e.g. a :class:`~banel_jax.models.lora.LoraModel`); ``(model, None)``
  for anything else (a plain model).

  Raises:
    ValueError: ``model`` has a ``frozen`` attribute that is not a
      :class:`Frozen`, or no ``.model`` beside it.
  """
  if isinstance(model, GenerativeModel) or not hasattr(model, "frozen"):
    return model, None
  inner, frozen = getattr(model, "model", None), model.frozen
  if not isinstance(frozen, Frozen) or inner is None:
    raise ValueError(f"{type(model).__name__} has .frozen but is no frozen-params "
                     "wrapper: one needs .model (the GenerativeModel over the trained "
                     "params) and .frozen, a banel_jax.runtime.frozen.Frozen")
  return inner, frozen


def bound(fn: Callable, bind: Callable[[Params], contextlib.AbstractContextManager]
          ) -> Callable:
  """``(frozen_params, *args) -> fn(*args)``, called with ``bind(frozen_params)``
  open (so the model's functions that ``fn`` calls read them)."""

  def call(frozen_params, *args, **kwargs):
    with bind(frozen_params):
      return fn(*args, **kwargs)

  return call


def shift_argnums(argnums: int | Sequence[int] | None) -> tuple[int, ...]:
  """``argnums`` of ``fn`` as argnums of :func:`bound` ``(fn)`` (one to the
  right)."""
  if argnums is None:
    return ()
  argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
  return tuple(i + 1 for i in argnums)


class FrozenCall:
  """A function of ``(frozen_params, *args)`` called as a function of ``args``.

  Attributes:
    fn: the jitted function whose first argument is the frozen params.
    params: the frozen params passed to it.
  """

  def __init__(self, fn: Callable, params: Params):
    self.fn, self.params = fn, params

  def __call__(self, *args, **kwargs):
    return self.fn(self.params, *args, **kwargs)

  def lower(self, *args, **kwargs):
    """``fn.lower`` with the frozen params first (as ``jax.jit``'s ``lower``)."""
    return self.fn.lower(self.params, *args, **kwargs)


def with_params(fn: Callable, frozen_params: Params | None) -> Callable:
  """``fn`` itself where there are no frozen params, else a :class:`FrozenCall`
  that passes ``frozen_params`` as ``fn``'s first argument."""
  return fn if frozen_params is None else FrozenCall(fn, frozen_params)


def jit(fn: Callable, frozen: Frozen | None, static_argnums: int | Sequence[int] = (),
        donate_argnums: int | Sequence[int] = (), **jit_kwargs: Any) -> Callable:
  """``jax.jit(fn, ...)`` with ``frozen.params`` passed to the compiled program
  as an argument instead of embedded as constants (``frozen=None``: plain
  ``jax.jit``).

  The result is called like ``fn`` and has ``.lower(*args)``.
  """
  if frozen is None:
    return jax.jit(fn, static_argnums=static_argnums, donate_argnums=donate_argnums,
                   **jit_kwargs)
  jitted = jax.jit(bound(fn, frozen.bind), static_argnums=shift_argnums(static_argnums),
                   donate_argnums=shift_argnums(donate_argnums), **jit_kwargs)
  return FrozenCall(jitted, frozen.params)
