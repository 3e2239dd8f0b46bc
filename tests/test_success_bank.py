"""The bank of successes (``banel_jax.core.success_bank``) and the
``success_replay`` extension."""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banel_jax import BanelConfig, BanelRunner, RoundBatch, make_banel
from banel_jax.core import success_bank
from banel_jax.extensions import success_replay
from banel_jax.tasks.toy1d import Toy1DTask

TASK = Toy1DTask(num_bins=11)
MODEL = TASK.model()
PRIOR = TASK.prior_params()
_ADD = jax.jit(success_bank.add_successes)


def _batches(max_value):
  return st.lists(st.lists(st.tuples(st.integers(0, max_value), st.booleans()),
                           min_size=6, max_size=6), min_size=1, max_size=5)


def _check_against_deque(add, capacity, batches, new_in_batch):
  """Feeds ``batches`` to ``add`` and to a ``deque(maxlen=capacity)``, which
  gets ``new_in_batch(ref, successes)``; after each batch both hold the same
  samples and the bank's count is the number the deque was given."""
  bank = success_bank.empty_success_bank(capacity, (2,), jnp.int32)
  ref = collections.deque(maxlen=capacity)
  given_to_ref = 0
  for batch in batches:
    x = np.array([[v, -v] for v, _ in batch], np.int32)
    mask = np.array([m for _, m in batch])
    bank = add(bank, x, mask)
    new = new_in_batch(ref, [tuple(r) for r, m in zip(x.tolist(), mask) if m])
    ref.extend(new)
    given_to_ref += len(new)
    assert int(bank.count) == given_to_ref
    valid = np.asarray(success_bank.valid_mask(bank))
    got = [tuple(r) for r in np.asarray(bank.x)[valid].tolist()]
    assert len(got) == len(ref) and sorted(got) == sorted(ref)
  return got


@settings(max_examples=25, deadline=None)
@given(capacity=st.integers(1, 5), batches=_batches(99))
def test_the_bank_keeps_the_latest_successes(capacity, batches):
  """Against ``collections.deque(maxlen=capacity)``: same contents, same count."""
  _check_against_deque(_ADD, capacity, batches, lambda ref, rows: rows)


_ADD_DISTINCT = jax.jit(functools.partial(success_bank.add_successes, distinct=True))


def _first_new_occurrences(ref, rows):
  held, new = set(ref), []
  for row in rows:
    if row not in held:
      held.add(row)
      new.append(row)
  return new


@settings(max_examples=25, deadline=None)
@given(capacity=st.integers(1, 5), batches=_batches(6))
def test_the_distinct_bank_keeps_the_latest_distinct_successes(capacity, batches):
  """Against a deque fed each batch's first occurrences of the successes it did
  not hold before the batch: few values (0..6), so repeats within a batch,
  across batches and after eviction all occur."""
  got = _check_against_deque(_ADD_DISTINCT, capacity, batches, _first_new_occurrences)
  assert len(set(got)) == len(got)


def test_the_distinct_bank_skips_what_it_holds():
  bank = success_bank.empty_success_bank(4, (2,), jnp.int32)
  x = jnp.array([[1, 1], [2, 2], [1, 1], [3, 3]], jnp.int32)
  bank = _ADD_DISTINCT(bank, x, jnp.array([True, True, True, False]))
  assert int(bank.count) == 2
  # [3, 3] was not a success before; [2, 2] is banked; [0, 0] equals the empty
  # slots' zeros, which must not count as held.
  x2 = jnp.array([[2, 2], [3, 3], [0, 0]], jnp.int32)
  bank = _ADD_DISTINCT(bank, x2, jnp.array([True, True, True]))
  assert int(bank.count) == 4
  assert bank.x.tolist() == [[1, 1], [2, 2], [3, 3], [0, 0]]
  assert np.asarray(success_bank.valid_mask(bank)).all()
  plain = jax.jit(success_bank.add_successes)(
      success_bank.empty_success_bank(4, (2,), jnp.int32), x,
      jnp.array([True, True, True, False]))
  assert int(plain.count) == 3


def test_vmap_and_bad_capacity():
  add = jax.jit(jax.vmap(success_bank.add_successes))
  bank = jax.vmap(lambda _: success_bank.empty_success_bank(2, (), jnp.int32))(
      jnp.arange(3))
  x = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
  mask = jnp.array([[True, False, True, True], [False] * 4, [True] + [False] * 3])
  bank = add(bank, x, mask)
  assert np.asarray(bank.count).tolist() == [3, 0, 1]
  assert np.asarray(jax.vmap(success_bank.valid_mask)(bank)).tolist() == [
      [True, True], [False, False], [True, False]]
  assert sorted(np.asarray(bank.x)[0].tolist()) == [2, 3]
  for bad in (0, -1, 2.0):
    with pytest.raises(ValueError, match="capacity"):
      success_bank.empty_success_bank(bad, (), jnp.int32)


def _config(**kw):
  base = dict(nre_budget=40, samples_per_round=10, tau_mode="calibrated",
              failure_epochs=3, failure_batch_size=10, distill_samples=256,
              distill_epochs=3, distill_batch_size=64, distill_learning_rate=0.3,
              n_eval=20, eval_every=2)
  base.update(kw)
  return BanelConfig(**base)


