"""Helpers of the crash-safety tests: a tiny toy run, a stub method, test oracles.

``run_worker`` is one run *process* of ``test_resume.py``: a tiny BaNEL run of the
1-D toy on a run directory, which can stop (``pause``) at a chosen moment and
wait there to be killed with SIGKILL by the test:

* ``("start", 1)``: right after the runner opened (and restored) the run dir;
* ``("oracle", k)``: inside this process's k-th oracle call, before it returns;
* ``("step", k)``: at the start of the k-th round this process runs;
* ``("save", k)``: at the start of the k-th checkpoint save (round done,
  metrics written, nothing of the checkpoint yet);
* ``("ckpt_state", k)``, ``("ckpt_host", k)``, ``("ckpt_finalize", k)``: in the
  middle of the k-th checkpoint write: after the state's arrays, before its
  metadata; before the host JSON is written; before orbax renames the finished
  temporary directory into place.

The test oracle appends every call to a JSON-lines log *when the call returns*:
an evaluation counts as made only once its result was handed back (a process
killed inside a call made none, and the resumed run asks again).

``run_comparison`` is one process of ``test_baselines_resume.py``: ``banel
compare`` with that logging oracle, pausing inside its k-th oracle call.
``kill_when_paused`` waits for a process to pause and kills it.
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from banel_jax import BanelConfig, BanelRunner, make_banel
from banel_jax.core.posterior import PosteriorSampleInfo
from banel_jax.tasks.toy1d import Toy1DTask

TASK = Toy1DTask(num_bins=11)
MODEL = TASK.model()  # one model object: runners of it share compiled functions
SEEDS = (0, 1)
# 5 rounds: 10, 10, 10, 10, 5 samples per seed; 11 oracle calls (6 evaluations).
CONFIG = BanelConfig(nre_budget=45, samples_per_round=10, failure_batch_size=5,
                     failure_epochs=2, distill_samples=32, distill_batch_size=16,
                     distill_epochs=1, n_eval=10)


@functools.lru_cache(maxsize=None)
def tiny_banel():
  """One BaNEL bundle of ``CONFIG`` per process: runners given it share its
  compiled functions, so the in-process tests compile it once."""
  return make_banel(MODEL, CONFIG)


@functools.lru_cache(maxsize=None)
def context():
  """A forkserver context: run processes fork from a server that imported the
  heavy modules once. (It cannot preload this module: the server ignores the
  test's ``sys.path``.)"""
  ctx = multiprocessing.get_context("forkserver")
  ctx.set_forkserver_preload(["banel_jax", "banel_jax.tasks.toy1d",
                              "orbax.checkpoint", "flax.struct"])
  return ctx


@functools.lru_cache(maxsize=None)
def cache_dir() -> str:
  """A persistent JAX compilation cache shared by the run processes of this test
  session, so that only the first process compiles ``CONFIG``'s programs."""
  path = tempfile.mkdtemp(prefix="banel_jax_test_cache_")
  atexit.register(shutil.rmtree, path, True)
  return path


def _use_cache(path: str) -> None:
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# --- a stub method: the driver's contract with trivial, fast-compiling learning ---

class StubState(struct.PyTreeNode):
  """State of :func:`make_stub_method`: what a baseline's state looks like."""

  logits: jax.Array
  total: jax.Array
  round: jax.Array
  nre: jax.Array
  key: jax.Array


def make_stub_method(num_categories: int = 11):
  """A method bundle whose update shifts logits by the failures it saw.

  Cheap to compile at any batch size, deterministic, and sensitive to every
  reward and sample (so replays that differ would show).
  """

  def init(key, prior_params):
    return StubState(logits=jnp.asarray(prior_params["logits"], jnp.float32),
                     total=jnp.zeros((), jnp.float32), round=jnp.zeros((), jnp.int32),
                     nre=jnp.zeros((), jnp.int32), key=key)

  def propose(state, key, n):
    # a hash of the key's bits instead of jax.random: XLA compiles threefry
    # slowly on CPU, and the stub is compiled for many batch sizes
    k = jax.random.key_data(key).astype(jnp.uint32).reshape(-1)
    h = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(2654435761) + k[0]
    h = (h ^ (h >> 15)) * jnp.uint32(0x2C1B3C6D) + k[-1]
    h = h ^ (h >> 12)
    shift = jnp.argmax(state.logits).astype(jnp.uint32)
    x = ((h + shift) % jnp.uint32(num_categories)).astype(jnp.int32)
    one = jnp.asarray(n, jnp.int32)
    return x, PosteriorSampleInfo(n_filled=one, n_drawn=one, n_accepted=one)

  def update(state, batch, key):
    del key
    ev = batch.evaluated.astype(jnp.float32)
    fail = ev * (1.0 - batch.rewards)
    counts = jnp.zeros_like(state.logits).at[batch.x].add(fail)
    n = jnp.sum(batch.evaluated.astype(jnp.int32))
    new = state.replace(logits=state.logits - 0.1 * counts,
                        total=state.total + jnp.sum(batch.x * ev),
                        round=state.round + 1, nre=state.nre + n)
    return new, {"n_evaluated": n, "n_successes": jnp.sum(ev * batch.rewards)}

  class Stub:
    name = "stub"

  stub = Stub()
  stub.init, stub.propose, stub.update = init, propose, update
  return stub


# --- test oracles --------------------------------------------------------------------

def _append_line(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_log(path: str) -> list[dict]:
  """The completed calls an oracle logged, in order."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class LoggingOracle:
  """An oracle (default the toy's) that logs each call when it returns.

  Args:
    log_path: JSON-lines file of completed calls (``{"pid", "queries"}``).
    pause_at: pause (forever) inside this process's ``pause_at``-th call.
    on_pause: called to pause.
    oracle: the oracle answering the calls (default ``TASK.oracle``).
  """

  def __init__(self, log_path: str, pause_at: int | None = None, on_pause=None,
               oracle=None):
    self.log_path = log_path
    self.pause_at = pause_at
    self.on_pause = on_pause
    self.oracle = TASK.oracle if oracle is None else oracle
    self.calls = 0

  def __call__(self, x):
    self.calls += 1
    if self.calls == self.pause_at:
      self.on_pause()
    x = np.asarray(x)
    r = self.oracle(x)
    _append_line(self.log_path, {"pid": os.getpid(), "queries": x.tolist()})
    return r


# --- the worker process --------------------------------------------------------------

def _pause_forever(marker: str):
  tmp = marker + ".tmp"
  with open(tmp, "w") as f:
    f.write(str(os.getpid()))
  os.replace(tmp, marker)
  while True:
    time.sleep(1)


def _patch_checkpoint_writes(kind: str, at: int, pause):
  """Pauses inside orbax's write of checkpoint save number ``at``."""
  from orbax.checkpoint._src.handlers import base_pytree_checkpoint_handler as bp
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
  from orbax.checkpoint._src.path import atomicity

  from banel_jax.runtime import run_dir

  saves = [0]
  orig_save = run_dir.RunDirectory.save

  def save(self, *args, **kwargs):
    saves[0] += 1
    return orig_save(self, *args, **kwargs)

  run_dir.RunDirectory.save = save
  target = {"ckpt_state": (bp.BasePyTreeCheckpointHandler, "_write_metadata_file"),
            "ckpt_host": (jh.JsonCheckpointHandler, "_save_fn"),
            "ckpt_finalize": (atomicity.AtomicRenameTemporaryPath, "finalize")}[kind]
  cls, name = target
  orig = getattr(cls, name)

  async def wrapper(self, *args, **kwargs):
    if saves[0] == at:
      pause()
    return await orig(self, *args, **kwargs)

  setattr(cls, name, wrapper)


def run_worker(run_dir: str, oracle_log: str, pause, marker: str, cache_dir: str,
               out: str | None = None) -> None:
  """One run process (see the module docstring); writes ``out`` when done."""
  _use_cache(cache_dir)
  kind, at = pause if pause else (None, None)

  def do_pause():
    _pause_forever(marker)

  if kind in ("ckpt_state", "ckpt_host", "ckpt_finalize"):
    _patch_checkpoint_writes(kind, at, do_pause)
  if kind == "save":
    from banel_jax.runtime import run_dir as rd
    orig_save, saves = rd.RunDirectory.save, [0]

    def save(self, *args, **kwargs):
      saves[0] += 1
      if saves[0] == at:
        do_pause()
      return orig_save(self, *args, **kwargs)

    rd.RunDirectory.save = save
  oracle = LoggingOracle(oracle_log, at if kind == "oracle" else None, do_pause)
  runner = BanelRunner(MODEL, TASK.prior_params(), oracle, CONFIG, SEEDS,
                       progress=False, run_dir=run_dir)
  if kind == "start":
    do_pause()
  if kind == "step":
    orig_step, steps = runner.step, [0]

    def step():
      steps[0] += 1
      if steps[0] == at:
        do_pause()
      return orig_step()

    runner.step = step
  result = runner.run()
  runner.close()
  if out is not None:
    with open(out, "w") as f:
      json.dump({"nre_spent": result.nre_spent, "eval_calls": result.eval_calls,
                 "replayed_calls": runner.keeper.replayed_calls,
                 "n_successes": len(result.successes)}, f)


def run_all_success(out: str, cache_dir: str) -> None:
  """A run process whose oracle accepts everything; writes its result to ``out``."""
  _use_cache(cache_dir)
  runner = BanelRunner(MODEL, TASK.prior_params(),
                       lambda x: np.ones(np.asarray(x).shape[0], np.float32), CONFIG,
                       SEEDS, progress=False)
  result = runner.run()
  with open(out, "w") as f:
    json.dump({"history": result.history, "nre_spent": result.nre_spent,
               "n_successes": len(result.successes),
               "valid": np.asarray(result.states.regions.valid).tolist(),
               "size": np.asarray(result.states.regions.size).tolist()}, f)


# --- banel compare as a run process ----------------------------------------------------


def run_comparison(argv: list[str], oracle_log: str, pause_at: int | None,
                   marker: str, cache_dir: str) -> None:
  """``banel compare argv`` in this process (:mod:`banel_jax.cli`), with the
  task's oracle wrapped in a :class:`LoggingOracle` that pauses inside its
  ``pause_at``-th call (``None``: run to the end)."""
  _use_cache(cache_dir)
  from banel_jax import cli
  from banel_jax.experiments import compare

  def with_logging(make_setup):
    def make(config):
      setup = make_setup(config)
      return setup._replace(oracle=LoggingOracle(
          oracle_log, pause_at, lambda: _pause_forever(marker), oracle=setup.oracle))
    return make

  compare.SETUPS = {k: with_logging(v) for k, v in compare.SETUPS.items()}
  cli.run(compare.COMMAND, argv)


def kill_when_paused(process, marker, what: str, wait_s: float) -> None:
  """Waits until ``process`` wrote ``marker`` (it paused), then SIGKILLs it.

  Fails the test if the process exits first or does not pause in ``wait_s``.
  """
  import pytest
  deadline = time.monotonic() + wait_s
  while not os.path.exists(marker):
    if not process.is_alive():
      pytest.fail(f"{what} exited (code {process.exitcode}) before pausing")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f"{what} did not pause in {wait_s} s")
    time.sleep(0.02)
  os.kill(process.pid, signal.SIGKILL)
  process.join(30)
  assert process.exitcode == -signal.SIGKILL, (what, process.exitcode)
