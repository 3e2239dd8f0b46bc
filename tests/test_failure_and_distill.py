"""Tests of failure-model fitting, distillation and weighted MLE on tabular models.

For a categorical table the weighted maximum-likelihood solution is known in
closed form (the weighted empirical frequencies), so fits are checked against it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from banel_jax import (BanelConfig, add_region, empty_region_bank, fit_weighted_mle,
                       make_distiller, make_failure_fitter, rejection_mask)
from banel_jax.core.distill import effective_sample_size
from banel_jax.tasks.toy1d import Toy1DTask

K = 11
TASK = Toy1DTask(num_bins=K)
MODEL = TASK.model()
PRIOR = TASK.prior_params()
XS = jnp.arange(K, dtype=jnp.int32)
M = 100  # samples per round


def _probs(params):
  return np.asarray(jax.nn.softmax(params["logits"]), np.float64)


@pytest.fixture(scope="module")
def round_batch():
  """A round: 100 prior samples, oracle rewards, the last 10 slots unscored."""
  x = np.random.default_rng(3).choice(K, size=M, p=_probs(PRIOR)).astype(np.int32)
  x[:2] = TASK.target_bins  # make sure some successes are present
  rewards = TASK.oracle(x)
  evaluated = np.arange(M) < 90
  failure_mask = evaluated & (rewards == 0)
  assert 70 < failure_mask.sum() < 90 and (evaluated & (rewards == 1)).sum() >= 2
  return x, rewards, evaluated, failure_mask


@functools.lru_cache(maxsize=None)
def _fitter(**changes):
  """Jitted fitter of a config, built once per config (compiles are slow)."""
  cfg = BanelConfig.paper(samples_per_round=M, **changes)
  return jax.jit(make_failure_fitter(MODEL, cfg))


CONVERGE = dict(failure_epochs=300, failure_batch_size=M, failure_learning_rate=0.1)


@pytest.mark.parametrize("init", ["scratch", "proposal"])
def test_failure_fit_converges_to_empirical_frequencies(round_batch, init):
  x, _, _, failure_mask = round_batch
  fit = _fitter(failure_init=init, **CONVERGE)
  state, metrics = fit(PRIOR, jnp.asarray(x), jnp.asarray(failure_mask),
                       jax.random.key(0))
  freq = np.bincount(x[failure_mask], minlength=K) / failure_mask.sum()
  p = _probs(state.params)
  np.testing.assert_allclose(p, freq, atol=0.01)
  assert np.all(p[TASK.target_bins] < 1e-3)  # successes were not fitted
  assert int(metrics["n_failures"]) == failure_mask.sum()
  # the reported NLL is the failures' cross-entropy, at its minimum the entropy
  nz = freq > 0
  entropy = -np.sum(freq[nz] * np.log(freq[nz]))
  assert float(metrics["failure_nll"]) == pytest.approx(entropy, abs=0.02)
  assert int(state.step) == 300  # one full-batch step per epoch


def test_masked_slots_have_no_influence(round_batch):
  x, _, _, failure_mask = round_batch
  fit = _fitter(failure_init="proposal", **CONVERGE)
  key = jax.random.key(5)
  ref, ref_metrics = fit(PRIOR, jnp.asarray(x), jnp.asarray(failure_mask), key)
  # overwrite every masked slot (successes and unscored slots) with other bins
  x2 = x.copy()
  rng = np.random.default_rng(0)
  x2[~failure_mask] = rng.integers(0, K, size=(~failure_mask).sum())
  assert np.any(x2 != x)
  out, out_metrics = fit(PRIOR, jnp.asarray(x2), jnp.asarray(failure_mask), key)
  np.testing.assert_array_equal(out.params["logits"], ref.params["logits"])
  jax.tree.map(np.testing.assert_array_equal, out.opt_state, ref.opt_state)
  assert float(out_metrics["failure_nll"]) == float(ref_metrics["failure_nll"])
  # ... while changing a failure slot does change the fit (the test can fail)
  x3 = x.copy()
  i = np.flatnonzero(failure_mask)[0]
  x3[i] = (x3[i] + 5) % K
  changed, _ = fit(PRIOR, jnp.asarray(x3), jnp.asarray(failure_mask), key)
  assert not np.array_equal(changed.params["logits"], ref.params["logits"])


@pytest.mark.parametrize("init", ["scratch", "proposal"])
def test_failure_fit_starts_where_claimed(round_batch, init):
  """With no failures no step is taken, so the result is the starting point."""
  x, _, _, _ = round_batch
  fit = _fitter(failure_init=init, **CONVERGE)
  none = jnp.zeros(M, bool)
  other = {"logits": PRIOR["logits"][::-1] * 2.0}
  for proposal in (PRIOR, other):
    state, metrics = fit(proposal, jnp.asarray(x), none, jax.random.key(1))
    expected = proposal["logits"] if init == "proposal" else jnp.zeros(K)  # uniform init
    np.testing.assert_array_equal(state.params["logits"], expected)
    assert int(state.step) == 0 and int(metrics["n_failures"]) == 0


# --- distillation -------------------------------------------------------------------

DISTILL = dict(distill_samples=8192, distill_batch_size=1024, distill_epochs=30)


@functools.lru_cache(maxsize=None)
def _distiller(reset):
  return jax.jit(make_distiller(MODEL, BanelConfig.paper(distill_reset=reset, **DISTILL)))


_TX = optax.adam(0.1)


def _proposal_state(params):
  # The distiller trains with the state's own optimizer. ``tx`` is a static field:
  # reusing one object keeps the jit cache warm across tests.
  return train_state.TrainState.create(apply_fn=MODEL.log_prob, params=params, tx=_TX)


@pytest.fixture(scope="module")
def central_bank():
  """A region rejecting exactly the three central bins 4, 5, 6 (~64% of p0)."""
  # p_phi / p0 is ~1.5 on the central bins and ~0.08 elsewhere; f = 1.25
  bump = jnp.where(jnp.abs(XS - 5) <= 1, 3.0, 0.0)
  bank = add_region(empty_region_bank(PRIOR, 2), PRIOR,
                    {"logits": PRIOR["logits"] + bump}, -jnp.log(1.25))
  mask = np.asarray(rejection_mask(MODEL, bank, XS))
  np.testing.assert_array_equal(np.flatnonzero(mask), [4, 5, 6])
  return bank, mask


def test_distilled_proposal_leaves_rejected_bins(central_bank):
  bank, mask = central_bank
  distill = _distiller(False)
  state, metrics = distill(_proposal_state(PRIOR), PRIOR, bank, jax.random.key(0))
  p = _probs(state.params)
  prior = _probs(PRIOR)
  assert p[mask].sum() < 0.01, p
  target = np.where(mask, 0.0, prior) / prior[~mask].sum()  # p0 restricted to ~R
  np.testing.assert_allclose(p, target, atol=0.03)
  assert float(metrics["distill_accept_rate"]) == pytest.approx(prior[~mask].sum(),
                                                                abs=0.03)


def test_distill_reset_starts_from_prior():
  """A region covering everything zero-weights every sample: no step is made,
  so the result is the starting point — the prior's params with reset."""
  everything = add_region(empty_region_bank(PRIOR, 2), PRIOR, PRIOR, jnp.inf)
  current = {"logits": PRIOR["logits"] * 0.3 + 1.0}
  for reset, expected in ((True, PRIOR), (False, current)):
    state, metrics = _distiller(reset)(_proposal_state(current), PRIOR, everything,
                                       jax.random.key(0))
    np.testing.assert_array_equal(state.params["logits"], expected["logits"])
    assert float(metrics["distill_accept_rate"]) == 0.0


