"""Nothing paid for is lost: kill a run process with SIGKILL, resume, compare.

A tiny toy run (``resume_worker.py``: 2 seeds, 5 rounds, 11 oracle calls) is run
once without interruption, and once as a chain of processes each killed with
SIGKILL at a different moment (13 moments: at start-up, inside oracle calls of
training and of evaluation, between rounds, before a checkpoint, and in the
middle of checkpoint writes), every process resuming the same run directory.

The chain must end with the same final checkpoint (bit for bit), metrics and
ledger as the uninterrupted run; the oracle's own log of *completed* calls,
summed over every process of the chain, must be exactly the uninterrupted run's
calls: exactly the training budget, and no query asked twice once answered.

Processes are forked from a server that imported everything once, and share a
persistent compilation cache, so only the first run compiles.

Also: torn and damaged ledgers, and the budget invariant as a property over
random budgets, batch sizes and crash points (in-process, with the stub method).
"""

import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import resume_worker
from banel_jax import BanelConfig, BanelRunner
from banel_jax.runtime.ledger import Ledger, read_calls, read_ledger
from banel_jax.runtime.run_dir import CHECKPOINT_DIR, read_checkpoint


# (where the process stops, which occurrence); what the chain has done by then is
# traced in the comments (eN: evaluation after round N, tN: training call of N).
KILLS = [
    ("start", 1),          # config.json written, nothing else
    ("oracle", 1),         # inside e0
    ("ckpt_state", 1),     # e0 answered and ledgered; writing step 0's arrays
    ("ckpt_host", 1),      # e0 replayed from the ledger; writing step 0's JSON
    ("ckpt_finalize", 1),  # step 0 written, not yet renamed into place
    ("oracle", 1),         # step 0 done; inside t1
    ("oracle", 2),         # t1 answered; inside e1
    ("save", 1),           # t1 replayed, e1 answered; before step 1 is written
    ("step", 3),           # rounds 1 (replayed) and 2 checkpointed; before round 3
    ("oracle", 1),         # inside t3
    ("ckpt_state", 2),     # round 3 checkpointed, round 4 answered; writing step 4
    ("oracle", 2),         # t4, e4 replayed, step 4 written, t5 answered; inside e5
    ("ckpt_finalize", 1),  # t5 replayed, e5 answered; step 5 not renamed yet
]
WAIT_S = 300


def _strip(records):
  return [json.dumps({k: v for k, v in r.items() if k != "wall_time_s"},
                     sort_keys=True) for r in records]


