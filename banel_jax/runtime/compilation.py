"""Counting XLA compilations, to show that nothing re-traces per step or round."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCount:
  """Number of XLA backend compilations seen inside :func:`count_compilations`."""

  def __init__(self):
    self.count = 0


@contextlib.contextmanager
def count_compilations() -> Iterator[CompileCount]:
  """Counts XLA compilations in its block (any thread, any jitted function).

  >>> import jax, jax.numpy as jnp
  >>> f = jax.jit(lambda x: x + 1)
  >>> _ = f(jnp.ones(3))               # compiles
  >>> with count_compilations() as c:
  ...   _ = f(jnp.ones(3))             # cached: no compilation
  >>> c.count
  0
  """
  counter = CompileCount()

  def listener(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _BACKEND_COMPILE_EVENT:
      counter.count += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield counter
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
