"""The ``restart`` extension: a seed with no success restarts its search."""

import jax
import numpy as np
import pytest

from banel_jax import BanelConfig, BanelRunner, RoundBatch, make_banel
from banel_jax.runtime.compilation import count_compilations
from banel_jax.extensions import restart
from banel_jax.tasks.toy1d import Toy1DTask

TASK = Toy1DTask(num_bins=11)
MODEL = TASK.model()
PRIOR = TASK.prior_params()
BINS = [int(b) for b in TASK.target_bins]
MISSES = [b for b in range(11) if b not in BINS]


def _config(**kw):
  base = dict(nre_budget=60, samples_per_round=10, tau_mode="calibrated",
              failure_epochs=3, failure_batch_size=10, distill_samples=128,
              distill_epochs=2, distill_batch_size=64, distill_learning_rate=0.3,
              n_eval=20, eval_every=2)
  base.update(kw)
  return BanelConfig(**base)


def _batch(values):
  x = np.asarray(values, np.int32)
  return RoundBatch(x, TASK.oracle(x), np.ones(len(x), bool), 0.0)


def _rounds(config, batches, key=jax.random.key(0), every=2):
  """Feeds ``batches`` to one seed's ``update`` (jitted) with ``restart(every)``;
  returns every state, every round's metrics, and the compilations after the
  first round."""
  banel = make_banel(MODEL, config, (restart(every),))
  update = jax.jit(banel.update)
  state = banel.init(key, PRIOR)
  keys = [jax.random.fold_in(key, t) for t in range(len(batches))]
  state, m = update(state, batches[0], keys[0])
  states, metrics = [state], [m]
  with count_compilations() as compiles:
    for batch, k in zip(batches[1:], keys[1:]):
      state, m = update(state, batch, k)
      states.append(state)
      metrics.append(m)
  return states, metrics, compiles.count


def _same(a, b):
  return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a),
                                                  jax.tree.leaves(b)))


def test_without_a_success_it_restarts_every_r_rounds():
  fail = _batch((MISSES * 2)[:10])
  assert float(fail.rewards.sum()) == 0
  states, metrics, compiles = _rounds(_config(), [fail] * 5)
  assert compiles == 0  # a restart round runs the same program
  # round 1: a region and a moved proposal; round 2: restart; and so on
  assert [int(s.regions.size) for s in states] == [1, 0, 1, 0, 1]
  assert [int(m["n_restarts"]) for m in metrics] == [0, 1, 1, 2, 2]
  assert [int(m["n_regions"]) for m in metrics] == [1, 0, 1, 0, 1]
  assert not _same(states[0].proposal.params, PRIOR)
  for s in (states[1], states[3]):
    assert _same(s.proposal.params, PRIOR)
    assert int(s.proposal.step) == 0
    assert not np.asarray(s.regions.valid).any()
    fresh = s.proposal.tx.init(PRIOR)
    assert _same(s.proposal.opt_state, fresh)
  # the failure model and the round counter are not reset
  assert [int(s.round) for s in states] == [1, 2, 3, 4, 5]
  assert int(states[-1].extensions[0].since) == 1


def test_after_the_first_success_it_never_restarts():
  fail = _batch((MISSES * 2)[:10])
  hit = _batch([BINS[0]] + (MISSES * 2)[:9])
  assert float(hit.rewards.sum()) == 1
  states, metrics, _ = _rounds(_config(), [fail, hit, fail, fail, fail])
  # the success came in round 2, the round a restart would have happened
  assert [int(m["n_restarts"]) for m in metrics] == [0] * 5
  assert [int(s.regions.size) for s in states] == [1, 2, 3, 4, 5]
  assert bool(states[-1].extensions[0].found)


def test_off_by_default_and_the_state_keeps_its_structure():
  banel = make_banel(MODEL, _config())
  state = banel.init(jax.random.key(0), PRIOR)
  assert state.extensions == ()
  _, m = jax.jit(banel.update)(state, _batch((MISSES * 2)[:10]), jax.random.key(1))
  assert "n_restarts" not in m


@pytest.mark.parametrize("bad", [-1, 0, 2.0, True, "3"])
def test_bad_values_name_the_field(bad):
  with pytest.raises(ValueError, match=f"every={bad!r} must be an integer >= 1"):
    restart(bad)


def _rare_oracle(x):
  """Rewards only bin 1 (prior mass 1.3%), so seeds find it at different times."""
  return (np.asarray(x) == 1).astype(np.float32)


def test_seeds_side_by_side_restart_on_their_own_and_resume(crash_then_resume):
  # a budget of 10 rounds; seeds side by side under vmap, each with its clock
  cfg = _config(nre_budget=100)
  ext = (restart(3),)
  full = BanelRunner(MODEL, PRIOR, _rare_oracle, cfg, seeds=[0, 1, 2, 3],
                     progress=False, extensions=ext).run()
  clock = full.states.extensions[0]
  found = np.asarray(clock.found)
  count = np.asarray(clock.count)
  firsts = {}  # 0-based round of each seed's first success
  for s in full.successes:
    firsts.setdefault(s.seed_index, s.round)
  for i in range(4):
    # restarts come after updates 3, 6 and 9 (1-based) of a seed with no
    # success yet; the first success in update r + 1 stops them
    assert found[i] == (i in firsts)
    assert count[i] == firsts.get(i, 10) // 3
  assert count.sum() > 0 and count.min() < count.max()  # the clocks differ
  assert full.nre_spent == [100] * 4
  resumed = crash_then_resume(MODEL, PRIOR, _rare_oracle, cfg, [0, 1, 2, 3],
                              extensions=ext)
  assert _same(full.states.extensions, resumed.states.extensions)
  np.testing.assert_array_equal(full.final_success_rates(),
                                resumed.final_success_rates())
