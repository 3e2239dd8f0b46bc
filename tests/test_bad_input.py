"""Bad input gets a clear error that names the problem.

Invalid config values; wrong shapes or dtypes into public functions; NaN or
infinite log-likelihoods; an empty set of failures; a run directory or ledger
written by another run; truncated or corrupt checkpoints (the run falls back to
the previous good step).
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resume_worker
from banel_jax import (BanelConfig, BanelRunner, ConfigError, NonFiniteError,
                       make_failure_fitter)
from banel_jax.core import posterior
from banel_jax.runtime.budget import BudgetKeeper, OraclePolicy
from banel_jax.runtime import ledger as ledger_lib
from banel_jax.runtime.ledger import Ledger, ReplayMismatchError, read_ledger
from banel_jax.runtime.run_dir import (CORRUPT_DIR, CheckpointWarning, RunDirError,
                               read_checkpoint)

TASK = resume_worker.TASK
MODEL = resume_worker.MODEL
PRIOR = TASK.prior_params()
CONFIG = BanelConfig(nre_budget=10, samples_per_round=4, failure_batch_size=2,
                     distill_samples=8, distill_batch_size=8, n_eval=3)
SEEDS = (0, 1)
STUB = resume_worker.make_stub_method(TASK.num_bins)


class CountingOracle:
  def __init__(self, oracle=TASK.oracle):
    self.oracle = oracle
    self.calls = 0

  def __call__(self, x):
    self.calls += 1
    return self.oracle(x)


def _runner(run_dir=None, oracle=None, config=CONFIG, seeds=SEEDS, method=STUB,
            **kw):
  return BanelRunner(MODEL, PRIOR, oracle or CountingOracle(), config, seeds,
                     progress=False, method=method, run_dir=run_dir, **kw)


def _run(run_dir, **kw):
  runner = _runner(run_dir, **kw)
  result = runner.run()
  runner.close()
  return result


def _strip(history):
  return [json.dumps({k: v for k, v in h.items() if k != "wall_time_s"}, sort_keys=True)
          for h in history]


# --- invalid config values ------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("samples_per_round", 0), ("nre_budget", -5), ("filter_factor", 0.5),
    ("mode", "approximate"), ("n_eval", 2.5), ("distill_reset", "yes")])
def test_invalid_config_names_the_field(field, value):
  with pytest.raises(ConfigError, match=f"BanelConfig.{field}="):
    BanelConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("max_attempts", 0), ("max_attempts", 1.5), ("timeout_s", 0.0),
    ("timeout_s", float("inf")), ("backoff_s", -1.0), ("backoff_factor", 0.5),
    ("max_backoff_s", float("nan"))])
def test_invalid_oracle_policy_names_the_field(field, value):
  with pytest.raises(ConfigError, match=f"OraclePolicy.{field}="):
    OraclePolicy(**{field: value})


@pytest.mark.parametrize("kwargs,match", [
    (dict(seeds=()), "at least one seed"),
    (dict(seeds=(0.5,)), "seeds must be integers"),
    (dict(keep_checkpoints=0), "keep_checkpoints must be an integer >= 1"),
    (dict(oracle_policy="retry"), "policy must be an OraclePolicy"),
])
def test_invalid_runner_arguments(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    _runner(**kwargs)


@pytest.mark.parametrize("args,match", [
    ((-1,), "budget must be an integer >= 0"), ((2.5,), "budget"),
    ((5, 0), "num_seeds must be an integer >= 1")])
def test_invalid_budget_keeper_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    BudgetKeeper(TASK.oracle, *args)


# --- wrong shapes or dtypes into public functions -------------------------------------

def test_rejection_mask_checks_sample_rank_and_dtype():
  bank = posterior.empty_region_bank(PRIOR, 2)
  assert not posterior.rejection_mask(MODEL, bank, jnp.arange(3, dtype=jnp.int32)).any()
  with pytest.raises(AssertionError, match="rank"):
    posterior.rejection_mask(MODEL, bank, jnp.zeros((3, 2), jnp.int32))
  with pytest.raises(AssertionError, match="type"):
    posterior.rejection_mask(MODEL, bank, jnp.zeros((3,), jnp.float32))


def test_tabular_log_prob_checks_rank_and_dtype():
  with pytest.raises(AssertionError, match="rank"):
    MODEL.log_prob(PRIOR, jnp.zeros((3, 1), jnp.int32))
  with pytest.raises(AssertionError, match="type"):
    MODEL.log_prob(PRIOR, jnp.zeros((3,), jnp.float32))


def test_budget_keeper_checks_samples():
  keeper = BudgetKeeper(TASK.oracle, 10, num_seeds=2)
  with pytest.raises(ValueError, match=r"num_seeds=2.*got \(3, 4\)"):
    keeper.evaluate(np.zeros((3, 4), np.int32))
  with pytest.raises(ValueError, match="dtype <U1"):
    keeper.evaluate(np.full((2, 4), "a"))
  with pytest.raises(ValueError, match="dtype object"):
    keeper.evaluate_free(np.array([None, 1], dtype=object))
  with pytest.raises(ValueError, match=r"non-empty batch.*shape \(\)"):
    keeper.evaluate_free(np.int32(3))
  with pytest.raises(ValueError, match=r"seed_index must be int\[4\]"):
    keeper.evaluate_free(np.zeros(4, np.int32), seed_index=np.zeros(3, np.int64))
  with pytest.raises(ValueError, match=r"seed_index must lie in \[0, 2\)"):
    keeper.evaluate_free(np.zeros(2, np.int32), seed_index=np.array([0, 2]))
  assert keeper.spent.tolist() == [0, 0] and keeper.oracle_calls == 0


def test_ledger_append_checks_its_input(tmp_path):
  with Ledger(str(tmp_path / "l.jsonl")) as ledger:
    with pytest.raises(ValueError, match="kind must be one of"):
      ledger.append("training", 0, [0], np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="3 queries but 2 seeds and 3 rewards"):
      ledger.append("eval", 0, [0, 0], np.zeros(3), np.zeros(3))
    assert ledger.num_calls == 0


def test_prior_params_of_the_wrong_structure():
  with pytest.raises(ValueError, match=r"\['logits'\] has shape \(5,\), model.init "
                     r"gives \(11,\)"):
    _runner_prior({"logits": jnp.zeros(5)})
  with pytest.raises(ValueError, match=r"\['bias'\] unexpected"):
    _runner_prior({"logits": PRIOR["logits"], "bias": jnp.zeros(())})


def _runner_prior(prior, model=MODEL):
  return BanelRunner(model, prior, TASK.oracle, CONFIG, SEEDS, progress=False,
                     method=STUB)


# --- NaN or infinite log-likelihoods --------------------------------------------------

def _model_with_log_prob(fn):
  return MODEL._replace(log_prob=lambda params, x: fn(MODEL.log_prob(params, x), x))


@pytest.mark.parametrize("fn,match", [
    (lambda lp, x: lp * jnp.nan, r"8 NaN and 0 infinite of 8"),
    (lambda lp, x: jnp.where(x >= 0, -jnp.inf, lp), r"0 NaN and 8 infinite"),
])
def test_non_finite_log_likelihood_is_named(fn, match):
  with pytest.raises(NonFiniteError, match=r"model.log_prob of the pretrained params "
                     r"is not finite.*" + match):
    _runner_prior(PRIOR, _model_with_log_prob(fn))


def test_non_finite_pretrained_params_are_named():
  bad = {"logits": PRIOR["logits"].at[3].set(jnp.nan)}
  with pytest.raises(NonFiniteError, match=r"NaN or infinite values in \['logits'\]"):
    _runner_prior(bad)


def test_log_prob_of_the_wrong_shape():
  model = _model_with_log_prob(lambda lp, x: lp[:, None])
  with pytest.raises(ValueError, match=r"log_prob returned shape \(8, 1\) for 8 "
                     r"samples; expected \(8,\)"):
    _runner_prior(PRIOR, model)


# --- an empty set of failures ---------------------------------------------------------

def test_rounds_without_failures_add_no_region(tmp_path):
  """Every sample succeeds: BaNEL has nothing to learn from and adds no region.

  A real BaNEL run of ``resume_worker.CONFIG``, in a run process that shares
  the compilation cache of ``test_resume.py``'s processes.
  """
  out = str(tmp_path / "out.json")
  p = resume_worker.context().Process(target=resume_worker.run_all_success,
                                      args=(out, resume_worker.cache_dir()))
  p.start()
  p.join(300)
  assert p.exitcode == 0
  with open(out) as f:
    res = json.load(f)
  cfg = resume_worker.CONFIG
  rounds = res["history"][1:]
  assert len(rounds) == cfg.num_rounds
  for h in rounds:
    assert h["n_failures"] == [0, 0] and h["n_regions"] == [0, 0]
    assert h["n_successes"] == h["n_evaluated"]
    assert h["distill_accept_rate"] == [1.0, 1.0]  # nothing is rejected
  assert not np.asarray(res["valid"]).any() and res["size"] == [0, 0]
  assert res["nre_spent"] == [cfg.nre_budget] * 2
  assert res["n_successes"] == 2 * cfg.nre_budget  # all reported


def test_failure_fitter_flags_an_empty_failure_set():
  fit = make_failure_fitter(MODEL, CONFIG)
  x = jnp.arange(4, dtype=jnp.int32)
  state, metrics = fit(PRIOR, x, jnp.zeros(4, bool), jax.random.key(0))
  assert int(metrics["n_failures"]) == 0  # the flag: nothing was fitted
  np.testing.assert_array_equal(state.params["logits"], PRIOR["logits"])
  assert np.isfinite(metrics["failure_nll"])


# --- a run directory or ledger of another run -----------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished stub run (3 rounds, checkpoints 1..3 kept) and its results."""
  d = str(tmp_path_factory.mktemp("finished") / "run")
  oracle = CountingOracle()
  result = _run(d, oracle=oracle)
  return {"dir": d, "result": result, "checkpoint": read_checkpoint(d),
          "ledger": read_ledger(os.path.join(d, "ledger.jsonl")),
          "oracle_calls": oracle.calls}


