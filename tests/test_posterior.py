"""Tests of banel_jax.core.posterior against exact computation on tabular models.

Every region test enumerates all ``K`` categories and compares with a float64
numpy evaluation of ``R = U_t {x : log p_theta_t(x) - log Z_t - log p_phi_t(x) <
log tau_t}`` computed from the logits stored in the bank.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from banel_jax import (AcceptanceRateError, BanelConfig, BanelRunner, PosteriorSampleInfo, add_region, calibrate_log_tau,
                       check_acceptance, empty_region_bank,
                       log_posterior_unnormalized, log_ratio,
                       log_tau_from_filter_factor, region_log_ratios, rejection_mask,
                       sample_posterior_by_rejection)
from banel_jax.models.tabular import make_tabular_model
from banel_jax.tasks.toy1d import Toy1DTask

K = 21
TASK = Toy1DTask(num_bins=K)
MODEL = TASK.model()
PRIOR = TASK.prior_params()
XS = jnp.arange(K, dtype=jnp.int32)  # every category once


def _lsm(logits):
  logits = np.asarray(logits, np.float64)
  return logits - special.logsumexp(logits)


def _np_regions(regions):
  """``bool[len(regions), K]`` membership of each region, and the margins."""
  inside, margins = [], []
  for prop, fail, log_tau, log_norm in regions:
    lr = _lsm(prop) - log_norm - _lsm(fail)
    inside.append(lr < log_tau)
    margins.append(np.abs(lr - log_tau))
  return np.array(inside), np.array(margins)


_add = jax.jit(add_region)


CAP = 5  # one bank capacity for all K-bin tests: one compile of each helper


def _bank(regions, capacity=CAP, like=PRIOR):
  """A bank holding ``regions`` in its first slots; the other slots stay empty."""
  bank = empty_region_bank(like, capacity)
  for prop, fail, log_tau, log_norm in regions:
    bank = _add(bank, {"logits": jnp.asarray(prop, jnp.float32)},
                {"logits": jnp.asarray(fail, jnp.float32)}, log_tau, log_norm)
  return bank


_mask = jax.jit(functools.partial(rejection_mask, MODEL))
_post = jax.jit(functools.partial(log_posterior_unnormalized, MODEL))
_sample = jax.jit(functools.partial(sample_posterior_by_rejection, MODEL),
                  static_argnames=("n", "batch_size", "max_batches"))


def _random_regions(seed, n, f_values=(1.5, 2.0, 4.0), log_norms=None):
  rng = np.random.default_rng(seed)
  prior = np.asarray(PRIOR["logits"], np.float64)
  regions = []
  for t in range(n):
    prop = prior + 0.5 * rng.normal(size=K)
    fail = prior + 1.5 * rng.normal(size=K)
    log_tau = float(-np.log(f_values[t % len(f_values)]))
    log_norm = 0.0 if log_norms is None else log_norms[t]
    regions.append((prop, fail, log_tau, log_norm))
  return regions


@pytest.fixture(scope="module")
def three_regions():
  regions = _random_regions(0, 3, log_norms=[0.0, np.log(0.7), 0.0])
  inside, margins = _np_regions(regions)
  # float32 and float64 must agree on every decision: keep away from ties.
  assert margins.min() > 1e-4
  union = inside.any(0)
  assert 0 < union.sum() < K - 3  # a non-trivial region, several bins left
  assert all(0 < r.sum() for r in inside)
  return regions, inside, _bank(regions)


def _stored_regions(bank):
  """The (proposal, failure, log tau, log norm) of every valid slot of ``bank``."""
  return [(np.asarray(bank.proposal_params["logits"][t]),
           np.asarray(bank.failure_params["logits"][t]),
           float(bank.log_tau[t]), float(bank.log_norm[t]))
          for t in np.flatnonzero(np.asarray(bank.valid))]


def test_rejection_mask_equals_exact_union(three_regions):
  regions, inside, bank = three_regions
  np.testing.assert_array_equal(np.asarray(_mask(bank, XS)), inside.any(0))
  # the same from what the bank stored
  stored = _stored_regions(bank)
  assert len(stored) == 3 and int(bank.size) == 3
  np.testing.assert_array_equal(np.asarray(_mask(bank, XS)),
                                _np_regions(stored)[0].any(0))
  # per-slot log-ratios match the float64 formula, including log_norm
  lr = np.asarray(region_log_ratios(MODEL, bank, XS))
  for t, (prop, fail, _, log_norm) in enumerate(regions):
    np.testing.assert_allclose(lr[t], _lsm(prop) - log_norm - _lsm(fail), atol=2e-5)


def test_posterior_is_renormalised_masked_prior(three_regions):
  _, inside, bank = three_regions
  log_post = np.asarray(_post(PRIOR, bank, XS), np.float64)
  union = inside.any(0)
  assert np.all(np.isneginf(log_post[union]))
  prior = np.exp(_lsm(PRIOR["logits"]))
  expected = np.where(union, 0.0, prior)
  expected /= expected.sum()
  got = np.exp(log_post - special.logsumexp(log_post))
  np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-5)
  # outside the regions the unnormalised log-density is the prior's own
  np.testing.assert_allclose(log_post[~union], _lsm(PRIOR["logits"])[~union],
                             atol=1e-5)


def test_rejection_samples_follow_posterior(three_regions):
  _, inside, bank = three_regions
  union = inside.any(0)
  n = 20_000
  x, info = _sample(PRIOR, bank, jax.random.key(42), n=n, batch_size=4096,
                    max_batches=64)
  x = np.asarray(x)
  assert int(info.n_filled) == n
  assert not np.any(union[x]), "a sample lies inside a rejection region"
  counts = np.bincount(x, minlength=K)
  prior = np.exp(_lsm(PRIOR["logits"]))
  z = prior[~union].sum()
  post = np.where(union, 0.0, prior) / z
  assert (post[~union] * n).min() > 5  # chi-square validity
  chi = stats.chisquare(counts[~union], post[~union] * n)
  assert chi.pvalue > 1e-3, chi
  # the acceptance rate estimates Z, the posterior's normaliser
  rate = float(info.acceptance_rate)
  drawn = int(info.n_drawn)
  assert drawn >= n and drawn % 4096 == 0
  assert abs(rate - z) < 5 * np.sqrt(z * (1 - z) / drawn)


def test_rejection_samples_respect_a_support_check(three_regions):
  """``support`` restricts the exact posterior further: no sample outside it,
  and the acceptance rate estimates the mass of p0 on ~R and the support."""
  _, inside, bank = three_regions
  keep = ~inside.any(0) & (np.arange(K) % 2 == 0)
  sample = jax.jit(functools.partial(sample_posterior_by_rejection, MODEL,
                                     support=lambda x: x % 2 == 0),
                   static_argnames=("n", "batch_size", "max_batches"))
  n = 5000
  x, info = sample(PRIOR, bank, jax.random.key(7), n=n, batch_size=4096,
                   max_batches=64)
  x = np.asarray(x)
  assert int(info.n_filled) == n
  assert np.all(keep[x])
  z = np.exp(_lsm(PRIOR["logits"]))[keep].sum()
  drawn = int(info.n_drawn)
  assert abs(float(info.acceptance_rate) - z) < 5 * np.sqrt(z * (1 - z) / drawn)


def test_rejection_sampler_stops_short_when_batches_run_out():
  # a region rejecting every bin but one of mass ~1e-3 under the prior
  prior = np.exp(_lsm(PRIOR["logits"]))
  keep = 0  # the edge bin x = -3
  # log-ratio ~0 on the other bins, ~+20 on `keep`; log tau = 5 splits them
  fail = np.asarray(PRIOR["logits"]) + np.where(np.arange(K) == keep, -10.0, 10.0)
  bank = _bank([(PRIOR["logits"], fail, 5.0, 0.0)])
  assert np.asarray(_mask(bank, XS)).sum() == K - 1
  x, info = _sample(PRIOR, bank, jax.random.key(0), n=500, batch_size=256,
                    max_batches=4)
  assert int(info.n_drawn) == 1024
  assert int(info.n_filled) == int(info.n_accepted) < 500
  assert np.all(np.asarray(x)[: int(info.n_filled)] == keep)
  assert int(info.n_accepted) < 10 * prior[keep] * 1024 + 10


def test_union_rejects_what_any_region_rejects():
  regions = _random_regions(1, 4, f_values=(1.2, 3.0))
  singles = [np.asarray(_mask(_bank([r]), XS)) for r in regions]
  for s, exact in zip(singles, _np_regions(regions)[0]):
    np.testing.assert_array_equal(s, exact)
  # adding a region never un-rejects: masks grow monotonically
  bank = empty_region_bank(PRIOR, CAP)
  prev = np.zeros(K, bool)
  growth = []
  for t, (prop, fail, log_tau, log_norm) in enumerate(regions):
    bank = _add(bank, {"logits": jnp.asarray(prop, jnp.float32)},
                {"logits": jnp.asarray(fail, jnp.float32)}, log_tau, log_norm)
    cur = np.asarray(_mask(bank, XS))
    assert np.all(cur >= prev), f"region {t} un-rejected {np.flatnonzero(prev & ~cur)}"
    np.testing.assert_array_equal(cur, np.any(singles[: t + 1], axis=0))
    growth.append(cur.sum() - prev.sum())
    prev = cur
  assert sum(growth) > max(s.sum() for s in singles)  # the union is strictly larger
  assert int(bank.size) == len(regions)


def test_inactive_add_and_empty_slots_are_ignored():
  (region,) = _random_regions(2, 1)
  bank = _bank([region])  # four empty slots with zero params
  expected = _np_regions([region])[0][0]
  np.testing.assert_array_equal(np.asarray(_mask(bank, XS)), expected)
  # an empty slot whose log tau would make it reject everything (log-ratio 0 < 1)
  # is ignored because it is not valid
  armed = bank.replace(log_tau=bank.log_tau.at[3].set(1.0))
  np.testing.assert_array_equal(np.asarray(_mask(armed, XS)), expected)
  assert np.asarray(_mask(armed.replace(valid=armed.valid.at[3].set(True)), XS)).all()
  # an inactive add is a no-op, even for a region that would reject bins
  noop = _add(bank, PRIOR, {"logits": jnp.zeros(K)}, 1.0, 0.0, False)
  assert int(noop.size) == 1
  np.testing.assert_array_equal(np.asarray(_mask(noop, XS)), np.asarray(_mask(bank, XS)))
  grown = _add(bank, PRIOR, PRIOR, 1.0, 0.0, True)  # log-ratio 0 < 1: rejects all
  assert int(grown.size) == 2 and np.asarray(_mask(grown, XS)).all()


def test_empty_bank_rejects_nothing():
  bank = empty_region_bank(PRIOR, CAP)
  assert not np.asarray(_mask(bank, XS)).any()
  np.testing.assert_allclose(np.asarray(_post(PRIOR, bank, XS)),
                             _lsm(PRIOR["logits"]), atol=1e-5)


# --- the meaning of the filter factor f -------------------------------------------

M4 = make_tabular_model(4)
X4 = jnp.arange(4, dtype=jnp.int32)
_mask4 = jax.jit(functools.partial(rejection_mask, M4))


@pytest.mark.parametrize("f", [1.032, 2.0, 16.0])
@pytest.mark.parametrize("side,expected", [(1 + 1e-3, True), (1 - 1e-3, False)])
def test_filter_factor_boundary(f, side, expected):
  """Rejected iff p_phi(x) > f * p_theta(x); both sides of the boundary."""
  theta = np.log(np.array([0.04, 0.32, 0.32, 0.32]))
  q0 = side * f * 0.04  # p_phi(0) just above / below f * p_theta(0)
  rest = (1 - q0) / 3
  phi = np.log(np.array([q0, rest, rest, rest]))
  assert rest < 0.32  # bins 1..3 are less likely under phi: never rejected
  bank = empty_region_bank({"logits": jnp.zeros(4)}, 1)
  bank = _add(bank, {"logits": jnp.asarray(theta, jnp.float32)},
              {"logits": jnp.asarray(phi, jnp.float32)}, log_tau_from_filter_factor(f))
  mask = np.asarray(_mask4(bank, X4))
  np.testing.assert_array_equal(mask, [expected, False, False, False])


def test_filter_factor_equality_is_not_rejected():
  """The test is strict: log p_theta - log p_phi < log tau. With f = 1 and a
  failure model equal to the proposal (log-ratio exactly 0) nothing is rejected;
  the smallest normal float above log tau = 0 rejects everything."""
  logits = jnp.asarray([0.3, -1.0, 2.0, 0.0], jnp.float32)
  assert float(log_tau_from_filter_factor(1.0)) == 0.0
  lr = log_ratio(M4, {"logits": logits}, {"logits": logits}, X4)
  np.testing.assert_array_equal(np.asarray(lr), 0.0)
  bank = empty_region_bank({"logits": logits}, 2)
  at = _add(bank, {"logits": logits}, {"logits": logits},
            log_tau_from_filter_factor(1.0))
  assert not np.asarray(_mask4(at, X4)).any()
  above = _add(bank, {"logits": logits}, {"logits": logits},
               np.finfo(np.float32).tiny)  # (XLA flushes denormals)
  assert np.asarray(_mask4(above, X4)).all()


def test_log_tau_from_filter_factor():
  np.testing.assert_allclose(float(log_tau_from_filter_factor(16.0)), -np.log(16.0),
                             rtol=1e-6)
  assert float(log_tau_from_filter_factor(1.0)) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_minus_inf_accepts_all(seed):
  rng = np.random.default_rng(seed)
  # extreme logits, including a failure model far more likely everywhere it can be
  regions = [(rng.normal(size=K) * 10, rng.normal(size=K) * 30, -np.inf, 0.0)
             for _ in range(3)]
  bank = _bank(regions)
  assert not np.asarray(_mask(bank, XS)).any()
  # and a finite log tau on the same regions does reject something
  finite = _bank([(p, f, 0.0, n) for p, f, _, n in regions])
  assert np.asarray(_mask(finite, XS)).any()


@jax.jit
def _accept_mass(prop, fail, log_taus):
  """Exact prior mass outside the region, for each threshold of ``log_taus``."""
  def one(log_tau):
    bank = add_region(empty_region_bank(PRIOR, 1), {"logits": prop}, {"logits": fail},
                      log_tau)
    p0 = jnp.exp(MODEL.log_prob(PRIOR, XS))
    return jnp.sum(jnp.where(rejection_mask(MODEL, bank, XS), 0.0, p0))
  return jax.vmap(one)(log_taus)  # the threshold as a traced, vmapped scalar


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_acceptance_falls_as_log_tau_rises(seed):
  (prop, fail, _, _), = _random_regions(10 + seed, 1)
  taus = np.concatenate([[-np.inf], np.linspace(-6, 6, 49), [np.inf]])
  mass = np.asarray(_accept_mass(jnp.asarray(prop, jnp.float32),
                                 jnp.asarray(fail, jnp.float32),
                                 jnp.asarray(taus, jnp.float32)))
  assert mass[0] == pytest.approx(1.0, abs=1e-6)  # -inf accepts all
  assert mass[-1] == 0.0  # +inf rejects every finite log-ratio
  assert np.all(np.diff(mass) <= 1e-7), mass
  assert len(np.unique(np.round(mass, 6))) > 5  # it really moves in between


K_CAL = 401  # many small categories: a nearly continuous log-ratio
M_CAL = make_tabular_model(K_CAL)


@jax.jit
def _calibrated(fraction):
  keys = jax.random.split(jax.random.key(7), 4)
  theta = {"logits": jax.random.normal(keys[0], (K_CAL,))}
  phi = {"logits": 1.5 * jax.random.normal(keys[1], (K_CAL,))}
  fresh = M_CAL.sample(theta, keys[2], 8192)
  log_tau = calibrate_log_tau(log_ratio(M_CAL, theta, phi, fresh), fraction)
  bank = add_region(empty_region_bank(theta, 1), theta, phi, log_tau)
  xs = jnp.arange(K_CAL, dtype=jnp.int32)
  p_theta = jnp.exp(M_CAL.log_prob(theta, xs))
  exact = jnp.sum(jnp.where(rejection_mask(M_CAL, bank, xs), p_theta, 0.0))
  new = M_CAL.sample(theta, keys[3], 8192)  # never seen by the calibration
  return p_theta.max(), exact, jnp.mean(rejection_mask(M_CAL, bank, new))


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.8])
def test_calibrated_tau_rejects_requested_fraction(fraction):
  p_max, exact, frac_new = map(float, _calibrated(fraction))
  assert p_max < 0.03
  assert abs(exact - fraction) < 0.03, exact  # exact mass under the proposal
  assert abs(frac_new - fraction) < 0.03, frac_new  # on fresh samples


def test_calibrated_tau_keeps_ties():
  lr = jnp.asarray([0.0] * 9 + [1.0], jnp.float32)
  log_tau = calibrate_log_tau(lr, 0.5)
  assert float(log_tau) == 0.0
  assert int(jnp.sum(lr < log_tau)) == 0  # ties at the quantile are not rejected
  lr = jnp.arange(10, dtype=jnp.float32)
  assert int(jnp.sum(lr < calibrate_log_tau(lr, 0.5))) == 5


def test_calibrated_tau_ignores_unfilled_slots():
  """A short rejection sample leaves zero-filled slots; they must not count."""
  lr = jnp.asarray([5.0, 6.0, 7.0, 8.0, 0.0, 0.0, 0.0, 0.0], jnp.float32)
  filled = jnp.arange(8) < 4
  assert float(calibrate_log_tau(lr, 0.5, valid=filled)) == 6.5
  assert float(calibrate_log_tau(lr, 0.5)) < 5.0  # what the zeros did before
  np.testing.assert_array_equal(calibrate_log_tau(lr, 0.5, valid=jnp.ones(8, bool)),
                                calibrate_log_tau(lr, 0.5))
  assert np.isnan(float(calibrate_log_tau(lr, 0.5, valid=jnp.zeros(8, bool))))


# --- acceptance floor ---------------------------------------------------------------

def _info(filled, drawn, accepted):
  return PosteriorSampleInfo(jnp.asarray(filled, jnp.int32),
                             jnp.asarray(drawn, jnp.int32),
                             jnp.asarray(accepted, jnp.int32))


def test_check_acceptance_raises_below_floor():
  with pytest.raises(AcceptanceRateError) as exc:
    check_acceptance(_info(3, 100_000, 3), 100, floor=1e-4)
  msg = str(exc.value)
  assert "3 of 100000" in msg and "min_acceptance_rate=0.0001" in msg
  assert "3e-05" in msg  # the measured rate
  # per-seed info: the failing seed is named
  with pytest.raises(AcceptanceRateError, match="seed index 1"):
    check_acceptance(_info([100, 2], [1000, 100_000], [500, 2]), 100, floor=1e-3)


def test_check_acceptance_raises_when_short_and_passes_otherwise():
  with pytest.raises(AcceptanceRateError, match="exact_max_batches"):
    check_acceptance(_info(40, 1000, 40), 100, floor=1e-4)  # rate fine, too few
  check_acceptance(_info([100, 100], [1000, 400], [500, 100]), 100, floor=0.2)
  with pytest.raises(AcceptanceRateError):
    check_acceptance(_info([100, 100], [1000, 400], [500, 100]), 100, floor=0.3)


def test_check_acceptance_on_a_real_collapsed_posterior():
  # log tau = +inf: every finite log-ratio is below it, the region covers all
  (prop, fail, _, _), = _random_regions(3, 1)
  bank = _bank([(prop, fail, np.inf, 0.0)])
  x, info = _sample(PRIOR, bank, jax.random.key(1), n=500, batch_size=256,
                    max_batches=4)
  assert int(info.n_accepted) == 0 and int(info.n_drawn) == 1024
  assert int(info.n_filled) == 0
  with pytest.raises(AcceptanceRateError, match="accepted 0 of 1024"):
    check_acceptance(info, 500, floor=1e-4)


@pytest.mark.parametrize("tau_mode,knob", [("calibrated", "calibrated_reject_fraction"),
                                            ("factor", "filter_factor")])
def test_distillation_floor_freezes_the_seed_and_names_the_knob(tau_mode, knob):
  """Distilled mode freezes a seed whose distillation accepts too little: its
  round is discarded (it keeps the pretrained generator), it spends no more,
  and the warning says which setting to lower for the tau mode in use."""
  cfg = BanelConfig(nre_budget=20, samples_per_round=10, tau_mode=tau_mode,
                    calibrated_reject_fraction=0.9, filter_factor=1.0,
                    failure_batch_size=10, failure_learning_rate=1.0,
                    distill_samples=64, distill_batch_size=32, n_eval=10,
                    min_acceptance_rate=0.95)
  runner = BanelRunner(MODEL, PRIOR, TASK.oracle, cfg, seeds=[0], progress=False)
  with pytest.warns(UserWarning, match=f"round 1: seed\\(s\\) 0 .*froze.*lower {knob}"):
    result = runner.run()
  assert result.frozen_at == [1] and result.nre_spent == [10]
  assert result.history[-1]["frozen"] == [True]
  np.testing.assert_array_equal(np.asarray(result.states.proposal.params["logits"])[0],
                                np.asarray(PRIOR["logits"]))
  assert int(np.asarray(result.states.round)[0]) == 1
  # the round's region is not kept: the bank is the empty one of round 0
  assert int(np.asarray(result.states.regions.size)[0]) == 0
  assert not np.asarray(result.states.regions.valid).any()


FREEZING = BanelConfig(nre_budget=40, samples_per_round=10, tau_mode="calibrated",
                       calibrated_reject_fraction=0.9, failure_batch_size=10,
                       failure_learning_rate=1.0, distill_samples=64,
                       distill_batch_size=32, n_eval=10, min_acceptance_rate=0.1)


def _quiet_run(runner):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return runner.run()


def test_a_frozen_seed_leaves_the_others_running_as_they_would_alone():
  """Seeds are independent runs side by side: one that freezes stops spending,
  and the others' rounds are those they run alone."""
  together = _quiet_run(BanelRunner(MODEL, PRIOR, TASK.oracle, FREEZING,
                                    seeds=[0, 1, 2], progress=False))
  assert together.frozen_at == [2, 1, 2]  # seed 1 first, then the others
  assert together.nre_spent == [20, 10, 20]  # a frozen seed's samples are not scored
  assert [h.get("frozen") for h in together.history] == [
      None, [False, True, False], [True, True, True]]
  alone = _quiet_run(BanelRunner(MODEL, PRIOR, TASK.oracle, FREEZING, seeds=[2],
                                 progress=False))
  assert alone.frozen_at == [2] and alone.nre_spent == [20]
  np.testing.assert_allclose(
      [h["success_rate"][2] for h in together.history],
      [h["success_rate"][0] for h in alone.history])
  np.testing.assert_allclose(np.asarray(together.states.proposal.params["logits"])[2],
                             np.asarray(alone.states.proposal.params["logits"])[0],
                             rtol=1e-5, atol=1e-6)


