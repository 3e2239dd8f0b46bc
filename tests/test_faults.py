"""Oracle faults: retried under the policy, never counted, and a clean stop.

Fault-injecting oracles raise, return the wrong shape or dtype, NaN or values
outside {0, 1}, or hang past the timeout. The runs use the stub method of
``resume_worker`` (the driver's contract with trivial learning: fast to
compile), 2 seeds, 3 rounds.
"""

import json
import os
import re
import threading

import numpy as np
import pytest

import resume_worker
from banel_jax import BanelConfig, BanelRunner, OracleError
from banel_jax.runtime import budget as budget_lib
from banel_jax.runtime.budget import BudgetKeeper, OraclePolicy
from banel_jax.runtime.ledger import Ledger, read_ledger
from banel_jax.runtime.run_dir import read_checkpoint

TASK = resume_worker.TASK
CONFIG = BanelConfig(nre_budget=10, samples_per_round=4, failure_batch_size=2,
                     distill_samples=8, distill_batch_size=8, n_eval=3)
SEEDS = (0, 1)
STUB = resume_worker.make_stub_method(TASK.num_bins)
NO_WAIT = dict(backoff_s=0.0)


class FaultyOracle:
  """The toy oracle with faults injected on chosen invocations.

  Args:
    fault: what a faulty attempt does (see :meth:`_fault`).
    faulty: invocation numbers (1-based) that fault; ``"from k"`` as
      ``range(k, 10**9)``.

  ``answered`` lists the batches of the calls that returned valid rewards.
  """

  def __init__(self, fault: str, faulty=()):
    self.fault = fault
    self.faulty = faulty
    self.invocations = 0
    self.answered = []
    self.release = threading.Event()

  def _fault(self, x):
    n = x.shape[0]
    if self.fault == "raise":
      raise RuntimeError("the simulator crashed")
    if self.fault == "shape":
      return np.zeros(n + 1, np.float32)
    if self.fault == "dtype":
      return np.array(["0"] * n)
    if self.fault == "nan":
      r = np.zeros(n, np.float32)
      r[-1] = np.nan
      return r
    if self.fault == "range":
      return np.full(n, 2.0, np.float32)
    if self.fault == "hang":
      self.release.wait(30)
      raise RuntimeError("released hung call")  # never a valid answer
    raise AssertionError(self.fault)

  def __call__(self, x):
    self.invocations += 1
    x = np.asarray(x)
    if self.invocations in self.faulty:
      return self._fault(x)
    self.answered.append(x.tolist())
    return TASK.oracle(x)


FAULTS = {
    "raise": "raised RuntimeError: the simulator crashed",
    "shape": r"returned invalid output \(oracle returned shape \(\d+,\) for \d+ "
             r"queries",
    "dtype": r"returned invalid output \(oracle returned dtype <U1",
    "nan": r"returned invalid output \(oracle returned 1 non-finite rewards \(NaN",
    "range": r"returned invalid output \(oracle returned values outside \{0, 1\}",
    "hang": r"timed out after 0\.3 s",
}


def _policy(fault, **kw):
  return OraclePolicy(timeout_s=0.3 if fault == "hang" else None, **NO_WAIT, **kw)


def _runner(oracle, run_dir=None, policy=None):
  return BanelRunner(resume_worker.MODEL, TASK.prior_params(), oracle, CONFIG, SEEDS,
                     progress=False, method=STUB, run_dir=run_dir,
                     oracle_policy=policy)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  """The run without faults: its calls, history, final checkpoint and ledger."""
  d = str(tmp_path_factory.mktemp("clean") / "run")
  oracle = FaultyOracle("raise")
  runner = _runner(oracle, d)
  result = runner.run()
  runner.close()
  return {"answered": oracle.answered, "result": result, "dir": d,
          "checkpoint": read_checkpoint(d), "ledger": read_ledger(
              os.path.join(d, "ledger.jsonl"))}


def _strip(history):
  return [json.dumps({k: v for k, v in h.items() if k != "wall_time_s"}, sort_keys=True)
          for h in history]