def test_prior_share_pulls_a_collapsed_proposal_back_onto_the_prior(central_bank):
  """A proposal collapsed onto one bin distils to itself; with a share of the
  distillation samples drawn from the prior, the accepted prior samples put
  mass back on every bin outside the regions, none inside."""
  bank, mask = central_bank
  collapsed = {"logits": jnp.where(XS == 0, 8.0, -8.0)}
  out = {}
  for share in (0.0, 0.5):
    distill = jax.jit(make_distiller(MODEL, BanelConfig.paper(
        distill_prior_share=share, **DISTILL)))
    state, _ = distill(_proposal_state(collapsed), PRIOR, bank, jax.random.key(0))
    out[share] = _probs(state.params)
  rest = ~mask & (np.arange(len(mask)) != 0)  # allowed bins but the collapsed one
  assert out[0.0][0] > 0.99 and out[0.0][rest].max() < 1e-4
  assert out[0.5][rest].min() > 1e-3 and out[0.5][0] < 0.9
  assert out[0.5][mask].sum() < 0.01


def test_prior_share_must_be_a_fraction():
  for bad in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="distill_prior_share"):
      BanelConfig(distill_prior_share=bad)


def test_support_keeps_distillation_off_known_zero_samples(central_bank):
  """A free support check (here: bins 0-2 can never score), passed as an
  ``accept`` hook, is rejection the distiller applies on top of the regions:
  the fit is the proposal restricted to ~R and the support, even from a
  proposal that drifted onto bins 0-2."""
  bank, mask = central_bank
  outside_support = XS <= 2
  support = lambda x: x > 2  # noqa: E731
  drifted = {"logits": PRIOR["logits"].at[:3].add(3.0)}
  cfg = BanelConfig.paper(distill_reset=False, **DISTILL)
  distill = jax.jit(functools.partial(make_distiller(MODEL, cfg),
                                      accept=(("support", support),)))
  state, metrics = distill(_proposal_state(drifted), PRIOR, bank, jax.random.key(0))
  assert float(metrics["distill_support_reject_rate"]) == pytest.approx(
      _probs(drifted)[:3].sum(), abs=0.03)
  keep = ~mask & ~np.asarray(outside_support)
  q = _probs(drifted)
  np.testing.assert_allclose(_probs(state.params), np.where(keep, q, 0) / q[keep].sum(),
                             atol=0.03)
  assert float(metrics["distill_accept_rate"]) == pytest.approx(q[keep].sum(),
                                                                abs=0.03)
  # without it, the drifted bins keep most of the mass
  state, _ = _distiller(False)(_proposal_state(drifted), PRIOR, bank,
                               jax.random.key(0))
  assert _probs(state.params)[:3].sum() > 0.3


