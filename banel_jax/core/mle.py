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

from banel_jax.core.config import CPU_TRAIN_MICROBATCH
from banel_jax.core.types import PRNGKey, Samples, SplitLogProb


def weighted_nll(log_prob_fn, params, x: Samples, weights: jax.Array) -> jax.Array:
  """Weighted mean negative log-likelihood ``sum(w * -log p(x)) / sum(w)``.

  Returns 0 when every weight is 0.
  """
  return (weighted_nll_sum(log_prob_fn, params, x, weights)
          / _safe_total(jnp.sum(weights)))


def weighted_nll_sum(log_prob_fn, params, x: Samples, weights: jax.Array
                     ) -> jax.Array:
  """``sum(w * -log p(x))``, the numerator of :func:`weighted_nll`."""
  return _weighted_nll_terms(log_prob_fn(params, x), weights)


def _weighted_nll_terms(log_prob: jax.Array, weights: jax.Array) -> jax.Array:
  # `where` keeps a -inf log-prob under weight 0 from turning the sum into NaN.
  return jnp.sum(jnp.where(weights > 0, weights * -log_prob, 0.0))


def _safe_total(total):
  return jnp.maximum(total, jnp.finfo(jnp.float32).tiny)


def weighted_nll_and_grad(log_prob_fn, params, x: Samples, weights: jax.Array, *,
                          microbatch_size: int | None = None,
                          axis_name: str | None = None):
  """``(weighted_nll, its gradient)``, optionally accumulated over microbatches.

  With ``microbatch_size`` the batch is split into microbatches of that many
  samples (it must divide the batch), processed one after the other by
  ``optax.microbatch``, and their gradients summed: the same gradient up to
  float rounding, with each microbatch's activations small enough to stay in a
  CPU's cache. ``None``: one pass.

  A :class:`~banel_jax.core.types.SplitLogProb` (the Transformer's ``log_prob``)
  runs its ``prepare`` once for the whole batch, not once per microbatch, and
  back-propagates through it once (same gradient up to float rounding).

  With ``axis_name`` (inside ``shard_map`` or ``pmap`` over that axis; see
  :mod:`banel_jax.runtime.data_parallel`) each device holds its own share of the
  batch, and the weighted sums and their gradients are summed over the axis
  (``lax.psum``) before the division: every device returns the loss and
  gradient of the whole batch.
  """
  if microbatch_size is None and axis_name is None:
    return jax.value_and_grad(
        lambda p: weighted_nll(log_prob_fn, p, x, weights))(params)
  if microbatch_size is None:
    (loss_sum, total), grads = jax.value_and_grad(
        lambda p: (weighted_nll_sum(log_prob_fn, p, x, weights), jnp.sum(weights)),
        has_aux=True)(params)
  else:
    total = jnp.sum(weights)
    (loss_sum, _), grads = microbatched_sums_and_grad(
        log_prob_fn, params, x, (weights,),
        lambda logp, w: (_weighted_nll_terms(logp, w), ()), microbatch_size)
  if axis_name is not None:
    loss_sum, total, grads = jax.lax.psum((loss_sum, total, grads), axis_name)
  total = _safe_total(total)
  return loss_sum / total, jax.tree.map(lambda g: g / total, grads)


