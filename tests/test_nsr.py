"""Negative-sample reinforcement (banel_jax.baselines.nsr): tiny models, real steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from banel_jax import BanelRunner, RoundBatch
from banel_jax import baselines as B
from banel_jax.core.types import GenerativeModel
from banel_jax.tasks.toy1d import Toy1DTask

TASK = Toy1DTask(num_bins=11)  # rewarded bins: 2 and 8


def _batch(x, rewards, evaluated=None):
  x = jnp.asarray(x)
  evaluated = jnp.ones(x.shape[:1], bool) if evaluated is None else jnp.asarray(
      evaluated)
  return RoundBatch(x=x, rewards=jnp.asarray(rewards, jnp.float32),
                    evaluated=evaluated, log_norm=jnp.zeros(()))


def _probs(state):
  return np.asarray(jax.nn.softmax(state.policy.params["logits"]))


@pytest.fixture(scope="module")
def toy():
  model = TASK.model()
  nsr = B.make_nsr(model, B.NSRConfig(learning_rate=0.1, steps=3))
  update = jax.jit(nsr.update)
  state = nsr.init(jax.random.key(0), TASK.prior_params())
  return model, nsr, update, state


def test_a_step_lowers_the_failures_and_raises_the_rest(toy):
  _, _, update, state = toy
  x = [5, 5, 4, 6, 2]  # bin 2 succeeded; 4, 5, 6 failed
  new, metrics = update(state, _batch(x, [0, 0, 0, 0, 1]), jax.random.key(1))
  before, after = _probs(state), _probs(new)
  assert np.all(after[[4, 5, 6]] < before[[4, 5, 6]])
  # The mass the failures lose goes to every other bin, the success included
  # (it is never pushed down: NSR has no term for it).
  others = [i for i in range(TASK.num_bins) if i not in (4, 5, 6)]
  assert np.all(after[others] > before[others])
  assert float(metrics["failure_log_prob_change"]) < 0
  assert float(metrics["success_log_prob_change"]) > 0
  assert (int(metrics["n_failures"]), int(metrics["n_successes"]),
          int(metrics["n_evaluated"])) == (4, 1, 5)
  assert int(new.round) == 1 and int(new.nre) == 5


def test_no_failure_no_step(toy):
  """Successes only, or failures the oracle never scored: parameters and Adam
  state stay exactly as they were (a success is never learned from)."""
  _, _, update, state = toy
  for batch in (_batch([2, 8, 2], [1, 1, 1]),
                _batch([5, 4, 2], [0, 0, 1], evaluated=[False, False, True])):
    new, metrics = update(state, batch, jax.random.key(1))
    assert int(metrics["n_failures"]) == 0
    jax.tree.map(np.testing.assert_array_equal, new.policy.params,
                 state.policy.params)
    jax.tree.map(np.testing.assert_array_equal, new.policy.opt_state,
                 state.policy.opt_state)
    assert int(new.round) == 1  # the round still counts, and its NRE
  assert int(update(state, _batch([5, 4, 2], [0, 0, 1], [False, False, True]),
                    jax.random.key(1))[0].nre) == 1


def test_terms_give_the_plain_gradient_then_stop():
  lp = jnp.array([-1.0, -2.0, -3.0])
  grad = jax.grad(lambda v: B.nsr_terms(v, lp, 0.2).sum())
  np.testing.assert_allclose(grad(lp), np.ones(3))  # rho = 1: grad log p
  np.testing.assert_allclose(grad(lp - 0.5), np.zeros(3))  # rho < 1 - eps: flat
  np.testing.assert_allclose(grad(lp + 0.5), np.exp(0.5) * np.ones(3), rtol=1e-6)


def _position_model(length=4, vocab=5):
  """Independent categoricals per position: ``params["logits"]`` ``[L, V]``,
  with its per-token log-probs."""

  def token_log_prob(params, x):
    logp = jax.nn.log_softmax(params["logits"], axis=-1)  # [L, V]
    return jnp.take_along_axis(logp[None], x[..., None], axis=-1)[..., 0]

  def sample(params, key, n):
    return jax.random.categorical(key, params["logits"], shape=(n, length)
                                  ).astype(jnp.int32)

  model = GenerativeModel(
      init=lambda key: {"logits": jnp.zeros((length, vocab))},
      log_prob=lambda params, x: token_log_prob(params, x).sum(-1),
      sample=sample, event_shape=(length,), dtype=jnp.int32)
  return model, token_log_prob


def test_token_aggregation_counts_each_completions_own_tokens():
  model, token_log_prob = _position_model()
  end = 0
  mask = B.completion_mask([end])
  x = jnp.array([[3, 0, 0, 0], [1, 2, 3, 4], [4, 4, 0, 0], [2, 0, 0, 0]])
  np.testing.assert_array_equal(
      mask(x), [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])
  batch = _batch(x, [0, 0, 0, 1])  # 2 + 4 + 3 failed tokens; the last succeeded
  params = model.init(jax.random.key(0))
  # The first step's loss is the failed tokens' mean log-prob ratio (1 each),
  # and its gradient that of their mean log-probability.
  expected = jax.grad(lambda p: jnp.sum(jnp.where(
      mask(x) & (batch.rewards[:, None] == 0), token_log_prob(p, x), 0.0)) / 9.0)(
          params)["logits"]
  for micro in (0, 2):
    cfg = B.NSRConfig(aggregation="token", learning_rate=0.1, steps=1,
                      train_microbatch=micro)
    nsr = B.make_nsr(model, cfg, token_log_prob=token_log_prob, token_mask=mask)
    state = nsr.init(jax.random.key(0), params)
    new, metrics = jax.jit(nsr.update)(state, batch, jax.random.key(1))
    assert float(metrics["nsr_loss"]) == pytest.approx(1.0)
    # Adam's first step moves each logit by -lr * sign(grad) where grad != 0
    # (the norm clip only scales the gradient).
    step = np.asarray(new.policy.params["logits"] - params["logits"])
    g = np.asarray(expected)
    np.testing.assert_allclose(step[np.abs(g) > 1e-6],
                               -0.1 * np.sign(g[np.abs(g) > 1e-6]), rtol=1e-3)
    assert float(metrics["failure_log_prob_change"]) < 0


def test_bad_configs():
  with pytest.raises(ValueError, match="aggregation"):
    B.NSRConfig(aggregation="word")
  with pytest.raises(ValueError, match="steps"):
    B.NSRConfig(steps=0)
  with pytest.raises(ValueError, match="learning_rate"):
    B.NSRConfig(learning_rate=-1.0)
  with pytest.raises(ValueError, match="clip_eps"):
    B.NSRConfig(clip_eps=1.5)
  with pytest.raises(ValueError, match="token_log_prob"):
    B.make_nsr(TASK.model(), B.NSRConfig(aggregation="token"))


def test_runner_spends_the_budget_exactly():
  calls = []

  def oracle(x):
    calls.append(len(x))
    return TASK.oracle(x)

  nsr = B.make_nsr(TASK.model(), B.NSRConfig(learning_rate=0.1, steps=2))
  run = B.RunConfig(nre_budget=50, samples_per_round=20, n_eval=20, eval_every=5)
  res = BanelRunner(TASK.model(), TASK.prior_params(), oracle, run, seeds=(0, 1),
                    method=nsr, progress=False).run()
  assert res.nre_spent == [50, 50]
  assert [h["round"] for h in res.history] == [0, 1, 2, 3]
  assert all(h["nre"] == [20 * r if r < 3 else 50] * 2
             for r, h in enumerate(res.history))
  assert "nsr_loss" in res.history[1]
  assert sum(calls) - res.eval_calls == 100  # training calls: the budget, 2 seeds
