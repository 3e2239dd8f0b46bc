"""What every multi-method study shares: tasks, resumable runs, rates, intervals.

A study (``banel compare``, ``banel mnist``, ``banel suite``) runs several
methods on a task, each for several seeds side by side, in resumable run
directories, and reports final and best-so-far success rates against one
measured pretrained rate. This module holds the parts that do not depend on
the study:

* :class:`TaskSetup`: what a study needs from a task (model, pretrained
  params, oracle, featurisers for the baselines);
* :func:`run_method`: one method for some seeds through
  :class:`~banel_jax.BanelRunner`, optionally in a run directory whose
  ``result.json`` makes a rerun load instead of run (and a changed setting
  refused with the differing fields named);
* :func:`fresh_samples`, :func:`measure_rate`: rates on many fresh samples,
  counted apart from the NRE budget;
* :func:`bootstrap_ci`: percentile bootstrap intervals over seeds;
* :func:`write_json_atomic`, :func:`load_checked`: the files that make all of
  the above resumable.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from banel_jax.core.config import jsonable

RESULT_FILE = "result.json"
# A run that stopped on its own failure mode (AcceptanceRateError,
# NonFiniteError): the error, with the settings, so that a rerun of the same
# settings raises it again at once instead of replaying the rounds to the stop.
STOPPED_FILE = "stopped.json"
# How a stop raised again from a record names where it was recorded.
STOPPED_EARLIER = " (stopped earlier: "


@functools.cache
def stop_errors() -> dict:
  """A method's own failure modes mid-run, by name:
  :class:`~banel_jax.core.posterior.AcceptanceRateError` and
  :class:`~banel_jax.runtime.driver.NonFiniteError` (a result, not a crash:
  studies name the stop and run the other methods on)."""
  from banel_jax.core.posterior import AcceptanceRateError
  from banel_jax.runtime.driver import NonFiniteError
  return {"AcceptanceRateError": AcceptanceRateError,
          "NonFiniteError": NonFiniteError}


class TaskSetup(NamedTuple):
  """What a study needs from a task.

  Attributes:
    name: task name.
    model: the generator's family.
    prior_params: pretrained params.
    oracle: the reward oracle (host).
    featurize: RND's input featuriser.
    num_values: values per sample element (the exact-count table size for
      scalars).
    malformed: ``x -> bool[n]`` malformed samples, or ``None`` (not defined).
    exact_rate: ``state_of_one_seed -> float`` exact success rate, or ``None``.
    token_log_prob, token_mask: unlikelihood's token form (``None``: sequence).
    fast_prior_model: a model with the same prior distribution and a faster
      sampler for exact rejection's many candidates (or ``model``).
    methods: methods the task supports.
    prior_exact_rate: the pretrained model's exact success rate, or ``None``.
    support: a jit-able ``x -> bool[n]`` free validity check (``False`` where
      the reward is 0 whatever the oracle says), or ``None``; given to BaNEL in
      the ``banel_support`` method only.
  """

  name: str
  model: Any
  prior_params: Any
  oracle: Callable
  featurize: Callable
  num_values: int
  malformed: Callable | None
  exact_rate: Callable | None
  token_log_prob: Callable | None
  token_mask: Callable | None
  fast_prior_model: Any
  methods: tuple[str, ...]
  prior_exact_rate: float | None = None
  support: Callable | None = None


def write_json_atomic(path: str | os.PathLike, obj) -> None:
  """Writes ``obj`` (made JSON-ready) to ``path`` so that a kill leaves either
  the old file or the new one, never half of one."""
  tmp = f"{os.fspath(path)}.tmp"
  with open(tmp, "w") as f:
    json.dump(jsonable(obj), f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load_checked(path: str | os.PathLike, settings: dict, what: str) -> Any:
  """``path``'s ``"result"`` if its ``"settings"`` equal ``settings``; ``None``
  when the file is missing.

  Raises:
    RunDirError: the file was written with other settings (the differing
      fields are named).
  """
  from banel_jax.runtime.run_dir import RunDirError, diff_records
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  problems = diff_records(saved["settings"], jsonable(settings))
  if problems:
    raise RunDirError(f"{path} ({what}) was written with other settings; differing "
                      f"fields: {'; '.join(problems)}. Use another --run-dir (or "
                      "--out), or the original settings to resume.")
  return saved["result"]


def cached(path: str | os.PathLike | None, settings: dict, what: str,
           compute: Callable[[], Any]) -> Any:
  """``compute()``, kept in ``path`` with ``settings`` (``None``: not kept); a
  later call with the same settings loads it instead of computing."""
  if path is not None:
    done = load_checked(path, settings, what)
    if done is not None:
      return done
  out = compute()
  if path is not None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    write_json_atomic(path, {"settings": settings, "result": out})
  return out


def run_method(model, prior_params, oracle: Callable, config, seeds: Sequence[int],
               *, settings: dict, what: str, method: Any = None,
               extensions: Sequence = (), run_dir: str | os.PathLike | None = None,
               on_round: Callable | None = None, progress: bool = True,
               keep_checkpoints: int = 3,
               final: Callable[[Any, Any], dict] | None = None,
               record_as: str = "study", load_only: bool = False) -> dict | None:
  """Runs one method for ``seeds`` side by side; returns its record.

  Args:
    model, prior_params, oracle, config, seeds, method, extensions, on_round,
      progress, keep_checkpoints: as :class:`~banel_jax.BanelRunner` takes them
      (``method=None`` is BaNEL).
    settings: JSON-ready description of everything the result depends on;
      recorded in the run directory and compared on a rerun.
    what: the run's name in messages (e.g. ``"RND's result"``).
    run_dir: optional run directory: the run checkpoints every round and
      ledgers every oracle call there, and ``result.json`` is written when it
      finishes. A directory holding a finished run returns its result (with
      ``"loaded_from"``) without running anything; one holding an unfinished
      run resumes it. A run that stops on its own failure mode
      (:class:`~banel_jax.core.posterior.AcceptanceRateError`,
      :class:`~banel_jax.runtime.driver.NonFiniteError`) writes
      :data:`STOPPED_FILE` there, and a rerun of the same settings raises the
      same error at once (remove the file to run it again). The error
      carries the per-round records before the stop as ``err.history``.
    final: optional ``(runner, result) -> dict`` run after the last round
      (e.g. a large final evaluation; ``result`` is the run's
      :class:`~banel_jax.runtime.driver.RunResult`); its entries join the
      record, and its time is ``"final_s"``.
    record_as: the key under which ``settings`` join the run directory's
      ``config.json``.
    load_only: return a finished run (or raise a recorded stop) from
      ``run_dir``, and ``None`` instead of running or resuming one.

  Returns:
    ``{"history", "final_success_rate", "best_success_rate", "nre_spent",
    "frozen_at", "eval_calls", "n_successes_found_in_training", "wall_time_s",
    "final_s", ...final's entries}``; ``wall_time_s`` is the run's own time summed over
    resumed processes, plus this opening.

  Raises:
    RunDirError: ``run_dir`` holds a run of other settings.
  """
  from banel_jax import BanelRunner
  result_path = None if run_dir is None else os.path.join(run_dir, RESULT_FILE)
  stops = stop_errors()
  stopped_path = None if run_dir is None else os.path.join(run_dir, STOPPED_FILE)
  if result_path is not None:
    done = load_checked(result_path, settings, what)
    if done is not None:
      return {**done, "loaded_from": result_path}
    stop = load_checked(stopped_path, settings, what)
    if stop is not None:  # the same settings stop the same way: say so at once
      err = stops[stop["error"]](f"{stop['message']}{STOPPED_EARLIER}"
                                 f"{stopped_path}; remove it to run again)")
      err.history = stop.get("history") or _metrics_history(run_dir)
      raise err
  if load_only:
    return None
  t0 = time.perf_counter()
  runner = BanelRunner(model, prior_params, oracle, config, list(seeds),
                       method=method, extensions=tuple(extensions),
                       progress=progress, on_round=on_round, run_dir=run_dir,
                       keep_checkpoints=keep_checkpoints,
                       extra_config=None if run_dir is None else {record_as: settings})
  t_open = time.perf_counter() - t0
  try:
    try:
      result = runner.run()
    except tuple(stops.values()) as err:
      # The rounds before the stop are a result too (a method may climb, then
      # stop): they travel with the error and are kept with the stop.
      err.history = list(runner.history)
      if stopped_path is not None:
        write_json_atomic(stopped_path, {"settings": settings, "result": {
            "error": type(err).__name__, "message": str(err),
            "history": err.history}})
      raise
    t1 = time.perf_counter()
    extra = final(runner, result) if final is not None else {}
    final_s = time.perf_counter() - t1
  finally:
    runner.close()
    release_compiled()
  out = {"history": result.history,
         "final_success_rate": result.final_success_rates(),
         "best_success_rate": result.best_success_rates(),
         "nre_spent": result.nre_spent, "frozen_at": result.frozen_at,
         "eval_calls": result.eval_calls,
         "n_successes_found_in_training": len(result.successes),
         "wall_time_s": result.wall_time_s + t_open, "final_s": final_s, **extra}
  if result_path is not None:
    write_json_atomic(result_path, {"settings": settings, "result": out})
  return out


def release_compiled() -> None:
  """Drops JAX's compiled programs (``jax.clear_caches``) and this module's
  cached ones; called after every run of :func:`run_method`.

  Every run jit-compiles its own closures, and each compiled program keeps its
  memory mappings while a cache holds it (about 3,000 per addition-attack
  run). A process that runs method after method (a tuning grid, a table, a
  scaling study) reached the kernel's limit on mappings (``vm.max_map_count``,
  65,530 by default) after about 27 runs and died in LLVM with "Cannot
  allocate memory" while most of the RAM was free. Releasing them between runs
  keeps the count flat; the next run compiles its own programs anyway.
  """
  import jax
  seed_propose.cache_clear()
  jax.clear_caches()


def _metrics_history(run_dir: str | os.PathLike) -> list[dict]:
  """The per-round records in ``run_dir``'s metrics file (a stop recorded
  without them); empty without the file."""
  from banel_jax.runtime.run_dir import METRICS_FILE
  path = os.path.join(run_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@functools.lru_cache(maxsize=32)
def seed_propose(propose: Callable) -> Callable:
  """``jit(vmap(propose))`` over seeds (one compilation per method bundle)."""
  import jax
  return jax.jit(jax.vmap(propose, in_axes=(0, 0, None)), static_argnums=2)


def fresh_samples(runner, n: int, chunk: int, key: int) -> Iterator[np.ndarray]:
  """``n`` fresh samples of every seed's final proposal, in chunks.

  Yields ``x[n_seeds, size, ...]`` with ``size <= chunk`` (the last chunk is
  cut to reach exactly ``n``). Each seed's stream is keyed by ``fold_in(key,
  seed)``, so it does not depend on the other seeds in the batch.
  """
  import jax
  propose = seed_propose(runner.banel.propose)
  roots = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(key), s))(
      np.asarray(runner.seeds, np.uint32))
  chunk = min(chunk, n)
  done = 0
  for i in range(-(-n // chunk)):
    size = min(chunk, n - done)
    keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(roots)
    yield np.asarray(propose(runner.states, keys, chunk)[0])[:, :size]
    done += size


def final_rates(runner, oracle: Callable, n: int, chunk: int, key: int) -> list[dict]:
  """Every seed's success rate on ``n`` fresh samples (Clopper-Pearson dicts;
  rates below 1e-3 need >= 200,000 for a useful interval). Counted apart
  from the NRE budget."""
  from banel_jax.core.metrics import clopper_pearson
  hits = np.zeros(len(runner.seeds), np.int64)
  total = 0
  for x in fresh_samples(runner, n, chunk, key):
    s, size = x.shape[:2]
    r = np.asarray(oracle(x.reshape((-1,) + x.shape[2:]))).reshape(s, size)
    hits += (r > 0).sum(axis=1).astype(np.int64)
    total += size
  return [clopper_pearson(int(h), total).as_dict() for h in hits]


def prior_samples(model, params, n: int, chunk: int, key: int) -> Iterator[np.ndarray]:
  """``n`` samples of ``model`` at ``params``, in chunks of at most ``chunk``."""
  import jax
  sample = _jit_sample(model.sample)
  chunk = min(chunk, n)
  done = 0
  for i in range(-(-n // chunk)):
    size = min(chunk, n - done)
    yield np.asarray(sample(params, jax.random.fold_in(jax.random.key(key), i),
                            chunk))[:size]
    done += size


@functools.lru_cache(maxsize=32)
def _jit_sample(sample: Callable) -> Callable:
  import jax
  return jax.jit(sample, static_argnums=2)


def measure_rate(model, params, oracle: Callable, n: int, chunk: int = 8192,
                 key: int = 10_000) -> dict:
  """The success rate of ``model`` at ``params`` on ``n`` fresh samples:
  ``{"rate", "estimate" (Clopper-Pearson), "samples"}``."""
  from banel_jax.core.metrics import clopper_pearson
  hits = total = 0
  for x in prior_samples(model, params, n, chunk, key):
    hits += int((np.asarray(oracle(x)) > 0).sum())
    total += len(x)
  est = clopper_pearson(hits, total)
  return {"rate": est.rate, "estimate": est.as_dict(), "samples": total}


def bootstrap_ci(values, statistic: Callable = np.mean, n_boot: int = 10_000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
  """Percentile bootstrap interval of ``statistic`` of ``values`` (over seeds).

  >>> bootstrap_ci([1.0, 1.0, 1.0])
  (1.0, 1.0)
  >>> lo, hi = bootstrap_ci([0.0, 1.0, 2.0, 3.0], np.median)
  >>> 0.0 <= lo <= 1.5 <= hi <= 3.0
  True
  """
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, v.size, size=(n_boot, v.size))
  stats = statistic(v[idx], axis=1)
  lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
  return float(lo), float(hi)
