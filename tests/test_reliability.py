"""What the library promises on corruption, misuse and crashes: each case names
the problem (or recovers safely), and nothing paid for is lost or paid twice."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import banel_jax as bj
from banel_jax.core.protocol import RoundBatch
from banel_jax.models import tabular
from banel_jax.runtime import checkpoint
from banel_jax.runtime.budget import IdempotentOracle
from banel_jax.runtime.ledger import LEDGER_FILE, LedgerError
from banel_jax.tasks.toy1d import Toy1DTask

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASK = Toy1DTask(num_bins=11)
MODEL = TASK.model()
PRIOR = TASK.prior_params()
CFG = bj.BanelConfig(nre_budget=40, samples_per_round=10, failure_batch_size=10,
                     failure_epochs=2, distill_samples=64, distill_batch_size=32,
                     distill_epochs=1, n_eval=20, eval_every=2)


def _run(run_dir, oracle=TASK.oracle, **kw):
  with bj.BanelRunner(MODEL, PRIOR, oracle, CFG, seeds=(0, 1), progress=False,
                      run_dir=run_dir, **kw) as runner:
    return runner.run()


# --- the ledger --------------------------------------------------------------------

def test_a_reward_edited_in_the_ledger_stops_the_resume(tmp_path):
  run_dir = tmp_path / "run"
  _run(run_dir)
  path = run_dir / LEDGER_FILE
  lines = path.read_bytes().split(b"\n")
  i = next(k for k, line in enumerate(lines) if b'"reward": 0' in line)
  lines[i] = lines[i].replace(b'"reward": 0', b'"reward": 1')
  path.write_bytes(b"\n".join(lines))
  with pytest.raises(LedgerError, match="fails its checksum"):
    bj.read_ledger(path)
  # a resume that would replay that line refuses it too
  ckpts = run_dir / "checkpoints"
  for step in os.listdir(ckpts):
    if step.isdigit() and int(step) > 0:
      import shutil
      shutil.rmtree(ckpts / step)
  with pytest.raises(LedgerError, match="fails its checksum"):
    _run(run_dir)


def test_every_ledger_line_carries_its_request_id(tmp_path):
  run_dir = tmp_path / "run"
  _run(run_dir)
  rows = bj.read_ledger(run_dir / LEDGER_FILE)
  ids = {(r["call"], r["request"]) for r in rows}
  assert len(ids) == len({r["call"] for r in rows})  # one id per call
  run, kind, rnd, call = sorted(ids)[0][1].split(":")
  assert len(run) == 12 and kind in ("train", "eval") and call == "0"


def test_a_truncated_ledger_falls_back_to_a_checkpoint_it_covers(tmp_path):
  run_dir = tmp_path / "run"
  full = _run(run_dir, keep_checkpoints=10)
  path = run_dir / LEDGER_FILE
  data = path.read_bytes()
  # cut the ledger before its third call: only the first checkpoints are covered
  path.write_bytes(data[:data.index(b'{"call": 2,')])
  with pytest.warns(bj.CheckpointWarning, match="cannot be resumed from"):
    resumed = _run(run_dir, keep_checkpoints=10)
  assert resumed.nre_spent == full.nre_spent
  np.testing.assert_array_equal(resumed.final_success_rates(),
                                full.final_success_rates())


def test_no_covered_checkpoint_says_how_to_recover(tmp_path):
  run_dir = tmp_path / "run"
  _run(run_dir)
  (run_dir / LEDGER_FILE).write_bytes(b"")
  for step in os.listdir(run_dir / "checkpoints"):
    if step == "0":
      import shutil
      shutil.rmtree(run_dir / "checkpoints" / step)
  with pytest.warns(bj.CheckpointWarning):
    with pytest.raises(bj.RunDirError, match="restore it from a backup"):
      _run(run_dir)


# --- run directories ---------------------------------------------------------------

def test_a_foreign_non_empty_directory_is_refused(tmp_path):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "metrics.jsonl").write_text("my own file\n")
  with pytest.raises(bj.RunDirError, match="not a banel_jax run directory"):
    _run(tmp_path / "mine")
  assert (tmp_path / "mine" / "metrics.jsonl").read_text() == "my own file\n"


def test_two_runners_on_one_directory_in_one_process_are_refused(tmp_path):
  first = bj.BanelRunner(MODEL, PRIOR, TASK.oracle, CFG, seeds=(0,), progress=False,
                         run_dir=tmp_path / "run")
  try:
    with pytest.raises(bj.RunDirError, match="already open in this process"):
      bj.BanelRunner(MODEL, PRIOR, TASK.oracle, CFG, seeds=(0,), progress=False,
                     run_dir=tmp_path / "run")
  finally:
    first.close()
  # once closed, the directory resumes
  bj.BanelRunner(MODEL, PRIOR, TASK.oracle, CFG, seeds=(0,), progress=False,
                 run_dir=tmp_path / "run").close()


def test_a_directory_of_another_schema_names_both_versions(tmp_path):
  run_dir = tmp_path / "run"
  bj.BanelRunner(MODEL, PRIOR, TASK.oracle, CFG, seeds=(0,), progress=False,
                 run_dir=run_dir).close()
  record = json.loads((run_dir / "config.json").read_text())
  record.pop("schema_version")
  record["format"] = 1
  (run_dir / "config.json").write_text(json.dumps(record))
  with pytest.raises(bj.RunDirError, match="schema 1, and this banel_jax reads schema 2"):
    _run(run_dir)


# --- bad input to the API ---------------------------------------------------------

def test_repeated_seeds_are_refused():
  with pytest.raises(ValueError, match="seeds must be distinct"):
    bj.BanelRunner(MODEL, PRIOR, TASK.oracle, CFG, seeds=(0, 0), progress=False)


def test_filter_factor_true_is_refused():
  with pytest.raises(bj.ConfigError, match="filter_factor=True"):
    bj.BanelConfig(filter_factor=True)


@pytest.mark.parametrize("bad", [np.nan, 0.5, 7.0, -1.0])
def test_the_pure_update_refuses_rewards_outside_0_1(bad):
  banel = bj.make_banel(MODEL, CFG)
  state = banel.init(jax.random.key(0), PRIOR)
  x = np.arange(10, dtype=np.int32)
  rewards = np.zeros(10, np.float32)
  rewards[3] = bad
  with pytest.raises(ValueError, match="RoundBatch.rewards must be 0 or 1"):
    banel.update(state, RoundBatch(x, rewards, np.ones(10, bool), 0.0),
                 jax.random.key(1))


def test_rewards_of_the_wrong_length_are_named():
  banel = bj.make_banel(MODEL, CFG)
  state = banel.init(jax.random.key(0), PRIOR)
  x = np.arange(10, dtype=np.int32)
  with pytest.raises(ValueError, match=r"RoundBatch.rewards has shape \(9,\)"):
    banel.update(state, RoundBatch(x, np.zeros(9), np.ones(10, bool), 0.0),
                 jax.random.key(1))
  with pytest.raises(ValueError, match=r"RoundBatch.rewards has shape \(9,\)"):
    jax.jit(banel.update)(state, RoundBatch(x, np.zeros(9), np.ones(10, bool), 0.0),
                          jax.random.key(1))


def test_params_of_another_shape_are_refused_by_init():
  banel = bj.make_banel(MODEL, CFG)
  other = tabular.make_tabular_model(13).init(jax.random.key(0))
  with pytest.raises(ValueError, match=r"has shape \(13,\), model.init gives \(11,\)"):
    banel.init(jax.random.key(0), other)
  with pytest.raises(ValueError, match="model.init gives"):
    jax.jit(banel.init)(jax.random.key(0), other)


def test_integer_params_are_refused_with_a_clear_message():
  banel = bj.make_banel(MODEL, CFG)
  ints = {"logits": jnp.zeros(11, jnp.int32)}
  with pytest.raises(ValueError, match="dtype int32, not a floating type"):
    banel.init(jax.random.key(0), ints)
  with pytest.raises(ValueError, match="dtype int32, not a floating type"):
    bj.BanelRunner(MODEL, ints, TASK.oracle, CFG, progress=False)


# --- weights checkpoints ----------------------------------------------------------

def test_a_wrong_shape_checkpoint_loaded_without_like_is_refused_where_used(tmp_path):
  bj.save_params(tmp_path / "w", tabular.make_tabular_model(13).init(jax.random.key(0)),
                 {"kind": "test"})
  params, _ = bj.load_params(tmp_path / "w")
  with pytest.raises(ValueError, match="model.init gives"):
    bj.BanelRunner(MODEL, params, TASK.oracle, CFG, progress=False)


def test_bytes_changed_in_a_weights_checkpoint_fail_its_checksum(tmp_path):
  params = {"w": jnp.arange(4096, dtype=jnp.float32)}
  bj.save_params(tmp_path / "w", params, {"kind": "test"})
  bj.load_params(tmp_path / "w")  # intact: loads
  files = [p for p in (tmp_path / "w" / "params").rglob("*")
           if p.is_file() and p.stat().st_size > 4096]
  assert files
  data = bytearray(files[0].read_bytes())
  rng = np.random.default_rng(0)
  for i in rng.integers(len(data) // 2, len(data) - 64, size=32):
    data[i] ^= 0xFF
  files[0].write_bytes(bytes(data))
  # the reader fails on the damage, or the checksum catches it: a clear error
  with pytest.raises(bj.CheckpointError, match="changed or damaged"):
    bj.load_params(tmp_path / "w")


def test_a_checkpoint_whose_arrays_changed_fails_its_checksum(tmp_path):
  bj.save_params(tmp_path / "w", {"w": jnp.ones(8)}, {"kind": "test"})
  record = json.loads((tmp_path / "w" / checkpoint.INTEGRITY_FILE).read_text())
  record["sha256"] = "0" * 64
  (tmp_path / "w" / checkpoint.INTEGRITY_FILE).write_text(json.dumps(record))
  with pytest.raises(bj.CheckpointError, match="do not match the SHA-256"):
    bj.load_params(tmp_path / "w")


def test_a_garbled_metadata_file_is_named(tmp_path):
  bj.save_params(tmp_path / "w", {"w": jnp.ones(2)}, {"kind": "test"})
  (tmp_path / "w" / "metadata.json").write_text('{"kind": "te')
  with pytest.raises(bj.CheckpointError, match="metadata.json is not valid JSON"):
    bj.load_params(tmp_path / "w")


# --- request ids: a service that dedupes is charged once ----------------------------

_WORKER = textwrap.dedent("""
    import os, signal, sys
    import banel_jax as bj
    from banel_jax.runtime import ledger as ledger_lib
    from banel_jax.runtime.budget import IdempotentOracle
    from banel_jax.tasks.toy1d import Toy1DTask

    run_dir, store, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    task = Toy1DTask(num_bins=11)
    append = ledger_lib.Ledger.append

    def dying_append(self, *args, **kwargs):
      # the oracle has answered (and charged); the process dies before the fsync
      if self.num_calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
      return append(self, *args, **kwargs)

    if kill_at >= 0:
      ledger_lib.Ledger.append = dying_append
    cfg = bj.BanelConfig(nre_budget=40, samples_per_round=10, failure_batch_size=10,
                         failure_epochs=2, distill_samples=64, distill_batch_size=32,
                         distill_epochs=1, n_eval=20, eval_every=2)
    oracle = IdempotentOracle(task.oracle, store)
    with bj.BanelRunner(task.model(), task.prior_params(), oracle, cfg, seeds=(0, 1),
                        progress=False, run_dir=run_dir) as runner:
      res = runner.run()
    print("RATES", res.final_success_rates(), "CHARGED", oracle.charged,
          "FROM_STORE", oracle.answered_from_store)