def test_effective_sample_size():
  assert float(effective_sample_size(jnp.asarray([1.0, 1.0, 0.0, 1.0]))) == 3.0
  assert float(effective_sample_size(jnp.zeros(3))) == 0.0


# --- weighted MLE -------------------------------------------------------------------

_fit = jax.jit(functools.partial(fit_weighted_mle, epochs=300, batch_size=32))
_X64 = jnp.asarray(np.arange(64) % K, jnp.int32)


def test_all_zero_weights_leave_state_unchanged():
  state = _proposal_state({"logits": PRIOR["logits"] + 0.5})
  new, losses = _fit(state, _X64, jnp.zeros(64), jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, new.opt_state, state.opt_state)
  assert int(new.step) == 0
  assert losses.shape == (300, 2)
  np.testing.assert_array_equal(losses, 0.0)
  # a single non-zero weight is enough to move it (the test can fail)
  moved, _ = _fit(state, _X64, jnp.zeros(64).at[3].set(1.0), jax.random.key(1))
  assert int(moved.step) > 0
  assert not np.array_equal(moved.params["logits"], state.params["logits"])


def test_weighted_mle_matches_weighted_frequencies():
  x = _X64
  w = jnp.asarray(np.random.default_rng(0).choice([0.0, 0.5, 1.0, 3.0], 64), jnp.float32)
  state = _proposal_state({"logits": jnp.zeros(K)})
  new, losses = _fit(state, x, w, jax.random.key(0))
  target = np.bincount(np.asarray(x), weights=np.asarray(w), minlength=K)
  target /= target.sum()
  np.testing.assert_allclose(_probs(new.params), target, atol=0.02)
  assert float(losses[-1].mean()) < float(losses[0].mean())


def test_weighted_mle_rejects_bad_batch_size():
  state = _proposal_state(PRIOR)
  with pytest.raises(ValueError, match="batch_size"):
    fit_weighted_mle(state, XS, jnp.ones(K), jax.random.key(0), epochs=1,
                     batch_size=K + 1)