BINS = [int(b) for b in TASK.target_bins]


def _two_rounds(config, replay):
  """Round 1 pays for four successes (the target bins, twice), round 2 for none.

  Returns ``(state, metrics, mass)`` over 16 seeds side by side: the final
  state, round 2's metrics, and the proposal's mass on the target bins.
  """
  found = np.array(BINS * 2 + [6, 5, 5, 4, 5, 6], np.int32)
  none = np.array([5, 5, 4, 6, 5, 5, 4, 5, 6, 5], np.int32)
  batches = [RoundBatch(x, TASK.oracle(x), np.ones(10, bool), 0.0)
             for x in (found, none)]
  assert batches[0].rewards.sum() == 4 and batches[1].rewards.sum() == 0
  banel = make_banel(MODEL, config, (replay,))

  def run(key):
    state = banel.init(key, PRIOR)
    for t, batch in enumerate(batches):
      state, metrics = banel.update(state, batch, jax.random.fold_in(key, t))
    return state, metrics, jnp.exp(MODEL.log_prob(state.proposal.params,
                                                  jnp.array(BINS))).sum()

  return jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 16))


def test_banked_successes_keep_being_fitted():
  """Four successes in round 1, none in round 2: with the bank the second
  distillation fits them again, so over 16 seeds their bins end with more mass
  than when only each round's own successes are fitted."""
  mass = {}
  cfg = _config(distill_samples=64, distill_batch_size=32)
  for size in (8, 0):
    state, metrics, mass[size] = _two_rounds(cfg, success_replay(MODEL, size))
    if size:
      assert np.asarray(metrics["n_banked_successes"]).tolist() == [4] * 16
      np.testing.assert_array_equal(np.asarray(state.extensions[0].x)[:, :4],
                                    np.tile(BINS * 2, (16, 1)))
    else:
      assert state.extensions == ((),) and "n_banked_successes" not in metrics
  assert np.mean(mass[8] > mass[0]) >= 0.75
  assert np.mean(mass[8]) > 1.2 * np.mean(mass[0])


def test_upweighted_successes_take_more_mass():
  """The same two rounds as above, with the regions switched off (a filter
  factor no ratio reaches): at weight 1 the four banked successes are 4 rows
  among about 64 accepted ones; at weight 30 they take about two thirds of the
  fitted weight, so over 16 seeds their bins end with more mass."""
  mass = {}
  cfg = _config(tau_mode="factor", filter_factor=1e30, distill_samples=64,
                distill_batch_size=32)
  for weight in (1.0, 30.0):
    _, metrics, mass[weight] = _two_rounds(cfg, success_replay(MODEL, 8,
                                                               weight=weight))
    # nothing is rejected by a region: the test is about the weight alone
    assert float(np.min(metrics["distill_accept_rate"])) > 0.99
  assert np.mean(mass[30.0] > mass[1.0]) >= 0.75
  assert np.mean(mass[30.0]) > 1.5 * np.mean(mass[1.0])


@pytest.mark.parametrize("kw, what", [
    (dict(weight=0.0), "weight=0.0 must be a finite number > 0"),
    (dict(weight=-2.0), "weight=-2.0 must be a finite number > 0"),
    (dict(weight=float("nan")), "weight=nan must be a finite number > 0"),
    (dict(weight=float("inf")), "weight=inf must be a finite number > 0"),
    (dict(weight=True), "weight=True must be a finite number > 0"),
    (dict(weight="3"), "weight='3' must be a finite number > 0"),
    (dict(bank_size=-1), "bank_size=-1 must be an integer >= 0"),
    (dict(bank_size=True), "bank_size=True must be an integer >= 0"),
    (dict(bank_size=0, distinct=True), "set bank_size > 0"),
    (dict(bank_size=4, distinct=1), "distinct=1 must be True or False"),
])
def test_bad_settings_name_the_field(kw, what):
  with pytest.raises(ValueError) as err:
    success_replay(MODEL, **kw)
  assert what in str(err.value)


def test_exact_mode_refuses_it():
  with pytest.raises(ValueError, match="mode='distilled' only"):
    make_banel(MODEL, _config(mode="exact"), (success_replay(MODEL, 4),))


@pytest.mark.parametrize("distinct", [False, True])
def test_resume_after_a_crash_equals_the_uninterrupted_run(crash_then_resume, distinct):
  cfg = _config(nre_budget=60)
  ext = (success_replay(MODEL, 8, distinct=distinct),)
  full = BanelRunner(MODEL, PRIOR, TASK.oracle, cfg, seeds=[0, 1], progress=False,
                     extensions=ext).run()
  assert int(np.asarray(full.states.extensions[0].count).max()) > 0
  resumed = crash_then_resume(MODEL, PRIOR, TASK.oracle, cfg, [0, 1], extensions=ext)
  for a, b in zip(jax.tree.leaves(full.states.extensions),
                  jax.tree.leaves(resumed.states.extensions)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(full.final_success_rates(), resumed.final_success_rates())