def _copy(finished, tmp_path):
  d = str(tmp_path / "run")
  shutil.copytree(finished["dir"], d)
  return d


@pytest.mark.parametrize("kwargs,match", [
    (dict(config=CONFIG.replace(samples_per_round=5)),
     r"config.samples_per_round: saved 4, now 5"),
    (dict(config=CONFIG.replace(n_eval=4, nre_budget=12)),
     r"config.n_eval: saved 3, now 4; config.nre_budget: saved 10, now 12"),
    (dict(seeds=(0, 2)), r"seeds: saved \[0, 1\], now \[0, 2\]"),
    (dict(method=None), r"method: saved 'stub', now 'BaNEL'"),
    (dict(extra_config={"task": {"num_bins": 11}}),
     r"extra.task.num_bins: absent in the saved run, now 11"),
])
def test_resuming_with_another_config_names_the_differing_fields(finished, tmp_path,
                                                                 kwargs, match):
  d = _copy(finished, tmp_path)
  with pytest.raises(RunDirError, match=r"config.json\) was written by a different "
                     r"run; differing fields: .*" + match):
    _runner(d, **kwargs)


def test_checkpoint_of_another_config_is_an_error_not_a_fallback(finished, tmp_path):
  """config.json edited to match the new settings: the checkpoints still differ."""
  d = _copy(finished, tmp_path)
  path = os.path.join(d, "config.json")
  with open(path) as f:
    record = json.load(f)
  record["config"]["n_eval"] = 4
  with open(path, "w") as f:
    json.dump(record, f)
  with pytest.raises(RunDirError, match=r"checkpoint step 3 of .* was written by a "
                     r"different run; differing fields: config.n_eval: saved 3, now 4"):
    _runner(d, config=CONFIG.replace(n_eval=4))