def test_packed_epochs_step_once_per_full_batch_of_positive_weights():
  """10 positive weights among 64 samples, batches of 4: packed, every epoch makes
  ceil(10 / 4) = 3 steps; unpacked, each of the 16 minibatches that holds any
  positive weight steps, on 1-2 samples each."""
  state = _proposal_state({"logits": PRIOR["logits"] + 0.5})
  w = jnp.zeros(64).at[jnp.arange(0, 60, 6)].set(1.0)
  x = _X64
  epochs = 5
  packed, losses = fit_weighted_mle(state, x, w, jax.random.key(0), epochs=epochs,
                                    batch_size=4, pack=True)
  assert int(packed.step) == epochs * 3
  assert losses.shape == (epochs, 16)
  np.testing.assert_array_equal(losses[:, 3:], 0.0)  # the empty tail never steps
  plain, _ = fit_weighted_mle(state, x, w, jax.random.key(0), epochs=epochs,
                              batch_size=4)
  assert int(plain.step) > epochs * 3
  # packing changes how the weighted samples are batched, not what is fitted: on
  # a model that converges, both reach the weighted frequencies
  fit = functools.partial(fit_weighted_mle, epochs=300, batch_size=4)
  target = np.bincount(np.asarray(x), weights=np.asarray(w), minlength=K) / 10
  for pack in (True, False):
    new, _ = jax.jit(functools.partial(fit, pack=pack))(
        _proposal_state({"logits": jnp.zeros(K)}), x, w, jax.random.key(1))
    np.testing.assert_allclose(_probs(new.params), target, atol=0.03)


def test_microbatched_steps_match_one_pass():
  """Accumulating each step's gradient over microbatches fits the same model (a
  -inf log-prob under weight 0 included), and a size that does not divide the
  batch is refused."""
  x = _X64
  w = jnp.asarray(np.random.default_rng(1).choice([0.0, 0.5, 2.0], 64), jnp.float32)
  # an impossible sample (-inf under a table with a -inf logit) at weight 0
  state = _proposal_state({"logits": jnp.zeros(K).at[K - 1].set(-jnp.inf)})
  w = jnp.where(x == K - 1, 0.0, w)  # the impossible samples, all at weight 0
  fit = functools.partial(fit_weighted_mle, epochs=3, batch_size=32)
  one, one_losses = jax.jit(fit)(state, x, w, jax.random.key(2))
  micro, micro_losses = jax.jit(functools.partial(fit, microbatch_size=8))(
      state, x, w, jax.random.key(2))
  assert np.all(np.isfinite(micro_losses))
  np.testing.assert_allclose(micro_losses, one_losses, rtol=1e-5)
  np.testing.assert_allclose(micro.params["logits"][:-1], one.params["logits"][:-1],
                             rtol=1e-5, atol=1e-6)
  assert int(micro.step) == int(one.step) == 6
  for bad in (5, 0, True):
    with pytest.raises(ValueError, match="microbatch_size"):
      fit_weighted_mle(state, x, w, jax.random.key(0), epochs=1, batch_size=32,
                       microbatch_size=bad)


def test_microbatch_size_for():
  from banel_jax.core.mle import microbatch_size_for
  assert microbatch_size_for(256, 32) == 32
  assert microbatch_size_for(100, 32) == 25
  assert microbatch_size_for(97, 32) == 1  # a prime batch: one sample at a time
  assert microbatch_size_for(100, 0) is None
  assert microbatch_size_for(32, 32) is None


