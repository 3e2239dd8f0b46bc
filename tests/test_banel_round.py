"""Tests of one BaNEL round (banel.update/propose) and of the seed-vmapped driver.

Tiny 1-D toy (K = 11 bins, success bins -1.8 and +1.8 with ~9% prior mass). The
config and the whole-run results come from the session fixture ``toy_runs``
(``conftest.py``): rounds of 100 samples, NRE budget 250.
"""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from banel_jax import RoundBatch, make_banel
from banel_jax.extensions import success_replay
from banel_jax.tasks.toy1d import Toy1DTask
from tree_utils import leaves_as_numpy as _leaves

K = 11
TASK = Toy1DTask(num_bins=K)
MODEL = TASK.model()
PRIOR = TASK.prior_params()
M = 100


@pytest.fixture(scope="module")
def fns(toy_runs):
  """Unbatched, jitted ``init``/``propose``/``update`` of the shared config."""
  cfg = toy_runs["config"]
  assert cfg.samples_per_round == M and toy_runs["task"] == TASK
  banel = make_banel(MODEL, cfg)
  return types.SimpleNamespace(cfg=cfg, banel=banel, init=jax.jit(banel.init),
                               propose=jax.jit(banel.propose, static_argnums=2),
                               update=jax.jit(banel.update))