def test_policy_changes_do_not_block_resuming(finished, tmp_path):
  d = _copy(finished, tmp_path)
  runner = _runner(d, oracle_policy=OraclePolicy(max_attempts=7), keep_checkpoints=5)
  assert runner.done and runner.round == 3
  runner.close()


def test_not_a_run_directory(tmp_path):
  d = tmp_path / "run"
  d.mkdir()
  (d / "config.json").write_text("{not json")
  with pytest.raises(RunDirError, match="config.json is not valid JSON"):
    _runner(str(d))
  f = tmp_path / "file"
  f.write_text("")
  with pytest.raises(RunDirError, match="is not a directory"):
    _runner(str(f))


def test_run_directory_in_use_by_another_process(tmp_path):
  d = tmp_path / "run"
  d.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import fcntl, sys, time\n"
       "f = open(sys.argv[1], 'a+'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
       "f.write('4242'); f.flush(); print('locked', flush=True); time.sleep(60)",
       str(d / ".lock")], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunDirError, match=r"is in use by another process \(pid 4242\)"):
      _runner(str(d))
  finally:
    holder.kill()
    holder.wait()
  _runner(str(d)).close()  # free again once the other process is gone


def _crash_in_round(run_dir, k):
  """A stub run that dies after round ``k``'s oracle calls, before its checkpoint."""
  class Crash(BaseException):
    pass

  def on_round(runner, record):
    if record["round"] == k:
      raise Crash

  runner = _runner(run_dir, on_round=on_round)
  with pytest.raises(Crash):
    runner.run()
  runner.close()


