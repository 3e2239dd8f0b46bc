"""Negative-sample reinforcement (NSR): a policy gradient on the failures only.

Reinforcement learning with verifiable rewards splits into reinforcing right
answers (PSR) and penalising wrong ones (NSR); Zhu et al. (2025) train on the
second part alone. With reward ``-1`` on a failure and the model's own samples,
the policy gradient of a round is that of::

    loss = mean_{x in failures} log p_theta(x)

minimised: every failed sample's probability is pushed down, and the mass it
loses flows to the other sequences in proportion to their current
probability (the softmax's gradient), so the model's prior decides where it
goes. It is the language-model kin of :mod:`banel_jax.baselines.unlikelihood`
(which pushes ``log(1 - p)`` instead and adds an anchor); NSR has neither an
anchor nor a KL term, as in the paper.

* ``aggregation="sequence"`` (any model, e.g. the toy's table): one term per
  failed sample, ``log p_theta(x)``, averaged over the failures.
* ``aggregation="token"`` (models with per-token log-probs, e.g. a prompted
  decoder's ``token_log_prob``): one term per token of each failed completion
  (``token_mask``: up to and including its end token), averaged over all those
  tokens: the token-length normalised loss that the paper's PPO-style trainer
  uses, so long wrong answers do not outweigh short ones per token.
* ``steps`` full-batch Adam steps per round (global-norm clipped). After the
  first step the terms are PPO-clipped ratios to the round's sampling policy,
  ``max(rho, clip(rho, 1 - eps, 1 + eps))`` with ``rho = p_theta / p_old``
  (for a negative advantage the pessimistic PPO term): a term stops pushing
  once its probability fell by the factor ``1 - eps``. At ``rho = 1`` its
  gradient is ``grad log p_theta``, so ``steps=1`` is the plain NSR gradient.

Successes are never learned from (``uses_successes`` is false): NSR's
objective has no term for a right answer, so a round whose scored samples all
succeed (or that scored none) makes no step at all, parameters and Adam state
unchanged. Successes are recorded by the driver and reported, as for every
baseline.

Example (the toy: bins 2 and 8 are rewarded; every other bin is a failure):
  >>> import jax, jax.numpy as jnp
  >>> from banel_jax import RoundBatch
  >>> from banel_jax.baselines import NSRConfig, make_nsr
  >>> from banel_jax.tasks.toy1d import Toy1DTask
  >>> task = Toy1DTask(num_bins=11)
  >>> model = task.model()
  >>> nsr = make_nsr(model, NSRConfig(learning_rate=0.1, steps=2))
  >>> state = nsr.init(jax.random.key(0), task.prior_params())
  >>> x = jnp.array([5, 5, 4, 2])
  >>> batch = RoundBatch(x=x, rewards=jnp.array([0., 0., 0., 1.]),
  ...                    evaluated=jnp.ones(4, bool), log_norm=jnp.zeros(()))
  >>> state, metrics = nsr.update(state, batch, jax.random.key(1))
  >>> bool(metrics["failure_log_prob_change"] < 0), int(metrics["n_failures"])
  (True, 3)

References:
  Zhu, Xia, Wei, Chen, Chen, Meng (2025), "The Surprising Effectiveness of
  Negative Reinforcement in LLM Reasoning", arXiv 2506.01347.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, Sequence

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from banel_jax.baselines.common import (Baseline, all_accepted_info, all_finite,
                                        count_distinct, masked_mean)
from banel_jax.core.mle import (check_train_microbatch, microbatch_size_for,
                                microbatched_sums_and_grad)
from banel_jax.core.protocol import RoundBatch, round_masks
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples

# token_log_prob(params, x[n, L]) -> f32[n, L]; token_mask(x[n, L]) -> bool[n, L]
TokenLogProb = Callable[[Params, Samples], jax.Array]
TokenMask = Callable[[Samples], jax.Array]

# Log-ratios are capped here before ``exp`` so that a term never overflows.
_MAX_LOG_RATIO = 20.0


def completion_mask(end_ids: Sequence[int]) -> TokenMask:
  """Mask of each completion's own tokens: up to and including the first end
  token (``end_ids``); every position when ``end_ids`` is empty.

  The positions after the end token hold padding of probability 1 (a prompted
  decoder's completions), which no loss should count.

  >>> import jax.numpy as jnp
  >>> completion_mask([2])(jnp.array([[5, 2, 0, 0], [5, 6, 7, 8]])).tolist()
  [[True, True, False, False], [True, True, True, True]]
  """
  ids = jnp.asarray(tuple(int(i) for i in end_ids), jnp.int32)

  def mask(x: Samples) -> jax.Array:
    chex.assert_rank(x, 2, custom_message="x must be int[batch, length]")
    if ids.size == 0:
      return jnp.ones(x.shape, bool)
    is_end = jnp.any(x[..., None] == ids, axis=-1).astype(jnp.int32)
    ends_before = jnp.cumsum(is_end, axis=1) - is_end  # ends strictly before t
    return ends_before == 0

  return mask


def nsr_terms(log_prob: jax.Array, old_log_prob: jax.Array,
              clip_eps: float) -> jax.Array:
  """The NSR term of each sample (or token): ``max(rho, clip(rho, 1 - eps,
  1 + eps))`` with ``rho = exp(log_prob - old_log_prob)``, ``old_log_prob``
  held constant.

  Minimising it lowers ``log_prob``; its gradient at ``rho = 1`` is
  ``grad log_prob``, and it is flat once ``rho < 1 - eps``.

  >>> import jax, jax.numpy as jnp
  >>> g = jax.grad(lambda lp: nsr_terms(lp, jnp.zeros(2), 0.2).sum())
  >>> g(jnp.array([0.0, -1.0])).tolist()  # rho = 1: d/d lp = 1; rho < 0.8: 0
  [1.0, 0.0]
  """
  log_ratio = jnp.minimum(log_prob - jax.lax.stop_gradient(old_log_prob),
                          _MAX_LOG_RATIO)
  ratio = jnp.exp(log_ratio)
  return jnp.maximum(ratio, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps))


@dataclasses.dataclass(frozen=True)
class NSRConfig:
  """Knobs of negative-sample reinforcement (frozen, hashable).

  Attributes:
    aggregation: ``"sequence"`` (one term per failed sample, averaged over the
      failures; any model) or ``"token"`` (one term per token of each failed
      completion, averaged over those tokens; needs ``token_log_prob`` and
      ``token_mask``).
    learning_rate: Adam learning rate (about 1e-6 to 1e-5 for a pretrained
      language model; the toy's free logits want about 0.03 to 0.3).
    steps: full-batch Adam steps per round on the round's failures.
    clip_eps: PPO ratio clip ``eps`` of the steps after the first.
    max_grad_norm: global gradient-norm clip before Adam.
    train_microbatch: accumulate each step's gradient over microbatches of the
      largest divisor of the round's batch up to this many samples, one after
      the other (``banel_jax.core.mle.microbatched_sums_and_grad``): the same
      step up to float rounding, less memory for a language model. ``"auto"``:
      32 on a CPU, one pass elsewhere. 0 (default): one pass per step.
  """

  aggregation: Literal["sequence", "token"] = "sequence"
  learning_rate: float = 0.03
  steps: int = 4
  clip_eps: float = 0.2
  max_grad_norm: float = 1.0
  train_microbatch: int | str = 0

  def __post_init__(self):
    check_train_microbatch("NSRConfig", self.train_microbatch)
    if self.aggregation not in ("sequence", "token"):
      raise ValueError(f"NSRConfig.aggregation={self.aggregation!r} must be "
                       "'sequence' or 'token'")
    if isinstance(self.steps, bool) or not isinstance(self.steps, int) \
        or self.steps < 1:
      raise ValueError(f"NSRConfig.steps={self.steps!r} must be an int >= 1")
    for name in ("learning_rate", "clip_eps", "max_grad_norm"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, float)) \
          or not math.isfinite(v) or v <= 0:
        raise ValueError(f"NSRConfig.{name}={v!r} must be a finite number > 0")
    if self.clip_eps >= 1:
      raise ValueError(f"NSRConfig.clip_eps={self.clip_eps!r} must be < 1")

  def replace(self, **changes) -> "NSRConfig":
    return dataclasses.replace(self, **changes)


class NSRState(struct.PyTreeNode):
  """The run state of NSR (one seed).

  Attributes:
    policy: ``TrainState`` of the generator (Adam state included).
    round: ``int32[]`` rounds completed.
    nre: ``int32[]`` reward evaluations spent on learning.
    key: the run's root PRNG key.
  """

  policy: train_state.TrainState
  round: jax.Array
  nre: jax.Array
  key: jax.Array


def make_nsr(model: GenerativeModel, config: NSRConfig = NSRConfig(), *,
             token_log_prob: TokenLogProb | None = None,
             token_mask: TokenMask | None = None) -> Baseline:
  """Builds negative-sample reinforcement ``(init, propose, update)``.

  Args:
    model: the generator's family.
    config: :class:`NSRConfig`.
    token_log_prob: per-token log-probs ``(params, x[n, L]) -> f32[n, L]``
      (token aggregation only), e.g. a prompted decoder's ``token_log_prob``.
    token_mask: ``x[n, L] -> bool[n, L]``, the tokens that count (token
      aggregation only), e.g. :func:`completion_mask` of the end ids.

  Returns:
    A :class:`~banel_jax.baselines.common.Baseline` named ``"NSR"`` with an
    :class:`NSRState`.

  Raises:
    ValueError: the token aggregation without ``token_log_prob`` and
      ``token_mask``.
  """
  c = config
  if not isinstance(c, NSRConfig):
    raise TypeError(f"config must be an NSRConfig, got {type(c).__name__}")
  token = c.aggregation == "token"
  if token and (token_log_prob is None or token_mask is None):
    raise ValueError("NSRConfig(aggregation='token') needs token_log_prob and "
                     "token_mask")
  tx = optax.chain(optax.clip_by_global_norm(c.max_grad_norm),
                   optax.adam(c.learning_rate))
  event_rank = len(model.event_shape)
  scored = token_log_prob if token else model.log_prob

  def init(key: PRNGKey, prior_params: Params) -> NSRState:
    policy = train_state.TrainState.create(apply_fn=model.log_prob,
                                           params=prior_params, tx=tx)
    return NSRState(policy=policy, round=jnp.zeros((), jnp.int32),
                    nre=jnp.zeros((), jnp.int32), key=key)

  def propose(state: NSRState, key: PRNGKey, n: int):
    """``n`` samples of the current generator and all-``n`` sampling info."""
    return model.sample(state.policy.params, key, n), all_accepted_info(n)

  def update(state: NSRState, batch: RoundBatch, key: PRNGKey):
    del key  # full-batch steps: nothing random
    evaluated, success = round_masks(batch, event_rank)  # success: never learned
    failure = evaluated & ~success
    x = batch.x
    m = x.shape[0]
    if token:  # weights per token: the failed completions' own tokens
      weights = token_mask(x).astype(bool) & failure[:, None]
    else:
      weights = failure
    count = jnp.sum(weights.astype(jnp.float32))
    any_failure = count > 0
    old = scored(state.policy.params, x)  # the sampling policy's terms
    micro = microbatch_size_for(m, c.train_microbatch)

    def sums(out, old_b, w_b):
      terms = nsr_terms(out, old_b, c.clip_eps)
      outside = jnp.abs(jnp.exp(jnp.minimum(out - old_b, _MAX_LOG_RATIO)) - 1.0) \
          > c.clip_eps
      return (jnp.sum(jnp.where(w_b, terms, 0.0)),
              jnp.sum(jnp.where(w_b & outside, 1.0, 0.0)))

    def loss_and_grad(params):
      n = jnp.maximum(count, 1.0)
      if micro is None:
        def loss_fn(p):
          total, clipped = sums(scored(p, x), old, weights)
          return total / n, clipped / n
        return jax.value_and_grad(loss_fn, has_aux=True)(params)
      (total, clipped), grads = microbatched_sums_and_grad(
          scored, params, x, (old, weights), sums, micro)
      return (total / n, clipped / n), jax.tree.map(lambda g: g / n, grads)

    def step(policy, _):
      (loss, clip_frac), grads = loss_and_grad(policy.params)
      new = policy.apply_gradients(grads=grads)
      # No failure, no NSR term: no step (no Adam momentum drift either).
      new = jax.tree.map(lambda a, b: jnp.where(any_failure, a, b), new, policy)
      return new, (loss, clip_frac)

    logp_before = model.log_prob(state.policy.params, x)
    policy, (losses, clip_fracs) = jax.lax.scan(step, state.policy, None,
                                                length=c.steps)
    logp_after = model.log_prob(policy.params, x)
    n_eval = jnp.sum(evaluated.astype(jnp.int32))
    metrics = {
        # the mean term before the last step: 1 at the sampling policy, lower
        # as the failures' probabilities fall (down to 1 - clip_eps per term)
        "nsr_loss": losses[-1],
        "clip_fraction": clip_fracs[-1],
        "failure_log_prob_change": masked_mean(logp_after - logp_before, failure),
        "success_log_prob_change": masked_mean(logp_after - logp_before, success),
        "n_failures": jnp.sum(failure.astype(jnp.int32)),
        "n_successes": jnp.sum(success.astype(jnp.int32)),
        "n_evaluated": n_eval,
        "n_distinct": count_distinct(x, evaluated),
        "params_finite": all_finite(policy.params),
    }
    new_state = state.replace(policy=policy, round=state.round + 1,
                              nre=state.nre + n_eval)
    return new_state, metrics

  return Baseline(init=init, propose=propose, update=update, name="NSR",
                  model=model, config=config)