def assert_trees_equal(a, b, same_structure=True):
  """Leaf-wise exact equality. States of two ``make_banel`` calls hold different
  (equivalent) optimizer objects as static fields: compare their leaves only."""
  if same_structure:
    assert jax.tree.structure(a) == jax.tree.structure(b)
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def assert_trees_differ(a, b):
  assert any(not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


@pytest.fixture(scope="module")
def round_input(fns):
  """A state after one round (so the bank is not empty) and a fresh batch."""
  state = fns.init(jax.random.key(0), PRIOR)
  x0 = np.asarray(fns.propose(state, jax.random.key(1), M)[0])
  r0 = TASK.oracle(x0)
  state, _ = fns.update(state, RoundBatch(x0, r0, np.ones(M, bool), 0.0),
                        jax.random.key(2))
  assert int(state.regions.size) == 1
  x = np.array(fns.propose(state, jax.random.key(3), M)[0])
  x[[0, 5, 9]] = [TASK.target_bins[0], TASK.target_bins[1], TASK.target_bins[0]]
  rewards = TASK.oracle(x)
  success = rewards == 1
  assert 3 <= success.sum() < M // 2
  return state, x, rewards, success


def test_successes_never_reach_the_learner(fns, round_input):
  """In the paper's algorithm (no extension) the samples behind a reward of 1 carry no
  weight anywhere: replacing them by other values (still rewarded 1) leaves the
  new state bit-for-bit the same."""
  state, x, rewards, success = round_input
  key = jax.random.key(4)
  evaluated = np.ones(M, bool)
  new_a, met_a = fns.update(state, RoundBatch(x, rewards, evaluated, 0.0), key)
  x_b = x.copy()
  x_b[success] = 5  # the central bin, a failure for the oracle
  new_b, met_b = fns.update(state, RoundBatch(x_b, rewards, evaluated, 0.0), key)
  assert_trees_equal(new_a, new_b)
  assert_trees_equal(met_a, met_b)
  assert int(met_a["n_successes"]) == success.sum()
  assert int(met_a["n_failures"]) == M - success.sum()
  # ... whereas a change in a failure slot does change the learner (can fail)
  x_c = x.copy()
  j = np.flatnonzero(~success)[0]
  x_c[j] = 5 if x_c[j] != 5 else 4  # another failure bin
  new_c, _ = fns.update(state, RoundBatch(x_c, rewards, evaluated, 0.0), key)
  assert_trees_differ(new_a.failure.params, new_c.failure.params)


def test_successes_equal_unscored_slots_for_learning(fns, round_input):
  """Marking the successes as not evaluated changes only the NRE count."""
  state, x, rewards, success = round_input
  key = jax.random.key(4)
  new_a, _ = fns.update(state, RoundBatch(x, rewards, np.ones(M, bool), 0.0), key)
  new_u, met_u = fns.update(state, RoundBatch(x, np.where(success, 0.0, rewards),
                                              ~success, 0.0), key)
  assert_trees_equal((new_a.proposal, new_a.failure, new_a.regions),
                     (new_u.proposal, new_u.failure, new_u.regions))
  assert int(new_a.nre) - int(new_u.nre) == success.sum()
  assert int(new_a.nre) == int(state.nre) + M
  assert int(met_u["n_successes"]) == 0


def test_success_replay_changes_only_distillation(fns, round_input):
  state, x, rewards, success = round_input
  banel = make_banel(MODEL, fns.cfg, (success_replay(MODEL),))
  state = state.replace(extensions=((),))  # the replay of a round's own successes
  update = jax.jit(banel.update)
  key = jax.random.key(4)
  evaluated = np.ones(M, bool)
  new_a, _ = update(state, RoundBatch(x, rewards, evaluated, 0.0), key)
  x_b = x.copy()
  x_b[success] = 5
  new_b, _ = update(state, RoundBatch(x_b, rewards, evaluated, 0.0), key)
  # the failure model and the regions still never see a success
  assert_trees_equal((new_a.failure, new_a.regions), (new_b.failure, new_b.regions),
                     False)
  # but the distilled proposal does, and moves mass toward the success bins
  assert_trees_differ(new_a.proposal.params, new_b.proposal.params)
  p = lambda s: np.asarray(jax.nn.softmax(s.proposal.params["logits"]))
  targets = TASK.target_bins
  assert p(new_a)[targets].sum() > p(new_b)[targets].sum()
  off, _ = fns.update(state, RoundBatch(x, rewards, evaluated, 0.0), key)
  assert_trees_differ(new_a.proposal.params, off.proposal.params)


def test_round_without_failures_adds_no_region(fns, round_input):
  state, x, rewards, _ = round_input
  nothing = np.zeros(M, bool)
  new, met = fns.update(state, RoundBatch(x, np.zeros(M, np.float32), nothing, 0.0),
                        jax.random.key(6))
  assert int(met["n_failures"]) == 0 and int(met["n_evaluated"]) == 0
  assert int(new.regions.size) == int(state.regions.size)
  assert_trees_equal(new.regions, state.regions)
  assert int(new.nre) == int(state.nre) and int(new.round) == int(state.round) + 1
  # a partial round: only the first 7 slots scored
  part = np.arange(M) < 7
  new, met = fns.update(state, RoundBatch(x, np.where(part, rewards, 0.0), part, 0.0),
                        jax.random.key(6))
  assert int(new.nre) == int(state.nre) + 7
  assert int(met["n_failures"]) + int(met["n_successes"]) == 7
  assert int(new.regions.size) == int(state.regions.size) + 1


# --- seeds under vmap ---------------------------------------------------------------

SEEDS = (0, 1, 2)


def assert_metric_equal(batched, single, name):
  """Exact equality, except the reported training losses: XLA may order the
  loss's reduction differently for a batch of seeds (a float rounding of the
  metric; the parameters it reports on are compared exactly)."""
  if name.endswith("_loss"):
    np.testing.assert_allclose(batched, single, rtol=1e-6, err_msg=name)
  else:
    np.testing.assert_array_equal(batched, single, err_msg=name)


def test_vmapped_round_equals_single_runs(fns, round_input, toy_runs):
  """jit(vmap(init/propose/update)) over 3 seeds equals each seed run alone.

  The vmapped functions are the runner's own (already compiled); the single-seed
  ones are the unbatched ``fns``. Equality is exact.
  """
  three = toy_runs["runner"]
  assert three.seeds == list(SEEDS)
  v_init, v_propose, v_update = three._init, three._propose, three._update
  keys = jnp.stack([jax.random.key(s) for s in SEEDS])
  states = v_init(keys, PRIOR)
  pkeys = jnp.stack([jax.random.key(100 + s) for s in SEEDS])
  ukeys = jnp.stack([jax.random.key(200 + s) for s in SEEDS])
  xs, infos = v_propose(states, pkeys, M)
  rewards = np.stack([TASK.oracle(np.asarray(x)) for x in xs])
  evaluated = np.ones((3, M), bool)
  evaluated[2, 30:] = False  # a seed-specific partial batch
  rewards[~evaluated] = 0.0
  # the runner's update donates its state: hand it a copy
  new, metrics = v_update(jax.tree.map(jnp.copy, states),
                          RoundBatch(xs, jnp.asarray(rewards),
                                             jnp.asarray(evaluated),
                                             jnp.zeros(3, jnp.float32)), ukeys)
  x_next, _ = v_propose(new, pkeys, M)
  for i, s in enumerate(SEEDS):
    one = fns.init(jax.random.key(s), PRIOR)
    assert_trees_equal(jax.tree.map(lambda a: a[i], states), one, False)
    x1, info1 = fns.propose(one, pkeys[i], M)
    np.testing.assert_array_equal(xs[i], x1)
    assert_trees_equal(jax.tree.map(lambda a: a[i], infos), info1)
    new1, met1 = fns.update(one, RoundBatch(x1, rewards[i], evaluated[i], 0.0),
                            ukeys[i])
    assert_trees_equal(jax.tree.map(lambda a: a[i], new), new1, False)
    for k in met1:
      assert_metric_equal(metrics[k][i], met1[k], k)
    np.testing.assert_array_equal(x_next[i], fns.propose(new1, pkeys[i], M)[0])
  assert int(new.nre[2]) == 30 and int(new.nre[0]) == M
  assert not np.array_equal(xs[0], xs[1])  # seeds really differ


def test_no_recompilation_after_round_one(toy_runs):
  assert toy_runs["three"].history[-1]["round"] == 3
  sizes1, sizes_end = toy_runs["cache_sizes_round1"], toy_runs["cache_sizes_end"]
  assert sizes1 == sizes_end, (sizes1, sizes_end)
  # distilled mode's round runs update through its freezing guard only
  assert sizes1["_update_or_hold"] == 1 and sizes1["_update"] == 0
  compiles = toy_runs["compiles_after_round1"]
  assert compiles == [], f"rounds 2-3 compiled {compiles}"


def test_runner_seed_results_equal_single_seed_run(toy_runs):
  res, one = toy_runs["three"], toy_runs["one"]
  assert res.seeds == list(SEEDS) and one.seeds == [1]
  assert len(res.history) == len(one.history) == 4
  per_seed = 0
  for h3, h1 in zip(res.history, one.history):
    assert h3["round"] == h1["round"]
    for k, v in h1.items():
      if k in ("round", "wall_time_s", "eval_calls"):
        continue
      assert isinstance(v, list) and len(v) == 1, k
      assert_metric_equal(h3[k][1], v[0], k)
      per_seed += 1
  assert per_seed > 20
  assert_trees_equal(jax.tree.map(lambda a: a[1], res.states),
                     jax.tree.map(lambda a: a[0], one.states), False)
  # the seeds differ from each other
  assert res.history[-1]["failure_nll"][0] != res.history[-1]["failure_nll"][1]
  assert [s.seed_index for s in one.successes] == [0] * len(one.successes)
  assert len(one.successes) > 0
  assert sorted((s.round, s.sample) for s in one.successes) == sorted(
      (s.round, s.sample) for s in res.successes if s.seed_index == 1)


# --- jit / no-jit -------------------------------------------------------------------

@pytest.fixture(scope="class")
def attach_fns(request, fns):
  request.cls.fns = fns


@pytest.mark.usefixtures("attach_fns")
class UpdateVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_update(self):
    fns = self.fns
    state = fns.init(jax.random.key(7), PRIOR)
    x = np.asarray(fns.propose(state, jax.random.key(8), M)[0])
    rewards = TASK.oracle(x)
    evaluated = np.arange(M) < 73
    rewards[~evaluated] = 0
    batch = RoundBatch(x, rewards, evaluated, 0.0)
    new, metrics = self.variant(fns.banel.update)(state, batch, jax.random.key(9))
    ref, ref_metrics = fns.update(state, batch, jax.random.key(9))
    chex.assert_trees_all_close(_leaves(new), _leaves(ref), rtol=1e-5, atol=1e-5)
    chex.assert_tree_all_finite(new.proposal.params)
    self.assertEqual(int(new.round), 1)
    self.assertEqual(int(new.nre), 73)
    self.assertEqual(int(new.regions.size), 1)
    self.assertEqual(int(metrics["n_successes"]), int(rewards.sum()))
    self.assertEqual(int(metrics["n_failures"]), 73 - int(rewards.sum()))
    np.testing.assert_allclose(float(metrics["failure_nll"]),
                               float(ref_metrics["failure_nll"]), rtol=1e-5)
    # the new region holds the proposal that drew x and the fitted failure model
    np.testing.assert_array_equal(new.regions.proposal_params["logits"][0],
                                  PRIOR["logits"])
    np.testing.assert_allclose(new.regions.failure_params["logits"][0],
                               new.failure.params["logits"], rtol=1e-6)
    np.testing.assert_allclose(new.regions.log_tau[0], -np.log(fns.cfg.filter_factor),
                               rtol=1e-6)


def test_runner_records_collapse_diagnostics_without_successes(toy_runs):
  """Each round records the distinct share of the scored queries and the
  prior mass inside the regions, which matches the exact mass on the toy."""
  from banel_jax.core import posterior
  runner, task = toy_runs["runner"], toy_runs["task"]
  rounds = [h for h in toy_runs["three"].history if h["round"] > 0]
  for h in rounds:
    assert all(0.0 < d <= 1.0 for d in h["distinct_share"])
    assert all(0.0 <= p <= 1.0 for p in h["prior_mass_in_regions"])
  # K = 11 bins and 100 samples: at most 11 distinct queries of 100
  assert max(rounds[0]["distinct_share"]) <= 11 / 100
  prior = np.exp(np.asarray(jax.nn.log_softmax(task.prior_logits())))
  bins = jnp.arange(task.num_bins, dtype=jnp.int32)
  model = task.model()
  for s in range(3):
    regions = jax.tree.map(lambda a, s=s: a[s], runner.states.regions)
    inside = np.asarray(posterior.rejection_mask(model, regions, bins))
    exact = float(prior[inside].sum())
    sampled = rounds[-1]["prior_mass_in_regions"][s]
    n = 1024
    assert abs(sampled - exact) <= 4 * np.sqrt(exact * (1 - exact) / n) + 1e-6


def test_runner_estimates_the_proposal_entropy(toy_runs):
  """Round 1 draws from the pretrained model: its entropy estimate matches
  the prior's exact entropy within the Monte Carlo error of 100 samples; a
  later round's estimate is a finite number of nats below log K."""
  task = toy_runs["task"]
  rounds = [h for h in toy_runs["three"].history if h["round"] > 0]
  logp = np.asarray(jax.nn.log_softmax(task.prior_logits()), np.float64)
  p = np.exp(logp)
  exact = -(p * logp).sum()
  sd = np.sqrt((p * logp ** 2).sum() - exact ** 2)
  for est in rounds[0]["proposal_entropy"]:
    assert abs(est - exact) <= 4 * sd / np.sqrt(100)
  for h in rounds[1:]:
    assert all(0.0 <= e <= np.log(task.num_bins) + 0.5 for e in h["proposal_entropy"])