def test_a_frozen_seed_stays_frozen_when_the_run_resumes(tmp_path):
  runner = BanelRunner(MODEL, PRIOR, TASK.oracle, FREEZING, seeds=[0, 1, 2],
                       progress=False, run_dir=tmp_path)
  runner.evaluate_start()
  with pytest.warns(UserWarning, match="seed\\(s\\) 1 "):
    runner.step()
  runner.close()
  calls = []

  def oracle(x):
    calls.append(len(x))
    return TASK.oracle(x)

  resumed = BanelRunner(MODEL, PRIOR, oracle, FREEZING, seeds=[0, 1, 2],
                        progress=False, run_dir=tmp_path)
  assert resumed.frozen_at == [None, 1, None]
  result = _quiet_run(resumed)
  resumed.close()
  assert result.frozen_at == [2, 1, 2] and result.nre_spent == [20, 10, 20]
  assert calls[0] == 20  # round 2's paid call: the two live seeds' samples only


# --- log_norm: a region of a posterior proposal uses p0 / Z -------------------------

def test_log_norm_compares_the_posteriors_density():
  """Proposal = exploration posterior p0 * 1[x not in R0] / Z. A failure model that
  equals it exactly must reject nothing on its support at any f >= 1; forgetting
  log Z would reject the whole support once Z < 1 / f."""
  r0 = _random_regions(4, 1)
  inside0 = _np_regions(r0)[0][0]
  prior_lp = _lsm(PRIOR["logits"])
  z = np.exp(prior_lp[~inside0]).sum()
  assert 0.2 < z < 1 / 1.1
  phi = np.where(inside0, -40.0, prior_lp)  # p_phi = p0 / Z on the support
  region = (np.asarray(PRIOR["logits"]), phi, float(-np.log(1.1)), float(np.log(z)))
  bank = _bank(r0 + [region])
  mask = np.asarray(_mask(bank, XS))
  np.testing.assert_array_equal(mask, inside0)  # nothing new is rejected
  lr = np.asarray(region_log_ratios(MODEL, bank, XS))[1]
  np.testing.assert_allclose(lr[~inside0], 0.0, atol=1e-5)
  without = _bank(r0 + [region[:3] + (0.0,)])
  assert np.asarray(_mask(without, XS)).all()