def microbatched_sums_and_grad(log_prob_fn, params, x: Samples, per_sample: tuple,
                               sums_fn, microbatch_size: int):
  """``((value, aux), d value / d params)``, summed over microbatches.

  ``sums_fn(log_prob, *per_sample) -> (value, aux)`` must be a sum over the
  samples it is given (``value`` a scalar, ``aux`` a pytree of sums), so that
  the sums over microbatches of ``microbatch_size`` samples (it must divide
  the batch) are the batch's. ``log_prob`` is ``log_prob_fn(params, xb)`` of a
  microbatch ``xb`` of ``x``; ``per_sample`` holds arrays ``[batch, ...]``
  split alongside it. The microbatches run one after the other
  (``optax.microbatch``), so each one's activations stay small.

  A :class:`~banel_jax.core.types.SplitLogProb` runs its ``prepare`` once for the
  whole batch and back-propagates through it once: ``L = sum_m
  L_m(params, prepared(params))``, so the gradient is the sum over
  microbatches of ``dL_m/dparams`` with ``prepared`` held fixed, plus
  ``prepare``'s vector-Jacobian product of the summed ``dL_m/dprepared``.
  """
  n_args = 1 + len(per_sample)
  if (isinstance(log_prob_fn, SplitLogProb)
      and log_prob_fn.prepare(params, x) is not None):
    prepared, prepare_vjp = jax.vjp(lambda p: log_prob_fn.prepare(p, x), params)

    def split_sums(p, prep, xb, *rest):
      return sums_fn(log_prob_fn.apply(p, prep, xb), *rest)

    sums, (grads, prepared_grads) = optax.microbatch(
        jax.value_and_grad(split_sums, argnums=(0, 1), has_aux=True),
        argnums=tuple(range(2, 2 + n_args)),
        microbatch_size=microbatch_size)(params, prepared, x, *per_sample)
    (through_prepared,) = prepare_vjp(prepared_grads)
    return sums, jax.tree.map(jnp.add, grads, through_prepared)

  def plain_sums(p, xb, *rest):
    return sums_fn(log_prob_fn(p, xb), *rest)

  return optax.microbatch(
      jax.value_and_grad(plain_sums, has_aux=True), argnums=tuple(range(1, 1 + n_args)),
      microbatch_size=microbatch_size)(params, x, *per_sample)


def check_train_microbatch(owner: str, value) -> None:
  """Raises ``ValueError`` unless ``value`` is ``"auto"`` or an int >= 0 (a
  config's ``train_microbatch``; ``owner`` names the config in the message)."""
  if value == "auto":
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"{owner}.train_microbatch={value!r} must be 'auto' or an int "
                     ">= 0 (0: one pass per step)")


def resolve_train_microbatch(value: int | str) -> int:
  """A ``train_microbatch`` setting as a number: ``"auto"`` is
  :data:`~banel_jax.core.config.CPU_TRAIN_MICROBATCH` on a CPU backend and 0
  (one pass per step) on an accelerator."""
  if value == "auto":
    return CPU_TRAIN_MICROBATCH if jax.default_backend() == "cpu" else 0
  return value


def microbatch_size_for(batch_size: int, max_microbatch: int | str) -> int | None:
  """The largest divisor of ``batch_size`` up to ``max_microbatch``.

  ``None`` (one pass) when ``max_microbatch`` is 0 or the batch is no larger.
  E.g. ``(256, 32) -> 32``, ``(100, 32) -> 25``, ``(100, 0) -> None``.
  ``"auto"`` is :data:`~banel_jax.core.config.CPU_TRAIN_MICROBATCH` on a CPU
  backend and 0 elsewhere.
  """
  max_microbatch = resolve_train_microbatch(max_microbatch)
  if max_microbatch <= 0 or batch_size <= max_microbatch:
    return None
  return max(m for m in range(1, max_microbatch + 1) if batch_size % m == 0)


def fit_weighted_mle(state: train_state.TrainState, x: Samples, weights: jax.Array,
                     key: PRNGKey, *, epochs: int, batch_size: int,
                     pack: bool = False, microbatch_size: int | None = None,
                     axis_name: str | None = None
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
    axis_name: data parallelism (static). Inside ``shard_map`` or ``pmap`` over
      this axis, each device passes its own share of the samples, shuffles and
      minibatches it locally (``batch_size`` is per device), and every step
      uses the gradient summed over all devices' minibatches, so the replicated
      ``state`` stays the same on every device. A step is skipped only when
      every device's minibatch has weight 0.
      :func:`banel_jax.runtime.data_parallel.fit_weighted_mle` wraps this.

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
    weight = jnp.sum(wb)
    if axis_name is not None:
      weight = jax.lax.psum(weight, axis_name)
    has_data = weight > 0
    loss, grads = weighted_nll_and_grad(state.apply_fn, state.params, xb, wb,
                                        microbatch_size=microbatch_size,
                                        axis_name=axis_name)
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
