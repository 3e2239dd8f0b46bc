"""Rejection regions, the likelihood-ratio test and the exploration posterior.

Round ``t`` stores a pair ``(theta_t, phi_t)``: the proposal that produced the
round's samples and the failure model fitted on its failures. Its rejection
region is

    R_t = { x : log p_theta_t(x) - log Z_t - log p_phi_t(x) < log tau_t },

where ``log Z_t`` is the proposal's log normaliser (0 for a parametric proposal;
the log acceptance rate when the proposal is the exploration posterior sampled by
rejection from the prior, whose density on its support is ``p_0(x) / Z_t``).
Regions accumulate, ``R = R_1 ∪ ... ∪ R_t``, and the exploration posterior is

    p_post(x) ∝ p_0(x) * 1[x not in R].

All pairs live stacked in a fixed-capacity :class:`RegionBank`; the test for the
whole union is one ``vmap`` over the stacked params.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from banel_jax.core import batching
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, Samples


class AcceptanceRateError(RuntimeError):
  """The exploration posterior accepts too small a fraction of candidates."""


class RegionBank(struct.PyTreeNode):
  """Fixed-capacity stack of rejection regions.

  Attributes:
    proposal_params: params pytree, every leaf with a leading axis of ``capacity``.
    failure_params: same structure as ``proposal_params``.
    log_tau: ``f32[capacity]`` log threshold of each region.
    log_norm: ``f32[capacity]`` log normaliser of each region's proposal.
    valid: ``bool[capacity]`` which slots hold a region.
    size: ``int32[]`` number of filled slots (filled slots are ``0..size-1``).
  """

  proposal_params: Params
  failure_params: Params
  log_tau: jax.Array
  log_norm: jax.Array
  valid: jax.Array
  size: jax.Array

  @property
  def capacity(self) -> int:
    return self.log_tau.shape[-1]


def empty_region_bank(params_template: Params, capacity: int) -> RegionBank:
  """An empty bank with ``capacity`` slots shaped like ``params_template``."""
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1, got {capacity}")
  stacked = jax.tree.map(
      lambda p: jnp.zeros((capacity,) + jnp.shape(p), jnp.asarray(p).dtype),
      params_template)
  return RegionBank(proposal_params=stacked,
                    failure_params=jax.tree.map(jnp.copy, stacked),
                    log_tau=jnp.zeros((capacity,), jnp.float32),
                    log_norm=jnp.zeros((capacity,), jnp.float32),
                    valid=jnp.zeros((capacity,), bool),
                    size=jnp.zeros((), jnp.int32))


def add_region(bank: RegionBank, proposal_params: Params, failure_params: Params,
               log_tau: jax.Array, log_norm: jax.Array = 0.0,
               active: jax.Array = True) -> RegionBank:
  """Appends one region; a no-op where ``active`` is false.

  The caller must leave room (``size < capacity``); the drivers check it on host.
  """
  active = jnp.asarray(active, bool)
  idx = jnp.minimum(bank.size, bank.capacity - 1)

  def put(stack, leaf):
    new = jax.lax.dynamic_update_index_in_dim(stack, leaf.astype(stack.dtype), idx, 0)
    return jnp.where(active, new, stack)

  return bank.replace(
      proposal_params=jax.tree.map(put, bank.proposal_params, proposal_params),
      failure_params=jax.tree.map(put, bank.failure_params, failure_params),
      log_tau=put(bank.log_tau, jnp.asarray(log_tau, jnp.float32)),
      log_norm=put(bank.log_norm, jnp.asarray(log_norm, jnp.float32)),
      valid=put(bank.valid, jnp.asarray(True)),
      size=bank.size + active.astype(jnp.int32))


def log_tau_from_filter_factor(filter_factor) -> jax.Array:
  """``log tau = -log f``: reject when the failure model is ``f`` times likelier."""
  return -jnp.log(jnp.asarray(filter_factor, jnp.float32))


def calibrate_log_tau(log_ratios: jax.Array, reject_fraction,
                      valid: jax.Array | None = None) -> jax.Array:
  """``log tau`` rejecting about ``reject_fraction`` of the samples given.

  Args:
    log_ratios: ``f32[n]`` log-ratios ``log p_theta(x) - log p_phi(x)`` of fresh
      proposal samples.
    reject_fraction: target fraction in ``(0, 1)``.
    valid: optional ``bool[n]``: only these samples count (e.g. the filled slots
      of a rejection sample that fell short).

  Returns:
    The ``reject_fraction`` quantile of the valid ``log_ratios``; samples
    strictly below it are rejected (so ties, frequent for discrete models, are
    kept). NaN when no sample is valid (then the region rejects nothing).
  """
  chex.assert_rank(log_ratios, 1)
  if valid is None:
    return jnp.quantile(log_ratios, reject_fraction).astype(jnp.float32)
  chex.assert_equal_shape([log_ratios, valid])
  masked = jnp.where(valid, log_ratios, jnp.nan)
  return jnp.nanquantile(masked, reject_fraction).astype(jnp.float32)


def log_ratio(model: GenerativeModel, proposal_params: Params, failure_params: Params,
              x: Samples, log_norm=0.0) -> jax.Array:
  """``log p_theta(x) - log_norm - log p_phi(x)`` for one region, ``f32[batch]``."""
  return (model.log_prob(proposal_params, x) - log_norm
          - model.log_prob(failure_params, x))


def region_log_ratios(model: GenerativeModel, bank: RegionBank, x: Samples) -> jax.Array:
  """Log-ratios of ``x`` under every slot of ``bank``: ``f32[capacity, batch]``.

  One ``vmap`` over the stacked params: all regions cost one fused call (a
  bank of one slot runs unbatched, see :mod:`banel_jax.core.batching`).
  """
  return batching.vmap(log_ratio, in_axes=(None, 0, 0, None, 0))(
      model, bank.proposal_params, bank.failure_params, x, bank.log_norm)


# ``rejection_mask(strategy="loop")`` scores a slot's remaining samples in this
# many blocks at most.
LOOP_BLOCKS = 16

# ``strategy="auto"`` on an accelerator fuses every slot in one vmapped call
# while XLA's own estimate of that call's temporary memory (per seed) stays
# under this.
AUTO_VMAP_LIMIT_BYTES = 256 * 2**20


@functools.lru_cache(maxsize=64)
def _vmap_temp_bytes(log_prob, event_shape, dtype, bank_spec, x_spec) -> int | None:
  model = GenerativeModel(init=None, log_prob=log_prob, sample=None,
                          event_shape=event_shape, dtype=dtype)
  leaves, treedef = bank_spec
  bank = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
  x = jax.ShapeDtypeStruct(*x_spec)
  try:
    compiled = jax.jit(functools.partial(region_log_ratios, model)).lower(
        bank, x).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # noqa: BLE001 - no estimate on this backend
    return None


def auto_region_strategy(model: GenerativeModel, bank: RegionBank, x: Samples,
                         limit_bytes: int = AUTO_VMAP_LIMIT_BYTES,
                         backend: str | None = None) -> str:
  """``"vmap"`` or ``"loop"`` for testing ``x`` against ``bank``, from the
  backend and the sizes.

  On a CPU (``backend``, default :func:`jax.default_backend`): ``"loop"``. It
  scores only the samples that no newer slot has put inside, and a CPU gains
  nothing from fusing the slots: on 2 CPU cores the suite's ``motif_tokens``
  (4,864 parameters, 10 seeds, NRE 2,000, ``BanelConfig()``) ran in 104 s
  looped against 412 s fused, and its tabular tasks within 8% either way, all
  with identical results (``docs/performance.md``).

  On an accelerator: the fused ``vmap`` call holds every slot's activations for
  the whole batch at once: fine for a tabular model, out of memory for a
  transformer with a few dozen slots and thousands of samples (under a seed
  ``vmap`` it is multiplied by the seeds). XLA compiles that call for the given
  shapes and reports its temporary memory; above ``limit_bytes`` (or when the
  backend gives no estimate) the slots are visited one at a time instead.
  Both give the same mask. Shapes only: works under ``jit``.
  """
  if (backend or jax.default_backend()) == "cpu":
    return "loop"
  leaves, treedef = jax.tree.flatten(bank)
  bank_spec = (tuple((tuple(a.shape), jnp.dtype(a.dtype)) for a in leaves), treedef)
  x_spec = (tuple(x.shape), jnp.dtype(x.dtype))
  try:
    temp = _vmap_temp_bytes(model.log_prob, tuple(model.event_shape),
                            jnp.dtype(model.dtype), bank_spec, x_spec)
  except TypeError:  # an unhashable log_prob
    temp = _vmap_temp_bytes.__wrapped__(model.log_prob, tuple(model.event_shape),
                                        jnp.dtype(model.dtype), bank_spec, x_spec)
  return "vmap" if temp is not None and temp <= limit_bytes else "loop"


def rejection_mask(model: GenerativeModel, bank: RegionBank, x: Samples,
                   strategy: str = "vmap") -> jax.Array:
  """``bool[batch]``: true where ``x`` lies in the union of the bank's regions.

  Args:
    model: the model family of the stored params.
    bank: the regions.
    x: ``[batch, *event_shape]`` samples.
    strategy: ``"auto"`` picks one of the two below from the backend and the sizes
      (:func:`auto_region_strategy`); ``"vmap"`` evaluates every slot of the
      bank in one fused, vmapped
      call (fastest for small models on an accelerator; memory grows with
      ``capacity * batch``);
      ``"loop"`` visits only the filled slots, one at a time, in a
      ``lax.fori_loop`` (memory of one region; compute grows with the regions
      actually stored — use it for large models). The newest slot goes first,
      and each slot scores only the samples that no slot before it has put
      inside: they are sorted first, and
      the slot scores blocks of ``ceil(batch / 16)`` of them until none is left
      (a ``lax.while_loop``; shapes stay static). Both give the same mask.
  """
  chex.assert_rank(x, 1 + len(model.event_shape))
  if strategy == "auto":
    strategy = auto_region_strategy(model, bank, x)
  if strategy == "vmap":
    lr = region_log_ratios(model, bank, x)
    inside = bank.valid[:, None] & (lr < bank.log_tau[:, None])
    return jnp.any(inside, axis=0)
  if strategy != "loop":
    raise ValueError(f"strategy must be 'auto', 'vmap' or 'loop', got {strategy!r}")

  n = x.shape[0]
  block = -(-n // LOOP_BLOCKS)
  n_pad = block * LOOP_BLOCKS

  def body(j, inside):
    # newest slot first: its threshold was calibrated on the latest proposal,
    # so it rejects the most of samples like these and leaves the fewest to score
    i = bank.size - 1 - j
    slot = lambda stack: jax.lax.dynamic_index_in_dim(stack, i, 0, keepdims=False)
    proposal_params = jax.tree.map(slot, bank.proposal_params)
    failure_params = jax.tree.map(slot, bank.failure_params)
    order = jnp.argsort(inside, stable=True)  # the samples still outside first
    left = jnp.sum(~inside)
    xs = x[order]
    xs = jnp.concatenate([xs, jnp.broadcast_to(xs[:1], (n_pad - n,) + xs.shape[1:])])

    def score(carry):
      j, lr = carry
      xb = jax.lax.dynamic_slice_in_dim(xs, j * block, block)
      lb = log_ratio(model, proposal_params, failure_params, xb, slot(bank.log_norm))
      return j + 1, jax.lax.dynamic_update_slice_in_dim(lr, lb, j * block, 0)

    _, lr = jax.lax.while_loop(lambda c: c[0] * block < left, score,
                               (jnp.zeros((), jnp.int32),
                                jnp.full((n_pad,), jnp.inf, jnp.float32)))
    hit = slot(bank.valid) & (lr[:n] < slot(bank.log_tau))  # unscored: +inf, no hit
    return inside | jnp.zeros((n,), bool).at[order].set(hit)

  return jax.lax.fori_loop(0, bank.size, body, jnp.zeros((n,), bool))


class PosteriorSampleInfo(NamedTuple):
  """What a rejection-sampling call did.

  Attributes:
    n_filled: ``int32[]`` samples written (``< n`` when the batches ran out).
    n_drawn: ``int32[]`` candidates drawn from the prior.
    n_accepted: ``int32[]`` candidates outside every region.
  """

  n_filled: jax.Array
  n_drawn: jax.Array
  n_accepted: jax.Array

  @property
  def acceptance_rate(self) -> jax.Array:
    return self.n_accepted / jnp.maximum(self.n_drawn, 1)


def sample_posterior_by_rejection(model: GenerativeModel, prior_params: Params,
                                  bank: RegionBank, key: PRNGKey, n: int, *,
                                  batch_size: int, max_batches: int,
                                  region_strategy: str = "auto",
                                  support: Callable[[Samples], jax.Array] | None
                                  = None) -> tuple[Samples, PosteriorSampleInfo]:
  """Exact samples of ``p_post ∝ p_0 * 1[x not in R]`` by rejection from ``p_0``.

  With ``support`` (jit-able ``x -> bool[n]``) the target is
  ``p_0 * 1[x not in R] * support(x)``.

  Draws candidate batches of ``batch_size`` from the prior inside a
  ``lax.while_loop`` until ``n`` are accepted or ``max_batches`` batches are
  spent. Accepted candidates are written in order; unfilled slots hold zeros
  and must be ignored (``info.n_filled < n``) —
  :func:`check_acceptance` turns that into an error on host.

  Returns:
    ``(x, info)`` with ``x`` of shape ``[n, *event_shape]``.
  """
  if batch_size < 1 or max_batches < 1 or n < 1:
    raise ValueError(f"n={n}, batch_size={batch_size} and max_batches={max_batches} "
                     "must all be >= 1")
  buf = jnp.zeros((n,) + tuple(model.event_shape), model.dtype)

  def cond(carry):
    i, filled = carry[0], carry[1]
    return (filled < n) & (i < max_batches)

  def body(carry):
    i, filled, buf, n_drawn, n_acc = carry
    cand = model.sample(prior_params, jax.random.fold_in(key, i), batch_size)
    acc = ~rejection_mask(model, bank, cand, region_strategy)
    if support is not None:
      acc = acc & support(cand)
    pos = filled + jnp.cumsum(acc.astype(jnp.int32)) - 1
    dest = jnp.where(acc & (pos < n), pos, n)  # n is out of bounds: dropped
    buf = buf.at[dest].set(cand, mode="drop")
    n_new = jnp.sum(acc.astype(jnp.int32))
    return (i + 1, jnp.minimum(filled + n_new, n), buf, n_drawn + batch_size,
            n_acc + n_new)

  zero = jnp.zeros((), jnp.int32)
  _, filled, buf, n_drawn, n_acc = jax.lax.while_loop(
      cond, body, (zero, zero, buf, zero, zero))
  return buf, PosteriorSampleInfo(n_filled=filled, n_drawn=n_drawn, n_accepted=n_acc)


def check_acceptance(info: PosteriorSampleInfo, n: int, floor: float,
                     what: str = "exploration posterior") -> None:
  """Raises :class:`AcceptanceRateError` on host if sampling fell short.

  Args:
    info: info of one call, or of a vmapped call (any leading seed axis).
    n: samples requested.
    floor: minimum acceptable acceptance rate.
    what: name of the sampler, for the message.
  """
  import numpy as np
  filled = np.asarray(info.n_filled).reshape(-1)
  drawn = np.asarray(info.n_drawn).reshape(-1)
  acc = np.asarray(info.n_accepted).reshape(-1)
  rate = acc / np.maximum(drawn, 1)
  for s in range(filled.shape[0]):
    if rate[s] < floor:
      raise AcceptanceRateError(
          f"{what} (seed index {s}): accepted {acc[s]} of {drawn[s]} candidates, a "
          f"rate of {rate[s]:.3g} below the floor min_acceptance_rate={floor:g}. The "
          "rejection regions cover almost all of the prior's mass: lower "
          "filter_factor, use tau_mode='calibrated', or lower min_acceptance_rate.")
    if filled[s] < n:
      raise AcceptanceRateError(
          f"{what} (seed index {s}): accepted {acc[s]} of {drawn[s]} candidates "
          f"(rate {rate[s]:.3g}) but {n} samples were requested: raise "
          "exact_max_batches or exact_batch_size (about "
          f"{int(np.ceil(n / max(rate[s], 1e-12)))} candidates are needed).")


def log_posterior_unnormalized(model: GenerativeModel, prior_params: Params,
                               bank: RegionBank, x: Samples) -> jax.Array:
  """``log p_0(x)`` outside the regions, ``-inf`` inside: ``f32[batch]``."""
  return jnp.where(rejection_mask(model, bank, x), -jnp.inf,
                   model.log_prob(prior_params, x))
