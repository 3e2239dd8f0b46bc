"""The policy-gradient core shared by REINFORCE and the novelty-bonus baselines.

Sequence-level REINFORCE on the generator ``p_theta`` for a round's batch
``x_1..x_m`` (only the samples the oracle scored take part)::

    R_i = r_learn(x_i) + beta * bonus(x_i) - lam * (log p_theta(x_i) - log p_0(x_i))
    A_i = clip(R_i - mean_{j != i} R_j, -c, c)           # leave-one-out baseline
    loss = - mean_i min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i),
    rho_i = p_theta(x_i) / p_theta_old(x_i)               # PPO-clip

* ``r_learn = 0`` always: as for BaNEL, the oracle's rewards are recorded by the
  driver but never learned from; the batch's ``rewards`` are ignored here.
* **KL to the pretrained model.** The penalty ``lam * (log p_theta_old(x) -
  log p_0(x))`` is folded into the reward as a constant (stop-gradient). Its
  score-function gradient ``E_{x ~ p_theta}[(log p_theta(x) - log p_0(x))
  grad log p_theta(x)]`` is exactly ``grad KL(p_theta || p_0)`` (the other term,
  ``E[grad log p_theta] = 0``, drops), so the penalty is an unbiased estimator of
  the KL gradient that shares the leave-one-out baseline. (Differentiating the
  sample mean of ``log p_theta(x) - log p_0(x)`` directly would give
  ``E[grad log p_theta] = 0`` in expectation: a wrong, zero-mean gradient.)
* **Steps.** ``epochs x num_minibatches`` Adam steps per batch (gradient norm
  clipped at ``max_grad_norm``). The first step of each batch has ratio 1, where
  the clipped objective has the plain REINFORCE gradient, so with 1 epoch and 1
  minibatch this *is* REINFORCE.
* **Plain REINFORCE** (:func:`make_reinforce`) has ``beta = 0``: every advantage
  is 0 apart from the KL term, which is itself 0 while ``p_theta = p_0``, so the
  generator never moves from the pretrained model: random search.

References:
  Williams (1992), REINFORCE; Kool, van Hoof, Welling (2019), "Buy 4 REINFORCE
  samples, get a baseline for free!" (leave-one-out); Schulman et al. (2017),
  arXiv 1707.06347 (PPO-clip).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

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
                           microbatched_sums_and_grad)
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples


@dataclasses.dataclass(frozen=True)
class PolicyGradientConfig:
  """Knobs of the policy update (frozen, hashable: a static argument).

  Attributes:
    learning_rate: Adam learning rate of the generator (1e-5 to 1e-4 for a
      transformer; the toy's free logits want about 0.03 to 0.3).
    kl_weight: ``lam``, weight of the KL to the pretrained model.
    bonus_weight: ``beta``, weight of the novelty bonus (0: plain REINFORCE).
    epochs: passes over each batch.
    num_minibatches: minibatches per pass (``m // num_minibatches`` samples each;
      the remainder of a shuffled batch sits out that pass).
    clip_eps: PPO ratio clip ``eps``.
    advantage_clip: advantages are clipped to ``[-c, c]``.
    max_grad_norm: global gradient-norm clip before Adam.
    train_microbatch: accumulate each Adam step's gradient over microbatches of
      the largest divisor of the minibatch up to this many samples, one after
      the other (``banel_jax.core.mle.microbatched_sums_and_grad``): the same step
      up to float rounding, faster on a CPU for a transformer. 0 (default):
      one pass per step.
  """

  # added after records of this config were written (see banel_jax.runtime.checkpoint)

  learning_rate: float = 0.03
  kl_weight: float = 0.01
  bonus_weight: float = 1.0
  epochs: int = 4
  num_minibatches: int = 4
  clip_eps: float = 0.2
  advantage_clip: float = 5.0
  max_grad_norm: float = 1.0
  train_microbatch: int | str = 0

  def __post_init__(self):
    check_train_microbatch("PolicyGradientConfig", self.train_microbatch)
    for name in ("epochs", "num_minibatches"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"PolicyGradientConfig.{name}={v!r} must be an int >= 1")
    for name in ("learning_rate", "clip_eps", "advantage_clip", "max_grad_norm"):
      if not getattr(self, name) > 0:
        raise ValueError(f"PolicyGradientConfig.{name} must be > 0")
    for name in ("kl_weight", "bonus_weight"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"PolicyGradientConfig.{name} must be >= 0")

  def replace(self, **changes) -> "PolicyGradientConfig":
    return dataclasses.replace(self, **changes)


class NoveltyBonus(NamedTuple):
  """A novelty bonus as pure functions (RND, pseudo-counts, exact counts).

  Attributes:
    init: ``init(key, prior_params) -> bonus_state`` (free: no NRE).
    update: ``update(bonus_state, x, mask, key) -> (bonus f32[m], bonus_state,
      metrics)``: the bonus of each sample of ``x`` computed **before** the
      bonus model learns from the batch, then the learning step on the samples
      where ``mask`` (the ones the oracle scored). Never sees rewards.
    name: short name.
  """

  init: Callable[[PRNGKey, Params], Any]
  update: Callable[[Any, Samples, jax.Array, PRNGKey], tuple[jax.Array, Any, dict]]
  name: str


def zero_bonus() -> NoveltyBonus:
  """The bonus of plain REINFORCE: 0 for every sample, no state."""

  def init(key, prior_params):
    del key, prior_params
    return ()

  def update(state, x, mask, key):
    del key
    return jnp.zeros(mask.shape, jnp.float32), state, {}

  return NoveltyBonus(init=init, update=update, name="none")


class PolicyGradientState(struct.PyTreeNode):
  """The run state of a policy-gradient baseline (one seed).

  Attributes:
    policy: ``TrainState`` of the generator ``p_theta`` (Adam state included).
    prior_params: the pretrained params ``theta_0`` (KL anchor).
    bonus: the novelty bonus's state (``()`` for plain REINFORCE).
    round: ``int32[]`` rounds completed.
    nre: ``int32[]`` reward evaluations spent on learning.
    key: the run's root PRNG key; round ``t`` uses ``fold_in(key, t)``.
  """

  policy: train_state.TrainState
  prior_params: Params
  bonus: Any
  round: jax.Array
  nre: jax.Array
  key: jax.Array


def leave_one_out_advantages(rewards: jax.Array, mask: jax.Array) -> jax.Array:
  """``A_i = R_i - mean_{j != i, mask_j} R_j`` where ``mask_i``; 0 elsewhere.

  With fewer than two masked samples every advantage is 0.

  >>> import jax.numpy as jnp
  >>> leave_one_out_advantages(jnp.array([1., 2., 3., 9.]),
  ...                          jnp.array([True, True, True, False])).tolist()
  [-1.5, 0.0, 1.5, 0.0]
  """
  chex.assert_rank(rewards, 1)
  chex.assert_equal_shape((rewards, mask))
  mask = mask.astype(bool)
  r = jnp.where(mask, rewards, 0.0)
  k = jnp.sum(mask.astype(jnp.float32))
  others = (jnp.sum(r) - r) / jnp.maximum(k - 1.0, 1.0)
  return jnp.where(mask & (k > 1), r - others, 0.0)


def ppo_clip_loss(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                  mask: jax.Array, clip_eps: float) -> tuple[jax.Array, jax.Array]:
  """Clipped surrogate ``-mean_mask min(rho A, clip(rho, 1-eps, 1+eps) A)``.

  Args:
    log_prob: ``f32[b]`` ``log p_theta(x)`` (differentiated).
    old_log_prob: ``f32[b]`` log-probs of the policy that drew ``x`` (constant).
    advantages: ``f32[b]``.
    mask: ``bool[b]`` samples that take part.
    clip_eps: ratio clip.

  Returns:
    ``(loss, clip_fraction)``. At ``rho = 1`` the gradient is REINFORCE's,
    ``-mean A grad log p``.
  """
  neg_objective, n_clipped = ppo_clip_sums(log_prob, old_log_prob, advantages, mask,
                                           clip_eps)
  n = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)  # masked_mean's count
  return neg_objective / n, n_clipped / n


def ppo_clip_sums(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                  mask: jax.Array, clip_eps: float) -> tuple[jax.Array, jax.Array]:
  """The sums behind :func:`ppo_clip_loss`: ``(-sum_mask objective, n clipped)``.

  Sums over samples add up across microbatches; divided by the number of
  masked samples (at least 1) they give :func:`ppo_clip_loss`.
  """
  mask = mask.astype(bool)
  log_ratio = jnp.where(mask, log_prob - jax.lax.stop_gradient(old_log_prob), 0.0)
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
  objective = jnp.minimum(unclipped, clipped)
  n_clipped = jnp.sum(jnp.where(mask, jnp.abs(ratio - 1.0) > clip_eps, False)
                      .astype(jnp.float32))
  return -jnp.sum(jnp.where(mask, objective, 0.0)), n_clipped


def make_policy_tx(config: PolicyGradientConfig) -> optax.GradientTransformation:
  """Adam with global-norm clipping, ``optax.chain(clip, adam)``."""
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                     optax.adam(config.learning_rate))


def make_policy_gradient(model: GenerativeModel, config: PolicyGradientConfig,
                         bonus: NoveltyBonus | None = None, name: str | None = None
                         ) -> Baseline:
  """Builds the policy-gradient baseline ``(init, propose, update)``.

  Args:
    model: the generator's family.
    config: a :class:`PolicyGradientConfig` (static).
    bonus: the novelty bonus (default :func:`zero_bonus`).
    name: the method's name (default ``"REINFORCE"`` or ``"REINFORCE+<bonus>"``).

  Returns:
    A :class:`~banel_jax.baselines.common.Baseline` whose state is a
    :class:`PolicyGradientState`. The batch's rewards are never learned from.
  """
  bonus = zero_bonus() if bonus is None else bonus
  if name is None:
    name = "REINFORCE" if bonus.name == "none" else f"REINFORCE+{bonus.name}"
  tx = make_policy_tx(config)  # one object: ``tx`` is a static field of TrainState
  event_rank = len(model.event_shape)
  c = config

  def init(key: PRNGKey, prior_params: Params) -> PolicyGradientState:
    bonus_key, _ = jax.random.split(key)
    policy = train_state.TrainState.create(apply_fn=model.log_prob,
                                           params=prior_params, tx=tx)
    return PolicyGradientState(policy=policy, prior_params=prior_params,
                               bonus=bonus.init(bonus_key, prior_params),
                               round=jnp.zeros((), jnp.int32),
                               nre=jnp.zeros((), jnp.int32), key=key)

  def propose(state: PolicyGradientState, key: PRNGKey, n: int):
    """``n`` samples of the current generator and all-``n`` sampling info."""
    return model.sample(state.policy.params, key, n), all_accepted_info(n)

  def policy_steps(policy, x, old_logp, adv, mask, key):
    m = mask.shape[0]
    mb = m // c.num_minibatches
    if mb < 1:
      raise ValueError(f"num_minibatches={c.num_minibatches} > samples per round {m}")

    micro = microbatch_size_for(mb, c.train_microbatch)

    def step(policy, batch):
      xb, lb, ab, wb = batch
      if micro is None:
        def loss_fn(params):
          return ppo_clip_loss(model.log_prob(params, xb), lb, ab, wb, c.clip_eps)
        (loss, clip_frac), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            policy.params)
      else:
        (neg_objective, n_clipped), grads = microbatched_sums_and_grad(
            model.log_prob, policy.params, xb, (lb, ab, wb),
            functools.partial(ppo_clip_sums, clip_eps=c.clip_eps), micro)
        n = jnp.maximum(jnp.sum(wb.astype(jnp.float32)), 1.0)
        loss, clip_frac = neg_objective / n, n_clipped / n
        grads = jax.tree.map(lambda g: g / n, grads)
      new = policy.apply_gradients(grads=grads)
      # A minibatch without a scored sample makes no step (no Adam momentum drift).
      new = jax.tree.map(lambda a, b: jnp.where(jnp.any(wb), a, b), new, policy)
      return new, (loss, clip_frac)

    def epoch(policy, k):
      if c.num_minibatches == 1:  # the full batch: no shuffle needed
        split = lambda a: a[None]
      else:
        perm = jax.random.permutation(k, m)[: mb * c.num_minibatches]
        split = lambda a: a[perm].reshape((c.num_minibatches, mb) + a.shape[1:])
      return jax.lax.scan(step, policy, (split(x), split(old_logp), split(adv),
                                         split(mask)))

    return jax.lax.scan(epoch, policy, jax.random.split(key, c.epochs))

  def update(state: PolicyGradientState, batch: RoundBatch, key: PRNGKey):
    evaluated, success = round_masks(batch, event_rank)  # success: r_learn = 0
    bonus_key, policy_key = jax.random.split(key)

    # 1. Bonus of each sample, before the bonus model learns from the batch.
    b, bonus_state, bmetrics = bonus.update(state.bonus, batch.x, evaluated,
                                            bonus_key)
    b = jnp.where(evaluated, b, 0.0)
    # 2. Rewards for learning: r_learn = 0, bonus, KL penalty (stop-gradient).
    old_logp = model.log_prob(state.policy.params, batch.x)
    prior_logp = model.log_prob(state.prior_params, batch.x)
    kl = jnp.where(evaluated, old_logp - prior_logp, 0.0)
    r_learn = jnp.zeros(evaluated.shape, jnp.float32)
    learn_reward = r_learn + c.bonus_weight * b - c.kl_weight * kl
    adv = leave_one_out_advantages(learn_reward, evaluated)
    adv = jnp.clip(adv, -c.advantage_clip, c.advantage_clip)
    # 3. PPO-clip / REINFORCE steps.
    policy, (losses, clip_fracs) = policy_steps(state.policy, batch.x, old_logp, adv,
                                                evaluated, policy_key)
    n_eval = jnp.sum(evaluated.astype(jnp.int32))
    metrics = {
        "pg_loss": jnp.mean(losses),
        "clip_fraction": jnp.mean(clip_fracs),
        "kl_to_prior": masked_mean(kl, evaluated),
        "bonus_mean": masked_mean(b, evaluated),
        "bonus_std": jnp.sqrt(masked_mean((b - masked_mean(b, evaluated)) ** 2,
                                          evaluated)),
        "advantage_abs_mean": masked_mean(jnp.abs(adv), evaluated),
        "n_successes": jnp.sum(success.astype(jnp.int32)),
        "n_evaluated": n_eval,
        "n_distinct": count_distinct(batch.x, evaluated),
        "params_finite": all_finite(policy.params),
    }
    metrics.update(bmetrics)
    new_state = state.replace(policy=policy, bonus=bonus_state,
                              round=state.round + 1, nre=state.nre + n_eval)
    return new_state, metrics

  return Baseline(init=init, propose=propose, update=update, name=name, model=model,
                  config=config)


def make_reinforce(model: GenerativeModel, config: PolicyGradientConfig =
                   PolicyGradientConfig()) -> Baseline:
  """Plain REINFORCE on the raw reward with ``r_learn = 0``: ``beta = 0``.

  Every learning reward is ``-lam * KL`` term only, 0 while the generator equals
  the pretrained model, so the generator never moves: the collapse into random
  search that motivates BaNEL.
  """
  return make_policy_gradient(model, config.replace(bonus_weight=0.0), zero_bonus(),
                              name="REINFORCE")