@pytest.fixture(scope="module")
def exact_run():
  cfg = BanelConfig.paper(mode="exact", nre_budget=200, samples_per_round=100,
                          failure_batch_size=50, failure_epochs=20, filter_factor=1.1,
                          exact_batch_size=1024, exact_max_batches=16, n_eval=100,
                          eval_every=100, max_regions=CAP)
  runner = BanelRunner(MODEL, PRIOR, TASK.oracle, cfg, seeds=(0,), progress=False)
  return runner.run()


def test_exact_mode_stores_log_acceptance_as_log_norm(exact_run):
  res = exact_run
  regions = jax.tree.map(lambda a: np.asarray(a)[0], res.states.regions)
  assert int(regions.size) == 2
  rates = [h["proposal_acceptance_rate"][0] for h in res.history[1:]]
  assert rates[0] == 1.0 and regions.log_norm[0] == 0.0  # round 1: the prior itself
  assert 0.0 < rates[1] < 1.0
  np.testing.assert_allclose(regions.log_norm[1], np.log(rates[1]), rtol=1e-6)
  # the estimate of Z agrees with the exact posterior mass after region 0
  in0 = _stored_regions(regions)[:1]
  z = np.exp(_lsm(PRIOR["logits"]))[~_np_regions(in0)[0][0]].sum()
  assert abs(rates[1] - z) < 5 * np.sqrt(z * (1 - z) / 1024)
  # region 1 is exactly { x : log p0(x) - log Z - log p_phi(x) < log tau }
  stored = _stored_regions(regions)
  assert len(stored) == 2
  inside, margins = _np_regions(stored)
  np.testing.assert_allclose(stored[1][0], PRIOR["logits"])  # proposal = theta_0
  got = np.asarray(_mask(jax.tree.map(lambda a: a[0], res.states.regions), XS))
  clear = margins.min(0) > 1e-4  # bins far enough from a threshold to compare
  assert clear.sum() >= K - 2
  np.testing.assert_array_equal(got[clear], inside.any(0)[clear])
  assert inside[1].any()  # region 1 is not empty


