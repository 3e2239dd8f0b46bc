"""Host driver: rounds of propose → oracle → update until the NRE budget is spent.

The only host work per round is the oracle call and bookkeeping: sampling and
learning are two compiled, seed-vmapped programs that compile once per run.

With a ``run_dir`` a run survives being killed at any moment: every oracle call
is in the ledger on disk before it is used, every round ends with an orbax
checkpoint, and rerunning with the same ``run_dir`` continues from the newest
good checkpoint, answering the calls made since then from the ledger instead of
the oracle (round keys are ``fold_in(root, round)``, so the resumed run asks the
very same queries). See :mod:`banel_jax.runtime.run_dir` and :mod:`banel_jax.runtime.ledger`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
import uuid
import warnings
import weakref
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from banel_jax.core import batching, posterior
from banel_jax.core.banel import BanelState, make_banel
from banel_jax.core.config import BanelConfig, config_to_dict, jsonable
from banel_jax.core.extension import Extension, describe
from banel_jax.core.metrics import clopper_pearson
from banel_jax.core.protocol import RoundBatch, check_params, round_keys
from banel_jax.core.types import GenerativeModel, Oracle, Params
from banel_jax.runtime import frozen as frozen_lib
from banel_jax.runtime import sharding as seed_sharding
from banel_jax.runtime.budget import BudgetKeeper, OracleError, OraclePolicy
from banel_jax.runtime.ledger import Ledger
from banel_jax.runtime.run_dir import RunDirectory


class NonFiniteError(FloatingPointError):
  """A model produced NaN or infinite values (log-likelihoods or parameters)."""


@dataclasses.dataclass
class RunResult:
  """What a run returns.

  Attributes:
    history: one record per round (round 0 is the pretrained model's evaluation).
    states: final :class:`BanelState`, every leaf with a leading seed axis.
    successes: successes found during training (reported, not learned from).
    nre_spent: NRE per seed.
    eval_calls: oracle calls spent on evaluation (apart from the NRE).
    wall_time_s: total wall time (summed over resumed processes).
    run_dir: the run directory, if the run had one.
    frozen_at: per seed, the round in which it froze (its distillation found
      too few samples outside its regions, see :class:`BanelRunner`), or
      ``None``; its final state is the one of the round before.
  """

  config: BanelConfig
  seeds: list[int]
  history: list[dict]
  states: BanelState
  successes: list
  nre_spent: list[int]
  eval_calls: int
  wall_time_s: float
  run_dir: str | None = None
  frozen_at: list[int | None] | None = None

  def final_success_rates(self) -> list[float]:
    last = [h for h in self.history if "success_rate" in h][-1]
    return list(last["success_rate"])

  def best_success_rates(self) -> list[float]:
    rates = np.array([h["success_rate"] for h in self.history
                      if "success_rate" in h and h["round"] > 0])
    return rates.max(axis=0).tolist()


# jit(vmap(...)) of a method's functions, shared by every runner of that method
# bundle (keyed weakly by its ``update`` function; then by mesh, None for one
# device, and the model's frozen-params binder, None for none), so that several
# runners of one bundle (e.g. a run resumed in the same process) compile once.
_COMPILED: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()
_ROUND_KEYS = jax.jit(batching.vmap(round_keys))


def _seed_jit(fn, in_axes, mesh, static_argnums=(), donate_argnums=(), bind=None):
  """``jit`` of ``fn`` mapped over the leading seed axis of the ``in_axes == 0``
  arguments (``batching.vmap``: a lone seed runs unbatched, as XLA's CPU
  programs with a batch axis of size 1 ran up to 2.8x slower).

  With a ``mesh``, each device runs the mapped function on its own seeds
  (``shard_map``), so one seed per device is a lone seed too; left to the
  partitioner, a device's share kept a batch axis of size 1.

  ``donate_argnums``: arguments whose buffers the call may reuse for its
  outputs (the round state, replaced by ``update``'s result: its region bank
  holds two parameter copies per slot and seed, so a round would otherwise
  hold two banks at once).

  ``bind``: a model's :class:`~banel_jax.runtime.frozen.Frozen` binder; the
  compiled function then takes the frozen params as its first argument, not
  mapped over the seeds (replicated on every device of the mesh), and ``fn``
  is traced with them bound (so they are no constants of the program).
  """
  if bind is not None:
    fn = frozen_lib.bound(fn, bind)
    in_axes = (None,) + tuple(in_axes)
    static_argnums = frozen_lib.shift_argnums(static_argnums)
    donate_argnums = frozen_lib.shift_argnums(donate_argnums)
  local = batching.vmap(fn, in_axes=in_axes)
  if mesh is None:
    return jax.jit(local, static_argnums=static_argnums,
                   donate_argnums=donate_argnums)
  split = PartitionSpec(seed_sharding.SEED_AXIS)

  def call(*args):
    dynamic = [i for i in range(len(args)) if i not in static_argnums]

    def per_device(*values):
      full = list(args)
      for i, v in zip(dynamic, values):
        full[i] = v
      return local(*full)

    specs = tuple(split if in_axes[i] == 0 else PartitionSpec() for i in dynamic)
    return seed_sharding.shard_map(per_device, mesh, specs, split)(
        *(args[i] for i in dynamic))

  return jax.jit(call, static_argnums=static_argnums, donate_argnums=donate_argnums)


def _update_or_hold(update: Callable, floor: float) -> Callable:
  """``(state, batch, key, hold) -> (state', metrics)``: ``update``, except
  that a seed given ``hold`` or whose distillation accepted fewer than
  ``floor`` of its samples keeps its state (only its round advances, so that
  every seed stays on the same round). ``metrics["held"]`` says which.

  The region bank is kept by its ``valid`` and ``size`` alone: the slot the
  round wrote lies past the kept ``size`` and is ignored, so the program never
  holds two banks (their parameter copies are most of a state's memory)."""

  def update_or_hold(state, batch, key, hold):
    new, metrics = update(state, batch, key)
    hold = hold | (metrics["distill_accept_rate"] < floor)

    def pick(old, fresh):
      if jax.dtypes.issubdtype(old.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jnp.where(
            hold, jax.random.key_data(old), jax.random.key_data(fresh)),
            impl=jax.random.key_impl(old))
      return jnp.where(hold, old, fresh)

    regions = new.regions.replace(valid=pick(state.regions.valid, new.regions.valid),
                                  size=pick(state.regions.size, new.regions.size))
    kept = jax.tree.map(pick, state.replace(regions=None), new.replace(regions=None))
    return (kept.replace(round=new.round, regions=regions),
            {**metrics, "held": hold})

  return update_or_hold


def _floor_fix(config) -> str:
  """The setting to lower when distillation falls below the acceptance floor."""
  return ("lower calibrated_reject_fraction (each region rejects that share of "
          "the proposal and the shares compound)" if config.tau_mode == "calibrated"
          else "lower filter_factor or use tau_mode='calibrated'")


def _compiled(method, mesh=None, bind=None, hold_floor=None) -> dict:
  """The method's seed-mapped ``init``, ``propose`` and ``update``; with a
  ``bind``, each takes the model's frozen params first (see :func:`_seed_jit`).
  With a ``hold_floor``, also ``update_or_hold`` (:func:`_update_or_hold`)."""
  try:
    by_mesh = _COMPILED.setdefault(method.update, {})
  except TypeError:  # not weak-referenceable
    by_mesh = {}
  fns = by_mesh.get((mesh, bind))
  if fns is None:
    fns = {"init": _seed_jit(method.init, (0, None), mesh, bind=bind),
           "propose": _seed_jit(method.propose, (0, 0, None), mesh,
                                static_argnums=(2,), bind=bind),
           "update": _seed_jit(method.update, (0, 0, 0), mesh, donate_argnums=(0,),
                               bind=bind)}
    by_mesh[(mesh, bind)] = fns
  if hold_floor is not None and ("update_or_hold", hold_floor) not in fns:
    fns[("update_or_hold", hold_floor)] = _seed_jit(
        _update_or_hold(method.update, hold_floor), (0, 0, 0, 0), mesh,
        donate_argnums=(0,), bind=bind)
  return fns


@functools.lru_cache(maxsize=8)
def _cached_banel(model: GenerativeModel, config: BanelConfig, extensions: tuple):
  return make_banel(model, config, extensions)


def _default_method(model: GenerativeModel, config: BanelConfig, extensions=()):
  """``make_banel(model, config, extensions)``, one bundle per (model, config,
  extensions), so that runners of the same run in one session (e.g. resuming it)
  share compilations."""
  extensions = tuple(extensions)
  try:
    return _cached_banel(model, config, extensions)
  except TypeError:  # unhashable model, config or extension
    return make_banel(model, config, extensions)


def _bound_jit(fn: Callable, bind: Callable | None) -> Callable:
  """``jax.jit(fn)``; with a frozen-params ``bind``, of ``(frozen_params,
  *args)`` with them bound while ``fn`` is traced."""
  return jax.jit(fn if bind is None else frozen_lib.bound(fn, bind))


@functools.lru_cache(maxsize=16)
def _jitted_prior_sampler(sample: Callable, log_prob: Callable,
                          bind: Callable | None = None) -> Callable:
  def sample_and_score(params, key):
    x = sample(params, key, 8)
    return x, log_prob(params, x)

  return _bound_jit(sample_and_score, bind)


def _prior_sampler(model: GenerativeModel, bind: Callable | None = None) -> Callable:
  """``jit((params, key) -> (x[8], log_prob(params, x)))``, one per model (with a
  ``bind``, of ``(frozen_params, params, key)``)."""
  try:
    return _jitted_prior_sampler(model.sample, model.log_prob, bind)
  except TypeError:  # unhashable functions
    return _jitted_prior_sampler.__wrapped__(model.sample, model.log_prob, bind)


def _path_str(path) -> str:
  return jax.tree_util.keystr(path) or "(root)"


# Per-round diagnostics the runner records (besides the method's own metrics):
# signals of a collapsing or stalling run that need no successful sample.
DIAGNOSTICS = {
    "distinct_share": "distinct queries among each seed's scored ones, over the "
                      "number scored (a proposal settling on a few failing "
                      "queries drives it toward 0)",
    "prior_mass_in_regions": "BaNEL: share of fresh samples of the pretrained model "
                             "inside the union of the regions (how much of the "
                             "prior the failures have ruled out)",
    "distill_accept_rate": "BaNEL, distilled: share of the proposal's distillation "
                           "samples outside the regions",
    "proposal_entropy": "BaNEL: estimate of the proposal's entropy in nats, "
                        "-mean log q(x) over the round's drawn samples (exact "
                        "mode: q is the prior restricted to the outside of the "
                        "regions, log q = log p0 - log acceptance); a collapsing "
                        "proposal drives it down",
}
DIAGNOSTIC_SAMPLES = 1024  # fresh prior samples behind prior_mass_in_regions


def distinct_shares(x: np.ndarray, evaluated: np.ndarray) -> list[float | None]:
  """Per seed: distinct rows among the scored samples / the number scored
  (``None`` for a seed that scored none).

  >>> x = np.array([[[1, 2], [1, 2], [3, 4], [0, 0]]])
  >>> distinct_shares(x, np.array([[True, True, True, False]]))
  [0.6666666666666666]
  """
  out = []
  for s in range(x.shape[0]):
    rows = x[s][evaluated[s]]
    n = len(rows)
    out.append(len(np.unique(rows.reshape(n, -1), axis=0)) / n if n else None)
  return out


@functools.lru_cache(maxsize=64)
def _prior_in_regions_fn(model, config, bind=None):
  """``(states, keys) -> f32[S]``: the share of :data:`DIAGNOSTIC_SAMPLES`
  fresh pretrained samples inside each seed's regions. Its key is folded from
  the round's evaluation key, so it draws nothing from the run's own streams.
  With a frozen-params ``bind``: ``(frozen_params, states, keys)``."""

  def one(state, key):
    x = model.sample(state.prior_params, jax.random.fold_in(key, 0x5EED), DIAGNOSTIC_SAMPLES)
    inside = posterior.rejection_mask(model, state.regions, x, config.region_strategy)
    return jnp.mean(inside.astype(jnp.float32))

  return _bound_jit(jax.vmap(one), bind)


@functools.lru_cache(maxsize=64)
def _proposal_entropy_fn(model, bind=None):
  """``(states, x, log_norm) -> f32[S]``: each seed's Monte Carlo estimate of
  its proposal's entropy, ``log_norm - mean log p_proposal(x)`` over the
  round's samples ``x`` drawn from it (``log_norm``: the log acceptance of
  rejection sampling, 0 in distilled mode). With a frozen-params ``bind``:
  ``(frozen_params, states, x, log_norm)``."""

  def one(state, x, log_norm):
    return log_norm - jnp.mean(model.log_prob(state.proposal.params, x))

  return _bound_jit(jax.vmap(one), bind)


class BanelRunner:
  """Runs BaNEL for several seeds side by side, one round per :meth:`step`.

  Args:
    model: the generator's family: a
      :class:`~banel_jax.core.types.GenerativeModel`, or a wrapper with a
      :class:`~banel_jax.runtime.frozen.Frozen` hook (``.model`` and
      ``.frozen``), such as a :class:`~banel_jax.models.lora.LoraModel`: the
      run then trains ``wrapper.model``'s params (e.g. LoRA adapters) and
      passes the frozen params (the base) to every program it compiles as an
      argument, not as constants embedded in each; they are not part of the
      state, so never checkpointed. :attr:`model` is ``wrapper.model``.
    prior_params: pretrained params ``theta_0`` (for a LoRA model: the
      adapters, e.g. ``lm.model.init(key)``, which stand for the base).
    oracle: batched host callable ``oracle(x[n, ...]) -> rewards[n]`` in {0, 1}.
    config: the run's :class:`BanelConfig`.
    seeds: one integer per seed; seeds run under ``vmap`` in one program.
    metrics_path: optional JSON-lines file, one record per round (appended; with
      a ``run_dir``, rewritten from the restored history when the run resumes).
    progress: show a progress bar over rounds (``tqdm``).
    on_round: optional ``callback(runner, record)`` that may add entries to the
      round's record before it is written. It may read the round's samples in
      :attr:`round_samples`, which hold the same arrays whether the oracle
      answered the round or a resumed run replayed it from the ledger (so
      diagnostics computed from them do not depend on where a run was resumed).
    method: optional bundle with the same round signature as
      :class:`~banel_jax.core.banel.Banel` (``init(key, prior_params)``,
      ``propose(state, key, n)``, ``update(state, RoundBatch, key)``; e.g. a
      baseline from :mod:`banel_jax.baselines`); default ``make_banel(model,
      config)``, shared by runners of the same ``model`` and ``config``. Its
      state must carry ``round`` and ``key`` like
      :class:`~banel_jax.core.banel.BanelState`. ``config`` then only needs the run
      fields ``nre_budget``, ``samples_per_round``, ``n_eval``, ``eval_every``.
      Runners given the same bundle share its compiled functions.
    extensions: plug-ins to BaNEL (:mod:`banel_jax.extensions`) for the default
      method; recorded in ``config.json`` by name and config, with whether they
      learn from successes or use task knowledge.
    run_dir: optional run directory (see :mod:`banel_jax.runtime.run_dir`): checkpoints
      after every round, ``config.json``, ``metrics.jsonl`` and the oracle
      ledger. If it already holds a run of the same config, the runner resumes
      it: the newest good checkpoint is restored and the oracle calls made after
      it are replayed from the ledger, not asked again. ``config.json`` also
      records the backend and the number of devices the seeds ran on
      (``devices``), which a resumed run may change.
    keep_checkpoints: checkpoints kept in ``run_dir`` (the newest ones).
    oracle_policy: retries and timeout for faulty oracle calls
      (:class:`~banel_jax.runtime.budget.OraclePolicy`; default 3 attempts, no timeout).
    extra_config: more JSON-ready settings of the run (e.g.
      ``{"task": config_to_dict(task)}``) recorded in ``config.json`` and
      checked on resume.
    shard_seeds: split the seeds over the local devices with ``jax.sharding``
      (:mod:`banel_jax.runtime.sharding`): the state's seed axis is sharded over the
      largest number of devices that divides the number of seeds, the
      pretrained params are replicated, and ``jit`` runs each device's seeds
      there. A no-op on one device. The algorithm is the same either way; the
      float rounding of large programs (e.g. a transformer's) may differ with
      the device split, so compare runs made on the same split (the toy's
      results are identical).

  Seeds that freeze: in distilled mode, a seed whose rejection regions leave
  fewer than ``config.min_acceptance_rate`` of its proposal's distillation
  samples outside them freezes. Its round's update is discarded (it keeps the
  generator of the round before), it spends nothing more of its budget, and
  the other seeds run on, as they would have run alone; a warning names it,
  :attr:`frozen_at` and the round records (``"frozen"``) say when. A run whose
  every seed froze ends there, its budget partly unspent (``nre_spent``).

  Raises:
    RunDirError: ``run_dir`` holds a run with another config (the message names
      the differing fields).
    NonFiniteError: the pretrained model's log-likelihoods or params are not
      finite.
  """

  def __init__(self, model: GenerativeModel, prior_params: Params, oracle: Oracle,
               config: BanelConfig, seeds: Sequence[int] = (0,), *,
               metrics_path: str | os.PathLike | None = None, progress: bool = True,
               on_round: Callable[["BanelRunner", dict], None] | None = None,
               method: Any = None, run_dir: str | os.PathLike | None = None,
               keep_checkpoints: int = 3, oracle_policy: OraclePolicy | None = None,
               extra_config: Mapping[str, Any] | None = None,
               shard_seeds: bool = True, extensions: Sequence[Extension] = ()):
    seeds = list(seeds)
    if not seeds:
      raise ValueError("seeds must name at least one seed")
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
               for s in seeds):
      raise ValueError(f"seeds must be integers, got {seeds}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
      raise ValueError(f"seeds must be distinct, got {seeds}: seed(s) {repeated} "
                       "would run the same queries twice and pay for them twice")
    if isinstance(keep_checkpoints, bool) or not isinstance(keep_checkpoints, int) \
        or keep_checkpoints < 1:
      raise ValueError(f"keep_checkpoints must be an integer >= 1, got "
                       f"{keep_checkpoints!r}")
    model, frozen = frozen_lib.split_frozen(model)
    self.model, self.config = model, config
    # the model's frozen params (None for a plain model): an argument of every
    # program compiled here, replicated over the seed mesh
    self.frozen: frozen_lib.Frozen | None = frozen
    bind = None if frozen is None else frozen.bind
    self.seeds = [int(s) for s in seeds]
    if method is not None and extensions:
      raise ValueError("extensions apply to BaNEL (the default method); build the "
                       "method with them instead of passing both")
    self.banel = (_default_method(model, config, extensions) if method is None
                  else method)
    self.method_name = getattr(method, "name", "BaNEL")
    self.metrics_path = metrics_path
    self.on_round = on_round
    self.history: list[dict] = []
    # The samples of the round being emitted (see ``on_round``): ``"train"``
    # ``[S, m, ...]`` and ``"train_evaluated"`` ``bool[S, m]`` (the samples the
    # budget let the oracle score), and ``"eval"`` ``[S, n_eval, ...]`` on
    # evaluated rounds; numpy arrays.
    self.round_samples: dict[str, np.ndarray] = {}
    self._check_prior(prior_params)
    self.mesh = seed_sharding.seed_mesh(len(self.seeds)) if shard_seeds else None
    roots = jax.vmap(jax.random.key)(jnp.asarray(self.seeds, jnp.uint32))
    roots = seed_sharding.shard_seeds(roots, self.mesh)
    prior_params = seed_sharding.replicate(prior_params, self.mesh)
    frozen_params = (None if frozen is None
                     else seed_sharding.replicate(frozen.params, self.mesh))
    # the paper's method in distilled mode freezes a seed its regions close
    # (see above); other methods have no such floor
    self._hold_floor = (float(config.min_acceptance_rate)
                        if method is None and getattr(config, "mode", None) == "distilled"
                        else None)
    fns = _compiled(self.banel, self.mesh, bind, self._hold_floor)
    self._init, self._propose, self._update = (
        frozen_lib.with_params(fns[name], frozen_params)
        for name in ("init", "propose", "update"))
    self._update_or_hold = (
        None if self._hold_floor is None else
        frozen_lib.with_params(fns[("update_or_hold", self._hold_floor)], frozen_params))
    # per seed: the round in which it froze, or None
    self.frozen_at: list[int | None] = [None] * len(self.seeds)
    self._keys = _ROUND_KEYS
    self._prior_in_regions = (
        frozen_lib.with_params(_prior_in_regions_fn(model, config, bind), frozen_params)
        if method is None else None)
    self._proposal_entropy = (
        frozen_lib.with_params(_proposal_entropy_fn(model, bind), frozen_params)
        if method is None else None)
    self.states: BanelState = self._init(roots, prior_params)
    self.run_dir: RunDirectory | None = None
    ledger = None
    resumed = None
    if run_dir is not None:
      self.run_dir = RunDirectory(
          run_dir, self._run_record(extra_config, oracle_policy, keep_checkpoints),
          keep=keep_checkpoints,
          ignore=("oracle_policy", "keep_checkpoints", "devices"))
      try:
        resumed = self.run_dir.restore(self.states, usable=self._ledger_covers)
        position = (0, 0)
        if resumed is not None:
          _, states, host = resumed
          self.states = seed_sharding.shard_seeds(states, self.mesh)
          position = (host["ledger"]["calls"], host["ledger"]["offset"])
        ledger = Ledger(self.run_dir.ledger_path, calls_before=position[0],
                        offset=position[1])
      except BaseException:
        self.run_dir.close()
        raise
    self.keeper = BudgetKeeper(oracle, config.nre_budget, len(self.seeds),
                               policy=oracle_policy, ledger=ledger, seeds=self.seeds,
                               run_id=self._run_id())
    elapsed = 0.0
    if self.run_dir is not None:
      self.keeper.set_replay(ledger.tail, start=position)
      if resumed is not None:
        self.history = list(host["history"])
        self.keeper.load_state_dict(host["budget"])
        self.frozen_at = list(host.get("frozen_at", self.frozen_at))
        elapsed = float(host.get("elapsed_s", 0.0))
      self.run_dir.write_metrics(self.history)
      if metrics_path is not None and os.path.abspath(metrics_path) != \
          self.run_dir.metrics_path:
        self.run_dir.write_metrics(self.history, os.fspath(metrics_path))
    self._t0 = time.perf_counter() - elapsed
    self._bar = None
    if progress:
      from tqdm.auto import tqdm
      mode = getattr(config, "mode", None)
      desc = f"{self.method_name} ({mode})" if mode else self.method_name
      self._bar = tqdm(total=math.ceil(config.nre_budget / config.samples_per_round),
                       initial=self.round, desc=desc, unit="round")

  # --- set-up checks ----------------------------------------------------------------

  def _ledger_covers(self, host: dict) -> str | None:
    """Why a checkpoint's ledger position is past the ledger's end, or None."""
    offset = int(host["ledger"]["offset"])
    path = self.run_dir.ledger_path
    size = os.path.getsize(path) if os.path.exists(path) else 0
    if size < offset:
      return (f"it used {host['ledger']['calls']} ledger calls ({offset} bytes), but "
              f"{path} has {size} bytes; the calls after an earlier step are asked "
              "again, with the same request ids")
    return None

  def _run_id(self) -> str:
    """A run's id in oracle request ids: stable for a run directory (a digest
    of its record), random otherwise."""
    if self.run_dir is None:
      return uuid.uuid4().hex[:12]
    compared = {k: v for k, v in self.run_dir.record.items()
                if k not in ("oracle_policy", "keep_checkpoints", "devices")}
    text = json.dumps(compared, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]

  def _run_record(self, extra_config, oracle_policy, keep) -> dict:
    def as_dict(c):
      if dataclasses.is_dataclass(c) and not isinstance(c, type):
        return config_to_dict(c)
      try:
        return json.loads(json.dumps(c))
      except (TypeError, ValueError):
        return f"<{type(c).__name__}>"  # not JSON: only its type is recorded

    record = {"method": self.method_name, "seeds": self.seeds,
              "config_class": type(self.config).__name__,
              "config": as_dict(self.config),
              "event_shape": list(self.model.event_shape),
              "sample_dtype": np.dtype(self.model.dtype).name,
              "oracle_policy": as_dict(oracle_policy or OraclePolicy()),
              "keep_checkpoints": keep,
              # where the seeds ran; recorded, not compared on resume (a run
              # may resume on another backend or device count)
              "devices": {"backend": jax.default_backend(),
                          "seed_devices": (1 if self.mesh is None
                                           else int(self.mesh.devices.size))}}
    extensions = getattr(self.banel, "extensions", ())
    if extensions:
      record["extensions"] = describe(extensions)["extensions"]
    method_config = getattr(self.banel, "config", None)
    if method_config is not None and method_config is not self.config \
        and method_config != self.config:
      record["method_config"] = as_dict(method_config)
    if extra_config:
      record["extra"] = {str(k): as_dict(v) for k, v in dict(extra_config).items()}
    return record

  def _check_prior(self, prior_params):
    check_params(self.model, prior_params)
    got = {_path_str(p): v
           for p, v in jax.tree_util.tree_flatten_with_path(prior_params)[0]}
    host = {k: np.asarray(jax.device_get(v)) for k, v in got.items()}
    bad = [k for k, v in host.items()
           if jnp.issubdtype(v.dtype, jnp.inexact) and not np.all(np.isfinite(v))]
    if bad:
      raise NonFiniteError(f"the pretrained params hold NaN or infinite values in "
                           f"{', '.join(sorted(bad))}")
    bind = None if self.frozen is None else self.frozen.bind
    sampler = frozen_lib.with_params(_prior_sampler(self.model, bind),
                                     None if self.frozen is None else self.frozen.params)
    x, lp = sampler(prior_params, jax.random.key(0))
    lp = np.asarray(lp)
    if lp.shape != (8,):
      raise ValueError(f"model.log_prob returned shape {lp.shape} for 8 samples; "
                       "expected (8,)")
    finite = np.isfinite(lp)
    if not np.all(finite):
      i = int(np.flatnonzero(~finite)[0])
      raise NonFiniteError(
          f"model.log_prob of the pretrained params is not finite on the model's own "
          f"samples: {int(np.isnan(lp).sum())} NaN and {int(np.isinf(lp).sum())} "
          f"infinite of 8 (e.g. sample {i}: {np.asarray(x)[i].tolist()} has log_prob "
          f"{lp[i]}); all log-likelihoods: {lp}")

  # --- properties -------------------------------------------------------------------

  @property
  def round(self) -> int:
    return int(np.asarray(self.states.round).reshape(-1)[0])

  @property
  def _rejection_sampled(self) -> bool:
    # Baselines' configs have no such property: they sample their model directly.
    return getattr(self.config, "samples_by_rejection", False)

  @property
  def live(self) -> np.ndarray:
    """``bool[S]``: the seeds that have not frozen."""
    return np.array([f is None for f in self.frozen_at])

  @property
  def done(self) -> bool:
    """Every seed has spent its budget or frozen."""
    return bool(np.all((self.keeper.remaining <= 0) | ~self.live))

  # --- the round --------------------------------------------------------------------

  def _sample(self, key, n):
    x, info = self._propose(self.states, key, n)
    if self._rejection_sampled:
      posterior.check_acceptance(info, n, self.config.min_acceptance_rate)
    return x, info

  def evaluate(self) -> list:
    """Success rate of every seed's current sampler on ``n_eval`` fresh samples."""
    n = self.config.n_eval
    x, _ = self._sample(self._keys(self.states)["eval"], n)
    x = np.asarray(x)
    self.round_samples["eval"] = x
    seed_index = np.repeat(np.arange(len(self.seeds)), n)
    r = self.keeper.evaluate_free(x.reshape((-1,) + x.shape[2:]), self.round,
                                  seed_index).reshape(len(self.seeds), n)
    return [clopper_pearson(int(r[s].sum()), n) for s in range(len(self.seeds))]

  def _record_eval(self, record: dict):
    try:
      est = self.evaluate()
    except OracleError as e:
      raise self._stopped(e) from e
    record["success_rate"] = [e.rate for e in est]
    record["success_ci"] = [[e.low, e.high] for e in est]

  def _emit(self, record: dict):
    record["wall_time_s"] = time.perf_counter() - self._t0
    record["eval_calls"] = self.keeper.eval_calls
    if self.on_round is not None:
      self.on_round(self, record)
    record = jsonable(record)
    self.history.append(record)
    paths = []
    if self.run_dir is not None:
      paths.append(self.run_dir.metrics_path)
    extra = self.metrics_path
    if extra is not None and os.path.abspath(extra) not in paths:
      paths.append(extra)
    for path in paths:
      with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def _save(self):
    if self.run_dir is None:
      return
    calls, offset = self.keeper.ledger_position
    host = {"history": self.history, "budget": self.keeper.state_dict(),
            "ledger": {"calls": calls, "offset": offset},
            "elapsed_s": time.perf_counter() - self._t0, "seeds": self.seeds,
            "frozen_at": self.frozen_at}
    self.run_dir.save(self.round, self.states, host)

  def _stopped(self, e: OracleError) -> OracleError:
    """The fault, with where the run stopped and how to resume it."""
    if self._bar is not None:
      self._bar.close()
    msg = f"{e}. The run stopped in round {self.round + 1}"
    if self.run_dir is not None:
      steps = self.run_dir.steps()
      where = (f"its newest checkpoint is step {steps[-1]}" if steps
               else "no round was checkpointed yet")
      msg += (f"; {where} in {self.run_dir.path}, and every evaluation paid for is "
              "in its ledger: rerun with the same run_dir to resume")
    err = OracleError(msg)
    err.faults = e.faults
    return err

  def evaluate_start(self):
    """Records round 0: the pretrained model's success rate (and checkpoints it)."""
    record = {"round": 0, "nre": self.keeper.spent.tolist()}
    self.round_samples = {}
    self._record_eval(record)
    self._emit(record)
    self._save()

  def step(self) -> dict:
    """Runs one round for every seed; returns its record (checkpointed)."""
    if self.done:
      raise RuntimeError("the NRE budget is spent (or every seed froze); no round "
                         "left to run")
    c = self.config
    t = self.round
    keys = self._keys(self.states)
    x, info = self._sample(keys["propose"], c.samples_per_round)
    log_norm = (jnp.log(info.acceptance_rate) if self._rejection_sampled
                else jnp.zeros(len(self.seeds), jnp.float32))
    x_host = np.asarray(x)
    self.round_samples = {}
    try:
      rewards, evaluated = self.keeper.evaluate(x_host, t, active=self.live)
    except OracleError as e:
      raise self._stopped(e) from e
    self.round_samples.update(train=x_host, train_evaluated=evaluated)
    distinct = distinct_shares(x_host, evaluated)
    # before the update, which donates the states
    entropy = (None if self._proposal_entropy is None else
               self._proposal_entropy(self.states, x, log_norm))
    batch = RoundBatch(x=x, rewards=jnp.asarray(rewards),
                       evaluated=jnp.asarray(evaluated), log_norm=log_norm)
    if self._update_or_hold is None:
      self.states, metrics = self._update(self.states, batch, keys["update"])
      metrics = jax.device_get(metrics)
      kept = np.ones(len(self.seeds), bool)
    else:
      hold = seed_sharding.shard_seeds(jnp.asarray(~self.live), self.mesh)
      self.states, metrics = self._update_or_hold(self.states, batch,
                                                  keys["update"], hold)
      metrics = jax.device_get(metrics)
      kept = ~np.asarray(metrics.pop("held"), bool)
      self._freeze(~kept & self.live, metrics["distill_accept_rate"], t + 1)
    # every metric has a leading seed axis; a held seed's update is discarded,
    # so its values are not checked
    finite = np.all(np.asarray(metrics.get("params_finite", kept))[kept])
    nll = np.asarray(metrics.get("failure_nll", np.zeros(len(kept))))[kept]
    if not finite or not np.all(np.isfinite(nll)):
      raise NonFiniteError(
          f"round {t + 1}: non-finite failure-model NLL {nll} or "
          "parameters; check model.log_prob for NaN/inf and lower the learning rates")
    if (self._update_or_hold is None and "distill_accept_rate" in metrics
        and getattr(c, "mode", None) == "distilled"
        and np.any(metrics["distill_accept_rate"] < c.min_acceptance_rate)):
      fix = _floor_fix(c)
      raise posterior.AcceptanceRateError(
          f"round {t + 1}: the rejection regions accept only "
          f"{metrics['distill_accept_rate']} of the proposal's distillation samples "
          f"(floor {c.min_acceptance_rate:g}); {fix}, or lower min_acceptance_rate")
    record = {"round": t + 1, "nre": self.keeper.spent.tolist(),
              "proposal_acceptance_rate": np.asarray(info.acceptance_rate)}
    if not self.live.all():
      record["frozen"] = (~self.live).tolist()
    record.update({k: v for k, v in metrics.items() if k != "params_finite"})
    # Signals of collapse that need no success (DIAGNOSTICS).
    record["distinct_share"] = distinct
    if entropy is not None:
      record["proposal_entropy"] = np.asarray(entropy)
    if self._prior_in_regions is not None:
      record["prior_mass_in_regions"] = np.asarray(
          self._prior_in_regions(self.states, keys["eval"]))
    if (t + 1) % c.eval_every == 0 or self.done:
      self._record_eval(record)
    self._emit(record)
    self._save()
    if self._bar is not None:
      self._bar.update(1)
      shares = [d for d in record["distinct_share"] if d is not None]
      postfix = {"nre": int(self.keeper.spent.max()),
                 "distinct": f"{min(shares):.2f}" if shares else "-"}
      if "success_rate" in record:
        postfix["success"] = f"{np.mean(record['success_rate']):.3f}"
      self._bar.set_postfix(**postfix)
    return record

  def _freeze(self, newly: np.ndarray, accept_rate, round_index: int) -> None:
    """Marks the seeds ``newly`` frozen in round ``round_index``, with a warning."""
    if not np.any(newly):
      return
    c = self.config
    fix = _floor_fix(c)
    rates = np.asarray(accept_rate).reshape(-1)
    for s in np.flatnonzero(newly):
      self.frozen_at[s] = round_index
    names = ", ".join(f"{self.seeds[s]} ({rates[s]:.2g})" for s in np.flatnonzero(newly))
    left = int(self.live.sum())
    warnings.warn(
        f"round {round_index}: seed(s) {names} froze: their rejection regions "
        f"accept less than min_acceptance_rate={c.min_acceptance_rate:g} of the "
        "proposal's distillation samples (acceptance in parentheses); each keeps "
        f"the generator of round {round_index - 1} and spends no more of its "
        f"budget; {left} seed(s) run on. To go further, {fix}, or lower "
        "min_acceptance_rate", stacklevel=3)

  def run(self) -> RunResult:
    """Evaluates the pretrained model, then runs rounds until the budget is spent.

    A resumed runner continues where its run directory stopped (and returns at
    once if that run had finished).
    """
    if not self.history:
      self.evaluate_start()
    while not self.done:
      self.step()
    if self._bar is not None:
      self._bar.close()
    if self.keeper.pending_replay:
      warnings.warn(f"{self.keeper.pending_replay} oracle calls in the ledger of "
                    f"{self.run_dir.path} were never replayed by the resumed run",
                    stacklevel=2)
    return self.result()

  def result(self) -> RunResult:
    return RunResult(config=self.config, seeds=self.seeds, history=self.history,
                     states=self.states, successes=list(self.keeper.successes),
                     nre_spent=self.keeper.spent.tolist(),
                     eval_calls=self.keeper.eval_calls,
                     wall_time_s=time.perf_counter() - self._t0,
                     run_dir=None if self.run_dir is None else self.run_dir.path,
                     frozen_at=list(self.frozen_at))

  def close(self) -> None:
    """Closes the ledger and the checkpoint manager (all writes are done by then)."""
    if self._bar is not None:
      self._bar.close()
    if self.keeper.ledger is not None:
      self.keeper.ledger.close()
    if self.run_dir is not None:
      self.run_dir.close()

  def __enter__(self) -> "BanelRunner":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def run_banel(model: GenerativeModel, prior_params: Params, oracle: Oracle,
              config: BanelConfig, seeds: Sequence[int] = (0,), **kwargs: Any
              ) -> RunResult:
  """Runs BaNEL to the end of its budget; see :class:`BanelRunner` for arguments
  (``model`` may be a :class:`~banel_jax.models.lora.LoraModel`: its base is
  then an argument of the compiled programs, not a constant of each).

  With ``run_dir=...`` the run checkpoints every round and resumes when rerun
  with the same directory (see :class:`BanelRunner`).

  Example:
    >>> from banel_jax import BanelConfig, run_banel
    >>> from banel_jax.tasks.toy1d import Toy1DTask
    >>> task = Toy1DTask()
    >>> model = task.model()
    >>> cfg = BanelConfig(nre_budget=200, n_eval=1000)
    >>> res = run_banel(model, task.prior_params(), task.oracle, cfg, progress=False)
    >>> res.nre_spent
    [200]
  """
  return BanelRunner(model, prior_params, oracle, config, seeds, **kwargs).run()