def test_ledger_of_another_run_is_a_replay_mismatch(tmp_path):
  d = str(tmp_path / "run")
  _crash_in_round(d, 2)  # step 1 saved; round 2's two calls only in the ledger
  path = os.path.join(d, "ledger.jsonl")
  with open(path) as f:
    lines = f.read().splitlines(keepends=True)
  # change one query of round 2's training call in place (same length: the
  # checkpoint's byte offset into the ledger stays valid)
  i = next(j for j, line in enumerate(lines) if '"kind": "train", "round": 1' in line
           and json.loads(line)["query"][0] < 9)
  q = json.loads(lines[i])["query"][0]
  edited = lines[i].replace(f'"query": [{q}]', f'"query": [{q + 1}]')
  # sign the edited line as a ledger of another run would be signed
  lines[i] = ledger_lib._checked(edited[:edited.rindex(', "check"')].encode()).decode()
  with open(path, "w") as f:
    f.write("".join(lines))
  with pytest.raises(ReplayMismatchError, match=(
      r"replaying ledger call 3 \(train, round 1\) for the resumed run's train call "
      r"of round 1: 1 queries differ, first query \d of seed \d: \[\d+\] in the "
      r"ledger, \[\d+\] now")):
    _runner(d).run()


def test_ledger_cut_below_the_checkpoint_falls_back_to_a_covered_step(finished,
                                                                      tmp_path):
  """Half the ledger no longer reaches the newest checkpoints: the runner warns
  and resumes from the newest one it covers (with none covered, the error says
  how to recover: ``test_reliability.py``)."""
  d = _copy(finished, tmp_path)
  path = os.path.join(d, "ledger.jsonl")
  os.truncate(path, os.path.getsize(path) // 2)
  with pytest.warns(CheckpointWarning, match="cannot be resumed from"):
    runner = _runner(d)
  try:
    assert 0 < runner.round < runner.config.num_rounds
  finally:
    runner.close()


# --- truncated or corrupt checkpoints -------------------------------------------------

def _truncate_files(step_dir):
  for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True):
    if os.path.isfile(f):
      os.truncate(f, os.path.getsize(f) // 2)


def _garble_files(step_dir):
  for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
    if os.path.isfile(f):
      with open(f, "r+b") as fh:
        data = bytearray(fh.read())
        for i in range(0, len(data), 7):
          data[i] ^= 0xFF
        fh.seek(0)
        fh.write(bytes(data))


def _wrong_checksum(step_dir):
  path = os.path.join(step_dir, "host", "metadata")
  with open(path) as f:
    host = json.load(f)
  host["state_digest"] = "0" * 64
  with open(path, "w") as f:
    json.dump(host, f)


def _host_deleted(step_dir):
  shutil.rmtree(os.path.join(step_dir, "host"))


@pytest.mark.parametrize("damage", [_truncate_files, _garble_files, _wrong_checksum,
                                    _host_deleted])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_step(finished, tmp_path,
                                                                   damage):
  d = _copy(finished, tmp_path)
  damage(os.path.join(d, "checkpoints", "3"))
  oracle = CountingOracle()
  with pytest.warns(CheckpointWarning, match=r"checkpoint step 3 of .* is unreadable "
                    r"or corrupt .*falling back to the previous step"):
    runner = _runner(d, oracle=oracle)
  assert runner.round == 2
  assert os.path.isdir(os.path.join(d, CORRUPT_DIR, "3"))
  result = runner.run()
  runner.close()
  # round 3 was replayed from the ledger: the oracle was not asked anything
  assert oracle.calls == 0 and runner.keeper.replayed_calls == 2
  _assert_same(d, finished, result)


def test_every_checkpoint_corrupt_replays_the_whole_ledger(finished, tmp_path):
  d = _copy(finished, tmp_path)
  for step in ("1", "2", "3"):
    _truncate_files(os.path.join(d, "checkpoints", step))
  oracle = CountingOracle()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    runner = _runner(d, oracle=oracle)
  named = sorted(str(w.message).split(" of ")[0] for w in caught
                 if issubclass(w.category, CheckpointWarning))
  assert named == ["checkpoint step 1", "checkpoint step 2", "checkpoint step 3"]
  assert runner.round == 0 and runner.history == []
  result = runner.run()
  runner.close()
  assert oracle.calls == 0 and runner.keeper.replayed_calls == 7
  _assert_same(d, finished, result)


def _assert_same(d, finished, result):
  step, arrays, host = read_checkpoint(d)
  f_step, f_arrays, f_host = finished["checkpoint"]
  assert step == f_step
  for k in f_arrays:
    assert np.array_equal(arrays[k], f_arrays[k]), k
  assert _strip(host["history"]) == _strip(f_host["history"])
  assert _strip(result.history) == _strip(finished["result"].history)
  assert read_ledger(os.path.join(d, "ledger.jsonl")) == finished["ledger"]
  with open(os.path.join(d, "metrics.jsonl")) as f:
    assert _strip(json.loads(line) for line in f) == _strip(f_host["history"])