def test_loop_strategy_equals_vmap_strategy():
  """Visiting only the filled slots in a loop gives the fused vmap's mask."""
  k = 9
  model = make_tabular_model(k)
  keys = jax.random.split(jax.random.key(42), 6)
  bank = empty_region_bank({"logits": jnp.zeros(k)}, capacity=5)
  for i in range(3):  # 3 of 5 slots filled
    bank = add_region(
        bank, {"logits": jax.random.normal(keys[2 * i], (k,))},
        {"logits": jax.random.normal(keys[2 * i + 1], (k,))}, log_tau=-0.1 * i)
  xs = jnp.arange(k, dtype=jnp.int32)
  fused = rejection_mask(model, bank, xs, "vmap")
  looped = jax.jit(lambda b, x: rejection_mask(model, b, x, "loop"))(bank, xs)
  np.testing.assert_array_equal(np.asarray(fused), np.asarray(looped))
  assert 0 < int(fused.sum()) < k  # a mask with both kinds of bins
  with pytest.raises(ValueError, match="strategy"):
    rejection_mask(model, bank, xs, "bogus")


def test_loop_strategy_skips_rejected_samples_and_keeps_the_mask():
  """Many samples (not a multiple of the blocks), many regions, seeds under vmap:
  the loop, which scores only the samples still outside, gives the vmap's mask."""
  k, n, seeds = 7, 101, 3
  model = make_tabular_model(k)

  def bank_of(key):
    keys = jax.random.split(key, 12)
    bank = empty_region_bank({"logits": jnp.zeros(k)}, capacity=8)
    for i in range(6):
      bank = add_region(
          bank, {"logits": jax.random.normal(keys[2 * i], (k,))},
          {"logits": jax.random.normal(keys[2 * i + 1], (k,))}, log_tau=-1.5)
    return bank

  banks = jax.vmap(bank_of)(jax.random.split(jax.random.key(7), seeds))
  xs = jax.random.randint(jax.random.key(8), (seeds, n), 0, k)
  fused = jax.vmap(lambda b, x: rejection_mask(model, b, x, "vmap"))(banks, xs)
  looped = jax.jit(jax.vmap(lambda b, x: rejection_mask(model, b, x, "loop")))(banks, xs)
  np.testing.assert_array_equal(np.asarray(fused), np.asarray(looped))
  share = float(np.mean(np.asarray(fused)))
  assert 0.2 < share < 1.0, share  # regions overlap, and some samples stay outside


