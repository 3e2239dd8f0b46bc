"""Unlikelihood training on failures (Welleck et al. 2019).

Pushes the probability of the round's failures down directly, which BaNEL
deliberately avoids, anchored by maximum likelihood on fresh pretrained samples
(free: no NRE) so that the generator does not unlearn the grammar::

    loss = mean_{x in failures} UL(x) + mu * (- mean_{y ~ p_0} log p_theta(y))

with one of two forms of ``UL``:

* ``"token"`` (models exposing per-token log-probs, e.g. the transformer's
  ``token_log_prob``): ``UL(x) = - sum_t m_t log(1 - p_theta(x_t | x_<t))``,
  masked to chosen positions ``m_t`` (e.g. digit tokens only, so ``+``, ``=``
  and the end token are not unlearned);
* ``"sequence"`` (any model, e.g. the toy's table): ``UL(x) = -log(1 -
  p_theta(x))``.

Successes are never learned from (they are not failures, and ``r_learn = 0``):
only samples the oracle scored 0 enter the unlikelihood term. A few Adam steps
(global-norm clipped) per round.

References:
  Welleck et al. (2019), "Neural Text Generation with Unlikelihood Training",
  arXiv 1908.04319.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from banel_jax.core.protocol import RoundBatch, round_masks
from banel_jax.baselines.common import (Baseline, all_accepted_info, all_finite,
                                        count_distinct, masked_mean)
from banel_jax.core.mle import (check_train_microbatch, microbatch_size_for,
                                microbatched_sums_and_grad, resolve_train_microbatch)
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples

# token_log_prob(params, x[n, L]) -> f32[n, L]; token_mask(x[n, L]) -> bool[n, L]
TokenLogProb = Callable[[Params, Samples], jax.Array]
TokenMask = Callable[[Samples], jax.Array]

# log p is capped at log(1 - 1e-6) so that -log(1 - p) stays finite.
_MAX_LOG_PROB = -1e-6


def log1mexp(log_p: jax.Array) -> jax.Array:
  """``log(1 - exp(log_p))`` for ``log_p <= 0``, stable at both ends.

  >>> import jax.numpy as jnp
  >>> [round(float(v), 4) for v in log1mexp(jnp.log(jnp.array([0.5, 1e-9])))]
  [-0.6931, -0.0]
  """
  log_p = jnp.minimum(log_p, _MAX_LOG_PROB)
  return jnp.where(log_p > -0.6931472, jnp.log(-jnp.expm1(log_p)),
                   jnp.log1p(-jnp.exp(log_p)))


def sequence_unlikelihood(log_prob: jax.Array) -> jax.Array:
  """``-log(1 - p(x))`` of each sequence from ``log p(x)`` (``f32[n]``)."""
  return -log1mexp(log_prob)


def token_unlikelihood(token_log_prob: jax.Array, mask: jax.Array) -> jax.Array:
  """``-sum_t mask_t log(1 - p(x_t | x_<t))`` of each sequence (``f32[n]``)."""
  chex.assert_equal_shape((token_log_prob, mask))
  mask = mask.astype(bool)
  safe = jnp.where(mask, token_log_prob, -1.0)  # masked-out positions: any finite
  return -jnp.sum(jnp.where(mask, log1mexp(safe), 0.0), axis=-1)


def token_id_mask(ids: Sequence[int]) -> TokenMask:
  """Mask of the positions holding one of ``ids`` (e.g. ``range(10)``: digits)."""
  ids = jnp.asarray(tuple(ids), jnp.int32)

  def mask(x: Samples) -> jax.Array:
    return jnp.any(x[..., None] == ids, axis=-1)

  return mask


@dataclasses.dataclass(frozen=True)
class UnlikelihoodConfig:
  """Knobs of unlikelihood training (frozen, hashable).

  Attributes:
    form: ``"sequence"`` or ``"token"`` (needs ``token_log_prob`` and
      ``token_mask``).
    learning_rate: Adam learning rate.
    steps: Adam steps per round (full batch of the round's failures).
    anchor_weight: ``mu``, weight of the maximum-likelihood anchor (0: none,
      and no anchor samples are drawn).
    anchor_samples: fresh pretrained samples per round for the anchor (free).
    max_grad_norm: global gradient-norm clip before Adam.
    train_microbatch: accumulate each step's gradient over microbatches of the
      largest divisor of the failures' batch (and of the anchor batch) up to
      this many samples, one after the other
      (``banel_jax.core.mle.microbatched_sums_and_grad``): the same step up to
      float rounding, faster on a CPU for a transformer. 0 (default): one
      pass per step.
  """

  # added after records of this config were written (see banel_jax.runtime.checkpoint)

  form: Literal["sequence", "token"] = "sequence"
  learning_rate: float = 0.03
  steps: int = 16
  anchor_weight: float = 0.1
  anchor_samples: int = 256
  max_grad_norm: float = 1.0
  train_microbatch: int | str = 0

  def __post_init__(self):
    check_train_microbatch("UnlikelihoodConfig", self.train_microbatch)

  def replace(self, **changes) -> "UnlikelihoodConfig":
    return dataclasses.replace(self, **changes)


class UnlikelihoodState(struct.PyTreeNode):
  """The run state of unlikelihood training (one seed).

  Attributes:
    policy: ``TrainState`` of the generator.
    prior_params: the pretrained params (sampled for the anchor).
    round: ``int32[]`` rounds completed.
    nre: ``int32[]`` reward evaluations spent on learning.
    key: the run's root PRNG key.
  """

  policy: train_state.TrainState
  prior_params: Params
  round: jax.Array
  nre: jax.Array
  key: jax.Array


def make_unlikelihood(model: GenerativeModel,
                      config: UnlikelihoodConfig = UnlikelihoodConfig(), *,
                      token_log_prob: TokenLogProb | None = None,
                      token_mask: TokenMask | None = None) -> Baseline:
  """Builds unlikelihood training ``(init, propose, update)``.

  Args:
    model: the generator's family.
    config: :class:`UnlikelihoodConfig`.
    token_log_prob: per-token log-probs ``(params, x[n, L]) -> f32[n, L]`` (token
      form only), e.g. ``make_transformer(cfg).token_log_prob``.
    token_mask: ``x[n, L] -> bool[n, L]`` positions to unlearn (token form only),
      e.g. ``token_id_mask(range(10))``. Positions whose token has probability 1
      (PAD after the end token) must be masked out.

  Returns:
    A :class:`~banel_jax.baselines.common.Baseline` with an
    :class:`UnlikelihoodState`.
  """
  c = config
  if c.form not in ("sequence", "token"):
    raise ValueError(f"form must be 'sequence' or 'token', got {c.form!r}")
  if c.form == "token" and (token_log_prob is None or token_mask is None):
    raise ValueError("the token form needs token_log_prob and token_mask")
  tx = optax.chain(optax.clip_by_global_norm(c.max_grad_norm),
                   optax.adam(c.learning_rate))
  event_rank = len(model.event_shape)

  def unlikelihood(params, x):
    if c.form == "token":
      return token_unlikelihood(token_log_prob(params, x), token_mask(x))
    return sequence_unlikelihood(model.log_prob(params, x))

  def init(key: PRNGKey, prior_params: Params) -> UnlikelihoodState:
    policy = train_state.TrainState.create(apply_fn=model.log_prob,
                                           params=prior_params, tx=tx)
    return UnlikelihoodState(policy=policy, prior_params=prior_params,
                             round=jnp.zeros((), jnp.int32),
                             nre=jnp.zeros((), jnp.int32), key=key)

  def propose(state: UnlikelihoodState, key: PRNGKey, n: int):
    """``n`` samples of the current generator and all-``n`` sampling info."""
    return model.sample(state.policy.params, key, n), all_accepted_info(n)

  def update(state: UnlikelihoodState, batch: RoundBatch, key: PRNGKey):
    evaluated, success = round_masks(batch, event_rank)  # success: reported only
    failure = evaluated & ~success
    use_anchor = c.anchor_weight > 0 and c.anchor_samples > 0  # static
    anchor = (model.sample(state.prior_params, key, c.anchor_samples) if use_anchor
              else None)

    def loss_fn(params):
      ul = masked_mean(unlikelihood(params, batch.x), failure)
      nll = (-jnp.mean(model.log_prob(params, anchor)) if use_anchor
             else jnp.zeros((), jnp.float32))
      return ul + c.anchor_weight * nll, (ul, nll)

    def microbatched_loss_and_grad(params):
      # The same loss as loss_fn, each term a sum over samples accumulated over
      # microbatches, then divided as loss_fn's means divide.
      n_fail = jnp.maximum(jnp.sum(failure.astype(jnp.float32)), 1.0)
      m = batch.x.shape[0]
      if c.form == "token":  # per-token log-probs, and the positions to unlearn
        scored, per_sample = token_log_prob, (token_mask(batch.x), failure)
      else:
        scored, per_sample = model.log_prob, (failure,)

      def ul_sums(out, *rest):  # rest: (token mask,) failure
        values = (token_unlikelihood(out, rest[0]) if c.form == "token"
                  else sequence_unlikelihood(out))
        return jnp.sum(jnp.where(rest[-1], values, 0.0)), ()

      (ul_sum, _), grads = microbatched_sums_and_grad(
          scored, params, batch.x, per_sample, ul_sums,
          microbatch_size_for(m, c.train_microbatch) or m)
      ul = ul_sum / n_fail
      grads = jax.tree.map(lambda g: g / n_fail, grads)
      nll = jnp.zeros((), jnp.float32)
      if use_anchor:
        a = c.anchor_samples
        (nll_sum, _), anchor_grads = microbatched_sums_and_grad(
            model.log_prob, params, anchor, (), lambda lp: (-jnp.sum(lp), ()),
            microbatch_size_for(a, c.train_microbatch) or a)
        nll = nll_sum / a
        grads = jax.tree.map(lambda g, h: g + (c.anchor_weight / a) * h, grads,
                             anchor_grads)
      return (ul + c.anchor_weight * nll, (ul, nll)), grads

    def step(policy, _):
      if resolve_train_microbatch(c.train_microbatch):
        (loss, aux), grads = microbatched_loss_and_grad(policy.params)
      else:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(policy.params)
      return policy.apply_gradients(grads=grads), (loss, *aux)

    logp_before = model.log_prob(state.policy.params, batch.x)
    policy, (losses, uls, nlls) = jax.lax.scan(step, state.policy, None,
                                               length=c.steps)
    logp_after = model.log_prob(policy.params, batch.x)
    n_eval = jnp.sum(evaluated.astype(jnp.int32))
    metrics = {
        "ul_loss": uls[-1],
        "anchor_nll": nlls[-1],
        "failure_log_prob_change": masked_mean(logp_after - logp_before, failure),
        "n_failures": jnp.sum(failure.astype(jnp.int32)),
        "n_successes": jnp.sum(success.astype(jnp.int32)),
        "n_evaluated": n_eval,
        "n_distinct": count_distinct(batch.x, evaluated),
        "params_finite": all_finite(policy.params),
    }
    new_state = state.replace(policy=policy, round=state.round + 1,
                              nre=state.nre + n_eval)
    return new_state, metrics

  return Baseline(init=init, propose=propose, update=update, name="unlikelihood",
                  model=model, config=config)
