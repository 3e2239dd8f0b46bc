"""``banel compare --run-dir``: kill the comparison, rerun it, compare.

The tiny toy comparison of REINFORCE and BaNEL (NRE 200 in rounds of 100,
n_eval 100, 2 seeds) is run once without interruption, and once as a chain of
processes that are killed with SIGKILL inside an oracle call and rerun with the
same command and ``--run-dir``. The oracle calls of one uninterrupted run::

  1: pretrained rate | 2-6: REINFORCE e0 t1 e1 t2 e2 | 7-11: BaNEL e0 t1 e1 t2 e2

(eN: evaluation after round N, tN: training call of round N). The kills:

1. inside call 3 (REINFORCE's t1): the pretrained rate and REINFORCE's round 0
   are kept, the run resumes from its step 0;
2. inside the 2nd call of the next process (REINFORCE's e1): t1 is in the ledger
   but round 1 is not checkpointed, so the next process replays t1 (and must
   record the same per-round diagnostics as if the oracle had answered it);
3. inside the 6th call of the next process (BaNEL's e1): REINFORCE finished
   (``result.json``), BaNEL's t1 is in its ledger, round 1 not checkpointed.

The last process loads REINFORCE's result, resumes BaNEL (replaying t1) and
writes the comparison. It must equal the uninterrupted run's (every number but
wall times), with the same final checkpoints and ledgers, and the oracle's log of
completed calls over the whole chain must be exactly the uninterrupted run's
calls: every query answered once, the training budget exactly.

Processes fork from the forkserver of ``resume_worker`` and share its
compilation cache (only the first run compiles).
"""

import json
import os

import numpy as np
import pytest

import resume_worker
from banel_jax.runtime.ledger import read_calls, read_ledger
from banel_jax.runtime.run_dir import CHECKPOINT_DIR, read_checkpoint

pytestmark = pytest.mark.slow  # kills a comparison in a subprocess

METHODS = ("reinforce", "banel")
BUDGET, M, N_EVAL, SEEDS = 200, 100, 100, 2
ARGS = ["--preset", "toy1d-tiny", "--methods", *METHODS, "--run.nre-budget",
        str(BUDGET), "--run.n-eval", str(N_EVAL), "--no-progress"]
PAUSES = (3, 2, 6)  # this process's oracle call to be killed in (module doc)
WAIT_S = 300


def _run(ctx, tmp_path, name, run_dir, log, cache, pause_at=None):
  argv = ARGS + ["--run-dir", run_dir, "--out", str(tmp_path / f"out_{name}")]
  marker = str(tmp_path / f"paused_{name}")
  p = ctx.Process(target=resume_worker.run_comparison,
                  args=(argv, log, pause_at, marker, cache))
  p.start()
  if pause_at is None:
    p.join(WAIT_S)
    assert p.exitcode == 0, f"{name} failed (exit code {p.exitcode})"
  else:
    resume_worker.kill_when_paused(p, marker, f"{name} (call {pause_at})", WAIT_S)


def _without_wall_times(v):
  if isinstance(v, dict):
    return {k: _without_wall_times(x) for k, x in v.items()
            if "wall_time" not in k and k != "final_s"}  # timings
  if isinstance(v, list):
    return [_without_wall_times(x) for x in v]
  return v


def _comparison(tmp_path, name):
  """comparison.json without wall times, and without the command line and the
  run directory (its --run-dir and --out differ between the runs compared)."""
  with open(tmp_path / f"out_{name}" / "comparison.json") as f:
    out = _without_wall_times(json.load(f))
  assert out.pop("command").startswith("banel compare ")
  assert out["config"].pop("run_dir") in (str(tmp_path / "ref"), str(tmp_path / "run"))
  return out


def _calls(run_dir, method):
  return read_calls(os.path.join(run_dir, method, "ledger.jsonl"))[0]


def _steps(run_dir, method):
  return sorted(int(s) for s in os.listdir(os.path.join(run_dir, method,
                                                        CHECKPOINT_DIR)))


