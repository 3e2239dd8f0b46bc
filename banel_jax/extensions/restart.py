"""Restart a search that has found nothing after a number of rounds.

Not the paper's algorithm: it reads whether any success was found (so results
made with it are labelled as using successes). A seed whose training has scored
no success restarts every ``every`` rounds: the next proposal is the pretrained
model again (its optimizer state fresh) and every region is dropped; the failure
models already fitted are not used again. Once a success is found it never
restarts. Shape-static: both branches are computed and one is selected, so
nothing recompiles.

Metric: ``n_restarts``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from banel_jax.core.extension import Extension, RoundOutcome


class RestartClock(struct.PyTreeNode):
  """When to restart (one seed).

  Attributes:
    since: ``int32[]`` rounds since the run's start or its last restart.
    found: ``bool[]`` whether training has scored a success yet.
    count: ``int32[]`` restarts so far.
  """

  since: jax.Array
  found: jax.Array
  count: jax.Array


@dataclasses.dataclass(frozen=True)
class RestartConfig:
  """Attributes:
    every: rounds without any success after which the search restarts.
  """

  every: int

  def __post_init__(self):
    if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
      raise ValueError(f"RestartConfig.every={self.every!r} must be an integer >= 1")


def restart(every: int) -> Extension:
  """The :class:`~banel_jax.core.extension.Extension` that restarts stalled seeds.

  Args:
    every: rounds without any success after which the search restarts.
  """
  config = RestartConfig(every=every)

  def init(prior_params):
    del prior_params
    return RestartClock(since=jnp.zeros((), jnp.int32), found=jnp.zeros((), bool),
                        count=jnp.zeros((), jnp.int32))

  def after_update(clock: RestartClock, outcome: RoundOutcome):
    found = clock.found | outcome.any_success
    since = clock.since + 1
    now = (~found) & (since >= config.every)
    proposal, prior = outcome.proposal, outcome.prior_params
    fresh = proposal.replace(step=jnp.zeros_like(proposal.step), params=prior,
                             opt_state=proposal.tx.init(prior))
    proposal = jax.tree.map(lambda u, v: jnp.where(now, u, v), fresh, proposal)
    regions = outcome.regions.replace(valid=outcome.regions.valid & ~now,
                                      size=jnp.where(now, 0, outcome.regions.size))
    clock = RestartClock(since=jnp.where(now, 0, since), found=found,
                         count=clock.count + now.astype(jnp.int32))
    return (clock, outcome._replace(proposal=proposal, regions=regions),
            {"n_restarts": clock.count})

  return Extension(name="restart", init=init, after_update=after_update,
                   uses_successes=True, config=config)
