"""Weighted maximum-likelihood training of a model bundle, one ``lax.scan``.

Both the failure model and the distilled proposal are fitted by maximum
likelihood on a fixed-size, weighted batch: rejected or padded samples carry
weight 0, so shapes never depend on the data and nothing recompiles per round.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from banel_jax.types import PRNGKey, Samples, SplitLogProb


def weighted_nll(log_prob_fn, params, x: Samples, weights: jax.Array) -> jax.Array:
  """Weighted mean negative log-likelihood ``sum(w * -log p(x)) / sum(w)``.

  Returns 0 when every weight is 0.
  """
  return (weighted_nll_sum(log_prob_fn, params, x, weights)
          / _safe_total(jnp.sum(weights)))


def weighted_nll_sum(log_prob_fn, params, x: Samples, weights: jax.Array
                     ) -> jax.Array:
  """``sum(w * -log p(x))``, the numerator of :func:`weighted_nll`."""
  nll = -log_prob_fn(params, x)
  # `where` keeps a -inf log-prob under weight 0 from turning the sum into NaN.
  return jnp.sum(jnp.where(weights > 0, weights * nll, 0.0))


def _safe_total(total):
  return jnp.maximum(total, jnp.finfo(jnp.float32).tiny)


def weighted_nll_and_grad(log_prob_fn, params, x: Samples, weights: jax.Array, *,
                          microbatch_size: int | None = None):
  """``(weighted_nll, its gradient)``, optionally accumulated over microbatches.

  With ``microbatch_size`` the batch is split into microbatches of that many
  samples (it must divide the batch), processed one after the other by
  ``optax.microbatch``, and their gradients summed: the same gradient up to
  float rounding, with each microbatch's activations small enough to stay in a
  CPU's cache. ``None``: one pass.

  A :class:`~banel_jax.types.SplitLogProb` (the Transformer's ``log_prob``)
  runs its ``prepare`` once for the whole batch, not once per microbatch, and
  back-propagates through it once (same gradient up to float rounding).
  """
  if microbatch_size is None:
    return jax.value_and_grad(
        lambda p: weighted_nll(log_prob_fn, p, x, weights))(params)
  total = _safe_total(jnp.sum(weights))
  if (isinstance(log_prob_fn, SplitLogProb)
      and log_prob_fn.prepare(params, x) is not None):
    loss_sum, grads = _split_microbatched(log_prob_fn, params, x, weights,
                                          microbatch_size)
  else:
    loss_sum, grads = optax.microbatch(
        jax.value_and_grad(lambda p, xb, wb: weighted_nll_sum(log_prob_fn, p, xb, wb)),
        argnums=(1, 2), microbatch_size=microbatch_size)(params, x, weights)
  return loss_sum / total, jax.tree.map(lambda g: g / total, grads)


def _split_microbatched(log_prob_fn: SplitLogProb, params, x, weights,
                        microbatch_size):
  """``(sum(w * nll), its gradient)`` with ``prepare`` run once for all microbatches.

  ``L = sum_m L_m(params, prepared(params))``, so the gradient is the sum over
  microbatches of ``dL_m/dparams`` with ``prepared`` held fixed, plus
  ``prepare``'s vector-Jacobian product applied once to the summed
  ``dL_m/dprepared``.
  """
  prepared, prepare_vjp = jax.vjp(lambda p: log_prob_fn.prepare(p, x), params)

  def microbatch_loss(p, prep, xb, wb):
    return weighted_nll_sum(lambda q, xs: log_prob_fn.apply(q, prep, xs), p, xb, wb)

  loss_sum, (grads, prepared_grads) = optax.microbatch(
      jax.value_and_grad(microbatch_loss, argnums=(0, 1)), argnums=(2, 3),
      microbatch_size=microbatch_size)(params, prepared, x, weights)
  (through_prepared,) = prepare_vjp(prepared_grads)
  return loss_sum, jax.tree.map(jnp.add, grads, through_prepared)


def microbatch_size_for(batch_size: int, max_microbatch: int) -> int | None:
  """The largest divisor of ``batch_size`` up to ``max_microbatch``.

  ``None`` (one pass) when ``max_microbatch`` is 0 or the batch is no larger.
  E.g. ``(256, 32) -> 32``, ``(100, 32) -> 25``, ``(100, 0) -> None``.
  """
  if max_microbatch <= 0 or batch_size <= max_microbatch:
    return None
  return max(m for m in range(1, max_microbatch + 1) if batch_size % m == 0)


def fit_weighted_mle(state: train_state.TrainState, x: Samples, weights: jax.Array,
                     key: PRNGKey, *, epochs: int, batch_size: int,
                     pack: bool = False, microbatch_size: int | None = None
                     ) -> tuple[train_state.TrainState, jax.Array]:
  """Fits ``state.params`` by weighted maximum likelihood with minibatch Adam/SGD.

  Each epoch shuffles the ``N`` samples and takes ``N // batch_size`` steps (the
  remainder of the shuffled order is left out of that epoch). A minibatch whose
  weights are all 0 makes no step at all (params and optimizer state unchanged).

  With ``pack``, each epoch's shuffled order puts the samples of positive weight
  first, so minibatches hold ``batch_size`` of them and an epoch makes
  ``ceil(n_positive / batch_size)`` steps. Without it, a minibatch holds whichever
  of its ``batch_size`` samples have positive weight: when few do (a low
  acceptance rate), an epoch is ``N // batch_size`` small, noisy steps on the
  same few samples.

  Args:
    state: a ``TrainState`` whose ``apply_fn`` is the model's ``log_prob``.
    x: samples ``[N, *event_shape]``.
    weights: ``f32[N]`` non-negative sample weights (0 = left out).
    key: PRNG key for the shuffles.
    epochs: number of passes (static).
    batch_size: minibatch size (static, ``<= N``).
    pack: put positive-weight samples first in every epoch (static).
    microbatch_size: accumulate each step's gradient over microbatches of this
      many samples (static; must divide ``batch_size``); see
      :func:`weighted_nll_and_grad`. ``None`` (default): one pass per step.

  Returns:
    ``(state, losses)`` with ``losses`` of shape ``[epochs, N // batch_size]``.
  """
  # numpy inputs (an eager call on host data) could not be indexed by the traced
  # permutations below
  x, weights = jnp.asarray(x), jnp.asarray(weights)
  n = weights.shape[0]
  chex.assert_rank(weights, 1)
  chex.assert_axis_dimension(x, 0, n)
  if not 1 <= batch_size <= n:
    raise ValueError(f"batch_size={batch_size} must be in [1, {n}] (number of samples)")
  if microbatch_size is not None and (
      isinstance(microbatch_size, bool) or not isinstance(microbatch_size, int)
      or microbatch_size < 1 or batch_size % microbatch_size):
    raise ValueError(f"microbatch_size={microbatch_size!r} must be None or a "
                     f"positive int dividing batch_size={batch_size}")
  steps = n // batch_size
  weights = weights.astype(jnp.float32)

  def step(state, batch):
    xb, wb = batch
    has_data = jnp.sum(wb) > 0
    loss, grads = weighted_nll_and_grad(state.apply_fn, state.params, xb, wb,
                                        microbatch_size=microbatch_size)
    new_state = state.apply_gradients(grads=grads)
    new_state = jax.tree.map(lambda a, b: jnp.where(has_data, a, b), new_state, state)
    return new_state, loss

  def epoch(state, k):
    perm = jax.random.permutation(k, n)
    if pack:  # a stable sort keeps the shuffled order within each group
      perm = perm[jnp.argsort(weights[perm] <= 0, stable=True)]
    perm = perm[: steps * batch_size]
    xb = x[perm].reshape((steps, batch_size) + x.shape[1:])
    wb = weights[perm].reshape(steps, batch_size)
    return jax.lax.scan(step, state, (xb, wb))

  return jax.lax.scan(epoch, state, jax.random.split(key, epochs))