def test_killed_comparison_resumes_to_the_uninterrupted_result(tmp_path):
  ctx, cache = resume_worker.context(), resume_worker.cache_dir()
  ref_dir, ref_log = str(tmp_path / "ref"), str(tmp_path / "ref_oracle.jsonl")
  run_dir, log = str(tmp_path / "run"), str(tmp_path / "oracle.jsonl")

  # 1. The uninterrupted comparison (it also fills the compilation cache).
  _run(ctx, tmp_path, "ref", ref_dir, ref_log, cache)

  # 2. The chain, checking after each kill that it stopped where intended.
  _run(ctx, tmp_path, "kill1", run_dir, log, cache, PAUSES[0])
  assert os.path.exists(os.path.join(run_dir, "pretrained.json"))
  assert [c.kind for c in _calls(run_dir, "reinforce")] == ["eval"]
  assert _steps(run_dir, "reinforce") == [0]
  _run(ctx, tmp_path, "kill2", run_dir, log, cache, PAUSES[1])
  assert [c.kind for c in _calls(run_dir, "reinforce")] == ["eval", "train"]
  assert _steps(run_dir, "reinforce") == [0]  # t1 answered, round 1 not saved
  _run(ctx, tmp_path, "kill3", run_dir, log, cache, PAUSES[2])
  assert os.path.exists(os.path.join(run_dir, "reinforce", "result.json"))
  assert [c.kind for c in _calls(run_dir, "banel")] == ["eval", "train"]
  assert _steps(run_dir, "banel") == [0]
  _run(ctx, tmp_path, "final", run_dir, log, cache)

  # 3. The same comparison: rates, diagnostics, histories, the pretrained rate.
  ref, final = _comparison(tmp_path, "ref"), _comparison(tmp_path, "final")
  assert final == ref
  assert [r["key"] for r in final["rows"]] == list(METHODS)
  for name in METHODS:
    history = final["runs"][name]["history"]
    assert [h["round"] for h in history] == [0, 1, 2]
    assert all("n_distinct_train" in h and "exact_success_rate" in h
               for h in history[1:])

  # 4. The same final checkpoints (bit for bit) and ledgers.
  for name in METHODS:
    step, arrays, host = read_checkpoint(os.path.join(run_dir, name))
    ref_step, ref_arrays, ref_host = read_checkpoint(os.path.join(ref_dir, name))
    assert step == ref_step == 2
    assert arrays.keys() == ref_arrays.keys()
    for k in arrays:
      assert np.array_equal(arrays[k], ref_arrays[k]), (name, k)
    assert host["budget"] == ref_host["budget"]
    ledger = read_ledger(os.path.join(run_dir, name, "ledger.jsonl"))
    assert ledger == read_ledger(os.path.join(ref_dir, name, "ledger.jsonl"))

    # exactly the budget of training queries per seed, each call once
    train = [r for r in ledger if r["kind"] == "train"]
    for s in range(SEEDS):
      assert sum(r["seed"] == s for r in train) == BUDGET
    calls = _calls(run_dir, name)
    assert [c.call for c in calls] == list(range(5))
    assert [c.kind for c in calls] == ["eval", "train", "eval", "train", "eval"]
    assert [len(c.queries) for c in calls] == [SEEDS * N_EVAL, SEEDS * M] * 2 + [
        SEEDS * N_EVAL]

    # the diagnostics of every round (replayed ones too) are those of the
    # samples the ledger holds for it
    history = final["runs"][name]["history"]
    for c in calls:
      if c.kind == "train":
        q = np.asarray(c.queries)
        distinct = [len(np.unique(q[c.seeds == s], axis=0)) for s in range(SEEDS)]
        assert history[c.round + 1]["n_distinct_train"] == distinct, (name, c.round)

  # 5. The oracle, over the 4 processes of the chain, answered exactly the
  # uninterrupted run's calls, in order: nothing twice, nothing more.
  answered, ref_answered = resume_worker.read_log(log), resume_worker.read_log(ref_log)
  assert [c["queries"] for c in answered] == [c["queries"] for c in ref_answered]
  assert len(answered) == 1 + 5 * len(METHODS)  # the pretrained rate + 5 per method
  assert len({c["pid"] for c in answered}) == 4
  # after the pretrained rate, the answers are the methods' ledgered calls, so
  # the training queries answered are exactly the budget
  for i, name in enumerate(METHODS):
    calls = _calls(run_dir, name)
    mine = answered[1 + 5 * i: 6 + 5 * i]
    assert [[[q] for q in c["queries"]] for c in mine] == [c.queries for c in calls]
    assert sum(len(c.queries) for c in calls if c.kind == "train") == BUDGET * SEEDS
