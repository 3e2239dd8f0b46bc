"""The sample set (``banel_jax.core.sample_set``) and the ``seen_failures`` extension."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banel_jax import BanelConfig, BanelRunner, RoundBatch, make_banel
from banel_jax.core import sample_set as seen
from banel_jax.extensions import seen_failures
from banel_jax.tasks.toy1d import Toy1DTask

TASK = Toy1DTask(num_bins=11)
MODEL = TASK.model()
PRIOR = TASK.prior_params()
_ADD, _CONTAINS = jax.jit(seen.add_samples), jax.jit(seen.contains)


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(
    st.lists(st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.booleans()),
             min_size=1, max_size=12),
    min_size=1, max_size=4))
def test_the_set_is_a_set(batches):
  """Against Python's set: membership after every batch, size, no duplicates."""
  s = seen.empty_sample_set(32)
  ref = set()
  everything = np.array([(a, b) for a in range(4) for b in range(4)], np.int32)
  for batch in batches:
    x = np.zeros((12, 2), np.int32)  # padded to one shape: compiled once
    mask = np.zeros(12, bool)
    x[:len(batch)] = [row for row, _ in batch]
    mask[:len(batch)] = [m for _, m in batch]
    s = _ADD(s, x, mask)
    ref |= {tuple(row) for row, m in zip(x.tolist(), mask) if m}
    assert int(s.size) == len(ref)
    got = np.asarray(_CONTAINS(s, everything))
    assert got.tolist() == [tuple(r) in ref for r in everything.tolist()]
  keys = np.asarray(s.keys)[: int(s.size)]
  assert len({tuple(k) for k in keys.tolist()}) == len(ref)


def test_fingerprints_tell_samples_apart():
  x = jnp.array([[0, 1, 2], [0, 2, 1], [0, 1, 2], [2, 1, 0]], jnp.int32)
  k = np.asarray(seen.fingerprints(x))
  chex.assert_shape(k, (4, 2))
  assert k.dtype == np.uint32
  assert (k[0] == k[2]).all() and not (k[0] == k[1]).all() and not (k[0] == k[3]).all()
  # floats by their bits, any event shape
  img = jnp.zeros((3, 2, 2), jnp.float32).at[1, 0, 1].set(1e-7).at[2].set(0.0)
  k = np.asarray(seen.fingerprints(img))
  assert (k[0] == k[2]).all() and not (k[0] == k[1]).all()
  # 2,000 distinct samples, 2,000 distinct keys
  many = jnp.stack(jnp.unravel_index(jnp.arange(2000), (10, 10, 20)), -1)
  assert len({tuple(r) for r in np.asarray(seen.fingerprints(many)).tolist()}) == 2000


def test_capacity_is_not_exceeded_and_jit_vmap_work():
  add = jax.jit(jax.vmap(seen.add_samples))
  s = jax.vmap(lambda _: seen.empty_sample_set(3))(jnp.arange(2))
  x = jnp.arange(2 * 5, dtype=jnp.int32).reshape(2, 5)
  s = add(s, x, jnp.ones((2, 5), bool))
  assert np.asarray(s.size).tolist() == [3, 3]
  with pytest.raises(ValueError, match="capacity"):
    seen.empty_sample_set(0)


def _config(**kw):
  base = dict(nre_budget=40, samples_per_round=10, tau_mode="calibrated",
              failure_epochs=3, failure_batch_size=10, distill_samples=256,
              distill_epochs=3, distill_batch_size=64, distill_learning_rate=0.3,
              n_eval=20, eval_every=2)
  base.update(kw)
  return BanelConfig(**base)


def test_distillation_moves_mass_off_the_paid_failures():
  """The same round with and without the set: with it, the failed bins are
  rejected from distillation, so the next proposal gives them less mass."""
  x = np.array([5, 5, 5, 5, 4, 6, 5, 5, 4, 5], np.int32)  # the prior's modes
  batch = RoundBatch(x, TASK.oracle(x), np.ones(10, bool), 0.0)
  assert batch.rewards.sum() == 0
  probs = {}
  for flag in (True, False):
    banel = make_banel(MODEL, _config(), (seen_failures(40),) if flag else ())
    state = banel.init(jax.random.key(0), PRIOR)
    new, metrics = jax.jit(banel.update)(state, batch, jax.random.key(1))
    probs[flag] = np.exp(np.asarray(MODEL.log_prob(new.proposal.params,
                                                   jnp.arange(11))))
    if flag:
      assert int(metrics["n_seen_failures"]) == 3  # bins 4, 5, 6
      assert np.asarray(seen.contains(new.extensions[0], jnp.arange(11))).tolist() \
          == [i in (4, 5, 6) for i in range(11)]
      # the share of distillation samples it rejected: about the prior's mass there
      prior_mass = np.exp(np.asarray(MODEL.log_prob(PRIOR, jnp.array([4, 5, 6])))).sum()
      assert abs(float(metrics["distill_seen_failures_reject_rate"]) - prior_mass) < 0.1
    else:
      assert new.extensions == () and "n_seen_failures" not in metrics
  assert probs[True][4:7].sum() < 0.5 * probs[False][4:7].sum()


def test_only_failures_enter_the_set():
  target = TASK.target_bins[0]
  x = np.array([target, 3, 3, 2] + [1] * 6, np.int32)
  evaluated = np.array([True] * 3 + [False] * 7)  # a budget's partial last round
  batch = RoundBatch(x, TASK.oracle(x) * evaluated, evaluated, 0.0)
  banel = make_banel(MODEL, _config(), (seen_failures(40),))
  state = banel.init(jax.random.key(0), PRIOR)
  new, _ = jax.jit(banel.update)(state, batch, jax.random.key(1))
  assert np.asarray(seen.contains(new.extensions[0], jnp.arange(11))).tolist() \
      == [i == 3 for i in range(11)]


def test_exact_mode_never_draws_a_seen_failure():
  """In exact mode the hook restricts the posterior that rejection samples."""
  banel = make_banel(MODEL, _config(mode="exact"), (seen_failures(40),))
  state = banel.init(jax.random.key(0), PRIOR)
  x = np.array([5] * 6 + [4, 6, 3, 7], np.int32)
  new, _ = jax.jit(banel.update)(state, RoundBatch(x, TASK.oracle(x),
                                                   np.ones(10, bool), 0.0),
                                 jax.random.key(1))
  drawn, info = jax.jit(banel.propose, static_argnums=2)(new, jax.random.key(2), 500)
  assert not np.isin(np.asarray(drawn), [3, 4, 5, 6, 7]).any()
  assert float(info.acceptance_rate) < 0.9


def test_bad_capacity_names_the_field():
  with pytest.raises(ValueError, match="capacity=0"):
    seen_failures(0)


def test_resume_after_a_crash_equals_the_uninterrupted_run(crash_then_resume):
  cfg = _config()
  ext = (seen_failures(40),)
  full = BanelRunner(MODEL, PRIOR, TASK.oracle, cfg, seeds=[0, 1], progress=False,
                     extensions=ext).run()
  resumed = crash_then_resume(MODEL, PRIOR, TASK.oracle, cfg, [0, 1], extensions=ext)
  assert int(np.asarray(resumed.states.extensions[0].size).min()) > 0
  for a, b in zip(jax.tree.leaves(full.states.extensions),
                  jax.tree.leaves(resumed.states.extensions)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(full.final_success_rates(), resumed.final_success_rates())