""")


@pytest.mark.slow
def test_a_kill_between_answer_and_ledger_charges_a_deduping_oracle_once(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])

  def run(run_dir, store, kill_at):
    return subprocess.run([sys.executable, str(script), str(run_dir), str(store),
                           str(kill_at)], capture_output=True, text=True, env=env,
                          timeout=600)

  killed = run(tmp_path / "run", tmp_path / "service.jsonl", 3)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  charged_before = len((tmp_path / "service.jsonl").read_text().splitlines())
  assert charged_before == 4  # calls 0-3 were charged; call 3 never reached the ledger
  resumed = run(tmp_path / "run", tmp_path / "service.jsonl", -1)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "FROM_STORE 1" in resumed.stdout  # call 3, asked again with the same id
  store = [json.loads(line) for line in
           (tmp_path / "service.jsonl").read_text().splitlines()]
  ids = [r["request"] for r in store]
  assert len(ids) == len(set(ids))  # every request charged exactly once
  calls = {r["call"] for r in bj.read_ledger(tmp_path / "run" / LEDGER_FILE)}
  assert len(ids) == len(calls)
  clean = run(tmp_path / "clean", tmp_path / "clean_service.jsonl", -1)
  assert clean.stdout.split("CHARGED")[0] == resumed.stdout.split("CHARGED")[0]


def test_the_deduping_oracle_answers_a_repeated_request_from_its_store(tmp_path):
  calls = []

  def score(x):
    calls.append(len(x))
    return (np.asarray(x) % 2).astype(np.float32)

  oracle = IdempotentOracle(score, tmp_path / "s.jsonl")
  keeper = bj.BudgetKeeper(oracle, budget=10, run_id="r")
  keeper.evaluate(np.array([[1, 2, 3]]))
  assert keeper.request_id("train", 0) == "r:train:0:1"
  again = oracle(np.array([1, 2, 3]), request_id="r:train:0:0")
  assert again.tolist() == [1.0, 0.0, 1.0] and calls == [3]


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_the_callers_params_survive_a_run_that_donates_its_state(seeds):
  """The runner's ``update`` reuses the round state's buffers; the pretrained
  params the caller passed in are never among them."""
  prior = TASK.prior_params()
  before = np.asarray(prior["logits"]).copy()
  bj.BanelRunner(MODEL, prior, TASK.oracle, CFG, seeds=seeds, progress=False).run()
  np.testing.assert_array_equal(np.asarray(prior["logits"]), before)