def _assert_same_run(d, clean):
  step, arrays, host = read_checkpoint(d)
  c_step, c_arrays, c_host = clean["checkpoint"]
  assert step == c_step
  for k in c_arrays:
    assert np.array_equal(arrays[k], c_arrays[k]), k
  assert _strip(host["history"]) == _strip(c_host["history"])
  assert read_ledger(os.path.join(d, "ledger.jsonl")) == clean["ledger"]
  assert host["budget"]["spent"] == [CONFIG.nre_budget] * len(SEEDS)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_transient_fault_is_retried_and_costs_nothing(fault, clean, tmp_path):
  """Invocations 2 and 5 fault: the first attempts of the training calls of
  rounds 1 and 2 (invocations 1, 3 and 4 are evaluation 0, the retry of round 1
  and evaluation 1)."""
  oracle = FaultyOracle(fault, faulty={2, 5})
  d = str(tmp_path / "run")
  runner = _runner(oracle, d, _policy(fault, max_attempts=2))
  result = runner.run()
  oracle.release.set()
  runner.close()
  assert runner.keeper.failed_attempts == 2
  # the valid answers are exactly the clean run's: the faulty attempts were
  # asked again, and nothing was counted or recorded twice
  assert oracle.answered == clean["answered"]
  assert result.nre_spent == [CONFIG.nre_budget] * len(SEEDS)
  assert result.eval_calls == clean["result"].eval_calls
  _assert_same_run(d, clean)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_persistent_fault_stops_cleanly_and_resumes(fault, clean, tmp_path):
  """From invocation 4 on (the training call of round 2) every attempt faults."""
  oracle = FaultyOracle(fault, faulty=range(4, 10**9))
  d = str(tmp_path / "run")
  runner = _runner(oracle, d, _policy(fault, max_attempts=3))
  with pytest.raises(OracleError) as info:
    runner.run()
  oracle.release.set()
  runner.close()
  msg = str(info.value)
  assert "the train call of round 1" in msg and "3 of 3 attempts failed" in msg
  assert len(info.value.faults) == 3
  for i in (1, 2, 3):
    assert f"attempt {i} " in msg
  assert re.search(FAULTS[fault], msg), msg
  assert "The run stopped in round 2" in msg and "newest checkpoint is step 1" in msg
  assert "rerun with the same run_dir to resume" in msg
  # nothing of the failed call was spent or recorded
  assert runner.keeper.spent.tolist() == [4, 4]
  assert runner.keeper.failed_attempts == 3
  # evaluation 0 (2 x 3 queries), training of round 1 (2 x 4), evaluation 1
  assert len(read_ledger(os.path.join(d, "ledger.jsonl"))) == 6 + 8 + 6
  step, _, host = read_checkpoint(d)
  assert step == 1 and host["budget"]["spent"] == [4, 4]
  # resuming with a healthy oracle finishes the run as if nothing had happened
  healthy = FaultyOracle(fault)
  runner = _runner(healthy, d, _policy(fault))
  runner.run()
  runner.close()
  assert oracle.answered + healthy.answered == clean["answered"]
  _assert_same_run(d, clean)


def test_fault_before_any_checkpoint_says_so(tmp_path):
  runner = _runner(FaultyOracle("raise", faulty=range(1, 10**9)), str(tmp_path / "r"),
                   OraclePolicy(max_attempts=1))
  with pytest.raises(OracleError, match="eval call of round 0.*1 of 1 attempts failed"
                     ".*no round was checkpointed yet"):
    runner.run()
  runner.close()


def test_backoff_grows_and_is_capped(monkeypatch):
  pauses = []
  monkeypatch.setattr(budget_lib.time, "sleep", pauses.append)
  policy = OraclePolicy(max_attempts=5, backoff_s=0.5, backoff_factor=3.0,
                        max_backoff_s=5.0)
  keeper = BudgetKeeper(FaultyOracle("raise", faulty=range(1, 10**9)), 10,
                        policy=policy)
  with pytest.raises(OracleError, match="5 of 5 attempts failed"):
    keeper.evaluate(np.zeros((1, 3), np.int32))
  assert pauses == [0.5, 1.5, 4.5, 5.0]


def test_failed_call_spends_nothing_and_is_not_ledgered(tmp_path):
  path = str(tmp_path / "ledger.jsonl")
  ledger = Ledger(path)
  oracle = FaultyOracle("nan", faulty={1, 2})
  keeper = BudgetKeeper(oracle, 5, num_seeds=2, ledger=ledger, seeds=(7, 9),
                        policy=OraclePolicy(max_attempts=2, backoff_s=0.0))
  x = np.arange(6, dtype=np.int32).reshape(2, 3)
  with pytest.raises(OracleError, match="non-finite"):
    keeper.evaluate(x, 0)
  assert keeper.spent.tolist() == [0, 0] and keeper.oracle_calls == 0
  assert keeper.failed_attempts == 2 and keeper.successes == []
  assert os.path.getsize(path) == 0
  rewards, evaluated = keeper.evaluate(x, 0)  # invocation 3 is healthy
  assert evaluated.all() and keeper.spent.tolist() == [3, 3]
  assert keeper.oracle_calls == 1 and keeper.ledger_position == (1, ledger.offset)
  assert [(r["seed"], r["query"]) for r in read_ledger(path)] == [
      (7, [0]), (7, [1]), (7, [2]), (9, [3]), (9, [4]), (9, [5])]
  ledger.close()


def test_keyboard_interrupt_is_not_retried():
  calls = []

  def oracle(x):
    calls.append(1)
    raise KeyboardInterrupt

  keeper = BudgetKeeper(oracle, 5, policy=OraclePolicy(max_attempts=3, backoff_s=0.0))
  with pytest.raises(KeyboardInterrupt):
    keeper.evaluate(np.zeros((1, 2), np.int32))
  assert calls == [1] and keeper.spent.tolist() == [0]