def _metrics(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return _strip(json.loads(line) for line in f)


@pytest.mark.slow  # SIGKILLs worker processes
def test_sigkill_at_13_moments_then_resume_equals_uninterrupted_run(tmp_path):
  ctx, cache = resume_worker.context(), resume_worker.cache_dir()
  ref_dir, ref_log = str(tmp_path / "ref"), str(tmp_path / "ref_oracle.jsonl")
  run_dir, log = str(tmp_path / "run"), str(tmp_path / "oracle.jsonl")

  # 1. The uninterrupted run (it also fills the compilation cache).
  out = str(tmp_path / "ref.json")
  p = ctx.Process(target=resume_worker.run_worker,
                  args=(ref_dir, ref_log, None, str(tmp_path / "never"), cache, out))
  p.start()
  p.join(WAIT_S)
  assert p.exitcode == 0, f"the reference run failed (exit code {p.exitcode})"

  # 2. The chain: each process resumes the run directory and is killed.
  for i, pause in enumerate(KILLS):
    marker = tmp_path / f"paused_{i}"
    p = ctx.Process(target=resume_worker.run_worker,
                    args=(run_dir, log, pause, str(marker), cache, None))
    p.start()
    resume_worker.kill_when_paused(p, str(marker), f"process {i} (pause {pause})",
                                   WAIT_S)

  out = str(tmp_path / "final.json")
  p = ctx.Process(target=resume_worker.run_worker,
                  args=(run_dir, log, None, str(tmp_path / "never"), cache, out))
  p.start()
  p.join(WAIT_S)
  assert p.exitcode == 0
  with open(out) as f:
    final = json.load(f)
  assert final["replayed_calls"] == 2  # t5 and e5, answered before the last kill

  # 3. The same final state, bit for bit, and the same metrics and ledger.
  step, arrays, host = read_checkpoint(run_dir)
  ref_step, ref_arrays, ref_host = read_checkpoint(ref_dir)
  assert step == ref_step == 5
  assert arrays.keys() == ref_arrays.keys()
  for k in arrays:
    assert arrays[k].dtype == ref_arrays[k].dtype, k
    assert np.array_equal(arrays[k], ref_arrays[k]), k
  assert _strip(host["history"]) == _strip(ref_host["history"])
  assert host["budget"] == ref_host["budget"]
  assert _metrics(run_dir) == _metrics(ref_dir)
  assert len(_metrics(run_dir)) == 6  # rounds 0..5
  assert read_ledger(os.path.join(run_dir, "ledger.jsonl")) == read_ledger(
      os.path.join(ref_dir, "ledger.jsonl"))

  # 4. The oracle, over all 14 processes, answered exactly the reference's calls:
  # no query answered twice, and exactly the budget of training queries.
  calls, ref_calls = resume_worker.read_log(log), resume_worker.read_log(ref_log)
  assert [c["queries"] for c in calls] == [c["queries"] for c in ref_calls]
  # the answered calls came from 7 of the processes (the others were killed
  # before answering anything new)
  assert len({c["pid"] for c in calls}) == 7
  budget = resume_worker.CONFIG.nre_budget
  ledger = read_ledger(os.path.join(run_dir, "ledger.jsonl"))
  train = [r for r in ledger if r["kind"] == "train"]
  assert len(train) == budget * len(resume_worker.SEEDS)
  for s in resume_worker.SEEDS:
    assert sum(r["seed"] == s for r in train) == budget
  # the oracle's answers, call by call, are the ledger's calls: count its
  # training queries through the ledger's kinds
  ledger_calls, _ = read_calls(os.path.join(run_dir, "ledger.jsonl"))
  assert len(ledger_calls) == len(calls) == 11
  answered_train = 0
  for answered, recorded in zip(calls, ledger_calls):
    assert [[q] for q in answered["queries"]] == recorded.queries
    answered_train += len(answered["queries"]) * (recorded.kind == "train")
  assert answered_train == budget * len(resume_worker.SEEDS)
  assert host["budget"]["spent"] == [budget] * len(resume_worker.SEEDS)
  # orbax's unfinished temporary directories were cleaned up; the last 3 kept
  assert sorted(os.listdir(os.path.join(run_dir, CHECKPOINT_DIR))) == ["3", "4", "5"]


def test_ledger_torn_tail_is_dropped_and_rewritten(tmp_path):
  """A process killed while appending leaves a torn call; reopening cuts it off."""
  path = str(tmp_path / "ledger.jsonl")
  with Ledger(path) as ledger:
    ledger.append("eval", 0, [0, 1], np.array([[1, 2], [3, 4]]), np.array([0.0, 1.0]))
    ledger.append("train", 0, [0, 0, 1], np.array([[5, 6], [7, 8], [9, 9]]),
                  np.zeros(3))
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  end_first = len(lines[0]) + len(lines[1]) + 2
  # torn in the middle of the second call's second line: one line and a half kept
  torn = data[:end_first] + lines[2] + b"\n" + lines[3][:17]
  with open(path, "wb") as f:
    f.write(torn)
  calls, end = read_calls(path)
  assert [c.call for c in calls] == [0] and end == end_first
  with Ledger(path) as ledger:
    assert ledger.num_calls == 1 and ledger.offset == end_first
    assert os.path.getsize(path) == end_first
    assert ledger.append("train", 0, [0], np.array([[5, 6]]), np.ones(1)) == 1
  records = read_ledger(path)
  assert [(r["call"], r["kind"], r["query"], r["reward"]) for r in records] == [
      (0, "eval", [1, 2], 0), (0, "eval", [3, 4], 1), (1, "train", [5, 6], 1)]
  # the tail after a recorded offset, as a resumed run reads it
  with Ledger(path, offset=end_first, calls_before=1) as ledger:
    assert [c.call for c in ledger.tail] == [1]
    np.testing.assert_array_equal(ledger.tail[0].rewards, [1.0])


def test_ledger_damaged_before_its_end_is_an_error(tmp_path):
  from banel_jax.runtime.ledger import LedgerError
  path = str(tmp_path / "ledger.jsonl")
  with Ledger(path) as ledger:
    for _ in range(3):
      ledger.append("eval", 0, [0], np.array([1]), np.zeros(1))
  lines = open(path).read().splitlines()
  lines[1] = lines[1][:10]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(LedgerError, match="unreadable line"):
    read_calls(path)
  with pytest.raises(LedgerError, match="fewer than"):
    read_calls(path, offset=10**6)


# --- the budget invariant, as a property over budgets, batch sizes and crashes -----

class SimulatedCrash(BaseException):
  """The process dying (a ``BaseException``: the fault policy never retries it)."""


class CrashingOracle:
  """The toy oracle; appends answered batches to ``answered``; dies inside its
  ``crash_at``-th call (before answering)."""

  def __init__(self, answered: list, crash_at=None):
    self.answered, self.crash_at, self.calls = answered, crash_at, 0

  def __call__(self, x):
    self.calls += 1
    if self.calls == self.crash_at:
      raise SimulatedCrash
    self.answered.append(np.asarray(x).tolist())
    return resume_worker.TASK.oracle(x)


STUB = resume_worker.make_stub_method(resume_worker.TASK.num_bins)


def _stub_runner(run_dir, oracle, cfg, seeds, on_round=None):
  task = resume_worker.TASK
  return BanelRunner(resume_worker.MODEL, task.prior_params(), oracle, cfg, seeds,
                     progress=False, method=STUB, run_dir=run_dir, on_round=on_round)


@settings(max_examples=4, deadline=None)
@example(budget=10, m=4, num_seeds=2, n_eval=3,  # surely replays: dies after
         crashes=[("round", 2), ("oracle", 3), ("round", 1)])  # calls it answered
@given(budget=st.integers(1, 20), m=st.integers(3, 8), num_seeds=st.integers(1, 2),
       n_eval=st.integers(1, 4),
       crashes=st.lists(st.tuples(st.sampled_from(["oracle", "round"]),
                                  st.integers(1, 6)), min_size=1, max_size=3))
def test_budget_invariant_across_crashes_and_resumes(budget, m, num_seeds, n_eval,
                                                     crashes):
  """However a run is cut short (inside an oracle call, or after a round's calls
  but before its checkpoint) and resumed, the oracle answers exactly the calls
  of an uninterrupted run: ``budget`` training queries per seed, none twice."""
  cfg = BanelConfig(nre_budget=budget, samples_per_round=m, failure_batch_size=1,
                    distill_samples=8, distill_batch_size=8, n_eval=n_eval)
  seeds = tuple(range(num_seeds))
  with tempfile.TemporaryDirectory() as tmp:
    ref_dir, run_dir = os.path.join(tmp, "ref"), os.path.join(tmp, "run")
    ref_answered = []
    runner = _stub_runner(ref_dir, CrashingOracle(ref_answered), cfg, seeds)
    ref = runner.run()
    runner.close()

    answered = []
    for kind, k in crashes:
      emitted = [0]

      def on_round(runner, record, kind=kind, k=k, emitted=emitted):
        emitted[0] += 1  # the k-th round record of this process: die before saving
        if kind == "round" and emitted[0] == k:
          raise SimulatedCrash

      oracle = CrashingOracle(answered, k if kind == "oracle" else None)
      runner = _stub_runner(run_dir, oracle, cfg, seeds, on_round)
      try:
        runner.run()
      except SimulatedCrash:
        pass
      finally:
        runner.close()
    runner = _stub_runner(run_dir, CrashingOracle(answered), cfg, seeds)
    result = runner.run()
    runner.close()

    assert answered == ref_answered  # every answer once, in the same order
    train = [r for r in read_ledger(os.path.join(run_dir, "ledger.jsonl"))
             if r["kind"] == "train"]
    for s in seeds:
      assert sum(r["seed"] == s for r in train) == budget
    assert result.nre_spent == [budget] * num_seeds
    assert [json.dumps(h) for h in _drop_wall(result.history)] == [
        json.dumps(h) for h in _drop_wall(ref.history)]
    _, arrays, _ = read_checkpoint(run_dir)
    _, ref_arrays, _ = read_checkpoint(ref_dir)
    for key in ref_arrays:
      assert np.array_equal(arrays[key], ref_arrays[key]), key


def _drop_wall(history):
  return [{k: v for k, v in h.items() if k != "wall_time_s"} for h in history]