def test_auto_strategy_loops_on_a_cpu_and_fuses_small_banks_elsewhere():
  """``"auto"`` loops on a CPU; on an accelerator it asks XLA how much
  temporary memory the fused call needs: a tabular bank fuses; the same call
  over a bank of transformer slots at a limit below its estimate loops, with
  the same mask either way."""
  from banel_jax.core.posterior import auto_region_strategy
  from banel_jax.models import transformer as tfm
  k = 7
  model = make_tabular_model(k)
  bank = empty_region_bank(model.init(jax.random.key(0)), 4)
  bank = add_region(bank, {"logits": jnp.zeros(k)}, {"logits": jnp.arange(k) * 1.0},
                    log_tau=0.0)
  xs = jnp.arange(k, dtype=jnp.int32)
  assert auto_region_strategy(model, bank, xs, backend="cpu") == "loop"
  assert auto_region_strategy(model, bank, xs, backend="gpu") == "vmap"
  np.testing.assert_array_equal(rejection_mask(model, bank, xs, "vmap"),
                                rejection_mask(model, bank, xs, "loop"))
  if jax.default_backend() == "cpu":
    assert auto_region_strategy(model, bank, xs) == "loop"
  t = tfm.make_transformer(tfm.TransformerConfig(max_len=6, num_layers=1, width=16,
                                                 num_heads=2, mlp_ratio=2))
  params = t.model.init(jax.random.key(0))
  tbank = add_region(empty_region_bank(params, 8), params,
                     t.model.init(jax.random.key(1)), log_tau=0.0)
  x = t.model.sample(params, jax.random.key(2), 256)
  assert auto_region_strategy(t.model, tbank, x, backend="gpu") == "vmap"  # small
  assert auto_region_strategy(t.model, tbank, x, limit_bytes=1024,
                              backend="gpu") == "loop"