def test_config_microbatch_fits_the_same_failure_model(round_batch):
  """BanelConfig.train_microbatch reaches the failure fitter: same fit, and the
  fitter's program holds one more loop (the microbatches')."""
  x, _, _, failure_mask = round_batch
  key = jax.random.key(5)
  one = make_failure_fitter(MODEL, BanelConfig.paper(samples_per_round=M, failure_epochs=3,
                                               failure_batch_size=M))
  micro = make_failure_fitter(MODEL, BanelConfig.paper(
      samples_per_round=M, failure_epochs=3, failure_batch_size=M, train_microbatch=30))
  args = (PRIOR, jnp.asarray(x), jnp.asarray(failure_mask), key)
  (s1, _), (s2, _) = one(*args), micro(*args)
  np.testing.assert_allclose(s2.params["logits"], s1.params["logits"], rtol=1e-5,
                             atol=1e-6)
  # 100 samples, microbatches of at most 30: 25 each, 4 iterations of a loop
  loops = lambda fit: jax.jit(fit).lower(*args).as_text().count("stablehlo.while")
  assert loops(micro) == loops(one) + 1


def test_split_log_prob_prepares_once_with_the_same_gradient():
  """A SplitLogProb's ``prepare`` runs once per microbatched step (traced outside
  the microbatch loop), and the gradient through it equals the unsplit one,
  for a parameter that reaches the loss only through ``prepare``."""
  from banel_jax.core.mle import weighted_nll_and_grad
  from banel_jax.core.types import SplitLogProb
  calls = []

  def prepare(p, x):
    calls.append(x.shape)
    return jax.nn.log_softmax(p["logits"] * p["temperature"])

  split = SplitLogProb(prepare=prepare, apply=lambda p, table, x: table[x])
  params = {"logits": jnp.linspace(-1.0, 1.0, K), "temperature": jnp.float32(1.5)}
  x, w = _X64, jnp.linspace(0.0, 2.0, 64)
  loss, grads = jax.jit(functools.partial(weighted_nll_and_grad, split,
                                          microbatch_size=8))(params, x, w)
  # Traced twice (the check for None, then the pullback), on the whole batch:
  # never on a microbatch of 8.
  assert calls == [(64,), (64,)]
  unsplit = lambda p, xs: jax.nn.log_softmax(p["logits"] * p["temperature"])[xs]
  want_loss, want = weighted_nll_and_grad(unsplit, params, x, w)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert abs(float(want["temperature"])) > 1e-3  # the path that is tested
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads, want)
  # Calling the object is the plain log_prob; a None from prepare means no split.
  np.testing.assert_allclose(split(params, x), unsplit(params, x), rtol=1e-6)
  plain = SplitLogProb(prepare=lambda p, x: None,
                       apply=lambda p, _, xs: unsplit(p, xs))
  np.testing.assert_allclose(
      weighted_nll_and_grad(plain, params, x, w, microbatch_size=8)[1]["temperature"],
      want["temperature"], rtol=1e-5)


def test_transformer_microbatches_share_the_input_tables():
  """The Transformer's log_prob is split: a microbatched gradient computes the
  input tables once and equals the one-pass gradient."""
  from banel_jax.core.mle import weighted_nll_and_grad
  from banel_jax.models import transformer as tfm
  from banel_jax.core.types import SplitLogProb
  cfg = tfm.TransformerConfig(vocab_size=6, max_len=4, width=16, num_heads=2,
                              num_layers=1, mlp_ratio=2, bos_id=5, eos_id=4, pad_id=3)
  tr = tfm.make_transformer(cfg)  # "auto": tables of 30 rows
  assert isinstance(tr.model.log_prob, SplitLogProb)
  params = tr.model.init(jax.random.key(0))
  x = tr.model.sample(params, jax.random.key(1), 12)
  w = jnp.linspace(0.1, 1.0, 12)
  assert tr.model.log_prob.prepare(params, x) is not None
  assert tr.model.log_prob.prepare(params, x[:2]) is None  # 8 tokens < 30 rows
  one_loss, one = weighted_nll_and_grad(tr.model.log_prob, params, x, w)
  loss, micro = jax.jit(functools.partial(
      weighted_nll_and_grad, tr.model.log_prob, microbatch_size=2))(params, x, w)
  np.testing.assert_allclose(loss, one_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               micro, one)
  # Only the embeddings and the first block's LayerNorm and projections get a
  # gradient through the tables: they must be non-zero here.
  assert float(jnp.abs(micro["embed"]["embedding"]).sum()) > 0
  assert float(jnp.abs(micro["block_0"]["qkv"]["kernel"]).sum()) > 0
