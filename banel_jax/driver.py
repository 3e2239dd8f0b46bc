"""Host driver: rounds of propose → oracle → update until the NRE budget is spent.

The only host work per round is the oracle call and bookkeeping: sampling and
learning are two compiled, seed-vmapped programs that compile once per run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from banel_jax import posterior
from banel_jax.banel import BanelState, RoundBatch, make_banel, round_keys
from banel_jax.budget import BudgetKeeper
from banel_jax.config import BanelConfig
from banel_jax.metrics import clopper_pearson
from banel_jax.types import GenerativeModel, Oracle, Params


class NonFiniteError(FloatingPointError):
  """A model produced NaN or infinite values (log-likelihoods or parameters)."""


def _to_py(v):
  v = np.asarray(v)
  if v.ndim == 0:
    return v.item()
  return v.tolist()


def _jsonable(record: dict) -> dict:
  out = {}
  for k, v in record.items():
    if isinstance(v, dict):
      out[k] = _jsonable(v)
    elif isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
      out[k] = [_jsonable(x) for x in v]
    elif isinstance(v, (jax.Array, np.ndarray, np.generic)):
      out[k] = _to_py(v)
    else:
      out[k] = v
  return out


@dataclasses.dataclass
class RunResult:
  """What a run returns.

  Attributes:
    history: one record per round (round 0 is the pretrained model's evaluation).
    states: final :class:`BanelState`, every leaf with a leading seed axis.
    successes: successes found during training (reported, not learned from).
    nre_spent: NRE per seed.
    eval_calls: oracle calls spent on evaluation (apart from the NRE).
    wall_time_s: total wall time.
  """

  config: BanelConfig
  seeds: list[int]
  history: list[dict]
  states: BanelState
  successes: list
  nre_spent: list[int]
  eval_calls: int
  wall_time_s: float

  def final_success_rates(self) -> list[float]:
    last = [h for h in self.history if "success_rate" in h][-1]
    return list(last["success_rate"])

  def best_success_rates(self) -> list[float]:
    rates = np.array([h["success_rate"] for h in self.history
                      if "success_rate" in h and h["round"] > 0])
    return rates.max(axis=0).tolist()


class BanelRunner:
  """Runs BaNEL for several seeds side by side, one round per :meth:`step`.

  Args:
    model: the generator's family.
    prior_params: pretrained params ``theta_0``.
    oracle: batched host callable ``oracle(x[n, ...]) -> rewards[n]`` in {0, 1}.
    config: the run's :class:`BanelConfig`.
    seeds: one integer per seed; seeds run under ``vmap`` in one program.
    metrics_path: optional JSON-lines file, one record per round (appended).
    progress: show a progress bar over rounds (``tqdm``).
    on_round: optional ``callback(runner, record)`` that may add entries to the
      round's record before it is written.
  """

  def __init__(self, model: GenerativeModel, prior_params: Params, oracle: Oracle,
               config: BanelConfig, seeds: Sequence[int] = (0,), *,
               metrics_path: str | os.PathLike | None = None, progress: bool = True,
               on_round: Callable[["BanelRunner", dict], None] | None = None):
    if not seeds:
      raise ValueError("seeds must name at least one seed")
    self.model, self.config = model, config
    self.seeds = [int(s) for s in seeds]
    self.banel = make_banel(model, config)
    self.keeper = BudgetKeeper(oracle, config.nre_budget, len(self.seeds))
    self.metrics_path = metrics_path
    self.on_round = on_round
    self.history: list[dict] = []
    self._check_prior(prior_params)
    roots = jax.vmap(jax.random.key)(jnp.asarray(self.seeds, jnp.uint32))
    self._init = jax.jit(jax.vmap(self.banel.init, in_axes=(0, None)))
    self._propose = jax.jit(jax.vmap(self.banel.propose, in_axes=(0, 0, None)),
                            static_argnums=2)
    self._update = jax.jit(jax.vmap(self.banel.update))
    self._keys = jax.jit(jax.vmap(round_keys))
    self.states: BanelState = self._init(roots, prior_params)
    self._t0 = time.perf_counter()
    self._bar = None
    if progress:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=config.num_rounds, desc=f"BaNEL ({config.mode})",
                       unit="round")

  def _check_prior(self, prior_params):
    x = self.model.sample(prior_params, jax.random.key(0), 8)
    lp = np.asarray(self.model.log_prob(prior_params, x))
    if lp.shape != (8,):
      raise ValueError(f"model.log_prob returned shape {lp.shape} for 8 samples; "
                       "expected (8,)")
    if not np.all(np.isfinite(lp)):
      raise NonFiniteError("model.log_prob of the pretrained params is not finite on "
                           f"the model's own samples: {lp}")

  @property
  def round(self) -> int:
    return int(np.asarray(self.states.round).reshape(-1)[0])

  @property
  def done(self) -> bool:
    return self.keeper.exhausted

  def _sample(self, key, n):
    x, info = self._propose(self.states, key, n)
    if self.config.mode == "exact":
      posterior.check_acceptance(info, n, self.config.min_acceptance_rate)
    return x, info

  def evaluate(self) -> list:
    """Success rate of every seed's current sampler on ``n_eval`` fresh samples."""
    n = self.config.n_eval
    x, _ = self._sample(self._keys(self.states)["eval"], n)
    x = np.asarray(x)
    r = self.keeper.evaluate_free(x.reshape((-1,) + x.shape[2:])).reshape(len(self.seeds), n)
    return [clopper_pearson(int(r[s].sum()), n) for s in range(len(self.seeds))]

  def _record_eval(self, record: dict):
    est = self.evaluate()
    record["success_rate"] = [e.rate for e in est]
    record["success_ci"] = [[e.low, e.high] for e in est]

  def _emit(self, record: dict):
    record["wall_time_s"] = time.perf_counter() - self._t0
    record["eval_calls"] = self.keeper.eval_calls
    if self.on_round is not None:
      self.on_round(self, record)
    record = _jsonable(record)
    self.history.append(record)
    if self.metrics_path is not None:
      with open(self.metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def evaluate_start(self):
    """Records round 0: the pretrained model's success rate."""
    record = {"round": 0, "nre": self.keeper.spent.tolist()}
    self._record_eval(record)
    self._emit(record)

  def step(self) -> dict:
    """Runs one round for every seed; returns its record."""
    if self.done:
      raise RuntimeError("the NRE budget is spent; no round left to run")
    c = self.config
    t = self.round
    keys = self._keys(self.states)
    x, info = self._sample(keys["propose"], c.samples_per_round)
    log_norm = (jnp.log(info.acceptance_rate) if c.mode == "exact"
                else jnp.zeros(len(self.seeds), jnp.float32))
    rewards, evaluated = self.keeper.evaluate(np.asarray(x), t)
    batch = RoundBatch(x=x, rewards=jnp.asarray(rewards),
                       evaluated=jnp.asarray(evaluated), log_norm=log_norm)
    self.states, metrics = self._update(self.states, batch, keys["update"])
    metrics = jax.device_get(metrics)
    if not np.all(metrics["params_finite"]) or not np.all(np.isfinite(metrics["failure_nll"])):
      raise NonFiniteError(
          f"round {t + 1}: non-finite failure-model NLL {metrics['failure_nll']} or "
          "parameters; check model.log_prob for NaN/inf and lower the learning rates")
    if c.mode == "distilled" and np.any(metrics["distill_accept_rate"] < c.min_acceptance_rate):
      raise posterior.AcceptanceRateError(
          f"round {t + 1}: the rejection regions accept only "
          f"{metrics['distill_accept_rate']} of the proposal's distillation samples "
          f"(floor {c.min_acceptance_rate:g}); lower filter_factor or use "
          "tau_mode='calibrated'")
    record = {"round": t + 1, "nre": self.keeper.spent.tolist(),
              "proposal_acceptance_rate": np.asarray(info.acceptance_rate)}
    record.update({k: v for k, v in metrics.items() if k != "params_finite"})
    if (t + 1) % c.eval_every == 0 or self.done:
      self._record_eval(record)
    self._emit(record)
    if self._bar is not None:
      self._bar.update(1)
      if "success_rate" in record:
        self._bar.set_postfix(nre=int(self.keeper.spent.max()),
                              success=f"{np.mean(record['success_rate']):.3f}")
    return record

  def run(self) -> RunResult:
    """Evaluates the pretrained model, then runs rounds until the budget is spent."""
    if not self.history:
      self.evaluate_start()
    while not self.done:
      self.step()
    if self._bar is not None:
      self._bar.close()
    return self.result()

  def result(self) -> RunResult:
    return RunResult(config=self.config, seeds=self.seeds, history=self.history,
                     states=self.states, successes=list(self.keeper.successes),
                     nre_spent=self.keeper.spent.tolist(),
                     eval_calls=self.keeper.eval_calls,
                     wall_time_s=time.perf_counter() - self._t0)


def run_banel(model: GenerativeModel, prior_params: Params, oracle: Oracle,
              config: BanelConfig, seeds: Sequence[int] = (0,), **kwargs: Any
              ) -> RunResult:
  """Runs BaNEL to the end of its budget; see :class:`BanelRunner` for arguments.

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
