"""Shared fixtures.

Compilation dominates the run time of the suite, and every BaNEL run compiles its
own programs, so one seed-vmapped BaNEL run of the 1-D toy is shared by the files
that check a whole run (``test_banel_round.py``, ``test_budget.py``).
"""

import atexit
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import pytest

from banel_jax import BanelConfig, BanelRunner, run_banel
from banel_jax.tasks.toy1d import Toy1DTask

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_PERSISTENT_CACHE_HIT = "/jax/compilation_cache/cache_hits"
ROOT = pathlib.Path(__file__).resolve().parents[1]

# One XLA compilation cache on disk for this test session, shared with the child
# processes the tests start (kill-and-resume workers, scripts, notebook kernels):
# they restart the same programs many times. Under pytest-xdist (``-n auto``) the
# controller loads this file first, so its workers share the folder too. (A worker
# that reads an entry another is still writing gets a warning from JAX and
# compiles the program itself.) A fresh folder per session, so no
# program compiled by other code is ever reused; set JAX_COMPILATION_CACHE_DIR
# (to a folder, or to an empty string for none) to choose otherwise.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _xla_cache = tempfile.mkdtemp(prefix="banel_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
  jax.config.update("jax_compilation_cache_dir", _xla_cache)


@pytest.fixture
def four_cpu_devices_env():
  """Environment of a child process with 4 CPU devices that imports this repo."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  return env


class RecordingOracle:
  """Wraps an oracle and records the size of every batch it is asked to score."""

  def __init__(self, oracle):
    self.oracle = oracle
    self.sizes = []

  def __call__(self, x):
    self.sizes.append(int(np.asarray(x).shape[0]))
    return self.oracle(x)


@pytest.fixture(scope="session")
def toy_runs():
  """BaNEL on the toy (K = 11): seeds (0, 1, 2) side by side, and seed 1 alone
  (through ``run_banel``).

  NRE budget 250 with 100 samples per round: rounds of 100, 100 and 50.
  The three-seed run goes round by round, recording the jit cache sizes after
  round 1 and every backend compilation during rounds 2 and 3.
  """
  task = Toy1DTask(num_bins=11)
  config = BanelConfig(nre_budget=250, samples_per_round=100, failure_batch_size=50,
                       failure_epochs=5, distill_samples=256, distill_batch_size=64,
                       distill_epochs=3, n_eval=100)
  names = ("_propose", "_update", "_update_or_hold", "_keys")
  compiles = []

  def listener(event, duration, **kwargs):
    if event == _BACKEND_COMPILE:
      compiles.append(kwargs.get("fun_name", "?"))

  def hit_listener(event, **kwargs):  # a program served by the disk cache
    if event == _PERSISTENT_CACHE_HIT:  # was compiled too, just not here
      compiles.append("persistent cache hit")

  oracle3 = RecordingOracle(task.oracle)
  three = BanelRunner(task.model(), task.prior_params(), oracle3, config,
                      seeds=(0, 1, 2), progress=False)
  three.evaluate_start()
  three.step()
  sizes_round1 = {n: getattr(three, n)._cache_size() for n in names}
  jax.monitoring.register_event_duration_secs_listener(listener)
  jax.monitoring.register_event_listener(hit_listener)
  try:
    while not three.done:
      three.step()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.monitoring.unregister_event_listener(hit_listener)
  sizes_end = {n: getattr(three, n)._cache_size() for n in names}
  oracle1 = RecordingOracle(task.oracle)
  one = run_banel(task.model(), task.prior_params(), oracle1, config, seeds=(1,),
                  progress=False)
  return {"task": task, "config": config, "runner": three, "three": three.result(),
          "one": one, "oracle_sizes_three": oracle3.sizes,
          "oracle_sizes_one": oracle1.sizes, "cache_sizes_round1": sizes_round1,
          "cache_sizes_end": sizes_end, "compiles_after_round1": compiles}


class _Crash(BaseException):
  """A crash the run does not catch (``BaseException``, like a KeyboardInterrupt)."""


@pytest.fixture
def crash_then_resume(tmp_path):
  """``resume(model, prior, oracle, config, seeds)``: runs BaNEL in a run
  directory with an oracle that crashes on its 4th call, then resumes the
  directory with the real oracle to the end; returns the resumed ``RunResult``."""

  def resume(model, prior, oracle, config, seeds, extensions=()):
    calls = []

    def dying(x):
      calls.append(1)
      if len(calls) == 4:
        raise _Crash
      return oracle(x)

    run_dir = tmp_path / "crashed_run"
    with pytest.raises(_Crash):
      with BanelRunner(model, prior, dying, config, seeds=seeds, progress=False,
                       run_dir=run_dir, extensions=extensions) as runner:
        runner.run()
    with BanelRunner(model, prior, oracle, config, seeds=seeds, progress=False,
                     run_dir=run_dir, extensions=extensions) as runner:
      return runner.run()

  return resume


# The fast tier (`-m "not slow"`) leaves out, besides the tests marked where
# they are defined, these: each took more than about 8 s on 2 CPU cores (most
# compile a transformer or run a whole experiment). The full suite runs them.
SLOW_TESTS = (
    "banel_jax/models/transformer.py::banel_jax.models.transformer",
    "banel_jax/models/hf/generation.py::banel_jax.models.hf.generation",
    "banel_jax/baselines/__init__.py::banel_jax.baselines",
    "banel_jax/core/sample_set.py::banel_jax.core.sample_set",
    "banel_jax/tasks/addition.py::banel_jax.tasks.addition.sample_queries",
    "tests/test_readme.py::test_readme_python_blocks_run",
    "tests/test_transformer.py::test_input_tables_give_the_same_results",
    "tests/test_transformer.py::test_chunked_scoring_matches_one_pass",
    "tests/test_transformer.py::test_segmented_decoding_matches_one_full_cache",
    "tests/test_transformer.py::test_decode_step_takes_precomputed_tables",
    "tests/test_transformer.py::test_model_contract",
    "tests/test_transformer.py::test_enumeration_sums_to_one_and_matches_samples",
    "tests/test_transformer.py::test_greedy_decode_matches_full_recomputation_argmax",
    "tests/test_toy1d_experiment.py::test_both_modes_write_their_records_and_figures",
    "tests/test_toy1d_experiment.py::test_a_run_directory_resumes_the_finished_run",
    "tests/test_bench_microbatch.py::test_tiny_run_writes_both_variants",
    "tests/test_bench_transformer.py::test_tiny_run_compiles_nothing_on_repeat_calls",
    "tests/test_bench_transformer.py::test_forward_flops_is_a_tight_lower_bound",
    "tests/test_mnist_experiment.py::test_tiny_run",
    "tests/test_toy_end_to_end.py::test_banel_raises_the_toys_success_rate",
    "tests/test_baselines.py::test_every_method_stops_at_the_budget",
    "tests/test_baselines.py::test_policy_gradient_microbatches_give_the_same_update",
    "tests/test_baselines.py::test_unlikelihood_microbatches_give_the_same_update",
    "tests/test_seen.py::test_resume_after_a_crash_equals_the_uninterrupted_run",
    "tests/test_seen.py::test_distillation_moves_mass_off_the_paid_failures",
    "tests/test_resume.py::test_budget_invariant_across_crashes_and_resumes",
    "tests/test_failure_and_distill.py::test_transformer_microbatches_share_the_input",
    "tests/test_restart.py::test_seeds_side_by_side_restart_on_their_own_and_resume",
    "tests/test_addition.py::test_oracle_with_a_raw_format_target_decodes",
    "tests/test_addition.py::test_oracle_reads_an_msb_target_through_the_reversal",
    "tests/test_success_bank.py::test_upweighted_successes_take_more_mass",
    "tests/test_success_bank.py::test_banked_successes_keep_being_fitted",
    "tests/test_success_bank.py::test_resume_after_a_crash_equals_the_uninterrupted",
    "tests/test_posterior.py::test_auto_strategy_fuses_small_banks_and_loops_large",
    "tests/test_reliability.py::test_a_reward_edited_in_the_ledger_stops_the_resume",
    "tests/test_reliability.py::test_a_truncated_ledger_falls_back_to_a_checkpoint",
    "tests/test_adapters.py::test_log_prob_normalises_and_samples_follow_it",
    "tests/test_bad_input.py::test_rounds_without_failures_add_no_region",
    "tests/test_compare_baselines.py::test_tiny_comparison_writes_its_table_and_resumes",
    "tests/test_mnist_experiment.py::",
    "tests/test_baselines.py::test_seeds_under_vmap_equal_single_seed_runs",
    # with the two above, every user of test_baselines.py's 25 s `runs` fixture
    "tests/test_baselines.py::test_exact_counts_equal_the_counts_of_the_scored",
    "tests/test_baselines.py::test_reinforce_gradient_is_zero_without_bonus_and_kl",
    "tests/test_baselines.py::test_exact_rejection_never_proposes_a_seen_failure",
    "tests/test_suite_runner.py::test_a_small_suite_writes_the_canonical_summary",
    "tests/test_reliability.py::test_every_ledger_line_carries_its_request_id",
    "tests/test_suite_tasks.py::test_pretrain_reproduces_the_shipped_params",
    "tests/test_transformer.py::test_kv_cache_matches_full_recomputation",
    "banel_jax/runtime/driver.py::banel_jax.runtime.driver.run_banel",
    "tests/test_mnist.py::test_oracle_reads_six_probability_of_a_constant",
    "tests/test_addition.py::test_oracle_smoke_with_a_real_tiny_target",
)


def pytest_collection_modifyitems(config, items):
  """Marks :data:`SLOW_TESTS` (node ids, or their prefixes) ``slow``."""
  for item in items:
    if item.nodeid.startswith(SLOW_TESTS):
      item.add_marker(pytest.mark.slow)
